"""Rollout with vit-explain's options (discard_ratio, head fusion) against independent code.

Two references, both on full (N, N) matrices:

* ``vit_explain_rollout``: vit-explain's ``rollout`` (jacobgil/vit-explain, ``vit_rollout.py``,
  MIT) line for line, with one change: its row normalisation ``a / a.sum(dim=-1)`` lacks
  ``keepdim=True`` and so divides column j by row j's sum (vit-explain issue #16); here
  ``keepdim=True``. It returns the CLS row after the last layer, batch of one.
* ``formula_rollout``: the formula written out per image with a stable sort, every layer.
"""

from __future__ import annotations

import pytest
import timm
import torch

from pytest_vitattn.extract import extract_cls_attention
from pytest_vitattn.maps import discard_lowest, rollout_step
from pytest_vitattn.options import parse_discard_ratio


def vit_explain_rollout(attentions, discard_ratio, head_fusion):
    """vit-explain's rollout (batch of one), normalisation fixed; the CLS row after all layers."""
    result = torch.eye(attentions[0].size(-1))
    with torch.no_grad():
        for attention in attentions:
            if head_fusion == "mean":
                attention_heads_fused = attention.mean(axis=1)
            elif head_fusion == "max":
                attention_heads_fused = attention.max(axis=1)[0]
            elif head_fusion == "min":
                attention_heads_fused = attention.min(axis=1)[0]
            flat = attention_heads_fused.view(attention_heads_fused.size(0), -1)
            _, indices = flat.topk(int(flat.size(-1) * discard_ratio), -1, False)
            indices = indices[indices != 0]
            flat[0, indices] = 0
            eye = torch.eye(attention_heads_fused.size(-1))
            a = (attention_heads_fused + 1.0 * eye) / 2
            a = a / a.sum(dim=-1, keepdim=True)
            result = torch.matmul(a, result)
    return result[0, 0]


def formula_rollout(attentions, discard_ratio, head_fusion):
    """(B, L, N) rollout rows of token 0 after each layer, per image, from the formula."""
    reduce = {"mean": torch.mean, "max": torch.amax, "min": torch.amin}[head_fusion]
    batch, tokens = attentions[0].shape[0], attentions[0].shape[-1]
    out = torch.zeros(batch, len(attentions), tokens, dtype=torch.float64)
    for b in range(batch):
        running = torch.eye(tokens, dtype=torch.float64)
        for layer, attention in enumerate(attentions):
            fused = reduce(attention[b].double(), dim=0).flatten()
            count = int(tokens * tokens * discard_ratio)
            lowest = torch.sort(fused, stable=True).indices[:count]
            fused[lowest[lowest != 0]] = 0.0
            a = (fused.view(tokens, tokens) + torch.eye(tokens, dtype=torch.float64)) / 2
            running = (a / a.sum(dim=1, keepdim=True)) @ running
            out[b, layer] = running[0]
    return out


def softmax_attentions(generator, layers=3, batch=2, heads=3, tokens=17):
    logits = torch.randn(layers, batch, heads, tokens, tokens, generator=generator) * 3
    return list(logits.softmax(dim=-1))


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9, 0.99])
def test_rollout_equals_vit_explain_and_the_formula(fusion, ratio):
    attentions = softmax_attentions(torch.Generator().manual_seed(3))
    running = None
    for attention in attentions:
        running = rollout_step(running, attention, fusion, ratio)
    expected = formula_rollout(attentions, ratio, fusion)
    torch.testing.assert_close(running[:, 0].double(), expected[:, -1], atol=1e-6, rtol=0)
    for b in range(2):
        explain = vit_explain_rollout([a[b : b + 1].clone() for a in attentions], ratio, fusion)
        torch.testing.assert_close(running[b, 0], explain, atol=1e-6, rtol=0)


def test_discard_zeroes_the_lowest_share_but_never_token_0_to_token_0():
    fused = torch.arange(16.0).view(1, 4, 4) + 1  # entry (0, 0) is the smallest
    dropped = discard_lowest(fused, 0.5)  # int(16 * 0.5) = 8 smallest: flat indices 0..7
    assert dropped[0, 0, 0] == 1.0  # kept, so only 7 entries are zeroed
    assert int((dropped == 0).sum()) == 7
    assert torch.equal(dropped.flatten()[8:], fused.flatten()[8:])
    assert torch.equal(fused, torch.arange(16.0).view(1, 4, 4) + 1)  # input untouched


def test_discard_breaks_ties_by_flat_index_and_counts_like_vit_explain():
    fused = torch.full((1, 3, 3), 0.5)
    dropped = discard_lowest(fused, 0.34)  # int(9 * 0.34) = 3: flat 0 (kept), 1, 2
    assert dropped.flatten().tolist() == [0.5, 0, 0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    # vit-explain's count is int(N * N * ratio), float rounding included: int(100 * 0.29) == 28.
    ten = torch.arange(1.0, 101.0).view(1, 10, 10)
    assert int((discard_lowest(ten, 0.29) == 0).sum()) == 27


def test_discard_ratio_zero_changes_nothing():
    attentions = softmax_attentions(torch.Generator().manual_seed(5))
    assert torch.equal(
        rollout_step(None, attentions[0], "max", 0.0), rollout_step(None, attentions[0], "max")
    )


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_discard_ratio_out_of_range_is_refused(ratio):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        discard_lowest(torch.rand(1, 3, 3), ratio)


def test_discard_ratio_option_values():
    assert parse_discard_ratio("0.9") == 0.9
    for bad in ("1", "-0.5", "abc"):
        with pytest.raises(Exception, match=r"\[0, 1\)"):
            parse_discard_ratio(bad)


@pytest.fixture(scope="module")
def small_vit():
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=3, img_size=64)
    return model.eval()


@pytest.mark.parametrize("method", ["fast", "fx"])
@pytest.mark.parametrize(("fusion", "ratio"), [("max", 0.9), ("mean", 0.6), ("min", 0.3)])
def test_extraction_rollout_matches_the_formula_on_a_real_model(small_vit, method, fusion, ratio):
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    attentions = []
    hooks = [
        block.attn.attn_drop.register_forward_hook(lambda _m, _i, out: attentions.append(out))
        for block in small_vit.blocks
    ]
    try:
        for block in small_vit.blocks:
            block.attn.fused_attn = False
        with torch.no_grad():
            small_vit(pixels)
    finally:
        for hook in hooks:
            hook.remove()
        for block in small_vit.blocks:
            block.attn.fused_attn = True
    expected = formula_rollout(attentions, ratio, fusion)
    extraction = extract_cls_attention(
        small_vit, pixels, method=method, rollout_fusion=fusion, rollout_discard_ratio=ratio
    )
    torch.testing.assert_close(extraction.rollout.double(), expected, atol=1e-5, rtol=0)
    plain = extract_cls_attention(small_vit, pixels, method=method, rollout_fusion=fusion)
    assert (extraction.rollout - plain.rollout).abs().max() > 1e-3  # the option does something
