"""Drift measures against closed forms and numpy references, and tolerance parsing."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pytest_vitattn import drift
from pytest_vitattn.errors import AttentionValueError
from pytest_vitattn.tolerance import DEFAULT_MAX_JS, Tolerance, parse_tolerance


def uniform_on(cells: list[tuple[int, int]], shape=(4, 4)) -> np.ndarray:
    grid = np.zeros(shape)
    for cell in cells:
        grid[cell] = 1.0 / len(cells)
    return grid


def moved(share: float) -> tuple[np.ndarray, np.ndarray]:
    """A map on the top row, and the same map with ``share`` of it moved to the bottom row."""
    top = uniform_on([(0, c) for c in range(4)])
    bottom = uniform_on([(3, c) for c in range(4)])
    return top, (1 - share) * top + share * bottom


def test_equal_maps_show_no_drift():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 2, 5, 6))
    measured = drift.compare(maps, maps.copy())
    assert measured.shape == (3, 2)
    assert (measured.js == 0).all()
    assert (measured.correlation == 1).all()
    assert (measured.top_k_iou == 1).all()
    assert (measured.max_abs_diff == 0).all()


@pytest.mark.parametrize("share", [0.05, 0.1, 0.3, 0.5, 1.0])
def test_js_divergence_matches_the_closed_form_for_moved_attention(share):
    before, after = moved(share)
    m_top, m_bottom = 1 - share / 2, share / 2
    kl_before = math.log2(1 / m_top)
    kl_after = share * math.log2(share / m_bottom)
    if share < 1:
        kl_after += (1 - share) * math.log2((1 - share) / m_top)
    expected = (kl_before + kl_after) / 2
    assert drift.js_divergence(after, before) == pytest.approx(expected, abs=1e-12)


def test_js_divergence_is_one_for_disjoint_maps_and_about_half_the_moved_share():
    before, after = moved(1.0)
    assert drift.js_divergence(before, after) == pytest.approx(1.0)
    assert drift.js_divergence(*moved(0.1)) == pytest.approx(0.05, abs=0.005)


def test_maps_are_renormalised_so_scale_does_not_count_as_drift():
    rng = np.random.default_rng(1)
    grid = rng.random((7, 7))
    assert drift.js_divergence(grid, 3.5 * grid) == pytest.approx(0.0, abs=1e-15)
    assert drift.max_abs_diff(grid, 10 * grid) == pytest.approx(0.0, abs=1e-15)


def test_pearson_correlation_matches_numpy_corrcoef():
    rng = np.random.default_rng(2)
    current, baseline = rng.random((3, 6, 6)), rng.random((3, 6, 6))
    expected = [
        np.corrcoef(c.ravel(), b.ravel())[0, 1] for c, b in zip(current, baseline, strict=True)
    ]
    np.testing.assert_allclose(drift.pearson_correlation(current, baseline), expected)


def test_pearson_correlation_of_constant_maps():
    flat, peaked = np.ones((4, 4)), uniform_on([(1, 1)])
    assert drift.pearson_correlation(flat, flat * 2) == 1.0
    assert drift.pearson_correlation(flat, peaked) == 0.0
    assert drift.pearson_correlation(peaked, flat) == 0.0


def test_top_k_iou_compares_the_hottest_tenth_of_patches():
    # 20 patches -> the top 2 of each map.
    current = np.arange(20, dtype=float).reshape(4, 5)  # hottest: 19, 18
    baseline = current.copy()
    baseline.flat[18], baseline.flat[0] = 0.0, 18.0  # hottest: 19, 0
    assert drift.top_k_iou(current, baseline) == pytest.approx(1 / 3)  # {19} / {19, 18, 0}
    assert drift.top_k_iou(current, current) == 1.0


def test_top_k_iou_breaks_ties_by_patch_index_so_equal_maps_score_one():
    flat = np.ones((8, 8))
    assert drift.top_k_iou(flat, flat) == 1.0
    with pytest.raises(ValueError, match=r"fraction=0 must be a share of patches in \(0, 1\]"):
        drift.top_k_iou(flat, flat, fraction=0)


def test_max_abs_diff_is_the_largest_change_of_one_patch():
    before, after = moved(0.2)
    assert drift.max_abs_diff(after, before) == pytest.approx(0.2 / 4)


def test_measures_work_map_by_map_over_leading_dimensions():
    rng = np.random.default_rng(3)
    current, baseline = rng.random((2, 3, 4, 4)), rng.random((2, 3, 4, 4))
    measured = drift.compare(current, baseline)
    for layer in range(2):
        for head in range(3):
            single = drift.compare(current[layer, head], baseline[layer, head])
            for name in drift.MEASURES:
                assert getattr(measured, name)[layer, head] == pytest.approx(
                    float(getattr(single, name))
                )


@pytest.mark.parametrize(
    ("current", "baseline", "message"),
    [
        (
            np.ones((2, 4, 4)),
            np.ones((3, 4, 4)),
            r"shape \(2, 4, 4\) cannot be compared .* \(3, 4, 4\)",
        ),
        (np.ones(4), np.ones(4), r"expected \(\.\.\., h, w\) maps, got shape \(4,\)"),
        (np.full((4, 4), np.nan), np.ones((4, 4)), "a map contains NaN or infinite values"),
        (np.ones((4, 4)), -np.ones((4, 4)), "a baseline map must be non-negative"),
        (np.zeros((4, 4)), np.ones((4, 4)), "with a positive sum"),
    ],
)
def test_bad_maps_are_rejected_with_the_reason(current, baseline, message):
    with pytest.raises(AttentionValueError, match=message):
        drift.compare(current, baseline)


maps_4x4 = arrays(
    np.float64, (4, 4), elements=st.floats(0, 1, allow_nan=False, allow_subnormal=False)
).filter(lambda a: a.sum() > 1e-6)


@settings(max_examples=60, deadline=None)
@given(maps_4x4, maps_4x4)
def test_measures_stay_in_range_and_are_symmetric(current, baseline):
    measured = drift.compare(current, baseline)
    swapped = drift.compare(baseline, current)
    assert 0 <= measured.js <= 1
    assert -1 <= measured.correlation <= 1
    assert 0 <= measured.top_k_iou <= 1
    assert 0 <= measured.max_abs_diff <= 1
    assert measured.js == pytest.approx(float(swapped.js), abs=1e-12)
    assert measured.correlation == pytest.approx(float(swapped.correlation), abs=1e-12)


def test_severity_is_drift_over_the_allowance_of_the_worst_bounded_measure():
    measured = drift.compare(*moved(0.1))  # js ~0.05, correlation < 1
    only_js = Tolerance(max_js=0.1)
    assert drift.severity(measured, only_js) == pytest.approx(float(measured.js) / 0.1)
    assert not drift.failing(measured, only_js)
    both = Tolerance(max_js=0.1, min_correlation=0.999)
    assert drift.failing(measured, both)
    assert drift.violated(measured, both, ()) == ["correlation"]


def test_a_map_on_its_bound_passes_and_zero_allowance_fails_any_drift():
    measured = drift.compare(*moved(0.1))
    assert not drift.failing(measured, Tolerance(max_js=float(measured.js)))
    assert drift.failing(measured, Tolerance(max_js=0.0))
    assert np.isinf(drift.severity(measured, Tolerance(max_js=0.0)))
    same = drift.compare(np.ones((4, 4)), np.ones((4, 4)))
    assert not drift.failing(same, Tolerance(max_js=0.0, min_correlation=1.0))


def test_drift_table_lists_failing_maps_worst_first_marks_and_truncates():
    rng = np.random.default_rng(4)
    baseline = rng.random((3, 4, 6, 6))
    current = baseline.copy()
    shares = {(0, 1): 0.2, (2, 3): 0.9, (1, 0): 0.5}
    for (layer, head), share in shares.items():
        current[layer, head] = (1 - share) * baseline[layer, head] + share * uniform_on(
            [(0, 0)], (6, 6)
        ) * baseline[layer, head].sum()
    measured = drift.compare(current, baseline)
    labels = [f"layer {layer}, head {head}" for layer in range(3) for head in range(4)]
    lines = drift.drift_table(measured, Tolerance(max_js=0.01), labels, limit=2)
    assert "JS div" in lines[0] and "top-k IoU" in lines[0]
    assert lines[1].lstrip().startswith("layer 2, head 3")
    assert lines[2].lstrip().startswith("layer 1, head 0")
    assert lines[3] == "  ... and 1 more"
    assert "!" in lines[1]
    assert drift.drift_table(measured, Tolerance(max_js=1.0), labels) == []


def test_tolerance_from_a_number_bounds_the_js_divergence_only():
    assert Tolerance.of(0.05) == Tolerance(max_js=0.05)
    assert Tolerance.of("0.05").bounds() == {"max_js": 0.05}
    assert Tolerance().bounds() == {"max_js": DEFAULT_MAX_JS}


def test_tolerance_from_bounds_checks_only_what_is_written():
    written = Tolerance.of("min_correlation=0.9, max_abs_diff=0.01")
    assert written.bounds() == {"min_correlation": 0.9, "max_abs_diff": 0.01}
    assert Tolerance.of({"max_js": 0.1, "min_top_k_iou": 0.5}).describe() == (
        "js <= 0.1, top_k_iou >= 0.5"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "tolerance 'abc' is not a number .* or e.g. 'max_js=0.05,min_correlation=0.9'"),
        ("max_js=", "tolerance part 'max_js=' is not NAME=NUMBER"),
        ("js=0.1", "unknown tolerance bound\\(s\\) 'js'; use max_js, min_correlation"),
        ("1.5", r"tolerance max_js=1.5 must be in \[0, 1\]"),
        ("nan", r"tolerance max_js=nan must be in \[0, 1\]"),
        ("min_correlation=-2", r"tolerance min_correlation=-2.0 must be in \[-1, 1\]"),
        ({}, "a tolerance needs at least one bound"),
        (True, "tolerance must be a number"),
    ],
)
def test_bad_tolerances_say_what_is_wrong(value, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_tolerance(value)
