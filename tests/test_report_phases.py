"""Every failure explained, on the right image: records from setup, call and teardown, with
pytest's own text, one status per image and one counting rule.

A real pytest run through pytester (the shipped model, real synthetic images) of a suite
with a fixture that probes and then raises, a teardown error after a passing test, a plain
``assert`` on a measurement, a batch whose first image fails, an xfail, a skip after
probing and a pass; run once serially and once with ``-n 2``.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
"""

TESTS = {  # pytest's counting: the teardown error counts on top of the pass
    "failed": 2,
    "error": 2,
    "xfailed": 1,
    "skipped": 1,
    "passed": 2,
}
IMAGES = {
    "failed": 2,
    "error": 2,
    "not-judged": 1,
    "xfailed": 1,
    "skipped": 1,
    "passed": 1,
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
    assert "2 failed, 2 passed, 1 skipped, 1 xfailed, 2 errors in" in result.stdout
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
