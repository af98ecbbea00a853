"""Pretrained weights from the Hugging Face hub cache: offline first, failing fast.

timm fetches pretrained weights with ``huggingface_hub``, which retries for tens of seconds
when the hub cannot be reached. Here the local cache is looked at first: when every file a
model needs is there, timm loads it with the hub switched to offline mode (no network at
all); when a file is missing and the hub is unreachable (or ``HF_HUB_OFFLINE`` is set), the
load stops within seconds and the error says what to do.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from pytest_vitattn.errors import ModelLoadError

HF_HUB_PREFIXES = ("hf-hub:", "hf_hub:")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
REACH_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class HubSource:
    """Where timm would download a model's files from.

    Attributes:
        repo_id: the hub repository, e.g. ``"timm/deit_tiny_patch16_224.fb_in1k"``.
        revision: a branch, tag or commit, or None for ``main``.
        needs_config: ``hf-hub:`` names read ``config.json`` as well as the weights.
    """

    repo_id: str
    revision: str | None
    needs_config: bool


def is_hf_hub_name(name: str) -> bool:
    """Whether ``name`` is timm's ``hf-hub:org/repo`` form (not a registered model name)."""
    return name.startswith(HF_HUB_PREFIXES)


def hub_source(name: str, timm: Any) -> HubSource | None:
    """The hub repository of ``name``'s pretrained weights, or None when timm has none."""
    if is_hf_hub_name(name):
        repo, _, revision = name.split(":", 1)[1].partition("@")
        return HubSource(repo, revision or None, needs_config=True)
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # an unknown tag: timm says so itself when it creates the model
        cfg = None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    repo, _, revision = str(hub_id).partition("@")
    return HubSource(repo, revision or None, needs_config=False)


def cache_dir() -> str:
    """The hub cache ``huggingface_hub`` reads (``HF_HUB_CACHE``, ``HF_HOME``/hub, or default)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (as huggingface_hub read it) forbids network access."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cached_files(source: HubSource) -> dict[str, str] | None:
    """The cached paths of every file ``source`` needs, or None when one is missing."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> str | None:
        path = try_to_load_from_cache(
            source.repo_id, filename, cache_dir=cache_dir(), revision=source.revision
        )
        return path if isinstance(path, str) else None

    found: dict[str, str] = {}
    if source.needs_config:
        config = cached(CONFIG_FILE)
        if config is None:
            return None
        found[CONFIG_FILE] = config
    for filename in WEIGHT_FILES:
        path = cached(filename)
        if path is not None:
            found[filename] = path
            return found
    return None


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """huggingface_hub in offline mode for the block (as ``HF_HUB_OFFLINE=1``), then restored."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def hub_reachable(timeout: float = REACH_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` seconds.

    Name resolution runs in a thread so a resolver that hangs cannot stall the caller.
    """
    from huggingface_hub import constants

    endpoint = urlparse(str(constants.ENDPOINT))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def unreachable_error(name: str, source: HubSource, why: str) -> ModelLoadError:
    """The error for pretrained weights that are neither cached nor downloadable."""
    return ModelLoadError(
        f"could not load pretrained weights for {name!r}: {why}, and they are not in the "
        f"local hub cache {cache_dir()} (looked for {source.repo_id}).\n"
        "To run offline: download them once where the hub is reachable (or restore the cache "
        "in CI) and set HF_HUB_OFFLINE=1 (HF_HUB_CACHE or HF_HOME say where the cache is); or "
        "pass a weights file with --vitattn-weights=PATH (vitattn_weights ini key, "
        "@pytest.mark.vitattn(weights=...)); for plumbing tests use weights='random'."
    )


def hub_state() -> str:
    """Why the hub was not used: offline mode or no connection, for error messages."""
    if is_offline():
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return f"the hub ({endpoint}) cannot be reached"
