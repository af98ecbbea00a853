"""Geometric and photometric preprocessing from the model's own data config.

Images and masks go through the same geometry (resize, or resize + centre crop), so a mask
drawn on the original image lands on the same patches the model saw. Masks are resized
with an area (box) filter and reduced to the patch grid by area fraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from pytest_vitattn.errors import MaskError

PREPROCESS_MODES = ("resize", "center-crop")

# A mask may differ from its image by rounding when both were scaled from one original.
_ASPECT_TOLERANCE = 0.02


@dataclass(frozen=True)
class Geometry:
    """Where the model's input comes from in one original image.

    Attributes:
        original: (height, width) of the original image.
        resized: (height, width) the original is resized to.
        crop: (top, left, height, width) of the crop taken from the resized image.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int, int, int]


@dataclass(frozen=True)
class Preprocessing:
    """The model's input preprocessing.

    Attributes:
        input_size: (height, width) of the model input.
        mean, std: per-channel normalisation.
        interpolation: "bilinear", "bicubic" or "nearest".
        mode: "resize" (whole image to input size, as the reference notebook does) or
            "center-crop" (timm's eval transform: resize by 1 / crop_pct, crop the centre).
        crop_pct: share of the resized image kept by "center-crop".
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    mode: str = "resize"
    crop_pct: float = 0.875

    @classmethod
    def from_data_config(cls, config: dict[str, Any], mode: str = "resize") -> Preprocessing:
        """Build from ``timm.data.resolve_model_data_config(model)``."""
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"preprocess mode {mode!r} is not one of {PREPROCESS_MODES}")
        if mode == "center-crop" and config.get("squash_then_crop"):
            # transformers processors like DeiT's resize to a square, then crop; the
            # center-crop mode here keeps the aspect ratio, so it would not be the same.
            raise ValueError(
                "this model's image processor resizes to a fixed height and width (aspect "
                "not kept) before its centre crop, which preprocess='center-crop' does not "
                "reproduce; use preprocess='resize'"
            )
        _, height, width = config["input_size"]
        return cls(
            input_size=(int(height), int(width)),
            mean=tuple(float(v) for v in config["mean"]),
            std=tuple(float(v) for v in config["std"]),
            interpolation=str(config.get("interpolation", "bilinear")),
            mode=mode,
            crop_pct=float(config.get("crop_pct") or 0.875),
        )

    def describe(self) -> dict[str, Any]:
        """Plain-data description, stored in records and baselines."""
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "mode": self.mode,
            "crop_pct": self.crop_pct if self.mode == "center-crop" else None,
        }

    def geometry(self, original: tuple[int, int]) -> Geometry:
        """The resize and crop for an original image of (height, width)."""
        height, width = self.input_size
        if self.mode == "resize":
            return Geometry(original, (height, width), (0, 0, height, width))
        scaled = (math.floor(height / self.crop_pct), math.floor(width / self.crop_pct))
        if height == width:
            # Shorter side to the scaled size, aspect kept (torchvision Resize(int)).
            short, long = sorted(original)
            long_scaled = int(scaled[0] * long / short)
            resized = (
                (scaled[0], long_scaled) if original[0] <= original[1] else (long_scaled, scaled[0])
            )
        else:
            resized = scaled
        top = round((resized[0] - height) / 2)
        left = round((resized[1] - width) / 2)
        return Geometry(original, resized, (top, left, height, width))

    def display_image(self, image: Image.Image | torch.Tensor) -> tuple[torch.Tensor, Geometry]:
        """The image as the model sees it, before normalisation.

        Returns:
            (3, height, width) float32 in [0, 1], and the geometry used.
        """
        original = _size_of(image)
        geometry = self.geometry(original)
        resized = TF.resize(
            image,
            list(geometry.resized),
            interpolation=InterpolationMode(self.interpolation),
            antialias=True,
        )
        cropped = TF.crop(resized, *geometry.crop)
        if isinstance(cropped, Image.Image):
            cropped = TF.to_dtype(TF.to_image(cropped), torch.float32, scale=True)
        return cropped.as_subclass(torch.Tensor).clamp(0, 1), geometry

    def normalise(self, display: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) or (3, h, w) in [0, 1] -> normalised with the model's mean and std."""
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (display - mean) / std

    def mask_to_input(self, mask: np.ndarray, geometry: Geometry) -> np.ndarray:
        """Map a mask from original image space to the model input.

        Args:
            mask: (height, width) float32 coverage in [0, 1] at the original image's size,
                or at any size with the same aspect ratio.

        Returns:
            (input_h, input_w) float32 coverage: each pixel's covered share.
        """
        mask_hw = tuple(int(s) for s in mask.shape)
        image_hw = geometry.original
        if mask_hw != image_hw:
            mask_aspect, image_aspect = mask_hw[1] / mask_hw[0], image_hw[1] / image_hw[0]
            if abs(mask_aspect / image_aspect - 1) > _ASPECT_TOLERANCE:
                raise MaskError(
                    f"the mask is {mask_hw[1]}x{mask_hw[0]} (width x height) but its image is "
                    f"{image_hw[1]}x{image_hw[0]}: masks are given in image space, with the "
                    "image's size (or at least its aspect ratio)"
                )
        resized = area_resize(mask.astype(np.float64), geometry.resized)
        top, left, height, width = geometry.crop
        cropped = resized[top : top + height, left : left + width]
        return np.clip(cropped, 0.0, 1.0).astype(np.float32)

    @staticmethod
    def mask_to_grid(input_mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        """Reduce a model-input mask to the patch grid by area fraction.

        Args:
            input_mask: (input_h, input_w) coverage in [0, 1].
            grid: (grid_h, grid_w) patch grid.

        Returns:
            (grid_h, grid_w) float32: share of each patch covered by the mask.
        """
        grid_mask = area_resize(input_mask.astype(np.float64), grid)
        return torch.from_numpy(np.clip(grid_mask, 0.0, 1.0).astype(np.float32))


def area_resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize by exact area averaging: each output cell is the mean over the input area it covers.

    Args:
        values: (height, width) array.
        size: (out_height, out_width).

    Returns:
        (out_height, out_width) float64; the mean over the whole array is preserved exactly.
    """
    rows = _area_weights(values.shape[0], size[0])
    cols = _area_weights(values.shape[1], size[1])
    return rows @ values @ cols.T


def _area_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) matrix: overlap of input cell i with output cell o, rows sum to 1."""
    scale = size_in / size_out
    starts = np.arange(size_out)[:, None] * scale
    cells = np.arange(size_in)[None, :]
    overlap = np.minimum(cells + 1, starts + scale) - np.maximum(cells, starts)
    return np.clip(overlap, 0.0, None) / scale


def _size_of(image: Image.Image | torch.Tensor) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.height, image.width
    return int(image.shape[-2]), int(image.shape[-1])
