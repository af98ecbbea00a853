"""The per-head table of scripts/evaluate_embedded.py: each head's mass and prefix share."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import evaluate_embedded as evaluation
import heads_by_shape

from pytest_vitattn import zoo
from pytest_vitattn.synthetic import SHAPE_CLASSES, make_batch


def test_scores_of_a_hand_made_attention():
    # Five images, one per class; 2 heads; 1 prefix token and 4 patches (T = 5).
    classes = len(SHAPE_CLASSES)
    attention = torch.zeros(classes, 2, 5, 5)
    # Head 0 keeps 0.5 on the CLS token and puts 0.5 on patch 0, the object's patch.
    attention[:, 0, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0])
    # Head 1 keeps 0.2 on the CLS token, 0.2 on patch 0 and 0.6 on patch 3.
    attention[:, 1, 0] = torch.tensor([0.2, 0.2, 0.0, 0.0, 0.6])
    fractions = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(classes, 1)
    fractions[4] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # the ring covers half of patch 0
    scores = heads_by_shape.head_scores(attention, fractions, np.arange(classes), 1)
    assert scores.mass.shape == scores.prefix_share.shape == (2, classes)
    np.testing.assert_allclose(scores.mass[0], [1.0, 1.0, 1.0, 1.0, 0.5])
    np.testing.assert_allclose(scores.mass[1], [0.25, 0.25, 0.25, 0.25, 0.125])
    np.testing.assert_allclose(scores.prefix_share[0], 0.5)
    np.testing.assert_allclose(scores.prefix_share[1], 0.2)


def test_a_class_without_images_is_refused():
    attention = torch.full((2, 1, 5, 5), 0.2)
    with pytest.raises(ValueError, match=r"\['triangle', 'cross', 'ring'\]"):
        heads_by_shape.head_scores(attention, torch.ones(2, 4), np.array([0, 1]), 1)


def test_the_mean_over_heads_is_the_head_mean_maps_mass():
    model = evaluation.load_model(zoo.FAITHFUL_MODEL)
    images, labels, masks = make_batch(range(60), split="val", shortcut=False)
    scores = heads_by_shape.last_layer_head_scores(model, images, labels, masks)
    for label in range(len(SHAPE_CLASSES)):
        keep = labels == label
        head_mean = evaluation.score_arrays(model, images[keep], labels[keep], masks[keep])
        assert scores.mass[:, label].mean() == pytest.approx(head_mean.mass, abs=1e-5)
    assert ((scores.prefix_share >= 0) & (scores.prefix_share <= 1)).all()
