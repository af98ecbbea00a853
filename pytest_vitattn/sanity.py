"""Cascading model-parameter randomisation: does a map depend on what the model learnt?

Adebayo et al. 2018 ("Sanity Checks for Saliency Maps") re-initialise a trained network from
the top layer down and watch the explanation: a method whose maps barely change is showing
the input, not the model. CLS attention needs the check too: the map of a randomly
initialised ViT is close to uniform, and the top patch of a near-uniform map is set by the
input (token norms, brightness), so a pointing game can land on an object above chance with
weights that learnt nothing.

``randomised_copy`` re-initialises every block from ``first_block`` to the top (and the
final norm and head above them) on a deep copy, the way timm initialises a ViT: Linear and
convolution weights from a truncated normal with std 0.02, biases zero, norms to identity.
Other parameters of those blocks (layer-scale factors, relative position tables) keep their
trained values. The copies are kept per model object, so a pytest session builds each once.

``moved_share`` is the decision number: the total variation distance between the trained
and the randomised map (the share of attention that moved, 0 to 1). ``rank_correlation``
(Spearman) is reported beside it. Neither function imports pytest or timm.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DEFAULT_BLOCKS = 1
DEFAULT_MIN_MOVED = 0.25
RANDOMISATION_SEED = 0
_INIT_STD = 0.02

# model -> {(first_block, seed): randomised copy}; entries vanish with the model.
_COPIES: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[int, int], torch.nn.Module]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class Randomisation:
    """Maps of one image under a model whose top blocks were re-initialised.

    Attributes:
        first_block: the lowest re-initialised block; every block above it was re-initialised.
        num_blocks: how many blocks the model has.
        maps: (L, H, grid_h, grid_w) float32 CLS attention of the randomised copy.
    """

    first_block: int
    num_blocks: int
    maps: torch.Tensor

    @property
    def label(self) -> str:
        last = self.num_blocks - 1
        first = self.first_block
        blocks = f"block {last}" if first == last else f"blocks {first}..{last}"
        return f"{blocks} of 0..{last} re-initialised (seed {RANDOMISATION_SEED})"

    def to_record(self) -> dict[str, Any]:
        """Plain data for ``AttentionRecord.randomised``."""
        return {
            "maps": self.maps.numpy(),
            "first_block": self.first_block,
            "num_blocks": self.num_blocks,
            "label": self.label,
        }


@dataclass(frozen=True)
class Randomiser:
    """How a probe re-extracts one image with its model's top blocks re-initialised.

    Attributes:
        layer_blocks: the index in ``model.blocks`` of each layer read, e.g. (0, ..., 5),
            or (5,) for a model whose blocks 0-4 are not read.
        num_blocks: ``len(model.blocks)``.
        maps_from: first_block -> (L, H, grid_h, grid_w) maps of the image with blocks
            ``first_block``.. re-initialised.
        unsupported: why this model cannot be checked (then the fields above are unused).
    """

    layer_blocks: tuple[int, ...]
    num_blocks: int
    maps_from: Callable[[int], torch.Tensor]
    unsupported: str = ""

    @classmethod
    def refusing(cls, why: str) -> Randomiser:
        """A randomiser for a model the check does not support, ``why`` being the reason."""
        return cls((), 0, _no_maps, unsupported=why)


def _no_maps(first_block: int) -> torch.Tensor:
    raise AssertionError("a refusing Randomiser makes no maps")


def first_randomised_block(layer: int, blocks: int, layer_blocks: tuple[int, ...]) -> int:
    """The lowest block to re-initialise so that ``blocks`` blocks up to ``layer``'s change.

    Args:
        layer: the selected layer, 0..len(layer_blocks)-1.
        blocks: how many blocks at and below the layer's block to re-initialise (>= 1).
        layer_blocks: the index in ``model.blocks`` of each layer.

    Raises:
        ValueError: ``blocks`` is not a positive int or reaches below block 0.
    """
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks must be a positive int, got {blocks!r}")
    top = layer_blocks[layer]
    first = top - blocks + 1
    if first < 0:
        where = f"layer {layer}" if top == layer else f"layer {layer} (block {top})"
        raise ValueError(
            f"blocks={blocks} reaches below block 0: {where} has only {top + 1} "
            f"block(s) at or below it"
        )
    return first


def randomised_copy(
    model: torch.nn.Module, first_block: int, seed: int = RANDOMISATION_SEED
) -> torch.nn.Module:
    """A deep copy of ``model`` with ``blocks[first_block:]``, the final norms and the head
    re-initialised (see the module docstring); cached per (model, first_block, seed).

    Args:
        model: a timm ViT with a ``blocks`` sequence; it is not changed.
        first_block: 0 <= first_block < len(model.blocks).
        seed: seed of the re-initialisation.

    Returns:
        The randomised copy, in eval mode, on the model's device.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no 'blocks' to re-initialise")
    if not 0 <= first_block < len(blocks):
        raise ValueError(f"first_block {first_block} is not in 0..{len(blocks) - 1}")
    cached = _COPIES.setdefault(model, {})
    key = (first_block, seed)
    if key not in cached:
        randomised = copy.deepcopy(model).eval()
        generator = torch.Generator().manual_seed(seed)
        targets = list(randomised.blocks[first_block:])
        for name in ("norm", "fc_norm", "head_drop", "head"):
            module = getattr(randomised, name, None)
            if isinstance(module, torch.nn.Module):
                targets.append(module)
        with torch.no_grad():
            for target in targets:
                for module in target.modules():
                    _reinitialise(module, generator)
        cached[key] = randomised
    return cached[key]


def _reinitialise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """timm's ViT initialisation for one module's own parameters (not its children's)."""
    if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d)):
        weight = torch.empty_like(module.weight, device="cpu")
        bound = 2 * _INIT_STD
        torch.nn.init.trunc_normal_(weight, std=_INIT_STD, a=-bound, b=bound, generator=generator)
        module.weight.copy_(weight)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)) or type(module).__name__ in (
        "RmsNorm",
        "LayerNorm2d",
    ):
        if getattr(module, "weight", None) is not None:
            module.weight.fill_(1.0)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()


def moved_share(trained: torch.Tensor, randomised: torch.Tensor) -> float:
    """Total variation distance of two maps that each sum to 1: the share of attention
    that sits elsewhere after randomisation, 0 (same map) to 1 (disjoint).

    Args:
        trained, randomised: (grid_h, grid_w) maps.
    """
    return float(0.5 * (trained.double() - randomised.double()).abs().sum())


def rank_correlation(trained: torch.Tensor, randomised: torch.Tensor) -> float:
    """Spearman rank correlation of two maps' patches (ties get their mean rank).

    Args:
        trained, randomised: (grid_h, grid_w) maps.

    Returns:
        A number in [-1, 1]; 0.0 when either map is constant (no ranking to compare).
    """
    a = _ranks(trained.flatten().double().numpy())
    b = _ranks(randomised.flatten().double().numpy())
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return 0.0 if denominator == 0.0 else float((a * b).sum() / denominator)


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    # Ties: every member of a tied group gets the group's mean rank.
    unique, inverse = np.unique(values, return_inverse=True)
    if len(unique) < len(values):
        sums = np.bincount(inverse, weights=ranks)
        counts = np.bincount(inverse)
        ranks = (sums / counts)[inverse]
    return ranks


@dataclass(frozen=True)
class Moved:
    """How one map changed under cascading randomisation.

    Attributes:
        moved: ``moved_share`` of the trained and the randomised map.
        rank_correlation: Spearman rank correlation of the two maps.
        randomisation: the randomised maps of every layer and head.
    """

    moved: float
    rank_correlation: float
    randomisation: Randomisation


def randomise(attention_map: Any, blocks: int = DEFAULT_BLOCKS) -> Moved:
    """Re-extracts ``attention_map``'s image with ``blocks`` blocks up to its layer (and every
    block above) re-initialised, records the randomised maps and measures the change.

    Args:
        attention_map: an ``attention.AttentionMap`` of one layer's head or fused heads.
        blocks: how many blocks at and below the map's layer to re-initialise.

    Raises:
        AttentionValueError: the map is a rollout, or its probe cannot re-extract.
    """
    from pytest_vitattn.errors import AttentionValueError

    parent = attention_map.parent
    if attention_map.layer is None or attention_map.take is None:
        raise AttentionValueError(
            f"{attention_map.label} cannot be checked by cascading randomisation: only one "
            "layer's head or fused heads can be re-extracted map for map; check a layer "
            "instead, e.g. attn.expect(layer=-1).depends_on_weights()"
        )
    randomiser = parent.randomiser
    if randomiser is None:
        raise AttentionValueError(
            "the cascading randomisation check re-runs the model: use the vitattn fixture or a "
            "Probe, whose CLSAttention knows its model"
        )
    if randomiser.unsupported:
        raise AttentionValueError(randomiser.unsupported)
    try:
        first = first_randomised_block(attention_map.layer, blocks, randomiser.layer_blocks)
    except ValueError as error:
        raise AttentionValueError(str(error)) from None
    maps = parent.randomised_maps.get(first)
    if maps is None:
        maps = randomiser.maps_from(first)
        parent.randomised_maps[first] = maps
    randomisation = Randomisation(first, randomiser.num_blocks, maps)
    parent.record.randomised = randomisation.to_record()
    randomised_grid = torch.from_numpy(np.asarray(attention_map.take(maps.numpy())))
    return Moved(
        moved=moved_share(attention_map.grid, randomised_grid),
        rank_correlation=rank_correlation(attention_map.grid, randomised_grid),
        randomisation=randomisation,
    )
