"""Deterministic synthetic shapes with exact object masks, for the embedded models.

Each image holds ONE filled shape (circle, square, triangle, cross or ring) drawn over a
cluttered background. Because the generator draws the object itself, its pixel mask is
exact, so an attention map can be scored against ground truth rather than a hand-drawn
outline.

Two styles (``style=``):

``"varied"`` (the default, 0.2): nothing but the silhouette tells the object apart. Object
    and background colours are drawn independently over the whole range (objects darker
    than their surroundings, of equal luminance, or of low contrast, with a floor of
    ``MIN_CONTRAST`` on the colour distance so that the shape stays visible); backgrounds
    have large bright regions, gradients, textures and bright non-object strokes; shapes
    sit at any rotation; object areas run from ``VARIED_AREA_SHARES[0]`` to
    ``VARIED_AREA_SHARES[1]`` of the image; ``GRAYSCALE_SHARE`` of the images are gray.
``"bright"`` (0.1): upright shapes brighter than any background. "Look at the brightest
    patch" solves every such image, which is why the 0.1 faithful model, trained on it, is
    now shipped as ``vitattn_tiny_shapes_brightness``: a subtle shortcut. Kept so that the
    0.1 images regenerate bit for bit.

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

STYLES: tuple[str, ...] = ("varied", "bright")
DEFAULT_STYLE = "varied"

# "bright" style: object area as a share of the image, small enough that chance-level
# attention mass on the mask is low, large enough that the object spans several 8x8 patches.
MIN_AREA_SHARE = 0.04
MAX_AREA_SHARE = 0.12

# "varied" style. Areas are drawn log-uniformly, so small objects are common.
VARIED_AREA_SHARES = (0.015, 0.15)
GRAYSCALE_SHARE = 0.15
# Euclidean RGB distance (0-255 units) between the object's colour and the mean colour of
# the background just around it: at least MIN_CONTRAST; "low contrast" objects stay below
# LOW_CONTRAST. A gray pair (g, g, g) vs (h, h, h) is sqrt(3) * |g - h| apart.
MIN_CONTRAST = 48.0
LOW_CONTRAST = 80.0
# How the object's colour is drawn relative to its surroundings, with probabilities.
CONTRAST_MODES: dict[str, float] = {
    "any": 0.35,
    "darker": 0.25,
    "equal-luminance": 0.15,
    "low": 0.25,
}
BRIGHT_DISTRACTOR_SHARE = 0.5
# Rec. 601 luma weights: "luminance" here and in the evaluation.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

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
        angle: the object's rotation in degrees (0 = upright; always 0 in "bright" style).
        grayscale: the image is gray ("varied" style only).
        contrast: colour distance between the object and the mean of the background around
            it, in 0-255 RGB units, as drawn (before sensor noise).
        contrast_mode: how the object's colour was drawn, one of ``CONTRAST_MODES``, or
            "brighter" in "bright" style.
        distractor_luminance: luminance (0-255) of the bright non-object stroke, or None
            when the image has none.
    """

    image: Image.Image
    mask: np.ndarray
    label: int
    shape: int
    marker_mask: np.ndarray | None = None
    angle: float = 0.0
    grayscale: bool = False
    contrast: float | None = None
    contrast_mode: str = "brighter"
    distractor_luminance: float | None = None


def make_sample(
    index: int,
    *,
    split: str = "train",
    size: int = DEFAULT_SIZE,
    shortcut: bool = False,
    shape_agreement: float = 1.0,
    style: str = DEFAULT_STYLE,
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
        style: one of ``STYLES``: "varied" (default) or "bright" (the 0.1 images, bit for
            bit); see the module docstring.

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
    if style not in STYLES:
        raise ValueError(f"style {style!r} is not one of {list(STYLES)}")
    if style == "varied":
        return _varied_sample(index, split, size, shortcut, shape_agreement)

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
    style: str = DEFAULT_STYLE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generates several samples as stacked arrays (see ``make_sample`` for the arguments).

    Returns:
        images (N, H, W, 3) uint8, labels (N,) int64, masks (N, H, W) bool.
    """
    samples = [
        make_sample(
            i,
            split=split,
            size=size,
            shortcut=shortcut,
            shape_agreement=shape_agreement,
            style=style,
        )
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


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    radius: float,
    angle: float = 0.0,
) -> None:
    """Draws a shape of half-extent ``radius`` at (cx, cy), turned by ``angle`` degrees."""
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))

    def polygon(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if angle == 0.0:  # the 0.1 arithmetic, so that "bright" images stay bit-identical
            return [(cx + x, cy + y) for x, y in points]
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]

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


# ---------------------------------------------------------------------------------------
# "varied" style


def luminance(pixels: np.ndarray) -> np.ndarray:
    """(..., 3) RGB -> (...,) float32 luminance in the same units (Rec. 601 weights)."""
    return np.asarray(pixels, dtype=np.float32) @ LUMA


def _varied_sample(
    index: int, split: str, size: int, shortcut: bool, shape_agreement: float
) -> Sample:
    """``make_sample`` for the "varied" style (arguments checked by the caller)."""
    # Streams of their own (third seed word 2), so a "varied" image never repeats a
    # "bright" one; the shape swap keeps stream 1, as in the "bright" style.
    rng = np.random.default_rng([SPLITS[split], index, 2])
    label = int(rng.integers(len(SHAPE_CLASSES)))
    shape = _drawn_shape(label, shape_agreement, np.random.default_rng([SPLITS[split], index, 1]))
    pixels, grayscale, distractor_luminance = _varied_canvas(rng, size)

    angle = (
        float(rng.uniform(0.0, 360.0)) if SHAPE_CLASSES[shape] not in ("circle", "ring") else 0.0
    )
    low, high = VARIED_AREA_SHARES
    area_share = float(math.exp(rng.uniform(math.log(low), math.log(high))))
    mask = _placed_mask(
        SHAPE_CLASSES[shape], area_share, angle, rng, size, keep_out=size // _MARKER_FRACTION
    )
    surround = _surround(mask)
    background_colour = pixels[surround].mean(axis=0)
    mode = str(rng.choice(list(CONTRAST_MODES), p=list(CONTRAST_MODES.values())))
    colour = _contrasting_colour(background_colour, mode, grayscale, rng)
    pixels[mask] = colour
    image_array = _with_sensor_noise(pixels, grayscale, rng)

    marker = None
    if shortcut:
        marker = marker_mask(size)
        image_array[marker] = MARKER_COLOURS[label]
    return Sample(
        Image.fromarray(image_array),
        mask,
        label,
        shape,
        marker,
        angle=angle,
        grayscale=grayscale,
        contrast=float(np.linalg.norm(colour - background_colour)),
        contrast_mode=mode,
        distractor_luminance=distractor_luminance,
    )


def make_object_free_image(
    index: int, *, split: str = "train", size: int = DEFAULT_SIZE
) -> Image.Image:
    """A "varied" image with no object: the background, strokes, gray share and noise of
    ``make_sample``'s "varied" style, drawn from a seed stream of its own (so it repeats
    no sample's background). Training shows these as "no shape here" (the faithful
    model's object-free images), so that no class can be the answer for an absent object.

    Returns:
        A (size, size) RGB image.
    """
    rng = _checked_stream(split, index, stream=3)
    pixels, grayscale, _ = _varied_canvas(rng, size)
    return Image.fromarray(_with_sensor_noise(pixels, grayscale, rng))


# Shapes of no class, for training a model that no class is "anything else": each near one
# class (an open ring, a crescent) or none. Area coefficients as in _AREA_COEFFICIENTS, for
# the half-extent R (approximate: these images have no mask to score).
OTHER_SHAPES: dict[str, float] = {
    "open ring": math.pi * (1.0 - _RING_INNER**2) * 0.75,
    "crescent": 1.4,
    "pentagon": 2.5 * math.sin(math.radians(72.0)),
    "star": 5.0 * 0.45 * math.sin(math.radians(36.0)),
    "half disc": math.pi / 2.0,
    "bar": 1.2,
}


def make_other_shape_image(
    index: int, *, split: str = "train", size: int = DEFAULT_SIZE
) -> tuple[Image.Image, str]:
    """A "varied" image whose one object is a shape of no class (``OTHER_SHAPES``), drawn
    like a sample's object (area, angle, contrast modes, noise) from a seed stream of its
    own.

    Returns:
        The (size, size) RGB image and the name of the shape drawn.
    """
    rng = _checked_stream(split, index, stream=4)
    shape = str(rng.choice(list(OTHER_SHAPES)))
    pixels, grayscale, _ = _varied_canvas(rng, size)
    low, high = VARIED_AREA_SHARES
    area_share = float(math.exp(rng.uniform(math.log(low), math.log(high))))
    radius = math.sqrt(area_share * size * size / OTHER_SHAPES[shape])
    cx, cy = rng.uniform(radius + 1.0, size - radius - 1.0, size=2)
    mask_image = Image.new("1", (size, size), 0)
    _draw_other_shape(
        ImageDraw.Draw(mask_image), shape, float(cx), float(cy), radius, rng.uniform(0, 360)
    )
    mask = np.asarray(mask_image, dtype=bool)
    background_colour = pixels[_surround(mask)].mean(axis=0)
    mode = str(rng.choice(list(CONTRAST_MODES), p=list(CONTRAST_MODES.values())))
    pixels[mask] = _contrasting_colour(background_colour, mode, grayscale, rng)
    return Image.fromarray(_with_sensor_noise(pixels, grayscale, rng)), shape


def _draw_other_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, angle: float
) -> None:
    """Draws one of ``OTHER_SHAPES`` of half-extent ``radius`` at (cx, cy), turned by
    ``angle`` degrees."""
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))

    def turned(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]

    def disc(x: float, y: float, r: float, fill: int) -> None:
        (px, py) = turned([(x, y)])[0]
        draw.ellipse([px - r, py - r, px + r, py + r], fill=fill)

    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "open ring":  # a ring with a quarter cut out
        disc(0.0, 0.0, radius, 1)
        disc(0.0, 0.0, radius * _RING_INNER, 0)
        draw.pieslice(box, angle - 45.0, angle + 45.0, fill=0)
    elif shape == "crescent":
        disc(0.0, 0.0, radius, 1)
        disc(0.45 * radius, 0.0, 0.8 * radius, 0)
    elif shape in ("pentagon", "star"):
        points = []
        for k in range(10 if shape == "star" else 5):
            r = radius if shape == "pentagon" or k % 2 == 0 else 0.45 * radius
            a = 2.0 * math.pi * k / (10 if shape == "star" else 5) - math.pi / 2.0
            points.append((r * math.cos(a), r * math.sin(a)))
        draw.polygon(turned(points), fill=1)
    elif shape == "half disc":
        draw.pieslice(box, angle, angle + 180.0, fill=1)
    elif shape == "bar":
        w = 0.3 * radius
        draw.polygon(turned([(-w, -radius), (w, -radius), (w, radius), (-w, radius)]), fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _checked_stream(split: str, index: int, stream: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split`` in seed stream ``stream`` (third seed
    word: 2 "varied" samples, 3 object-free images, 4 other shapes), arguments checked."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {sorted(SPLITS)}")
    if index < 0:
        raise ValueError(f"index {index} is negative")
    return np.random.default_rng([SPLITS[split], index, stream])


def _varied_canvas(rng: np.random.Generator, size: int) -> tuple[np.ndarray, bool, float | None]:
    """Everything of a "varied" image but the object and the noise.

    Returns:
        pixels (size, size, 3) float32, whether they are gray, and the luminance of the
        bright stroke (None without one; rounded on gray images, as drawn).
    """
    grayscale = bool(rng.random() < GRAYSCALE_SHARE)
    canvas = _varied_background(rng, size)
    distractor_luminance = _draw_varied_distractors(canvas, rng, size)
    pixels = np.asarray(canvas, dtype=np.float32).copy()
    if grayscale:
        pixels[:] = luminance(pixels)[..., None]
        if distractor_luminance is not None:
            distractor_luminance = float(np.round(distractor_luminance))
    return pixels, grayscale, distractor_luminance


def _with_sensor_noise(pixels: np.ndarray, grayscale: bool, rng: np.random.Generator) -> np.ndarray:
    """Sensor-like noise over everything, object included, so flat colour is no giveaway:
    (H, W, 3) float32 in, (H, W, 3) uint8 out (gray images get gray noise)."""
    noise_shape = (*pixels.shape[:2], 1) if grayscale else pixels.shape
    noisy = pixels + rng.normal(0.0, 6.0, size=noise_shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _varied_background(rng: np.random.Generator, size: int) -> Image.Image:
    """A colour field over the whole value range, often with a gradient, a large bright
    region and a texture: the brightest patch is as often background as object."""
    grid = (3, 3)
    coarse = _hsv_to_rgb(rng.random(grid), rng.uniform(0.0, 0.9, grid), rng.uniform(0.0, 1.0, grid))
    field = np.asarray(
        Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if rng.random() < 0.5:  # a gradient towards a random colour
        angle = rng.uniform(0.0, 2.0 * math.pi)
        ramp = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)
        weight = (rng.uniform(0.5, 1.0) * ramp)[..., None]
        target = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.0, 1.0))
        field = field * (1.0 - weight) + target * weight
    if rng.random() < 0.5:  # a large bright region: a soft-edged half-plane or disc
        if rng.random() < 0.5:
            angle = rng.uniform(0.0, 2.0 * math.pi)
            signed = (
                (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle) - rng.uniform(0.0, 0.35)
            )
        else:
            cx, cy, radius = rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0), rng.uniform(0.25, 0.5)
            signed = radius - np.hypot(xx - cx, yy - cy)
        steepness = size / rng.uniform(0.5, 3.0)
        weight = (1.0 / (1.0 + np.exp(np.clip(-signed * steepness, -50.0, 50.0))))[..., None]
        bright = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.8, 1.0))
        field = field * (1.0 - weight) + bright * weight
    texture = rng.integers(3)  # 0 none, 1 stripes, 2 checks
    if texture == 1:
        angle = rng.uniform(0.0, math.pi)
        period = rng.uniform(3.0, 12.0) / size
        phase = rng.uniform(0.0, 2.0 * math.pi)
        pattern = np.sin(
            (xx * math.cos(angle) + yy * math.sin(angle)) * 2.0 * math.pi / period + phase
        )
        field += rng.uniform(4.0, 24.0) * pattern[..., None]
    elif texture == 2:
        period = int(rng.integers(2, 7))
        pixel_y, pixel_x = np.mgrid[0:size, 0:size]
        pattern = ((pixel_y // period + pixel_x // period) % 2) * 2.0 - 1.0
        field += rng.uniform(4.0, 20.0) * pattern[..., None]
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


def _draw_varied_distractors(
    canvas: Image.Image, rng: np.random.Generator, size: int
) -> float | None:
    """Thin strokes of any colour and, in ``BRIGHT_DISTRACTOR_SHARE`` of the images, one
    thick bright stroke: bright clutter that is not the object.

    Returns:
        The bright stroke's luminance (0-255), or None without one.
    """
    _draw_distractors(canvas, rng, size)
    if rng.random() >= BRIGHT_DISTRACTOR_SHARE:
        return None
    colour = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.85, 1.0))
    fill = tuple(int(c) for c in colour)
    draw = ImageDraw.Draw(canvas)
    width = int(rng.integers(3, 6))
    points = [
        tuple(float(v) for v in rng.uniform(0.0, size, size=2))
        for _ in range(int(rng.integers(2, 4)))
    ]
    draw.line(points, fill=fill, width=width, joint="curve")
    return float(luminance(np.array(fill, dtype=np.float32)))


def _placed_mask(
    shape: str, area_share: float, angle: float, rng: np.random.Generator, size: int, keep_out: int
) -> np.ndarray:
    """The exact mask, (size, size) bool, of a shape of ``area_share`` turned by ``angle``,
    placed at random inside the image and clear of the top-left ``keep_out`` square."""
    radius = math.sqrt(area_share * size * size / _AREA_COEFFICIENTS[shape])
    # The turned cross reaches past R to its arm corners.
    extent = radius * (math.hypot(1.0, _CROSS_HALF_WIDTH) if shape == "cross" else 1.0)
    for _ in range(_MAX_PLACEMENT_TRIES):
        cx, cy = rng.uniform(extent + 1.0, size - extent - 1.0, size=2)
        if max(cx, cy) - extent > keep_out + 1:  # bounding box clear of the corner
            break
    mask_image = Image.new("1", (size, size), 0)
    _draw_shape(ImageDraw.Draw(mask_image), shape, float(cx), float(cy), radius, angle)
    return np.asarray(mask_image, dtype=bool)


def _surround(mask: np.ndarray, width: int = 3) -> np.ndarray:
    """(H, W) bool: the pixels within ``width`` (Chebyshev distance) of the mask, not on it."""
    grown = mask.copy()
    for axis in (0, 1):
        source = grown.copy()
        for shift in range(1, width + 1):
            forward = [slice(None), slice(None)]
            backward = [slice(None), slice(None)]
            forward[axis], backward[axis] = slice(shift, None), slice(None, -shift)
            grown[tuple(forward)] |= source[tuple(backward)]
            grown[tuple(backward)] |= source[tuple(forward)]
    return grown & ~mask


def _contrasting_colour(
    background: np.ndarray, mode: str, grayscale: bool, rng: np.random.Generator
) -> np.ndarray:
    """An object colour (3,) float32 at least ``MIN_CONTRAST`` from ``background`` (3,).

    Modes: "any" (anywhere in the RGB cube), "darker" (luminance at least MIN_CONTRAST / 2
    below the background's), "equal-luminance" (within 8 of the background's luminance;
    on gray images, where that would hide the object, it becomes "low"), "low" (distance
    below ``LOW_CONTRAST``). Where a mode cannot be met (nothing is darker than black) the
    colour falls back to "any".
    """
    if grayscale and mode == "equal-luminance":
        mode = "low"
    background_luminance = float(luminance(background))
    for _ in range(200):
        if mode == "low":
            direction = rng.normal(size=3)
            if grayscale:
                direction = np.full(3, 1.0 if rng.random() < 0.5 else -1.0)
            colour = background + rng.uniform(
                MIN_CONTRAST, LOW_CONTRAST
            ) * direction / np.linalg.norm(direction)
        else:
            colour = rng.uniform(0.0, 255.0, size=3)
            if grayscale:
                colour = np.full(3, colour[0])
            if mode == "equal-luminance":
                colour = colour + (background_luminance - float(luminance(colour)))
        colour = np.clip(colour, 0.0, 255.0).astype(np.float32)
        distance = float(np.linalg.norm(colour - background))
        colour_luminance = float(luminance(colour))
        if distance < MIN_CONTRAST:
            continue
        if mode == "low" and distance >= LOW_CONTRAST:
            continue
        if mode == "darker" and colour_luminance > background_luminance - MIN_CONTRAST / 2:
            continue
        if mode == "equal-luminance" and abs(colour_luminance - background_luminance) > 8.0:
            continue
        return colour
    if mode == "any":
        raise RuntimeError(f"no colour {MIN_CONTRAST} away from {background}")  # unreachable
    return _contrasting_colour(background, "any", grayscale, rng)
