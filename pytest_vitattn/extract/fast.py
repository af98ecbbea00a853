"""Fast query rows: keep the model's fused attention and compute only the rows that are read.

Each attention site hands q, k and its bias (relative position bias, masks) to
``F.scaled_dot_product_attention``, after q_norm/k_norm and RoPE. Sites without a fused
branch (ConViT's MHSA, TNT, VOLO class attention: ``AttentionSite.call == "softmax"``) are
read from their one softmax over the keys instead, which they compute anyway. While a site runs, a
``TorchFunctionMode`` sees that call, computes ``softmax((q_query * scale) @ k^T + bias)`` from
the very same tensors, and passes the call on unchanged. Extra work per site: O(H * N * D)
instead of the O(H * N^2 * D) full matrix; memory: the (B, H, N) rows. The mode is active
only inside the sites, so the rest of the forward pays nothing.

Attention rollout needs every layer's full matrix. With rollout, the site's full softmax is
computed from the same q and k, in blocks of query rows that stay in the CPU's caches; each
block serves as the site's output too (``softmax @ v``, so the attention is computed once,
as in a non-fused forward) and is folded into the layer's (B, N, N) head fusion, then
dropped. The layer's rollout factor is kept and the query's rollout rows are computed at the
end, right to left (``maps.rollout_rows``): memory L x (B, N, N) instead of the fx path's
L x (B, H, N, N), and no (N, N) @ (N, N) products.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from pytest_vitattn.errors import UnsupportedModelError
from pytest_vitattn.extract.anatomy import Anatomy, AttentionSite
from pytest_vitattn.maps import rollout_matrix, rollout_rows

# Floats in one block of the blocked full attention (8 MiB): of the sizes tried on the
# project's CPU (0.25 to 64 MiB, ViT-B at 1,025 tokens), 4 to 16 MiB were fastest; smaller
# blocks pay Python overhead per block, one whole-matrix block runs at memory speed.
_BLOCK_FLOATS = 1 << 21


def fast_cls_rows(
    model: nn.Module,
    pixels: torch.Tensor,
    anatomy: Anatomy,
    query_index: int,
    rollout_fusion: str | None,
    rollout_discard_ratio: float = 0.0,
) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """Extract the query's attention rows during one ordinary (fused) forward pass.

    Args:
        model: the model, in eval mode; its fused-attention flags are set on the sites
            for the call and restored.
        pixels: (B, 3, height, width) normalised model input, on the model's device.
        anatomy: the model's anatomy; ``anatomy.fast_path`` must be true.
        query_index: query row to read (0: CLS).
        rollout_fusion: head fusion for attention rollout, or None to skip rollout.
        rollout_discard_ratio: share of each fused matrix zeroed before it is folded in
            (``maps.discard_lowest``); 0 keeps every entry.

    Returns:
        rows: (B, L, H, N) float32 softmax rows of the query, on the CPU; for a model with
            a grid per layer (``anatomy.layer_grid_rule``), a list of L (B, H_l, N_l).
        rollout: (B, L, N) float32 rollout rows after each layer (CPU), or None.
        logits: (B, classes) float32 model output (CPU), or None if it is not a tensor.
    """
    if not anatomy.fast_path:
        raise UnsupportedModelError(
            f"the fast path does not support the {anatomy.family} family; use extraction='fx'"
        )
    fusion = rollout_fusion if anatomy.has_rollout else None
    capture = _RowCapture(anatomy.sites, query_index, fusion, rollout_discard_ratio)
    capture.ragged = anatomy.layer_grid_rule is not None
    with _capturing(model, anatomy.sites, capture), torch.inference_mode():
        output = model(pixels)
    rows, rollout = capture.result()
    logits = output.float().cpu() if isinstance(output, torch.Tensor) else None
    return rows, rollout, logits


class _RowCapture(TorchFunctionMode):
    """Computes query rows from each site's SDPA call; entered only while a site runs."""

    def __init__(
        self,
        sites: tuple[AttentionSite, ...],
        query_index: int,
        fusion: str | None,
        discard_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        self.sites = sites
        self.query_index = query_index
        self.fusion = fusion
        self.discard_ratio = discard_ratio
        self.site_rows: list[torch.Tensor] = []
        self._factors: list[torch.Tensor] = []  # each layer's (B, N, N) rollout factor
        self._layer_fused: torch.Tensor | None = None  # (B, N, N) head fusion so far
        self._layer_heads = 0
        self._calls = 0
        self._call = "sdpa"
        self.active = False
        self.ragged = False  # set for anatomies with a grid per layer (see result)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._call == "sdpa" and func is F.scaled_dot_product_attention:
            self._calls += 1
            output = self._observe(*args, **kwargs)
            if output is not None:
                return output
        elif self._call == "softmax" and func in _SOFTMAXES:
            # Modules without a fused branch: their one softmax over the keys is the matrix.
            self._calls += 1
            output = func(*args, **kwargs)
            self._observe_softmax(output, args, kwargs)
            return output
        return func(*args, **kwargs)

    def enter_site(self, index: int) -> None:
        self._calls = 0
        self._call = self.sites[index].call
        self.__enter__()
        self.active = True

    def exit_site(self, index: int) -> None:
        self.active = False
        self.__exit__(None, None, None)
        if self._calls != 1:
            what = "fused attention" if self._call == "sdpa" else "softmax"
            raise UnsupportedModelError(
                f"{self.sites[index].module_path} made {self._calls} {what} calls, "
                f"expected 1, so its rows cannot be read on the fast path; use extraction='fx'"
            )
        site = self.sites[index]
        last_of_layer = index + 1 == len(self.sites) or self.sites[index + 1].layer != site.layer
        if self.fusion is not None and last_of_layer:
            fused, self._layer_fused = self._layer_fused, None
            if self.fusion == "mean":
                fused /= self._layer_heads
            self._factors.append(rollout_matrix(fused, self.discard_ratio))

    def _observe(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor | None:
        """Keep the query's rows; with rollout, also the output, from the full matrix."""
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        if key.shape[-3] != query.shape[-3]:  # grouped-query attention: share k among heads
            groups = query.shape[-3] // key.shape[-3]
            key = key.repeat_interleave(groups, dim=-3)
            value = value.repeat_interleave(groups, dim=-3)
        index = self.query_index
        key = _f32(key)
        bias = _bias(attn_mask, is_causal, query.shape[-2], key.shape[-2], key)
        if self.fusion is None:
            # (q * scale) first, as in timm's non-fused branch. k @ q^T, a matrix-vector
            # product that reads k in place, is several times faster than q @ k^T on the
            # strided k views timm passes (that one copies k).
            query_row = _f32(query[..., index : index + 1, :]) * scale
            logits = key @ query_row.transpose(-2, -1)  # (B, H, N, 1): the row, as a column
            if bias is not None:
                rows_bias = bias if bias.shape[-2] == 1 else bias[..., index : index + 1, :]
                logits = logits + rows_bias.transpose(-2, -1)
            self.site_rows.append(logits.softmax(dim=-2)[..., 0])
            return None
        # Rollout needs the full matrix; computing the site's output from it as well saves
        # the fused kernel from computing the same attention a second time.
        output = self._full_attention(query, key, value, bias, scale)
        return None if dropout_p else output  # with dropout, the kernel applies it

    def _full_attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        bias: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        """The site's output from its full softmax, computed in blocks of query rows.

        A whole (B, H, N, N) softmax does not fit in the CPU's caches, and every pass over it
        (q @ k^T, max, exp, sum, divide, @ v) runs at memory speed. Each block here, of all
        heads and a few query rows (8 MiB), is made, normalised, folded into the head
        fusion of the layer's (B, N, N) matrix and multiplied by v while it is in cache, then
        dropped: memory O(N^2) per layer instead of O(H * N^2).
        """
        batch, heads, queries, _ = query.shape
        tokens = key.shape[-2]
        index = self.query_index
        scaled = _f32(query) * scale
        keys_t = key.transpose(-2, -1).contiguous()  # (B, H, D, N), read once per block
        values = _f32(value).contiguous()
        if bias is not None:
            bias = bias.expand(batch, heads, queries, tokens)
        output = torch.empty(
            batch, heads, queries, values.shape[-1], dtype=torch.float32, device=query.device
        )
        rows = torch.empty(batch, heads, tokens, dtype=torch.float32, device=query.device)
        fused = torch.empty(batch, queries, tokens, dtype=torch.float32, device=query.device)
        block = max(1, _BLOCK_FLOATS // (heads * tokens))
        for b in range(batch):
            for start in range(0, queries, block):
                stop = min(start + block, queries)
                logits = scaled[b, :, start:stop] @ keys_t[b]  # (H, block, N)
                if bias is not None:
                    logits += bias[b, :, start:stop]
                probs = logits.softmax(dim=-1)
                if start <= index < stop:
                    rows[b] = probs[:, index - start]
                if self.fusion == "mean":
                    torch.sum(probs, dim=0, out=fused[b, start:stop])
                elif self.fusion == "max":
                    torch.amax(probs, dim=0, out=fused[b, start:stop])
                else:
                    torch.amin(probs, dim=0, out=fused[b, start:stop])
                output[b, :, start:stop] = probs @ values[b]
        self.site_rows.append(rows)
        self._add_to_layer(fused, heads)
        return output.to(value.dtype)

    def _add_to_layer(self, fused: torch.Tensor, heads: int) -> None:
        """Combine a site's head fusion with the other branches of its layer (if any)."""
        if self._layer_fused is None:
            self._layer_fused, self._layer_heads = fused, heads
        elif self.fusion == "mean":
            self._layer_fused += fused
            self._layer_heads += heads
        elif self.fusion == "max":
            torch.maximum(self._layer_fused, fused, out=self._layer_fused)
        else:
            torch.minimum(self._layer_fused, fused, out=self._layer_fused)

    def _observe_softmax(self, full: torch.Tensor, args: tuple, kwargs: dict) -> None:
        """Keep the query's row of a (B, H, Q, N) softmax taken over its last dimension."""
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if full.ndim != 4 or dim not in (-1, full.ndim - 1):
            self._calls += 1  # not an attention softmax over keys: refused in exit_site
            return
        full = _f32(full)
        self.site_rows.append(full[..., self.query_index, :].clone())
        if self.fusion is not None:
            reduce = {"mean": torch.sum, "max": torch.amax, "min": torch.amin}[self.fusion]
            self._add_to_layer(reduce(full, dim=1), full.shape[1])

    def result(self) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | None]:
        """(B, L, H, N) rows and (B, L, N) rollout rows (or None), moved to the CPU once.

        For an anatomy with a grid per layer (``ragged``), the rows are a list of L
        (B, H_l, N_l) tensors instead.
        """
        if len(self.site_rows) != len(self.sites):
            raise UnsupportedModelError(
                f"the fast path read {len(self.site_rows)} attention sites, expected "
                f"{len(self.sites)}; use extraction='fx' for this model"
            )
        layers: dict[int, list[torch.Tensor]] = {}
        for site, rows in zip(self.sites, self.site_rows, strict=True):
            layers.setdefault(site.layer, []).append(rows)
        per_layer = [_heads_side_by_side(parts) for parts in layers.values()]
        rollout = rollout_rows(self._factors, self.query_index).cpu() if self._factors else None
        if self.ragged:  # a grid (and head count) per layer: (B, H_l, N_l) each
            return [rows.cpu() for rows in per_layer], rollout
        return torch.stack(per_layer, dim=1).cpu(), rollout


@contextlib.contextmanager
def _capturing(
    model: nn.Module, sites: tuple[AttentionSite, ...], capture: _RowCapture
) -> Iterator[None]:
    """Hooks on every site, fused attention on for them; all undone on exit, errors too."""
    handles = []
    forced = []
    try:
        for index, site in enumerate(sites):
            module = model.get_submodule(site.module_path)
            if getattr(module, "fused_attn", True) is False:
                # The rows are read from the fused call, so the site must make it.
                module.fused_attn = True
                forced.append(module)
            handles.append(
                module.register_forward_pre_hook(lambda *_, index=index: capture.enter_site(index))
            )
            handles.append(
                module.register_forward_hook(lambda *_, index=index: capture.exit_site(index))
            )
        yield
    finally:
        if capture.active:  # a site raised before its forward hook ran: leave the mode
            capture.active = False
            capture.__exit__(None, None, None)
        for handle in handles:
            handle.remove()
        for module in forced:
            module.fused_attn = False


_SOFTMAXES = (torch.Tensor.softmax, torch.softmax, F.softmax)


def _heads_side_by_side(parts: list[torch.Tensor]) -> torch.Tensor:
    """Parallel attention branches of one layer as one layer with all their heads."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _f32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def _bias(
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    num_queries: int,
    num_keys: int,
    like: torch.Tensor,
) -> torch.Tensor | None:
    """The additive bias SDPA applies: float masks as they are, boolean masks as 0 / -inf."""
    if is_causal:
        return torch.full(
            (num_queries, num_keys), float("-inf"), dtype=like.dtype, device=like.device
        ).triu_(1)
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        zeros = torch.zeros(attn_mask.shape, dtype=like.dtype, device=like.device)
        return zeros.masked_fill_(~attn_mask, float("-inf"))
    return _f32(attn_mask)
