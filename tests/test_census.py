"""A fixed, fast subset of the census (``scripts/census.py``), so a timm release that breaks
a family (a wrong map, a crash, or a refusal turned false) fails CI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "census.py"


def load_census():
    spec = importlib.util.spec_from_file_location("vitattn_census", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


census = load_census()

SUBSET = [
    # (model, kwargs, input, status, a phrase the detail must contain)
    ("deit_tiny_patch16_224", {"depth": 2}, None, "verified", "vit: 2 layers x 3 heads"),
    ("convit_tiny", {"depth": 12}, None, "verified", "convit: 2 layers x 4 heads"),
    (
        "vit_relpos_medium_patch16_cls_224",
        {"depth": 2, "img_size": 64},
        (64, 64),
        "verified",
        "1 prefix + 4x4; fast + fx",
    ),
    (
        "deit_tiny_distilled_patch16_224",
        {"depth": 2, "dynamic_img_size": True},
        (48, 80),
        "verified",
        "2 prefix + 3x5; fast (fx cannot trace it)",
    ),
    (
        "pit_ti_224",
        {"depth": (1, 1, 1)},
        None,
        "verified",
        "pit: 3 layers x 2/4/8 heads, 1 prefix + 27x27/14x14/7x7; fast + fx",
    ),
    (
        "mvitv2_small_cls",
        {"img_size": 64},
        (64, 64),
        "verified",
        "mvitv2-cls: 16 layers x 1/2/4/8 heads, 1 prefix + 4x4/8x8/4x4/8x8/4x4/2x2; fast + fx",
    ),
    ("coat_lite_tiny", {}, None, "refused", "is factorised"),
    ("swin_tiny_patch4_window7_224", {}, None, "refused", "windowed attention"),
    ("resnet18", {}, None, "refused", "no attention modules pytest-vitattn recognises"),
    (
        "vit_small_patch16_224",
        {"depth": 1, "dynamic_img_size": True},
        (200, 300),
        "refused",
        "nearest sizes are 192x288",
    ),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "input_hw", "status", "phrase"), SUBSET, ids=[row[0] for row in SUBSET]
)
def test_census_subset(name, kwargs, input_hw, status, phrase):
    got, detail, _ = census.classify(name, kwargs, input_hw)
    assert (got, phrase in detail) == (status, True), detail


def test_census_counts_wrong_maps_and_crashes_as_failures(capsys):
    assert census.main(["--only", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "counts: refused 1" in out
    assert "| `resnet18` | command line | ResNet | refused |" in out
