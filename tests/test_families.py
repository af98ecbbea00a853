"""Every row of the family table holds: correct maps on both paths, or a clear refusal.

Each row's tiny random-weight model is checked against an independent computation: the
attention math redone here from each attention module's weights and its captured input
(q/k projections, RoPE, BEiT's relative position bias with an index built here), not through
timm's attention code, torch.fx or ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention, AttentionPoolLatent, AttentionRope
from timm.models.beit import Attention as BeitAttention
from timm.models.cait import ClassAttn
from timm.models.eva import EvaAttention
from timm.models.vision_transformer import ParallelScalingBlock

from pytest_vitattn.errors import UnsupportedModelError
from pytest_vitattn.extract import describe, extract_cls_attention
from pytest_vitattn.extract.catalog import (
    FAMILIES,
    REFUSED,
    REGISTERS_ONLY,
    SUPPORTED,
    FamilyCase,
    markdown_table,
)
from pytest_vitattn.maps import patch_maps

READABLE = [case for case in FAMILIES if case.status != REFUSED]


def create(case: FamilyCase) -> torch.nn.Module:
    """The row's tiny model; zero-initialised parameters (biases, BEiT's relative position
    table, tokens) get random values, so a path that forgot one would show."""
    torch.manual_seed(0)
    model = timm.create_model(case.model, pretrained=False, **case.kwargs).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.5)
    return model


def batch(case: FamilyCase) -> torch.Tensor:
    return torch.randn(2, 3, *case.input_hw, generator=torch.Generator().manual_seed(1))


# --- the independent reference -------------------------------------------------------------


def heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, H * D) -> (B, H, N, D)."""
    return x.reshape(x.shape[0], x.shape[1], num_heads, -1).transpose(1, 2)


def rotate(x: torch.Tensor, rope: torch.Tensor, half: bool) -> torch.Tensor:
    """Rotary embedding: pairs (x_i, x_j) turned by the angle whose sin/cos ``rope`` holds."""
    sin, cos = rope.chunk(2, dim=-1)
    if half:
        first, second = x.chunk(2, dim=-1)
        turned = torch.cat([-second, first], dim=-1)
    else:
        turned = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
    return x * cos + turned * sin


def beit_bias(module: BeitAttention) -> torch.Tensor:
    """(H, N, N) BEiT relative position bias, the index built from the paper's definition."""
    height, width = module.window_size
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    dy = ys.flatten()[:, None] - ys.flatten()[None, :]
    dx = xs.flatten()[:, None] - xs.flatten()[None, :]
    patches = (dy + height - 1) * (2 * width - 1) + dx + width - 1
    distances = (2 * height - 1) * (2 * width - 1)
    index = torch.full((height * width + 1,) * 2, distances + 2)  # CLS -> CLS
    index[1:, 1:] = patches
    index[0, 1:] = distances  # CLS -> patch
    index[1:, 0] = distances + 1  # patch -> CLS
    table = module.relative_position_bias_table
    return table[index].permute(2, 0, 1)


def projections(
    module: torch.nn.Module, x: torch.Tensor, kwargs: dict
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """q (B, H, Q, D), k (B, H, N, D) and an additive bias from the module's weights."""
    if isinstance(module, ParallelScalingBlock):
        y = F.linear(module.in_norm(x), module.in_proj.weight, module.in_proj.bias)
        _, q, k, _ = torch.split(y, module.in_split, dim=-1)
        h = module.num_heads
        return module.q_norm(heads(q, h)), module.k_norm(heads(k, h)), None
    if isinstance(module, ClassAttn):
        h = module.num_heads
        return heads(module.q(x[:, :1]), h), heads(module.k(x), h), None
    if isinstance(module, AttentionPoolLatent):
        if module.pos_embed is not None:
            x = x + module.pos_embed
        h, dim = module.num_heads, module.kv.out_features // 2
        q = heads(module.q(module.latent.expand(x.shape[0], -1, -1)), h)
        k = heads(F.linear(x, module.kv.weight[:dim], module.kv.bias[:dim]), h)
        return module.q_norm(q), module.k_norm(k), None
    h = module.num_heads
    if getattr(module, "qkv", None) is not None:
        dim = module.qkv.weight.shape[0] // 3
        bias = module.qkv.bias
        if getattr(module, "q_bias", None) is not None:  # EVA/BEiT: no k bias
            bias = torch.cat([module.q_bias, torch.zeros_like(module.q_bias), module.v_bias])
        q = F.linear(x, module.qkv.weight[:dim], None if bias is None else bias[:dim])
        k = F.linear(x, module.qkv.weight[dim : 2 * dim], None if bias is None else bias[dim:-dim])
    else:
        q, k = module.q_proj(x), module.k_proj(x)
    q, k = heads(q, h), heads(k, h)
    if hasattr(module, "q_norm"):  # BEiT has no q/k norm
        q, k = module.q_norm(q), module.k_norm(k)
    rope = kwargs.get("rope")
    if isinstance(module, (EvaAttention, AttentionRope)) and rope is not None:
        prefix, half = module.num_prefix_tokens, module.rotate_half
        q = torch.cat([q[:, :, :prefix], rotate(q[:, :, prefix:], rope, half)], dim=2)
        k = torch.cat([k[:, :, :prefix], rotate(k[:, :, prefix:], rope, half)], dim=2)
    if isinstance(module, BeitAttention):
        return q, k, beit_bias(module) if module.relative_position_bias_table is not None else None
    assert isinstance(module, (Attention, EvaAttention, AttentionRope)), type(module)
    return q, k, None


def reference_rows(model, pixels: torch.Tensor, query: int) -> torch.Tensor:
    """(B, L, H, N) query rows recomputed from every site's captured input and weights."""
    anatomy = describe(model)
    captured: dict[str, tuple] = {}
    handles = [
        model.get_submodule(site.module_path).register_forward_pre_hook(
            lambda _m, args, kwargs, path=site.module_path: captured.__setitem__(
                path, (args[0], kwargs)
            ),
            with_kwargs=True,
        )
        for site in anatomy.sites
    ]
    try:
        with torch.no_grad():
            model(pixels)
            layers: dict[int, list[torch.Tensor]] = {}
            for site in anatomy.sites:
                module = model.get_submodule(site.module_path)
                x, kwargs = captured[site.module_path]
                q, k, bias = projections(module, x, kwargs)
                logits = torch.einsum("bhd,bhnd->bhn", q[:, :, query], k) / math.sqrt(q.shape[-1])
                if bias is not None:
                    logits = logits + bias[:, query]
                layers.setdefault(site.layer, []).append(logits.softmax(dim=-1))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([torch.cat(parts, dim=1) for parts in layers.values()], dim=1)


# --- the claims ----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=READABLE, ids=lambda case: case.model)
def readable(request):
    case = request.param
    return case, create(case), batch(case)


def test_rows_equal_the_reference_on_both_paths(readable):
    case, model, pixels = readable
    query = 0
    reference = reference_rows(model, pixels, query)
    fast = extract_cls_attention(model, pixels, method="fast", query_index=query)
    fx = extract_cls_attention(model, pixels, method="fx", query_index=query)
    assert (fast.method, fx.method) == ("fast", "fx")
    assert fast.rows.shape == reference.shape
    assert reference.shape[1] == case.layers
    torch.testing.assert_close(fx.rows, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.rows, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.rows, fx.rows, atol=1e-5, rtol=0)


def test_layout_matches_the_hand_worked_grid(readable):
    case, model, pixels = readable
    extraction = extract_cls_attention(model, pixels, query_index=0, rollout_fusion=None)
    layout = extraction.layout
    assert layout.grid == case.grid
    assert extraction.rows.shape[-1] == layout.num_prefix_tokens + case.grid[0] * case.grid[1]
    maps = patch_maps(extraction.rows, layout.num_prefix_tokens, layout.grid)
    assert maps.shape[-2:] == case.grid
    torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(maps.shape[:-2]))


def test_auto_picks_the_fast_path_and_records_it(readable):
    _, model, pixels = readable
    assert describe(model).fast_path
    assert extract_cls_attention(model, pixels, query_index=0).method == "fast"


def test_rollout_is_equal_on_both_paths_or_absent_where_undefined(readable):
    _, model, pixels = readable
    fast = extract_cls_attention(model, pixels, method="fast", query_index=0)
    fx = extract_cls_attention(model, pixels, method="fx", query_index=0)
    if describe(model).has_rollout:
        assert fast.rollout.shape == fast.rows.shape[:2] + fast.rows.shape[-1:]
        torch.testing.assert_close(fast.rollout, fx.rollout, atol=1e-5, rtol=0)
    else:
        assert fast.rollout is None and fx.rollout is None


@pytest.mark.parametrize(
    "case", [c for c in FAMILIES if c.status == REFUSED], ids=lambda case: case.model
)
def test_refused_families_get_a_clear_error(case):
    model = create(case)
    with pytest.raises(UnsupportedModelError, match=case.refusal) as error:
        describe(model)
    assert type(model).__name__ in str(error.value)
    assert "vit_*" in str(error.value)  # says what would work instead


@pytest.mark.parametrize(
    "case", [c for c in FAMILIES if c.status == REGISTERS_ONLY], ids=lambda case: case.model
)
def test_models_without_cls_refuse_the_cls_row_but_offer_registers(case):
    model = create(case)
    anatomy = describe(model)
    pixels = batch(case)
    with pytest.raises(UnsupportedModelError, match=case.refusal) as error:
        extract_cls_attention(model, pixels, anatomy=anatomy)
    assert "token=0.." in str(error.value)
    with pytest.raises(UnsupportedModelError, match=case.refusal):
        anatomy.resolve_query("cls", case.model)
    register = anatomy.num_prefix_tokens - 1
    extraction = extract_cls_attention(model, pixels, query_index=register)
    torch.testing.assert_close(
        extraction.rows, reference_rows(model, pixels, register), atol=1e-5, rtol=0
    )


def test_distillation_token_row_is_its_own():
    case = next(c for c in FAMILIES if c.model == "deit_tiny_distilled_patch16_224")
    model, pixels = create(case), batch(case)
    anatomy = describe(model)
    dist = anatomy.resolve_query("dist", case.model)
    assert (anatomy.resolve_query("cls"), dist, anatomy.num_prefix_tokens) == (0, 1, 2)
    rows = {
        method: extract_cls_attention(model, pixels, method=method, query_index=dist).rows
        for method in ("fast", "fx")
    }
    reference = reference_rows(model, pixels, dist)
    torch.testing.assert_close(rows["fast"], reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(rows["fx"], reference, atol=1e-5, rtol=0)
    cls_rows = extract_cls_attention(model, pixels, query_index=0).rows
    assert not torch.allclose(cls_rows, rows["fast"])


def test_register_rows_are_readable_next_to_cls():
    case = next(c for c in FAMILIES if c.model == "vit_small_patch14_reg4_dinov2")
    model, pixels = create(case), batch(case)
    anatomy = describe(model)
    assert anatomy.num_prefix_tokens == 5 and anatomy.query_index == 0
    extraction = extract_cls_attention(model, pixels, query_index=3)
    torch.testing.assert_close(extraction.rows, reference_rows(model, pixels, 3), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("model_name", "token", "message"),
    [
        ("deit_tiny_patch16_224", "dist", "has no such token"),
        ("deit_tiny_patch16_224", 1, "indices 0..0"),
        ("vit_base_patch16_siglip_224", 1, "indices 0..0"),
        ("cait_xxs24_224", "dist", "has no such token"),
    ],
)
def test_queries_that_do_not_exist_are_refused(model_name, token, message):
    case = next(c for c in FAMILIES if c.model == model_name)
    anatomy = describe(create(case))
    with pytest.raises(Exception, match=message) as error:
        anatomy.resolve_query(token, model_name)
    assert model_name in str(error.value)


def test_cait_reads_class_attention_not_the_talking_heads():
    case = next(c for c in FAMILIES if c.model == "cait_xxs24_224")
    model = create(case)
    paths = [site.module_path for site in describe(model).sites]
    assert paths == ["blocks_token_only.0.attn", "blocks_token_only.1.attn"]


def test_xcit_reads_class_attention_not_the_channel_attention():
    case = next(c for c in FAMILIES if c.model == "xcit_nano_12_p16_224")
    model = create(case)
    paths = [site.module_path for site in describe(model).sites]
    assert paths == ["cls_attn_blocks.0.attn", "cls_attn_blocks.1.attn"]


def test_non_square_grid_is_row_major_height_by_width():
    # One bright patch at pixel rows 0-15, columns 64-79: grid cell (0, 4) of a 3x6 grid. Its
    # token is found from the tokens themselves (the odd one out entering block 0), and the
    # map must show that token's attention at (0, 4), not where a 6x3 grid would put it.
    case = next(c for c in FAMILIES if c.kwargs.get("dynamic_img_size"))
    model = create(case)
    pixels = torch.zeros(1, 3, *case.input_hw)
    pixels[:, :, 0:16, 64:80] = 25.0
    tokens = []
    handle = model.blocks[0].register_forward_pre_hook(lambda _m, args: tokens.append(args[0]))
    try:
        extraction = extract_cls_attention(model, pixels, rollout_fusion=None)
    finally:
        handle.remove()
    prefix, grid = extraction.layout.num_prefix_tokens, extraction.layout.grid
    assert grid == (3, 6)
    patches = tokens[0][0, prefix:]
    bright = int((patches - patches.median(dim=0).values).norm(dim=-1).argmax())
    assert divmod(bright, grid[1]) == (0, 4)
    maps = patch_maps(extraction.rows, prefix, grid)[0]  # (L, H, 3, 6)
    rows = extraction.rows[0, :, :, prefix:]
    torch.testing.assert_close(maps[..., 0, 4], rows[..., bright] / rows.sum(dim=-1))


def test_fixed_size_models_refuse_other_sizes_clearly():
    case = next(c for c in FAMILIES if c.model == "deit_tiny_patch16_224")
    model = create(case)
    with pytest.raises(Exception, match="built for 64x64"):
        extract_cls_attention(model, torch.zeros(1, 3, 64, 80))


def test_family_table_lists_every_row_once():
    table = markdown_table()
    assert table.count("\n") == len(FAMILIES) + 1
    for case in FAMILIES:
        assert f"| {case.family} |" in table
        assert case.status in (SUPPORTED, REGISTERS_ONLY, REFUSED)
