"""The scenes' world: its vocabulary (kinds, colours, sizes, cells), the `Scene` and
how one is sampled, with the compositional split of colour-kind pairs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# Six silhouettes that differ at a glance, even small: no two are the same outline turned or
# with a few more corners (a diamond is a turned square, a hexagon nearly a circle).
KINDS = ("circle", "square", "triangle", "star", "cross", "heart")
COLOURS = {  # far apart in RGB, and none of them grey, so they stand out on every background
    "red": (215, 40, 40),
    "orange": (245, 135, 20),
    "yellow": (245, 215, 40),
    "green": (40, 160, 70),
    "blue": (40, 90, 215),
    "purple": (135, 60, 185),
    "pink": (240, 120, 185),
    "brown": (125, 75, 35),
}
SIZES = {"small": 0.2, "large": 0.4}  # radius, in grid-cell widths
# Grid cells in reading order, with the phrase each caption uses for it.
POSITIONS = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
TONES = {"white": 245, "beige": (228, 214, 186), "grey": 140, "black": 25}
PATTERNS = ("plain", "striped", "checked", "dotted", "noisy")
COUNT_WORDS = ("one", "two", "three", "four")
MAX_SHAPES = 4
SPLITS = ("train", "val", "test")
# What a caption says of each shape: `object_f1` matches shapes on OBJECT_FIELDS (plus the
# position when asked), `attribute_f1` on each of ATTRIBUTES alone.
OBJECT_FIELDS = ("size", "colour", "kind")
ATTRIBUTES = (*OBJECT_FIELDS, "position")

# Never in train or val; at least one per test scene. A perfect matching: each
# colour and each kind is held out in at most one pair.
HELD_OUT_PAIRS = frozenset(
    {
        ("red", "star"),
        ("blue", "triangle"),
        ("yellow", "heart"),
        ("purple", "circle"),
        ("green", "cross"),
        ("orange", "square"),
    }
)
ALL_PAIRS = tuple((colour, kind) for colour in COLOURS for kind in KINDS)
TRAIN_PAIRS = tuple(pair for pair in ALL_PAIRS if pair not in HELD_OUT_PAIRS)

STACK_PROBABILITY = 0.15  # chance that a small shape sits on top of a large one
# How far a shape's centre may move from its cell's centre, in cell widths: a large shape
# has little room; a small one stacked on a large one keeps to the middle of it.
JITTER = {"large": 0.06, "small": 0.2}
MAX_ANGLE = 15.0  # degrees; a tilt, never enough to make a square look turned on its corner
SUPERSAMPLE = 2  # draw at 2x and shrink, so edges are anti-aliased


def check_choice(value, allowed, field: str) -> None:
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not one of {sorted(allowed)}")


@dataclasses.dataclass(frozen=True)
class Shape:
    """One filled shape.

    `offset` moves the centre away from the middle of its grid cell, in cell
    widths; at most 0.25 either way, so the centre stays well inside the cell
    and `position` stays true. `angle` turns the shape, in degrees.
    """

    kind: str
    colour: str
    size: str
    position: str
    offset: tuple[float, float] = (0.0, 0.0)
    angle: float = 0.0

    def __post_init__(self):
        check_choice(self.kind, KINDS, "Shape.kind")
        check_choice(self.colour, COLOURS, "Shape.colour")
        check_choice(self.size, SIZES, "Shape.size")
        check_choice(self.position, POSITIONS, "Shape.position")
        if max(abs(v) for v in self.offset) > 0.25:
            raise ValueError(f"Shape.offset={self.offset} leaves the grid cell; keep |v| <= 0.25")


@dataclasses.dataclass(frozen=True)
class Background:
    """A flat `tone`, or that tone with a `pattern` whose layout comes from `texture_seed`."""

    tone: str
    pattern: str = "plain"
    texture_seed: int = 0

    def __post_init__(self):
        check_choice(self.tone, TONES, "Background.tone")
        check_choice(self.pattern, PATTERNS, "Background.pattern")


@dataclasses.dataclass(frozen=True)
class Scene:
    """A background and 1-4 shapes, in drawing order (reading order by grid cell).

    Two shapes share a cell only as a stack: a large one first, then a small
    one of another colour drawn on top of it. Captions say so.
    """

    background: Background
    shapes: tuple[Shape, ...]

    def __post_init__(self):
        if not 1 <= len(self.shapes) <= MAX_SHAPES:
            raise ValueError(f"Scene.shapes has {len(self.shapes)} shapes; use 1 to {MAX_SHAPES}")
        cells = [s.position for s in self.shapes]
        if cells != sorted(cells, key=list(POSITIONS).index):
            raise ValueError(f"Scene.shapes must be in reading order of their cells, got {cells}")
        for group in cell_groups(self):
            if len(group) > 2:
                raise ValueError(f"Scene.shapes: {len(group)} shapes in cell {group[0].position}")
            if len(group) == 2 and not _is_stack(*group):
                raise ValueError(
                    f"Scene.shapes: two shapes in cell {group[0].position} must be a large one "
                    "then a small one of another colour"
                )


def _is_stack(base: Shape, top: Shape) -> bool:
    return base.size == "large" and top.size == "small" and base.colour != top.colour


def cell_groups(scene: Scene) -> list[list[Shape]]:
    """The shapes grouped by grid cell, in reading order: [[base, top], [shape], ...]."""
    groups: list[list[Shape]] = []
    for shape in scene.shapes:
        if groups and groups[-1][0].position == shape.position:
            groups[-1].append(shape)
        else:
            groups.append([shape])
    return groups


# ----------------------------------------------------------------------------- sampling


def pick_one(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _sample_pairs(rng: np.random.Generator, n: int, split: str) -> list[tuple[str, str]]:
    """(colour, kind) for n shapes: train/val avoid HELD_OUT_PAIRS; test holds at least one."""
    pairs = [pick_one(rng, TRAIN_PAIRS if split != "test" else ALL_PAIRS) for _ in range(n)]
    if split == "test":
        pairs[int(rng.integers(n))] = pick_one(rng, sorted(HELD_OUT_PAIRS))
    return pairs


def _sample_background(rng: np.random.Generator) -> Background:
    return Background(
        tone=pick_one(rng, list(TONES)),
        pattern=pick_one(rng, PATTERNS),
        texture_seed=int(rng.integers(2**31)),
    )


def sample_scene(seed: int | Sequence[int] | np.random.Generator, *, split: str = "train") -> Scene:
    """Samples a `Scene` deterministically from an int seed (or a numpy Generator).

    `split` is "train", "val" or "test": it decides only which (colour, kind)
    pairs may appear (see `HELD_OUT_PAIRS`).
    """
    check_choice(split, SPLITS, "split")
    rng = np.random.default_rng(seed)
    n_shapes = int(rng.integers(1, MAX_SHAPES + 1))
    stacked = n_shapes >= 2 and rng.random() < STACK_PROBABILITY
    cells = [int(c) for c in rng.choice(len(POSITIONS), size=n_shapes - stacked, replace=False)]
    if stacked:
        cells.append(cells[0])  # the last shape sits on top of the first
    pairs = _sample_pairs(rng, n_shapes, split)
    sizes = [pick_one(rng, list(SIZES)) for _ in range(n_shapes)]
    if stacked:
        sizes[0], sizes[-1] = "large", "small"
        if pairs[0][0] == pairs[-1][0]:  # the top must differ in colour to be seen
            pool = ALL_PAIRS if split == "test" else TRAIN_PAIRS
            pairs[-1] = pick_one(rng, [p for p in pool if p[0] != pairs[0][0]])
        if split == "test" and not HELD_OUT_PAIRS & set(pairs):
            pairs[0] = pick_one(rng, [p for p in sorted(HELD_OUT_PAIRS) if p[0] != pairs[-1][0]])
    shapes = []
    for i, ((colour, kind), size, cell) in enumerate(zip(pairs, sizes, cells, strict=True)):
        on_top = stacked and i == n_shapes - 1
        jitter = JITTER["large" if on_top else size]
        offset = tuple(float(v) for v in rng.uniform(-jitter, jitter, 2))
        angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
        shapes.append(Shape(kind, colour, size, list(POSITIONS)[cell], offset, angle))
    order = list(POSITIONS)
    shapes.sort(key=lambda s: (order.index(s.position), s.size == "small"))
    return Scene(_sample_background(rng), tuple(shapes))


def example_seed(seed: int, split: str, index: int) -> list[int]:
    """The seed of example `index` of `split`: examples are independent, so the first 90 of
    20000 training scenes are the same 90 scenes as a 90-example dataset."""
    return [seed, SPLITS.index(split), index]


def split_scenes(split: str, n: int, seed: int = 0) -> list[Scene]:
    """The scenes of examples 0..n-1 of `split`, as `write_dataset` with this seed draws them."""
    return [sample_scene(example_seed(seed, split, i), split=split) for i in range(n)]
