"""What a weights file holds, read before the model is built: tensor names and shapes.

Fine-tuned checkpoints differ from the architecture's defaults in their classifier head
(``head.weight`` of shape (classes, dim)) and sometimes in their position embeddings
(another input size). Reading the shapes first lets the loader build the model the file
was saved from, and say what timm changed when the two do not fit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors or torch state-dict file.

    Returns an empty dict when the file cannot be read here; the loader then reports the
    file's problem itself (corrupt, unsafe pickle, ...). Torch files are read with
    ``weights_only=True`` (no code runs) and memory-mapped where the format allows it.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        import torch

        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return {}
    return {key: tuple(value.shape) for key, value in _unwrapped(data).items()}


def _unwrapped(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        return {}
    for key in _WRAPPER_KEYS:
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    shapes = {}
    for key, value in data.items():
        if hasattr(value, "shape"):
            name = key[len("module.") :] if key.startswith("module.") else key
            shapes[name] = value
    return shapes


def head_classes(shapes: dict[str, tuple[int, ...]], classifier: str) -> int | None:
    """Number of classes of the ``classifier`` head (its weight's first dimension), or None."""
    weight = shapes.get(f"{classifier}.weight")
    return int(weight[0]) if weight is not None and len(weight) == 2 else None


def grid_text(tokens: int) -> str:
    """``"14x14"`` for 196 patch tokens, ``"200 tokens"`` when they make no square."""
    side = math.isqrt(tokens)
    return f"{side}x{side}" if side * side == tokens else f"{tokens} tokens"
