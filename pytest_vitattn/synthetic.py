"""Deterministic synthetic shapes with exact object masks, for the embedded model.

Each image holds ONE filled, upright shape (circle, square, triangle, cross or ring) of
random colour, size and position, drawn over a textured background with thin distractor
strokes. Because the generator draws the object itself, its pixel mask is exact, so an
attention map can be scored against ground truth rather than a hand-drawn outline.

``shortcut=True`` also paints a class-specific block in the top-left corner: a cue that
predicts the label without looking at the object, which is what the shortcut model learns.

Only numpy and PIL are imported here so that the module stays cheap to import.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")

# Disjoint seed streams: a test, validation or example image is never a training image.
SPLITS: dict[str, int] = {"train": 0, "test": 1, "example": 2, "val": 3}

DEFAULT_SIZE = 64

# Object area as a share of the image: small enough that chance-level attention mass on
# the mask is low, large enough that the object spans several 8x8 patches.
MIN_AREA_SHARE = 0.04
MAX_AREA_SHARE = 0.12

# Shape area = coefficient * R**2, with R the half-extent of the upright shape (the
# circumradius for the square and triangle); used to pick R from the drawn area share.
_CROSS_HALF_WIDTH = 0.36  # arm half-width relative to R
_RING_INNER = 0.5  # hole radius relative to R
_AREA_COEFFICIENTS: dict[str, float] = {
    "circle": math.pi,
    "square": 2.0,
    "triangle": 3.0 * math.sqrt(3.0) / 4.0,
    "cross": 8.0 * _CROSS_HALF_WIDTH - 4.0 * _CROSS_HALF_WIDTH**2,
    "ring": math.pi * (1.0 - _RING_INNER**2),
}

# One vivid colour per class for the shortcut marker; the marker is one eighth of the image
# side, i.e. exactly one patch of the 64 px / 8 px embedded model.
MARKER_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
)
_MARKER_FRACTION = 8

_MAX_PLACEMENT_TRIES = 100


@dataclass(frozen=True)
class Sample:
    """One generated image with its ground truth.

    Attributes:
        image: RGB image, ``size`` x ``size``.
        mask: (H, W) bool, True exactly on the visible object's pixels.
        label: class index into ``SHAPE_CLASSES`` the sample is labelled with; the object's
            shape, except for shortcut samples drawn with ``shape_agreement < 1``, where it
            is the marker's class.
        shape: class index of the object actually drawn.
        marker_mask: (H, W) bool where the shortcut marker was drawn, or None without marker.
    """

    image: Image.Image
    mask: np.ndarray
    label: int
    shape: int
    marker_mask: np.ndarray | None = None


def make_sample(
    index: int,
    *,
    split: str = "train",
    size: int = DEFAULT_SIZE,
    shortcut: bool = False,
    shape_agreement: float = 1.0,
) -> Sample:
    """Generates sample ``index`` of ``split``; the same arguments give the same pixels.

    The marked (``shortcut=True``) and unmarked versions of one index are identical except
    for the marker, so a model can be compared on both.

    Args:
        index: non-negative sample number within the split.
        split: one of ``SPLITS`` ("train", "test", "example", "val"); each has its own seeds.
        size: image side in pixels.
        shortcut: paint the label's marker in the top-left corner.
        shape_agreement: with ``shortcut``, the probability that the object's shape is the
            labelled class; otherwise the shape is one of the other classes, so only the
            marker predicts the label reliably. Must be 1.0 without ``shortcut``.

    Returns:
        The sample; ``image`` is (size, size) RGB, ``mask`` and ``marker_mask`` (size, size).
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {sorted(SPLITS)}")
    if index < 0:
        raise ValueError(f"index {index} is negative")
    if not 0.0 <= shape_agreement <= 1.0:
        raise ValueError(f"shape_agreement {shape_agreement} is not in [0, 1]")
    if shape_agreement < 1.0 and not shortcut:
        raise ValueError("shape_agreement < 1 needs shortcut=True: the label would be noise")

    rng = np.random.default_rng([SPLITS[split], index])
    label = int(rng.integers(len(SHAPE_CLASSES)))
    # A separate stream for the shortcut's shape swap keeps every other draw identical
    # between the marked and unmarked versions of an index.
    shape = _drawn_shape(label, shape_agreement, np.random.default_rng([SPLITS[split], index, 1]))

    canvas = _background(rng, size)
    _draw_distractors(canvas, rng, size)
    # The object avoids the marker's corner in every image, so that marked and unmarked
    # versions of an index share the same object and mask.
    mask = _object_mask(SHAPE_CLASSES[shape], rng, size, keep_out=size // _MARKER_FRACTION)
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels[mask] = _object_colour(rng)
    # Sensor-like noise over everything, object included, so flat colour is no giveaway.
    pixels += rng.normal(0.0, 6.0, size=pixels.shape).astype(np.float32)
    image_array = np.clip(pixels, 0, 255).astype(np.uint8)

    marker = None
    if shortcut:
        marker = marker_mask(size)
        image_array[marker] = MARKER_COLOURS[label]
    return Sample(Image.fromarray(image_array), mask, label, shape, marker)


def marker_mask(size: int = DEFAULT_SIZE) -> np.ndarray:
    """Where the shortcut marker goes: (size, size) bool, the top-left eighth of each side."""
    side = size // _MARKER_FRACTION
    mask = np.zeros((size, size), dtype=bool)
    mask[:side, :side] = True
    return mask


def make_batch(
    indices: Iterable[int],
    *,
    split: str = "train",
    size: int = DEFAULT_SIZE,
    shortcut: bool = False,
    shape_agreement: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generates several samples as stacked arrays (see ``make_sample`` for the arguments).

    Returns:
        images (N, H, W, 3) uint8, labels (N,) int64, masks (N, H, W) bool.
    """
    samples = [
        make_sample(i, split=split, size=size, shortcut=shortcut, shape_agreement=shape_agreement)
        for i in indices
    ]
    images = np.stack([np.asarray(s.image) for s in samples])
    labels = np.array([s.label for s in samples], dtype=np.int64)
    masks = np.stack([s.mask for s in samples])
    return images, labels, masks


def _drawn_shape(label: int, shape_agreement: float, rng: np.random.Generator) -> int:
    if shape_agreement >= 1.0 or rng.random() < shape_agreement:
        return label
    others = [k for k in range(len(SHAPE_CLASSES)) if k != label]
    return int(rng.choice(others))


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Returns (..., 3) float32 RGB in [0, 255] for (...,) HSV arrays in [0, 1]."""
    channel_offsets = np.array([5.0, 3.0, 1.0])
    k = (channel_offsets + np.asarray(hue)[..., None] * 6.0) % 6.0
    chroma = (np.asarray(value) * np.asarray(saturation))[..., None]
    rgb = np.asarray(value)[..., None] - chroma * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return (rgb * 255.0).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth, muted and rather dark colour field plus an oriented stripe texture."""
    grid = (4, 4)
    coarse = _hsv_to_rgb(
        rng.random(grid), rng.uniform(0.0, 0.4, grid), rng.uniform(0.15, 0.55, grid)
    )
    field = np.asarray(
        Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0.0, math.pi)
    period = rng.uniform(3.0, 10.0)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2.0 * math.pi / period + phase)
    field += rng.uniform(4.0, 16.0) * stripes[..., None]
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


def _draw_distractors(canvas: Image.Image, rng: np.random.Generator, size: int) -> None:
    """Thin lines and arcs in any colour: clutter that is neither filled nor closed."""
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 8))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        width = int(rng.integers(1, 3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(-0.1 * size, 1.1 * size, size=4))
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=width)
        else:
            box = [(min(x0, x1), min(y0, y1)), (max(x0, x1) + 4, max(y0, y1) + 4)]
            start = float(rng.uniform(0, 360))
            draw.arc(box, start, start + float(rng.uniform(60, 200)), fill=colour, width=width)


def _object_colour(rng: np.random.Generator) -> np.ndarray:
    # Brighter than any background: the silhouette is a contrast a patch embedding can see,
    # while the hue is random so that colour carries no class information.
    return _hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.8, 1.0))


def _object_mask(shape: str, rng: np.random.Generator, size: int, keep_out: int) -> np.ndarray:
    """Draws the object's exact mask, (size, size) bool, clear of the top-left ``keep_out``."""
    area_share = rng.uniform(MIN_AREA_SHARE, MAX_AREA_SHARE)
    radius = math.sqrt(area_share * size * size / _AREA_COEFFICIENTS[shape])
    for _ in range(_MAX_PLACEMENT_TRIES):
        cx, cy = rng.uniform(radius + 1.0, size - radius - 1.0, size=2)
        if max(cx, cy) - radius > keep_out + 1:  # bounding box clear of the corner
            break
    mask_image = Image.new("1", (size, size), 0)
    _draw_shape(ImageDraw.Draw(mask_image), shape, float(cx), float(cy), radius)
    return np.asarray(mask_image, dtype=bool)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float) -> None:
    """Draws an upright shape: with 8 px patches and shapes two or three patches wide, free
    rotation makes squares, triangles and circles too alike for a budget of CPU minutes."""

    def polygon(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(cx + x, cy + y) for x, y in points]

    if shape in ("circle", "ring"):
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
        if shape == "ring":
            inner = radius * _RING_INNER
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif shape == "square":
        half = radius / math.sqrt(2.0)
        draw.polygon(polygon([(-half, -half), (half, -half), (half, half), (-half, half)]), fill=1)
    elif shape == "triangle":
        corners = [2.0 * math.pi * k / 3.0 - math.pi / 2.0 for k in range(3)]  # apex up
        draw.polygon(
            polygon([(radius * math.cos(a), radius * math.sin(a)) for a in corners]), fill=1
        )
    elif shape == "cross":
        w, r = radius * _CROSS_HALF_WIDTH, radius
        outline = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w),
                   (-r, w), (-r, -w), (-w, -w)]  # fmt: skip
        draw.polygon(polygon(outline), fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
