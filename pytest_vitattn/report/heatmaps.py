"""Cheap images for the report: attention maps as tiny palette PNGs, photos, mask outlines.

A map is encoded at its patch-grid size (e.g. 14 x 14 pixels) through a matplotlib colormap
lookup table, and the browser scales it up with ``image-rendering: pixelated``. That is
what makes a grid cost a few kilobytes and milliseconds instead of a matplotlib figure.
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache

import numpy as np
from PIL import Image

SEQUENTIAL = "viridis"
DIVERGING = "RdBu_r"
# 64 colour levels keep the PLTE chunk at 192 bytes; the step between levels is below what
# the eye tells apart on viridis, and the exact numbers are in every cell's tooltip.
LEVELS = 64
SMALL_PHOTO_PIXELS = 128 * 128
# Light lines, each drawn with a dark halo on both sides: one of the two contrasts with any
# colour under it (a red outline vanished on red objects).
OUTLINE_COLOURS = ((255, 255, 255), (255, 236, 110), (130, 236, 255), (255, 170, 255))
HALO = (0, 0, 0, 220)
# The shared scale: log2 of a value in multiples of uniform attention (1 / patches), so
# "1x" means "as much as if the map were flat". Colours span 1/8x .. 32x; beyond is clipped.
SHARED_LOG2_RANGE = (-3.0, 5.0)
SHARED_TICKS = (-3, -2, -1, 0, 1, 2, 3, 4, 5)
# Overlay opacity follows attention on the shared scale: clear at or below 1x uniform,
# rising to OVERLAY_MAX_ALPHA at OVERLAY_FULL_LOG2 (8x) and above.
OVERLAY_FULL_LOG2 = 3.0
OVERLAY_MAX_ALPHA = 0.9
SCALES = ("shared", "own")


@lru_cache(maxsize=8)
def palette(name: str, levels: int = LEVELS) -> bytes:
    """The colormap sampled at ``levels`` points, as a flat RGB palette of 3 * levels bytes."""
    import matplotlib

    colours = matplotlib.colormaps[name](np.linspace(0.0, 1.0, levels))[:, :3]
    return (colours * 255).round().astype(np.uint8).tobytes()


def to_levels(values: np.ndarray, low: float, high: float, levels: int = LEVELS) -> np.ndarray:
    """Maps values in [low, high] to colour indices 0..levels-1; a flat map gives all 0.

    Args:
        values: (h, w) float array.

    Returns:
        (h, w) uint8 indices.
    """
    span = high - low
    if not np.isfinite(span) or span <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float32) - low) / span
    return np.clip(np.rint(scaled * (levels - 1)), 0, levels - 1).astype(np.uint8)


def shared_levels(values: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """Colour indices on the shared scale: log2(value x patches), 1/8x .. 32x uniform.

    Args:
        values: (h, w) float array, one map (it need not sum to 1: the scale is per patch).

    Returns:
        (h, w) uint8 indices; zeros and values below 1/8x get index 0.
    """
    values = np.asarray(values, dtype=np.float32)
    with np.errstate(divide="ignore"):
        relative = np.log2(np.maximum(values, 0) * values.size)
    low, high = SHARED_LOG2_RANGE
    scaled = (np.nan_to_num(relative, neginf=low) - low) / (high - low)
    return np.clip(np.rint(scaled * (levels - 1)), 0, levels - 1).astype(np.uint8)


def levels_for(values: np.ndarray, scale: str) -> np.ndarray:
    """Colour indices of one (h, w) map: "shared" (``shared_levels``) or "own" (its own
    min..max, as matplotlib's imshow)."""
    if scale == "shared":
        return shared_levels(values)
    values = np.asarray(values, dtype=np.float32)
    return to_levels(values, float(values.min()), float(values.max()))


def shared_position(multiple: float) -> float:
    """Where ``multiple`` x uniform sits on the shared colour bar, 0..1 (clipped)."""
    low, high = SHARED_LOG2_RANGE
    if multiple <= 0:
        return 0.0
    return float(np.clip((np.log2(multiple) - low) / (high - low), 0.0, 1.0))


def overlay_alpha(levels: int = LEVELS) -> bytes:
    """Per-index opacity (0..255) of the overlay palette: clear up to the index of 1x
    uniform, then rising linearly (in log2) to ``OVERLAY_MAX_ALPHA`` at the index of 8x."""
    low, high = SHARED_LOG2_RANGE
    uniform = round((0.0 - low) / (high - low) * (levels - 1))
    full = round((OVERLAY_FULL_LOG2 - low) / (high - low) * (levels - 1))
    ramp = np.clip((np.arange(levels) - uniform) / (full - uniform), 0.0, 1.0)
    return (ramp * OVERLAY_MAX_ALPHA * 255).round().astype(np.uint8).tobytes()


def luma(colormap: str = SEQUENTIAL) -> np.ndarray:
    """(LEVELS,) 0.2126 R + 0.7152 G + 0.0722 B of each palette colour (sRGB values, 0..1):
    what the overlay's SVG filter computes per pixel; rises with the index on viridis."""
    flat = np.frombuffer(palette(colormap), np.uint8).reshape(-1, 3) / 255.0
    return flat @ np.array([0.2126, 0.7152, 0.0722])


def opacity_table(points: int = 101) -> list[float]:
    """``feFuncA`` table values: opacity as a function of a pixel's luma, sampled at
    ``points`` even steps of 0..1, so that each palette colour gets ``overlay_alpha``.

    The overlay shows the shared-scale sprite through an SVG filter (alpha = luma, then this
    table), instead of a second copy of the sprite with opacities in its palette.
    """
    levels = luma()
    if not (np.diff(levels) > 0).all():
        raise ValueError(f"{SEQUENTIAL} is not monotonic in luma: the overlay needs it")
    alpha = np.frombuffer(overlay_alpha(), np.uint8) / 255.0
    return np.interp(np.linspace(0.0, 1.0, points), levels, alpha).round(4).tolist()


def gradient_stops(colormap: str = SEQUENTIAL, stops: int = 9) -> list[str]:
    """CSS colour stops of the colormap, for the colour bars (same palette as the maps)."""
    flat = palette(colormap)
    indices = np.linspace(0, LEVELS - 1, stops).round().astype(int)
    return ["#{:02x}{:02x}{:02x}".format(*flat[3 * i : 3 * i + 3]) for i in indices]


def heatmap_png(values: np.ndarray, colormap: str = SEQUENTIAL) -> bytes:
    """One map as a palette PNG, one pixel per patch, scaled to its own min..max (as imshow).

    Args:
        values: (grid_h, grid_w) float array.
    """
    values = np.asarray(values, dtype=np.float32)
    return _palette_png(to_levels(values, float(values.min()), float(values.max())), colormap)


def difference_png(values: np.ndarray) -> bytes:
    """A signed difference map on a diverging colormap centred on zero.

    Args:
        values: (grid_h, grid_w) float array, e.g. current - baseline.
    """
    values = np.asarray(values, dtype=np.float32)
    limit = float(np.abs(values).max())
    if limit == 0:
        indices = np.full(values.shape, LEVELS // 2, dtype=np.uint8)
    else:
        indices = to_levels(values, -limit, limit)
    return _palette_png(indices, DIVERGING)


def sprite_png(
    maps: np.ndarray,
    scale: int = 1,
    gap: int = 1,
    opaque_gap: bool = False,
    colour_scale: str = "own",
) -> bytes:
    """Many maps tiled into one palette PNG.

    One image per grid instead of one per map: the per-file PNG overhead (signature,
    header, 192-byte palette) is paid once, and the browser decodes one image.

    Args:
        maps: (rows, columns, grid_h, grid_w) float array.
        scale: pixels per patch (1 for the report, which the browser scales up).
        gap: pixels between maps, so scaling never blends neighbours.
        opaque_gap: white gaps (for viewers that show the image as it is) instead of
            transparent ones.
        colour_scale: "own" (each map its own min..max) or "shared" (``shared_levels``).
    """
    rows, columns, height, width = maps.shape
    cell_h, cell_w = height * scale + gap, width * scale + gap
    # Palette index LEVELS is the gap colour.
    canvas = np.full((rows * cell_h - gap, columns * cell_w - gap), LEVELS, dtype=np.uint8)
    for row in range(rows):
        for column in range(columns):
            indices = levels_for(maps[row, column], colour_scale)
            block = indices.repeat(scale, axis=0).repeat(scale, axis=1)
            top, left = row * cell_h, column * cell_w
            canvas[top : top + height * scale, left : left + width * scale] = block
    image = Image.fromarray(canvas, "P")
    image.putpalette(palette(SEQUENTIAL) + bytes((255, 255, 255)))
    if not opaque_gap:
        image.info["transparency"] = bytes([255] * LEVELS + [0])
    return _png_bytes(image)


def sprite_rows_png(
    rows: list[np.ndarray], tops: list[int], size: tuple[int, int], gap: int, colour_scale: str
) -> bytes:
    """Maps tiled in rows whose map sizes may differ (e.g. PiT's 27x27, 14x14, 7x7 stages),
    one pixel per patch, transparent elsewhere.

    Args:
        rows: per row, a (columns, h, w) float array; h and w may differ between rows.
        tops: the sprite row where each row of maps starts.
        size: (width, height) of the sprite.
        gap: pixels between neighbouring maps in a row.
        colour_scale: "own" or "shared" (``levels_for``).
    """
    width, height = size
    canvas = np.full((height, width), LEVELS, dtype=np.uint8)
    for row, top in zip(rows, tops, strict=True):
        columns, map_h, map_w = row.shape
        for column in range(columns):
            left = column * (map_w + gap)
            canvas[top : top + map_h, left : left + map_w] = levels_for(row[column], colour_scale)
    image = Image.fromarray(canvas, "P")
    image.putpalette(palette(SEQUENTIAL) + bytes((255, 255, 255)))
    image.info["transparency"] = bytes([255] * LEVELS + [0])
    return _png_bytes(image)


def photo_bytes(image: np.ndarray) -> tuple[bytes, str]:
    """The image as the model saw it: JPEG, or PNG for small images when that is smaller.

    Args:
        image: (h, w, 3) uint8.

    Returns:
        (encoded bytes, MIME type).
    """
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=80)
    jpeg = buffer.getvalue()
    # Compressing a large PNG costs more than the rest of a record; small synthetic
    # images (flat colours, sharp edges) are often smaller and crisper as PNG.
    if picture.width * picture.height > SMALL_PHOTO_PIXELS:
        return jpeg, "image/jpeg"
    png = _png_bytes(picture)
    return (png, "image/png") if len(png) <= len(jpeg) else (jpeg, "image/jpeg")


def outline_png(
    mask: np.ndarray, colour_index: int = 0, size: tuple[int, int] | None = None
) -> bytes:
    """The boundary of a mask as a transparent PNG: a light line two pixels wide (one
    inside, one outside the mask) between dark halos two pixels wide, so it shows on light
    and dark, red and green alike.

    Args:
        mask: (h, w) bool, the mask at model input resolution.
        colour_index: which of ``OUTLINE_COLOURS`` the line is drawn in.
        size: (width, height) the outline is shown at; the mask is resampled (nearest)
            to it first, so lines are 2 screen pixels whatever the model's input size.
    """
    inside = np.asarray(mask, dtype=bool)
    if size is not None and (size[0], size[1]) != (inside.shape[1], inside.shape[0]):
        resized = Image.fromarray(inside.astype(np.uint8) * 255).resize(size, Image.NEAREST)
        inside = np.asarray(resized) >= 128
    line = (inside & _dilate(~inside, 1)) | (~inside & _dilate(inside, 1))
    halo = _dilate(line, 2) & ~line
    canvas = np.where(line, 2, np.where(halo, 1, 0)).astype(np.uint8)
    image = Image.fromarray(canvas, "P")
    colour = OUTLINE_COLOURS[colour_index % len(OUTLINE_COLOURS)]
    image.putpalette(bytes((0, 0, 0, *HALO[:3], *colour)))
    image.info["transparency"] = bytes((0, HALO[3], 255))
    return _png_bytes(image)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of an (h, w) bool array by a (2 radius + 1) square."""
    height, width = mask.shape
    padded = np.pad(mask, radius, mode="constant", constant_values=False)
    grown = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """A ``data:`` URI, so the report needs no files beside it."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def data_uri_bytes(uri: str) -> bytes:
    """The bytes of a base64 ``data:`` URI (inverse of ``data_uri``)."""
    return base64.b64decode(uri.split(",", 1)[1])


def _palette_png(indices: np.ndarray, colormap: str) -> bytes:
    image = Image.fromarray(indices, "P")
    image.putpalette(palette(colormap))
    return _png_bytes(image)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()
