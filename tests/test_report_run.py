"""The report of one real run: results.json, the HTML, the terminal, xdist, pytest-html, and
a real browser.

The suite below runs in subprocesses (as pytester's ``runpytest_subprocess`` does), shared
by the module to keep it fast: it probes the shipped architecture built with global attention
in every block (``local_radius=-1``: 6 read layers, so the grid has a row per layer and a
rollout column; the shipped default has local blocks and is read as one layer) with seeded
weights files; its tests pass, fail, xfail, skip, only read maps, carry hostile names, and
drift from a baseline made with other weights. It runs once with ``-p no:xdist`` and once
with ``-n 2`` and ``--html``; the browser tests open the first report in headless Chromium.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_vitattn.records import anchor, decode_array
from pytest_vitattn.report.chromium import Chromium, find_chromium

ARCH = "vitattn_tiny_shapes"
# Every block global, so the plugin reads all 6 (it leaves the default's local blocks 0-4
# out); the weights are saved from, and loaded into, this architecture.
LOCAL_RADIUS = -1

SUITE = """
import os

import numpy as np
import pytest
from PIL import Image

from pytest_vitattn import synthetic


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    pairs = []
    for index in range(2):
        sample = synthetic.make_sample(index, split="test")
        image, mask = folder / f"shape{index}.png", folder / f"shape{index}_mask.png"
        sample.image.save(image)
        Image.fromarray(sample.mask.astype(np.uint8) * 255).save(mask)
        pairs.append((image, mask))
    hostile = folder / 'x<img src=x onerror="window.__pwned=2">.png'
    synthetic.make_sample(0, split="test").image.save(hostile)
    return pairs, hostile


def test_looks_at_the_shape(vitattn, files):
    image, mask = files[0][0]
    attn = vitattn(image)
    attn.expect(layer=-1).mass_in(mask, at_least=0.0)
    attn.layer(-1).mean_heads().mass_in(mask)


def test_two_images_one_fails(vitattn, files):
    (first, first_mask), (second, second_mask) = files[0]
    attentions = vitattn([first, second])
    attentions[0].expect(layer=-1).mass_in(first_mask, at_least=0.0)
    attentions[1].expect(layer=-1).mass_in(second_mask, at_least=0.99)  # FAILS HERE


@pytest.mark.xfail(reason="a random model does not look at the shape", strict=True)
def test_expected_to_fail(vitattn, files):
    image, mask = files[0][0]
    vitattn(image).expect(layer=0, head=1).mass_in(mask, at_least=0.99)


@pytest.mark.parametrize("name", ["<script>window.__pwned=1</script>", "quote\\"s and 'these'"])
def test_hostile_names(vitattn, files, name):
    vitattn(files[1]).expect(layer=-1).concentration(at_most=1.0)


def test_only_reads_the_maps(vitattn, files):
    assert vitattn(files[0][0][0]).num_layers == 6


def test_skipped():
    pytest.skip("nothing to probe")


@pytest.mark.vitattn(weights=os.environ["BASELINE_WEIGHTS"])
def test_baseline(vitattn, files):
    vitattn(files[0][0][0]).matches_baseline()
"""

OUTCOMES = {"failed": 2, "xfailed": 1, "skipped": 1, "passed": 4}
RECORDS_PER_TEST = {
    "test_looks_at_the_shape": 1,
    "test_two_images_one_fails": 2,
    "test_expected_to_fail": 1,
    "test_hostile_names": 2,
    "test_only_reads_the_maps": 1,
    "test_baseline": 1,
}
RANK = {
    "failed": 0,
    "error": 1,
    "xpassed": 2,
    "not-judged": 3,
    "not judged": 3,
    "xfailed": 4,
    "skipped": 5,
    "passed": 6,
}


def save_sharp_weights(path: Path, seed: int) -> Path:
    """Seeded random weights of the shipped architecture built global (``LOCAL_RADIUS``)
    with peaked attention (the q/k weights scaled up), so maps differ between seeds as
    trained models' maps do."""
    import timm
    import torch
    from safetensors.torch import save_file

    import pytest_vitattn.zoo  # noqa: F401  (registers the architecture with timm)

    torch.manual_seed(seed)
    model = timm.create_model(ARCH, pretrained=False, local_radius=LOCAL_RADIUS)
    with torch.no_grad():
        # x8: the faithful model's convolutional stem makes random tokens alike, and x4
        # left its maps beyond layer 0 nearly uniform (3 of 18 maps differed between seeds).
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8.0)
    save_file(model.state_dict(), str(path))
    return path


def run_pytest(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        # hypothesis' plugin costs seconds to import in every process and is not used here.
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:hypothesispytest",
            *args,
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


class SuiteRun:
    """A finished run of the suite: its output, report and results."""

    def __init__(self, folder: Path, out: str, result: subprocess.CompletedProcess) -> None:
        self.folder = folder
        self.result = result
        self.report = folder / out / "attention.html"
        self.results = json.loads((folder / out / "results.json").read_text())
        self.html = self.report.read_text()
        self.suite_file = folder / "test_suite.py"
        self.env = {}
        self.model_args: list[str] = []


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory) -> SuiteRun:
    folder = tmp_path_factory.mktemp("suite")
    weights_a = save_sharp_weights(folder / "a.safetensors", seed=1)
    weights_b = save_sharp_weights(folder / "b.safetensors", seed=2)
    (folder / "test_suite.py").write_text(SUITE)
    (folder / "pytest.ini").write_text("[pytest]\n")
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    model = [
        f"--vitattn-model={ARCH}",
        f"--vitattn-model-kwargs=local_radius={LOCAL_RADIUS}",
        f"--vitattn-weights={weights_a}",
    ]
    # The baseline is made with weights a; the reported run uses b, so it drifts.
    made = run_pytest(
        folder,
        {**env, "BASELINE_WEIGHTS": str(weights_a)},
        *model,
        "-p",
        "no:xdist",
        "-k",
        "test_baseline",
        "--vitattn-update-baselines",
    )
    assert made.returncode == 0, made.stdout + made.stderr
    env = {**env, "BASELINE_WEIGHTS": str(weights_b)}
    result = run_pytest(
        folder, env, *model, "-p", "no:xdist", "--vitattn-report=out/attention.html"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    run = SuiteRun(folder, "out", result)
    run.env, run.model_args = env, model
    return run


@pytest.fixture(scope="module")
def xdist_run(suite_run) -> SuiteRun:
    """The same suite spread over two xdist workers, with a pytest-html report too."""
    result = run_pytest(
        suite_run.folder,
        suite_run.env,
        *suite_run.model_args,
        "-n",
        "2",
        "--vitattn-report=spread/attention.html",
        "--html=spread/pytest.html",
        "--self-contained-html",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    return SuiteRun(suite_run.folder, "spread", result)


def test_the_summary_counts_every_outcome_and_names_the_run(suite_run):
    summary = suite_run.results["summary"]
    assert summary["outcomes"] == OUTCOMES
    assert summary["exitstatus"] == 1
    assert summary["records"] == sum(RECORDS_PER_TEST.values())
    assert summary["command"] == (
        "pytest -p no:cacheprovider -p no:hypothesispytest "
        f"{' '.join(suite_run.model_args)} -p no:xdist --vitattn-report=out/attention.html"
    )
    assert {"torch", "timm", "pytest", "python", "pytest-vitattn"} <= set(summary["versions"])
    assert summary["versions"]["torch"] != "not installed"


def test_every_probed_image_is_one_record_with_its_outcome(suite_run):
    records = suite_run.results["records"]
    per_test: dict[str, int] = {}
    for record in records:
        name = record["nodeid"].split("::")[1].split("[")[0]
        per_test[name] = per_test.get(name, 0) + 1
    assert per_test == RECORDS_PER_TEST
    outcomes = {record["record_id"]: record["outcome"] for record in records}
    assert outcomes["test_suite.py::test_two_images_one_fails::shape1.png"] == "failed"
    statuses = {record["record_id"]: record["status"] for record in records}
    assert statuses["test_suite.py::test_two_images_one_fails::shape1.png"] == "failed"
    assert statuses["test_suite.py::test_two_images_one_fails::shape0.png"] == "passed"
    assert outcomes["test_suite.py::test_expected_to_fail::shape0.png"] == "xfailed"
    assert outcomes["test_suite.py::test_looks_at_the_shape::shape0.png"] == "passed"
    assert len(set(outcomes)) == len(records)


def test_records_are_listed_failures_first(suite_run):
    ranks = [RANK[record["status"]] for record in suite_run.results["records"]]
    assert ranks == sorted(ranks)
    assert ranks[0] == RANK["failed"]


def test_results_hold_the_numbers_but_no_pixels(suite_run):
    record = next(
        r
        for r in suite_run.results["records"]
        if r["record_id"] == "test_suite.py::test_two_images_one_fails::shape1.png"
    )
    assert record["image"] is None
    assert [mask["pixels"] for mask in record["masks"]] == [None]
    maps = decode_array(record["maps"])
    assert maps.shape == (6, 3, 8, 8)
    np.testing.assert_allclose(maps.astype(np.float32).sum(axis=(-2, -1)), 1.0, atol=0.01)
    (check,) = record["checks"]
    assert (check["name"], check["op"], check["threshold"], check["passed"]) == (
        "mass_in_mask",
        ">=",
        0.99,
        False,
    )
    assert 0 <= check["value"] < 0.99
    assert check["mask"] == "shape1_mask.png"


def test_a_failure_links_to_the_failing_line(suite_run):
    record = suite_run.results["records"][0]
    lines = SUITE.splitlines()  # written as is: lines[i] is line i + 1 of the file
    fail_line = 1 + next(i for i, line in enumerate(lines) if "# FAILS HERE" in line)
    assert record["failed_at"] == [str(suite_run.suite_file), fail_line]
    assert f'href="../test_suite.py#L{fail_line}"' in suite_run.html
    assert f"test_suite.py:{fail_line}</code>" in suite_run.html


def test_every_record_has_the_anchor_failure_messages_link_to(suite_run):
    for record in suite_run.results["records"]:
        assert suite_run.html.count(f'id="{anchor(record["record_id"])}"') == 1
    # The failing check's message names the report and its record's anchor.
    failing = next(r for r in suite_run.results["records"] if r["record_id"].endswith("shape1.png"))
    # Relative to where pytest ran, so the link also works in a CI artifact.
    assert f"heatmap: out/attention.html#{anchor(failing['record_id'])}" in suite_run.result.stdout
    assert str(suite_run.report) + "#" not in suite_run.result.stdout


def test_the_terminal_summary_says_where_the_report_is(suite_run):
    lines = suite_run.result.stdout.splitlines()
    assert f"vitattn: attention report (8 recorded images): {suite_run.report}" in lines
    assert f"vitattn: numbers for CI: {suite_run.report.parent / 'results.json'}" in lines


def test_the_page_is_self_contained(suite_run):
    # Nothing is fetched: every src and url() is a data URI or an in-page anchor.
    sources = re.findall(r'(?:src|href)="([^"]*)"', suite_run.html)
    assert sources
    assert all(s.startswith(("data:", "#", "../test_suite.py")) for s in sources), sources
    urls = re.findall(r"url\(([^)]*)\)", suite_run.html)
    # Images as data URIs; "#attention-opacity" is the overlay's filter, in the page itself.
    assert urls and all(url.startswith(("data:image/png;base64,", "#")) for url in urls)
    assert "http://" not in suite_run.html and "https://" not in suite_run.html


def test_hostile_names_are_escaped_text(suite_run):
    assert "<script>window.__pwned" not in suite_run.html
    assert '<img src=x onerror="window.__pwned=2">' not in suite_run.html
    assert html.escape("test_hostile_names[<script>window.__pwned=1</script>]") in suite_run.html


def test_the_drifted_baseline_is_shown_beside_the_current_maps(suite_run):
    record = next(r for r in suite_run.results["records"] if "test_baseline" in r["nodeid"])
    assert record["outcome"] == "failed"
    assert record["baseline"] is not None
    section = suite_run.html.split(f'id="{anchor(record["record_id"])}"')[1].split("</section>")[0]
    assert "drifted</span>" in section
    assert section.count('<th scope="row">layer ') == 6
    assert "mass moved" in section


# --- With pytest-xdist and pytest-html ------------------------------------------------


def records_by_id(run: SuiteRun) -> dict[str, dict]:
    by_id = {record["record_id"]: record for record in run.results["records"]}
    assert len(by_id) == len(run.results["records"]), "a record was duplicated"
    return by_id


def test_xdist_gives_the_same_records_and_only_the_controller_writes(suite_run, xdist_run):
    without, spread = records_by_id(suite_run), records_by_id(xdist_run)
    assert sorted(spread) == sorted(without)
    for record_id, record in without.items():
        other = spread[record_id]
        assert other["outcome"] == record["outcome"]
        np.testing.assert_allclose(
            decode_array(other["maps"]).astype(np.float32),
            decode_array(record["maps"]).astype(np.float32),
            atol=1e-3,
        )
        assert [c["value"] for c in other["checks"]] == pytest.approx(
            [c["value"] for c in record["checks"]], abs=1e-5
        )
    assert xdist_run.results["summary"]["outcomes"] == OUTCOMES
    # Workers send their records to the controller and write nothing themselves.
    assert xdist_run.result.stdout.count("vitattn: attention report (8 recorded images)") == 1
    assert sorted(path.name for path in xdist_run.report.parent.iterdir()) == [
        "attention.html",
        "pytest.html",
        "results.json",
    ]


def pytest_html_extras(page_path: Path) -> dict[str, list[dict]]:
    """Test id -> the extras pytest-html stored for it (its page keeps them in a JSON blob)."""
    page = page_path.read_text()
    blob = json.loads(html.unescape(re.search(r'data-jsonblob="([^"]*)"', page).group(1)))
    return {
        test_id: [extra for result in results for extra in result["extras"]]
        for test_id, results in blob["tests"].items()
    }


def test_pytest_html_rows_carry_the_grids_and_a_link_to_the_report(xdist_run):
    extras = pytest_html_extras(xdist_run.report.parent / "pytest.html")
    two = extras["test_suite.py::test_two_images_one_fails"]
    assert [(extra["format_type"], extra["name"]) for extra in two] == [
        ("image", "CLS attention: shape0.png"),
        ("html", None),
        ("image", "CLS attention: shape1.png"),
        ("html", None),
    ]
    assert two[0]["content"].startswith("data:image/png;base64,iVBORw0KGgo")
    # The grid image is labelled: layer names in a left margin, column names on top and a
    # colour bar below, around the 6 x 5 maps of 8 x 8 patches (6 pixels a patch, 2 apart).
    grid = Image.open(io.BytesIO(base64.b64decode(two[0]["content"].split(",", 1)[1])))
    pixels = np.asarray(grid.convert("L"))
    maps_w, maps_h = 5 * (8 * 6 + 2) - 2, 6 * (8 * 6 + 2) - 2
    assert grid.size == (34 + maps_w + 24, 16 + maps_h + 44)
    assert (pixels[16:, :30] < 80).any()  # "L0".."L5" drawn in the left margin
    assert (pixels[:14, 34:] < 80).any()  # "h0".."rollout" drawn on top
    assert "coloured in multiples of uniform attention" in two[1]["content"]
    failing = two[3]["content"]
    record_id = "test_suite.py::test_two_images_one_fails::shape1.png"
    assert "Checks: mass_in_mask " in failing and " FAILED." in failing
    assert f'<a href="attention.html#{anchor(record_id)}">Open in the vitattn report</a>' in failing
    html_extras = [e["content"] for es in extras.values() for e in es if e["format_type"] == "html"]
    assert any("x&lt;img src=x onerror=" in content for content in html_extras)
    assert not any("<img" in content or "<script" in content for content in html_extras)
    assert "test_suite.py::test_skipped" in extras  # tests without records are left alone
    assert extras["test_suite.py::test_skipped"] == []


# --- In a real browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        reason = "Chromium not found: apt-get install chromium (or set VITATTN_CHROMIUM)"
        if os.environ.get("VITATTN_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    with Chromium(window=(1280, 900)) as chromium:
        yield chromium


@pytest.fixture
def page(browser, suite_run):
    browser.console_errors.clear()
    browser.call("Emulation.setScriptExecutionDisabled", value=False)
    browser.open(suite_run.report.as_uri())
    return browser


def visible_statuses(page) -> list[str]:
    return page.evaluate(
        "[...document.querySelectorAll('.record')]"
        ".filter(r => getComputedStyle(r).display !== 'none')"
        ".map(r => r.querySelector('h2 .badge').textContent)"
    )


def test_the_browser_catches_console_errors_and_exceptions(browser):
    # The check the report must pass can fail: a page with errors is caught.
    browser.console_errors.clear()
    browser.open("data:text/html,<script>console.error('boom'); undefined_name();</script>")
    assert browser.console_errors[0] == "boom"
    assert "undefined_name is not defined" in browser.console_errors[1]


def test_it_renders_without_console_errors(page, suite_run):
    assert page.evaluate("document.querySelectorAll('.record').length") == 8
    assert page.evaluate("document.getElementById('shown-count').textContent") == (
        "8 of 8 records shown"
    )
    page.screenshot()  # paints the first screen: images decoded, styles applied
    assert page.console_errors == []


def test_failures_come_first(page):
    statuses = visible_statuses(page)
    assert statuses[:2] == ["failed", "failed"]
    assert [RANK[status] for status in statuses] == sorted(RANK[s] for s in statuses)


def test_the_status_filter_works_from_the_keyboard(page):
    page.evaluate("document.getElementById('filter-status-passed').focus()")
    page.press(" ", "Space", " ")
    statuses = visible_statuses(page)
    assert "passed" not in statuses
    # The image whose check failed (not its passing neighbour), and the baseline's.
    assert statuses.count("failed") == 2
    shown = page.evaluate("document.getElementById('shown-count').textContent")
    assert shown == "3 of 8 records shown"


def test_the_name_filter_keeps_matching_tests(page):
    page.evaluate(
        "const box = document.getElementById('filter-name'); box.value = 'HOSTILE';"
        "box.dispatchEvent(new Event('input'))"
    )
    shown = page.evaluate(
        "[...document.querySelectorAll('.record')].filter(r => !r.hidden).map(r => r.dataset.test)"
    )
    assert len(shown) == 2 and all("test_hostile_names" in test for test in shown)


def shown_layer(page, record_id: str) -> str:
    """The background position of the map shown over the image, or "" for none."""
    return page.evaluate(
        f"(() => {{ const layers = document.querySelectorAll('#{anchor(record_id)} .layers .map');"
        "const shown = [...layers].filter(l => getComputedStyle(l).display !== 'none');"
        "return shown.map(l => getComputedStyle(l).backgroundPosition).join('|'); })()"
    )


def test_the_overlay_switches_with_the_keyboard_and_without_javascript(browser, suite_run):
    record_id = "test_suite.py::test_looks_at_the_shape::shape0.png"
    browser.call("Emulation.setScriptExecutionDisabled", value=True)
    try:
        browser.open(suite_run.report.as_uri())
        assert browser.evaluate("document.documentElement.classList.contains('js')") is False
        first = shown_layer(browser, record_id)
        assert first not in ("", "0% 0%")
        browser.evaluate(f"document.querySelector('#{anchor(record_id)} .choice').focus()")
        browser.press("ArrowDown", "ArrowDown")  # the next radio: rollout to the last layer
        second = shown_layer(browser, record_id)
        assert second not in ("", first)
        assert "|" not in second  # exactly one map at a time
        browser.evaluate(f"document.getElementById('{anchor(record_id)}-overlay-none').click()")
        assert shown_layer(browser, record_id) == ""
    finally:
        browser.call("Emulation.setScriptExecutionDisabled", value=False)


def test_clicking_a_grid_map_lays_it_over_the_image(page):
    record_id = "test_suite.py::test_looks_at_the_shape::shape0.png"
    target = anchor(record_id)
    page.evaluate(
        f"document.querySelector('#{target} .grid tbody tr:nth-child(3) td').firstChild.click()"
    )
    assert page.evaluate(f"document.getElementById('{target}-overlay-cell').checked")
    # Row 3 is layer 2; column 1 is head 0: the sprite position of that map, zoomed.
    zoom, step_y = page.evaluate(
        f"(() => {{ const s = document.querySelector('#{target} .stage');"
        "return [Number(s.dataset.zoom), Number(s.dataset.steps.split(' ')[1])]; })()"
    )
    assert shown_layer(page, record_id) == f"0px {-2 * step_y * zoom}px"


def test_grid_maps_are_reached_and_shown_with_the_keyboard(page):
    record_id = "test_suite.py::test_looks_at_the_shape::shape0.png"
    target = anchor(record_id)
    stops = page.evaluate(
        f"document.querySelectorAll('#{target} .grid .map[tabindex=\"0\"]').length"
    )
    assert stops == 1  # one tab stop per grid, not one per map
    page.evaluate(f"document.querySelector('#{target} .grid .map').focus()")
    for key in ("ArrowDown", "ArrowDown", "ArrowRight"):
        page.press(key)
    page.press("Enter", "Enter", "\r")
    zoom, step_x, step_y = page.evaluate(
        f"(() => {{ const s = document.querySelector('#{target} .stage');"
        "return [Number(s.dataset.zoom), ...s.dataset.steps.split(' ').map(Number)]; })()"
    )
    # Layer 2, head 1.
    assert shown_layer(page, record_id) == f"{-step_x * zoom}px {-2 * step_y * zoom}px"


def test_hostile_names_show_as_text_and_never_run(page):
    assert page.evaluate("window.__pwned") is None
    labels = page.evaluate(
        "[...document.querySelectorAll('.record .nodeid, .record .image-label')]"
        ".map(e => e.textContent)"
    )
    assert "test_suite.py::test_hostile_names[<script>window.__pwned=1</script>]" in labels
    assert 'x<img src=x onerror="window.__pwned=2">.png' in labels
    assert page.console_errors == []


def test_a_link_from_a_failure_message_lands_on_its_record(browser, suite_run):
    failing = suite_run.results["records"][0]
    browser.open(f"{suite_run.report.as_uri()}#{anchor(failing['record_id'])}")
    assert browser.evaluate("document.querySelector(':target').id") == anchor(failing["record_id"])
