"""Read images and masks from what users pass: paths, PIL images, arrays, tensors.

Images come out as RGB PIL images or (3, height, width) float tensors in [0, 1]; masks as
(height, width) float32 arrays in [0, 1]. Bad input raises ImageError / MaskError naming
the input and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pytest_vitattn.errors import ImageError, MaskError

# A decompression-bomb guard that still admits large real photographs (~16k x 16k).
_MAX_IMAGE_PIXELS = 256_000_000


def label_of(source: Any, position: int, kind: str = "image") -> str:
    """A short human name for an image or mask source: its file name, else kind[position]."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    filename = getattr(source, "filename", "")
    return Path(filename).name if filename else f"{kind}[{position}]"


def load_image(source: Any) -> Image.Image | Any:
    """Read one image as an RGB PIL image, or validate an image tensor.

    Args:
        source: a path, a PIL image, a (height, width, 3) uint8 array, or a torch tensor
            (3, height, width) / (1, 3, height, width) with values in [0, 1] (float) or
            0..255 (uint8), not yet normalised.

    Returns:
        An RGB PIL image (EXIF orientation applied), or a float32 tensor (3, height, width).
    """
    if isinstance(source, (str, os.PathLike)):
        return _to_rgb(_open(Path(source), ImageError, "image"))
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if _is_tensor(source):
        return _tensor_image(source)
    raise ImageError(
        f"cannot use a {type(source).__name__} as an image: pass a file path, a PIL image, "
        "a (height, width, 3) uint8 array, or a (3, height, width) tensor in [0, 1]"
    )


def load_mask(source: Any) -> np.ndarray:
    """Read one mask as (height, width) float32 area coverage in [0, 1].

    Files and PIL images are read as grayscale; 0 is background and 255 is object (soft
    edges become fractions). Arrays and tensors may be bool, 0/1, 0..255 integers, or floats
    in [0, 1].
    """
    if isinstance(source, (str, os.PathLike)):
        source = _open(Path(source), MaskError, "mask")
    if isinstance(source, Image.Image):
        return np.asarray(ImageOps.exif_transpose(source).convert("L"), dtype=np.float32) / 255
    if _is_tensor(source):
        source = source.detach().cpu().numpy()
    if not isinstance(source, np.ndarray):
        raise MaskError(
            f"cannot use a {type(source).__name__} as a mask: pass a file path, a PIL image, "
            "or a (height, width) array or tensor"
        )
    array = np.squeeze(source)
    if array.ndim != 2:
        raise MaskError(f"a mask must be 2-D (height, width); got shape {source.shape}")
    if array.dtype == bool:
        return array.astype(np.float32)
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0:
        raise MaskError("mask values must be finite and non-negative")
    if array.max() > 1:
        if array.max() > 255:
            raise MaskError(f"mask values go up to {array.max():g}; use 0/1, bool, or 0..255")
        array = array / 255
    return array


def _open(path: Path, error: type[Exception], what: str) -> Image.Image:
    if not path.is_file():
        where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
        raise error(f"{what} file not found: {path}{where}")
    Image.MAX_IMAGE_PIXELS = _MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as opened:
            # Downscale huge files while decoding (JPEG draft mode) before loading pixels.
            opened.draft("RGB", (4096, 4096))
            opened.load()
            return opened.copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise error(f"cannot read {what} file {path}: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits by the actual range instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white rather than whatever colour they hide.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ImageError(f"an image array must be (height, width, 3); got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ImageError(
            f"an image array must be uint8 (0..255); got {array.dtype}. For float images "
            "pass a torch tensor (3, height, width) in [0, 1]"
        )
    return Image.fromarray(array[..., :3], mode="RGB")


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _tensor_image(tensor: Any) -> Any:
    import torch

    image = tensor.detach().cpu()
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ImageError(
            f"an image tensor must be (3, height, width); got shape {tuple(tensor.shape)}. "
            "Pass a list of images for a batch"
        )
    if image.dtype == torch.uint8:
        return image.float() / 255
    image = image.float()
    if not bool(torch.isfinite(image).all()):
        raise ImageError("the image tensor contains NaN or infinite values")
    low, high = float(image.min()), float(image.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ImageError(
            f"image tensor values span [{low:.2f}, {high:.2f}], outside [0, 1]: pass the "
            "image before normalisation; pytest-vitattn normalises with the model's own "
            "mean and std"
        )
    return image.clamp(0, 1)
