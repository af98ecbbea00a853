"""Plain, serialisable records of what each test computed, for the report and CI.

A record is made for every image a test probes; every check on it adds a ``CheckResult``.
Records travel as JSON-compatible dicts (arrays base64-encoded), which is also how they
cross from pytest-xdist workers to the controller.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1


@dataclass
class CheckResult:
    """One assertion about one attention map.

    Attributes:
        name: "mass_in_mask", "pointing_game", "top_k_iou", "concentration" or "baseline".
        value: the measured number (1.0/0.0 for hit/miss).
        passed: whether the check held; None for a plain measurement (no threshold).
        op: how value is compared with threshold: ">=", "<=", "hit", or "measured".
        threshold: the bound asked for, or None.
        chance: the value a uniform map would get (mask area), or None.
        selection: which map was checked, e.g. "layer 11 of 12, head mean".
        mask: label of the mask used, or None.
        message: the sentence shown when the check fails.
        details: extra numbers (e.g. per-layer drift), plain data only.
    """

    name: str
    value: float
    passed: bool | None
    op: str
    threshold: float | None
    chance: float | None
    selection: str
    mask: str | None = None
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class MaskRecord:
    """A mask as the model saw it.

    Attributes:
        label: file name or position of the mask.
        grid: (grid_h, grid_w) float32 area fraction per patch (for a model whose grid
            changes between layers: on the grid of the first map checked with it; each
            check reduces the mask to its own layer's grid).
        pixels: (input_h, input_w) bool, the mask at model input resolution.
    """

    label: str
    grid: np.ndarray
    pixels: np.ndarray


@dataclass
class AttentionRecord:
    """Everything one probe of one image computed.

    Attributes:
        record_id: unique within a run: the test id and the image label.
        nodeid: pytest node id of the test.
        location: (path, line) of the test function, or None.
        image_label: file name or position of the image.
        model: model description (name, weights, weights_id, device).
        preprocessing: preprocessing description (input size, mean, std, mode).
        method: extraction path, "fast" or "fx".
        num_prefix_tokens, query_index: the token layout.
        image: (input_h, input_w, 3) uint8, the image as the model saw it.
        maps: (L, H, grid_h, grid_w) float32 CLS attention over patches, each sums to 1;
            for a model whose grid and heads change between layers (PiT, MViTv2), a list of
            L (H_l, h_l, w_l) arrays (in JSON: a list of encoded arrays, "grid" None and
            "layer_grids" each layer's grid).
        rollout: (L, grid_h, grid_w) float32 attention rollout after each layer, or None.
        prefix_share: (L, H) float32 share of CLS attention on prefix tokens (a list of
            L (H_l,) arrays when ``maps`` is a list).
        prediction: {"index", "label", "probability"} of the top class, or None.
        masks: masks used by checks.
        checks: the checks made, in order.
        baseline: {"maps": (L, H, h, w) array, "path": str} when a baseline was compared.
        randomised: {"maps": (L, H, h, w) array, "first_block", "num_blocks", "label"}: the
            maps of the same image with the top blocks re-initialised, when a cascading
            randomisation check ran (see ``pytest_vitattn.sanity``).
        outcome: the test's outcome ("passed", "failed", "xfailed", ...), set after the test.
        image_sha256: SHA-256 of the image's decoded pixels (``images.content_hash``).
        image_file: the image's file name when it came from a file, else None.
        layer_blocks: the index in ``model.blocks`` of each layer when the plugin left
            blocks out (``Anatomy.blocks_read``), e.g. [5]; None when layer k is block k
            (or not one of ``blocks``).
    """

    record_id: str
    nodeid: str
    location: tuple[str, int] | None
    image_label: str
    model: dict[str, Any]
    preprocessing: dict[str, Any]
    method: str
    num_prefix_tokens: int
    query_index: int
    image: np.ndarray
    maps: np.ndarray | list[np.ndarray]
    rollout: np.ndarray | None
    prefix_share: np.ndarray | list[np.ndarray]
    prediction: dict[str, Any] | None = None
    masks: list[MaskRecord] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    outcome: str | None = None
    image_sha256: str = ""
    image_file: str | None = None
    randomised: dict[str, Any] | None = None
    layer_blocks: list[int] | None = None

    @property
    def passed(self) -> bool:
        return all(check.passed is not False for check in self.checks)

    def add_mask(self, mask: MaskRecord) -> None:
        if all(existing.label != mask.label for existing in self.masks):
            self.masks.append(mask)

    def to_dict(self, *, include_pixels: bool = True) -> dict[str, Any]:
        """JSON-compatible dict; ``include_pixels=False`` leaves out the image and mask pixels."""
        data = {
            "schema": SCHEMA_VERSION,
            "record_id": self.record_id,
            "nodeid": self.nodeid,
            "location": list(self.location) if self.location else None,
            "image_label": self.image_label,
            "model": dict(self.model),
            "preprocessing": dict(self.preprocessing),
            "method": self.method,
            "num_prefix_tokens": self.num_prefix_tokens,
            "query_index": self.query_index,
            "grid": None if isinstance(self.maps, list) else list(self.maps.shape[-2:]),
            "maps": encode_maps(self.maps),
            "rollout": None if self.rollout is None else encode_array(self.rollout, "float16"),
            "prefix_share": _shares_to_list(self.prefix_share),
            "prediction": self.prediction,
            "masks": [
                {
                    "label": mask.label,
                    "grid": mask.grid.round(6).tolist(),
                    "pixels": encode_array(mask.pixels, "bool") if include_pixels else None,
                }
                for mask in self.masks
            ],
            "checks": [asdict(check) for check in self.checks],
            "baseline": _baseline_to_dict(self.baseline),
            "randomised": _baseline_to_dict(self.randomised),
            "outcome": self.outcome,
            "image_sha256": self.image_sha256,
            "image_file": self.image_file,
            "layer_blocks": self.layer_blocks,
        }
        if isinstance(self.maps, list):
            data["layer_grids"] = [list(layer.shape[-2:]) for layer in self.maps]
        data["image"] = encode_array(self.image, "uint8") if include_pixels else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionRecord:
        """Inverse of ``to_dict`` (maps come back as float32)."""
        baseline = data.get("baseline")
        if baseline is not None:
            baseline = {**baseline, "maps": decode_maps(baseline["maps"])}
        randomised = data.get("randomised")
        if randomised is not None:
            randomised = {
                **randomised,
                "maps": decode_array(randomised["maps"]).astype(np.float32),
            }
        masks = [
            MaskRecord(
                label=mask["label"],
                grid=np.asarray(mask["grid"], dtype=np.float32),
                pixels=decode_array(mask["pixels"])
                if mask.get("pixels")
                else np.zeros((0, 0), bool),
            )
            for mask in data["masks"]
        ]
        return cls(
            record_id=data["record_id"],
            nodeid=data["nodeid"],
            location=tuple(data["location"]) if data.get("location") else None,
            image_label=data["image_label"],
            model=data["model"],
            preprocessing=data["preprocessing"],
            method=data["method"],
            num_prefix_tokens=data["num_prefix_tokens"],
            query_index=data["query_index"],
            image=decode_array(data["image"])
            if data.get("image")
            else np.zeros((0, 0, 3), np.uint8),
            maps=decode_maps(data["maps"]),
            rollout=None
            if data["rollout"] is None
            else decode_array(data["rollout"]).astype(np.float32),
            prefix_share=(
                [np.asarray(layer, dtype=np.float32) for layer in data["prefix_share"]]
                if isinstance(data["maps"], list)
                else np.asarray(data["prefix_share"], dtype=np.float32)
            ),
            prediction=data.get("prediction"),
            masks=masks,
            checks=[CheckResult(**check) for check in data["checks"]],
            baseline=baseline,
            outcome=data.get("outcome"),
            image_sha256=data.get("image_sha256", ""),
            image_file=data.get("image_file"),
            randomised=randomised,
            layer_blocks=data.get("layer_blocks"),
        )


def encode_array(array: np.ndarray, dtype: str) -> dict[str, Any]:
    """{"dtype", "shape", "base64"} of the array cast to ``dtype`` (little-endian, C order)."""
    cast = np.ascontiguousarray(np.asarray(array).astype(np.dtype(dtype).newbyteorder("<")))
    return {
        "dtype": dtype,
        "shape": list(cast.shape),
        "base64": base64.b64encode(cast.tobytes()).decode("ascii"),
    }


def decode_array(data: dict[str, Any]) -> np.ndarray:
    """Inverse of ``encode_array``."""
    raw = base64.b64decode(data["base64"])
    dtype = np.dtype(data["dtype"]).newbyteorder("<")
    return np.frombuffer(raw, dtype=dtype).reshape(data["shape"]).astype(data["dtype"])


def encode_maps(maps: np.ndarray | list[np.ndarray]) -> Any:
    """(L, H, h, w) maps as one encoded float16 array, or a per-layer list as a list of them."""
    if isinstance(maps, list):
        return [encode_array(layer, "float16") for layer in maps]
    return encode_array(maps, "float16")


def decode_maps(data: Any) -> np.ndarray | list[np.ndarray]:
    """Inverse of ``encode_maps``, as float32: an (L, H, h, w) array or a per-layer list."""
    if isinstance(data, list):
        return [decode_array(layer).astype(np.float32) for layer in data]
    return decode_array(data).astype(np.float32)


def _shares_to_list(shares: np.ndarray | list[np.ndarray]) -> list:
    if isinstance(shares, list):
        return [np.asarray(layer).round(6).tolist() for layer in shares]
    return shares.round(6).tolist()


def _baseline_to_dict(baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    if baseline is None:
        return None
    return {**baseline, "maps": encode_maps(baseline["maps"])}


def anchor(record_id: str) -> str:
    """The HTML anchor of a record in the report: stable, unique, and safe in a URL."""
    return "rec-" + hashlib.sha1(record_id.encode("utf-8")).hexdigest()[:12]
