"""Fast CLS rows: keep the model's fused attention and compute only the rows we read.

For each attention module, forward hooks catch q and k after ``q_norm``/``k_norm`` (the
tensors the fused kernel receives) and compute ``softmax((q_cls * scale) @ k^T)``: O(H * N * D)
extra work per layer instead of the O(H * N^2 * D) full matrix. Attention rollout, when asked
for, needs the full matrix of one layer at a time and folds it into a running product, so
memory stays O(N^2) instead of O(L * H * N^2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from pytest_vitattn.errors import UnsupportedModelError
from pytest_vitattn.extract.anatomy import Anatomy, TokenLayout
from pytest_vitattn.maps import rollout_step


class _RowCollector:
    """Receives q then k of each layer through hooks and keeps only what is asked for."""

    def __init__(self, layout: TokenLayout, rollout_fusion: str | None) -> None:
        self.layout = layout
        self.rollout_fusion = rollout_fusion
        self.rows: list[torch.Tensor] = []
        self.rollout_rows: list[torch.Tensor] = []
        self._running: torch.Tensor | None = None
        self._pending_q: torch.Tensor | None = None

    def catch_q(self, _module: nn.Module, _inputs: tuple, q: torch.Tensor) -> None:
        self._pending_q = q

    def catch_k(self, attn: nn.Module, _inputs: tuple, k: torch.Tensor) -> None:
        q, self._pending_q = self._pending_q, None
        if q is None:
            raise UnsupportedModelError(f"{type(attn).__name__} computed k before q")
        index = self.layout.query_index
        logits = (q[:, :, index : index + 1].float() * attn.scale) @ k.float().transpose(-2, -1)
        self.rows.append(logits.softmax(dim=-1)[:, :, 0, :].cpu())
        if self.rollout_fusion is not None:
            full = ((q.float() * attn.scale) @ k.float().transpose(-2, -1)).softmax(dim=-1)
            self._running = rollout_step(self._running, full, self.rollout_fusion)
            self.rollout_rows.append(self._running[:, index, :].cpu())


@contextlib.contextmanager
def _hooked(model: nn.Module, anatomy: Anatomy, collector: _RowCollector) -> Iterator[None]:
    handles = []
    try:
        for site in anatomy.sites:
            attn = model.get_submodule(site.module_path)
            handles.append(attn.q_norm.register_forward_hook(collector.catch_q))
            handles.append(
                attn.k_norm.register_forward_hook(
                    lambda _m, i, k, attn=attn: collector.catch_k(attn, i, k)
                )
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


def fast_cls_rows(
    model: nn.Module,
    pixels: torch.Tensor,
    anatomy: Anatomy,
    layout: TokenLayout,
    rollout_fusion: str | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Extract the query token's attention rows during one ordinary forward pass.

    Args:
        pixels: (B, 3, height, width) normalised model input.
        layout: token layout of this input; ``layout.query_index`` selects the row.
        rollout_fusion: head fusion for attention rollout, or None to skip rollout.

    Returns:
        rows: (B, L, H, N) float32 softmax rows of the query token.
        rollout: (B, L, N) float32 rollout rows after each layer, or None.
        logits: (B, classes) the model's output for the batch.
    """
    if not anatomy.fast_path:
        raise UnsupportedModelError(
            f"the fast path does not support the {anatomy.family} family; use extraction='fx'"
        )
    collector = _RowCollector(layout, rollout_fusion)
    with _hooked(model, anatomy, collector), torch.inference_mode():
        logits = model(pixels)
    if len(collector.rows) != anatomy.num_layers:
        raise UnsupportedModelError(
            f"the fast path saw {len(collector.rows)} attention layers, expected "
            f"{anatomy.num_layers}; use extraction='fx' for this model"
        )
    rollout = torch.stack(collector.rollout_rows, dim=1) if collector.rollout_rows else None
    return torch.stack(collector.rows, dim=1), rollout, logits.float().cpu()
