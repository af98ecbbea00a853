"""Offline as a first-class case: a hub cache built in huggingface_hub's own layout loads with
no network; a missing one fails in seconds with what to do."""

from __future__ import annotations

import json
import time

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from pytest_vitattn.errors import ModelLoadError, WeightsError
from pytest_vitattn.models import ModelSpec, load_model

DEIT = "deit_tiny_patch16_224"
DEIT_REPO = "timm/deit_tiny_patch16_224.fb_in1k"
HUB_REPO = "timm/vit_tiny_patch16_224.my_finetune"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _cached_repo(cache, repo_id: str, files: dict) -> None:
    """Lay out ``files`` (name -> writer) as huggingface_hub caches a download."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = folder / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REVISION)
    for name, write in files.items():
        write(snapshot / name)


@pytest.fixture(scope="module")
def deit_state():
    torch.manual_seed(11)
    return timm.create_model(DEIT, pretrained=False).state_dict()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache for this test, an endpoint that refuses connections, online mode."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # Port 9 on localhost refuses at once: a stand-in for "no network" that works anywhere.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    return cache


def test_pretrained_weights_in_the_hub_cache_load_with_no_network(hub_cache, deit_state):
    _cached_repo(hub_cache, DEIT_REPO, {"model.safetensors": lambda p: save_file(deit_state, p)})
    started = time.perf_counter()
    loaded = load_model(ModelSpec(DEIT, "pretrained"))
    assert time.perf_counter() - started < 20
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, deit_state[key]), key
    assert loaded.weights_id == "timm:deit_tiny_patch16_224.fb_in1k"
    assert constants.HF_HUB_OFFLINE is False  # offline only during the load


def test_cached_weights_resampled_to_another_img_size_warn(hub_cache, deit_state):
    from pytest_vitattn.errors import VitattnWarning

    _cached_repo(hub_cache, DEIT_REPO, {"model.safetensors": lambda p: save_file(deit_state, p)})
    with pytest.warns(VitattnWarning) as caught:
        loaded = load_model(ModelSpec(DEIT, "pretrained", kwargs=(("img_size", 384),)))
    assert str(caught[0].message).startswith(
        f"{DEIT_REPO} (model.safetensors) holds position embeddings for a 14x14 patch grid, "
        f"{DEIT} has 24x24: timm resampled them from 14x14 to 24x24"
    )
    assert loaded.data_config["input_size"] == (3, 384, 384)
    with pytest.raises(WeightsError, match="strict_weights is on"):
        load_model(ModelSpec(DEIT, "pretrained", kwargs=(("img_size", 384),), strict=True))


def test_missing_weights_with_no_network_fail_in_seconds_saying_what_to_do(hub_cache):
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec(DEIT, "pretrained"))
    elapsed = time.perf_counter() - started
    assert elapsed < 5, f"took {elapsed:.1f} s"
    message = str(info.value)
    assert message.startswith(
        "could not load pretrained weights for 'deit_tiny_patch16_224': the hub "
    )
    assert "cannot be reached, and they are not in the local hub cache" in message
    assert str(hub_cache) in message and DEIT_REPO in message
    assert "HF_HUB_OFFLINE=1" in message and "--vitattn-weights=PATH" in message


def test_offline_mode_without_the_file_fails_without_trying_the_network(hub_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set, and they are not in"):
        load_model(ModelSpec(DEIT, "pretrained"))
    assert time.perf_counter() - started < 1


def _hub_config(path) -> None:
    config = {
        "architecture": "vit_tiny_patch16_224",
        "num_classes": 3,
        "pretrained_cfg": {
            "input_size": [3, 224, 224],
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "crop_pct": 1.0,
            "interpolation": "bicubic",
            "classifier": "head",
            "label_names": ["cat", "dog", "bird"],
        },
    }
    path.write_text(json.dumps(config))


def test_an_hf_hub_name_loads_from_the_cache(hub_cache):
    torch.manual_seed(2)
    state = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3).state_dict()
    _cached_repo(
        hub_cache,
        HUB_REPO,
        {"config.json": _hub_config, "model.safetensors": lambda p: save_file(state, p)},
    )
    loaded = load_model(ModelSpec(f"hf-hub:{HUB_REPO}", "pretrained"))
    assert torch.equal(loaded.model.head.weight, state["head.weight"])
    assert loaded.label_names == ("cat", "dog", "bird")
    assert tuple(loaded.data_config["mean"]) == (0.5, 0.5, 0.5)


def test_an_hf_hub_name_not_cached_fails_fast(hub_cache):
    with pytest.raises(ModelLoadError, match=r"looked for timm/vit_tiny_patch16_224\.my_finetune"):
        load_model(ModelSpec(f"hf-hub:{HUB_REPO}", "pretrained"))


def test_a_ci_run_with_a_restored_cache_and_hf_hub_offline(
    pytester, tmp_path, monkeypatch, deit_state
):
    """The README's CI recipe, end to end in a fresh process: HF_HUB_CACHE + HF_HUB_OFFLINE=1."""
    cache = tmp_path / "restored-cache"
    _cached_repo(cache, DEIT_REPO, {"model.safetensors": lambda p: save_file(deit_state, p)})
    pytester.makepyfile(
        test_ci="""
        import torch
        import pytest

        @pytest.mark.vitattn(model="deit_tiny_patch16_224")
        def test_pretrained(vitattn, vitattn_model):
            assert vitattn_model.weights_id == "timm:deit_tiny_patch16_224.fb_in1k"
            assert vitattn(torch.rand(3, 224, 224)).grid == (14, 14)

        @pytest.mark.vitattn(model="vit_tiny_patch16_224")
        def test_not_cached(vitattn):
            pass
        """
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    elapsed = time.perf_counter() - started
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*could not load pretrained weights for 'vit_tiny_patch16_224': HF_HUB_OFFLINE is set*",
        ]
    )
    assert elapsed < 120, elapsed  # torch's import dominates; no retries
