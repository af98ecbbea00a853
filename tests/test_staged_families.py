"""Families whose grid (and head count) changes between layers: PiT and MViTv2 ``*_cls``.

Each layer's rows are checked against the independent computation of ``family_reference``
(for MViTv2 the key pooling redone with ``F.conv2d`` from the module's weights), on both
paths, and each layer's grid against the one worked out by hand in the catalog.
"""

from __future__ import annotations

import pytest
import torch
from family_reference import batch, create, reference_rows

from pytest_vitattn.errors import ImageError
from pytest_vitattn.extract import describe, extract_cls_attention
from pytest_vitattn.extract.catalog import FAMILIES, FamilyCase
from pytest_vitattn.maps import patch_maps

STAGED = [case for case in FAMILIES if case.layer_grids is not None]


@pytest.fixture(scope="module", params=STAGED, ids=lambda case: case.model)
def staged(request):
    case = request.param
    return case, create(case), batch(case)


def test_the_staged_families_are_pit_and_mvitv2():
    assert sorted(case.model for case in STAGED) == ["mvitv2_small_cls", "pit_ti_224"]


def test_each_layers_rows_equal_the_reference_on_both_paths(staged):
    case, model, pixels = staged
    reference = reference_rows(model, pixels, 0)
    assert isinstance(reference, list) and len(reference) == case.layers
    for method in ("fast", "fx"):
        extraction = extract_cls_attention(model, pixels, method=method, query_index=0)
        assert extraction.method == method
        assert isinstance(extraction.rows, list) and len(extraction.rows) == case.layers
        for layer, (rows, expected) in enumerate(zip(extraction.rows, reference, strict=True)):
            assert rows.shape == expected.shape, (method, layer)
            torch.testing.assert_close(rows, expected, atol=1e-5, rtol=0)


def test_each_layer_has_its_hand_worked_grid_and_the_models_heads(staged):
    case, model, pixels = staged
    extraction = extract_cls_attention(model, pixels, query_index=0)
    layout = extraction.layout
    assert layout.ragged and layout.grid == case.grid
    assert layout.layer_grids == case.layer_grids
    heads = [model.get_submodule(site.module_path).num_heads for site in describe(model).sites]
    assert len(set(heads)) > 1  # the head count changes too
    for layer, rows in enumerate(extraction.rows):
        height, width = case.layer_grids[layer]
        assert rows.shape == (2, heads[layer], layout.num_prefix_tokens + height * width)
        maps = patch_maps(rows, layout.num_prefix_tokens, (height, width))
        torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(maps.shape[:-2]))


def test_no_rollout_where_the_token_count_changes(staged):
    _, model, pixels = staged
    assert not describe(model).has_rollout
    assert extract_cls_attention(model, pixels, query_index=0).rollout is None


def test_pit_distillation_row_is_read_and_both_tokens_dropped():
    model = create(
        FamilyCase("PiT distilled", "", "", "", "pit_ti_distilled_224", {"img_size": 64})
    )
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    anatomy = describe(model)
    assert anatomy.num_prefix_tokens == 2 and anatomy.resolve_query("dist") == 1
    for query in (0, 1):
        reference = reference_rows(model, pixels, query)
        for method in ("fast", "fx"):
            rows = extract_cls_attention(model, pixels, method=method, query_index=query).rows
            for got, expected in zip(rows, reference, strict=True):
                torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    cls_rows = extract_cls_attention(model, pixels, query_index=0).rows
    dist_rows = extract_cls_attention(model, pixels, query_index=1).rows
    assert not torch.allclose(cls_rows[-1], dist_rows[-1])


def test_a_wrongly_sized_input_is_refused_with_the_built_size():
    model = create(next(c for c in STAGED if c.model == "pit_ti_224"))
    with pytest.raises(ImageError, match="built for 64x64"):
        extract_cls_attention(model, torch.zeros(1, 3, 96, 96))
    mvit = create(next(c for c in STAGED if c.model == "mvitv2_small_cls"))
    with pytest.raises(ImageError, match="built for 16x16 there"):
        extract_cls_attention(mvit, torch.zeros(1, 3, 96, 96))
