"""The course's own captioning data: coloured shapes on a 3x3 grid, drawn and described.

Nothing can be downloaded, so the course makes a dataset that behaves like
big_vision's longcap100 (an image and a paragraph about it) from a seeded
generator. One `Scene` is sampled, then rendered and described in two styles:

    scene = sample_scene(9)
    render_scene(scene)   -> PIL.Image RGB [224, 224]
    short_caption(scene)  -> "a large pink triangle and a large purple cross"
    long_caption(scene)   -> "Two shapes sit on a plain black background. At the top there
                              is a large pink triangle. A large purple cross sits in the
                              bottom left. The pink triangle is above the purple cross."

`parse_caption` reads the objects back out of either style (and out of a
model's imperfect attempt), and `object_f1` scores a caption against a scene.

Compositional test split: the six (colour, kind) pairs in `HELD_OUT_PAIRS`
never appear in the train and val splits; every test scene holds at least one
of them, next to the other objects. Each colour and each kind still appears in
training, only never in that combination.

`write_dataset` writes longcap100's layout (`data_train90.jsonl`,
`data_val10.jsonl`, plus `data_test50.jsonl`, images under `images/`); the
command line does the same: `python -m solutions.scenes OUT_DIR --train 90`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import multiprocessing
import os
import pathlib
import re
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from solutions.files import write_atomic

__all__ = [
    "HELD_OUT_PAIRS",
    "Background",
    "ParsedObject",
    "Scene",
    "Shape",
    "attribute_f1",
    "cell_groups",
    "example_seed",
    "jsonl_name",
    "long_caption",
    "object_f1",
    "objects_text",
    "parse_caption",
    "render_object_ids",
    "render_scene",
    "sample_scene",
    "scene_objects",
    "shape_centre",
    "short_caption",
    "show_examples",
    "split_scenes",
    "write_dataset",
]

# ----------------------------------------------------------------------------- vocabulary

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


# ----------------------------------------------------------------------------- the scene


def _check_choice(value, allowed, field: str) -> None:
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
        _check_choice(self.kind, KINDS, "Shape.kind")
        _check_choice(self.colour, COLOURS, "Shape.colour")
        _check_choice(self.size, SIZES, "Shape.size")
        _check_choice(self.position, POSITIONS, "Shape.position")
        if max(abs(v) for v in self.offset) > 0.25:
            raise ValueError(f"Shape.offset={self.offset} leaves the grid cell; keep |v| <= 0.25")


@dataclasses.dataclass(frozen=True)
class Background:
    """A flat `tone`, or that tone with a `pattern` whose layout comes from `texture_seed`."""

    tone: str
    pattern: str = "plain"
    texture_seed: int = 0

    def __post_init__(self):
        _check_choice(self.tone, TONES, "Background.tone")
        _check_choice(self.pattern, PATTERNS, "Background.pattern")


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


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _sample_pairs(rng: np.random.Generator, n: int, split: str) -> list[tuple[str, str]]:
    """(colour, kind) for n shapes: train/val avoid HELD_OUT_PAIRS; test holds at least one."""
    pairs = [_pick(rng, TRAIN_PAIRS if split != "test" else ALL_PAIRS) for _ in range(n)]
    if split == "test":
        pairs[int(rng.integers(n))] = _pick(rng, sorted(HELD_OUT_PAIRS))
    return pairs


def _sample_background(rng: np.random.Generator) -> Background:
    return Background(
        tone=_pick(rng, list(TONES)),
        pattern=_pick(rng, PATTERNS),
        texture_seed=int(rng.integers(2**31)),
    )


def sample_scene(seed: int | Sequence[int] | np.random.Generator, *, split: str = "train") -> Scene:
    """Samples a `Scene` deterministically from an int seed (or a numpy Generator).

    `split` is "train", "val" or "test": it decides only which (colour, kind)
    pairs may appear (see `HELD_OUT_PAIRS`).
    """
    _check_choice(split, SPLITS, "split")
    rng = np.random.default_rng(seed)
    n_shapes = int(rng.integers(1, MAX_SHAPES + 1))
    stacked = n_shapes >= 2 and rng.random() < STACK_PROBABILITY
    cells = [int(c) for c in rng.choice(len(POSITIONS), size=n_shapes - stacked, replace=False)]
    if stacked:
        cells.append(cells[0])  # the last shape sits on top of the first
    pairs = _sample_pairs(rng, n_shapes, split)
    sizes = [_pick(rng, list(SIZES)) for _ in range(n_shapes)]
    if stacked:
        sizes[0], sizes[-1] = "large", "small"
        if pairs[0][0] == pairs[-1][0]:  # the top must differ in colour to be seen
            pool = ALL_PAIRS if split == "test" else TRAIN_PAIRS
            pairs[-1] = _pick(rng, [p for p in pool if p[0] != pairs[0][0]])
        if split == "test" and not HELD_OUT_PAIRS & set(pairs):
            pairs[0] = _pick(rng, [p for p in sorted(HELD_OUT_PAIRS) if p[0] != pairs[-1][0]])
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


# ----------------------------------------------------------------------------- rendering


def _tone_rgb(tone: str) -> np.ndarray:
    value = TONES[tone]
    return np.array(value if isinstance(value, tuple) else (value,) * 3, np.float32)


def _pattern_marks(pattern: str, rng: np.random.Generator, side: int) -> np.ndarray:
    """bool[side, side]: where a striped, checked or dotted pattern takes the second shade."""
    # A row and a column of coordinates (in pattern periods) broadcast into the full grid.
    coords = (np.arange(side, dtype=np.float32) + 0.5) / (side * rng.uniform(0.06, 0.12))
    x, y = coords[None, :], coords[:, None]
    if pattern == "striped":
        direction = _pick(rng, ((1, 0), (0, 1), (1, 1), (1, -1)))
        return (direction[0] * x + direction[1] * y) % 1.0 < 0.5
    if pattern == "checked":
        return (np.floor(x) % 2 == 1) ^ (np.floor(y) % 2 == 1)
    return (x % 1.0 - 0.5) ** 2 + (y % 1.0 - 0.5) ** 2 < 0.2**2  # dotted


def _background_image(background: Background, side: int) -> Image.Image:
    """An RGB image side x side: the tone, its pattern in a slightly lighter or darker shade."""
    rng = np.random.default_rng(background.texture_seed)
    base = _tone_rgb(background.tone)
    shade = base + (40.0 if base.mean() < 128 else -40.0)
    image = Image.new("RGB", (side, side), tuple(int(v) for v in base))
    if background.pattern == "noisy":
        # One noise value per output pixel, so the final downsampling keeps it sharp.
        small = side // SUPERSAMPLE
        pixels = np.clip(base + rng.normal(0.0, 35.0, (small, small, 1)), 0, 255)
        noise = Image.fromarray(pixels.astype(np.uint8), "RGB")
        return noise.resize((side, side), Image.Resampling.NEAREST)
    if background.pattern != "plain":
        marks = _pattern_marks(background.pattern, rng, side)
        mask = Image.fromarray(marks.astype(np.uint8) * 255, "L")
        image.paste(tuple(int(v) for v in shade), mask=mask)
    return image


def _polar(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(x, y) corners as the (r, degrees) `_outline` turns."""
    return [(math.hypot(x, y), math.degrees(math.atan2(y, x))) for x, y in points]


def _heart(radius: float) -> list[tuple[float, float]]:
    """(r, degrees) corners of a heart, point down, about as wide and tall as 2 * radius."""
    points = []
    for i in range(32):
        t = 2 * math.pi * i / 32
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        points.append((x * radius / 16, (y - 2.5) * radius / 15))  # centred on its bounding box
    return _polar(points)


def _cross(radius: float) -> list[tuple[float, float]]:
    """(r, degrees) corners of a plus sign whose arms are 0.7 * radius wide."""
    arm, half = radius, 0.35 * radius
    xy = [(half, -arm), (half, -half), (arm, -half), (arm, half), (half, half), (half, arm)]
    return _polar(xy + [(-x, -y) for x, y in xy])


def _outline(kind: str, radius: float, angle: float) -> list[tuple[float, float]]:
    """Polygon corners around (0, 0), y pointing down, turned by `angle` degrees."""

    def ring(n, r, start=-90.0):
        return [(r, start + 360.0 * i / n) for i in range(n)]

    corners = {
        "square": lambda: ring(4, 1.1 * radius, start=-45.0),
        "triangle": lambda: ring(3, 1.15 * radius),
        "cross": lambda: _cross(1.05 * radius),
        "heart": lambda: _heart(1.05 * radius),
        "star": lambda: [
            (r, -90.0 + 36.0 * i) for i, r in enumerate([1.15 * radius, 0.45 * radius] * 5)
        ],
    }[kind]()
    return [
        (r * math.cos(math.radians(a + angle)), r * math.sin(math.radians(a + angle)))
        for r, a in corners
    ]


def shape_centre(shape: Shape) -> tuple[float, float]:
    """(x, y) of the shape's centre in image widths, in [0, 1]."""
    row, col = divmod(list(POSITIONS).index(shape.position), 3)
    return (col + 0.5 + shape.offset[0]) / 3, (row + 0.5 + shape.offset[1]) / 3


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, side: int, fill=None) -> None:
    cx, cy = (v * side for v in shape_centre(shape))
    radius = SIZES[shape.size] * side / 3
    fill = COLOURS[shape.colour] if fill is None else fill
    if shape.kind == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        draw.polygon([(cx + x, cy + y) for x, y in _outline(shape.kind, radius, shape.angle)], fill)


def render_scene(scene: Scene, size: int = 224) -> Image.Image:
    """Draws `scene` as a PIL RGB image of size x size pixels; the same scene, the same pixels."""
    side = size * SUPERSAMPLE
    image = _background_image(scene.background, side)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        _draw_shape(draw, shape, side)
    return image.resize((size, size), Image.Resampling.BOX)


def render_object_ids(scene: Scene, size: int = 224) -> np.ndarray:
    """uint8[size, size]: which shape each pixel shows, 1 + its index in `scene.shapes`, or 0
    for background. Drawn as `render_scene` draws (later shapes on top), without anti-aliasing."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for index, shape in enumerate(scene.shapes, start=1):
        _draw_shape(draw, shape, size, fill=index)
    return np.asarray(image)


# ----------------------------------------------------------------------------- captions


def _noun_phrase(shape: Shape) -> str:
    return f"a {shape.size} {shape.colour} {shape.kind}"


def _join(phrases: Sequence[str]) -> str:
    """Lists phrases the English way: x / x and y / x, y and z."""
    return phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"


def short_caption(scene: Scene) -> str:
    """One lowercase phrase naming every shape in reading order, e.g.
    "a large red circle, a small blue square and a small green star"."""
    return _join([_noun_phrase(s) for s in scene.shapes])


def _cell_sentence(group: Sequence[Shape], index: int) -> str:
    """One sentence about one grid cell; even and odd cells take the two word orders."""
    where = POSITIONS[group[0].position]
    on_top = f" with {_noun_phrase(group[1])} on top of it" if len(group) == 2 else ""
    if index % 2 == 0:
        return f"{where} there is {_noun_phrase(group[0])}{on_top}."
    return f"{_noun_phrase(group[0])} sits {where}{on_top}."


def _relation_sentence(scene: Scene) -> str | None:
    """Where the first two shapes in different cells stand to each other, when their colour and
    kind alone name them without ambiguity ("the red circle is above the blue star")."""
    names = Counter((s.colour, s.kind) for s in scene.shapes)
    named = [g[0] for g in cell_groups(scene) if names[(g[0].colour, g[0].kind)] == 1]
    if len(named) < 2:
        return None
    first, second = named[:2]
    order = list(POSITIONS)
    same_row = order.index(first.position) // 3 == order.index(second.position) // 3
    relation = "to the left of" if same_row else "above"  # reading order puts `first` earlier
    return f"the {first.colour} {first.kind} is {relation} the {second.colour} {second.kind}."


def long_caption(scene: Scene) -> str:
    """Two to five sentences: how many shapes on which background, one sentence per grid cell
    (size, colour, kind, position), and a spatial relation when there is room for it."""
    n = len(scene.shapes)
    background = scene.background
    sentences = [
        f"{COUNT_WORDS[n - 1]} shape{'s sit' if n > 1 else ' sits'} on a "
        f"{background.pattern} {background.tone} background."
    ]
    sentences += [_cell_sentence(g, i) for i, g in enumerate(cell_groups(scene))]
    relation = _relation_sentence(scene)
    if relation and len(sentences) < 5:
        sentences.append(relation)
    return " ".join(s[0].upper() + s[1:] for s in sentences)


def objects_text(scene: Scene) -> str:
    """Every shape with its position, for scoring: "large red circle in the top left; ..."."""
    return "; ".join(f"{s.size} {s.colour} {s.kind} {POSITIONS[s.position]}" for s in scene.shapes)


CAPTIONS = {"short": short_caption, "long": long_caption}


# ----------------------------------------------------------------------------- parsing and scoring


class ParsedObject(NamedTuple):
    """One shape as a caption names it; `position` is None when the caption does not say."""

    size: str
    colour: str
    kind: str
    position: str | None = None


SYNONYMS = {"center": "centre", "gray": "grey", "big": "large", "little": "small"}
_POSITION_WORDS = {tuple(phrase.split()): cell for cell, phrase in POSITIONS.items()}


def _words(sentence: str) -> list[str]:
    return [SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", sentence.lower())]


def _find_positions(words: list[str]) -> list[tuple[int, str]]:
    """(word index, cell) of every position phrase such as "in the top left"."""
    found = []
    for start in range(len(words)):
        for phrase, cell in _POSITION_WORDS.items():
            if tuple(words[start : start + len(phrase)]) == phrase:
                found.append((start, cell))
    return found


def _parse_sentence(sentence: str) -> list[ParsedObject]:
    words = _words(sentence)
    positions = _find_positions(words)
    objects = []
    for i in range(len(words) - 2):
        size, colour, kind = words[i : i + 3]
        if size in SIZES and colour in COLOURS and kind in KINDS:
            # the nearest position phrase in the sentence, the earlier one on a tie
            nearest = min(positions, key=lambda p: (abs(p[0] - i), p[0]), default=(0, None))
            objects.append(ParsedObject(size, colour, kind, nearest[1]))
    return objects


def parse_caption(text: str) -> list[ParsedObject]:
    """The shapes a caption names (a multiset, in the caption's order), read from either style.

    A shape counts only when size, colour and kind come together ("large red
    circle"); a position phrase in the same sentence gives its cell. Unknown
    words are ignored, so a model's half-right caption still scores.
    """
    return [obj for sentence in re.split(r"[.;!?\n]", text) for obj in _parse_sentence(sentence)]


def scene_objects(scene: Scene) -> list[ParsedObject]:
    """The scene's shapes as `ParsedObject`s with positions, in reading order."""
    return [ParsedObject(s.size, s.colour, s.kind, s.position) for s in scene.shapes]


def _matched_f1(predicted: list[ParsedObject], truth: list[ParsedObject], fields: Sequence[str]):
    """(precision, recall, f1) of two lists of shapes that match on `fields` (ParsedObject
    names). Each true shape matches at most one predicted shape; both empty scores 1."""
    if not predicted and not truth:
        return 1.0, 1.0, 1.0

    def key(obj: ParsedObject) -> tuple:
        return tuple(getattr(obj, field) for field in fields)

    hits = sum((Counter(map(key, predicted)) & Counter(map(key, truth))).values())
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return precision, recall, f1


def _true_objects(reference: Scene | str) -> list[ParsedObject]:
    return scene_objects(reference) if isinstance(reference, Scene) else parse_caption(reference)


def object_f1(
    predicted_caption: str, reference: Scene | str, *, match_position: bool = False
) -> tuple[float, float, float]:
    """(precision, recall, f1) of the shapes a caption names against a scene or a caption.

    Shapes match on (size, colour, kind), and on position too with
    `match_position` (a caption without positions then matches nothing). Each
    reference shape matches at most one predicted shape. Both empty is a
    perfect score; otherwise an empty side scores 0.
    """
    fields = ATTRIBUTES if match_position else OBJECT_FIELDS
    return _matched_f1(parse_caption(predicted_caption), _true_objects(reference), fields)


def attribute_f1(predicted_caption: str, reference: Scene | str) -> dict[str, float]:
    """F1 of each attribute alone: {"size", "colour", "kind", "position"} -> float.

    Shapes match on that one attribute, so "colour" asks whether the caption
    names the right colours, as many times as the scene has them, whatever it
    says of their kinds. It tells which part of `object_f1` a model gets wrong.
    A caption without positions scores 0 on "position".
    """
    predicted, truth = parse_caption(predicted_caption), _true_objects(reference)
    return {field: _matched_f1(predicted, truth, (field,))[2] for field in ATTRIBUTES}


# ----------------------------------------------------------------------------- writing a dataset


def _make_example(task: tuple) -> dict:
    """Samples, renders and saves one example; returns its jsonl row."""
    out_dir, split, index, seed, caption, prefix, image_size = task
    scene = sample_scene(example_seed(seed, split, index), split=split)
    relative = f"images/{split}_{index:05d}.jpg"
    buffer = io.BytesIO()
    render_scene(scene, image_size).save(buffer, "JPEG", quality=90)
    write_atomic(pathlib.Path(out_dir) / relative, buffer.getvalue())
    return {
        "image": relative,
        "prefix": prefix,
        "suffix": CAPTIONS[caption](scene),
        "objects": objects_text(scene),
    }


def jsonl_name(split: str, n: int) -> str:
    """longcap100's file names: data_train90.jsonl, data_val10.jsonl (and data_test50.jsonl)."""
    return f"data_{split}{n}.jsonl"


def write_dataset(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 90,
    n_val: int = 10,
    n_test: int = 50,
    caption: str = "long",
    seed: int = 0,
    prefix: str = "caption en",
    image_size: int = 224,
    workers: int = 1,
    progress: bool = False,
) -> dict[str, pathlib.Path]:
    """Writes images and one jsonl file per split in longcap100's layout; returns the jsonl paths.

    out_dir/
      data_train{n_train}.jsonl   {"image": "images/train_00000.jpg", "prefix": "caption en",
      data_val{n_val}.jsonl        "suffix": <caption>, "objects": <objects_text>}
      data_test{n_test}.jsonl     (held-out colour-kind pairs, see HELD_OUT_PAIRS)
      images/{split}_{index:05d}.jpg   JPEG, quality 90, image_size x image_size

    The defaults give longcap100's names exactly; other counts change the
    number in the name. Image paths are relative to out_dir. "objects" is a
    plain string, so readers of longcap100 that ignore or tensorise extra
    fields keep working. Running again with the same arguments rewrites the
    same bytes; every file is replaced atomically (images left by an earlier,
    bigger run stay, unreferenced). A split with n == 0 is not written.
    `workers` > 1 renders in that many spawned processes; a script that asks
    for them needs the `if __name__ == "__main__":` guard.
    """
    _check_choice(caption, CAPTIONS, "caption")
    out = pathlib.Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    tasks = [
        (str(out), split, i, seed, caption, prefix, image_size)
        for split, n in counts.items()
        for i in range(n)
    ]
    rows = _run_tasks(tasks, workers, progress)
    paths, start = {}, 0
    for split, n in counts.items():
        if n:
            lines = "".join(json.dumps(row) + "\n" for row in rows[start : start + n])
            paths[split] = out / jsonl_name(split, n)
            write_atomic(paths[split], lines.encode())
        start += n
    return paths


def _run_tasks(tasks: list[tuple], workers: int, progress: bool) -> list[dict]:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), unit="img", disable=not progress)
    if workers <= 1:
        rows = []
        for task in tasks:
            rows.append(_make_example(task))
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rows = []
            for row in pool.imap(_make_example, tasks, chunksize=32):
                rows.append(row)
                bar.update()
    bar.close()
    return rows


# ----------------------------------------------------------------------------- looking at examples


def show_examples(examples: Iterable[tuple], ncols: int = 4, width: int = 36):
    """A matplotlib Figure of (image, caption) pairs, captions wrapped to `width` characters.

    Images may be PIL images or uint8/float arrays[H, W, 3]; floats in [-1, 1]
    (the model's input range) are shown as they would look in [0, 1].
    """
    from matplotlib.figure import Figure

    examples = list(examples)
    nrows = max(1, math.ceil(len(examples) / ncols))
    figure = Figure(figsize=(3 * ncols, 4.2 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (image, caption) in zip(axes, examples, strict=False):  # spare axes stay blank
        pixels = np.asarray(image)
        if pixels.dtype.kind == "f":
            pixels = np.clip((pixels + 1) / 2, 0, 1)
        ax.imshow(pixels)
        ax.set_title(textwrap.fill(caption, width), fontsize=7, loc="left", wrap=False)
    return figure


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m solutions.scenes",
        description="Write the shapes captioning dataset in longcap100's layout.",
    )
    parser.add_argument("out_dir", help="folder for the jsonl files and images/")
    parser.add_argument("--train", type=int, default=90, help="training examples")
    parser.add_argument("--val", type=int, default=10, help="validation examples")
    parser.add_argument("--test", type=int, default=50, help="held-out-combination examples")
    parser.add_argument("--caption", choices=sorted(CAPTIONS), default="long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="caption en", help="the task prompt of every row")
    parser.add_argument("--image-size", type=int, default=224, help="pixels per side")
    parser.add_argument("--workers", type=int, default=1, help="processes that render images")
    args = parser.parse_args(argv)
    paths = write_dataset(
        args.out_dir,
        n_train=args.train,
        n_val=args.val,
        n_test=args.test,
        caption=args.caption,
        seed=args.seed,
        prefix=args.prefix,
        image_size=args.image_size,
        workers=args.workers,
        progress=True,
    )
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
