"""Loading models: names, local weights, and every bad input with the error a user needs."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from pytest_vitattn.errors import (
    DeviceError,
    ModelLoadError,
    UnknownModelError,
    UnsupportedModelError,
    WeightsError,
)
from pytest_vitattn.models import ModelCache, ModelSpec, load_model

TINY = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def tiny_state(tmp_path_factory) -> dict:
    import timm

    torch.manual_seed(1)
    return timm.create_model(TINY, pretrained=False).state_dict()


def test_a_local_safetensors_file_loads_through_timm(tmp_path, tiny_state):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_state, str(path))
    loaded = load_model(ModelSpec(TINY, str(path)))
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, tiny_state[key]), key
    assert loaded.weights_id.startswith("file:") and len(loaded.weights_id) == 17
    assert loaded.describe()["weights"] == "tiny.safetensors"
    assert not loaded.model.training


def test_a_torch_state_dict_file_loads_with_weights_only(tmp_path, tiny_state):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_state, path)
    loaded = load_model(ModelSpec(TINY, str(path)))
    assert torch.equal(loaded.model.cls_token, tiny_state["cls_token"])


def test_an_unknown_name_suggests_close_names():
    with pytest.raises(UnknownModelError) as info:
        load_model(ModelSpec("deit_tiny_patch16_22", "random"))
    message = str(info.value)
    assert "timm has no model named 'deit_tiny_patch16_22'" in message
    assert "Did you mean: deit_tiny_patch16_224" in message


def test_a_missing_weights_file_names_the_path(tmp_path):
    with pytest.raises(WeightsError, match=r"weights file not found: .*absent\.safetensors"):
        load_model(ModelSpec(TINY, str(tmp_path / "absent.safetensors")))


def test_a_corrupt_safetensors_file_is_a_clear_error(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match=r"corrupt\.safetensors is corrupt or unreadable"):
        load_model(ModelSpec(TINY, str(path)))


def test_a_truncated_torch_file_is_a_clear_error(tmp_path, tiny_state):
    path = tmp_path / "truncated.pth"
    torch.save(tiny_state, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=r"truncated\.pth"):
        load_model(ModelSpec(TINY, str(path)))


class _RunsCodeWhenUnpickled:
    def __init__(self, marker_path: str) -> None:
        self.marker_path = marker_path

    def __reduce__(self):
        return (open, (self.marker_path, "w"))


def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with path.open("wb") as handle:
        pickle.dump({"weights": _RunsCodeWhenUnpickled(str(marker))}, handle, protocol=2)
    with pytest.raises(WeightsError, match=r"refused to load evil\.pth: .*arbitrary code"):
        load_model(ModelSpec(TINY, str(path)))
    assert not marker.exists()


def test_weights_of_another_architecture_do_not_fit(tmp_path):
    import timm

    path = tmp_path / "small.safetensors"
    save_file(timm.create_model("vit_small_patch16_224").state_dict(), str(path))
    with pytest.raises(WeightsError, match=r"weights in small\.safetensors do not fit "):
        load_model(ModelSpec(TINY, str(path)))


def test_an_unknown_weights_suffix_is_refused(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("hello")
    with pytest.raises(WeightsError, match=r"suffix '\.txt'; expected one of \.safetensors"):
        load_model(ModelSpec(TINY, str(path)))


def test_hub_weights_without_a_network_say_how_to_use_a_local_file(monkeypatch):
    import huggingface_hub.constants

    # Offline mode fails at once, as a machine with no network does after its timeouts.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"--vitattn-weights=PATH"):
        load_model(ModelSpec(TINY, "pretrained"))


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("resnet18", "has no transformer blocks with token attention"),
        ("swin_tiny_patch4_window7_224", "SwinTransformer has no transformer blocks"),
        ("vit_base_patch16_gap_224", "has no CLS token"),
    ],
)
def test_models_without_cls_token_attention_are_refused(name, reason):
    with pytest.raises(UnsupportedModelError, match=reason):
        load_model(ModelSpec(name, "random"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available on this machine")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(DeviceError, match=r"CUDA is not available here .* use --vitattn-device=cpu"):
        load_model(ModelSpec(TINY, "random", "cuda"))


def test_the_cache_loads_each_spec_once_and_remembers_failures():
    cache = ModelCache()
    spec = ModelSpec(TINY, "random")
    assert cache.get(spec) is cache.get(spec)
    bad = ModelSpec("no_such_model_at_all", "random")
    with pytest.raises(UnknownModelError) as first:
        cache.get(bad)
    with pytest.raises(UnknownModelError) as second:
        cache.get(bad)
    assert first.value is second.value
