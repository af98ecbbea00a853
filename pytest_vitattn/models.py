"""Load timm ViTs by name with hub, local-file, random or shipped weights, once per session.

A model is identified by a ``ModelSpec`` (name, weights, device). ``ModelCache`` loads each
spec once and hands out the same ``LoadedModel`` to every test.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_vitattn import checkpoints, hub
from pytest_vitattn.errors import (
    DeviceError,
    ModelLoadError,
    UnknownModelError,
    VitAttnError,
    VitattnWarning,
    WeightsError,
)

PRETRAINED = "pretrained"
RANDOM = "random"
DEFAULT_MODEL = "vitattn_tiny_shapes"
OWN_MODULE_PREFIX = "module:"
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
        branch: for multi-branch models (CrossViT), the branch read: ``"primary"`` or an
            index (see ``extract.describe``).
        query_source: ``"auto"``, ``"cls"`` or ``"pool"``: which CLS-like query to read on
            models that have a CLS token and an attention-pooling query (PE-core; see
            ``extract.describe``).
        kwargs: keyword arguments for ``timm.create_model`` (or the factory), as sorted
            (key, value) pairs, e.g. ``(("img_size", 384), ("num_classes", 5))``.
        factory: ``"package.module:function"`` returning your own ``nn.Module``; ``name`` is
            then only a label.
        strict: a checkpoint whose position embeddings timm must resample is an error,
            not a warning.
    """

    name: str = DEFAULT_MODEL
    weights: str = PRETRAINED
    device: str = "cpu"
    branch: str | int = "primary"
    query_source: str = "auto"
    kwargs: tuple[tuple[str, Any], ...] = ()
    factory: str | None = None
    strict: bool = False

    @property
    def label(self) -> str:
        """The model as users name it: the timm name, or the factory."""
        return self.factory or self.name

    @property
    def is_own_module(self) -> bool:
        """A module the user built (factory or ``vitattn_module``), not a timm name."""
        return bool(self.factory) or self.name.startswith(OWN_MODULE_PREFIX)

    def describe_weights(self) -> str:
        if self.is_own_module and self.weights in (PRETRAINED, RANDOM):
            return "as built"
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
    notes: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """Plain-data description, stored in records and baselines."""
        described = {
            "name": self.spec.label,
            "weights": self.spec.describe_weights(),
            "weights_id": self.weights_id,
            "device": self.spec.device,
        }
        if self.spec.kwargs:
            described["kwargs"] = {key: value for key, value in self.spec.kwargs}
        if self.spec.branch != "primary":
            described["branch"] = self.spec.branch
        if self.spec.query_source != "auto":
            described["query_source"] = self.spec.query_source
        return described


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

    device = _checked_device(spec.device, torch)
    notes: list[str] = []
    if spec.factory:
        model = _from_factory(spec, notes)
    else:
        if not hub.is_hf_hub_name(spec.name):
            _check_known(spec.name, timm)
        model = _create(spec, timm, notes)
    return _finish(spec, model, device, notes, timm)


def adopt_module(model: Any, spec: ModelSpec) -> LoadedModel:
    """Wrap a module you built (``vitattn_module`` fixture, factory) for probing.

    The same checks as for a timm model run: the family is recognised or refused with the
    reason, and the module needs a data config (input size, mean, std).

    Args:
        model: an ``nn.Module``; it is put in eval mode and moved to ``spec.device``.
        spec: its label (``spec.name``) and device.
    """
    import timm
    import torch

    device = _checked_device(spec.device, torch)
    _check_module(model, spec.label)
    return _finish(spec, model, device, [], timm)


def _finish(spec: ModelSpec, model: Any, device: Any, notes: list[str], timm: Any) -> LoadedModel:
    from pytest_vitattn.extract import describe

    anatomy = describe(
        model,
        branch=None if spec.branch == "primary" else spec.branch,
        query_source=spec.query_source,
    )
    model = model.eval().to(device)
    data_config = _data_config(model, spec, timm)
    label_names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    return LoadedModel(
        spec=spec,
        model=model,
        data_config=data_config,
        weights_id=_weights_id(spec, model),
        label_names=tuple(label_names) if label_names else None,
        anatomy=anatomy,
        notes=tuple(notes),
    )


def _data_config(model: Any, spec: ModelSpec, timm: Any) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or not {"input_size", "mean", "std"} <= set(cfg):
        # Guessing ImageNet statistics and 224 pixels would give silently wrong maps.
        raise ModelLoadError(
            f"{spec.label}: the module has no pretrained_cfg with input_size, mean and std, so "
            "the input it expects is unknown. Set it on the module, e.g. "
            "model.pretrained_cfg = dict(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), "
            "std=(0.229, 0.224, 0.225), interpolation='bicubic', crop_pct=0.875)"
        )
    config = timm.data.resolve_model_data_config(model)
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if built is not None and not getattr(model, "dynamic_img_size", False):
        # model_kwargs img_size=... builds another input size than the pretrained cfg says.
        size = (3, int(built[0]), int(built[1]))
        if tuple(config["input_size"]) != size:
            config = {**config, "input_size": size}
    return config


def _check_module(model: Any, label: str) -> None:
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{label} gave a {type(model).__name__}, not a torch nn.Module")


def _from_factory(spec: ModelSpec, notes: list[str]) -> Any:
    module_name, _, attribute = str(spec.factory).partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"model_factory {spec.factory!r}: cannot import {module_name!r} ({exc}); the module "
            "must be importable from the test run (rootdir, pythonpath ini key, or installed)"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ModelLoadError(f"model_factory {spec.factory!r}: {module_name} has no {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelLoadError(f"model_factory {spec.factory!r} is not callable")
    try:
        model = target(**dict(spec.kwargs))
    except TypeError as exc:
        raise ModelLoadError(f"model_factory {spec.factory!r} failed: {exc}") from None
    _check_module(model, f"model_factory {spec.factory!r}")
    if spec.weights not in (PRETRAINED, RANDOM):
        _load_state_into(model, Path(spec.weights), spec.factory or spec.name)
        notes.append(f"{spec.factory}: weights loaded from {Path(spec.weights).name}")
    return model


def _load_state_into(model: Any, path: Path, label: str) -> None:
    """Load a safetensors or weights-only torch state dict into a module, strictly."""
    import torch
    from safetensors import SafetensorError

    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"refused to load {path.name}: it is a pickle that needs arbitrary code to load; "
            "save the state_dict with safetensors"
        ) from exc
    except (SafetensorError, EOFError, ValueError, OSError, RuntimeError) as exc:
        raise WeightsError(f"weights file {path} is corrupt or unreadable: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"weights in {path.name} do not fit {label}:\n{_first_lines(str(exc))}"
        ) from None


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


def _create(spec: ModelSpec, timm: Any, notes: list[str]) -> Any:
    kwargs = dict(spec.kwargs)
    if spec.weights == RANDOM:
        return _timm_create(spec.name, timm, kwargs, pretrained=False)
    if spec.weights == PRETRAINED:
        return _create_pretrained(spec, timm, kwargs)
    return _create_from_file(spec, Path(spec.weights), timm, kwargs, notes)


def _timm_create(name: str, timm: Any, kwargs: dict[str, Any], **options: Any) -> Any:
    try:
        return timm.create_model(name, **options, **kwargs)
    except TypeError as exc:
        if "argument" not in str(exc):
            raise
        given = ", ".join(f"{key}={value!r}" for key, value in kwargs.items()) or "none"
        raise ModelLoadError(
            f"{name!r} does not take these model kwargs ({given}): {exc}"
        ) from None


def _create_pretrained(spec: ModelSpec, timm: Any, kwargs: dict[str, Any]) -> Any:
    name = spec.name
    source = hub.hub_source(name, timm)
    if source is not None:
        if hub.cached_files(source) is not None:
            # Everything is in the local cache: no network at all, not even a freshness check.
            with hub.offline():
                model = _pretrained_or_error(name, timm, kwargs)
        elif hub.is_offline() or not hub.hub_reachable():
            raise hub.unreachable_error(name, source, hub.hub_state())
        else:
            model = _pretrained_or_error(name, timm, kwargs)
        files = hub.cached_files(source)  # downloaded by now
        if files is not None:
            weights = next(path for key, path in files.items() if key in hub.WEIGHT_FILES)
            shapes = checkpoints.tensor_shapes(Path(weights))
            _check_position_embeddings(
                spec, f"{source.repo_id} ({Path(weights).name})", shapes, model
            )
        return model
    return _pretrained_or_error(name, timm, kwargs)


def _pretrained_or_error(name: str, timm: Any, kwargs: dict[str, Any]) -> Any:
    try:
        return _timm_create(name, timm, kwargs, pretrained=True)
    except ModelLoadError:
        raise
    except Exception as exc:  # hub, network and cache errors come in many types
        raise ModelLoadError(
            f"could not load pretrained weights for {name!r}: {type(exc).__name__}: "
            f"{_first_lines(str(exc), 3)}\n"
            f"Offline: put the weights in the hub cache ({hub.cache_dir()}) and set "
            "HF_HUB_OFFLINE=1, or pass a weights file with --vitattn-weights=PATH (or the "
            "vitattn_weights ini key, or @pytest.mark.vitattn(weights=...)); for plumbing "
            "tests use weights='random'."
        ) from exc


def _create_from_file(
    spec: ModelSpec, path: Path, timm: Any, kwargs: dict[str, Any], notes: list[str]
) -> Any:
    name = spec.name
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix not in _WEIGHT_SUFFIXES:
        raise WeightsError(
            f"weights file {path.name} has suffix {path.suffix!r}; expected one of "
            f"{', '.join(_WEIGHT_SUFFIXES)} (safetensors preferred)"
        )
    from safetensors import SafetensorError

    shapes = checkpoints.tensor_shapes(path)
    overlay: dict[str, Any] = {"file": str(path)}
    classes = _checkpoint_classes(name, path, shapes, kwargs, timm, notes)
    if classes is not None:
        # timm drops the head weights (silently) when num_classes differs from its cfg's.
        overlay["num_classes"] = classes
    try:
        model = _timm_create(name, timm, kwargs, pretrained=True, pretrained_cfg_overlay=overlay)
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
                "Check that the file was saved from this architecture (and model_kwargs, "
                "e.g. --vitattn-model-kwargs=img_size=384)."
            ) from exc
        if "weights_only" in str(exc) or "Unpickl" in str(exc):
            raise WeightsError(
                f"refused to load {path.name}: it needs arbitrary code to unpickle; save a "
                "plain state_dict (safetensors preferred)"
            ) from exc
        raise WeightsError(f"weights file {path} could not be loaded: {exc}") from exc
    _check_position_embeddings(spec, path.name, shapes, model)
    return model


def _checkpoint_classes(
    name: str,
    path: Path,
    shapes: dict[str, tuple[int, ...]],
    kwargs: dict[str, Any],
    timm: Any,
    notes: list[str],
) -> int | None:
    """num_classes of the file's head; taken into ``kwargs`` when not given."""
    cfg = _pretrained_cfg(name, timm)
    classifier = cfg.get("classifier") or "head"
    classifier = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    found = checkpoints.head_classes(shapes, classifier)
    if found is None:
        return kwargs.get("num_classes")
    shape = list(shapes[f"{classifier}.weight"])
    if "num_classes" in kwargs:
        if kwargs["num_classes"] != found:
            raise WeightsError(
                f"num_classes={kwargs['num_classes']} was given, but {path.name}'s "
                f"{classifier}.weight has shape {shape} ({found} classes); leave num_classes "
                "out to use the checkpoint's head"
            )
        return found
    kwargs["num_classes"] = found
    default = cfg.get("num_classes")
    if default is not None and default != found:
        notes.append(
            f"{name}: num_classes={found} taken from {path.name} ({classifier}.weight "
            f"{shape}); the model's default is {default}"
        )
    return found


def _pretrained_cfg(name: str, timm: Any) -> dict[str, Any]:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        return {}
    return cfg.to_dict() if cfg is not None else {}


def _check_position_embeddings(
    spec: ModelSpec, source: str, shapes: dict[str, tuple[int, ...]], model: Any
) -> None:
    """Warn (or, with ``spec.strict``, refuse) when timm resampled the position embeddings."""
    saved = shapes.get("pos_embed")
    current = getattr(model, "pos_embed", None)
    if saved is None or current is None or len(saved) != 3 or tuple(current.shape) == saved:
        return
    prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
    before = checkpoints.grid_text(int(saved[1]) - prefix)
    after = checkpoints.grid_text(int(current.shape[1]) - prefix)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    side = saved[1] - prefix
    trained = ""
    if patch is not None and int(side**0.5) ** 2 == side:
        trained = f" (model_kwargs img_size={int(side**0.5) * int(patch[0])} matches the file)"
    message = (
        f"{source} holds position embeddings for a {before} patch grid, {spec.name} has "
        f"{after}: timm resampled them from {before} to {after} (bicubic interpolation), so "
        f"the maps come from interpolated, not trained, position embeddings{trained}"
    )
    if spec.strict:
        raise WeightsError(f"{message}. strict_weights is on, so this is an error.")
    warnings.warn(
        f"{message}. Set strict_weights=true to make this an error.",
        VitattnWarning,
        stacklevel=2,
    )


def _first_lines(text: str, count: int = 6) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    more = len(lines) - count
    return "\n".join(lines[:count]) + (f"\n... and {more} more line(s)" if more > 0 else "")


def _weights_id(spec: ModelSpec, model: Any) -> str:
    if spec.is_own_module:
        return f"module:{module_digest(model)}"
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


def module_digest(model: Any, length: int = 12) -> str:
    """The first ``length`` hex digits of a SHA-256 over the module's state dict."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(dtype=_byte_dtype()).numpy())
    return digest.hexdigest()[:length]


def _byte_dtype() -> Any:
    import torch

    return torch.uint8
