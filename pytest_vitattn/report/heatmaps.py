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
OUTLINE_COLOURS = ((255, 64, 64), (64, 224, 255), (255, 230, 0), (255, 128, 255))


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


def sprite_png(maps: np.ndarray, scale: int = 1, gap: int = 1, opaque_gap: bool = False) -> bytes:
    """Many maps tiled into one palette PNG, each scaled to its own min..max.

    One image per grid instead of one per map: the per-file PNG overhead (signature,
    header, 192-byte palette) is paid once, and the browser decodes one image.

    Args:
        maps: (rows, columns, grid_h, grid_w) float array.
        scale: pixels per patch (1 for the report, which the browser scales up).
        gap: pixels between maps, so scaling never blends neighbours.
        opaque_gap: white gaps (for viewers that show the image as it is) instead of
            transparent ones.
    """
    rows, columns, height, width = maps.shape
    cell_h, cell_w = height * scale + gap, width * scale + gap
    # Palette index LEVELS is the gap colour.
    canvas = np.full((rows * cell_h - gap, columns * cell_w - gap), LEVELS, dtype=np.uint8)
    for row in range(rows):
        for column in range(columns):
            values = maps[row, column].astype(np.float32)
            indices = to_levels(values, float(values.min()), float(values.max()))
            block = indices.repeat(scale, axis=0).repeat(scale, axis=1)
            top, left = row * cell_h, column * cell_w
            canvas[top : top + height * scale, left : left + width * scale] = block
    image = Image.fromarray(canvas, "P")
    image.putpalette(palette(SEQUENTIAL) + bytes((255, 255, 255)))
    if not opaque_gap:
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


def outline_png(mask: np.ndarray, colour_index: int = 0) -> bytes:
    """The boundary of a mask as a transparent PNG at the mask's resolution.

    Args:
        mask: (h, w) bool, the mask at model input resolution.
        colour_index: which of ``OUTLINE_COLOURS`` to draw in.
    """
    inside = np.asarray(mask, dtype=bool)
    padded = np.pad(inside, 1, mode="constant", constant_values=False)
    # A pixel is on the outline when it is inside and one of its 4 neighbours is not.
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & inside
    edge = (inside & ~interior).astype(np.uint8)
    image = Image.fromarray(edge, "P")
    colour = OUTLINE_COLOURS[colour_index % len(OUTLINE_COLOURS)]
    image.putpalette(bytes((0, 0, 0, *colour)))
    image.info["transparency"] = bytes((0, 255))
    return _png_bytes(image)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """A ``data:`` URI, so the report needs no files beside it."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _palette_png(indices: np.ndarray, colormap: str) -> bytes:
    image = Image.fromarray(indices, "P")
    image.putpalette(palette(colormap))
    return _png_bytes(image)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()
