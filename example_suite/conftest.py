"""Fixtures of the example suite: the generated images and masks in ``data/``.

The files come from ``scripts/make_example_data.py``: two images per shape class, each with
its exact object mask, plus the same images carrying the shortcut model's corner marker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
SHAPES = ("circle", "square", "triangle", "cross", "ring")
IMAGES = sorted(path for path in DATA.glob("*.png") if path.stem.rsplit("_", 1)[-1].isdigit())


def mask_of(image: Path) -> Path:
    """The mask file that belongs to ``image``: ``circle_1.png`` -> ``circle_1_mask.png``."""
    return DATA / f"{image.stem}_mask.png"


@pytest.fixture(params=IMAGES, ids=[path.stem for path in IMAGES])
def shape_image(request) -> Path:
    """Each generated image in turn."""
    return request.param


@pytest.fixture
def data_dir() -> Path:
    return DATA
