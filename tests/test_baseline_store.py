"""Baseline files without pytest in the loop: names, format, atomic writes, bad files, policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from pytest_vitattn import baseline
from pytest_vitattn.baseline import BaselineStore, safe_name
from pytest_vitattn.errors import BaselineError
from pytest_vitattn.policy import BaselinePolicy

METADATA = {
    "format": baseline.FORMAT,
    "format_version": baseline.FORMAT_VERSION,
    "test": "test_bird",
    "image": "bird.png",
    "shape": [2, 3, 4, 5],
}


def attention_maps(shape=(2, 3, 4, 5), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    maps = rng.random(shape).astype(np.float32)
    return maps / maps.sum(axis=(-2, -1), keepdims=True)


@pytest.fixture
def stored(tmp_path) -> Path:
    path = tmp_path / "bird.png.safetensors"
    baseline.write(path, baseline.encode(attention_maps(), METADATA))
    return path


def test_safe_names_stay_readable_and_unsafe_ones_get_a_digest():
    assert safe_name("test_bird[large-1]") == "test_bird[large-1]"
    assert safe_name("bird.png") == "bird.png"
    spaced, underscored = safe_name("a b"), safe_name("a_b")
    assert underscored == "a_b"
    assert spaced.startswith("a_b-") and len(spaced) == len("a_b-") + 8
    assert safe_name("x/y") != safe_name("x\\y")
    assert ".." not in safe_name("..")


def test_long_names_are_cut_to_64_characters_and_stay_distinct():
    first, second = safe_name("test_" + "a" * 100), safe_name("test_" + "a" * 99 + "b")
    assert len(first) == len(second) == 64
    assert first != second


def test_default_store_is_beside_the_test_file(tmp_path):
    store = BaselineStore.for_test(
        "tests/test_birds.py::TestWings::test_span[large]",
        tmp_path / "tests" / "test_birds.py",
        None,
        tmp_path,
    )
    assert store.directory == (
        tmp_path / "tests" / "vitattn_baselines" / "test_birds" / "TestWings" / "test_span[large]"
    )
    assert store.test == "TestWings::test_span[large]"
    assert store.path_for("bird.png").name == "bird.png.safetensors"
    key = baseline.image_key("bird.png", "0123456789abcdef" * 4)
    assert store.path_for(key).name == "bird.png-01234567.safetensors"
    assert baseline.image_key(None, "0123456789abcdef" * 4) == "image-0123456789ab"
    assert store.shown(store.path_for("bird.png")) == (
        "tests/vitattn_baselines/test_birds/TestWings/test_span[large]/bird.png.safetensors"
    )


def test_a_configured_directory_keeps_the_module_path_so_equal_stems_do_not_collide(tmp_path):
    first = BaselineStore.for_test("a/test_x.py::test_y", tmp_path / "a/test_x.py", "/b", tmp_path)
    second = BaselineStore.for_test("c/test_x.py::test_y", tmp_path / "c/test_x.py", "/b", tmp_path)
    assert first.directory == Path("/b/a/test_x/test_y")
    assert second.directory == Path("/b/c/test_x/test_y")


def test_encode_is_deterministic_within_and_across_processes():
    maps = attention_maps()
    data = baseline.encode(maps, METADATA)
    assert data == baseline.encode(maps.copy(), dict(reversed(list(METADATA.items()))))
    script = (
        "import sys, numpy as np; from pytest_vitattn import baseline; "
        "rng = np.random.default_rng(0); maps = rng.random((2, 3, 4, 5)).astype(np.float32); "
        "maps /= maps.sum(axis=(-2, -1), keepdims=True); "
        f"sys.stdout.buffer.write(baseline.encode(maps, {METADATA!r}))"
    )
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    assert other.stdout == data


def test_a_baseline_reads_back_as_float16_values_with_its_metadata(stored):
    read = baseline.read(stored)
    assert read.maps.dtype == np.float32
    np.testing.assert_array_equal(read.maps, baseline.stored_values(attention_maps()))
    assert read.metadata == METADATA
    np.testing.assert_allclose(read.maps, attention_maps(), rtol=1e-3)


def test_writing_is_atomic_and_a_failed_write_keeps_the_old_file(stored):
    before = stored.read_bytes()
    with pytest.raises(TypeError):
        baseline.write(stored, "not bytes")  # fails inside the temporary file
    assert stored.read_bytes() == before
    assert [path.name for path in stored.parent.iterdir()] == [stored.name]


@pytest.mark.parametrize("keep", [0, 5, 100, -10])
def test_a_truncated_baseline_is_a_clear_error_and_stays_untouched(stored, keep):
    data = stored.read_bytes()
    truncated = data[:keep]
    stored.write_bytes(truncated)
    with pytest.raises(BaselineError, match=r"is corrupt: .* It was left untouched") as error:
        baseline.read(stored)
    assert str(stored) in str(error.value)
    assert "--vitattn-update-baselines" in str(error.value)
    assert stored.read_bytes() == truncated


def test_a_safetensors_file_that_is_not_a_baseline_says_so(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(save({"head.weight": np.zeros((2, 2), np.float32)}))
    with pytest.raises(BaselineError, match=r"not a pytest-vitattn baseline .* move it out"):
        baseline.read(path)


def test_a_baseline_from_a_newer_format_asks_for_an_upgrade(tmp_path):
    path = tmp_path / "x.safetensors"
    newer = {**METADATA, "format_version": baseline.FORMAT_VERSION + 1}
    path.write_bytes(baseline.encode(attention_maps(), newer))
    newest = baseline.FORMAT_VERSION
    with pytest.raises(
        BaselineError, match=rf"format version {newest + 1}; .* upgrade pytest-vitattn"
    ):
        baseline.read(path)


def test_baseline_maps_must_be_attention(tmp_path):
    path = tmp_path / "x.safetensors"
    maps = attention_maps()
    maps[0, 0, 0, 0] = np.nan
    path.write_bytes(baseline.encode(maps, METADATA))
    with pytest.raises(BaselineError, match="maps are not non-negative finite attention"):
        baseline.read(path)


def test_metadata_that_disagrees_with_the_maps_is_corrupt(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(baseline.encode(attention_maps(), {**METADATA, "shape": [9, 9, 9, 9]}))
    with pytest.raises(BaselineError, match=r"maps have shape \[2, 3, 4, 5\], metadata says"):
        baseline.read(path)


def test_a_single_metadata_entry_holds_canonical_json(stored):
    data = stored.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert list(header["__metadata__"]) == [baseline.METADATA_KEY]
    text = header["__metadata__"][baseline.METADATA_KEY]
    assert text == json.dumps(METADATA, sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize(
    ("update", "missing", "environ", "expected"),
    [
        (False, "auto", {}, "write-and-fail"),
        (False, "auto", {"CI": "true"}, "fail"),
        (False, "auto", {"CI": "1"}, "fail"),
        (False, "auto", {"CI": "false"}, "write-and-fail"),
        (False, "auto", {"CI": ""}, "write-and-fail"),
        (False, "write", {"CI": "true"}, "write"),
        (False, "fail", {}, "fail"),
        (True, "auto", {"CI": "true"}, "fail"),
    ],
)
def test_missing_baselines_fail_in_ci_and_are_written_elsewhere(update, missing, environ, expected):
    policy = BaselinePolicy.resolve(update, missing, environ)
    assert policy.missing == expected
    assert policy.update is update


def test_updating_while_missing_baselines_must_fail_is_a_contradiction():
    with pytest.raises(ValueError, match="--vitattn-update-baselines writes every baseline"):
        BaselinePolicy.resolve(True, "fail", {})
