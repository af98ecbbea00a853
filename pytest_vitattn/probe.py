"""Run images through a loaded model and return their CLS attention, recorded.

``Probe`` is what the ``vitattn`` fixture hands to a test; it works without pytest too::

    probe = Probe(load_model(ModelSpec("vitattn_tiny_shapes")))
    attn = probe("bird.png")
    attn.layer(-1).mean_heads().mass_in("bird_mask.png")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pytest_vitattn.attention import CLSAttention
from pytest_vitattn.errors import ImageError, ModelLoadError, user_facing
from pytest_vitattn.extract import Extraction, extract_cls_attention
from pytest_vitattn.images import content_hash, file_name_of, label_of, load_image
from pytest_vitattn.maps import HEAD_FUSIONS, check_finite, patch_maps, prefix_share
from pytest_vitattn.models import LoadedModel
from pytest_vitattn.preprocess import Geometry, Preprocessing
from pytest_vitattn.records import AttentionRecord
from pytest_vitattn.threads import torch_threads

_UNSET: Any = object()


@dataclass
class ProbeContext:
    """Where records go and how they are named.

    Attributes:
        nodeid: pytest node id of the test (or any name outside pytest).
        location: (path, line) of the test function, or None.
        records: list every new record is appended to.
        report_hint: gives the place of a record in the HTML report, for failure messages.
        baselines: the test's ``regression.TestBaselines`` (store, policy, tolerance), or
            None outside pytest, where ``matches_baseline`` is unavailable.
        strict_masks: mask checks that pass with a mask over half the image or a value
            below chance fail instead of warning.
        using: makes a probe of another model with the same context (``Probe.using``), or
            None outside pytest.
    """

    nodeid: str = "<probe>"
    location: tuple[str, int] | None = None
    records: list[AttentionRecord] = field(default_factory=list)
    report_hint: Callable[[AttentionRecord], str] | None = None
    baselines: Any = None
    strict_masks: bool = False
    using: Callable[..., Probe] | None = None


class Probe:
    """Callable that extracts CLS attention for one image or a batch.

    Args:
        loaded: the model, from ``load_model`` or the session cache.
        preprocess: "resize" (the whole image to the input size, as the reference notebook
            does) or "center-crop" (timm's eval transform); masks follow the same geometry.
        extraction: "auto", "fast" or "fx" (see ``pytest_vitattn.extract``).
        rollout: head fusion for attention rollout ("mean", "max", "min") or None to skip
            it; rollout needs every layer's full attention matrix, so it costs about as
            much as the fx path.
        rollout_discard_ratio: share of each layer's fused attention entries zeroed before
            it is folded into rollout (vit-explain's ``discard_ratio``), in [0, 1).
        query_index: prefix token whose attention row is read; default 0, the CLS token.
        context: where records go.
        threads: torch threads during a probe (restored after), or None to leave torch's
            setting alone (see ``pytest_vitattn.threads``).
        eager_rollout: compute rollout in the probe's forward (True), or only when
            ``attn.rollout()`` first asks for it (False: one more forward then, none if
            nothing asks).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        preprocess: str = "resize",
        extraction: str = "auto",
        rollout: str | None = "mean",
        rollout_discard_ratio: float = 0.0,
        query_index: int | None = None,
        context: ProbeContext | None = None,
        threads: int | None = None,
        eager_rollout: bool = True,
    ) -> None:
        self.loaded = loaded
        self.preprocessing = Preprocessing.from_data_config(loaded.data_config, preprocess)
        self.extraction = extraction
        self.rollout = _checked_rollout(rollout)
        if not 0.0 <= rollout_discard_ratio < 1.0:
            raise ValueError(f"rollout_discard_ratio={rollout_discard_ratio!r} must be in [0, 1)")
        self.rollout_discard_ratio = float(rollout_discard_ratio)
        self.query_index = query_index
        self.context = context or ProbeContext()
        self.threads = threads
        self.eager_rollout = eager_rollout
        # Shared probes (the vitattn_probe factory) record into whichever test is running.
        self.refresh_context: Callable[[], ProbeContext] | None = None

    @user_facing
    def using(self, **settings: Any) -> Probe:
        """A probe of another model in the same test, e.g. before/after a retrain.

        Takes the marker's keywords (``model=``, ``weights=``, ``model_kwargs=``,
        ``model_factory=``, ...); the rest comes from the test's settings. Its records go to
        the same test and report.
        """
        if self.context.using is None:
            raise ModelLoadError(
                "Probe.using belongs to the vitattn fixture; outside pytest build another "
                "Probe(load_model(ModelSpec(...)))"
            )
        return self.context.using(**settings)

    @user_facing
    def __call__(
        self, images: Any, *, rollout: str | None = _UNSET
    ) -> CLSAttention | list[CLSAttention]:
        """Extract CLS attention for one image, or for a list of images in one forward.

        Args:
            images: a path, PIL image, uint8 (h, w, 3) array or (3, h, w) tensor in [0, 1];
                or a list/tuple of them.
            rollout: override the probe's rollout fusion for this call.

        Returns:
            One ``CLSAttention`` for one image, a list for a list.
        """
        single = not isinstance(images, (list, tuple))
        sources = [images] if single else list(images)
        if not sources:
            raise ImageError("an empty list of images was passed; pass at least one image")
        fusion = self.rollout if rollout is _UNSET else _checked_rollout(rollout)
        if self.refresh_context is not None:
            self.context = self.refresh_context()
        # Preprocessing (resize) runs torch ops too: the whole probe gets the thread count.
        with torch_threads(self.threads):
            results = self._probe(sources, fusion)
        return results[0] if single else results

    def _probe(self, sources: list[Any], fusion: str | None) -> list[CLSAttention]:
        displays, geometries, hashes = zip(
            *(self._display(source) for source in sources), strict=True
        )
        pixels = self.preprocessing.normalise(torch.stack(displays))
        device = next(self.loaded.model.parameters()).device
        pixels = pixels.to(device)
        eager = fusion if self.eager_rollout else None
        extraction = self._extract(pixels, eager)
        later = None
        if fusion is not None and not self.eager_rollout and self.loaded.anatomy.has_rollout:
            later = _LazyRollout(self, pixels, fusion, extraction.layout)
        return [
            self._result(
                extraction,
                index,
                source,
                displays[index],
                geometries[index],
                hashes[index],
                later,
            )
            for index, source in enumerate(sources)
        ]

    def _extract(self, pixels: torch.Tensor, fusion: str | None) -> Extraction:
        with torch_threads(self.threads):
            return extract_cls_attention(
                self.loaded.model,
                pixels,
                method=self.extraction,
                rollout_fusion=fusion,
                rollout_discard_ratio=self.rollout_discard_ratio,
                query_index=self.query_index,
                anatomy=self.loaded.anatomy,
            )

    def _display(self, source: Any) -> tuple[torch.Tensor, Geometry, str]:
        image = load_image(source)
        return (*self.preprocessing.display_image(image), content_hash(image))

    def _result(
        self,
        extraction: Extraction,
        index: int,
        source: Any,
        display: torch.Tensor,
        geometry: Geometry,
        image_sha256: str = "",
        later: _LazyRollout | None = None,
    ) -> CLSAttention:
        layout = extraction.layout
        if layout.ragged:
            return self._ragged_result(extraction, index, source, display, geometry, image_sha256)
        rows = extraction.rows[index]
        check_finite(rows, f"the CLS attention of {label_of(source, index)}")
        maps = patch_maps(rows, layout.num_prefix_tokens, layout.grid)
        rollout = None
        if extraction.rollout is not None:
            rollout = patch_maps(extraction.rollout[index], layout.num_prefix_tokens, layout.grid)
        shares = prefix_share(rows, layout.num_prefix_tokens)
        return self._record_and_result(
            extraction,
            index,
            source,
            display,
            geometry,
            image_sha256,
            maps,
            rollout,
            shares,
            rollout_source=None if later is None else later.source,
            randomiser=self._randomiser(display, maps),
        )

    def _ragged_result(
        self,
        extraction: Extraction,
        index: int,
        source: Any,
        display: torch.Tensor,
        geometry: Geometry,
        image_sha256: str,
    ) -> CLSAttention:
        """The result for a model with a grid (and head count) per layer: per-layer maps."""
        layout = extraction.layout
        label = label_of(source, index)
        maps, shares = [], []
        for layer, layer_rows in enumerate(extraction.rows):
            rows = layer_rows[index]
            check_finite(rows, f"the CLS attention of {label} (layer {layer})")
            maps.append(patch_maps(rows, layout.num_prefix_tokens, layout.grid_of(layer)))
            shares.append(prefix_share(rows, layout.num_prefix_tokens))
        return self._record_and_result(
            extraction,
            index,
            source,
            display,
            geometry,
            image_sha256,
            maps,
            None,
            shares,
            rollout_source=None,
            randomiser=self._ragged_randomiser(),
        )

    def _record_and_result(
        self,
        extraction: Extraction,
        index: int,
        source: Any,
        display: torch.Tensor,
        geometry: Geometry,
        image_sha256: str,
        maps: torch.Tensor | list[torch.Tensor],
        rollout: torch.Tensor | None,
        shares: torch.Tensor | list[torch.Tensor],
        *,
        rollout_source: Any,
        randomiser: Any,
    ) -> CLSAttention:
        """Records one image's maps for the report and baselines and wraps them for checks.

        Args:
            maps: (L, H, h, w), or one (H_l, h_l, w_l) tensor per layer for a model whose
                grid changes between layers; shares likewise (L, H) or one (H_l,) per layer.
            rollout_source: ``_LazyRollout.source`` for a rollout computed on first use, or None.
        """
        layout = extraction.layout
        label = label_of(source, index)

        def to_numpy(values: torch.Tensor | list[torch.Tensor]) -> Any:
            if isinstance(values, list):
                return [value.numpy() for value in values]
            return values.numpy()

        record = AttentionRecord(
            record_id=self._record_id(label),
            nodeid=self.context.nodeid,
            location=self.context.location,
            image_label=label,
            model=self.loaded.describe(),
            preprocessing=self.preprocessing.describe(),
            method=extraction.method,
            num_prefix_tokens=layout.num_prefix_tokens,
            query_index=layout.query_index,
            image=(display.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
            maps=to_numpy(maps),
            rollout=None if rollout is None else rollout.numpy(),
            prefix_share=to_numpy(shares),
            prediction=self._prediction(extraction.logits, index),
            image_sha256=image_sha256,
            image_file=file_name_of(source),
            layer_blocks=_as_list(self.loaded.anatomy.blocks_read),
        )
        self.context.records.append(record)
        return CLSAttention(
            maps,
            rollout,
            shares,
            geometry=geometry,
            preprocessing=self.preprocessing,
            record=record,
            report_hint=self.context.report_hint,
            baselines=self.context.baselines,
            strict_masks=self.context.strict_masks,
            rollout_source=None if rollout_source is None else rollout_source(index, record),
            randomiser=randomiser,
            layer_blocks=self.loaded.anatomy.blocks_read,
        )

    def _ragged_randomiser(self) -> Any:
        from pytest_vitattn import sanity

        return sanity.Randomiser.refusing(
            f"the cascading randomisation check re-initialises model.blocks, but "
            f"{self.loaded.spec.name} attends over a different grid in different stages "
            "(no single 'blocks' list): not supported for this model"
        )

    def _randomiser(self, display: torch.Tensor, maps: torch.Tensor) -> Any:
        """A ``sanity.Randomiser`` of ``display`` (3, h, w), whose trained maps are ``maps``
        (L, H, h, w): it re-extracts with blocks ``first_block``.. of a copy re-initialised
        (``sanity.randomised_copy``, cached per model)."""
        from pytest_vitattn import sanity

        model = self.loaded.model
        blocks = getattr(model, "blocks", None)
        layer_blocks = self.loaded.anatomy.layer_blocks
        if blocks is None or layer_blocks is None:
            found = "no 'blocks'" if blocks is None else "attention layers outside its blocks"
            return sanity.Randomiser.refusing(
                f"the cascading randomisation check re-initialises model.blocks, but "
                f"{self.loaded.spec.name} has {found} for its {maps.shape[0]} attention "
                "layer(s) (class attention or attention pooling): not supported for this model"
            )

        def maps_from(first_block: int) -> torch.Tensor:
            randomised = sanity.randomised_copy(model, first_block)
            pixels = self.preprocessing.normalise(display[None])
            extraction = extract_cls_attention(
                randomised,
                pixels.to(next(model.parameters()).device),
                method=self.extraction,
                rollout_fusion=None,
                query_index=self.query_index,
                anatomy=self.loaded.anatomy,
            )
            rows = extraction.rows[0].cpu()
            check_finite(rows, "the CLS attention of the randomised model")
            layout = extraction.layout
            return patch_maps(rows, layout.num_prefix_tokens, layout.grid)

        return sanity.Randomiser(layer_blocks, len(blocks), maps_from)

    def _record_id(self, image_label: str) -> str:
        base = f"{self.context.nodeid}::{image_label}"
        taken = {record.record_id for record in self.context.records}
        if base not in taken:
            return base
        suffix = 2
        while f"{base}#{suffix}" in taken:
            suffix += 1
        return f"{base}#{suffix}"

    def _prediction(self, logits: torch.Tensor | None, index: int) -> dict[str, Any] | None:
        if logits is None or logits.ndim != 2:
            return None
        probabilities = logits[index].softmax(dim=-1)
        top = int(probabilities.argmax())
        names = self.loaded.label_names
        return {
            "index": top,
            "label": names[top] if names and top < len(names) else str(top),
            "probability": round(float(probabilities[top]), 6),
        }


class _LazyRollout:
    """Rollout of a batch computed on first request: one more forward, shared by the batch."""

    def __init__(self, probe: Probe, pixels: torch.Tensor, fusion: str, layout: Any) -> None:
        self.probe = probe
        self.pixels = pixels
        self.fusion = fusion
        self.layout = layout
        self.maps: torch.Tensor | None = None

    def source(self, index: int, record: AttentionRecord) -> Callable[[], torch.Tensor | None]:
        def compute() -> torch.Tensor | None:
            if self.maps is None:
                extraction = self.probe._extract(self.pixels, self.fusion)
                if extraction.rollout is None:
                    return None
                self.maps = patch_maps(
                    extraction.rollout, self.layout.num_prefix_tokens, self.layout.grid
                )
                self.pixels = None  # type: ignore[assignment]  (no longer needed)
            maps = self.maps[index]
            record.rollout = maps.numpy()
            return maps

        return compute


def _checked_rollout(rollout: str | None) -> str | None:
    if rollout is not None and rollout not in HEAD_FUSIONS:
        raise ValueError(f"rollout={rollout!r} must be None or one of {', '.join(HEAD_FUSIONS)}")
    return rollout


def _as_list(values: tuple[int, ...] | None) -> list[int] | None:
    return None if values is None else list(values)
