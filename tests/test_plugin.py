"""The plugin as users run it, through pytester: options, precedence, fixtures, messages."""

from __future__ import annotations

import pytest

TINY_RANDOM = 'model="vit_tiny_patch16_224", weights="random"'


def test_help_lists_the_options_and_ini_keys(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "*Vision Transformer attention (pytest-vitattn)*",
            "*--vitattn-model=NAME*",
            "*--vitattn-weights=pretrained|random|PATH*",
            "*--vitattn-device=DEVICE*",
            "*--vitattn-report=*PATH*",
            "*vitattn_model (string)*",
        ]
    )


def test_the_marker_is_registered(pytester):
    pytester.makeini("[pytest]\naddopts = --strict-markers")
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.vitattn(model=..., weights=..., *"])


PRECEDENCE_TEST = """
import pytest

def test_default(vitattn_settings):
    print("MODEL", vitattn_settings.model, vitattn_settings.preprocess)

@pytest.mark.vitattn(model="from_marker")
def test_marker(vitattn_settings):
    print("MODEL", vitattn_settings.model, vitattn_settings.preprocess)

@pytest.mark.vitattn(model="from_class")
class TestClass:
    @pytest.mark.vitattn(preprocess="center-crop")
    def test_merged(self, vitattn_settings):
        print("MODEL", vitattn_settings.model, vitattn_settings.preprocess)
"""


@pytest.mark.parametrize(
    ("ini", "cli", "expected_default"),
    [
        (None, None, "vitattn_tiny_shapes"),
        ("from_ini", None, "from_ini"),
        ("from_ini", "from_cli", "from_cli"),
        (None, "from_cli", "from_cli"),
    ],
)
def test_marker_beats_cli_beats_ini_beats_default(pytester, ini, cli, expected_default):
    if ini:
        pytester.makeini(f"[pytest]\nvitattn_model = {ini}\n")
    pytester.makepyfile(PRECEDENCE_TEST)
    args = ["-s", "-q"] + ([f"--vitattn-model={cli}"] if cli else [])
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            f"*MODEL {expected_default} resize",
            "*MODEL from_marker resize",
            "*MODEL from_class center-crop",
        ]
    )


def test_weights_paths_resolve_against_where_they_were_written(pytester):
    pytester.makeini("[pytest]\nvitattn_weights = models/w.safetensors\n")
    pytester.mkdir("sub")
    pytester.makepyfile(
        **{
            "sub/test_paths": """
import pytest

def test_ini(vitattn_settings):
    print("W", vitattn_settings.weights)

@pytest.mark.vitattn(weights="here.safetensors")
def test_marker(vitattn_settings):
    print("W", vitattn_settings.weights)
"""
        }
    )
    result = pytester.runpytest("-s", "-q")
    root = str(pytester.path)
    result.stdout.fnmatch_lines(
        [f"*W {root}/models/w.safetensors", f"*W {root}/sub/here.safetensors"]
    )


@pytest.mark.parametrize(
    ("option", "error"),
    [
        (
            "--vitattn-device=gpu",
            "*argument --vitattn-device: 'gpu' is not a device (cpu, cuda, cuda:N, mps)",
        ),
        (
            "--vitattn-preprocess=crop",
            "*argument --vitattn-preprocess: 'crop' is not one of resize, center-crop",
        ),
        (
            "--vitattn-rollout=sum",
            "*argument --vitattn-rollout: 'sum' is not one of mean, max, min",
        ),
        ("--vitattn-model=a b", "*argument --vitattn-model: 'a b' is not a timm model name*"),
        ("--vitattn-token=first", "*argument --vitattn-token: 'first' is not a query token*"),
    ],
)
def test_a_wrong_option_value_fails_at_parsing(pytester, option, error):
    result = pytester.runpytest(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([error])


def test_a_wrong_ini_value_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nvitattn_extraction = fastest\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*ini option vitattn_extraction: 'fastest' is not one of auto, fast, fx"]
    )


def test_a_wrong_marker_argument_fails_the_test_with_the_allowed_ones(pytester):
    pytester.makepyfile(
        """
import pytest

@pytest.mark.vitattn(modle="deit_tiny_patch16_224")
def test_typo(vitattn):
    pass

@pytest.mark.vitattn(preprocess="squash")
def test_value(vitattn):
    pass
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*vitattn: @pytest.mark.vitattn got unknown argument 'modle'; allowed: model, weights,*",
            "*vitattn: @pytest.mark.vitattn(preprocess=...): 'squash' is not one of resize, center-crop",
        ]
    )


def test_disabling_the_plugin_removes_its_fixtures_cleanly(pytester):
    pytester.makepyfile(
        """
def test_plain():
    assert 1 + 1 == 2

def test_uses_fixture(vitattn):
    pass
"""
    )
    result = pytester.runpytest("-p", "no:vitattn")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'vitattn' not found*"])
    assert "--vitattn-model" not in pytester.runpytest("-p", "no:vitattn", "--help").stdout.str()


def test_an_unknown_model_fails_setup_with_suggestions_and_no_traceback(pytester):
    pytester.makepyfile(
        """
import pytest

@pytest.mark.vitattn(model="deit_tiny_patch16_22", weights="random")
def test_it(vitattn):
    pass
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "vitattn: timm has no model named 'deit_tiny_patch16_22'. Did you mean: deit_tiny_patch16_224*"
        ]
    )
    assert "Traceback" not in result.stdout.str() and "models.py" not in result.stdout.str()


def test_probing_images_and_checks_through_the_fixture(pytester):
    pytester.makepyfile(
        f"""
import numpy as np
import pytest
from PIL import Image

@pytest.fixture
def scene(tmp_path):
    pixels = np.zeros((120, 160, 3), np.uint8)
    pixels[40:80, 60:100] = 255
    Image.fromarray(pixels).save(tmp_path / "scene.png")
    mask = np.zeros((120, 160), np.uint8)
    mask[40:80, 60:100] = 255
    Image.fromarray(mask).save(tmp_path / "scene_mask.png")
    return tmp_path / "scene.png", tmp_path / "scene_mask.png"

@pytest.mark.vitattn({TINY_RANDOM})
def test_single_and_batch(vitattn, vitattn_model, scene):
    image, mask = scene
    attn = vitattn(image)
    assert attn.maps.shape == (12, 3, 14, 14)
    assert attn.image_label == "scene.png"
    mass = attn.layer(-1).mean_heads().mass_in(mask)
    assert 0.0 <= mass <= 1.0
    batch = vitattn([image, Image.open(image)])
    assert [a.image_label for a in batch] == ["scene.png", "scene.png"]
    assert np.allclose(batch[0].maps.numpy(), attn.maps.numpy(), atol=1e-5)
    assert attn.record.checks[0].name == "mass_in_mask"
    assert attn.record.checks[0].chance == pytest.approx(40 * 40 / (120 * 160), rel=1e-3)

@pytest.mark.vitattn({TINY_RANDOM})
def test_model_first(vitattn_model):
    print("MODEL_ID", id(vitattn_model.model))

@pytest.mark.vitattn({TINY_RANDOM})
def test_model_again(vitattn_model):
    print("MODEL_ID", id(vitattn_model.model))
"""
    )
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=3)
    ids = [line.split()[-1] for line in result.stdout.lines if "MODEL_ID" in line]
    assert len(ids) == 2 and ids[0] == ids[1], "the model must be loaded once per session"


def test_a_failing_expectation_points_at_the_users_line_and_shows_the_numbers(pytester):
    pytester.makepyfile(
        f"""
import numpy as np
import pytest

@pytest.mark.vitattn({TINY_RANDOM})
def test_focus(vitattn):
    image = np.full((224, 224, 3), 128, np.uint8)
    mask = np.zeros((224, 224), bool)
    mask[:16, :16] = True
    attn = vitattn(image)
    attn.expect(layer=-1).mass_in(mask, at_least=0.9)
"""
    )
    result = pytester.runpytest("--vitattn-report=out/report.html")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">       attn.expect(layer=-1).mass_in(mask, at_least=0.9)",
            "E       AssertionError: CLS attention mass in mask is 0.*, expected >= 0.900",
            "E         chance level (mask area): 0.005 *",
            "E         selection: layer 11 of 0..11, mean of 3 heads",
            "E         image: image[0]   mask: mask[0]",
            "E         model: vit_tiny_patch16_224 (weights: random, random-init)",
            "E         heatmap: *out/report.html#rec-*",
            "test_a_failing_expectation_points_at_the_users_line_and_shows_the_numbers.py:10: AssertionError",
        ]
    )
    assert "expect.py" not in result.stdout.str()


def test_records_travel_on_test_reports_with_the_outcome(pytester):
    pytester.makeconftest(
        """
import json

def pytest_runtest_logreport(report):
    for record in getattr(report, "vitattn_records", None) or []:
        print("RECORD", record["nodeid"], record["outcome"], json.dumps([c["name"] for c in record["checks"]]))
"""
    )
    pytester.makepyfile(
        f"""
import numpy as np
import pytest

IMAGE = np.full((64, 64, 3), 90, np.uint8)
MASK = np.zeros((64, 64), bool)
MASK[:, :32] = True
CORNER = np.zeros((64, 64), bool)
CORNER[:8, :8] = True

@pytest.mark.vitattn({TINY_RANDOM})
def test_pass(vitattn):
    vitattn(IMAGE).expect().mass_in(MASK, at_most=1.0)

@pytest.mark.vitattn({TINY_RANDOM})
@pytest.mark.xfail(strict=True)
def test_xfail(vitattn):
    vitattn(IMAGE).expect().mass_in(CORNER, at_least=0.9)
"""
    )
    result = pytester.runpytest("-s", "-p", "no:randomly")
    result.assert_outcomes(passed=1, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            '*RECORD *::test_pass passed ?"mass_in_mask"?',
            '*RECORD *::test_xfail xfailed ?"mass_in_mask"?',
        ]
    )
