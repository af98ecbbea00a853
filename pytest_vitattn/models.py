"""Load timm ViTs by name with hub, local-file, random or shipped weights, once per session.

A model is identified by a ``ModelSpec`` (name, weights, device). ``ModelCache`` loads each
spec once and hands out the same ``LoadedModel`` to every test.
"""

from __future__ import annotations

import difflib
import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_vitattn.errors import (
    DeviceError,
    ModelLoadError,
    UnknownModelError,
    VitAttnError,
    WeightsError,
)

PRETRAINED = "pretrained"
RANDOM = "random"
DEFAULT_MODEL = "vitattn_tiny_shapes"
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load.

    Attributes:
        name: a timm model name, e.g. ``"deit_tiny_patch16_224"``.
        weights: ``"pretrained"`` (timm's pretrained weights: the hub, or the package's own
            file for the shipped models), ``"random"`` (random init), or a path to a local
            weights file (safetensors, or a torch file loaded with ``weights_only=True``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    """

    name: str = DEFAULT_MODEL
    weights: str = PRETRAINED
    device: str = "cpu"

    def describe_weights(self) -> str:
        if self.weights in (PRETRAINED, RANDOM):
            return self.weights
        return Path(self.weights).name


@dataclass
class LoadedModel:
    """A model ready for extraction, with what the report and baselines need to know.

    Attributes:
        spec: what was asked for.
        model: the timm model, in eval mode on ``spec.device``.
        data_config: ``timm.data.resolve_model_data_config(model)``.
        weights_id: where the weights came from and a digest of them, e.g.
            ``"file:ab12cd34ef56"`` or ``"timm:deit_tiny_patch16_224.fb_in1k"``.
        label_names: class names when the model's config lists them.
    """

    spec: ModelSpec
    model: Any
    data_config: dict[str, Any]
    weights_id: str
    label_names: tuple[str, ...] | None = None
    anatomy: Any = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        """Plain-data description, stored in records and baselines."""
        return {
            "name": self.spec.name,
            "weights": self.spec.describe_weights(),
            "weights_id": self.weights_id,
            "device": self.spec.device,
        }


class ModelCache:
    """Loads each ``ModelSpec`` once and returns the same ``LoadedModel`` afterwards."""

    def __init__(self) -> None:
        self._loaded: dict[ModelSpec, LoadedModel] = {}
        self._failed: dict[ModelSpec, VitAttnError] = {}

    def get(self, spec: ModelSpec) -> LoadedModel:
        if spec in self._failed:
            # Re-raise the first error instead of paying for a second failing load.
            raise self._failed[spec]
        if spec not in self._loaded:
            try:
                self._loaded[spec] = load_model(spec)
            except VitAttnError as error:
                self._failed[spec] = error
                raise
        return self._loaded[spec]

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())


def load_model(spec: ModelSpec) -> LoadedModel:
    """Create a timm model from ``spec``, load its weights, and check it can be probed.

    Raises:
        UnknownModelError: timm has no model of that name (close names are suggested).
        WeightsError: the weights file is missing, corrupt, unsafe, or does not fit.
        ModelLoadError: pretrained weights could not be fetched.
        DeviceError: the device is not available.
        UnsupportedModelError: the model has no CLS token attention.
    """
    from pytest_vitattn.hf import is_hf_name

    if is_hf_name(spec.name):  # transformers models (optional extra), see pytest_vitattn.hf
        from pytest_vitattn.hf import load_hf_model

        return load_hf_model(spec)
    import timm
    import torch

    import pytest_vitattn.zoo  # noqa: F401  (registers the shipped models with timm)
    from pytest_vitattn.extract import describe

    device = _checked_device(spec.device, torch)
    _check_known(spec.name, timm)
    model = _create(spec, timm)
    anatomy = describe(model)
    model = model.eval().to(device)
    data_config = timm.data.resolve_model_data_config(model)
    label_names = getattr(model, "pretrained_cfg", {}).get("label_names")
    return LoadedModel(
        spec=spec,
        model=model,
        data_config=data_config,
        weights_id=_weights_id(spec, model),
        label_names=tuple(label_names) if label_names else None,
        anatomy=anatomy,
    )


def _checked_device(device: str, torch: Any) -> Any:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} was asked for, but CUDA is not available here "
                f"(torch {torch.__version__}); use --vitattn-device=cpu"
            )
        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} was asked for, but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    elif device == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' was asked for, but MPS is not available here")
    return torch.device(device)


def _check_known(name: str, timm: Any) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"timm has no model named {name!r}.{hint} (timm.list_models('*pattern*') lists names)"
    )


def _create(spec: ModelSpec, timm: Any) -> Any:
    if spec.weights == RANDOM:
        return timm.create_model(spec.name, pretrained=False)
    if spec.weights == PRETRAINED:
        return _create_pretrained(spec.name, timm)
    return _create_from_file(spec.name, Path(spec.weights), timm)


def _create_pretrained(name: str, timm: Any) -> Any:
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as exc:  # hub, network and cache errors come in many types
        raise ModelLoadError(
            f"could not load pretrained weights for {name!r}: {type(exc).__name__}: {exc}\n"
            "Without network access, download the weights elsewhere and pass the file with "
            "--vitattn-weights=PATH (or the vitattn_weights ini key, or "
            "@pytest.mark.vitattn(weights=...)); for plumbing tests use weights='random'."
        ) from exc


def _create_from_file(name: str, path: Path, timm: Any) -> Any:
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix not in _WEIGHT_SUFFIXES:
        raise WeightsError(
            f"weights file {path.name} has suffix {path.suffix!r}; expected one of "
            f"{', '.join(_WEIGHT_SUFFIXES)} (safetensors preferred)"
        )
    from safetensors import SafetensorError

    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"refused to load {path.name}: it is a pickle that needs arbitrary code to load "
            "(torch.load with weights_only=True rejected it), and running it could execute "
            "anything. Save the state_dict with safetensors, or torch.save(model.state_dict())."
        ) from exc
    except (SafetensorError, EOFError, ValueError, OSError) as exc:
        raise WeightsError(f"weights file {path} is corrupt or unreadable: {exc}") from exc
    except RuntimeError as exc:
        if "state_dict" in str(exc) or "size mismatch" in str(exc):
            raise WeightsError(
                f"weights in {path.name} do not fit {name!r}:\n{_first_lines(str(exc))}\n"
                "Check that the file was saved from this architecture."
            ) from exc
        if "weights_only" in str(exc) or "Unpickl" in str(exc):
            raise WeightsError(
                f"refused to load {path.name}: it needs arbitrary code to unpickle; save a "
                "plain state_dict (safetensors preferred)"
            ) from exc
        raise WeightsError(f"weights file {path} could not be loaded: {exc}") from exc


def _first_lines(text: str, count: int = 6) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    more = len(lines) - count
    return "\n".join(lines[:count]) + (f"\n... and {more} more line(s)" if more > 0 else "")


def _weights_id(spec: ModelSpec, model: Any) -> str:
    if spec.weights == RANDOM:
        return "random-init"
    if spec.weights != PRETRAINED:
        return f"file:{file_digest(Path(spec.weights))}"
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    if cfg.get("file"):
        return f"file:{file_digest(Path(cfg['file']))}"
    tag = cfg.get("tag")
    return f"timm:{spec.name}.{tag}" if tag else f"timm:{spec.name}"


def file_digest(path: Path, length: int = 12) -> str:
    """The first ``length`` hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]
