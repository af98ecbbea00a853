"""The object-free table of scripts/evaluate_embedded.py counts a model's answers right."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import object_free_predictions as object_free

from pytest_vitattn import zoo


@pytest.fixture(scope="module")
def images():
    return object_free.object_free_images(6)


def model_with_head_bias(bias: list[float]) -> torch.nn.Module:
    """A random faithful model whose logits are ``bias`` for every image (head weight zero)."""
    torch.manual_seed(0)
    model = timm.create_model(zoo.FAITHFUL_MODEL, pretrained=False)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(bias))
    return model


def test_a_model_that_always_names_one_class(images):
    result = object_free.answers(model_with_head_bias([0.0, 0.0, 0.0, 2.0, 0.0]), images)
    assert result.shares.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert result.top_probability == pytest.approx(math.exp(2.0) / (math.exp(2.0) + 4.0))


def test_a_model_with_no_preference_is_at_the_uniform_probability(images):
    result = object_free.answers(model_with_head_bias([0.0] * 5), images)
    assert result.top_probability == pytest.approx(0.2)
    assert result.shares.sum() == pytest.approx(1.0)


def test_the_images_are_the_same_on_every_run(images):
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.uint8
    again = object_free.object_free_images(6)
    assert np.array_equal(images, again)
