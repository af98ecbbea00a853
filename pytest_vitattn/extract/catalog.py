"""The table of timm model families: what pytest-vitattn reads from each, or why it refuses.

``tests/test_families.py`` runs every row on a tiny random-weight instance and checks the
claim (maps equal to an independent computation, or the refusal); the README table is printed
from the same rows. ``HF_FAMILIES`` does the same for transformers models (``hf:`` names),
checked in ``tests/test_hf_models.py``; both tables are printed by::

    python -m pytest_vitattn.extract.catalog
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUPPORTED = "supported (fast + fx)"
REGISTERS_ONLY = "register rows only"
REFUSED = "refused"


@dataclass(frozen=True)
class FamilyCase:
    """One family, the claim made about it, and the tiny model that checks the claim.

    Attributes:
        family: the family's name in the README.
        examples: timm model names of the family.
        status: SUPPORTED, REGISTERS_ONLY or REFUSED.
        what: what is read (the query, the layers), or why it is refused.
        model: timm name of the checked instance (random weights).
        kwargs: overrides that make it tiny, passed to ``timm.create_model``.
        input_hw: (height, width) of the checked input.
        grid: the patch grid that input must give, worked out by hand (None if refused).
        layers: the number of layers read (None if refused).
        refusal: a phrase the refusal message must contain (refused rows).
        layer_grids: each layer's grid, for families whose grid changes between layers
            (worked out by hand from the strides; ``grid`` is then the patch stem's grid).
    """

    family: str
    examples: str
    status: str
    what: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_hw: tuple[int, int] = (64, 64)
    grid: tuple[int, int] | None = None
    layers: int | None = None
    refusal: str = ""
    layer_grids: tuple[tuple[int, int], ...] | None = None


_SMALL = {"embed_dim": 64, "num_heads": 2}

FAMILIES: tuple[FamilyCase, ...] = (
    FamilyCase(
        "ViT",
        "`vit_*_patch*` (class token)",
        SUPPORTED,
        "CLS row of every block",
        "vit_small_patch16_224",
        {"depth": 2, "img_size": 64},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "DeiT",
        "`deit_*_patch16_*`",
        SUPPORTED,
        "CLS row of every block",
        "deit_tiny_patch16_224",
        {"depth": 2, "img_size": 64},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "DeiT distilled",
        "`deit_*_distilled_*`",
        SUPPORTED,
        "CLS row (`token='cls'`) or distillation row (`token='dist'`); both tokens "
        "dropped from the map",
        "deit_tiny_distilled_patch16_224",
        {"depth": 2, "img_size": 64},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "DeiT-III",
        "`deit3_*`",
        SUPPORTED,
        "CLS row of every block",
        "deit3_small_patch16_224",
        {"depth": 2, "img_size": 64},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "FlexiViT",
        "`flexivit_*`",
        SUPPORTED,
        "CLS row of every block",
        "flexivit_small",
        {"depth": 2, "img_size": 64},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "Hybrid ViT",
        "`vit_*_r*_s*` (ResNet stem)",
        SUPPORTED,
        "CLS row of every block; grid from the stem's feature map (with "
        "`dynamic_img_size=True`, sizes that are multiples of the stem's stride; others are "
        "refused with the nearest sizes)",
        "vit_tiny_r_s16_p8_224",
        {"depth": 2, "img_size": 64},
        grid=(2, 2),
        layers=2,
    ),
    FamilyCase(
        "ViT with registers (DINOv2-style)",
        "`vit_*_reg4_dinov2`, `vit_*_reg*` with class token",
        SUPPORTED,
        "CLS row; register tokens dropped from the map; `token=1..4` reads a register row",
        "vit_small_patch14_reg4_dinov2",
        {"depth": 2, "img_size": 56},
        input_hw=(56, 56),
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "Non-square input (`dynamic_img_size=True`)",
        "any of the above created with `dynamic_img_size=True`",
        SUPPORTED,
        "CLS row; grid from the input (here 48x96 -> 3x6), not `patch_embed.grid_size`; "
        "a size that is not a multiple of the patch is refused with the nearest sizes",
        "vit_small_patch16_224",
        {"depth": 2, "img_size": 64, "dynamic_img_size": True},
        input_hw=(48, 96),
        grid=(3, 6),
        layers=2,
    ),
    FamilyCase(
        "Registers, no class token",
        "`vit_*_reg*_gap_*`",
        REGISTERS_ONLY,
        "no CLS token: `token='cls'` is refused; `token=0..3` reads a register row",
        "vit_medium_patch16_reg4_gap_256",
        {"depth": 2, "img_size": 64, **_SMALL},
        grid=(4, 4),
        layers=2,
        refusal="has no CLS token",
    ),
    FamilyCase(
        "Global average pooling, no class token",
        "`vit_*_gap_*`, `*_siglip_gap_*`",
        REFUSED,
        "no CLS token, no registers, no pooling query: no row is a CLS row",
        "vit_base_patch16_gap_224",
        {"depth": 2, "img_size": 64, **_SMALL},
        refusal="has no CLS token",
    ),
    FamilyCase(
        "EVA",
        "`eva_giant_*`, `eva_large_*`",
        SUPPORTED,
        "CLS row of every block",
        "eva_giant_patch14_224",
        {"depth": 2, "img_size": 56, **_SMALL},
        input_hw=(56, 56),
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "EVA-02 (RoPE, separate q/k/v)",
        "`eva02_*`",
        SUPPORTED,
        "CLS row of every block, after RoPE",
        "eva02_base_patch14_224",
        {"depth": 2, "img_size": 56, **_SMALL},
        input_hw=(56, 56),
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "RoPE ViT",
        "`vit_*_rope_*` with class token",
        SUPPORTED,
        "CLS row of every block, after RoPE",
        "vit_small_patch16_rope_224",
        {"depth": 2, "img_size": 64},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "DINOv3 (RoPE, registers)",
        "`vit_*_dinov3*`",
        SUPPORTED,
        "CLS row after RoPE; register tokens dropped from the map; any input size (here "
        "48x80 -> 3x5)",
        "vit_small_patch16_dinov3",
        {"depth": 2, "img_size": 64},
        input_hw=(48, 80),
        grid=(3, 5),
        layers=2,
    ),
    FamilyCase(
        "BEiT",
        "`beit_*`, `beitv2_*`",
        SUPPORTED,
        "CLS row of every block, relative position bias included",
        "beit_base_patch16_224",
        {"depth": 2, "img_size": 64, **_SMALL},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "Attention pooling (SigLIP, `global_pool='map'`)",
        "`vit_*_siglip_*` (not `_gap_`)",
        SUPPORTED,
        "the pooling query's attention over the final patch tokens (one layer, the CLS-like "
        "query; `token='cls'` selects it); no rollout",
        "vit_base_patch16_siglip_224",
        {"depth": 2, "img_size": 64, **_SMALL},
        grid=(4, 4),
        layers=1,
    ),
    FamilyCase(
        "Attention pooling with registers",
        "`vit_*_reg*_map_*`",
        SUPPORTED,
        "the pooling query's attention over the final patch tokens (timm drops the registers "
        "before the pool); no rollout",
        "vit_so150m_patch16_reg4_map_256",
        {"depth": 2, "img_size": 64, **_SMALL},
        grid=(4, 4),
        layers=1,
    ),
    FamilyCase(
        "CaiT",
        "`cait_*`",
        SUPPORTED,
        "CLS row of the class-attention blocks only (the talking-heads patch blocks have no "
        "CLS token); no rollout",
        "cait_xxs24_224",
        {"depth": 2, "img_size": 64},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "XCiT",
        "`xcit_*`",
        SUPPORTED,
        "CLS row of the class-attention blocks only (the XCA blocks attend over channels); "
        "no rollout",
        "xcit_nano_12_p16_224",
        {"depth": 2, "img_size": 64},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "Parallel-scaling blocks",
        "`vit_*_xp_*`",
        SUPPORTED,
        "CLS row of every block (attention computed by the block itself)",
        "vit_base_patch16_xp_224",
        {"depth": 2, "img_size": 64, **_SMALL},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "Parallel attention branches",
        "`vit_*_18x2_*`",
        SUPPORTED,
        "CLS row of every block; the branches' heads side by side (2 x heads)",
        "vit_small_patch16_18x2_224",
        {"depth": 2, "img_size": 64},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "ViT-RelPos with class token",
        "`vit_relpos_*_cls_224`, `vit_relpos_*_clsgap_224`",
        SUPPORTED,
        "CLS row of every block, relative position bias (the SDPA mask) included",
        "vit_relpos_medium_patch16_cls_224",
        {"depth": 2, "img_size": 64},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "ConViT",
        "`convit_*`",
        SUPPORTED,
        "CLS row of the MHSA blocks only (the CLS token joins after the GPSA blocks, which "
        "have none); no rollout",
        "convit_tiny",
        {"depth": 3, "local_up_to_layer": 1, "img_size": 64},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "VOLO",
        "`volo_*`",
        SUPPORTED,
        "CLS row of the class-attention blocks only, over the final token grid (14x14 at "
        "224 px, not the 28x28 of the patch stem); no rollout",
        "volo_d1_224",
        {"img_size": 64},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "TNT",
        "`tnt_*`",
        SUPPORTED,
        "CLS row of every block's outer (patch-level) attention; the inner pixel attention "
        "has no CLS token",
        "tnt_s_legacy_patch16_224",
        {"img_size": 64, "depth": 2},
        grid=(4, 4),
        layers=2,
    ),
    FamilyCase(
        "CrossViT",
        "`crossvit_*`",
        SUPPORTED,
        "one branch's CLS row over its own grid, every self-attention block of that branch; "
        "default the primary (large-patch) branch, `branch=0` the other; no rollout",
        "crossvit_tiny_240",
        {"img_size": 120, "depth": ((1, 1, 0), (1, 2, 0))},
        input_hw=(120, 120),
        grid=(7, 7),
        layers=3,
    ),
    FamilyCase(
        "NaFlexViT with class token",
        "`naflexvit_*_radio_v3`, `naflexvit_*_radio_v4`",
        SUPPORTED,
        "CLS row of every block; register tokens dropped from the map; any multiple of the "
        "patch size (here 64x96 -> 4x6)",
        "naflexvit_base_patch16_radio_v3",
        {"depth": 2, "embed_dim": 64, "num_heads": 2},
        input_hw=(64, 96),
        grid=(4, 6),
        layers=2,
    ),
    FamilyCase(
        "NaFlexViT with attention pooling",
        "`naflexvit_*_map`, `naflexvit_*_siglip`",
        SUPPORTED,
        "the pooling query's attention over the final patch tokens; no rollout",
        "naflexvit_base_patch16_map",
        {"depth": 2, "embed_dim": 64, "num_heads": 2},
        input_hw=(64, 96),
        grid=(4, 6),
        layers=1,
    ),
    FamilyCase(
        "NaFlexViT with registers, no class token",
        "`naflexvit_*_reg*_gap`",
        REGISTERS_ONLY,
        "no CLS token: `token='cls'` is refused; `token=0..` reads a register row",
        "naflexvit_so150m2_patch16_reg1_gap",
        {"depth": 2, "embed_dim": 64, "num_heads": 2},
        grid=(4, 4),
        layers=2,
        refusal="has no CLS token",
    ),
    FamilyCase(
        "PiT",
        "`pit_*`",
        SUPPORTED,
        "CLS row of every block (`*_distilled_*`: `token='dist'` reads the distillation row), "
        "each layer on its stage's own grid and heads (27x27, 14x14, 7x7 and 2, 4, 8 heads "
        "in `pit_ti_224`); no rollout",
        "pit_ti_224",
        {"img_size": 64, "depth": (1, 2, 1)},
        grid=(7, 7),
        layers=4,
        layer_grids=((7, 7), (4, 4), (4, 4), (2, 2)),
    ),
    FamilyCase(
        "MViTv2 with class token",
        "`mvitv2_*_cls`",
        SUPPORTED,
        "CLS row of every block over that block's pooled keys, each layer on its own key "
        "grid (14x14, 28x28, ..., 7x7 in `mvitv2_small_cls`) and heads (1 to 8); no rollout",
        "mvitv2_small_cls",
        {"img_size": 64},
        grid=(16, 16),
        layers=16,
        layer_grids=((4, 4), (8, 8), (4, 4), (8, 8)) + ((4, 4),) * 11 + ((2, 2),),
    ),
    FamilyCase(
        "CoaT",
        "`coat_*`",
        REFUSED,
        "class tokens, but factorised attention (softmax(k)^T v, then the queries): no "
        "query has a row of attention weights",
        "coat_lite_tiny",
        refusal="is factorised",
    ),
    FamilyCase(
        "Swin and other windowed attention",
        "`swin_*`, `maxvit_*`, `hiera_*`, `davit_*`, `gcvit_*`",
        REFUSED,
        "windowed attention, no CLS token",
        "swin_tiny_patch4_window7_224",
        {"depths": (1, 1, 1, 1), "embed_dim": 32, "num_heads": (1, 1, 1, 1)},
        input_hw=(224, 224),
        refusal="It has windowed attention",
    ),
    FamilyCase(
        "Token attention without a class token",
        "`pvt_v2_*`, `twins_*`, `levit_*`, `mvitv2_*` (not `_cls`), `nest_*`, "
        "`efficientformer*`, `visformer_*`",
        REFUSED,
        "attention among patch positions only, no CLS-like query",
        "pvt_v2_b0",
        refusal="whose queries are all patch or feature-map positions",
    ),
    FamilyCase(
        "CNNs and MLP models",
        "`resnet*`, `convnext*`, `mixer_*`, ...",
        REFUSED,
        "no token attention (no CLS-like query either)",
        "resnet18",
        refusal="has no attention modules pytest-vitattn recognises",
    ),
)


@dataclass(frozen=True)
class HFFamilyCase:
    """One transformers family (``hf:`` names) and the claim made about it.

    Attributes:
        family: the family's name in the README.
        classes: transformers model classes of the family.
        status: SUPPORTED, "supported (pooling query)" or REFUSED.
        what: what is read, or why it is refused.
        check: the key of the tiny model that checks the row in ``tests/test_hf_models.py``.
    """

    family: str
    classes: str
    status: str
    what: str
    check: str


HF_FAMILIES: tuple[HFFamilyCase, ...] = (
    HFFamilyCase(
        "ViT",
        "`ViTModel`, `ViTForImageClassification`",
        SUPPORTED,
        "CLS row of every layer; other input sizes with interpolated position embeddings",
        "vit",
    ),
    HFFamilyCase(
        "DeiT (distilled)",
        "`DeiTModel`, `DeiTForImageClassificationWithTeacher`",
        SUPPORTED,
        "CLS row (`token='cls'`) or distillation row (`token='dist'`); both dropped from the map",
        "deit-distilled",
    ),
    HFFamilyCase(
        "DINOv2",
        "`Dinov2Model`",
        SUPPORTED,
        "CLS row of every layer; any input size (position embeddings always interpolated)",
        "dinov2",
    ),
    HFFamilyCase(
        "DINOv2 with registers",
        "`Dinov2WithRegistersModel`",
        SUPPORTED,
        "CLS row; `config.num_register_tokens` registers dropped from the map; "
        "`token=1..R` reads a register row",
        "dinov2-registers",
    ),
    HFFamilyCase(
        "CLIP vision",
        "`CLIPVisionModel`, `CLIPVisionModelWithProjection`, `CLIPModel` (its vision tower)",
        SUPPORTED,
        "CLS row of every layer",
        "clip-vision",
    ),
    HFFamilyCase(
        "SigLIP vision",
        "`SiglipVisionModel`, `SiglipModel` (its vision tower)",
        "supported (fx: the head's own weights)",
        "the attention-pooling head's query (`head.probe`) over the final tokens, one layer; "
        "no rollout",
        "siglip",
    ),
    HFFamilyCase(
        "Swin",
        "`SwinModel`, `SwinForImageClassification`",
        REFUSED,
        "windowed attention, no CLS token",
        "swin",
    ),
)


def hf_markdown_table() -> str:
    """The README table of transformers families, one row per ``HF_FAMILIES`` entry."""
    lines = [
        "| Family | transformers classes | Status | What is read |",
        "|---|---|---|---|",
    ]
    for case in HF_FAMILIES:
        lines.append(f"| {case.family} | {case.classes} | {case.status} | {case.what} |")
    return "\n".join(lines)


def markdown_table() -> str:
    """The README table of families, one row per ``FAMILIES`` entry."""
    lines = [
        "| Family | timm models | Status | What is read |",
        "|---|---|---|---|",
    ]
    for case in FAMILIES:
        lines.append(f"| {case.family} | {case.examples} | {case.status} | {case.what} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
    print()
    print(hf_markdown_table())
