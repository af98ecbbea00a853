"""Attention baselines as users run them, through pytester.

The model is the shipped architecture built with global attention in every block
(``local_radius=-1``: 64 x 64 input, 6 read layers x 3 heads, 8 x 8 grid; the shipped default
has local blocks and is read as one layer) with seeded random weights saved to files, so
baselines are made and broken offline in seconds.
Random-init attention is almost uniform, so the query/key weights are scaled up to give
peaked maps that differ between seeds as trained models' maps do.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from family_reference import cls_reading_blocks

from pytest_vitattn import baseline, synthetic
from pytest_vitattn.baseline import safe_name
from pytest_vitattn.images import content_hash, load_image

ARCH = "vitattn_tiny_shapes"
# Every block global, so the plugin reads all 6 (it leaves the default's local blocks 0-4
# out); the weights are saved from, and loaded into, this architecture.
LOCAL_RADIUS = -1
ARCH_KWARGS = f"--vitattn-model-kwargs=local_radius={LOCAL_RADIUS}"
# Baselines of in-memory images are named by the hash of their pixels (see baseline.image_key).
IMAGE_NAME = baseline.image_key(
    None, content_hash(load_image(synthetic.make_sample(0, split="test").image))
)
IMAGE_FILE = "vitattn_baselines/test_birds/{test}/" + IMAGE_NAME + ".safetensors"

BIRDS = """
import pytest
from pytest_vitattn import synthetic

IMAGE = synthetic.make_sample(0, split="test").image

def test_every_head(vitattn):
    vitattn(IMAGE).matches_baseline()

def test_last_layer(vitattn):
    attn = vitattn(IMAGE)
    attn.expect(layer=-1).matches_baseline()
    attn.expect(layer=-1, head=2).matches_baseline()
"""


def save_sharp_weights(path: Path, name: str, seed: int) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file

    import pytest_vitattn.zoo  # noqa: F401  (registers the shipped architecture)

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, local_radius=LOCAL_RADIUS)
    with torch.no_grad():
        # x8: the faithful model's convolutional stem makes random tokens alike, and x4
        # left its maps beyond layer 0 nearly uniform (3 of 18 maps differed between seeds).
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8.0)
    save_file(model.state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Two weight files of the shipped architecture built global: "a" and "b" (other seed)."""
    folder = tmp_path_factory.mktemp("weights")
    return {
        key: save_sharp_weights(folder / f"{key}.safetensors", ARCH, seed)
        for key, seed in (("a", 1), ("b", 2))
    }


@pytest.fixture
def birds(pytester, monkeypatch):
    """A test module with a whole-record and a single-map baseline check; CI unset."""
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_birds=BIRDS)
    return pytester


def run(pytester, weights_file: Path, *args: str, model: str = ARCH):
    return pytester.runpytest(
        "-p",
        "no:cacheprovider",
        f"--vitattn-model={model}",
        *([ARCH_KWARGS] if model == ARCH else []),
        f"--vitattn-weights={weights_file}",
        *args,
    )


def literal(text: str) -> str:
    """``text`` as an fnmatch pattern that matches itself (brackets are a class there)."""
    return text.replace("[", "[[]")


def files_of(pytester) -> dict[str, bytes]:
    root = pytester.path / "vitattn_baselines"
    return {
        p.relative_to(pytester.path).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_first_run_writes_baselines_and_fails_the_next_one_passes(birds, weights):
    first = run(birds, weights["a"])
    first.assert_outcomes(failed=2)
    first.stdout.fnmatch_lines(
        [
            "no attention baseline for this test and image yet; wrote "
            + literal(IMAGE_FILE.format(test="test_every_head")),
            "  Review it (pytest --vitattn-report shows the maps), commit it*",
        ]
    )
    assert sorted(files_of(birds)) == [
        IMAGE_FILE.format(test="test_every_head"),
        IMAGE_FILE.format(test="test_last_layer"),
    ]
    run(birds, weights["a"]).assert_outcomes(passed=2)


def test_other_weights_fail_with_the_drifted_heads_worst_first(birds, weights):
    run(birds, weights["a"], "--vitattn-missing-baselines=write").assert_outcomes(passed=2)
    result = run(birds, weights["b"])
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "E * baseline made with other weights: this run uses vitattn_tiny_shapes (weights: "
            "b.safetensors, file:*); the baseline was made with vitattn_tiny_shapes (weights: "
            "a.safetensors, file:*).",
            "E * baseline_model='require-same' (the default) fails such a comparison, so a "
            "swapped model never passes silently.",
            "E * attention drifted from its baseline in * of 18 maps (tolerance: js <= 0.02); "
            "the baseline was made with another model or weights, worst first:",
            "E * JS div     corr  top-k IoU  max|diff|",
            "E * layer ?, head ?   0.*!*",
            "E * (! marks a measure past its bound)",
            "E * model: this run uses vitattn_tiny_shapes (weights: b.safetensors, file:*); the "
            "baseline was made with vitattn_tiny_shapes (weights: a.safetensors, file:*)",
            "E * if the new maps are right: pytest --vitattn-update-baselines "
            "'test_birds.py::test_every_head', then commit the file",
        ]
    )
    rows = [line for line in result.outlines if line.lstrip("E ").startswith("layer")]
    js = [float(line.split()[5].rstrip("!")) for line in rows if "of 0..5" not in line]
    assert js == sorted(js, reverse=True) and len(js) == 10
    result.stdout.fnmatch_lines(["E * ... and * more"])


def test_the_same_run_writes_byte_identical_baselines_even_in_another_process(birds, weights):
    run(birds, weights["a"], "--vitattn-missing-baselines=write").assert_outcomes(passed=2)
    first = files_of(birds)
    shutil.rmtree(birds.path / "vitattn_baselines")
    run(birds, weights["a"], "--vitattn-missing-baselines=write").assert_outcomes(passed=2)
    assert files_of(birds) == first
    shutil.rmtree(birds.path / "vitattn_baselines")
    other = birds.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"--vitattn-model={ARCH}",
        ARCH_KWARGS,
        f"--vitattn-weights={weights['a']}",
        "--vitattn-missing-baselines=write",
    )
    other.assert_outcomes(passed=2)
    assert files_of(birds) == first


def test_probing_the_same_image_twice_gives_bitwise_equal_maps(weights):
    from pytest_vitattn import Probe, synthetic
    from pytest_vitattn.models import ModelSpec, load_model

    image = synthetic.make_sample(0, split="test").image
    spec = ModelSpec(ARCH, str(weights["a"]), kwargs=(("local_radius", LOCAL_RADIUS),))
    first = Probe(load_model(spec))(image)
    again = Probe(load_model(spec))(image)
    batch = Probe(load_model(spec))([image, image])
    batch_again = Probe(load_model(spec))([image, image])
    assert first.maps.numpy().tobytes() == again.maps.numpy().tobytes()
    for index in range(2):
        assert batch[index].maps.numpy().tobytes() == batch_again[index].maps.numpy().tobytes()
    assert first.maps.std() > 0  # a real map, not a constant


def test_a_corrupt_baseline_fails_clearly_and_is_replaced_only_on_update(birds, weights):
    run(birds, weights["a"], "--vitattn-missing-baselines=write").assert_outcomes(passed=2)
    path = birds.path / IMAGE_FILE.format(test="test_every_head")
    truncated = path.read_bytes()[:-100]
    path.write_bytes(truncated)
    result = run(birds, weights["a"])
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            f"E *BaselineError: baseline */test_every_head/{IMAGE_NAME}.safetensors is corrupt: "
            "safetensors could not read it (*). It was left untouched; restore it from version "
            "control, or re-create it with --vitattn-update-baselines",
        ]
    )
    assert path.read_bytes() == truncated
    run(birds, weights["a"], "--vitattn-update-baselines").assert_outcomes(passed=2)
    assert baseline.read(path).maps.shape == (6, 3, 8, 8)
    run(birds, weights["a"]).assert_outcomes(passed=2)


def test_update_rewrites_the_baselines_and_passes(birds, weights):
    run(birds, weights["a"], "--vitattn-missing-baselines=write").assert_outcomes(passed=2)
    before = files_of(birds)
    run(birds, weights["b"], "--vitattn-update-baselines").assert_outcomes(passed=2)
    after = files_of(birds)
    assert after.keys() == before.keys()
    assert all(after[name] != before[name] for name in before)
    run(birds, weights["b"]).assert_outcomes(passed=2)
    # Updating again with the same maps leaves the files alone (no rewrite, same mtime).
    stamps = {p: p.stat().st_mtime_ns for p in (birds.path / "vitattn_baselines").rglob("*.*")}
    run(birds, weights["b"], "--vitattn-update-baselines").assert_outcomes(passed=2)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_in_ci_a_missing_baseline_fails_without_being_written(birds, weights, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = run(birds, weights["a"])
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "no attention baseline at "
            + literal(IMAGE_FILE.format(test="test_every_head"))
            + ", and missing baselines fail here (the CI environment variable is set).",
            "  Create it where the model is right: pytest --vitattn-missing-baselines=write, "
            "then commit it.",
        ]
    )
    assert not (birds.path / "vitattn_baselines").exists()
    run(birds, weights["a"], "--vitattn-missing-baselines=write").assert_outcomes(passed=2)
    run(birds, weights["a"]).assert_outcomes(passed=2)


def test_missing_baselines_can_be_set_to_fail_in_the_ini_file(birds, weights):
    birds.makeini("[pytest]\nvitattn_missing_baselines = fail\n")
    result = run(birds, weights["a"])
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        ["*missing baselines fail here (--vitattn-missing-baselines=fail)."]
    )


TOLERANCES = """
import pytest
from pytest_vitattn import synthetic

IMAGE = synthetic.make_sample(0, split="test").image

def test_plain(vitattn):
    vitattn(IMAGE).matches_baseline()

@pytest.mark.vitattn(tolerance=0.99)
def test_marker(vitattn):
    vitattn(IMAGE).matches_baseline()

@pytest.mark.vitattn(tolerance=0.0001)
def test_call(vitattn):
    vitattn(IMAGE).matches_baseline(tolerance=0.99)

@pytest.mark.vitattn(tolerance={"min_correlation": 0.999})
def test_bounds(vitattn):
    vitattn(IMAGE).matches_baseline()
"""


@pytest.mark.parametrize(
    ("ini", "cli", "plain"),
    [
        (None, None, "js <= 0.02"),
        ("0.99", None, None),
        ("0.99", "0.0001", "js <= 0.0001"),
        (None, "max_js=0.5,min_top_k_iou=0.99", "js <= 0.5, top_k_iou >= 0.99"),
    ],
)
def test_tolerance_comes_from_call_then_marker_then_cli_then_ini(
    pytester, monkeypatch, weights, ini, cli, plain
):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_tolerances=TOLERANCES)
    run(pytester, weights["a"], "--vitattn-missing-baselines=write").assert_outcomes(passed=4)
    if ini:
        pytester.makeini(f"[pytest]\nvitattn_tolerance = {ini}\n")
    # "compare": weights b are judged by their maps alone, so only the tolerance decides.
    tolerance = [f"--vitattn-tolerance={cli}"] if cli else []
    result = run(pytester, weights["b"], "--vitattn-baseline-model=compare", *tolerance)
    failed = {"test_bounds"} | ({"test_plain"} if plain else set())
    result.assert_outcomes(failed=len(failed), passed=4 - len(failed))
    result.stdout.fnmatch_lines(["E * in * of 18 maps (tolerance: correlation >= 0.999)*"])
    if plain:
        result.stdout.fnmatch_lines([f"E * in * of 18 maps (tolerance: {plain})*"])
    for name in ("test_marker", "test_call"):
        assert f"FAILED test_tolerances.py::{name}" not in result.stdout.str()


@pytest.mark.parametrize(
    ("args", "ini", "error"),
    [
        (
            ["--vitattn-update-baselines", "--vitattn-missing-baselines=fail"],
            "",
            "ERROR: --vitattn-update-baselines writes every baseline, but missing baselines "
            "are set to fail (--vitattn-missing-baselines=fail or ini vitattn_missing_baselines): "
            "drop one of the two",
        ),
        (
            ["--vitattn-tolerance=loose"],
            "",
            "*--vitattn-tolerance: tolerance 'loose' is not a number (the largest JS divergence) "
            "or e.g. 'max_js=0.05,min_correlation=0.9'",
        ),
        (
            [],
            "vitattn_tolerance = max_js=2",
            "ERROR: ini option vitattn_tolerance: tolerance max_js=2.0 must be in [[]0, 1]",
        ),
        (["--vitattn-missing-baselines=maybe"], "", "*'maybe' is not one of auto, write, fail"),
    ],
)
def test_bad_baseline_options_stop_the_run_with_one_sentence(pytester, args, ini, error):
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret != 0
    result.stderr.fnmatch_lines([error])


def test_a_bad_tolerance_in_a_marker_fails_the_test_naming_the_bound(birds, weights):
    birds.makepyfile(
        test_marker="""
import pytest

@pytest.mark.vitattn(tolerance={"max_jsd": 0.1})
def test_bad(vitattn):
    pass
"""
    )
    result = run(birds, weights["a"], "test_marker.py")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*@pytest.mark.vitattn(tolerance=...): unknown tolerance bound(s) 'max_jsd'; "
            "use max_js, *"
        ]
    )


def test_other_preprocessing_is_an_error_that_lists_the_differences(birds, weights):
    run(birds, weights["a"], "--vitattn-missing-baselines=write").assert_outcomes(passed=2)
    result = run(
        birds, weights["a"], "--vitattn-preprocess=center-crop", "test_birds.py::test_every_head"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *BaselineError: baseline "
            + literal(IMAGE_FILE.format(test="test_every_head"))
            + " was made under other conditions, so its maps cannot be compared:",
            "E *   - preprocessing mode: baseline 'resize', this run 'center-crop'",
            "E * If this change is intended, re-create the baseline: "
            "pytest --vitattn-update-baselines",
        ]
    )


def test_other_weights_fail_by_default_and_the_report_still_gets_the_maps(birds, weights):
    run(birds, weights["a"], "--vitattn-missing-baselines=write").assert_outcomes(passed=2)
    result = run(birds, weights["b"], "--vitattn-report=out/report.html")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "E *AssertionError: baseline made with other weights: this run uses "
            "vitattn_tiny_shapes (weights: b.safetensors, *); the baseline was made with "
            "vitattn_tiny_shapes (weights: a.safetensors, *).",
        ]
    )
    import json

    results = json.loads((birds.path / "out" / "results.json").read_text())
    baseline_checks = [
        check
        for record in results["records"]
        for check in record["checks"]
        if check["name"] == "baseline"
    ]
    assert baseline_checks and not any(check["passed"] for check in baseline_checks)
    assert all(record["baseline"]["status"] == "compared" for record in results["records"])


def test_random_weights_cannot_have_a_baseline(birds):
    birds.makepyfile(
        test_random="""
from pytest_vitattn import synthetic

def test_random(vitattn):
    vitattn(synthetic.make_sample(0).image).matches_baseline()
"""
    )
    result = birds.runpytest(
        "-p",
        "no:cacheprovider",
        f"--vitattn-model={ARCH}",
        ARCH_KWARGS,
        "--vitattn-weights=random",
        "test_random.py",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["E *BaselineError: vitattn_tiny_shapes runs with weights='random', which are drawn anew*"]
    )
    assert not (birds.path / "vitattn_baselines").exists()


RECORD = """
import json
from pathlib import Path

import pytest
from pytest_vitattn import synthetic

IMAGE = synthetic.make_sample(0, split="test").image

def test_record(vitattn):
    attn = vitattn(IMAGE)
    existed = Path("vitattn_baselines").exists()
    drift = attn.matches_baseline()
    assert drift.js.shape == (6, 3) and drift.js.max() == 0
    check = attn.record.checks[-1]
    if not existed:
        assert check.passed and check.details["status"] == "written"
        assert attn.record.baseline["status"] == "written"
        return
    print("COMPARED")
    assert (check.name, check.passed, check.op) == ("baseline", True, "<=")
    assert check.threshold == 0.02 and check.selection == "every layer and head"
    details = check.details
    assert details["status"] == "compared" and details["failing"] == []
    name = "image-" + attn.record.image_sha256[:12]
    assert details["path"] == f"vitattn_baselines/test_record/test_record/{name}.safetensors"
    assert len(details["maps"]) == 18
    assert details["maps"][4] == {
        "label": "layer 1, head 1", "layer": 1, "head": 1,
        "js": 0.0, "correlation": 1.0, "top_k_iou": 1.0, "max_abs_diff": 0.0,
    }
    assert details["baseline_model"]["name"] == "vitattn_tiny_shapes"
    assert details["model_changed"] is False and details["version_changes"] == {}
    view = attn.record.baseline
    assert view["maps"].shape == tuple(attn.maps.shape) and view["maps"].dtype.name == "float32"
    assert view["path"] == details["path"] and view["status"] == "compared"
    json.dumps(attn.record.to_dict())

    layer = attn.expect(layer=-1, fusion="max").matches_baseline()
    assert layer.js.shape == () and float(layer.js) == 0
    assert attn.record.checks[-1].selection == "layer 5 of 0..5, max of 3 heads"
    some = attn.matches_baseline(layers=[0, -1])
    assert some.js.shape == (2, 3)
    assert attn.record.checks[-1].details["maps"][3]["layer"] == 5

    with pytest.raises(Exception, match="rollout cannot be rebuilt"):
        attn.expect(layer=-1, rollout=True).matches_baseline()
"""


def test_each_check_is_recorded_with_per_head_numbers_and_the_baseline_maps(
    pytester, weights, monkeypatch
):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_record=RECORD)
    run(pytester, weights["a"], "--vitattn-missing-baselines=write").assert_outcomes(passed=1)
    result = run(pytester, weights["a"], "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*COMPARED*"])


NAMED = """
import pytest
from pytest_vitattn import synthetic

class TestBirds:
    @pytest.mark.parametrize("size", ["small", "odd id/with space"])
    def test_wing(self, vitattn, tmp_path, size):
        path = tmp_path / "bird one.png"
        synthetic.make_sample(1).image.save(path)
        vitattn(path).matches_baseline()
        vitattn(path).matches_baseline()
"""


def test_baseline_files_are_named_by_module_class_test_param_and_image(
    pytester, weights, monkeypatch
):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_named=NAMED)
    run(pytester, weights["a"], "--vitattn-missing-baselines=write").assert_outcomes(passed=2)
    # The same pixels probed twice in a test share one baseline, named by file and pixels.
    pixels = content_hash(load_image(synthetic.make_sample(1).image))
    image = safe_name(f"bird one.png-{pixels[:8]}")
    assert image.startswith(f"bird_one.png-{pixels[:8]}-")
    folder = "vitattn_baselines/test_named/TestBirds/"
    odd = safe_name("test_wing[odd id/with space]")
    assert odd.startswith("test_wing[odd_id_with_space]-")
    assert sorted(files_of(pytester)) == sorted(
        f"{folder}{test}/{image}.safetensors" for test in ("test_wing[small]", odd)
    )
    run(pytester, weights["a"]).assert_outcomes(passed=2)


def test_a_configured_baseline_dir_resolves_against_the_ini_file(pytester, weights, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makeini("[pytest]\nvitattn_baseline_dir = store\n")
    pytester.mkdir("sub")
    pytester.makepyfile(**{"sub/test_birds": BIRDS})
    run(pytester, weights["a"], "--vitattn-missing-baselines=write", "sub").assert_outcomes(
        passed=2
    )
    stored = sorted(
        p.relative_to(pytester.path).as_posix()
        for p in (pytester.path / "store").rglob("*.safetensors")
    )
    assert stored == [
        f"store/sub/test_birds/test_every_head/{IMAGE_NAME}.safetensors",
        f"store/sub/test_birds/test_last_layer/{IMAGE_NAME}.safetensors",
    ]


def test_a_baseline_copied_from_another_test_is_refused(birds, weights):
    run(birds, weights["a"], "--vitattn-missing-baselines=write").assert_outcomes(passed=2)
    source = birds.path / IMAGE_FILE.format(test="test_every_head")
    target = birds.path / IMAGE_FILE.format(test="test_last_layer")
    target.write_bytes(source.read_bytes())
    result = run(birds, weights["a"], "test_birds.py::test_last_layer")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *BaselineError: baseline * belongs to test 'test_every_head', image "
            f"'{IMAGE_NAME}', not to test 'test_last_layer'*"
        ]
    )
    assert target.read_bytes() == source.read_bytes()


@pytest.fixture(scope="session")
def vit_tiny_weights(tmp_path_factory) -> dict[str, Path]:
    """timm's vit_tiny_patch16_224 with plain random init from two seeds."""
    import timm
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("vit_tiny")
    files = {}
    for key, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
        files[key] = folder / f"vit_tiny_{key}.safetensors"
        save_file(model.state_dict(), str(files[key]))
    return files


def test_a_timm_vit_keeps_its_baseline_and_other_weights_break_its_pattern(birds, vit_tiny_weights):
    vit = "vit_tiny_patch16_224"
    target = "test_birds.py::test_every_head"
    write = ("--vitattn-missing-baselines=write", target)
    run(birds, vit_tiny_weights["a"], *write, model=vit).assert_outcomes(passed=1)
    stored = baseline.read(birds.path / IMAGE_FILE.format(test="test_every_head"))
    assert stored.maps.shape == (12, 3, 14, 14)
    assert stored.metadata["model"]["name"] == vit
    run(birds, vit_tiny_weights["a"], target, model=vit).assert_outcomes(passed=1)
    # Other weights fail by default even when their maps are close, saying why.
    refused = run(birds, vit_tiny_weights["b"], target, model=vit)
    refused.assert_outcomes(failed=1)
    refused.stdout.fnmatch_lines(
        ["E * baseline made with other weights: *", "E * (its maps are within the tolerance*"]
    )
    # Compared by their maps: random-init attention is nearly uniform, so little mass moves
    # (JS stays under the default), but the pattern is another one, which correlation catches.
    compare = "--vitattn-baseline-model=compare"
    run(birds, vit_tiny_weights["b"], compare, target, model=vit).assert_outcomes(passed=1)
    result = run(
        birds,
        vit_tiny_weights["b"],
        compare,
        "--vitattn-tolerance=min_correlation=0.9",
        target,
        model=vit,
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["E * in 36 of 36 maps (tolerance: correlation >= 0.9); the baseline was made with *"]
    )


def test_another_architecture_is_an_error_listing_every_difference(
    birds, weights, vit_tiny_weights
):
    target = "test_birds.py::test_every_head"
    run(birds, weights["a"], "--vitattn-missing-baselines=write", target).assert_outcomes(passed=1)
    result = run(birds, vit_tiny_weights["a"], target, model="vit_tiny_patch16_224")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *BaselineError: baseline * was made under other conditions, so its maps cannot "
            "be compared:",
            "E *   - layers: baseline 6, this run 12",
            "E *   - patch grid: baseline [[]8, 8], this run [[]14, 14]",
            "E *   - preprocessing input_size: baseline [[]64, 64], this run [[]224, 224]",
            "E *   - preprocessing interpolation: baseline 'bilinear', this run 'bicubic'",
        ]
    )


def _shipped_weights_exist() -> bool:
    from pytest_vitattn import zoo

    return all(zoo.weights_path(name).is_file() for name in zoo.MODEL_NAMES)


SHIPPED = """
from pytest_vitattn import synthetic

def test_looks_where_it_did(vitattn):
    sample = synthetic.make_sample(0, split="example", shortcut=True)
    attn = vitattn(sample.image)
    attn.expect(layer=-1).matches_baseline()
"""


def _read_blocks(name: str) -> list[int]:
    """Blocks of the shipped model ``name`` that the plugin reads (``cls_reading_blocks``)."""
    import timm

    import pytest_vitattn.zoo  # noqa: F401  (registers the shipped architecture)

    return cls_reading_blocks(timm.create_model(name, pretrained=False))


@pytest.mark.skipif(not _shipped_weights_exist(), reason="the shipped weights are not trained yet")
def test_a_baseline_of_the_faithful_model_fails_the_shortcut_model(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_shipped=SHIPPED)
    base = ("-p", "no:cacheprovider")
    faithful = (*base, "--vitattn-model=vitattn_tiny_shapes")
    pytester.runpytest(*faithful, "--vitattn-missing-baselines=write").assert_outcomes(passed=1)
    pytester.runpytest(*faithful).assert_outcomes(passed=1)
    # The faithful model's local blocks 0-4 are left out, so it is read as one layer (block
    # 5) and the shortcut model as six: the maps cannot be compared, and the model is named.
    read_faithful = _read_blocks("vitattn_tiny_shapes")
    read_shortcut = _read_blocks("vitattn_tiny_shapes_shortcut")
    assert read_faithful == [5] and read_shortcut == list(range(6))
    result = pytester.runpytest(*base, "--vitattn-model=vitattn_tiny_shapes_shortcut")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *BaselineError: baseline vitattn_baselines/test_shipped/test_looks_where_it_did/"
            "* was made under other conditions, so its maps cannot be compared:",
            f"E *   - layers: baseline {len(read_faithful)}, this run {len(read_shortcut)}",
            "E *   - model: this run uses vitattn_tiny_shapes_shortcut (weights: pretrained, *); "
            "the baseline was made with vitattn_tiny_shapes (weights: pretrained, *)",
        ]
    )
