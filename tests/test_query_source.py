"""The query_source setting: PE-core's CLS token (the default) or its attention-pooling query.

PE-core (timm ``Eva`` with ``global_pool='map'``) has a CLS token in every block and an
``AttentionPoolLatent`` whose one latent query attends over every final token, the CLS token
included (timm's ``Eva.pool`` hands the pool all tokens; ``VisionTransformer.pool`` drops the
prefix unless ``pool_include_prefix``). The pooling query's rows are checked against the
independent reference (``family_reference``), and its maps against the reference rows with
the CLS column dropped and the rest renormalised.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from family_reference import batch, create, reference_rows

from pytest_vitattn.errors import UnsupportedModelError
from pytest_vitattn.extract import describe, extract_cls_attention
from pytest_vitattn.extract.catalog import FamilyCase
from pytest_vitattn.extract.describe import QUERY_SOURCES
from pytest_vitattn.maps import patch_maps
from pytest_vitattn.options import QUERY_SOURCES as SETTING_VALUES

PE_CORE = "vit_pe_core_tiny_patch16_384"
TINY = FamilyCase(PE_CORE, "", "", "", PE_CORE, {"img_size": 64, "depth": 2})


@pytest.fixture(scope="module")
def pe_core():
    return create(TINY), batch(TINY)


def test_pool_rows_and_maps_equal_the_reference_on_both_paths(pe_core):
    model, pixels = pe_core
    anatomy = describe(model, query_source="pool")
    assert anatomy.family == "map-pool"
    assert [site.module_path for site in anatomy.sites] == ["attn_pool"]
    reference = reference_rows(model, pixels, 0, anatomy=anatomy)
    # (B, 1 layer, 8 heads, 1 CLS + 4x4 patches): the pool saw the CLS token too.
    assert reference.shape == (2, 1, 8, 17)
    expected_maps = reference[..., 1:] / reference[..., 1:].sum(dim=-1, keepdim=True)
    for method in ("fast", "fx"):
        extraction = extract_cls_attention(
            model, pixels, method=method, anatomy=anatomy, query_index=0, rollout_fusion=None
        )
        assert extraction.method == method
        assert extraction.layout.num_prefix_tokens == 1
        assert extraction.layout.grid == (4, 4)
        torch.testing.assert_close(extraction.rows, reference, atol=1e-6, rtol=0)
        maps = patch_maps(extraction.rows, extraction.layout.num_prefix_tokens, (4, 4))
        torch.testing.assert_close(maps, expected_maps.reshape(2, 1, 8, 4, 4), atol=1e-6, rtol=0)


def test_pool_reads_another_query_than_the_cls_default(pe_core):
    model, pixels = pe_core
    cls = extract_cls_attention(model, pixels, anatomy=describe(model, query_source="cls"))
    auto = extract_cls_attention(model, pixels, anatomy=describe(model))
    pool = extract_cls_attention(model, pixels, anatomy=describe(model, query_source="pool"))
    # The default is the CLS token: byte-identical to query_source='cls', every block.
    assert describe(model) == describe(model, query_source="cls")
    assert torch.equal(cls.rows, auto.rows)
    assert cls.rows.shape == (2, 2, 3, 17)  # 2 blocks x 3 heads
    torch.testing.assert_close(cls.rows, reference_rows(model, pixels, 0), atol=1e-6, rtol=0)
    assert pool.rows.shape == (2, 1, 8, 17)  # the pool's 1 layer x 8 heads
    assert auto.rollout is not None and pool.rollout is None


def test_pool_is_refused_on_a_model_without_a_pooling_query():
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    with pytest.raises(UnsupportedModelError) as error:
        describe(model, query_source="pool")
    message = str(error.value)
    assert "query_source='pool' was asked for, but VisionTransformer has no attention-pooling" in (
        message
    )
    assert "it has a CLS token" in message and "'cls'" in message


def test_cls_is_refused_on_a_map_only_model():
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, class_token=False, global_pool="map"
    )
    assert describe(model).family == "map-pool"  # auto reads its pooling query
    with pytest.raises(UnsupportedModelError) as error:
        describe(model, query_source="cls")
    message = str(error.value)
    assert "query_source='cls' was asked for, but VisionTransformer has no CLS token" in message
    assert "an attention-pooling query (AttentionPoolLatent)" in message
    assert "'pool'" in message


def test_unknown_query_source_is_refused_and_the_setting_offers_the_same_values():
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    with pytest.raises(ValueError, match="query_source='latent' is not one of auto, cls, pool"):
        describe(model, query_source="latent")
    assert SETTING_VALUES == QUERY_SOURCES


# --- through the plugin --------------------------------------------------------------------

SUITE = """
import numpy as np
import pytest

IMAGE = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
MASK = np.zeros((96, 96), dtype=bool)
MASK[24:72, 24:72] = True


@pytest.mark.vitattn(query_source="pool")
def test_marker_pool(vitattn):
    attn = vitattn(IMAGE)
    print("SHAPE marker", attn.num_layers, attn.num_heads, attn.grid)
    attn.expect(layer=-1).mass_in(MASK, at_most=0.99)


def test_from_the_command_line(vitattn):
    attn = vitattn(IMAGE)
    print("SHAPE cli", attn.num_layers, attn.num_heads, attn.grid)
    attn.expect(layer=-1).mass_in(MASK, at_least=0.99)
"""


@pytest.fixture(scope="module")
def pe_core_weights(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = timm.create_model(PE_CORE, pretrained=False)
    path = tmp_path_factory.mktemp("pe-core") / "pe_core.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def run(pytester, weights: Path, *args: str):
    return pytester.runpytest(
        "-s",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "-p",
        "no:randomly",
        f"--vitattn-model={PE_CORE}",
        f"--vitattn-weights={weights}",
        "--vitattn-report=out/report.html",
        *args,
    )


def records(pytester) -> dict[str, dict]:
    results = json.loads((pytester.path / "out" / "results.json").read_text())
    return {record["nodeid"].rsplit("::", 1)[-1]: record for record in results["records"]}


def test_marker_and_command_line_read_the_pooling_query(pytester, monkeypatch, pe_core_weights):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_pe_core=SUITE)

    # Default: the CLS token, 12 blocks x 3 heads; the marker reads the pool (1 layer x 8
    # heads: timm's attn_pool_num_heads for PE-core tiny).
    result = run(pytester, pe_core_weights)
    result.stdout.fnmatch_lines(["*SHAPE marker 1 8 (24, 24)*", "*SHAPE cli 12 3 (24, 24)*"])
    result.assert_outcomes(passed=1, failed=1)  # at_least=0.99 fails on a 1/4 mask
    found = records(pytester)
    assert found["test_marker_pool"]["model"]["query_source"] == "pool"
    assert "query_source" not in found["test_from_the_command_line"]["model"]
    assert [check["passed"] for check in found["test_marker_pool"]["checks"]] == [True]
    assert "query_source=pool" in (pytester.path / "out" / "report.html").read_text()

    # The command line sets it for every test.
    result = run(pytester, pe_core_weights, "--vitattn-query-source=pool")
    result.stdout.fnmatch_lines(["*SHAPE marker 1 8 (24, 24)*", "*SHAPE cli 1 8 (24, 24)*"])
    result.assert_outcomes(passed=1, failed=1)
    found = records(pytester)
    assert found["test_from_the_command_line"]["model"]["query_source"] == "pool"
    assert [check["passed"] for check in found["test_from_the_command_line"]["checks"]] == [False]


def test_query_source_value_is_checked(pytester):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--vitattn-query-source=latent")
    result.stderr.fnmatch_lines(
        ["*argument --vitattn-query-source: 'latent' is not a query source: use auto, cls or pool*"]
    )


def test_ini_sets_the_query_source(pytester, pe_core_weights):
    pytester.makeini("[pytest]\nvitattn_query_source = pool\n")
    pytester.makepyfile(
        test_ini="""
import numpy as np

def test_ini(vitattn):
    attn = vitattn(np.full((96, 96, 3), 128, dtype=np.uint8))
    print("SHAPE ini", attn.num_layers)
"""
    )
    result = run(pytester, pe_core_weights)
    result.stdout.fnmatch_lines(["*SHAPE ini 1*"])
    result.assert_outcomes(passed=1)


BASELINE_SUITE = """
import numpy as np

IMAGE = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)


def test_every_map(vitattn):
    vitattn(IMAGE).matches_baseline()
"""


def test_a_baseline_of_the_cls_query_is_not_compared_with_the_pooling_query(
    pytester, monkeypatch, pe_core_weights
):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_pe_baseline=BASELINE_SUITE)
    run(pytester, pe_core_weights, "--vitattn-missing-baselines=write").assert_outcomes(passed=1)
    run(pytester, pe_core_weights).assert_outcomes(passed=1)

    result = run(pytester, pe_core_weights, "--vitattn-query-source=pool")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*was made under other conditions, so its maps cannot be compared:*",
            "*query_source: baseline 'auto', this run 'pool' (another query of the model)*",
        ]
    )
    # Written under the pooling query, the file says so; the default query's file did not.
    run(pytester, pe_core_weights, "--vitattn-query-source=pool", "--vitattn-update-baselines")
    (stored,) = list((pytester.path / "vitattn_baselines").rglob("*.safetensors"))
    from safetensors import safe_open

    with safe_open(str(stored), "pt") as handle:
        metadata = json.loads(next(iter(handle.metadata().values())))
    assert metadata["model"]["query_source"] == "pool"
    run(pytester, pe_core_weights, "--vitattn-query-source=pool").assert_outcomes(passed=1)
