"""The last-layer reading ablation of scripts/evaluate_embedded.py keeps the last block's CLS
query from exactly the patches it says, and changes nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import evaluate_embedded as evaluation
import last_layer_reading as reading

from pytest_vitattn import zoo


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model(zoo.FAITHFUL_MODEL, pretrained=False, reg_tokens=2).eval()


def last_block_attention(model, inputs, allowed):
    """The last block's softmax (B, heads, N, N), seen at ``attn_drop``, and the logits."""
    with evaluation.recorded_attention(model) as recorded:
        logits = reading.logits_with_last_layer_reading(model, inputs, allowed)
    return recorded[-1], logits


def test_the_cls_row_reads_only_the_allowed_patches_and_the_prefix_tokens(model):
    inputs = torch.randn(2, 3, 64, 64)
    patches = 64
    allowed = torch.zeros(2, patches, dtype=torch.bool)
    allowed[0, [3, 40]] = True  # image 0 reads two patches, image 1 none
    free, _ = last_block_attention(model, inputs, torch.ones(2, patches, dtype=torch.bool))
    kept, _ = last_block_attention(model, inputs, allowed)
    prefix = model.num_prefix_tokens
    assert prefix == 3
    cls_patches = kept[:, :, 0, prefix:]
    assert torch.count_nonzero(cls_patches[~allowed[:, None].expand_as(cls_patches)]) == 0
    assert torch.all(cls_patches[0][:, [3, 40]] > 0)
    assert torch.all(kept[:, :, 0, :prefix].sum(dim=-1) > 0)
    # The kept columns keep their ratios (the row is the softmax over what it may read).
    ratio = free[0, :, 0, prefix + 3] / free[0, :, 0, prefix + 40]
    torch.testing.assert_close(cls_patches[0][:, 3] / cls_patches[0][:, 40], ratio)
    # Every other row of the last block is untouched.
    torch.testing.assert_close(kept[:, :, 1:], free[:, :, 1:])


def test_reading_everything_is_the_plain_model(model):
    inputs = torch.randn(2, 3, 64, 64)
    _, logits = last_block_attention(model, inputs, torch.ones(2, 64, dtype=torch.bool))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(inputs))


def test_the_readings_select_what_they_name():
    fractions = torch.zeros(1, 8, 8)
    fractions[0, 3, 3] = 0.5
    fractions[0, 3, 4] = 1.0
    touched = reading.READINGS["the patches the object touches"](fractions).view(8, 8)
    assert touched.sum() == 2 and touched[3, 3] and touched[3, 4]
    far = reading.READINGS["only patches > 1 cell from the object"](fractions).view(8, 8)
    assert far.sum() == 64 - 3 * 4 and not far[2, 2] and not far[4, 5] and far[1, 3]
    assert reading.READINGS["no patch"](fractions).sum() == 0
    assert reading.READINGS["every patch (as trained)"](fractions).sum() == 64
