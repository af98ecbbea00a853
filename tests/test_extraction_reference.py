"""The extracted CLS attention equals the reference notebook's numbers and a q/k reference.

deit_tiny_patch16_224 with random weights: the method, not the weights, is under test.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from pytest_vitattn.extract import describe, extract_cls_attention
from pytest_vitattn.maps import rollout_step


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def notebook_maps(deit_tiny, pixels) -> torch.Tensor:
    """The reference notebook's own code, run on a copy of the model: (B, L, H, 14, 14)."""
    model = copy.deepcopy(deit_tiny)
    for block in model.blocks:
        block.attn.fused_attn = False
    nodes, _ = get_graph_node_names(model)
    interesting_nodes = [x for x in nodes if "attn_drop" in x]
    feature_extractor = create_feature_extractor(model, return_nodes=interesting_nodes)
    with torch.no_grad():
        out = feature_extractor(pixels)
    per_image = []
    for image in range(pixels.shape[0]):
        layers = []
        for k in interesting_nodes:
            heads = [out[k][image, head, 0, 1:].reshape(14, 14) for head in range(3)]
            layers.append(torch.stack(heads))
        per_image.append(torch.stack(layers))
    return torch.stack(per_image)


def qk_reference_rows(model, pixels: torch.Tensor) -> torch.Tensor:
    """CLS rows recomputed from each block's q and k weights: (B, L, H, N)."""
    rows = []
    with torch.no_grad():
        x = model._pos_embed(model.patch_embed(pixels))
        x = model.norm_pre(x)
        for block in model.blocks:
            attn = block.attn
            tokens = block.norm1(x)
            batch, count, dim = tokens.shape
            weight, bias = attn.qkv.weight, attn.qkv.bias
            q = tokens @ weight[:dim].T + bias[:dim]
            k = tokens @ weight[dim : 2 * dim].T + bias[dim : 2 * dim]
            q = q.reshape(batch, count, attn.num_heads, -1).transpose(1, 2)
            k = k.reshape(batch, count, attn.num_heads, -1).transpose(1, 2)
            logits = torch.einsum("bhd,bhnd->bhn", q[:, :, 0], k) / q.shape[-1] ** 0.5
            rows.append(logits.softmax(dim=-1))
            x = block(x)
    return torch.stack(rows, dim=1)


def as_grid(rows: torch.Tensor, grid=(14, 14)) -> torch.Tensor:
    return rows[..., 1:].reshape(*rows.shape[:-1], *grid)


def test_fx_path_equals_the_notebook(deit_tiny, pixels, notebook_maps):
    extraction = extract_cls_attention(deit_tiny, pixels, method="fx")
    assert extraction.method == "fx"
    assert extraction.rows.shape == (2, 12, 3, 197)
    torch.testing.assert_close(as_grid(extraction.rows), notebook_maps, atol=1e-6, rtol=0)


def test_fast_path_equals_the_notebook(deit_tiny, pixels, notebook_maps):
    extraction = extract_cls_attention(deit_tiny, pixels, method="fast")
    assert extraction.method == "fast"
    torch.testing.assert_close(as_grid(extraction.rows), notebook_maps, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["fx", "fast"])
def test_rows_equal_an_independent_qk_reference(deit_tiny, pixels, method):
    reference = qk_reference_rows(deit_tiny, pixels)
    extraction = extract_cls_attention(deit_tiny, pixels, method=method)
    torch.testing.assert_close(extraction.rows, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["fx", "fast"])
def test_rollout_equals_a_product_of_full_attention_matrices(deit_tiny, pixels, method):
    model = copy.deepcopy(deit_tiny)
    for block in model.blocks:
        block.attn.fused_attn = False
    nodes = [f"blocks.{i}.attn.attn_drop" for i in range(12)]
    with torch.no_grad():
        full = create_feature_extractor(model, return_nodes=nodes)(pixels)
    eye = torch.eye(197)
    expected = eye.expand(2, 197, 197)
    for node in nodes:
        layer = 0.5 * full[node].mean(dim=1) + 0.5 * eye
        expected = (layer / layer.sum(-1, keepdim=True)) @ expected
    extraction = extract_cls_attention(deit_tiny, pixels, method=method, rollout_fusion="mean")
    torch.testing.assert_close(extraction.rollout[:, -1], expected[:, 0], atol=1e-5, rtol=0)
    running = None
    for node in nodes[:3]:
        running = rollout_step(running, full[node])
    torch.testing.assert_close(extraction.rollout[:, 2], running[:, 0], atol=1e-5, rtol=0)


def test_extraction_leaves_the_model_unaltered(deit_tiny, pixels):
    flags = [m.fused_attn for m in deit_tiny.modules() if hasattr(m, "fused_attn")]
    state = {k: v.clone() for k, v in deit_tiny.state_dict().items()}
    hooks = [len(m._forward_hooks) for m in deit_tiny.modules()]
    extract_cls_attention(deit_tiny, pixels, method="fx")
    extract_cls_attention(deit_tiny, pixels, method="fast")
    assert [m.fused_attn for m in deit_tiny.modules() if hasattr(m, "fused_attn")] == flags
    assert all(flag for flag in flags)
    assert [len(m._forward_hooks) for m in deit_tiny.modules()] == hooks
    for key, value in deit_tiny.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not deit_tiny.training


def test_only_cls_rows_are_kept(deit_tiny, pixels):
    extraction = extract_cls_attention(deit_tiny, pixels, method="fx", rollout_fusion=None)
    # (B, L, H, N) rows, not (B, L, H, N, N) matrices.
    assert extraction.rows.shape == (2, 12, 3, 197)
    assert extraction.rollout is None


def test_layout_comes_from_the_model(deit_tiny):
    anatomy = describe(deit_tiny)
    layout = anatomy.layout(deit_tiny, (224, 224))
    assert (anatomy.num_layers, layout.num_prefix_tokens, layout.grid) == (12, 1, (14, 14))
    assert layout.num_tokens == 197
