"""The shipped weights record how they were trained; the training script's defaults must be
that recipe, so that ``python scripts/train_embedded.py`` retrains what ships."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from pytest_vitattn import zoo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import train_embedded


def shipped_recipe(model_name: str) -> dict:
    with safe_open(str(zoo.weights_path(model_name)), "pt") as handle:
        return json.loads(handle.metadata()["recipe"])


def default_runs() -> dict[str, train_embedded.TrainConfig]:
    return {run.model_name: run for run in train_embedded.configs(train_embedded.parse_args([]))}


def test_the_default_command_is_the_shipped_faithful_models_recipe():
    run = default_runs()[zoo.FAITHFUL_MODEL]
    assert json.loads(train_embedded.recipe(run)) == shipped_recipe(zoo.FAITHFUL_MODEL)


def test_the_default_command_is_the_shipped_shortcut_models_recipe():
    shipped = shipped_recipe(zoo.SHORTCUT_MODEL)
    ours = json.loads(train_embedded.recipe(default_runs()[zoo.SHORTCUT_MODEL]))
    # Fields the 0.1 script did not have yet take their defaults, which 0.1 used.
    assert {key: ours[key] for key in shipped} == shipped


@pytest.mark.parametrize("flag", ["--faithful-lr=1e-3", "--faithful-steps=10"])
def test_another_argument_is_another_recipe(flag):
    run = default_runs()[zoo.FAITHFUL_MODEL]
    changed = {r.model_name: r for r in train_embedded.configs(train_embedded.parse_args([flag]))}
    assert train_embedded.recipe(changed[zoo.FAITHFUL_MODEL]) != train_embedded.recipe(run)
