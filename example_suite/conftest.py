"""Fixtures of the example suite: the generated images and masks in ``data/``.

The files come from ``scripts/make_example_data.py``: two images per shape class, each with
its exact object mask, plus "bright" images (0.1 style) for the shortcut and the brightness
model, with and without the corner marker and with the object recoloured dark.

``KNOWN_MISSES`` lists the checks the shipped faithful model fails on these images: both
rings, where its last layer spreads attention over the ring and its hole (mass 0.30 and
0.31 against 0.40; ``ring_2`` is a small object), and on ``ring_1`` the top-k overlap (IoU
0.14 against 0.30), with the batch test that checks every image. They run as
``xfail(strict=True)``, so the report shows the failures and a better model that passes
them is flagged to update this list.
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


KNOWN_MISSES = {
    "test_focus.py::test_last_layer_attention_lies_on_the_object[ring_1]",
    "test_focus.py::test_last_layer_attention_lies_on_the_object[ring_2]",
    "test_focus.py::test_the_top_patches_are_the_objects_patches[ring_1]",
    "test_focus.py::test_a_batch_of_images_is_one_forward_pass",
}


def pytest_collection_modifyitems(config, items):
    """Known misses of the shipped faithful model run as strict xfails (see above)."""
    if (config.getoption("vitattn_model") or "vitattn_tiny_shapes") != "vitattn_tiny_shapes":
        return
    for item in items:
        if item.nodeid in KNOWN_MISSES:
            item.add_marker(
                pytest.mark.xfail(strict=True, reason="a known miss of the shipped faithful model")
            )


@pytest.fixture(params=IMAGES, ids=[path.stem for path in IMAGES])
def shape_image(request) -> Path:
    """Each generated image in turn."""
    return request.param


@pytest.fixture
def data_dir() -> Path:
    return DATA
