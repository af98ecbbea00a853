"""Hugging Face transformers vision models: ``hf:<repo id>`` or ``hf:<save_pretrained dir>``.

Optional: needs ``pip install pytest-vitattn[transformers]``. Nothing here imports
transformers (or torch) at import time; ``load_hf_model`` does, when an ``hf:`` model is
first asked for. The ``hf:`` prefix cannot be confused with timm names (timm names have no
colon; timm's own hub names start with ``hf-hub:``).

The model is wrapped (``hf.wrapper.HFVision``) so the rest of the package sees what it sees
for timm: a module taking normalised pixels, attention sites, and an ``Anatomy``
(``hf.anatomy``) read from the model's config and modules, never assumed.
"""

from __future__ import annotations

from typing import Any

HF_PREFIX = "hf:"


def is_hf_name(name: str) -> bool:
    """Whether ``name`` asks for a transformers model (``hf:...``)."""
    return name.startswith(HF_PREFIX)


def load_hf_model(spec: Any) -> Any:
    """Load ``spec`` (a ``ModelSpec`` with an ``hf:`` name); see ``hf.load``."""
    from pytest_vitattn.hf.load import load_hf_model as load

    return load(spec)
