"""Drawing a `Scene`: its background and shapes as an RGB image, or as a map of which
shape covers each pixel."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from solutions.scenes.world import (
    COLOURS,
    POSITIONS,
    SIZES,
    SUPERSAMPLE,
    TONES,
    Background,
    Scene,
    Shape,
    pick_one,
)


def _tone_rgb(tone: str) -> np.ndarray:
    value = TONES[tone]
    return np.array(value if isinstance(value, tuple) else (value,) * 3, np.float32)


def _pattern_marks(pattern: str, rng: np.random.Generator, side: int) -> np.ndarray:
    """bool[side, side]: where a striped, checked or dotted pattern takes the second shade."""
    # A row and a column of coordinates (in pattern periods) broadcast into the full grid.
    coords = (np.arange(side, dtype=np.float32) + 0.5) / (side * rng.uniform(0.06, 0.12))
    x, y = coords[None, :], coords[:, None]
    if pattern == "striped":
        direction = pick_one(rng, ((1, 0), (0, 1), (1, 1), (1, -1)))
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
