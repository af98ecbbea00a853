"""The reference notebook's model, deit_tiny_patch16_224, with its real pretrained weights.

Hub weights cannot be downloaded offline, so this module runs only when the weights are on
disk. To enable it, download ``model.safetensors`` of ``timm/deit_tiny_patch16_224.fb_in1k``
from the Hugging Face hub once, then:

    VITATTN_DEIT_TINY_WEIGHTS=/path/to/model.safetensors bash scripts/example.sh

Otherwise every test here is skipped with that instruction.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import DATA, mask_of

WEIGHTS = os.environ.get("VITATTN_DEIT_TINY_WEIGHTS", "")

if not WEIGHTS or not Path(WEIGHTS).is_file():
    pytest.skip(
        "deit_tiny_patch16_224 weights not found: set VITATTN_DEIT_TINY_WEIGHTS to the "
        "model.safetensors of timm/deit_tiny_patch16_224.fb_in1k to run these tests",
        allow_module_level=True,
    )

pytestmark = pytest.mark.vitattn(
    model="deit_tiny_patch16_224", weights=str(Path(WEIGHTS).resolve()), preprocess="resize"
)


def test_the_notebook_grid_has_12_layers_and_3_heads_on_a_14x14_grid(vitattn):
    attn = vitattn(DATA / "circle_1.png")
    assert (attn.num_layers, attn.num_heads, attn.grid) == (12, 3, (14, 14))


def test_fast_extraction_equals_the_notebooks_fx_method(vitattn, vitattn_model):
    from pytest_vitattn.probe import Probe

    image = DATA / "circle_1.png"
    fast = Probe(vitattn_model, extraction="fast")(image)
    notebook = Probe(vitattn_model, extraction="fx")(image)
    assert (fast.maps - notebook.maps).abs().max() < 1e-5


def test_late_layers_attend_to_a_salient_object_more_than_chance(vitattn):
    image = DATA / "circle_1.png"
    attn = vitattn(image)
    mass = attn.layer(-1).mean_heads().mass_in(mask_of(image))
    chance = attn.record.checks[-1].chance
    assert mass > 2 * chance, f"mass {mass:.2f} vs chance {chance:.2f}"
