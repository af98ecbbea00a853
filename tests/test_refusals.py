"""Refusals are true for the model they are shown for, and no raw timm/torch error gets out.

Also the choices the new families leave to the user: CrossViT's branch, and the grids that the
family table states in words (VOLO's 14x14, PiT's 27x27 -> 14x14 -> 7x7).
"""

from __future__ import annotations

import pytest
import timm
import torch
from family_reference import batch, create, reference_rows

from pytest_vitattn.errors import ImageError, UnsupportedModelError
from pytest_vitattn.extract import describe, extract_cls_attention
from pytest_vitattn.extract.catalog import FAMILIES, FamilyCase
from pytest_vitattn.extract.families import crossvit_default_branch


def tiny(name: str, **kwargs) -> torch.nn.Module:
    return create(FamilyCase(name, "", "", "", name, kwargs))


def refusal(name: str, **kwargs) -> str:
    with torch.device("meta"):  # describe() reads the structure only
        model = timm.create_model(name, pretrained=False, **kwargs)
    with pytest.raises(UnsupportedModelError) as error:
        describe(model)
    return str(error.value)


# --- what each refusal says ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "has"),
    [
        ("swin_tiny_patch4_window7_224", "It has windowed attention (WindowAttention)"),
        ("hiera_tiny_224", "It has windowed attention (MaskUnitAttention)"),
        (
            "twins_svt_small",
            "windowed attention (LocallyGroupedAttn), where tokens attend within local "
            "windows; and attention (GlobalSubSampleAttn) whose queries are all patch",
        ),
        ("pvt_v2_b0", "It has attention (Attention) whose queries are all patch"),
        ("levit_128s", "It has attention (Attention, AttentionDownsample) whose queries"),
        ("mvitv2_tiny", "It has attention (MultiScaleAttention) whose queries"),
        ("edgenext_xx_small", "attention over channels (CrossCovarianceAttn), not over tokens"),
        ("resnet18", "It has no attention modules pytest-vitattn recognises"),
        ("shvit_s1", "It has attention (SHSA) whose queries"),  # found by its q/k projections
        ("resnest14d", "attention over channels (SplitAttn), not over tokens"),
        ("mixer_s16_224", "It has no attention modules pytest-vitattn recognises"),
    ],
)
def test_models_without_a_cls_query_are_told_what_they_have(name, has):
    message = refusal(name)
    assert "no CLS token" in message and "no attention-pooling query" in message
    assert has in message
    assert "vit_*" in message  # what would work instead


def test_class_token_argument_is_named_only_for_classes_that_take_it():
    assert "(class_token=False, global_pool='avg')" in refusal("vit_base_patch16_gap_224")
    swin = refusal("swin_tiny_patch4_window7_224")
    assert "class_token" not in swin and "SwinTransformer has no CLS token (global_pool='avg')" in (
        swin
    )
    assert "ResNet has no CLS token," in refusal("resnet18")  # global_pool is a module there


@pytest.mark.parametrize("name", ["pit_ti_224", "pit_ti_distilled_224", "mvitv2_small_cls"])
def test_cls_models_with_changing_grids_are_read_not_refused(name):
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    anatomy = describe(model)
    assert anatomy.layer_grid_rule is not None and anatomy.query_index == 0


def test_pit_heads_and_grids_are_the_ones_stated():
    # The family table says 27x27, 14x14, 7x7 and 2, 4, 8 heads at 224 px: the tokens
    # entering each stage's blocks (CLS + grid, after the stage's pool) and the layout agree.
    model = timm.create_model("pit_ti_224", pretrained=False).eval()
    tokens = []
    for stage in model.transformers:
        stage.blocks.register_forward_pre_hook(lambda _m, args: tokens.append(args[0].shape[1]))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    assert tokens == [1 + 27 * 27, 1 + 14 * 14, 1 + 7 * 7]
    anatomy = describe(model)
    grids = anatomy.layout(model, (224, 224)).layer_grids
    assert grids == ((27, 27),) * 2 + ((14, 14),) * 6 + ((7, 7),) * 4
    heads = [model.get_submodule(site.module_path).num_heads for site in anatomy.sites]
    assert heads == [2] * 2 + [4] * 6 + [8] * 4


def test_coat_is_refused_as_factorised_attention():
    message = refusal("coat_lite_tiny")
    assert "CoaT has class tokens" in message
    assert "(FactorAttnConvRelPosEnc) is factorised" in message


# --- no raw errors -------------------------------------------------------------------------


def test_fx_that_cannot_trace_says_so_and_the_fast_path_reads_it():
    case = FamilyCase(
        "", "", "", "", "deit_tiny_distilled_patch16_224", {"depth": 2, "dynamic_img_size": True}
    )
    model, pixels = create(case), torch.randn(1, 3, 48, 80)
    with pytest.raises(UnsupportedModelError) as error:
        extract_cls_attention(model, pixels, method="fx")
    message = str(error.value)
    assert "cannot be traced by torch.fx" in message and "TraceError" in message
    assert "extraction='fast' (or 'auto')" in message
    extraction = extract_cls_attention(model, pixels, method="auto", rollout_fusion=None)
    assert extraction.method == "fast" and extraction.layout.grid == (3, 5)
    torch.testing.assert_close(extraction.rows, reference_rows(model, pixels, 0), atol=1e-5, rtol=0)


def test_non_multiple_input_names_the_nearest_sizes():
    model = tiny("vit_small_patch16_224", depth=1, dynamic_img_size=True)
    with pytest.raises(ImageError) as error:
        extract_cls_attention(model, torch.zeros(1, 3, 200, 300))
    message = str(error.value)
    assert "200x300 pixels is not a multiple of the patch size 16x16" in message
    assert "192x288 or 192x304 or 208x288 or 208x304" in message
    assert extract_cls_attention(model, torch.zeros(1, 3, 208, 304)).layout.grid == (13, 19)


def test_hybrid_stem_rounding_is_named_with_the_measured_grid():
    model = tiny("vit_small_r26_s32_224", depth=1, dynamic_img_size=True)
    with pytest.raises(ImageError) as error:
        extract_cls_attention(model, torch.zeros(1, 3, 200, 296))
    message = str(error.value)
    assert "rounds its feature map up to 7x10" in message
    assert "dynamic_feat_size rounds down to 6x9" in message
    assert "192x288 or 192x320 or 224x288 or 224x320" in message
    # The stem really makes 7x10 of it: 71 tokens enter the blocks.
    tokens = []
    model.blocks[0].register_forward_pre_hook(lambda _m, args: tokens.append(args[0].shape[1]))
    with torch.no_grad():
        model(torch.zeros(1, 3, 200, 296))
    assert tokens == [1 + 7 * 10]
    pixels = torch.randn(1, 3, 192, 288)
    extraction = extract_cls_attention(model, pixels, rollout_fusion=None)
    assert extraction.layout.grid == (6, 9)
    torch.testing.assert_close(extraction.rows, reference_rows(model, pixels, 0), atol=1e-5, rtol=0)


def test_naflexvit_non_multiple_input_is_refused_with_sizes():
    case = next(c for c in FAMILIES if c.model == "naflexvit_base_patch16_radio_v3")
    with pytest.raises(ImageError, match="the nearest sizes are 64x96 or 64x112 or 80x96"):
        extract_cls_attention(create(case), torch.zeros(1, 3, 70, 100))


# --- CrossViT branches and the grids the table states ----------------------------------------


def crossvit_case() -> FamilyCase:
    return next(c for c in FAMILIES if c.model == "crossvit_tiny_240")


def test_crossvit_default_is_the_primary_branch_and_branch_0_is_its_own():
    case = crossvit_case()
    model, pixels = create(case), batch(case)
    assert crossvit_default_branch(model) == 1
    assert describe(model).family == "crossvit-branch1"
    small = describe(model, branch=0)
    assert [site.module_path for site in small.sites] == [
        "blocks.0.blocks.0.0.attn",
        "blocks.1.blocks.0.0.attn",
    ]
    for method in ("fast", "fx"):
        extraction = extract_cls_attention(model, pixels, method=method, anatomy=small)
        assert extraction.layout.grid == (10, 10)  # 120 px, 12-px patches
        torch.testing.assert_close(
            extraction.rows, reference_rows(model, pixels, 0, small), atol=1e-5, rtol=0
        )
    default = extract_cls_attention(model, pixels, rollout_fusion=None)
    assert default.rows.shape[-1] == 1 + 7 * 7  # 120 px scaled to 112, 16-px patches


def test_branch_is_checked():
    model = create(crossvit_case())
    with pytest.raises(UnsupportedModelError, match=r"has 2 branches \(0..1; default 1"):
        describe(model, branch=2)
    vit = tiny("vit_small_patch16_224", depth=1)
    with pytest.raises(UnsupportedModelError, match="only CrossViT has several"):
        describe(vit, branch=0)


def test_volo_reads_the_14x14_grid_at_224_pixels():
    model = timm.create_model("volo_d1_224", pretrained=False).eval()
    anatomy = describe(model)
    assert anatomy.layout(model, (224, 224)).grid == (14, 14)
    with pytest.raises(ImageError, match="built for 224x224"):
        anatomy.layout(model, (256, 256))


def test_convit_reads_only_the_layers_after_the_gpsa_ones():
    case = next(c for c in FAMILIES if c.model == "convit_tiny")
    paths = [site.module_path for site in describe(create(case)).sites]
    assert paths == ["blocks.1.attn", "blocks.2.attn"]


def test_conv_stems_take_only_sizes_their_grid_tiles():
    # XCiT's padded stride-2 convolutions would make 5x4 of 72x64 (80x64 of image): refused.
    xcit = next(c for c in FAMILIES if c.model == "xcit_nano_12_p16_224")
    model = create(xcit)
    with pytest.raises(ImageError, match=r"the nearest sizes are 64x64 or 80x64\."):
        extract_cls_attention(model, torch.zeros(1, 3, 72, 64))
    assert extract_cls_attention(model, torch.zeros(1, 3, 80, 64)).layout.grid == (5, 4)
    # VOLO floors 230 px to the same 14x14 grid as 224 px: only 224 px is read.
    volo = timm.create_model("volo_d1_224", pretrained=False).eval()
    with pytest.raises(ImageError, match="built for 224x224"):
        describe(volo).layout(volo, (230, 230))
