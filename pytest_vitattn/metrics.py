"""Metrics of one attention map against one mask, both on the patch grid.

Pure functions, no pytest, no timm. ``attention`` is an (h, w) map that sums to 1 over
patch tokens (see ``maps.patch_maps``); ``mask`` is an (h, w) map of area fractions in
[0, 1]: the share of each patch covered by the object (see ``preprocess``).
"""

from __future__ import annotations

import math

import torch

from pytest_vitattn.errors import AttentionValueError, MaskError


def mass_in_mask(attention: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of the attention that falls on the mask.

    Relevance Mass Accuracy (Arras et al. 2022, as implemented in Quantus): the relevance
    inside the ground-truth mask divided by the total relevance. With area-fraction masks,
    a patch half covered by the object contributes half its attention.

    Returns:
        float in [0, 1]; a map uniform over patches scores the mask's area (chance level).
    """
    attention, mask = _validated(attention, mask)
    return float((attention * mask).sum() / attention.sum())


def pointing_game(attention: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether the most attended patch touches the mask (Zhang et al. 2016).

    A hit when the patch with the highest attention has any overlap with the mask. When
    several patches tie for the maximum, it is a hit if any of them touches the mask.
    """
    attention, mask = _validated(attention, mask)
    peak = attention == attention.max()
    return bool((mask[peak] > 0).any())


def top_k_iou(attention: torch.Tensor, mask: torch.Tensor, k: float | None = None) -> float:
    """Intersection over union of the most attended patches and the mask's patches.

    The mask's patches are those at least half covered by the object. The top patches are
    the ``round(k * patches)`` most attended (at least one); with ``k=None`` they are as many
    as the mask's patches, so a map that ranks exactly the object's patches first scores 1.

    Args:
        k: fraction of patches in (0, 1], or None.

    Returns:
        float in [0, 1].
    """
    attention, mask = _validated(attention, mask)
    target = (mask >= 0.5).flatten()
    if not bool(target.any()):
        raise MaskError(
            "no patch is at least half covered by the mask, so top-k IoU has no target "
            f"patches (largest coverage {float(mask.max()):.2f}); use mass_in or a larger mask"
        )
    count = int(target.sum()) if k is None else max(1, round(_fraction(k) * target.numel()))
    top = torch.zeros_like(target)
    top[torch.argsort(attention.flatten(), descending=True, stable=True)[:count]] = True
    return float((top & target).sum() / (top | target).sum())


def normalized_entropy(attention: torch.Tensor) -> float:
    """Shannon entropy of the map divided by its maximum, log(patches).

    Returns:
        float in [0, 1]: 1 for a uniform map, 0 for all attention on one patch.
    """
    attention = _validated_map(attention)
    probabilities = (attention / attention.sum()).flatten().double()
    positive = probabilities[probabilities > 0]
    entropy = float(-(positive * positive.log()).sum())
    return max(0.0, min(1.0, entropy / math.log(probabilities.numel())))


def concentration(attention: torch.Tensor) -> float:
    """How concentrated the map is: ``1 - normalized_entropy``.

    Returns:
        float in [0, 1]: 0 for a uniform map, 1 for all attention on one patch.
    """
    return 1.0 - normalized_entropy(attention)


def chance_level(mask: torch.Tensor) -> float:
    """The mask's share of the image: the mass-in-mask of a uniform map."""
    return float(_validated_mask(mask).mean())


def _fraction(k: float) -> float:
    if not 0 < k <= 1:
        raise ValueError(f"k={k!r} must be a fraction of patches in (0, 1]")
    return float(k)


def _validated_map(attention: torch.Tensor) -> torch.Tensor:
    attention = attention.double()
    if attention.ndim != 2:
        raise AttentionValueError(f"expected one (h, w) map, got shape {tuple(attention.shape)}")
    if not bool(torch.isfinite(attention).all()):
        raise AttentionValueError("the attention map contains NaN or infinite values")
    if bool((attention < 0).any()) or float(attention.sum()) <= 0:
        raise AttentionValueError("an attention map must be non-negative with a positive sum")
    return attention


def _validated_mask(mask: torch.Tensor) -> torch.Tensor:
    mask = mask.double()
    if not bool(torch.isfinite(mask).all()) or bool((mask < 0).any() | (mask > 1).any()):
        raise MaskError("mask values must be area fractions in [0, 1]")
    if not bool((mask > 0).any()):
        raise MaskError(
            "the mask is empty (no pixel set after preprocessing); attention on an empty "
            "region is undefined: check the mask file, or that it is not inverted"
        )
    return mask


def _validated(attention: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    attention, mask = _validated_map(attention), _validated_mask(mask)
    if attention.shape != mask.shape:
        raise MaskError(
            f"mask grid {tuple(mask.shape)} does not match attention grid {tuple(attention.shape)}"
        )
    return attention, mask
