"""Metrics against their published definitions, on hand-built maps and masks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pytest_vitattn import metrics
from pytest_vitattn.errors import AttentionValueError, MaskError

UNIFORM = torch.full((4, 4), 1 / 16)


def _mask(*cells: tuple[int, int], shape=(4, 4)) -> torch.Tensor:
    mask = torch.zeros(shape)
    for row, col in cells:
        mask[row, col] = 1.0
    return mask


def test_mass_in_mask_is_the_share_of_attention_inside():
    attention = torch.zeros(4, 4)
    attention[0, 0], attention[0, 1], attention[3, 3] = 0.5, 0.3, 0.2
    assert metrics.mass_in_mask(attention, _mask((0, 0), (3, 3))) == pytest.approx(0.7)


def test_mass_in_mask_weights_partly_covered_patches_by_their_coverage():
    attention = torch.zeros(4, 4)
    attention[1, 1] = 1.0
    mask = torch.zeros(4, 4)
    mask[1, 1] = 0.25
    assert metrics.mass_in_mask(attention, mask) == pytest.approx(0.25)


def test_uniform_attention_scores_chance_level():
    mask = _mask((0, 0), (1, 1), (2, 2))
    assert metrics.mass_in_mask(UNIFORM, mask) == pytest.approx(3 / 16)
    assert metrics.chance_level(mask) == pytest.approx(3 / 16)


def test_pointing_game_hits_when_the_peak_touches_the_mask():
    attention = UNIFORM.clone()
    attention[2, 1] = 0.5
    assert metrics.pointing_game(attention, _mask((2, 1))) is True
    assert metrics.pointing_game(attention, _mask((2, 2))) is False
    partly = torch.zeros(4, 4)
    partly[2, 1] = 0.01
    assert metrics.pointing_game(attention, partly) is True


def test_top_k_iou_with_default_k_counts_as_many_patches_as_the_mask():
    attention = torch.arange(16.0).reshape(4, 4)  # the last row ranks highest
    last_row = torch.zeros(4, 4)
    last_row[3] = 1.0
    assert metrics.top_k_iou(attention, last_row) == pytest.approx(1.0)
    first_row = torch.zeros(4, 4)
    first_row[0] = 1.0
    assert metrics.top_k_iou(attention, first_row) == pytest.approx(0.0)


def test_top_k_iou_with_explicit_k():
    attention = torch.arange(16.0).reshape(4, 4)
    mask = _mask((3, 3))
    # k = 2/16: top patches (3,3) and (3,2); IoU = 1 / 2.
    assert metrics.top_k_iou(attention, mask, k=2 / 16) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"k=0 is a count of patches \(an int\): it must be 1..16"):
        metrics.top_k_iou(attention, mask, k=0)


def test_top_k_iou_needs_a_patch_at_least_half_covered():
    mask = torch.full((4, 4), 0.1)
    with pytest.raises(MaskError, match="no patch is at least half covered"):
        metrics.top_k_iou(UNIFORM, mask)


def test_concentration_is_zero_for_uniform_and_one_for_a_single_patch():
    assert metrics.concentration(UNIFORM) == pytest.approx(0.0, abs=1e-12)
    peak = torch.zeros(4, 4)
    peak[1, 2] = 1.0
    assert metrics.concentration(peak) == pytest.approx(1.0)


def test_normalized_entropy_of_two_equal_patches():
    two = torch.zeros(4, 4)
    two[0, 0] = two[0, 1] = 0.5
    assert metrics.normalized_entropy(two) == pytest.approx(math.log(2) / math.log(16))


def test_an_empty_mask_is_a_clear_error():
    with pytest.raises(MaskError, match="the mask is empty"):
        metrics.mass_in_mask(UNIFORM, torch.zeros(4, 4))


def test_nan_attention_is_a_clear_error():
    broken = UNIFORM.clone()
    broken[0, 0] = float("nan")
    with pytest.raises(AttentionValueError, match="NaN or infinite"):
        metrics.mass_in_mask(broken, _mask((0, 0)))


def test_mask_grid_must_match_the_attention_grid():
    with pytest.raises(MaskError, match=r"mask grid \(3, 3\) does not match attention grid"):
        metrics.mass_in_mask(UNIFORM, torch.ones(3, 3))


_maps = arrays("float64", (5, 6), elements=st.floats(0, 1e3, allow_subnormal=False)).filter(
    lambda a: a.sum() > 1e-6
)
_masks = arrays("float64", (5, 6), elements=st.floats(0, 1, allow_subnormal=False)).filter(
    lambda m: m.max() > 0
)


@settings(max_examples=200, deadline=None)
@given(attention=_maps, mask=_masks, scale=st.floats(1e-3, 1e3))
def test_metrics_lie_in_range_and_ignore_the_maps_scale(attention, mask, scale):
    attention, mask = torch.from_numpy(attention), torch.from_numpy(mask)
    mass = metrics.mass_in_mask(attention, mask)
    assert 0.0 <= mass <= 1.0 + 1e-12
    assert metrics.mass_in_mask(attention * scale, mask) == pytest.approx(mass, rel=1e-9, abs=1e-12)
    assert metrics.pointing_game(attention * scale, mask) == metrics.pointing_game(attention, mask)
    concentration = metrics.concentration(attention)
    assert 0.0 <= concentration <= 1.0
    assert metrics.concentration(attention * scale) == pytest.approx(concentration, abs=1e-9)
    if bool((mask >= 0.5).any()):
        iou = metrics.top_k_iou(attention, mask)
        assert 0.0 <= iou <= 1.0


@settings(max_examples=100, deadline=None)
@given(attention=_maps)
def test_an_all_ones_mask_holds_all_attention(attention):
    attention = torch.from_numpy(attention)
    ones = torch.ones_like(attention)
    assert metrics.mass_in_mask(attention, ones) == pytest.approx(1.0)
    assert metrics.pointing_game(attention, ones) is True
    assert metrics.chance_level(ones) == 1.0
    with pytest.raises(MaskError, match="empty"):
        metrics.mass_in_mask(attention, torch.zeros_like(attention))
