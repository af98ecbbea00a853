"""The branch setting, as users run it: CrossViT's primary branch by default, the other by
marker or command line, and a clear error for models that have one branch."""

from __future__ import annotations

BRANCH_TEST = """
import pytest

CROSSVIT = dict(model="crossvit_tiny_240", weights="random")

@pytest.mark.vitattn(**CROSSVIT)
def test_primary(vitattn, image):
    attn = vitattn(image)
    print("GRID", attn.grid, attn.num_layers, attn.num_heads)

@pytest.mark.vitattn(branch=0, **CROSSVIT)
def test_small_branch(vitattn, image):
    attn = vitattn(image)
    print("GRID", attn.grid, attn.num_layers, attn.num_heads)

@pytest.mark.vitattn(model="vit_tiny_patch16_224", weights="random", branch=1)
def test_single_branch(vitattn, image):
    vitattn(image)

@pytest.fixture
def image():
    import numpy as np
    return np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
"""


def test_branch_selects_the_crossvit_branch_and_is_refused_elsewhere(pytester):
    pytester.makepyfile(BRANCH_TEST)
    result = pytester.runpytest("-s", "-q", "-p", "no:randomly")
    # 240 px input; primary branch: scaled to 224 px, 16-px patches, 3 stages x 4 blocks;
    # branch 0: 240 px, 12-px patches, 3 stages x 1 block; 3 heads in both.
    result.stdout.fnmatch_lines(["*GRID (14, 14) 12 3", "*GRID (20, 20) 3 3"])
    result.stdout.fnmatch_lines(["*branch=1 was asked for, but VisionTransformer has a single*"])
    result.assert_outcomes(passed=2, errors=1)


def test_branch_option_value_is_checked(pytester):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--vitattn-branch=left")
    result.stderr.fnmatch_lines(["*argument --vitattn-branch: 'left' is not a branch*"])
