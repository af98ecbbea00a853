"""Every row of the family table holds: correct maps on both paths, or a clear refusal.

Each row's tiny random-weight model is checked against an independent computation
(``family_reference``): the attention math redone from each attention module's weights and
its captured input, not through timm's attention code, torch.fx or
``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import pytest
import torch
from family_reference import batch, create, reference_rows

from pytest_vitattn.errors import UnsupportedModelError
from pytest_vitattn.extract import describe, extract_cls_attention
from pytest_vitattn.extract.catalog import (
    FAMILIES,
    REFUSED,
    REGISTERS_ONLY,
    SUPPORTED,
    markdown_table,
)
from pytest_vitattn.maps import patch_maps

# Families with a grid per layer (PiT, MViTv2) are checked in test_staged_families.py.
READABLE = [case for case in FAMILIES if case.status != REFUSED and case.layer_grids is None]


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
