"""Baseline files: where they live, what they hold, and how they are read and written.

One file per test and image, ``<dir>/<module>/<test>[<param>]/<image>.safetensors``:

- ``<dir>`` is ``vitattn_baselines/`` beside the test file, with ``<module>`` the file's
  stem; or, with ``--vitattn-baseline-dir``/``vitattn_baseline_dir``, that directory with
  ``<module>`` the test file's path from the rootdir (so equal stems don't collide).
- test classes are folders (``TestBirds/test_wing``); each name keeps ``A-Z a-z 0-9 _ . , =
  + - [ ]``; a name that had other characters, or is longer than 64, is cut and gets 8 hex
  digits of its SHA-1, so different names never share a file.
- ``<image>`` is named by what was probed (``image_key``): the file name and 8 hex digits of
  the SHA-256 of the image's decoded pixels (``images.content_hash``), or ``image-`` and 12
  hex digits for an image passed in memory. Names do not depend on call order; probing the
  same pixels twice in a test uses one file. The file records the test, the image key and
  the full pixel hash; comparing it with another test or other pixels is an error.

A file is safetensors: one float16 tensor ``maps`` (L, H, h, w) of CLS attention, and one
metadata entry ``vitattn`` holding canonical JSON (image hash, model, weights id,
preprocessing, token layout, extraction method, library versions). Format 2 added the image
hash; format 1 files (named by call order) must be re-created with the update flag. A single
entry keeps the bytes identical from run to run (safetensors orders several entries
differently in every process).

Format 3 is written only for models whose grid and head count change between layers (PiT,
MViTv2 ``*_cls``): ``maps`` is then one flat float16 tensor, every layer's (H_l, h_l, w_l)
maps one after the other, and the metadata's ``layer_shapes`` says how to cut it (and
``token_layout.layer_grids`` each layer's grid). Every other model's file stays format 2,
byte for byte as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_vitattn.errors import BaselineError
from pytest_vitattn.versions import package_versions

FORMAT = "pytest-vitattn-baseline"
FORMAT_VERSION = 3  # the newest format read; uniform models' files are written as 2
_UNIFORM_VERSION = 2
SUFFIX = ".safetensors"
DEFAULT_DIR_NAME = "vitattn_baselines"
METADATA_KEY = "vitattn"
_TENSOR = "maps"
_VERSIONED_PACKAGES = ("pytest-vitattn", "torch", "timm", "numpy", "safetensors")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+\-\[\]]+")
_MAX_NAME = 64
_HEADER_LIMIT = 1 << 20


@dataclass(frozen=True)
class Baseline:
    """A baseline read from disk.

    Attributes:
        maps: (L, H, h, w) float32, the stored float16 values; for a model with a grid per
            layer (format 3), a list of L (H_l, h_l, w_l) arrays.
        metadata: what the file says about how the maps were made (see ``describe``).
    """

    maps: np.ndarray | list[np.ndarray]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class BaselineStore:
    """Where the baselines of one test live.

    Attributes:
        directory: the test's own folder of baseline files.
        test: the test's name in its module, e.g. ``"TestBirds::test_wing[large]"``.
        rootpath: paths are shown relative to this (pytest's rootdir).
    """

    directory: Path
    test: str
    rootpath: Path

    @classmethod
    def for_test(
        cls, nodeid: str, test_path: Path, baseline_dir: str | None, rootpath: Path
    ) -> BaselineStore:
        """The store of the test ``nodeid`` defined in ``test_path``.

        Args:
            nodeid: pytest node id, ``"path/to/test_mod.py::TestClass::test_name[param]"``.
            test_path: the test module's file.
            baseline_dir: the configured baseline directory, or None for the default
                ``vitattn_baselines/`` beside the test file.
            rootpath: pytest's rootdir.
        """
        module, _, test = nodeid.partition("::")
        if baseline_dir is None:
            base = test_path.parent / DEFAULT_DIR_NAME / safe_name(test_path.stem)
        else:
            parts = Path(module).with_suffix("").parts
            base = Path(baseline_dir).joinpath(*(safe_name(part) for part in parts))
        return cls(base.joinpath(*(safe_name(name) for name in test.split("::"))), test, rootpath)

    def path_for(self, image_key: str) -> Path:
        """The file of one probed image; ``image_key`` comes from ``image_key``."""
        return self.directory / (safe_name(image_key) + SUFFIX)

    def others_of(self, image_file: str | None, path: Path) -> list[Path]:
        """Baseline files of this test for the same file name but not ``path``: other
        versions of the image, or files named by pytest-vitattn 0.1 (by call order)."""
        if image_file is None or not self.directory.is_dir():
            return []
        stem = safe_name(image_file)
        return sorted(
            other
            for other in self.directory.glob(f"*{SUFFIX}")
            if other != path and other.name.startswith(stem)
        )

    def shown(self, path: Path) -> str:
        """``path`` relative to the rootdir when inside it, for messages and reports."""
        try:
            return path.resolve().relative_to(self.rootpath.resolve()).as_posix()
        except ValueError:
            return str(path)


def safe_name(text: str) -> str:
    """A file or folder name for ``text``: itself when safe, else cleaned plus a digest."""
    cleaned = _UNSAFE.sub("_", text).strip(". ")
    if cleaned == text and 0 < len(text) <= _MAX_NAME:
        return text
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned[: _MAX_NAME - 9]}-{digest}" if cleaned else digest


def image_key(image_file: str | None, image_sha256: str) -> str:
    """The name of an image's baseline within its test, from what was probed.

    ``<file name>-<8 hex digits of the pixels' SHA-256>`` for an image from a file, and
    ``image-<12 hex digits>`` for one passed in memory (array, tensor, PIL image), so that
    names do not depend on the order of the images, and two images never share a baseline.
    """
    if image_file:
        return f"{image_file}-{image_sha256[:8]}"
    return f"image-{image_sha256[:12]}"


def stored_values(maps: np.ndarray | list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """``maps`` as a baseline stores them: rounded to float16, returned as float32 (a list
    of per-layer arrays stays a list)."""
    if isinstance(maps, list):
        return [stored_values(layer) for layer in maps]  # type: ignore[misc]
    return np.asarray(maps, dtype=np.float32).astype(np.float16).astype(np.float32)


# What a baseline stores of the model: enough to tell another model, other weights or
# another query of the same model (a CrossViT branch, PE-core's pooling query) from drift.
# The query keys are stored only when not the default, so older files compare unchanged.
MODEL_IDENTITY_KEYS = ("name", "weights", "weights_id")
QUERY_KEYS = ("branch", "query_source")


def model_identity(model: Mapping[str, Any]) -> dict[str, Any]:
    """The stored part of a record's model description (see ``MODEL_IDENTITY_KEYS``)."""
    identity = {key: model.get(key) for key in MODEL_IDENTITY_KEYS}
    identity.update({key: model[key] for key in QUERY_KEYS if key in model})
    return identity


def describe(record: Any, test: str, image_key: str) -> dict[str, Any]:
    """What a baseline file says about the maps of ``record`` (an ``AttentionRecord``).

    Only deterministic facts go in (no time, host or absolute path), so that the same run
    writes the same bytes.
    """
    if isinstance(record.maps, list):  # a grid per layer (format 3, see the module's doc)
        version = FORMAT_VERSION
        shapes = [[int(size) for size in layer.shape] for layer in record.maps]
        grids: dict[str, Any] = {"grid": None, "layer_grids": [shape[1:] for shape in shapes]}
        shape = [int(sum(np.prod(layer_shape) for layer_shape in shapes))]
    else:
        version, shapes = _UNIFORM_VERSION, None
        grids = {"grid": [int(size) for size in record.maps.shape[-2:]]}
        shape = [int(size) for size in record.maps.shape]
    described = {
        "format": FORMAT,
        "format_version": version,
        "test": test,
        "image": image_key,
        "image_sha256": record.image_sha256,
        "model": model_identity(record.model),
        "device": record.model.get("device"),
        "preprocessing": dict(record.preprocessing),
        "method": record.method,
        "token_layout": {
            "num_prefix_tokens": int(record.num_prefix_tokens),
            "query_index": int(record.query_index),
            **grids,
        },
        "shape": shape,
    }
    if shapes is not None:
        described["layer_shapes"] = shapes
    described["versions"] = library_versions()
    return described


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape the maps."""
    return package_versions(_VERSIONED_PACKAGES)


def encode(maps: np.ndarray, metadata: dict[str, Any]) -> bytes:
    """The bytes of a baseline file: (L, H, h, w) maps as float16 and the metadata.

    The same maps and metadata always give the same bytes.
    """
    from safetensors.numpy import save

    if isinstance(maps, list):  # format 3: the layers one after the other, cut by metadata
        shapes = [list(layer.shape) for layer in maps]
        if metadata.get("layer_shapes") != shapes:
            raise ValueError(f"layer_shapes {metadata.get('layer_shapes')} != maps {shapes}")
        flat = np.concatenate([np.asarray(layer, dtype=np.float32).ravel() for layer in maps])
        array = np.ascontiguousarray(flat.astype("<f2"))
    elif np.asarray(maps).ndim != 4:
        raise ValueError(f"baseline maps must be (L, H, h, w), got shape {np.shape(maps)}")
    else:
        array = np.ascontiguousarray(np.asarray(maps, dtype=np.float32).astype("<f2"))
    text = json.dumps(metadata, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return save({_TENSOR: array}, metadata={METADATA_KEY: text})


def write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, then a rename.

    A reader (or a crashed run) never sees half a file. The file gets the mode of the file
    it replaces, else 0666 less the umask (0644 under the usual umask 022), like any file a
    user writes; ``tempfile.mkstemp`` would make it 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            if path.exists():
                os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read(path: Path, shown: str | None = None) -> Baseline:
    """Read and check a baseline file; messages call it ``shown`` (default: the path).

    Raises:
        BaselineError: the file is unreadable, truncated, corrupt, not a pytest-vitattn
            baseline, or from a newer format; the message names the file and the fix.
    """
    where = shown or str(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BaselineError(f"baseline {where} could not be read: {error}") from None
    metadata = _metadata(data, where)
    if "layer_shapes" in metadata:
        return Baseline(_layer_maps(data, where, metadata), metadata)
    maps = _maps(data, where)
    if list(maps.shape) != metadata.get("shape"):
        raise _corrupt(
            where, f"maps have shape {list(maps.shape)}, metadata says {metadata.get('shape')}"
        )
    return Baseline(maps, metadata)


def _metadata(data: bytes, where: str) -> dict[str, Any]:
    # The safetensors header: 8 bytes of little-endian length, then that much JSON.
    if len(data) < 8:
        raise _corrupt(where, f"the file has only {len(data)} bytes")
    length = int.from_bytes(data[:8], "little")
    if not 0 < length <= min(_HEADER_LIMIT, len(data) - 8):
        raise _corrupt(where, "the safetensors header is truncated or invalid")
    try:
        header = json.loads(data[8 : 8 + length])
        entry = (header.get("__metadata__") or {}).get(METADATA_KEY)
    except (ValueError, AttributeError):
        raise _corrupt(where, "the safetensors header is not valid JSON") from None
    if entry is None:
        raise BaselineError(
            f"{where} is a safetensors file but not a pytest-vitattn baseline (no "
            f"'{METADATA_KEY}' metadata); move it out of the baseline directory"
        )
    try:
        metadata = json.loads(entry)
    except ValueError:
        raise _corrupt(where, "its metadata is not valid JSON") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise _corrupt(where, f"its metadata does not describe a {FORMAT}")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BaselineError(
            f"baseline {where} has format version {version!r}; this pytest-vitattn reads "
            f"version {FORMAT_VERSION}: upgrade pytest-vitattn, or re-create the baseline "
            "with --vitattn-update-baselines"
        )
    return metadata


def _maps(data: bytes, where: str) -> np.ndarray:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as error:
        raise _corrupt(where, f"safetensors could not read it ({error})") from None
    maps = tensors.get(_TENSOR)
    if maps is None or maps.dtype != np.float16 or maps.ndim != 4:
        raise _corrupt(where, f"it has no (L, H, h, w) float16 tensor {_TENSOR!r}")
    maps = maps.astype(np.float32)
    sums = maps.reshape(*maps.shape[:2], -1).sum(axis=-1)
    if not np.isfinite(maps).all() or (maps < 0).any() or (sums <= 0).any():
        raise _corrupt(where, "its maps are not non-negative finite attention")
    return maps


def _layer_maps(data: bytes, where: str, metadata: dict[str, Any]) -> list[np.ndarray]:
    """A format 3 file's flat tensor cut into its layers' (H_l, h_l, w_l) maps."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    shapes = metadata["layer_shapes"]
    valid = isinstance(shapes, list) and all(
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(size, int) and size > 0 for size in shape)
        for shape in shapes
    )
    if not valid or not shapes:
        raise _corrupt(where, f"its layer_shapes {shapes!r} are not a list of [H, h, w]")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as error:
        raise _corrupt(where, f"safetensors could not read it ({error})") from None
    flat = tensors.get(_TENSOR)
    sizes = [int(np.prod(shape)) for shape in shapes]
    if flat is None or flat.dtype != np.float16 or flat.ndim != 1 or flat.size != sum(sizes):
        raise _corrupt(
            where,
            f"it has no flat float16 tensor {_TENSOR!r} of {sum(sizes)} values for its "
            f"layer_shapes",
        )
    layers = []
    for shape, part in zip(shapes, np.split(flat, np.cumsum(sizes)[:-1]), strict=True):
        maps = part.astype(np.float32).reshape(shape)
        sums = maps.reshape(shape[0], -1).sum(axis=-1)
        if not np.isfinite(maps).all() or (maps < 0).any() or (sums <= 0).any():
            raise _corrupt(where, "its maps are not non-negative finite attention")
        layers.append(maps)
    return layers


def _corrupt(where: str, why: str) -> BaselineError:
    return BaselineError(
        f"baseline {where} is corrupt: {why}. It was left untouched; restore it from version "
        "control, or re-create it with --vitattn-update-baselines"
    )
