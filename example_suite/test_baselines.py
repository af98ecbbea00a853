"""Regression checks for CI: attention must stay where it was when the baseline was stored.

The baselines in ``vitattn_baselines/`` were written with the faithful shipped model. Swap
the model and these tests catch it, even if accuracy stays the same:

    bash scripts/example.sh --vitattn-model=vitattn_tiny_shapes_shortcut   # fails here

After an intended change, review the report, then rewrite the baselines:

    bash scripts/example.sh --vitattn-update-baselines
"""

from __future__ import annotations

import pytest
from conftest import DATA

BASELINED = ["circle_1.png", "square_1.png", "triangle_1.png", "cross_1.png", "ring_1.png"]


@pytest.mark.parametrize("name", BASELINED)
def test_every_layer_and_head_matches_its_baseline(vitattn, name):
    """All layers x heads against the stored maps, at the default tolerance."""
    vitattn(DATA / name).matches_baseline()


@pytest.mark.vitattn(tolerance=0.05)
def test_the_last_layer_matches_at_a_looser_tolerance(vitattn):
    """One map against the same map of the baseline; the marker sets the tolerance."""
    vitattn(DATA / "circle_2.png").expect(layer=-1).matches_baseline()
