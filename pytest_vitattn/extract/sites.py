"""Which timm attention modules this package can read, and why the others cannot be read.

A readable module computes ``softmax(q k^T * scale + bias)`` over tokens and, with fused
attention on, hands exactly that q, k and bias to ``F.scaled_dot_product_attention``; with
fused attention off, the softmax is a node of its torch.fx graph. Only classes whose maps are
checked against an independent computation in ``tests/test_families.py`` are listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pytest_vitattn.errors import UnsupportedModelError


@dataclass(frozen=True)
class SiteKind:
    """How to read one class of attention module.

    Attributes:
        softmax_node: name, inside the module, of the fx node that outputs the softmax.
        queries: "tokens" (every token queries: self-attention), "class" (only the CLS
            token queries: CaiT/XCiT/VOLO class attention) or "latent" (learned pooling
            queries).
        call: what the fast path observes while the module runs: "sdpa" (the one
            ``F.scaled_dot_product_attention`` call, given q, k and bias) or "softmax" (the
            one softmax over the keys, for modules that have no fused branch).
    """

    softmax_node: str
    queries: str
    call: str = "sdpa"


def readable_kinds() -> dict[type, SiteKind]:
    """Readable attention classes (timm is imported here, on first use)."""
    from timm.layers import Attention, AttentionPoolLatent, AttentionRope
    from timm.models.beit import Attention as BeitAttention
    from timm.models.cait import ClassAttn
    from timm.models.convit import MHSA
    from timm.models.eva import EvaAttention
    from timm.models.mvitv2 import MultiScaleAttention
    from timm.models.tnt import Attention as TntAttention
    from timm.models.vision_transformer import ParallelScalingBlock
    from timm.models.vision_transformer_relpos import RelPosAttention
    from timm.models.volo import ClassAttention as VoloClassAttention

    return {
        Attention: SiteKind("attn_drop", "tokens"),
        EvaAttention: SiteKind("attn_drop", "tokens"),
        AttentionRope: SiteKind("attn_drop", "tokens"),
        BeitAttention: SiteKind("attn_drop", "tokens"),
        ParallelScalingBlock: SiteKind("attn_drop", "tokens"),
        ClassAttn: SiteKind("attn_drop", "class"),
        AttentionPoolLatent: SiteKind("softmax", "latent"),
        RelPosAttention: SiteKind("attn_drop", "tokens"),
        MHSA: SiteKind("attn_drop", "tokens", "softmax"),
        TntAttention: SiteKind("attn_drop", "tokens", "softmax"),
        VoloClassAttention: SiteKind("attn_drop", "class", "softmax"),
        # MViTv2: queries and keys pooled to coarser grids; the CLS token stays at row 0.
        MultiScaleAttention: SiteKind("softmax", "tokens", "softmax"),
    }


def _unreadable_reasons() -> dict[type, str]:
    from timm.layers import DiffAttention
    from timm.models.cait import TalkingHeadAttn
    from timm.models.vision_transformer import DiffParallelScalingBlock
    from timm.models.xcit import XCA

    differential = (
        "differential attention (the difference of two softmaxes), whose rows are not a "
        "distribution over tokens"
    )
    return {
        DiffAttention: differential,
        DiffParallelScalingBlock: differential,
        TalkingHeadAttn: "talking-heads attention, which mixes heads before and after the softmax",
        XCA: "cross-covariance attention over channels, not tokens",
    }


def site_kind(module: nn.Module, where: str) -> SiteKind:
    """The ``SiteKind`` of ``module`` found at ``where`` (for the message), or refuse.

    Raises:
        UnsupportedModelError: the module's attention cannot be read as token attention.
    """
    for cls, kind in readable_kinds().items():
        if type(module) is cls:
            return kind
    cls_name = type(module).__name__
    for cls, reason in _unreadable_reasons().items():
        if isinstance(module, cls):
            raise UnsupportedModelError(
                f"{where} uses {cls_name}: {reason}, so it has no CLS attention row to read."
            )
    raise UnsupportedModelError(
        f"{where} uses {cls_name}, an attention module pytest-vitattn has not been verified "
        f"on, so it refuses rather than risk a wrong map. Readable: timm's Attention (ViT, "
        f"DeiT, DINOv2, CrossViT, NaFlexViT), EvaAttention and AttentionRope (EVA, RoPE "
        f"ViTs), BEiT's Attention, RelPosAttention, ParallelScalingBlock, ConViT's MHSA, "
        f"TNT's Attention, MViTv2's MultiScaleAttention, CaiT/XCiT/VOLO class attention "
        f"and AttentionPoolLatent."
    )
