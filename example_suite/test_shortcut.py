"""The regression this plugin exists to catch: a model that is right for the wrong reason.

``vitattn_tiny_shapes_shortcut`` was trained on images whose top-left corner carries a
class-coloured marker (``data/marked/``: the "bright" images of ``data/bright/`` with it).
It classifies marked images almost perfectly, but its CLS attention goes to the marker, not
to the shape. An accuracy test would pass; the
attention tests below fail, and the report shows where the model looked instead.

They are marked ``xfail(strict=True)`` so this example suite stays green while showing the
failures: if the shortcut model ever did look at the object, strict xfail would flag that.
"""

from __future__ import annotations

import pytest
from conftest import DATA

MARKED = sorted((DATA / "marked").glob("*.png"))


def mask_of(image):
    """A marked image shares the mask of its unmarked version in ``data/bright/``."""
    return DATA / "bright" / f"{image.stem}_mask.png"


pytestmark = pytest.mark.vitattn(model="vitattn_tiny_shapes_shortcut")


@pytest.mark.xfail(strict=True, reason="the shortcut model attends to the corner marker")
@pytest.mark.parametrize("image", MARKED, ids=[path.stem for path in MARKED])
def test_shortcut_model_attention_lies_on_the_object(vitattn, image):
    attn = vitattn(image)
    attn.expect(layer=-1).mass_in(mask_of(image), at_least=0.5)


@pytest.mark.xfail(strict=True, reason="the shortcut model attends to the corner marker")
def test_shortcut_model_points_at_the_object(vitattn):
    image = MARKED[0]
    vitattn(image).expect(layer=-1).pointing_game(mask_of(image))


def test_shortcut_model_looks_at_the_marker_instead(vitattn):
    """What it looks at instead: the single marker patch (1.6% of the image) draws more of the
    last layer's attention than the whole object, and at least 6x its chance level."""
    for image, attn in zip(MARKED, vitattn(MARKED), strict=True):
        last = attn.layer(-1).mean_heads()
        on_marker = last.mass_in(DATA / "marker_mask.png")
        on_object = last.mass_in(mask_of(image))
        assert on_marker > on_object, (
            f"{image.name}: marker {on_marker:.2f}, object {on_object:.2f}"
        )
        attn.expect(layer=-1).mass_in(DATA / "marker_mask.png", at_least=0.1)
