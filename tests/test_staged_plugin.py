"""A model whose grid and heads change between layers (PiT) through the whole plugin.

``pit_ti_224`` with seeded random weights saved to files (baselines refuse weights drawn anew
per session): maps on 27x27, 14x14 and 7x7 grids with 2, 4 and 8 heads, mask checks on each
layer's own grid, a baseline written, compared and broken, and the report written with each
layer at its own size and head count.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

MODEL = "pit_ti_224"

PIT = """
from pytest_vitattn import synthetic

SAMPLE = synthetic.make_sample(0, split="test", size=224)
IMAGE, MASK = SAMPLE.image, SAMPLE.mask


def test_layers_and_baseline(vitattn):
    attn = vitattn(IMAGE)
    assert attn.grids == ((27, 27),) * 2 + ((14, 14),) * 6 + ((7, 7),) * 4
    assert attn.heads_per_layer == (2,) * 2 + (4,) * 6 + (8,) * 4
    # Each layer's mask is reduced to that layer's grid (27x27 here, 7x7 below).
    attn.expect(layer=0).mass_in(MASK, at_most=0.9)
    attn.expect(layer=-1, head=5).mass_in(MASK, at_most=0.9)
    attn.matches_baseline()
    attn.expect(layer=2, head=3).matches_baseline()


def test_too_much_asked(vitattn):
    vitattn(IMAGE).expect(layer=-1).mass_in(MASK, at_least=0.99)
"""


def save_weights(path: Path, seed: int) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(MODEL, pretrained=False)
    with torch.no_grad():  # random-init attention is near uniform: sharpen it
        for stage in model.transformers:
            for block in stage.blocks:
                block.attn.qkv.weight.mul_(4.0)
    save_file(model.state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def pit_weights(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pit-weights")
    return {
        key: save_weights(folder / f"{key}.safetensors", seed) for key, seed in (("a", 1), ("b", 2))
    }


@pytest.fixture
def pit_suite(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_pit=PIT)
    return pytester


def run(pytester, weights: Path, *args: str):
    return pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        f"--vitattn-model={MODEL}",
        f"--vitattn-weights={weights}",
        *args,
    )


def test_pit_runs_end_to_end_with_per_layer_grids(pit_suite, pit_weights):
    first = run(
        pit_suite,
        pit_weights["a"],
        "--vitattn-missing-baselines=write",
        "--vitattn-report=out/report.html",
        "--html=out/pytest-html.html",
        "--self-contained-html",
    )
    first.assert_outcomes(passed=1, failed=1)
    # The failing check says which layer and grid it judged.
    first.stdout.fnmatch_lines(
        [
            "E * CLS attention mass in mask is *, expected >= 0.990",
            "E * selection: layer 11 of 0..11, mean of 8 heads",
        ]
    )
    files = sorted((pit_suite.path / "vitattn_baselines").rglob("*.safetensors"))
    assert len(files) == 1
    with safe_open(str(files[0]), "numpy") as handle:
        metadata = json.loads(handle.metadata()["vitattn"])
        flat = handle.get_tensor("maps")
    assert metadata["format_version"] == 3
    assert metadata["layer_shapes"] == ([[2, 27, 27]] * 2 + [[4, 14, 14]] * 6 + [[8, 7, 7]] * 4)
    assert metadata["token_layout"]["grid"] is None
    assert flat.shape == (2 * 2 * 729 + 6 * 4 * 196 + 4 * 8 * 49,)

    # The report: each layer at its own grid and head count, not one pretended grid.
    results = json.loads((pit_suite.path / "out" / "results.json").read_text())
    record = next(r for r in results["records"] if r["nodeid"].endswith("test_layers_and_baseline"))
    assert record["grid"] is None
    assert record["layer_grids"] == [[27, 27]] * 2 + [[14, 14]] * 6 + [[7, 7]] * 4
    assert [m["shape"] for m in record["maps"]] == (
        [[2, 27, 27]] * 2 + [[4, 14, 14]] * 6 + [[8, 7, 7]] * 4
    )
    assert [len(shares) for shares in record["prefix_share"]] == [2] * 2 + [4] * 6 + [8] * 4
    html = (pit_suite.path / "out" / "report.html").read_text()
    assert "12 layers x 2/4/8 heads, each layer on its own grid" in html
    assert "27x27 (layers 0-1), 14x14 (layers 2-7), 7x7 (layers 8-11)" in html
    # heads 2..7 of layer 0 are empty cells, in each of the two records' grids
    assert html.count('class="no-head" title="layer 0 has 2 heads"') == 6 * 2
    assert html.count('class="no-head" title="layer 11 has 8 heads"') == 0

    # pytest-html gets each layer's row at its own grid (an image) and says so.
    page = (pit_suite.path / "out" / "pytest-html.html").read_text()
    assert page.count("layers (rows, each at its own patch grid)") == 2
    assert page.count("mime_type&#34;: &#34;image/png") == 2

    # The baseline holds on the same weights, and other weights drift.
    second = run(pit_suite, pit_weights["a"])
    second.assert_outcomes(passed=1, failed=1)
    third = run(pit_suite, pit_weights["b"], "--vitattn-baseline-model=compare")
    third.assert_outcomes(failed=2)
    third.stdout.fnmatch_lines(
        ["E * attention drifted from its baseline in * of 60 maps (tolerance: js <= 0.02)*"]
    )
