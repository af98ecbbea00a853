"""What a test gets back from the ``vitattn`` fixture: CLS attention it can slice and check.

``CLSAttention`` holds one image's maps for every layer and head. Slicing gives a
``LayerAttention`` (one layer, all heads) and then an ``AttentionMap`` (one map), whose
methods return plain numbers for ``assert``; ``expect`` returns checks with rich failure
messages (see ``expect``). Every number computed is added to the image's record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from pytest_vitattn import metrics
from pytest_vitattn.errors import AttentionValueError, BaselineError, MaskError, user_facing
from pytest_vitattn.images import label_of, load_mask
from pytest_vitattn.maps import HEAD_FUSIONS, fuse_heads, grids_text, upsample
from pytest_vitattn.masks import check_label
from pytest_vitattn.preprocess import Geometry, Preprocessing
from pytest_vitattn.records import AttentionRecord, CheckResult, MaskRecord


@dataclass(frozen=True)
class ResolvedMask:
    """A mask brought to the patch grid.

    Attributes:
        label: file name or position.
        grid: (grid_h, grid_w) float32 area fraction per patch.
    """

    label: str
    grid: torch.Tensor


class CLSAttention:
    """CLS attention of one image: every layer and head, on the patch grid.

    Models whose grid and head count change between layers (PiT, MViTv2 ``*_cls``: the
    grid is ``ragged``) have no single (L, H, h, w) stack: ``layer_maps`` holds each layer's
    (H_l, h_l, w_l) maps, ``grids`` and ``heads_per_layer`` say each layer's grid and
    heads, and ``maps``, ``grid`` and ``num_heads`` raise an error that names them.

    Attributes:
        maps: (L, H, grid_h, grid_w) float32, each map sums to 1 over patch tokens (the
            prefix tokens' columns are dropped and the row renormalised).
        layer_maps: the same maps per layer, a list of L (H_l, h_l, w_l) tensors.
        rollout_maps: (L, grid_h, grid_w) float32 attention rollout after each layer, or None.
        prefix_share: (L, H) float32, share of CLS attention that went to prefix tokens (a
            list of L (H_l,) tensors for a ragged model).
        record: the record every check on this image is added to.
        layer_blocks: the index in ``model.blocks`` of each layer where the plugin left
            blocks out, e.g. (5,) for a model whose blocks 0-4 have no CLS attention over the
            patches (``Anatomy.blocks_read``); None where layer k is block k, or unknown.
        strict_masks: whether checks fail (instead of warning) when a mask covers more than
            half of the image or a passing value is below chance.
    """

    def __init__(
        self,
        maps: torch.Tensor | list[torch.Tensor],
        rollout_maps: torch.Tensor | None,
        prefix_share: torch.Tensor | list[torch.Tensor],
        *,
        geometry: Geometry,
        preprocessing: Preprocessing,
        record: AttentionRecord,
        report_hint: Callable[[AttentionRecord], str] | None = None,
        baselines: Any = None,
        strict_masks: bool = False,
        rollout_source: Callable[[], torch.Tensor | None] | None = None,
        randomiser: Any = None,
        layer_blocks: tuple[int, ...] | None = None,
    ) -> None:
        self.ragged = isinstance(maps, (list, tuple))
        self._maps = maps
        self.layer_maps: list[torch.Tensor] = list(maps)
        self.rollout_maps = rollout_maps
        # Computes rollout_maps on first use when the probe did not (see Probe.eager_rollout).
        self._rollout_source = rollout_source
        self.prefix_share = prefix_share
        self.geometry = geometry
        self.preprocessing = preprocessing
        self.record = record
        self._report_hint = report_hint
        self._baselines = baselines
        self.strict_masks = strict_masks
        self._masks: dict[Any, ResolvedMask] = {}
        # (source, label ids) -> (name, input-resolution mask), read once per source.
        self._inputs: dict[Any, tuple[str, torch.Tensor]] = {}
        # A sanity.Randomiser (the cascading randomisation check), or None; the maps it
        # made, first_block -> (L, H, h, w), are kept below.
        self.randomiser = randomiser
        self.randomised_maps: dict[int, torch.Tensor] = {}
        self.layer_blocks = layer_blocks

    @property
    def maps(self) -> torch.Tensor:
        """(L, H, grid_h, grid_w) maps; a ragged model has none (see ``layer_maps``)."""
        if self.ragged:
            raise self._ragged_error("its maps are not one (L, H, h, w) tensor")
        return self._maps  # type: ignore[return-value]

    @property
    def num_layers(self) -> int:
        return len(self.layer_maps)

    @property
    def num_heads(self) -> int:
        if self.ragged:
            raise self._ragged_error("it has no single head count")
        return int(self._maps.shape[1])  # type: ignore[union-attr]

    @property
    def grid(self) -> tuple[int, int]:
        if self.ragged:
            raise self._ragged_error("it has no single patch grid")
        return int(self._maps.shape[-2]), int(self._maps.shape[-1])  # type: ignore[union-attr]

    @property
    def grids(self) -> tuple[tuple[int, int], ...]:
        """Each layer's (grid_h, grid_w); all equal unless the model is ragged."""
        return tuple((int(m.shape[-2]), int(m.shape[-1])) for m in self.layer_maps)

    @property
    def heads_per_layer(self) -> tuple[int, ...]:
        """Each layer's head count; all equal unless the model is ragged."""
        return tuple(int(m.shape[0]) for m in self.layer_maps)

    def _ragged_error(self, what: str) -> AttentionValueError:
        heads = "/".join(str(h) for h in dict.fromkeys(self.heads_per_layer))
        return AttentionValueError(
            f"{self.model_name} attends over a different patch grid in different layers "
            f"({grids_text(self.grids)}) with {heads} heads, so {what}: take one layer "
            f"(attn.layer(i), attn.expect(layer=i)) or attn.layer_maps[i] "
            f"((heads, h, w) per layer), and attn.grids / attn.heads_per_layer"
        )

    @property
    def image_label(self) -> str:
        return self.record.image_label

    @property
    def model_name(self) -> str:
        return str(self.record.model["name"])

    def __repr__(self) -> str:
        if self.ragged:
            return (
                f"CLSAttention({self.image_label!r}, model={self.model_name!r}, "
                f"layers={self.num_layers}, heads={self.heads_per_layer}, "
                f"grids={grids_text(self.grids)!r})"
            )
        return (
            f"CLSAttention({self.image_label!r}, model={self.model_name!r}, "
            f"layers={self.num_layers}, heads={self.num_heads}, grid={self.grid})"
        )

    def _left_out_note(self) -> str:
        """Why there are fewer layers than blocks, for errors; "" when layer k is block k."""
        blocks = self.layer_blocks
        if blocks is None:
            return ""
        read = ", ".join(map(str, blocks))
        return (
            f": the plugin reads block(s) {read} of {self.model_name} only, the model's "
            "other blocks having no CLS attention over the patches"
        )

    @user_facing
    def layer(self, index: int) -> LayerAttention:
        """One layer's maps, all heads; negative indices count from the last layer."""
        resolved = _resolve_index(index, self.num_layers, "layer", self._left_out_note())
        label = f"layer {resolved} of 0..{self.num_layers - 1}"
        if self.layer_blocks is not None:  # blocks left out
            label += f" (block {self.layer_blocks[resolved]})"
        return LayerAttention(self, self.layer_maps[resolved], label, index=resolved)

    @user_facing
    def rollout(self, layer: int = -1) -> AttentionMap:
        """Attention rollout up to ``layer`` (Abnar & Zuidema 2020), on the patch grid."""
        if self.rollout_maps is None and self._rollout_source is not None:
            self.rollout_maps = self._rollout_source()
            self._rollout_source = None
        left_out = self._left_out_note()
        if self.rollout_maps is None and left_out:
            raise AttentionValueError(
                f"attention rollout is not defined here, as it chains every block's "
                f"attention{left_out}; check a layer instead, e.g. attn.expect(layer=-1)"
            )
        if self.rollout_maps is None:
            raise AttentionValueError(
                "attention rollout was not computed for this probe: it was switched off "
                "(probe with rollout='mean', or --vitattn-rollout=mean), or the model has no "
                "square self-attention to chain in every layer (CaiT, XCiT, attention pooling, "
                "PiT and MViTv2, whose token count changes between layers, and models with "
                "blocks the plugin leaves out because their CLS token reads no patch)"
            )
        resolved = _resolve_index(layer, self.num_layers, "layer", self._left_out_note())
        return AttentionMap(self, self.rollout_maps[resolved], f"rollout to layer {resolved}")

    @user_facing
    def select(
        self, layer: int = -1, head: int | None = None, fusion: str = "mean", rollout: bool = False
    ) -> AttentionMap:
        """One map: a layer's head (``head=``), its fused heads (``fusion=``), or rollout."""
        if rollout:
            return self.rollout(layer)
        selected = self.layer(layer)
        return selected.head(head) if head is not None else selected.fuse(fusion)

    @user_facing
    def expect(
        self, layer: int = -1, head: int | None = None, fusion: str = "mean", rollout: bool = False
    ) -> Any:
        """Checks on one map, with failure messages that show the numbers.

        Example: ``attn.expect(layer=-1).mass_in(mask, at_least=0.6)``.
        """
        return self.select(layer, head, fusion, rollout).expect()

    @user_facing
    def matches_baseline(self, tolerance: Any = None, layers: Sequence[int] | None = None) -> Any:
        """Every head of every layer matches this test's stored baseline within ``tolerance``.

        The first run writes the baseline (see ``pytest_vitattn.regression`` for the rules on
        missing baselines, ``--vitattn-update-baselines`` and CI).

        Args:
            tolerance: the largest Jensen-Shannon divergence per map, or bounds as a dict,
                string or ``Tolerance``; default: marker > CLI > ini > 0.02.
            layers: compare only these layers (negative counts from the end).

        Returns:
            The ``drift.Drift`` measures, arrays of shape (layers, heads); for a model whose
            heads change between layers, of shape (maps,): each layer's heads in order.

        Raises:
            AssertionError: maps drifted past the tolerance (worst listed first), or the
                baseline was missing (under the plugin: the test goes on, and fails at its
                end listing every missing baseline, all written in that run).
            BaselineError: the baseline is corrupt, was made under other conditions, or from
                other pixels (see ``pytest_vitattn.baseline`` for how files are named).
        """
        __tracebackhide__ = True
        hint = self.report_hint()
        return self.baselines().check_record(self.record, tolerance, layers, hint)

    def baselines(self) -> Any:
        """The test's ``regression.TestBaselines``; only probes made by the fixture have one."""
        if self._baselines is None:
            raise BaselineError(
                "attention baselines belong to one pytest test: probe with the vitattn "
                "fixture in the test that checks the baseline (a vitattn_probe result is "
                "shared between tests, so it has none), or outside pytest give the Probe a "
                "ProbeContext(baselines=regression.TestBaselines(...))"
            )
        return self._baselines

    @user_facing
    def mask(
        self, source: Any, label: Any = None, grid: tuple[int, int] | None = None
    ) -> ResolvedMask:
        """Bring a mask given in original image space to the patch grid (cached per source).

        Args:
            source: a path, PIL image, or (height, width) array/tensor; see
                ``pytest_vitattn.masks`` for how values are read.
            label: id(s) of the object when ``source`` is a label map or palette PNG.
            grid: the (grid_h, grid_w) to reduce it to (by area fraction per patch);
                default the model's grid. Models whose grid changes between layers reduce
                the mask to each checked layer's own grid.
        """
        ids = check_label(label)
        grid = self.grid if grid is None else (int(grid[0]), int(grid[1]))
        key = (_mask_key(source), ids)
        if not self.ragged:
            if key in self._masks:
                return self._masks[key]
        elif (key, grid) in self._masks:
            return self._masks[(key, grid)]
        if key in self._inputs:  # a ragged model's mask, already read for another grid
            name, input_mask = self._inputs[key]
        else:
            name = label_of(source, len(self._inputs), "mask")
            if ids is not None:
                name += f" (label {ids[0] if len(ids) == 1 else list(ids)})"
            try:
                array = load_mask(source, ids)
                input_mask = self.preprocessing.mask_to_input(array, self.geometry)
            except MaskError as error:
                raise MaskError(f"{error} (mask for image {self.image_label})") from None
            if not input_mask.any():
                raise MaskError(self._empty_mask_message(name, array))
            self._inputs[key] = (name, input_mask)
        reduced = Preprocessing.mask_to_grid(input_mask, grid)
        resolved = ResolvedMask(name, reduced)
        self._masks[key if not self.ragged else (key, grid)] = resolved
        self.record.add_mask(MaskRecord(resolved.label, reduced.numpy(), input_mask >= 0.5))
        return resolved

    def _empty_mask_message(self, name: str, array: np.ndarray) -> str:
        if not array.any():
            return (
                f"the mask {name} for image {self.image_label} is empty (no pixel set): "
                "attention on an empty region is undefined; check the mask file or that it "
                "is not inverted"
            )
        # The mask has pixels, but the centre crop cut all of them away.
        top, left, height, width = self.geometry.crop
        (orig_h, orig_w), (res_h, res_w) = self.geometry.original, self.geometry.resized
        rows = (round(top * orig_h / res_h), round((top + height) * orig_h / res_h))
        cols = (round(left * orig_w / res_w), round((left + width) * orig_w / res_w))
        return (
            f"the mask {name} for image {self.image_label} covers "
            f"{float(array.mean()):.1%} of the image, but none of it is inside what the model "
            f"sees: preprocess='{self.preprocessing.mode}' keeps rows {rows[0]}..{rows[1]} and "
            f"columns {cols[0]}..{cols[1]} of the {orig_w}x{orig_h} image, and the object "
            "lies outside. The mask file is fine; use preprocess='resize' (the whole image), "
            "or an image with the object nearer the centre"
        )

    def report_hint(self) -> str:
        """Where this image's heatmaps are shown, for failure messages."""
        if self._report_hint is None:
            return "run pytest with --vitattn-report to see the heatmaps"
        return self._report_hint(self.record)


class LayerAttention:
    """One layer's CLS attention maps, (H, grid_h, grid_w)."""

    def __init__(
        self, parent: CLSAttention, maps: torch.Tensor, label: str, index: int | None = None
    ) -> None:
        self.parent = parent
        self.maps = maps
        self.label = label
        self.index = index

    @property
    def num_heads(self) -> int:
        return int(self.maps.shape[0])

    @user_facing
    def head(self, index: int) -> AttentionMap:
        resolved = _resolve_index(index, self.num_heads, "head")
        label = f"{self.label}, head {resolved}"
        taker = _taker(self.index, resolved)
        return AttentionMap(self.parent, self.maps[resolved], label, taker, layer=self.index)

    @user_facing
    def fuse(self, how: str = "mean") -> AttentionMap:
        """Heads fused by "mean", "max" or "min" (max and min renormalised to sum to 1)."""
        if how not in HEAD_FUSIONS:
            raise ValueError(f"fusion {how!r} is not one of {', '.join(HEAD_FUSIONS)}")
        fused = fuse_heads(self.maps, how, dim=0)
        label = f"{self.label}, {how} of {self.num_heads} heads"
        taker = _taker(self.index, fusion=how)
        return AttentionMap(self.parent, fused, label, taker, layer=self.index)

    def mean_heads(self) -> AttentionMap:
        return self.fuse("mean")

    def max_heads(self) -> AttentionMap:
        return self.fuse("max")

    def min_heads(self) -> AttentionMap:
        return self.fuse("min")


class AttentionMap:
    """One CLS attention map on the patch grid.

    Attributes:
        grid: (grid_h, grid_w) float32, sums to 1.
        label: which layer/head/fusion it is, e.g. "layer 11 of 0..11, mean of 3 heads".
        take: takes the same map from other (L, H, h, w) maps (or a list of per-layer
            (H_l, h_l, w_l) maps), e.g. a baseline's; None for rollout, which CLS maps alone
            cannot reproduce.
        layer: the layer index (0-based) of a layer's head or fused heads; None for rollout.
    """

    def __init__(
        self,
        parent: CLSAttention,
        grid: torch.Tensor,
        label: str,
        take: Callable[[np.ndarray], np.ndarray] | None = None,
        layer: int | None = None,
    ) -> None:
        self.parent = parent
        self.grid = grid
        self.label = label
        self.take = take
        self.layer = layer

    def __repr__(self) -> str:
        return f"AttentionMap({self.label!r}, grid={tuple(self.grid.shape)})"

    def resolve_mask(self, mask: Any, label: Any = None) -> ResolvedMask:
        """The mask on this map's own grid (area fraction per patch), cached per grid."""
        return self.parent.mask(
            mask, label, grid=(int(self.grid.shape[-2]), int(self.grid.shape[-1]))
        )

    @user_facing
    def upsampled(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(height, width) float32 bilinear upsampling; default: the model input size."""
        return upsample(self.grid, size or self.parent.preprocessing.input_size)

    @user_facing
    def mass_in(self, mask: Any, label: Any = None) -> float:
        """Share of this map's attention on the mask (Relevance Mass Accuracy).

        ``label=`` picks the object's id(s) in a label map or palette PNG.
        """
        resolved = self.resolve_mask(mask, label)
        value = metrics.mass_in_mask(self.grid, resolved.grid)
        self._measured("mass_in_mask", value, resolved)
        return value

    @user_facing
    def pointing_game(self, mask: Any, label: Any = None) -> bool:
        """Whether the most attended patch touches the mask (``label=``: ids in a label map)."""
        resolved = self.resolve_mask(mask, label)
        hit = metrics.pointing_game(self.grid, resolved.grid)
        self._measured("pointing_game", float(hit), resolved)
        return hit

    @user_facing
    def top_k_iou(self, mask: Any, k: int | float | None = None, label: Any = None) -> float:
        """IoU of the ``k`` most attended patches with the mask's (half-covered) patches.

        Args:
            mask: the object's mask; ``label=`` picks its id(s) in a label map.
            k: None (as many patches as the mask's), an int >= 1 (a count of patches), or a
                float in (0, 1) (a fraction of the patches); ``k=1.0`` and bools are refused.

        Raises:
            metrics.UndefinedMetricError: no patch is at least half covered by the mask.
        """
        resolved = self.resolve_mask(mask, label)
        value = metrics.top_k_iou(self.grid, resolved.grid, k)
        chance = metrics.top_k_chance(resolved.grid, k)
        self._measured("top_k_iou", value, resolved, chance)
        return value

    @user_facing
    def concentration(self) -> float:
        """1 - normalised entropy: 0 for a uniform map, 1 for a single patch."""
        value = metrics.concentration(self.grid)
        self._measured("concentration", value, None)
        return value

    @user_facing
    def normalized_entropy(self) -> float:
        """Entropy over log(patches): 1 for a uniform map, 0 for a single patch."""
        return metrics.normalized_entropy(self.grid)

    @user_facing
    def expect(self) -> Any:
        """Checks on this map with rich failure messages (see ``pytest_vitattn.expect``)."""
        from pytest_vitattn.expect import Expectation

        return Expectation(self)

    def _measured(
        self, name: str, value: float, mask: ResolvedMask | None, chance: float | None = None
    ) -> None:
        if chance is None and mask is not None:
            chance = metrics.chance_level(mask.grid)
        self.parent.record.checks.append(
            CheckResult(
                name=name,
                value=value,
                passed=None,
                op="measured",
                threshold=None,
                chance=chance,
                selection=self.label,
                mask=mask.label if mask is not None else None,
            )
        )


def _mask_key(source: Any) -> Any:
    """A cache key for a mask source: its path, or a digest of its values.

    Not ``id()``: a temporary array's id is reused by the next one, which would then get
    the first one's cached mask.
    """
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        return ("path", str(source))
    if isinstance(source, Image.Image):
        return ("pil", source.mode, source.size, hashlib.sha1(source.tobytes()).hexdigest())
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        array = np.ascontiguousarray(source)
        digest = hashlib.sha1(array.tobytes()).hexdigest()
        return ("array", array.dtype.str, array.shape, digest)
    return ("object", id(source))  # refused by load_mask; never cached


def _taker(
    layer: int | None, head: int | None = None, fusion: str | None = None
) -> Callable[[np.ndarray], np.ndarray] | None:
    """Takes (L, H, h, w) maps (or a per-layer list) to the (h, w) map of ``layer``'s
    ``head`` or fused heads."""
    if layer is None:
        return None
    if head is not None:
        return lambda maps: maps[layer][head]
    return lambda maps: fuse_heads(torch.from_numpy(maps[layer]), fusion, dim=0).numpy()


def _resolve_index(index: int, size: int, what: str, note: str = "") -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"{what} index must be an int, got {type(index).__name__}")
    if not -size <= index < size:
        raise AttentionValueError(
            f"{what} {index} is out of range: the model has {size} {what}"
            f"{'' if size == 1 else 's'} (0..{size - 1}, or -{size}..-1 from the end){note}"
        )
    return int(index) % size
