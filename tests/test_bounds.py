"""Bounds of checks, the dangers of a passing one, top-k counts and their chance level."""

from __future__ import annotations

import pytest
import torch

from pytest_vitattn import metrics
from pytest_vitattn.bounds import Bounds, dangers


def test_bounds_need_one_side_and_a_non_empty_range():
    with pytest.raises(ValueError, match=r"mass_in\(\) needs at_least=, at_most=, or both"):
        Bounds.of("mass_in", None, None)
    with pytest.raises(ValueError, match=r"at_least=0.6, at_most=0.4\) is an empty range"):
        Bounds.of("mass_in", 0.6, 0.4)
    with pytest.raises(TypeError, match="at_most must be a number in"):
        Bounds.of("mass_in", None, True)
    with pytest.raises(ValueError, match=r"at_least=1.5 must be in \[0, 1\]"):
        Bounds.of("mass_in", 1.5, None)


@pytest.mark.parametrize(
    ("at_least", "at_most", "value", "verdict"),
    [
        (0.2, None, 0.3, (True, ">=", 0.2)),
        (0.2, None, 0.1, (False, ">=", 0.2)),
        (None, 0.1, 0.05, (True, "<=", 0.1)),
        (None, 0.1, 0.5, (False, "<=", 0.1)),
        (0.2, 0.5, 0.3, (True, ">=", 0.2)),
        (0.2, 0.5, 0.6, (False, "<=", 0.5)),
        (0.2, 0.5, 0.1, (False, ">=", 0.2)),
        (0.2, 0.5, 0.5, (True, ">=", 0.2)),  # inclusive
    ],
)
def test_the_verdict_names_the_bound_that_failed(at_least, at_most, value, verdict):
    assert Bounds.of("check", at_least, at_most).verdict(value) == verdict


def test_dangers_of_a_passing_check():
    """The issue's inverted mask: 95% of the image, mass 0.30 passes at_least=0.2."""
    found = dangers(0.30, 0.95, 0.95, Bounds(0.2, None))
    assert found[0].startswith("the mask covers 95% of the image (more than half)")
    assert found[1].startswith(
        "the value 0.300 passes at_least=0.200 but is below chance (0.950, 0.32x)"
    )
    assert dangers(0.60, 0.10, 0.10, Bounds(0.2, None)) == []
    assert dangers(0.05, 0.10, 0.10, Bounds(None, 0.1)) == []  # at_most: low is the point
    assert len(dangers(0.9, 0.6, 0.6, Bounds(None, 0.95))) == 1  # only the large mask


def test_top_k_chance_is_that_of_random_patches():
    mask = torch.zeros(8, 8)
    mask[:2, :] = 1.0  # 16 of 64 patches, a = 1/4
    assert metrics.top_k_chance(mask) == pytest.approx((1 / 4) / (2 - 1 / 4))
    # k = 4 random patches meet 4 * 16 / 64 = 1 target patch: IoU 1 / (4 + 16 - 1).
    assert metrics.top_k_chance(mask, k=4) == pytest.approx(1 / 19)
    assert metrics.top_k_chance(mask, k=0.0625) == metrics.top_k_chance(mask, k=4)


@pytest.mark.parametrize(
    ("k", "count"), [(None, 16), (1, 1), (5, 5), (64, 64), (0.5, 32), (0.001, 1)]
)
def test_top_k_count(k, count):
    assert metrics.top_k_count(k, 16, 64) == count


@pytest.mark.parametrize(
    ("k", "error", "message"),
    [
        (1.0, ValueError, r"k=1.0 is ambiguous: .* pass k=1 for the single most attended patch"),
        (5.0, ValueError, r"k=5.0 is a float, .* pass an int \(k=5\)"),
        (0.0, ValueError, r"k=0.0 must be a fraction of the patches in \(0, 1\), or an int"),
        (0, ValueError, r"k=0 is a count of patches \(an int\): it must be 1..64"),
        (65, ValueError, r"k=65 is a count of patches"),
        (True, TypeError, "k must be an int count of patches or a float fraction"),
        ("5", TypeError, "k must be an int count of patches or a float fraction"),
    ],
)
def test_ambiguous_or_impossible_k_is_refused(k, error, message):
    with pytest.raises(error, match=message):
        metrics.top_k_count(k, 16, 64)


def test_no_target_patch_is_an_undefined_metric():
    with pytest.raises(metrics.UndefinedMetricError, match="no patch is at least half covered"):
        metrics.top_k_count(None, 0, 64)
