"""A subtler shortcut: a model that is right while the object is the brightest thing.

``vitattn_tiny_shapes_brightness`` is the 0.1 "faithful" model, unchanged. Its training
images always drew the object brighter than any background, so "look at the brightest
patch" solved every one of them. On such images (``data/bright/``) it classifies every shape
correctly and its attention even lies on the object: accuracy tests and attention tests on
its own kind of images pass. Recolour the object dark, same shape, same mask
(``data/dark/``), and the attention leaves the object for the brightest background.

The attention tests on dark objects are marked ``xfail(strict=True)``: the suite stays
green while the report shows the failures, and strict xfail would flag a model that did
look at the dark objects.
"""

from __future__ import annotations

import pytest
from conftest import DATA

BRIGHT = sorted((DATA / "bright").glob("*_[0-9].png"))
DARK = [DATA / "dark" / path.name for path in BRIGHT]

pytestmark = pytest.mark.vitattn(model="vitattn_tiny_shapes_brightness")


def shape_of(image):
    return image.stem.rsplit("_", 1)[0]


def mask_of(image):
    """Both versions of an image share the mask of the bright one."""
    return DATA / "bright" / f"{image.stem}_mask.png"


def test_brightness_model_classifies_its_own_images(vitattn):
    """Accuracy on images like its training images: this test passes."""
    predicted = [attn.record.prediction["label"] for attn in vitattn(BRIGHT)]
    correct = [label == shape_of(image) for label, image in zip(predicted, BRIGHT, strict=True)]
    assert sum(correct) >= 0.9 * len(BRIGHT), list(zip(predicted, BRIGHT, strict=True))


@pytest.mark.parametrize("image", BRIGHT, ids=[path.stem for path in BRIGHT])
def test_brightness_model_looks_at_bright_objects(vitattn, image):
    """On its own kind of images the attention lies on the object: this passes too."""
    vitattn(image).expect(layer=-1).mass_in(mask_of(image), at_least=0.4)


@pytest.mark.xfail(strict=True, reason="the brightness model attends to the brightest region")
@pytest.mark.parametrize("image", DARK, ids=[path.stem for path in DARK])
def test_brightness_model_looks_at_dark_objects(vitattn, image):
    """The same shapes recoloured dark: the attention goes to the brightest background."""
    vitattn(image).expect(layer=-1).mass_in(mask_of(image), at_least=0.4)


@pytest.mark.xfail(strict=True, reason="the brightness model attends to the brightest region")
def test_brightness_model_points_at_dark_objects(vitattn):
    """Pointing game over all dark images: the peak should touch the object in 9 of 10."""
    hits = [
        attn.layer(-1).mean_heads().pointing_game(mask_of(image))
        for image, attn in zip(DARK, vitattn(DARK), strict=True)
    ]
    missed = [image.stem for image, hit in zip(DARK, hits, strict=True) if not hit]
    assert sum(hits) >= 0.9 * len(DARK), f"the peak missed the object in {missed}"
