"""Every failure explained, on the right image: records from setup, call and teardown, with
pytest's own text, one status per image and one counting rule.

A real pytest run through pytester (the shipped models, real synthetic images) of a suite
with a fixture that probes and then raises, a teardown error after a passing test, a plain
``assert`` on a measurement, a batch whose first image fails, an xfail, a skip after
probing and a pass; run once serially and once with ``-n 2``.

The default model's blocks 0-4 are local (their CLS token reads no patch), so the plugin
reads it as one layer, without rollout. The batch, whose failed record the browser tests
look at in detail, probes ``vitattn_tiny_shapes_shortcut`` instead: a trained ViT whose 6
blocks all attend globally, so its grid has a row per layer and a rollout column.
"""

from __future__ import annotations

import html
import io
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_vitattn.records import anchor
from pytest_vitattn.report.chromium import Chromium, find_chromium

SUITE = """
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
    return pairs


@pytest.fixture
def probed_then_broken(vitattn, files):
    vitattn(files[0][0])
    raise RuntimeError("the fixture broke after probing")


@pytest.fixture
def breaks_in_teardown():
    yield
    raise RuntimeError("the teardown broke")


def test_setup_error(probed_then_broken):
    pass


def test_teardown_error(vitattn, files, breaks_in_teardown):
    image, mask = files[0]
    vitattn(image).expect(layer=-1).mass_in(mask, at_least=0.0)


def test_plain_assert(vitattn, files):
    image, mask = files[1]
    attn = vitattn(image)
    assert attn.layer(-1).mean_heads().mass_in(mask) >= 0.999


@pytest.mark.vitattn(model="vitattn_tiny_shapes_shortcut")  # 6 layers, with rollout
def test_batch_first_fails(vitattn, files):
    (first, first_mask), (second, second_mask) = files
    attentions = vitattn([first, second])
    attentions[0].expect(layer=-1, head=1).mass_in(first_mask, at_least=0.999)
    attentions[1].expect(layer=-1).mass_in(second_mask, at_least=0.0)


@pytest.mark.xfail(reason="too strict for this model", strict=True)
def test_expected_to_fail(vitattn, files):
    image, mask = files[0]
    vitattn(image).expect(layer=-1).mass_in(mask, at_least=0.999)


def test_skipped_after_probing(vitattn, files):
    vitattn(files[0][0])
    pytest.skip("not today")


def test_passes(vitattn, files):
    image, mask = files[1]
    vitattn(image).expect(layer=-1).mass_in(mask, at_least=0.0)


def test_red_object(vitattn, tmp_path):
    # A red object on red: an outline in red would vanish here.
    pixels = np.zeros((224, 224, 3), np.uint8)
    pixels[...] = (255, 0, 0)
    mask = np.zeros((224, 224), bool)
    mask[56:168, 56:168] = True
    Image.fromarray(pixels).save(tmp_path / "red.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "red_mask.png")
    vitattn(tmp_path / "red.png").expect(layer=-1).mass_in(tmp_path / "red_mask.png", at_least=0.0)
"""

TESTS = {  # pytest's counting: the teardown error counts on top of the pass
    "failed": 2,
    "error": 2,
    "xfailed": 1,
    "skipped": 1,
    "passed": 3,
}
IMAGES = {
    "failed": 2,
    "error": 2,
    "not-judged": 1,
    "xfailed": 1,
    "skipped": 1,
    "passed": 2,
}


def run_suite(folder: Path, out: str, *args: str):
    """Runs the suite in a subprocess (as pytester's ``runpytest_subprocess``)."""
    (folder / "test_suite.py").write_text(SUITE)
    (folder / "pytest.ini").write_text("[pytest]\n")
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:hypothesispytest",
            f"--vitattn-report={out}/report.html",
            *args,
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    results = json.loads((folder / out / "results.json").read_text())
    html = (folder / out / "report.html").read_text()
    return result, results, html


@pytest.fixture(scope="module")
def suite_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("phases")


@pytest.fixture(scope="module")
def phases_run(suite_folder):
    return run_suite(suite_folder, "serial", "-p", "no:xdist")


def line_of(text: str) -> int:
    """The 1-based line of ``text`` in the suite file."""
    return SUITE[: SUITE.index(text)].count("\n") + 1


def by_test(results) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for record in results["records"]:
        grouped.setdefault(record["nodeid"].split("::")[1], []).append(record)
    return grouped


def test_pytest_and_the_report_count_tests_the_same_way(phases_run):
    result, results, _ = phases_run
    assert result.returncode == 1
    assert "2 failed, 3 passed, 1 skipped, 1 xfailed, 2 errors in" in result.stdout
    assert results["summary"]["outcomes"] == TESTS
    assert results["summary"]["images"] == IMAGES
    failures = results["summary"]["failures"]
    # One entry per failing report: as many as the header's failed + error.
    assert [(f["nodeid"].split("::")[1], f["phase"], f["outcome"]) for f in failures] == [
        ("test_setup_error", "setup", "error"),
        ("test_teardown_error", "teardown", "error"),
        ("test_plain_assert", "call", "failed"),
        ("test_batch_first_fails", "call", "failed"),
    ]


def test_a_fixture_that_probes_then_raises_gives_an_error_record(phases_run):
    (record,) = by_test(phases_run[1])["test_setup_error"]
    assert (record["status"], record["outcome"], record["phase"]) == ("error", "error", "setup")
    (failure,) = record["failures"]
    assert failure["phase"] == "setup"
    assert failure["message"] == "RuntimeError: the fixture broke after probing"
    assert failure["where"][1] == line_of('raise RuntimeError("the fixture broke')


def test_a_teardown_error_after_a_pass_is_an_error_not_a_pass(phases_run):
    (record,) = by_test(phases_run[1])["test_teardown_error"]
    assert (record["status"], record["phase"]) == ("error", "teardown")
    assert record["failures"][0]["message"] == "RuntimeError: the teardown broke"
    assert record["checks"][0]["passed"] is True


def test_a_plain_assert_failure_carries_pytests_rewritten_text(phases_run):
    (record,) = by_test(phases_run[1])["test_plain_assert"]
    assert (record["status"], record["phase"]) == ("failed", "call")
    message = record["failures"][0]["message"]
    measured = record["checks"][0]["value"]
    # Assertion rewriting: the compared values and where they came from.
    assert message.startswith(f"AssertionError: assert {measured!r} >= 0.999\n"), message
    assert f"where {measured!r} = mass_in(" in message
    assert record["failed_at"][1] == line_of("assert attn.layer(-1)")
    assert record["checks"][0]["passed"] is None  # a measurement: vitattn did not judge


def test_only_the_image_whose_check_failed_is_failed(phases_run):
    first, second = by_test(phases_run[1])["test_batch_first_fails"]
    assert (first["image_label"], first["status"]) == ("shape0.png", "failed")
    assert (second["image_label"], second["status"]) == ("shape1.png", "not-judged")
    assert second["checks"] == []
    assert second["outcome"] == first["outcome"] == "failed"


def test_xfailed_records_keep_where_they_failed(phases_run):
    (record,) = by_test(phases_run[1])["test_expected_to_fail"]
    assert record["status"] == "xfailed"
    assert record["failed_at"][1] == line_of("at_least=0.999)\n\n\ndef test_skipped")
    assert "too strict for this model" in record["failures"][0]["message"]
    assert record["failures"][0]["message"].startswith(
        "AssertionError: CLS attention mass in mask is "
    )


def test_a_skip_after_probing_keeps_its_record_and_reason(phases_run):
    (record,) = by_test(phases_run[1])["test_skipped_after_probing"]
    assert (record["status"], record["phase"]) == ("skipped", "call")
    assert record["failures"][0]["message"] == "Skipped: not today"


def test_failure_messages_link_to_the_report_relative_to_where_pytest_ran(phases_run):
    result = phases_run[0]
    lines = [line for line in result.stdout.splitlines() if "heatmap: " in line]
    assert lines, result.stdout
    for line in lines:
        link = line.split("heatmap: ", 1)[1]
        assert link.startswith("serial/report.html#rec-"), line


def test_the_html_shows_every_failure_with_its_reason(phases_run):
    _, results, page = phases_run
    assert "Failures (4)" in page
    assert "RuntimeError: the fixture broke after probing" in page
    assert "RuntimeError: the teardown broke" in page
    assert "&gt;= 0.999" in page  # the plain assert's rewritten text, escaped
    assert "1 image not judged" in page
    check = by_test(results)["test_batch_first_fails"][0]["checks"][0]
    # The failures list gives value, threshold and the first message line.
    assert f"mass in mask {check['value']:.3f} (expected ≥ {check['threshold']:.3f})" in page
    assert html.escape(check["message"].split("\n")[0], quote=False) in page


def comparable(data) -> str:
    """JSON of ``data`` without what differs between any two runs: object addresses in
    pytest's text, temporary folders, the report folder's name."""
    text = json.dumps(data, sort_keys=True)
    text = re.sub(r"0x[0-9a-f]+", "0x?", text)
    text = re.sub(r"/tmp/[^'\"]*/images0/", "<images>/", text)
    return text.replace("spread/report.html", "serial/report.html")


def test_xdist_gives_identical_records_and_failures(phases_run, suite_folder):
    _, serial, _ = phases_run
    _, spread, _ = run_suite(suite_folder, "spread", "-n", "2")
    assert spread["summary"]["outcomes"] == serial["summary"]["outcomes"]
    assert spread["summary"]["images"] == serial["summary"]["images"]
    assert comparable(spread["summary"]["failures"]) == comparable(serial["summary"]["failures"])
    keys = ("record_id", "status", "outcome", "phase", "failures", "failed_at", "checks")

    def essentials(results):
        return sorted(
            comparable({key: record[key] for key in keys}) for record in results["records"]
        )

    assert essentials(spread) == essentials(serial)


@pytest.mark.parametrize(
    ("outcome", "checks", "other_failed", "status"),
    [
        ("failed", [False], True, "failed"),
        ("failed", [], True, "not-judged"),
        ("failed", [None], True, "not-judged"),
        ("failed", [True], True, "passed"),
        ("failed", [None], False, "failed"),
        ("error", [True], False, "error"),
        ("xfailed", [False], True, "xfailed"),
    ],
)
def test_image_status_rules(outcome, checks, other_failed, status):
    from pytest_vitattn.records import CheckResult
    from pytest_vitattn.report.verdicts import image_status

    made = [CheckResult("mass_in_mask", 0.5, passed, ">=", 0.6, 0.1, "s") for passed in checks]
    assert image_status(outcome, made, other_failed) == status


# --- In a real browser: counts, layout at laptop and phone widths, outline contrast ------

WIDE, NARROW = (1440, 900), (390, 844)


@pytest.fixture(scope="module")
def report_folder(phases_run, suite_folder) -> Path:
    """The folder of the serial run, whose report the browser tests open."""
    return suite_folder


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        reason = "Chromium not found: apt-get install chromium (or set VITATTN_CHROMIUM)"
        if os.environ.get("VITATTN_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    with Chromium(window=WIDE) as chromium:
        yield chromium


def open_report(browser, report_folder: Path, size: tuple[int, int], fragment: str = "") -> None:
    width, height = size
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        width=width,
        height=height,
        deviceScaleFactor=1,
        mobile=width < 600,
    )
    browser.console_errors.clear()
    browser.open((report_folder / "serial" / "report.html").as_uri() + fragment)


def keep_screenshot(browser, name: str) -> Image.Image:
    """The viewport as an image; kept in $VITATTN_SCREENSHOTS (a CI artifact) when set."""
    png = browser.screenshot()
    folder = os.environ.get("VITATTN_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.png").write_bytes(png)
    return Image.open(io.BytesIO(png)).convert("RGB")


def test_the_browser_shows_one_count_per_status_everywhere(browser, phases_run, report_folder):
    open_report(browser, report_folder, WIDE)
    shown = browser.evaluate(
        "(() => { const counts = {}; for (const r of document.querySelectorAll('.record')) {"
        "  const s = [...r.classList].find(c => c.startsWith('status-')).slice(7);"
        "  counts[s] = (counts[s] || 0) + 1; } return counts; })()"
    )
    assert shown == IMAGES
    header = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('.summary .images .badge')]"
        ".map(b => [b.dataset.status, Number(b.dataset.count)]))"
    )
    tests = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('.summary .outcomes .badge')]"
        ".map(b => [b.dataset.status, Number(b.dataset.count)]))"
    )
    filters = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('.filters [data-hides^=status-]')]"
        ".map(b => [b.dataset.hides.slice(7),"
        " Number(b.nextElementSibling.textContent.match(/\\((\\d+)\\)/)[1])]))"
    )
    assert header == filters == IMAGES
    assert tests == TESTS
    entries = browser.evaluate("document.querySelectorAll('.failures li.failure').length")
    assert entries == TESTS["failed"] + TESTS["error"]
    # Errors have their own filter.
    browser.evaluate("document.getElementById('filter-status-error').click()")
    hidden = browser.evaluate(
        "[...document.querySelectorAll('.record')]"
        ".filter(r => getComputedStyle(r).display === 'none').length"
    )
    assert hidden == IMAGES["error"]
    assert browser.console_errors == []


OVERFLOWING = """(() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const element of document.querySelectorAll('body *')) {
    if (element.closest('[hidden], .skip')) continue;
    let scrolled = false;  // inside a box that scrolls sideways: it may be wider
    for (let up = element.parentElement; up && up !== document.body; up = up.parentElement) {
      if (['auto', 'scroll'].includes(getComputedStyle(up).overflowX)) { scrolled = true; break; }
    }
    if (scrolled) continue;
    const box = element.getBoundingClientRect();
    if (box.width && (box.right > width + 0.5 || box.left < -0.5)) {
      out.push(element.tagName + '.' + element.className + ' ' + Math.round(box.left) +
               '..' + Math.round(box.right));
    }
  }
  return out.slice(0, 10);
})()"""


def box(browser, selector: str) -> dict[str, float]:
    return browser.evaluate(
        f"(() => {{ const b = document.querySelector({json.dumps(selector)})"
        ".getBoundingClientRect(); return {left: b.left, right: b.right, top: b.top,"
        " bottom: b.bottom, width: b.width, height: b.height}; })()"
    )


@pytest.mark.parametrize("size", [WIDE, NARROW], ids=["1440px", "390px"])
def test_nothing_overflows_the_viewport(browser, report_folder, size):
    open_report(browser, report_folder, size)
    keep_screenshot(browser, f"top-{size[0]}")
    record = anchor("test_suite.py::test_batch_first_fails::shape0.png")
    browser.evaluate(f"document.getElementById('{record}').scrollIntoView()")
    keep_screenshot(browser, f"failed-record-{size[0]}")
    browser.evaluate(f"document.querySelector('#{record} .grid-box').scrollIntoView()")
    keep_screenshot(browser, f"failed-grid-{size[0]}")
    assert browser.evaluate(OVERFLOWING) == []
    page_width = browser.evaluate("document.documentElement.scrollWidth")
    assert page_width <= size[0]


def test_on_a_laptop_the_grid_sits_beside_the_overlay(browser, report_folder):
    open_report(browser, report_folder, WIDE)
    record = "#" + anchor("test_suite.py::test_batch_first_fails::shape0.png")
    overlay, grid = box(browser, f"{record} .stage"), box(browser, f"{record} .grid-box")
    assert grid["left"] >= overlay["right"]
    assert grid["top"] < overlay["bottom"]  # side by side, not below


def test_on_a_phone_the_bar_is_small_and_the_failures_one_column(browser, report_folder):
    open_report(browser, report_folder, NARROW)
    bar = box(browser, ".filters")
    assert bar["height"] <= 0.08 * NARROW[1], bar
    items = browser.evaluate(
        "[...document.querySelectorAll('.failures li.failure')].map(li => {"
        " const b = li.getBoundingClientRect(); return [b.left, b.top, b.bottom]; })"
    )
    assert len({round(left) for left, _, _ in items}) == 1  # one column
    for (_, _, bottom), (_, top, _) in itertools.pairwise(items):
        assert top >= bottom - 0.5  # no entry overlaps the next
    # Wide tables scroll inside their box instead of widening the page.
    record = "#" + anchor("test_suite.py::test_batch_first_fails::shape0.png")
    scroller = browser.evaluate(
        f"(() => {{ const s = document.querySelector('{record} .grid-box .scroll');"
        "return [s.scrollWidth, s.clientWidth, getComputedStyle(s).overflowX]; })()"
    )
    assert scroller[2] == "auto" and scroller[1] <= NARROW[0]


def test_each_map_shows_its_peak_and_the_failed_checks_map_stands_out(browser, report_folder):
    open_report(browser, report_folder, WIDE)
    record = "#" + anchor("test_suite.py::test_batch_first_fails::shape0.png")
    peaks = browser.evaluate(
        f"[...document.querySelectorAll('{record} .grid .peak')]"
        ".map(p => [p.textContent, p.getBoundingClientRect().height])"
    )
    assert len(peaks) == 6 * 5  # 6 layers x (3 heads, mean, rollout)
    assert all(re.fullmatch(r"(✗ )?\d+(\.\d)?x( failed check)?", text) for text, _ in peaks)
    assert all(height > 8 for _, height in peaks)  # visible, not a tooltip
    judged = browser.evaluate(
        f"[...document.querySelectorAll('{record} .grid td.judged-failed')].map(td =>"
        " [td.parentElement.sectionRowIndex, td.cellIndex - 1,"
        "  getComputedStyle(td.querySelector('.map')).outlineStyle])"
    )
    assert judged == [[5, 1, "solid"]]  # layer 5 (the last), head 1: the check's map
    first_choice = browser.evaluate(
        f"document.querySelector('{record} .choice + label').textContent"
    )
    assert first_choice == "failed check: layer 5 head 1"


def test_the_colour_scale_is_shared_by_default_and_per_map_on_request(browser, report_folder):
    open_report(browser, report_folder, WIDE)
    record = "#" + anchor("test_suite.py::test_passes::shape1.png")
    sprite = f"getComputedStyle(document.querySelector('{record} .grid .map')).backgroundImage"
    shown = (
        f"[...document.querySelectorAll('{record} .colourbar')]"
        ".filter(c => getComputedStyle(c).display !== 'none').map(c => c.className)"
    )
    shared = browser.evaluate(sprite)
    assert browser.evaluate(shown) == ["colourbar scale-shared"]
    ticks = browser.evaluate(f"document.querySelector('{record} .colourbar .ticks').textContent")
    assert "1x" in ticks and "1/8x" in ticks
    browser.evaluate("document.getElementById('scale-own').click()")
    assert browser.evaluate(shown) == ["colourbar scale-own"]
    own = browser.evaluate(sprite)
    assert own != shared and own.startswith('url("data:image/png')


def luminance(colour) -> float:
    channels = np.asarray(colour[:3], float) / 255
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def contrast(first, second) -> float:
    high, low = sorted((luminance(first), luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# Records are laid out lazily (``content-visibility: auto``): records that come near the
# viewport after a scroll take their real height on the next frame and move what is below
# them. So scroll, let two frames pass, and repeat until the stage stays where it is.
SETTLE_AT_STAGE = """(async () => {{
  const stage = document.querySelector('#{record} .stage');
  let last = null;
  for (let attempt = 0; attempt < 40; attempt++) {{
    window.scrollTo(0, stage.getBoundingClientRect().top + window.scrollY - 200);
    await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
    const top = stage.getBoundingClientRect().top;
    if (top === last) return top;
    last = top;
  }}
  throw new Error('the layout around the stage did not settle');
}})()"""


def stage_pixels(browser, record: str) -> np.ndarray:
    """(h, w, 3) int screenshot pixels of a record's overlay stage, once the layout is still."""
    browser.evaluate(SETTLE_AT_STAGE.format(record=record))
    stage = box(browser, f"#{record} .stage")
    shot = keep_screenshot(browser, f"stage-{record}")
    edges = (stage["left"], stage["top"], stage["right"], stage["bottom"])
    return np.asarray(shot.crop(tuple(round(edge) for edge in edges))).astype(int)


def test_the_mask_outline_is_visible_on_a_red_object(browser, report_folder):
    open_report(browser, report_folder, WIDE)
    record = anchor("test_suite.py::test_red_object::red.png")
    browser.evaluate(f"document.getElementById('{record}-overlay-none').click()")  # image only
    crop = stage_pixels(browser, record)
    row = crop[crop.shape[0] // 2]  # a line across the middle of the image and its mask
    red = row[5]
    assert contrast(red, (255, 0, 0)) < 1.1  # the background really is red here
    edge = round(crop.shape[1] * 56 / 224)  # where the mask starts
    near = row[edge - 6 : edge + 6]
    light = max(near, key=luminance)
    dark = min(near, key=luminance)
    assert contrast(light, red) >= 3 and contrast(dark, red) >= 3
    assert contrast(light, dark) >= 7


def test_the_overlay_leaves_the_image_as_it_is_where_attention_is_not_above_uniform(
    browser, phases_run, report_folder
):
    from pytest_vitattn.records import decode_array

    record_id = "test_suite.py::test_batch_first_fails::shape0.png"
    data = next(r for r in phases_run[1]["records"] if r["record_id"] == record_id)
    shown = decode_array(data["maps"]).astype(np.float32)[-1, 1]  # the failed check's map
    multiples = shown * shown.size
    open_report(browser, report_folder, WIDE)
    record = anchor(record_id)
    with_map = stage_pixels(browser, record)  # the failed check's map is shown first
    browser.evaluate(f"document.getElementById('{record}-overlay-none').click()")
    image_only = stage_pixels(browser, record)
    grid_h, grid_w = shown.shape
    patch_h, patch_w = with_map.shape[0] // grid_h, with_map.shape[1] // grid_w
    change = (
        np.abs(with_map - image_only)[: grid_h * patch_h, : grid_w * patch_w]
        .reshape(grid_h, patch_h, grid_w, patch_w, 3)
        .mean(axis=(1, 3, 4))
    )
    assert (multiples <= 1).sum() >= grid_h * grid_w // 2  # most of the map is below 1x
    assert change[multiples <= 1].max() < 2  # the image shows through untouched
    assert (multiples >= 8).any() and change[multiples >= 8].min() > 25  # hot patches stand out
