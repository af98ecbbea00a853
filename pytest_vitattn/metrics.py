"""Metrics of one attention map against one mask, both on the patch grid.

Pure functions, no pytest, no timm. ``attention`` is an (h, w) map that sums to 1 over
patch tokens (see ``maps.patch_maps``); ``mask`` is an (h, w) map of area fractions in
[0, 1]: the share of each patch covered by the object (see ``preprocess``).
"""

from __future__ import annotations

import math

import numpy as np
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


class UndefinedMetricError(MaskError):
    """The metric has no target for this mask (e.g. top-k IoU without a half-covered patch)."""


def top_k_iou(attention: torch.Tensor, mask: torch.Tensor, k: int | float | None = None) -> float:
    """Intersection over union of the most attended patches and the mask's patches.

    The mask's patches are those at least half covered by the object. The top patches are
    the ``top_k_count(k, ...)`` most attended; with ``k=None`` they are as many as the mask's
    patches, so a map that ranks exactly the object's patches first scores 1.

    Args:
        k: None; an int >= 1, a count of patches; or a float in (0, 1), a fraction of the
            patches (see ``top_k_count``).

    Returns:
        float in [0, 1].

    Raises:
        UndefinedMetricError: no patch is at least half covered by the mask.
    """
    attention, mask = _validated(attention, mask)
    target = (mask >= 0.5).flatten()
    count = top_k_count(k, int(target.sum()), target.numel())
    top = torch.zeros_like(target)
    top[torch.argsort(attention.flatten(), descending=True, stable=True)[:count]] = True
    return float((top & target).sum() / (top | target).sum())


def top_k_count(k: int | float | None, target: int, patches: int) -> int:
    """How many top patches ``k`` means.

    Args:
        k: None (as many as the target patches); an int >= 1 (that many patches, at most
            ``patches``); or a float strictly between 0 and 1 (that fraction of the patches,
            rounded, at least one). ``k=1.0`` is refused as ambiguous (every patch, or one
            patch?); bools are refused.
        target: the mask's patches (at least half covered).
        patches: all patches of the grid.

    Raises:
        UndefinedMetricError: ``target`` is 0.
        TypeError, ValueError: ``k`` is not one of the forms above.
    """
    if isinstance(k, (bool, np.bool_)) or not (
        k is None or isinstance(k, (int, float, np.integer, np.floating))
    ):
        raise TypeError(
            f"k must be an int count of patches or a float fraction in (0, 1), got {k!r}"
        )
    if target == 0:
        raise UndefinedMetricError(
            "no patch is at least half covered by the mask, so top-k IoU has no target "
            "patches; use mass_in, or a mask that covers at least half of one patch"
        )
    if k is None:
        return target
    if isinstance(k, (int, np.integer)):
        if not 1 <= k <= patches:
            raise ValueError(
                f"k={k} is a count of patches (an int): it must be 1..{patches}, the patches "
                "of the grid; for a fraction pass a float in (0, 1)"
            )
        return int(k)
    if float(k) == 1.0:
        raise ValueError(
            "k=1.0 is ambiguous: a float is a fraction (1.0 = every patch, which makes the IoU "
            "just the mask's share), an int a count; pass k=1 for the single most attended "
            "patch, or a fraction below 1"
        )
    if not 0 < k < 1:
        raise ValueError(
            f"k={k!r} is a float, so a fraction of the patches in (0, 1); for a count of "
            f"patches pass an int (k={int(k)})"
            if k > 1 and float(k).is_integer()
            else f"k={k!r} must be a fraction of the patches in (0, 1), or an int count"
        )
    return max(1, round(float(k) * patches))


def top_k_chance(mask: torch.Tensor, k: int | float | None = None) -> float:
    """The top-k IoU of a map that ranks patches at random (by the expected intersection).

    ``c`` random patches meet ``m`` target patches of ``n`` in ``c * m / n`` on average, so
    the chance IoU is ``I / (c + m - I)`` with that ``I``; for ``k=None`` (c = m) and mask
    share ``a = m / n`` it is ``a / (2 - a)``.
    """
    target = int((_validated_mask(mask) >= 0.5).sum())
    patches = mask.numel()
    count = top_k_count(k, target, patches)
    overlap = count * target / patches
    return float(overlap / (count + target - overlap))


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
