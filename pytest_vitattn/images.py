"""Read images and masks from what users pass: paths, PIL images, arrays, tensors.

Images come out as RGB PIL images, or as (3, height, width) float tensors in [0, 1] when a
float tensor holds finer levels than 8 bits: every 8-bit form of the same pixels (a file, a
PIL image, a uint8 array, a uint8 tensor, a float tensor of x / 255) becomes the same PIL
image and so takes the same preprocessing path and gives the same maps. 16-bit grey images
are read as value / 65535 (the PNG range); those whose values all fit in 12 bits are
refused (see ``_sixteen_bit_to_8``). Masks are read by ``pytest_vitattn.masks``. Bad input
raises ImageError / MaskError naming the input and the fix.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pytest_vitattn.errors import ImageError

# A decompression-bomb guard that still admits large real photographs (~16k x 16k).
_MAX_IMAGE_PIXELS = 256_000_000
# 16-bit images whose values all fit in 12 bits are ambiguous (see _sixteen_bit_to_8).
_TWELVE_BIT_MAX = 4095
# A float tensor whose values are within this of k / 255 holds 8-bit pixels.
_LEVEL_TOLERANCE = 1e-4


def label_of(source: Any, position: int, kind: str = "image") -> str:
    """A short human name for an image or mask source: its file name, else kind[position]."""
    return file_name_of(source) or f"{kind}[{position}]"


def file_name_of(source: Any) -> str | None:
    """The file name of a path or of a PIL image opened from a file, else None."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    filename = getattr(source, "filename", "")
    return Path(filename).name if isinstance(filename, str) and filename else None


def load_image(source: Any) -> Image.Image | Any:
    """Read one image as an RGB PIL image, or validate an image tensor.

    Args:
        source: a path, a PIL image, a (height, width, 3) uint8 array, or a torch tensor
            (3, height, width) / (1, 3, height, width) with values in [0, 1] (float) or
            0..255 (uint8), not yet normalised.

    Returns:
        An RGB PIL image (EXIF orientation applied; also for uint8 tensors and float tensors
        holding x / 255), or a float32 tensor (3, height, width) with finer levels.
    """
    if isinstance(source, (str, os.PathLike)):
        return _to_rgb(open_file(Path(source), ImageError, "image"))
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


def load_mask(source: Any, label: Any = None) -> np.ndarray:
    """Read one mask as (height, width) float32 area coverage in [0, 1].

    Bool, 0/1, 0/255 and 0/65535 masks are read as binary, floats in [0, 1] as coverage,
    label maps and palette PNGs by index with ``label=``; anything else is a ``MaskError``
    naming the values found (see ``pytest_vitattn.masks``).
    """
    from pytest_vitattn.masks import load_mask as read

    return read(source, label)


def open_file(path: Path, error: type[Exception], what: str) -> Image.Image:
    """Open an image file fully loaded, raising ``error`` naming ``what`` when it cannot."""
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
        image = Image.fromarray(_sixteen_bit_to_8(np.asarray(image, dtype=np.float64)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white rather than whatever colour they hide.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _sixteen_bit_to_8(array: np.ndarray) -> np.ndarray:
    """16-bit grey levels (0..65535, the PNG range) -> 8-bit, rounded: value / 65535 * 255.

    A file whose values all fit in 12 bits (max <= 4095) is refused: as 16-bit data it would
    be at most 6% bright, and 10/12-bit data stored in 16 bits looks the same; the file does
    not say which, so the caller must.
    """
    top = float(array.max()) if array.size else 0.0
    if top > 65535 or float(array.min(initial=0)) < 0:
        raise ImageError(
            f"a 32-bit integer image with values in [{array.min():g}, {top:g}] is not 16-bit "
            "grey levels: pass a (3, height, width) float tensor in [0, 1]"
        )
    if top <= _TWELVE_BIT_MAX:
        raise ImageError(
            f"a 16-bit image whose values only go up to {top:g} (of 65535): read as 16-bit it "
            f"is nearly black (mean {array.mean() / 65535 * 255:.1f} of 255), but it may hold "
            "10- or 12-bit data, and the file does not say which. Scale it yourself and pass a "
            "float tensor, e.g. torch.from_numpy(np.asarray(Image.open(path), np.float32) / "
            "4095)[None] for 12-bit data"
        )
    return np.clip(np.round(array / 65535 * 255), 0, 255).astype(np.uint8)


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
        return _tensor_to_pil(image)
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
    levels = image * 255
    if bool((levels - levels.round()).abs().max() <= _LEVEL_TOLERANCE):
        # 8-bit pixels as floats (x / 255): the same pixels as a file, so the same path.
        return _tensor_to_pil(levels.round().clamp(0, 255).to(torch.uint8))
    return image.clamp(0, 1)


def _tensor_to_pil(image: Any) -> Image.Image:
    """(3, height, width) uint8 tensor -> RGB PIL image (exact)."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def content_hash(image: Image.Image | Any) -> str:
    """SHA-256 (hex) of an image's decoded pixels, as ``load_image`` returns them.

    The same pixels give the same hash whatever form they came in (a PNG or JPEG path, a
    PIL image, a uint8 array, a uint8 or x/255 float tensor), and file metadata does not
    count. Float tensors with finer levels hash their float32 values.

    Args:
        image: an RGB PIL image or a (3, height, width) float32 tensor from ``load_image``.
    """
    digest = hashlib.sha256()
    if isinstance(image, Image.Image):
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        digest.update(b"rgb8:")
    else:
        pixels = np.ascontiguousarray(image.detach().cpu().numpy().astype("<f4"))
        digest.update(b"f32chw:")
    digest.update(repr(pixels.shape).encode("ascii") + b":")
    digest.update(pixels.tobytes())
    return digest.hexdigest()
