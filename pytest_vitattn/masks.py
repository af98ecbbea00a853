"""Read masks as users store them, and refuse the ones whose meaning would be a guess.

A mask comes out as (height, width) float32 area coverage in [0, 1] (1 = object). What the
stored values mean:

- bool: True is the object.
- integers (arrays, 8/16-bit grayscale PNGs, palette PNGs read by INDEX, never by colour):
  only {0, 1}, {0, 255} or {0, 65535} are binary masks without ``label=``; any other set of
  values is a label map and needs ``label=`` (one id or several), else ``MaskError`` lists
  the values found.
- floats in [0, 1]: coverage (soft masks); floats holding whole numbers follow the integer
  rules (a label map saved as float stays a label map).
- ``label=`` keeps the pixels whose value is one of the ids; an id the mask does not hold is
  an error naming the values it does hold.

Soft 8/16-bit masks (anti-aliased edges) look like label maps, so they are refused too:
``soft_mask`` reads them as value / 255 (or / 65535) when that is what they are. COCO
polygons and RLE become masks with ``coco_mask`` (needs the optional ``pycocotools``).
No torch, no pytest here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from pytest_vitattn.errors import MaskError

Label = int | Iterable[int] | None

# Binary masks as tools write them: 0/1 (segmentation outputs), 0/255 and 0/65535 (images).
_BINARY_TOPS = (1, 255, 65535)
_SHOWN_VALUES = 8


def check_label(label: Any) -> tuple[int, ...] | None:
    """``label=`` as a tuple of ids, or None; raises TypeError/ValueError for bad values."""
    if label is None:
        return None
    ids = [label] if _is_integer(label) or isinstance(label, (bool, np.bool_)) else label
    if isinstance(ids, (str, bytes, float)) or not isinstance(ids, Iterable):
        raise TypeError(f"label= must be an int id or a list of int ids, got {label!r}")
    ids = list(ids)
    if not ids:
        raise ValueError("label= got an empty list; pass at least one id")
    for item in ids:
        if isinstance(item, (bool, np.bool_)) or not _is_integer(item):
            raise TypeError(f"label= ids must be ints (not bool or float), got {item!r}")
        if item < 0:
            raise ValueError(f"label= ids are non-negative, got {item}")
    return tuple(sorted({int(item) for item in ids}))


def load_mask(source: Any, label: Label = None) -> np.ndarray:
    """Read one mask as (height, width) float32 area coverage in [0, 1].

    Args:
        source: a path, a PIL image, or a (height, width) array or tensor (see the module
            docstring for what values mean).
        label: id(s) of the object in a label map or palette PNG; required when the mask
            holds more than two values.

    Returns:
        (height, width) float32 in [0, 1].

    Raises:
        MaskError: unreadable, not 2-D, negative or non-finite values, an ambiguous set of
            values without ``label=``, or a ``label=`` the mask does not hold.
    """
    ids = check_label(label)
    values, kind = read_values(source)
    return interpret(values, ids, kind)


def read_values(source: Any) -> tuple[np.ndarray, str]:
    """The stored values of a mask, unscaled: ((height, width) array, what it was)."""
    from pytest_vitattn.images import open_file

    if isinstance(source, (str, os.PathLike)):
        name = Path(source).name
        return _pil_values(open_file(Path(source), MaskError, "mask"), f"mask file {name}")
    if isinstance(source, Image.Image):
        return _pil_values(source, "mask image")
    if type(source).__module__.startswith("torch") and hasattr(source, "detach"):
        source = source.detach().cpu().numpy()
    if not isinstance(source, np.ndarray):
        raise MaskError(
            f"cannot use a {type(source).__name__} as a mask: pass a file path, a PIL image, "
            "or a (height, width) array or tensor"
        )
    array = np.squeeze(source)
    if array.ndim != 2:
        raise MaskError(f"a mask must be 2-D (height, width); got shape {source.shape}")
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.number)):
        raise MaskError(f"a mask array must be bool or numeric, got dtype {array.dtype}")
    return array, f"{array.dtype} mask array"


def interpret(values: np.ndarray, label: tuple[int, ...] | None, kind: str) -> np.ndarray:
    """Stored values -> (height, width) float32 coverage, by the rules of the module docstring.

    Args:
        values: (height, width) bool or numeric array, unscaled.
        label: the ids to keep (see ``check_label``), or None.
        kind: what the values came from, for messages (e.g. "mask file bird.png").
    """
    if values.dtype == bool:
        if label is not None:
            raise MaskError(
                f"label={_ids_text(label)} picks ids in a label map, but the {kind} is boolean "
                "(True = object): drop label="
            )
        return values.astype(np.float32)
    numbers = values.astype(np.float64)
    if not np.isfinite(numbers).all():
        raise MaskError(f"the {kind} holds NaN or infinite values; masks must be finite")
    if numbers.min() < 0:
        raise MaskError(
            f"the {kind} holds negative values (down to {numbers.min():g}); masks are 0/1, "
            "0/255, fractions in [0, 1], or non-negative label ids"
        )
    whole = bool(np.all(numbers == np.round(numbers)))
    if label is not None:
        return _select(numbers, label, kind, whole)
    if not whole:
        if numbers.max() > 1:
            raise MaskError(
                f"the {kind} holds fractional values up to {numbers.max():g}: soft masks must "
                "be fractions in [0, 1]; divide by the largest possible value"
            )
        return numbers.astype(np.float32)
    found = np.unique(numbers)
    for top in _BINARY_TOPS:
        if set(found.tolist()) <= {0.0, float(top)}:
            return (numbers / top).astype(np.float32)
    raise MaskError(
        f"the {kind} holds {len(found)} different values ({_values_text(found)}), so it is "
        "not a 0/1, 0/255 or 0/65535 mask: if it is a label map or palette PNG, pass "
        "label=<id> (or label=[ids]) to say which is the object; if it is a soft mask with "
        "anti-aliased edges, pass pytest_vitattn.masks.soft_mask(source) or floats in [0, 1]"
    )


def soft_mask(source: Any) -> np.ndarray:
    """Read a soft grayscale mask as fractions: 8-bit values / 255, 16-bit values / 65535.

    Use it for anti-aliased masks, whose many grey levels would otherwise be refused as a
    possible label map. Palette and colour images are refused: their values are not levels.

    Returns:
        (height, width) float32 in [0, 1].
    """
    values, kind = read_values(source)
    if "palette" in kind:
        raise MaskError(f"the {kind} holds palette indices, not grey levels; use label=")
    if values.dtype == bool:
        return values.astype(np.float32)
    if values.dtype == np.uint8:
        return values.astype(np.float32) / 255
    if values.dtype == np.uint16:
        return values.astype(np.float32) / 65535
    floating = np.issubdtype(values.dtype, np.floating) and values.size
    if floating and values.min() >= 0 and values.max() <= 1:
        return values.astype(np.float32)
    raise MaskError(
        f"soft_mask reads 8-bit (/ 255) or 16-bit (/ 65535) grey levels or floats in [0, 1]; "
        f"the {kind} has dtype {values.dtype}"
    )


def coco_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO annotation's ``segmentation`` (polygons, RLE or compressed RLE) as a mask.

    Decoded by ``pycocotools`` (the COCO API's own code), an optional dependency:
    ``pip install pytest-vitattn[coco]``.

    Args:
        segmentation: a list of polygons ``[[x1, y1, x2, y2, ...], ...]``, or an RLE dict
            ``{"size": [h, w], "counts": ...}`` (counts a list or a compressed string).
        height, width: the image's size, as in the COCO ``images`` entry.

    Returns:
        (height, width) bool, True inside the object.
    """
    with warnings.catch_warnings():
        # pycocotools 2.0.x meets numpy 2's __array__ copy rule with a DeprecationWarning.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return _coco_decode(segmentation, height, width)


def _coco_decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    try:
        from pycocotools import mask as coco
    except ImportError:
        raise MaskError(
            "coco_mask needs pycocotools: pip install 'pytest-vitattn[coco]' (or pycocotools)"
        ) from None
    if isinstance(segmentation, dict):
        size = list(segmentation.get("size", []))
        if size != [height, width]:
            raise MaskError(f"the RLE's size is {size}, but the image is [{height}, {width}]")
        rle = segmentation
        if isinstance(rle.get("counts"), list):
            rle = coco.frPyObjects(rle, height, width)
    elif isinstance(segmentation, list) and segmentation:
        polygons = [list(map(float, polygon)) for polygon in segmentation]
        if any(len(polygon) < 6 or len(polygon) % 2 for polygon in polygons):
            raise MaskError("each COCO polygon is a flat list of at least 3 x, y pairs")
        rle = coco.merge(coco.frPyObjects(polygons, height, width))
    else:
        raise MaskError(
            "a COCO segmentation is a list of polygons or an RLE dict with 'size' and "
            f"'counts'; got {type(segmentation).__name__}"
        )
    return np.asarray(coco.decode(rle), dtype=bool)


def _pil_values(image: Image.Image, kind: str) -> tuple[np.ndarray, str]:
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        alpha = np.asarray(image.getchannel("A"))
        if (alpha != 255).any():
            raise MaskError(
                f"the {kind} has transparent pixels (mode {mode}); a mask's meaning must be "
                "in its values: save it without an alpha channel"
            )
        image = image.convert({"LA": "L", "La": "L", "PA": "P"}.get(mode, "RGB"))
        mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=bool), kind
    if mode == "P":
        return np.asarray(image), f"palette {kind} (read by index)"
    if mode in ("L", "I", "F") or mode.startswith("I;16"):
        values = np.asarray(image)
        if mode.startswith("I;16"):
            values = values.astype(np.uint16)
        return values, kind
    rgb = np.asarray(image.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0], kind  # grey stored as colour
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    shown = ", ".join(str(tuple(int(c) for c in colour)) for colour in colours[:_SHOWN_VALUES])
    more = f" and {len(colours) - _SHOWN_VALUES} more" if len(colours) > _SHOWN_VALUES else ""
    raise MaskError(
        f"the {kind} is a colour image ({len(colours)} colours: {shown}{more}); a colour "
        "is not an object id: save the mask as a label map (8/16-bit grayscale or a palette "
        "PNG, one id per pixel) and pass label=<id>"
    )


def _select(numbers: np.ndarray, label: tuple[int, ...], kind: str, whole: bool) -> np.ndarray:
    if not whole:
        raise MaskError(
            f"label={_ids_text(label)} picks ids in a label map, but the {kind} holds "
            "fractional values (a soft mask): drop label="
        )
    found = np.unique(numbers)
    missing = [item for item in label if item not in set(found.tolist())]
    if missing:
        raise MaskError(
            f"label={_ids_text(label)}: the {kind} holds no pixel with id "
            f"{', '.join(map(str, missing))}; values found: {_values_text(found)}"
        )
    return np.isin(numbers, np.asarray(label, dtype=np.float64)).astype(np.float32)


def _values_text(found: np.ndarray) -> str:
    shown = ", ".join(f"{value:g}" for value in found[:_SHOWN_VALUES])
    return shown + (f", ... ({len(found)} in all)" if len(found) > _SHOWN_VALUES else "")


def _ids_text(label: tuple[int, ...]) -> str:
    return str(label[0]) if len(label) == 1 else str(list(label))


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
