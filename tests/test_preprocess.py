"""Preprocessing follows the model's data config, and masks follow the image's geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from pytest_vitattn.errors import MaskError
from pytest_vitattn.preprocess import Preprocessing

DEIT_CONFIG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def test_resize_mode_equals_the_reference_notebook_preprocessing(photo):
    config = {**DEIT_CONFIG, "interpolation": "bilinear"}
    mean, std = config["mean"], config["std"]
    notebook = transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize(mean=mean, std=std),
        ]
    )
    preprocessing = Preprocessing.from_data_config(config, "resize")
    display, _ = preprocessing.display_image(photo)
    torch.testing.assert_close(preprocessing.normalise(display), notebook(photo), atol=1e-6, rtol=0)


def test_center_crop_mode_equals_timms_eval_transform(photo):
    import timm.data

    timm_transform = timm.data.create_transform(**DEIT_CONFIG, is_training=False)
    preprocessing = Preprocessing.from_data_config(DEIT_CONFIG, "center-crop")
    display, geometry = preprocessing.display_image(photo)
    assert geometry.resized == (256, 341)
    torch.testing.assert_close(
        preprocessing.normalise(display), timm_transform(photo), atol=1e-5, rtol=0
    )


def _square_grid(preprocessing: Preprocessing, mask: np.ndarray) -> torch.Tensor:
    geometry = preprocessing.geometry(mask.shape)
    return Preprocessing.mask_to_grid(preprocessing.mask_to_input(mask, geometry), (14, 14))


def test_resize_mode_maps_a_mask_to_patch_area_fractions(square_mask):
    grid = _square_grid(Preprocessing.from_data_config(DEIT_CONFIG, "resize"), square_mask)
    # The square covers 1/3 of the height (rows 4.67..9.33) and 1/4 of the width (5.25..8.75).
    assert float(grid.mean()) == pytest.approx(100 * 100 / (300 * 400), rel=1e-3)
    assert float(grid[6, 6]) == pytest.approx(1.0)
    assert float(grid[4, 6]) == pytest.approx(1 / 3, abs=0.01)
    assert float(grid[6, 5]) == pytest.approx(0.75, abs=0.01)
    assert float(grid[0, 0]) == 0.0


def test_center_crop_applies_the_same_crop_to_the_mask():
    preprocessing = Preprocessing.from_data_config(DEIT_CONFIG, "center-crop")
    # A mask on the left quarter of a wide image is cut away by the centre crop.
    mask = np.zeros((300, 600), dtype=np.float32)
    mask[:, :100] = 1.0
    assert float(_square_grid(preprocessing, mask).sum()) == 0.0
    mask[:, 280:320] = 1.0
    grid = _square_grid(preprocessing, mask)
    assert float(grid[:, 6:8].mean()) > 0.5 and float(grid[:, :5].sum()) == 0.0


def test_a_mask_at_half_resolution_with_the_same_aspect_is_accepted(square_mask):
    preprocessing = Preprocessing.from_data_config(DEIT_CONFIG, "resize")
    half = (
        np.asarray(
            Image.fromarray(square_mask.astype(np.uint8) * 255).resize((200, 150)), np.float32
        )
        / 255
    )
    geometry = preprocessing.geometry((300, 400))
    full_grid = Preprocessing.mask_to_grid(
        preprocessing.mask_to_input(square_mask, geometry), (14, 14)
    )
    half_grid = Preprocessing.mask_to_grid(preprocessing.mask_to_input(half, geometry), (14, 14))
    torch.testing.assert_close(half_grid, full_grid, atol=0.02, rtol=0)


def test_a_mask_with_another_aspect_is_refused():
    preprocessing = Preprocessing.from_data_config(DEIT_CONFIG, "resize")
    geometry = preprocessing.geometry((300, 400))
    with pytest.raises(MaskError, match=r"the mask is 300x300 .* but its image is 400x300"):
        preprocessing.mask_to_input(np.ones((300, 300), np.float32), geometry)
