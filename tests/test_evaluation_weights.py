"""``scripts/evaluate_embedded.py --faithful-weights FILE`` scores that file, not the packaged
weights, everywhere it loads the faithful model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import evaluate_embedded as evaluation

from pytest_vitattn import zoo


@pytest.fixture
def other_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    state = timm.create_model(zoo.FAITHFUL_MODEL, pretrained=False).state_dict()
    path = tmp_path / "candidate.safetensors"
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(path))
    monkeypatch.setattr(evaluation, "WEIGHTS_OVERRIDES", {})
    return path


def test_an_override_replaces_the_packaged_weights(other_weights):
    packaged = evaluation.load_model(zoo.FAITHFUL_MODEL).state_dict()
    evaluation.WEIGHTS_OVERRIDES[zoo.FAITHFUL_MODEL] = other_weights
    loaded = evaluation.load_model(zoo.FAITHFUL_MODEL).state_dict()
    expected = load_file(str(other_weights))
    assert all(torch.equal(loaded[k], expected[k].float()) for k in expected)
    assert not torch.equal(loaded["head.weight"], packaged["head.weight"])
    # Other models keep their packaged weights.
    brightness = evaluation.load_model(zoo.BRIGHTNESS_MODEL).state_dict()
    shipped = load_file(str(zoo.weights_path(zoo.BRIGHTNESS_MODEL)))
    assert torch.equal(brightness["head.weight"], shipped["head.weight"].float())


def test_a_missing_file_is_refused_by_name(tmp_path, capsys, other_weights):
    with pytest.raises(SystemExit) as raised:
        evaluation.main(["--faithful-weights", str(tmp_path / "nowhere.safetensors")])
    assert raised.value.code == 2
    assert "no file at" in capsys.readouterr().err


def test_the_tables_of_the_helper_modules_load_through_the_callers_loader():
    """evaluate_embedded runs as __main__, so its helper modules import a second copy of it:
    a loader they looked up themselves would not see ``--faithful-weights``."""
    import last_layer_reading
    import object_free_predictions
    from stress_splits import build_splits

    asked = []

    def load(model_name):
        asked.append(model_name)
        torch.manual_seed(0)
        return timm.create_model(zoo.FAITHFUL_MODEL, pretrained=False)

    names = (zoo.FAITHFUL_MODEL, zoo.BRIGHTNESS_MODEL)
    split = build_splits(4)[0]
    reading = last_layer_reading.reading_table(names, split, load)
    free = object_free_predictions.object_free_table(names, 4, load)
    assert asked == [*names, *names]
    assert all(f"`{name}`" in reading and f"`{name}`" in free for name in names)


def test_another_architectures_file_is_refused_by_name(capsys, other_weights):
    shortcut = zoo.weights_path(zoo.SHORTCUT_MODEL)  # timm's plain patch embedding, no stem
    with pytest.raises(SystemExit) as raised:
        evaluation.main(["--faithful-weights", str(shortcut)])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert f"does not load as {zoo.FAITHFUL_MODEL}" in err and str(shortcut) in err
