"""pytest-vitattn: test where a Vision Transformer looks.

Importing this package is cheap: torch and timm are imported only when a model is loaded.
The public names below are resolved lazily on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY_NAMES = {
    "CLSAttention": "pytest_vitattn.attention",
    "AttentionMap": "pytest_vitattn.attention",
    "LayerAttention": "pytest_vitattn.attention",
    "ModelSpec": "pytest_vitattn.models",
    "load_model": "pytest_vitattn.models",
    "Probe": "pytest_vitattn.probe",
    "extract_cls_attention": "pytest_vitattn.extract",
    "MaskWarning": "pytest_vitattn.bounds",
    "soft_mask": "pytest_vitattn.masks",
    "coco_mask": "pytest_vitattn.masks",
}

__all__ = ["__version__", *_LAZY_NAMES]


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'pytest_vitattn' has no attribute {name!r}")
