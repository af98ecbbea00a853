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
    if bool((total <= 0).any()):
        raise AttentionValueError("a CLS row puts no attention on any patch; cannot normalise")
    return (patches / total).reshape(*rows.shape[:-1], height, width)


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
    running: torch.Tensor | None, attention: torch.Tensor, head_fusion: str = "mean"
) -> torch.Tensor:
    """Fold one layer into attention rollout (Abnar & Zuidema, 2020).

    The layer's heads are fused first, the residual connection is modelled by adding the
    identity, rows are renormalised, and the result is multiplied onto the running product:
    ``R_l = normalise(0.5 * A_l + 0.5 * I) @ R_{l-1}`` with ``R_0 = I``.

    Args:
        running: (B, N, N) rollout after the previous layers, or None before the first.
        attention: (B, H, N, N) softmax attention of this layer.
        head_fusion: "mean", "max" or "min".

    Returns:
        (B, N, N) float32 rollout after this layer.
    """
    if head_fusion == "mean":
        fused = attention.float().mean(dim=1)
    elif head_fusion == "max":
        fused = attention.float().amax(dim=1)
    elif head_fusion == "min":
        fused = attention.float().amin(dim=1)
    else:
        raise ValueError(f"head fusion {head_fusion!r} is not one of {', '.join(HEAD_FUSIONS)}")
    eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    layer = 0.5 * fused + 0.5 * eye
    layer = layer / layer.sum(dim=-1, keepdim=True)
    return layer if running is None else layer @ running


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
