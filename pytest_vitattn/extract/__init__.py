"""CLS attention extraction from timm ViTs, by the fast path or the notebook's fx method.

``describe`` recognises the model's family (``extract.catalog`` lists them) and refuses
models it cannot read, with the reason. ``extract_cls_attention`` then reads the query's
attention rows of every layer: the fast path (``extract.fast``) during one ordinary fused
forward, or the fx path (``extract.fx``, the reference notebook's method) from every full
softmax matrix. Both return the same numbers (checked in tests); ``auto`` picks the fast
path where the family supports it, and ``Extraction.method`` says which one ran.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from pytest_vitattn.errors import ImageError, UnsupportedModelError
from pytest_vitattn.extract.anatomy import Anatomy, AttentionSite, TokenLayout
from pytest_vitattn.extract.describe import describe
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
        rows: (B, L, H, N) float32 softmax rows over all N tokens (prefix tokens included);
            for a model whose grid changes between layers (``layout.ragged``: PiT, MViTv2),
            a list of L (B, H_l, N_l) tensors, layer l over ``layout.layer_grids[l]``.
        rollout: (B, L, N) float32 attention-rollout rows after each layer, or None (not
            asked for, or not defined for the family: class attention, attention pooling).
        logits: (B, classes) model output, or None (the fx path does not compute it).
        layout: the token layout (prefix tokens, query token, patch grid).
        method: "fast" or "fx", the path that produced the rows.
    """

    rows: torch.Tensor | list[torch.Tensor]
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
    rollout_discard_ratio: float = 0.0,
) -> Extraction:
    """Extract the CLS attention rows of every layer and head for a batch of images.

    Args:
        model: a timm ViT; it is run in eval mode and left as it was.
        pixels: (B, 3, height, width) input normalised as the model expects.
        method: "auto" (the fast path where the family supports it), "fast" (fused
            forward, rows from q and k) or "fx" (the notebook's full-matrix extraction).
        rollout_fusion: head fusion for attention rollout ("mean", "max", "min"), or None.
        rollout_discard_ratio: share of each fused matrix's entries zeroed before it is
            folded into rollout, as vit-explain's ``discard_ratio`` (``maps.discard_lowest``);
            in [0, 1), default 0 (plain rollout).
        query_index: query row to read (a prefix-token index); default the CLS token.
        anatomy: the model's anatomy, if already described.

    Returns:
        An ``Extraction`` with rows (B, L, H, N).

    Raises:
        UnsupportedModelError: the model or the query cannot be read.
        ImageError: ``pixels`` is not a batch the model takes.
    """
    if method not in METHODS:
        raise ValueError(f"extraction method {method!r} is not one of {', '.join(METHODS)}")
    if not 0.0 <= rollout_discard_ratio < 1.0:
        raise ValueError(f"rollout_discard_ratio={rollout_discard_ratio!r} must be in [0, 1)")
    anatomy = anatomy or describe(model)
    pixels = _checked_pixels(model, pixels)
    layout = anatomy.layout(model, (int(pixels.shape[-2]), int(pixels.shape[-1])), query_index)
    use_fast = method == "fast" or (method == "auto" and anatomy.fast_path)
    with _evaluating(model):
        if use_fast:
            rows, rollout, logits = fast_cls_rows(
                model, pixels, anatomy, layout.query_index, rollout_fusion, rollout_discard_ratio
            )
            extraction = Extraction(rows, rollout, logits, layout, "fast")
        else:
            rows, rollout = fx_cls_rows(
                model, pixels, anatomy, layout.query_index, rollout_fusion, rollout_discard_ratio
            )
            extraction = Extraction(rows, rollout, None, layout, "fx")
    if layout.ragged:
        _check_layer_grids(model, pixels, rows, layout)
    elif rows.shape[-1] != layout.num_tokens:
        # A wrong grid would silently misplace every map, so this is checked, never assumed.
        raise UnsupportedModelError(
            f"{type(model).__name__} attended over {rows.shape[-1]} tokens, but the layout "
            f"({layout.num_prefix_tokens} prefix tokens, {layout.grid[0]}x{layout.grid[1]} "
            f"patches) has {layout.num_tokens}: the model made another patch grid of this "
            f"{pixels.shape[-2]}x{pixels.shape[-1]} input than its patch embedding says, so "
            f"no map is drawn. Use the input size the model was built for "
            f"(model.pretrained_cfg['input_size'])."
        )
    return extraction


def _check_layer_grids(
    model: nn.Module, pixels: torch.Tensor, rows: list[torch.Tensor], layout: TokenLayout
) -> None:
    """Every layer's rows must cover its prefix tokens and its own grid, exactly."""
    grids = layout.layer_grids or ()
    if len(rows) != len(grids):
        raise UnsupportedModelError(
            f"{type(model).__name__} gave attention rows for {len(rows)} layers, but its "
            f"layout has grids for {len(grids)}; no map is drawn"
        )
    for layer, (layer_rows, (height, width)) in enumerate(zip(rows, grids, strict=True)):
        expected = layout.num_prefix_tokens + height * width
        if layer_rows.shape[-1] != expected:
            raise UnsupportedModelError(
                f"layer {layer} of {type(model).__name__} attended over "
                f"{layer_rows.shape[-1]} tokens, but its layout ({layout.num_prefix_tokens} "
                f"prefix tokens, {height}x{width} patches) has {expected} for this "
                f"{pixels.shape[-2]}x{pixels.shape[-1]} input, so no map is drawn. Use the "
                f"input size the model was built for (model.pretrained_cfg['input_size'])."
            )


def _checked_pixels(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ImageError(f"pixels must be a (batch, channels, height, width) tensor, got {shape}")
    parameter = next(model.parameters())
    if pixels.device != parameter.device:
        raise ImageError(
            f"pixels are on {pixels.device} but the model is on {parameter.device}; "
            f"move them with pixels.to({str(parameter.device)!r})"
        )
    if not pixels.is_floating_point():
        raise ImageError(
            f"pixels must be a float tensor normalised for the model, got {pixels.dtype}"
        )
    return pixels.to(parameter.dtype)


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the call (dropout off), each module's own flag restored after."""
    if not model.training:  # the usual case; checked on the root only, it runs per call
        yield
        return
    saved = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in saved:
            module.training = flag
