"""Pure tensor operations on attention: patch maps, head fusion, rollout, upsampling.

No pytest, no timm. Shapes use B = batch, L = layers, H = heads, N = tokens,
P = prefix tokens, (h, w) = patch grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pytest_vitattn.errors import AttentionValueError

HEAD_FUSIONS = ("mean", "max", "min")


def patch_maps(rows: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """Turn attention rows over all tokens into maps over the patch grid.

    The prefix tokens' columns (CLS, distillation, registers) are dropped and the rest is
    renormalised, so each map is the share of the row's patch attention on each patch.

    Args:
        rows: (..., N) attention rows, N = num_prefix_tokens + h * w.
        num_prefix_tokens: tokens before the patches.
        grid: (h, w) patch grid.

    Returns:
        (..., h, w) float32, each map sums to 1.
    """
    height, width = grid
    if rows.shape[-1] != num_prefix_tokens + height * width:
        raise AttentionValueError(
            f"attention rows have {rows.shape[-1]} keys, but {num_prefix_tokens} prefix tokens "
            f"and a {height}x{width} patch grid make {num_prefix_tokens + height * width}"
        )
    patches = rows[..., num_prefix_tokens:].float()
    check_finite(patches, "attention")
    total = patches.sum(dim=-1, keepdim=True)
    unread = total[..., 0] <= 0
    if bool(unread.any()):
        raise AttentionValueError(
            f"the CLS row of {_positions_text(unread)} puts all its attention on prefix tokens "
            "(the CLS token itself, distillation or register tokens) and none on any patch, "
            "so there is no map over the patches to normalise there. A block whose attention "
            "mask keeps the CLS token from the patches gives such rows; the plugin leaves out "
            "such blocks when they are pytest_vitattn.zoo.MaskedBlock (whose fixed mask it can "
            "read), and refuses other blocks that do this"
        )
    return (patches / total).reshape(*rows.shape[:-1], height, width)


def _positions_text(where: torch.Tensor) -> str:
    """Where a bool (layers, heads) tensor is true, e.g. ``"layers 0-4 (every head)"`` or
    ``"layer 2, heads 0, 1"``; other shapes as a list of index tuples (the first five)."""
    if where.ndim != 2:
        found = [tuple(index) for index in where.nonzero().tolist()]
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        return f"rows {found[:5]}{more}"
    whole = [layer for layer in range(where.shape[0]) if bool(where[layer].all())]
    parts = []
    if whole:
        noun = "layer" if len(whole) == 1 else "layers"
        parts.append(f"{noun} {_ranges_text(whole)} (every head)")
    for layer in range(where.shape[0]):
        heads = where[layer].nonzero().flatten().tolist()
        if heads and layer not in whole:
            noun = "head" if len(heads) == 1 else "heads"
            parts.append(f"layer {layer}, {noun} {', '.join(map(str, heads))}")
    return "; ".join(parts)


def _ranges_text(numbers: list[int]) -> str:
    """Sorted ints as ranges: [0, 1, 2, 4] -> "0-2, 4"."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def grids_text(grids: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> str:
    """Per-layer grids in words, runs of equal grids merged: "27x27 (layers 0-1), 14x14
    (layers 2-7), 7x7 (layers 8-11)"."""
    runs: list[list] = []
    for layer, (height, width) in enumerate(grids):
        if runs and runs[-1][0] == (height, width):
            runs[-1][2] = layer
        else:
            runs.append([(height, width), layer, layer])
    parts = []
    for (height, width), first, last in runs:
        layers = f"layer {first}" if first == last else f"layers {first}-{last}"
        parts.append(f"{height}x{width} ({layers})")
    return ", ".join(parts)


def prefix_share(rows: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Share of each attention row that lands on prefix tokens.

    Args:
        rows: (..., N) attention rows that sum to 1.

    Returns:
        (...,) float32 in [0, 1].
    """
    return rows[..., :num_prefix_tokens].float().sum(dim=-1)


def fuse_heads(maps: torch.Tensor, how: str, dim: int = -3) -> torch.Tensor:
    """Fuse the heads of attention maps into one map, renormalised to sum to 1.

    Args:
        maps: (..., H, h, w) maps with heads at ``dim``.
        how: "mean", "max" or "min" over heads.

    Returns:
        (..., h, w) float32, each map sums to 1 (max and min are renormalised).
    """
    if how == "mean":
        fused = maps.mean(dim=dim)
    elif how == "max":
        fused = maps.amax(dim=dim)
    elif how == "min":
        fused = maps.amin(dim=dim)
    else:
        raise ValueError(f"head fusion {how!r} is not one of {', '.join(HEAD_FUSIONS)}")
    return fused / fused.sum(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(fused.dtype).tiny)


def rollout_step(
    running: torch.Tensor | None,
    attention: torch.Tensor,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
) -> torch.Tensor:
    """Fold one layer into attention rollout (Abnar & Zuidema, 2020).

    The layer's heads are fused first, the lowest ``discard_ratio`` share of the fused
    matrix is zeroed (``discard_lowest``), the residual connection is modelled by adding the
    identity, rows are renormalised, and the result is multiplied onto the running product:
    ``R_l = normalise(0.5 * A_l + 0.5 * I) @ R_{l-1}`` with ``R_0 = I``.

    Args:
        running: (B, N, N) rollout after the previous layers, or None before the first.
        attention: (B, H, N, N) softmax attention of this layer.
        head_fusion: "mean", "max" or "min".
        discard_ratio: share of each fused matrix's entries set to zero, in [0, 1).

    Returns:
        (B, N, N) float32 rollout after this layer.
    """
    return fold_fused(running, fused_heads(attention, head_fusion), discard_ratio)


def fold_fused(
    running: torch.Tensor | None, fused: torch.Tensor, discard_ratio: float = 0.0
) -> torch.Tensor:
    """``rollout_step`` for a layer whose heads are already fused.

    Args:
        running: (B, N, N) rollout after the previous layers, or None before the first.
        fused: (B, N, N) float32 head-fused attention of this layer; overwritten.
        discard_ratio: share of the fused matrix's entries set to zero, in [0, 1).

    Returns:
        (B, N, N) float32 rollout after this layer.
    """
    layer = rollout_matrix(fused, discard_ratio)
    return layer if running is None else layer @ running


def rollout_matrix(fused: torch.Tensor, discard_ratio: float = 0.0) -> torch.Tensor:
    """One layer's rollout factor ``A_l = normalise(0.5 * discard(fused) + 0.5 * I)``.

    Args:
        fused: (B, N, N) float32 head-fused attention; overwritten (it becomes ``A_l``, so
            no second (B, N, N) buffer is made).
        discard_ratio: share of its entries set to zero first (``discard_lowest``).

    Returns:
        (B, N, N) float32, rows sum to 1.
    """
    if discard_ratio:
        fused = discard_lowest(fused, discard_ratio)
    layer = fused.mul_(0.5)
    layer.diagonal(dim1=-2, dim2=-1).add_(0.5)
    return layer.div_(layer.sum(dim=-1, keepdim=True))


def rollout_rows(factors: list[torch.Tensor], query_index: int) -> torch.Tensor:
    """The query's rollout rows after every layer, from the layers' factors.

    Row ``l`` is ``e_q^T A_l A_(l-1) ... A_1``, the query row of ``rollout_step``'s running
    product, but computed right to left: vectors times matrices, from the last layer down,
    every pending row multiplied by ``A_j`` in one product. That costs O(L^2 * N^2) instead
    of the running product's O(L * N^3) (at 1,025 tokens, the (N, N) @ (N, N) products
    cost more than a sixth of a ViT-B forward pass). The factors must all be kept until
    the end: memory L x (B, N, N), freed one by one as they are used.

    Args:
        factors: L tensors (B, N, N) from ``rollout_matrix``, first layer first; the list
            is emptied.
        query_index: the query token.

    Returns:
        (B, L, N) float32.
    """
    pending: torch.Tensor | None = None  # (B, k, N): rows of layers j+1 .. L-1 so far
    while factors:
        factor = factors.pop()
        row = factor[:, query_index : query_index + 1, :]
        pending = row.clone() if pending is None else torch.cat([row, pending @ factor], dim=1)
        del row, factor
    if pending is None:
        raise ValueError("rollout needs at least one layer")
    return pending


def discard_lowest(fused: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the lowest ``ratio`` share of each matrix's entries, as vit-explain does.

    vit-explain (``vit_rollout.py``) flattens the fused (N, N) matrix, takes the
    ``int(N * N * ratio)`` smallest entries and zeroes them, except flat index 0 (the
    token-0 -> token-0 entry: CLS -> CLS in a model with a class token), which it never
    zeroes; when that entry is among the smallest, one entry fewer is zeroed. The same here,
    for every matrix of the batch. Ties at the threshold are broken by flat index (lowest
    first), so the result is deterministic. O(N^2) time and memory (a selection, no sort).

    Args:
        fused: (B, N, N) head-fused attention; not modified.
        ratio: in [0, 1).

    Returns:
        (B, N, N) float32 copy with the discarded entries set to 0.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard ratio {ratio!r} must be in [0, 1)")
    batch, tokens = fused.shape[0], fused.shape[-1]
    count = int(tokens * tokens * ratio)  # vit-explain's count, rounding included
    flat = fused.reshape(batch, tokens * tokens)
    if count == 0:
        return flat.clone().view_as(fused)
    threshold = flat.kthvalue(count, dim=-1, keepdim=True).values
    below = flat < threshold
    ties = flat == threshold
    wanted_ties = count - below.sum(dim=-1, keepdim=True)
    drop = below | (ties & (ties.cumsum(dim=-1) <= wanted_ties))
    drop[:, 0] = False
    return flat.masked_fill(drop, 0.0).view_as(fused)


def fused_heads(attention: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """(B, H, N, N) -> (B, N, N) float32: mean, max or min over the heads (a new tensor)."""
    if head_fusion == "mean":
        return attention.float().mean(dim=1)
    if head_fusion == "max":
        return attention.float().amax(dim=1)
    if head_fusion == "min":
        return attention.float().amin(dim=1)
    raise ValueError(f"head fusion {head_fusion!r} is not one of {', '.join(HEAD_FUSIONS)}")


def upsample(grid_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly upsample a patch-grid map to pixel resolution.

    Args:
        grid_map: (h, w) map.
        size: (height, width) in pixels.

    Returns:
        (height, width) float32 intensities (not renormalised: a pixel has its patch's value,
        interpolated between patch centres).
    """
    batch = grid_map.float()[None, None]
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False)[0, 0]


def check_finite(values: torch.Tensor, what: str) -> None:
    """Raise AttentionValueError when ``values`` holds NaN or infinity."""
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise AttentionValueError(
            f"{what} contains {bad} NaN or infinite value(s); the model or its weights are "
            f"broken (check the checkpoint), so no metric on it would mean anything"
        )
