"""The cascading randomisation check (Adebayo et al. 2018): does a map depend on the weights?

Real models throughout: the shipped trained models must pass, the same architecture with
random weights must fail, through the fixture as a user runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from family_reference import cls_reading_blocks

import pytest_vitattn.zoo as zoo
from pytest_vitattn import sanity
from pytest_vitattn.errors import AttentionValueError
from pytest_vitattn.models import ModelSpec, load_model
from pytest_vitattn.probe import Probe

EXAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "example_suite" / "data" / "circle_1.png"


def test_moved_share_is_zero_for_the_same_map_and_one_for_disjoint_maps():
    uniform = torch.full((4, 4), 1 / 16)
    assert sanity.moved_share(uniform, uniform) == 0.0
    left, right = torch.zeros(4, 4), torch.zeros(4, 4)
    left[:, :2], right[:, 2:] = 1 / 8, 1 / 8
    assert sanity.moved_share(left, right) == pytest.approx(1.0)
    half = 0.5 * left + 0.5 * uniform
    assert sanity.moved_share(left, half) == pytest.approx(0.25)


def test_rank_correlation_follows_the_order_of_the_patches():
    values = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    assert sanity.rank_correlation(values, values * 3 + 1) == pytest.approx(1.0)
    assert sanity.rank_correlation(values, -values) == pytest.approx(-1.0)
    assert sanity.rank_correlation(values, torch.ones(4, 4)) == 0.0
    # Ties take their mean rank: [0, 0, 1, 2] ranks as [0.5, 0.5, 2, 3].
    tied = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    expected = np.corrcoef([0.5, 0.5, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0])[0, 1]
    ordered = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert sanity.rank_correlation(tied, ordered) == pytest.approx(expected)


@pytest.fixture(scope="module")
def trained():
    return timm.create_model(zoo.BRIGHTNESS_MODEL, pretrained=True).eval()


def test_randomised_copy_changes_only_the_blocks_from_first_block_up(trained):
    before = {name: value.clone() for name, value in trained.state_dict().items()}
    copy = sanity.randomised_copy(trained, 4)
    for name, value in trained.state_dict().items():
        assert torch.equal(value, before[name]), f"the original changed: {name}"
    randomised = copy.state_dict()
    for name, value in before.items():
        changed = not torch.equal(value, randomised[name])
        above = name.startswith(("blocks.4.", "blocks.5.", "norm.", "head."))
        if name.endswith("weight") and not name.startswith(("norm.",)) and above:
            assert changed, f"{name} was not re-initialised"
        if not above:
            assert not changed, f"{name} changed although it is below block 4"
    # timm's ViT initialisation: truncated normal weights (std 0.02), zero biases.
    qkv = randomised["blocks.5.attn.qkv.weight"]
    assert qkv.abs().max() <= 0.04 and 0.015 < float(qkv.std()) < 0.02
    assert torch.count_nonzero(randomised["blocks.5.attn.qkv.bias"]) == 0


def test_randomised_copies_are_cached_and_seeded(trained):
    assert sanity.randomised_copy(trained, 5) is sanity.randomised_copy(trained, 5)
    other_seed = sanity.randomised_copy(trained, 5, seed=1)
    assert not torch.equal(
        other_seed.blocks[5].attn.qkv.weight,
        sanity.randomised_copy(trained, 5).blocks[5].attn.qkv.weight,
    )


def test_randomised_copy_refuses_a_block_out_of_range(trained):
    with pytest.raises(ValueError, match=r"first_block 6 is not in 0\.\.5"):
        sanity.randomised_copy(trained, 6)


def test_a_trained_map_moves_and_a_random_one_does_not():
    trained_probe = Probe(load_model(ModelSpec(zoo.BRIGHTNESS_MODEL)))
    random_probe = Probe(load_model(ModelSpec(zoo.BRIGHTNESS_MODEL, "random")))
    moved_trained = trained_probe(EXAMPLE_IMAGE).expect(layer=-1).depends_on_weights()
    assert moved_trained >= 0.5
    with pytest.raises(AssertionError) as failure:
        random_probe(EXAMPLE_IMAGE).expect(layer=-1).depends_on_weights()
    message = str(failure.value)
    assert message.startswith("share of attention moved by re-initialising the top blocks is 0.0")
    assert "expected >= 0.250" in message
    assert "randomised: block 5 of 0..5 re-initialised (seed 0)" in message
    assert "selection: layer 5 of 0..5, mean of 3 heads" in message
    assert f"model: {zoo.BRIGHTNESS_MODEL} (weights: random" in message


def test_the_randomised_maps_go_into_the_record():
    probe = Probe(load_model(ModelSpec(zoo.BRIGHTNESS_MODEL)))
    attn = probe(EXAMPLE_IMAGE)
    attn.expect(layer=3, head=1).depends_on_weights(blocks=2)
    record = attn.record.randomised
    assert record["first_block"] == 2 and record["num_blocks"] == 6
    assert record["label"] == "blocks 2..5 of 0..5 re-initialised (seed 0)"
    assert record["maps"].shape == attn.maps.shape
    np.testing.assert_allclose(record["maps"].sum(axis=(-2, -1)), 1.0, atol=1e-5)
    # Layers below the re-initialised blocks see the same weights: their maps stay.
    np.testing.assert_allclose(record["maps"][:2], attn.maps[:2].numpy(), atol=1e-5)
    check = attn.record.checks[-1]
    assert check.name == "depends_on_weights" and check.passed
    assert check.details["randomised"] == record["label"]


@pytest.mark.parametrize(
    ("check", "error"),
    [
        (lambda a: a.expect(rollout=True).depends_on_weights(), "check a layer instead"),
        (lambda a: a.expect(layer=1).depends_on_weights(blocks=3), "reaches below block 0"),
        (lambda a: a.expect().depends_on_weights(blocks=0), "blocks must be a positive int"),
        (lambda a: a.expect().depends_on_weights(at_least=1.5), r"at_least=1.5 must be in"),
    ],
    ids=["rollout", "below-block-0", "zero-blocks", "bound-above-1"],
)
def test_unanswerable_requests_are_refused(check, error):
    attn = Probe(load_model(ModelSpec(zoo.BRIGHTNESS_MODEL)))(EXAMPLE_IMAGE)
    with pytest.raises((AttentionValueError, ValueError), match=error):
        check(attn)


SANITY_TESTS = f"""
import pytest

IMAGE = {str(EXAMPLE_IMAGE)!r}

@pytest.mark.vitattn(model={zoo.FAITHFUL_MODEL!r})
def test_trained_faithful(vitattn):
    vitattn(IMAGE).expect(layer=-1).depends_on_weights()

@pytest.mark.vitattn(model={zoo.BRIGHTNESS_MODEL!r})
def test_trained_brightness(vitattn):
    vitattn(IMAGE).expect(layer=-1).depends_on_weights()

@pytest.mark.vitattn(model={zoo.FAITHFUL_MODEL!r}, weights="random")
def test_random_weights(vitattn):
    vitattn(IMAGE).expect(layer=-1).depends_on_weights()
"""


def test_through_the_fixture_trained_models_pass_and_random_weights_fail(pytester):
    pytester.makepyfile(test_sanity_check=SANITY_TESTS)
    result = pytester.runpytest("--vitattn-report=report.html")
    result.assert_outcomes(passed=2, failed=1)
    # The faithful model's local blocks are left out: its last layer is its only one, the
    # last block, and the randomisation still counts (and names) the model's blocks.
    read = cls_reading_blocks(timm.create_model(zoo.FAITHFUL_MODEL))
    last = len(read) - 1
    result.stdout.fnmatch_lines(
        [
            "*share of attention moved by re-initialising the top blocks is 0.0*, "
            "expected >= 0.250",
            "*randomised: block 5 of 0..5 re-initialised (seed 0); rank correlation*",
            f"*selection: layer {last} of 0..{last} (block {read[-1]}), mean of 3 heads",
            f"*model: {zoo.FAITHFUL_MODEL} (weights: random, *",
        ]
    )
    results = json.loads((pytester.path / "results.json").read_text(encoding="utf-8"))
    by_test = {record["nodeid"].split("::")[-1]: record for record in results["records"]}
    for name, passed in (
        ("test_trained_faithful", True),
        ("test_trained_brightness", True),
        ("test_random_weights", False),
    ):
        record = by_test[name]
        (check,) = [c for c in record["checks"] if c["name"] == "depends_on_weights"]
        assert check["passed"] is passed, (name, check["value"])
        layers = len(cls_reading_blocks(timm.create_model(record["model"]["name"])))
        assert record["randomised"]["maps"]["shape"] == [layers, 3, 8, 8]
    html = (pytester.path / "report.html").read_text(encoding="utf-8")
    assert html.count("Cascading randomisation") == 3


def test_the_randomised_maps_survive_the_record_round_trip():
    from pytest_vitattn.records import AttentionRecord

    attn = Probe(load_model(ModelSpec(zoo.BRIGHTNESS_MODEL)))(EXAMPLE_IMAGE)
    attn.expect(layer=-1).depends_on_weights()
    data = json.loads(json.dumps(attn.record.to_dict()))
    restored = AttentionRecord.from_dict(data).randomised
    assert restored["label"] == attn.record.randomised["label"]
    # Stored as float16, like the maps themselves.
    np.testing.assert_allclose(restored["maps"], attn.record.randomised["maps"], atol=1e-3)


def test_a_model_whose_layers_are_not_its_blocks_is_refused():
    """CaiT's read layers are its class-attention blocks, outside ``model.blocks``: the check
    re-initialises ``model.blocks`` and so refuses rather than re-initialise the wrong ones."""
    torch.manual_seed(0)
    cait = load_model(
        ModelSpec("cait_xxs24_224", "random", kwargs=(("depth", 2), ("img_size", 64)))
    )
    attn = Probe(cait, rollout=None)(EXAMPLE_IMAGE)
    with pytest.raises(AttentionValueError, match=r"attention layers outside its blocks .* not"):
        attn.expect(layer=-1).depends_on_weights()
