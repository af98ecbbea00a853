"""Load ``hf:<repo id>`` or ``hf:<save_pretrained directory>`` with its own preprocessing.

* ``weights='pretrained'``: ``from_pretrained`` (the directory, or the hub when online);
* ``weights='random'``: the config only (the directory's ``config.json``, or the hub's),
  random initialisation;
* a weights file is refused: a transformers model's weights come with its directory.

Preprocessing comes from the directory's ``preprocessor_config.json`` (the image
processor's size, crop, mean, std and resampling); without one, from the defaults of the
family's image processor class with the config's ``image_size``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pytest_vitattn.errors import ModelLoadError, UnsupportedModelError, WeightsError
from pytest_vitattn.hf import HF_PREFIX

# model_type -> image processor class whose defaults apply when a directory has none.
_PROCESSORS = {
    "vit": "ViTImageProcessor",
    "deit": "DeiTImageProcessor",
    "dinov2": "BitImageProcessor",
    "dinov2_with_registers": "BitImageProcessor",
    "clip": "CLIPImageProcessor",
    "clip_vision_model": "CLIPImageProcessor",
    "siglip": "SiglipImageProcessor",
    "siglip_vision_model": "SiglipImageProcessor",
}
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
INSTALL_HINT = "pip install 'pytest-vitattn[transformers]'"


def load_hf_model(spec: Any) -> Any:
    """Load a transformers vision model named ``hf:...`` into a ``LoadedModel``.

    Raises:
        ModelLoadError: transformers is missing, or the model or config cannot be fetched.
        WeightsError: a weights file was given, or the directory's weights do not load.
        UnsupportedModelError: the model has no CLS-like query (``hf.anatomy``).
    """
    from pytest_vitattn.models import LoadedModel, _checked_device

    transformers = _transformers()
    import torch

    from pytest_vitattn.hf.anatomy import describe_hf
    from pytest_vitattn.hf.wrapper import HFVision

    device = _checked_device(spec.device, torch)
    source, local = _source(spec.name)
    model = _create(transformers, source, local, spec.weights)
    vision = getattr(model, "vision_model", None)
    if isinstance(vision, transformers.PreTrainedModel):
        model = vision  # CLIPModel / SiglipModel: the vision tower
    wrapper = HFVision(model)
    wrapper.anatomy = describe_hf(wrapper)  # refuses unverified models first
    model.set_attn_implementation("sdpa")  # the fast path reads the SDPA call
    wrapper = wrapper.eval().to(device)
    labels = getattr(model.config, "id2label", None) or {}
    has_head = hasattr(model, "classifier") or hasattr(model, "cls_classifier")
    return LoadedModel(
        spec=spec,
        model=wrapper,
        data_config=data_config(transformers, model.config, source if local else None),
        weights_id=_weights_id(spec, source, local),
        label_names=tuple(labels[i] for i in sorted(labels)) if has_head and labels else None,
        anatomy=wrapper.anatomy,
    )


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ModelLoadError(
            f"hf: models need the transformers package, which is not installed: {INSTALL_HINT}"
        ) from exc
    return transformers


def _source(name: str) -> tuple[str, bool]:
    """(repo id or directory, whether it is a local directory)."""
    source = name[len(HF_PREFIX) :].strip()
    if not source:
        raise ModelLoadError(
            "'hf:' needs a repo id or a directory, e.g. hf:facebook/dinov2-small or "
            "hf:./my_vit (a save_pretrained directory)"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a directory without config.json; save the model there with "
                "model.save_pretrained(...)"
            )
        return str(path.resolve()), True
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelLoadError(
            f"hf:{source}: no such directory (and it is not a hub repo id 'owner/name'); "
            "relative paths are taken from the directory pytest runs in"
        )
    return source, False


def _create(transformers: Any, source: str, local: bool, weights: str) -> Any:
    if weights not in ("pretrained", "random"):
        raise WeightsError(
            f"weights={weights!r}: a transformers model's weights come with its directory; "
            "name the directory (hf:DIR) with weights='pretrained', or use weights='random'"
        )
    where = f"directory {source}" if local else f"hub repo {source!r}"
    try:
        config = transformers.AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not read the config of the {where}: {type(exc).__name__}: {exc}\n"
            "Without network access, save the model elsewhere with save_pretrained and "
            "name the directory: hf:/path/to/dir"
        ) from exc
    model_class = _model_class(transformers, config)
    if weights == "random":
        return model_class._from_config(config, attn_implementation="sdpa")
    try:
        return model_class.from_pretrained(source, attn_implementation="sdpa")
    except (OSError, ValueError, RuntimeError) as exc:
        error = WeightsError if local else ModelLoadError
        raise error(
            f"could not load the weights of the {where}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def _model_class(transformers: Any, config: Any) -> Any:
    for architecture in getattr(config, "architectures", None) or []:
        model_class = getattr(transformers, architecture, None)
        if model_class is not None:
            return model_class
    try:
        return transformers.AutoModel._model_mapping[type(config)]
    except KeyError:
        raise UnsupportedModelError(
            f"transformers has no model class for config {type(config).__name__}"
        ) from None


def data_config(transformers: Any, config: Any, directory: str | None) -> dict[str, Any]:
    """timm-style data config (input_size, mean, std, interpolation, crop_pct) of the model.

    From the directory's image processor when it has one, else from the defaults of the
    family's processor with ``config.image_size``.

    Raises:
        UnsupportedModelError: the processor's resampling or size cannot be reproduced.
    """
    vision = getattr(config, "vision_config", None) or config
    if directory is not None and (Path(directory) / "preprocessor_config.json").is_file():
        processor = transformers.AutoImageProcessor.from_pretrained(directory)
        return _from_processor(processor, None)
    name = _PROCESSORS.get(vision.model_type) or _PROCESSORS.get(config.model_type)
    if name is None:
        raise UnsupportedModelError(
            f"no image processor is known for model_type {vision.model_type!r}; save one "
            "beside the model (processor.save_pretrained(DIR))"
        )
    size = int(vision.image_size)
    return _from_processor(getattr(transformers, name)(), (size, size))


def _from_processor(processor: Any, config_size: tuple[int, int] | None) -> dict[str, Any]:
    size = processor.size
    cropped = bool(getattr(processor, "do_center_crop", False))
    crop = getattr(processor, "crop_size", None) if cropped else None
    resample = int(getattr(processor, "resample", 2))
    if resample not in _RESAMPLE:
        raise UnsupportedModelError(
            f"the image processor resamples with PIL filter {resample}; pytest-vitattn "
            f"reproduces only {', '.join(_RESAMPLE.values())}"
        )
    short = getattr(size, "shortest_edge", None)
    if crop is not None:
        input_size = (int(crop.height), int(crop.width))
        crop_pct = input_size[0] / int(short or size.height)
    else:
        if short:
            raise UnsupportedModelError(
                f"the image processor resizes the shortest edge to {short} without a crop, "
                "so the input size depends on each image; pytest-vitattn needs a fixed size"
            )
        input_size = (int(size.height), int(size.width))
        crop_pct = 1.0
    if config_size is not None:  # random weights: the config's size, the processor's ratio
        input_size = config_size
    return {
        "input_size": (3, *input_size),
        "mean": tuple(float(v) for v in processor.image_mean),
        "std": tuple(float(v) for v in processor.image_std),
        "interpolation": _RESAMPLE[resample],
        "crop_pct": crop_pct,
        "squash_then_crop": crop is not None and not short,
    }


def _weights_id(spec: Any, source: str, local: bool) -> str:
    if spec.weights == "random":
        return "random-init"
    if not local:
        return f"hf:{source}"
    digest = hashlib.sha256()
    for path in sorted(Path(source).glob("*.safetensors")) + sorted(Path(source).glob("*.bin")):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return f"dir:{digest.hexdigest()[:12]}"
