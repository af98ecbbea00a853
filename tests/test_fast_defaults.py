"""Fast by default: threads only during probes, rollout only when asked, shared probes."""

from __future__ import annotations

import json

import pytest
import torch

from pytest_vitattn.models import ModelSpec, load_model
from pytest_vitattn.probe import Probe
from pytest_vitattn.threads import probe_threads, torch_threads, usable_cores

SHIPPED = "vitattn_tiny_shapes"
# 6 global layers, which rollout chains and a shared probe reads: the shipped default is read
# as one layer (block 5; its local blocks 0-4 are left out) and has no rollout.
GLOBAL_MODEL = "vitattn_tiny_shapes_brightness"


@pytest.fixture(scope="module")
def shipped():
    return load_model(ModelSpec(SHIPPED))


def _count_forwards(loaded) -> list[int]:
    calls: list[int] = []
    loaded.model.register_forward_hook(lambda *_: calls.append(torch.get_num_threads()))
    return calls


def test_auto_threads_are_idle_cores_per_xdist_worker_unless_the_environment_says():
    cores = usable_cores()
    assert probe_threads(None, {}, load=0.0) == cores
    assert probe_threads(None, {}, load=1.0) == cores  # the run's own process
    xdist = {"PYTEST_XDIST_WORKER_COUNT": "2"}
    assert probe_threads(None, xdist, load=2.0) == max(1, cores // 2)
    assert probe_threads(None, {"PYTEST_XDIST_WORKER_COUNT": str(cores * 4)}, load=0) == 1
    # other processes keep the cores busy: one thread, not threads that spin waiting
    assert probe_threads(None, {}, load=cores + 5.0) == 1
    assert probe_threads(None, xdist, load=cores + 5.0) == 1
    assert probe_threads(None, {"OMP_NUM_THREADS": "3"}) is None  # torch already honours it
    assert probe_threads(None, {"MKL_NUM_THREADS": "1"}) is None
    assert probe_threads(2, {"OMP_NUM_THREADS": "3"}, load=9.0) == 2  # the setting wins


def test_threads_are_set_during_the_probe_and_restored_after():
    loaded = load_model(ModelSpec(SHIPPED))
    seen = _count_forwards(loaded)
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 3
    Probe(loaded, threads=wanted)(torch.rand(3, 64, 64))
    assert seen == [wanted]
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_threads_are_restored_when_the_probe_fails():
    loaded = load_model(ModelSpec(SHIPPED))
    before = torch.get_num_threads()

    def fail(*_):
        raise RuntimeError("broken forward")

    loaded.model.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="broken forward"):
        Probe(loaded, threads=before + 1)(torch.rand(3, 64, 64))
    assert torch.get_num_threads() == before


def test_lazy_rollout_costs_nothing_until_asked_and_equals_the_eager_one():
    loaded = load_model(ModelSpec(GLOBAL_MODEL))
    forwards = _count_forwards(loaded)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(4))
    eager = Probe(loaded)(image)
    assert len(forwards) == 1 and eager.rollout_maps is not None

    lazy = Probe(loaded, eager_rollout=False)(image)
    assert len(forwards) == 2
    assert lazy.rollout_maps is None and lazy.record.rollout is None
    torch.testing.assert_close(lazy.maps, eager.maps, rtol=0, atol=1e-6)
    first = lazy.rollout(-1).grid
    assert len(forwards) == 3  # one more forward, on first use only
    lazy.rollout(0)
    lazy.expect(rollout=True)
    assert len(forwards) == 3
    assert torch.equal(lazy.rollout_maps, eager.rollout_maps)
    assert torch.equal(first, eager.rollout_maps[-1])
    assert lazy.record.rollout is not None  # the report shows what was computed


def test_a_lazy_batch_shares_one_rollout_forward():
    loaded = load_model(ModelSpec(GLOBAL_MODEL))
    forwards = _count_forwards(loaded)
    first, second = Probe(loaded, eager_rollout=False)([torch.rand(3, 64, 64)] * 2)
    first.rollout()
    second.rollout()
    assert len(forwards) == 2
    # The same image at two batch positions: equal up to float rounding on the CPU.
    torch.testing.assert_close(first.rollout_maps, second.rollout_maps, rtol=0, atol=1e-6)


def test_the_plugin_computes_rollout_only_for_the_report_or_on_request(pytester):
    pytester.makepyfile(
        test_lazy="""
        import torch

        def test_plain(vitattn, request):
            attn = vitattn(torch.rand(3, 64, 64))
            report = request.config.getoption("vitattn_report")
            assert (attn.rollout_maps is not None) == (report is not None)

        def test_asks(vitattn):
            attn = vitattn(torch.rand(3, 64, 64))
            assert attn.rollout(-1).grid.shape == (8, 8)
        """
    )
    model = f"--vitattn-model={GLOBAL_MODEL}"
    pytester.runpytest("-p", "no:cacheprovider", model).assert_outcomes(passed=2)
    result = pytester.runpytest("-p", "no:cacheprovider", model, "--vitattn-report=r/report.html")
    result.assert_outcomes(passed=2)
    records = json.loads((pytester.path / "r" / "results.json").read_text())["records"]
    assert [record["rollout"] is not None for record in records] == [True, True]


SHARED = f"""
import pytest
import torch

FORWARDS = []


@pytest.fixture(scope="module")
def shared_attn(vitattn_probe):
    probe = vitattn_probe(model={GLOBAL_MODEL!r}, rollout="none")
    probe.loaded.model.register_forward_hook(lambda *_: FORWARDS.append(1))
    return probe(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)))


def test_first(shared_attn):
    assert shared_attn.layer(-1).mean_heads().concentration() >= 0


def test_second(shared_attn):
    assert shared_attn.num_layers == 6
    assert len(FORWARDS) == 1


def test_two_models_in_one_test(vitattn):
    image = torch.rand(3, 64, 64)
    before = vitattn(image)
    after = vitattn.using(model="vitattn_tiny_shapes_shortcut")(image)
    assert before.model_name == "vitattn_tiny_shapes"
    assert after.model_name == "vitattn_tiny_shapes_shortcut"
    # The default is read as one layer (block 5), the shortcut model as six: compare block 5.
    assert not torch.equal(before.maps[-1], after.maps[-1])
"""


def test_a_module_scoped_fixture_shares_one_forward_and_a_test_probes_two_models(pytester):
    pytester.makepyfile(test_shared=SHARED)
    result = pytester.runpytest("-p", "no:cacheprovider", "--vitattn-report=r/report.html")
    result.assert_outcomes(passed=3)
    records = json.loads((pytester.path / "r" / "results.json").read_text())["records"]
    owners = sorted(
        (record["nodeid"].split("::")[1], record["model"]["name"]) for record in records
    )
    assert owners == [
        ("test_first", GLOBAL_MODEL),  # the shared probe ran during its setup
        ("test_two_models_in_one_test", "vitattn_tiny_shapes"),
        ("test_two_models_in_one_test", "vitattn_tiny_shapes_shortcut"),
    ]


def test_a_shared_probe_refuses_a_baseline_and_says_which_fixture_has_one(pytester):
    pytester.makepyfile(
        test_shared=SHARED
        + """

def test_baseline(shared_attn):
    shared_attn.matches_baseline()
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "baseline")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *BaselineError: attention baselines belong to one pytest test: probe with the "
            "vitattn fixture in the test that checks the baseline (a vitattn_probe result is "
            "shared between tests, so it has none)*"
        ]
    )
    assert not (pytester.path / "vitattn_baselines").exists()


def test_shared_probes_work_under_xdist(pytester):
    pytester.makepyfile(test_shared=SHARED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=3)
