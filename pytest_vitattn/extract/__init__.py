"""CLS attention extraction from timm ViTs, by the notebook's fx method or the fast path.

Both paths return the same numbers (checked in tests); ``auto`` picks the fast path when the
model's family supports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pytest_vitattn.extract.anatomy import Anatomy, AttentionSite, TokenLayout, describe
from pytest_vitattn.extract.fast import fast_cls_rows
from pytest_vitattn.extract.fx import fused_attention_disabled, fx_cls_rows

METHODS = ("auto", "fast", "fx")

__all__ = [
    "METHODS",
    "Anatomy",
    "AttentionSite",
    "Extraction",
    "TokenLayout",
    "describe",
    "extract_cls_attention",
    "fused_attention_disabled",
]


@dataclass(frozen=True)
class Extraction:
    """Attention rows of the query token for a batch.

    Attributes:
        rows: (B, L, H, N) float32 softmax rows over all N tokens (prefix tokens included).
        rollout: (B, L, N) float32 attention-rollout rows after each layer, or None.
        logits: (B, classes) model output, or None (the fx path does not compute it).
        layout: the token layout (prefix tokens, query token, patch grid).
        method: "fast" or "fx", the path that produced the rows.
    """

    rows: torch.Tensor
    rollout: torch.Tensor | None
    logits: torch.Tensor | None
    layout: TokenLayout
    method: str


def extract_cls_attention(
    model: nn.Module,
    pixels: torch.Tensor,
    *,
    method: str = "auto",
    rollout_fusion: str | None = "mean",
    query_index: int | None = None,
    anatomy: Anatomy | None = None,
) -> Extraction:
    """Extract the CLS attention rows of every layer and head for a batch of images.

    Args:
        model: a timm ViT in eval mode; it is not altered.
        pixels: (B, 3, height, width) input normalised as the model expects.
        method: "auto", "fast" (fused forward, rows from q and k) or "fx" (the notebook's
            full-matrix extraction).
        rollout_fusion: head fusion for attention rollout ("mean", "max", "min"), or None.
        query_index: prefix token whose row to read; default the CLS token.
        anatomy: the model's anatomy, if already described.

    Returns:
        An ``Extraction`` with rows (B, L, H, N).
    """
    if method not in METHODS:
        raise ValueError(f"extraction method {method!r} is not one of {', '.join(METHODS)}")
    anatomy = anatomy or describe(model)
    layout = anatomy.layout(model, (int(pixels.shape[-2]), int(pixels.shape[-1])))
    if query_index is not None:
        layout = TokenLayout(layout.num_prefix_tokens, query_index, layout.grid)
    use_fast = method == "fast" or (method == "auto" and anatomy.fast_path)
    if use_fast:
        rows, rollout, logits = fast_cls_rows(model, pixels, anatomy, layout, rollout_fusion)
        return Extraction(rows, rollout, logits, layout, "fast")
    rows, rollout = fx_cls_rows(model, pixels, anatomy, layout, rollout_fusion)
    return Extraction(rows, rollout, None, layout, "fx")
