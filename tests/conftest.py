"""Shared fixtures: real timm models with seeded random weights, and real images."""

from __future__ import annotations

import numpy as np
import pytest

# pytester's in-process runs remove modules first imported inside them when the run ends;
# torch cannot be imported twice in one process, so the outer process imports it first.
import timm
import torch
from PIL import Image


@pytest.fixture(scope="session")
def deit_tiny():
    """deit_tiny_patch16_224 with seeded random weights, in eval mode."""

    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()


@pytest.fixture
def photo() -> Image.Image:
    """A 300x400 RGB image of smooth noise with a bright square (rows 100-199, cols 150-249)."""
    rng = np.random.default_rng(7)
    pixels = (rng.random((300, 400, 3)) * 120).astype(np.uint8)
    pixels[100:200, 150:250] = (250, 200, 40)
    return Image.fromarray(pixels)


@pytest.fixture
def square_mask() -> np.ndarray:
    """(300, 400) bool mask of the bright square in ``photo``."""
    mask = np.zeros((300, 400), dtype=bool)
    mask[100:200, 150:250] = True
    return mask
