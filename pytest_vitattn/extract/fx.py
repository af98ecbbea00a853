"""The reference notebook's method: torch.fx feature extraction of the attention softmax.

Fused attention is switched off only while the graph is traced (tracing bakes the
non-fused branch into the graph), then restored, so the user's model is left as it was.
timm's fx wrapper is used because it knows timm's modules that cannot be traced.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from pytest_vitattn.errors import UnsupportedModelError
from pytest_vitattn.extract.anatomy import Anatomy
from pytest_vitattn.maps import fused_heads, rollout_matrix, rollout_rows

_EXTRACTORS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[str, ...], nn.Module]] = (
    weakref.WeakKeyDictionary()
)


@contextlib.contextmanager
def fused_attention_disabled(model: nn.Module) -> Iterator[None]:
    """Set ``fused_attn = False`` on every module that has the flag, and restore it."""
    saved = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    try:
        for module, _ in saved:
            module.fused_attn = False
        yield
    finally:
        for module, flag in saved:
            module.fused_attn = flag


def attention_extractor(model: nn.Module, anatomy: Anatomy) -> nn.Module:
    """A traced graph module returning ``{fx_node: (B, H, N, N) softmax}`` for every site.

    Cached per model: tracing costs more than a forward pass of a small model.
    """
    nodes = tuple(site.fx_node for site in anatomy.sites)
    cached = _EXTRACTORS.get(model)
    if cached is not None and cached[0] == nodes:
        return cached[1]
    from timm.models import create_feature_extractor

    with fused_attention_disabled(model):
        try:
            extractor = create_feature_extractor(model, return_nodes=list(nodes))
        except Exception as error:  # torch.fx raises TraceError, TypeError, AttributeError...
            raise UnsupportedModelError(
                f"{type(model).__name__} cannot be traced by torch.fx for extraction='fx' "
                f"({type(error).__name__}: {_first_line(error)}); this is a limit of the "
                f"notebook's tracing method, not of the model: extraction='fast' (or 'auto') "
                f"reads the same rows from the model's own forward pass"
            ) from None
    _EXTRACTORS[model] = (nodes, extractor)
    return extractor


def fx_cls_rows(
    model: nn.Module,
    pixels: torch.Tensor,
    anatomy: Anatomy,
    query_index: int,
    rollout_fusion: str | None,
    rollout_discard_ratio: float = 0.0,
) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | None]:
    """Extract the query's attention rows by materialising every softmax matrix.

    Args:
        pixels: (B, 3, height, width) normalised model input, on the model's device.
        query_index: query row to read (0: CLS).
        rollout_fusion: head fusion for attention rollout, or None to skip rollout.
        rollout_discard_ratio: share of each fused matrix zeroed (``maps.discard_lowest``).

    Returns:
        rows: (B, L, H, N) float32 softmax rows of the query, on the CPU; for a model with
            a grid per layer (``anatomy.layer_grid_rule``), a list of L (B, H_l, N_l).
        rollout: (B, L, N) float32 rollout rows after each layer (CPU), or None (also when
            the family has no rollout).
    """
    # transformers models (pytest_vitattn.hf) read their own eager attention instead of fx.
    extractor = getattr(model, "attention_matrices", None) or attention_extractor(model, anatomy)
    with torch.inference_mode():
        softmaxes = extractor(pixels)
    fusion = rollout_fusion if anatomy.has_rollout else None
    layers: dict[int, list[torch.Tensor]] = {}
    for site in anatomy.sites:
        layers.setdefault(site.layer, []).append(softmaxes.pop(site.fx_node))
    rows, factors = [], []
    for matrices in layers.values():
        # Parallel branches of a layer: their heads side by side. Rows are copied out, so
        # no view keeps a full matrix alive after its layer.
        rows.append(torch.cat([m[:, :, query_index, :].float() for m in matrices], dim=1))
        if fusion is not None:
            attention = matrices[0] if len(matrices) == 1 else torch.cat(matrices, dim=1)
            fused = fused_heads(attention, fusion)
            factors.append(rollout_matrix(fused, rollout_discard_ratio))
        matrices.clear()
    stacked_rollout = rollout_rows(factors, query_index).cpu() if factors else None
    if anatomy.layer_grid_rule is not None:  # a grid (and head count) per layer
        return [layer_rows.cpu() for layer_rows in rows], stacked_rollout
    return torch.stack(rows, dim=1).cpu(), stacked_rollout


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else "no message"
