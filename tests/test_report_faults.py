"""The report survives what goes wrong: bad paths, Ctrl-C, failing tests, failed renders."""

from __future__ import annotations

import json
import stat

import pytest

from pytest_vitattn.report.run_info import RunInfo, installed_versions
from pytest_vitattn.report.writer import write_atomically, write_report

NO_MODEL_TEST = "def test_plain():\n    assert True\n"


def test_an_unwritable_report_path_stops_the_run_before_any_test(pytester):
    pytester.makepyfile(NO_MODEL_TEST)
    (pytester.path / "blocker").write_text("a file, not a folder")
    result = pytester.runpytest("--vitattn-report=blocker/sub/report.html")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: --vitattn-report: cannot create the folder {pytester.path}/blocker/sub: "
            f"{pytester.path}/blocker is a file"
        ]
    )
    assert "test_plain" not in result.stdout.str()


def test_a_folder_is_not_a_report_path(pytester):
    pytester.makepyfile(NO_MODEL_TEST)
    pytester.mkdir("reports")
    result = pytester.runpytest("--vitattn-report=reports")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: --vitattn-report: {pytester.path}/reports is a folder; give a file name, "
            f"e.g. --vitattn-report={pytester.path}/reports/report.html"
        ]
    )


def test_the_default_path_gets_a_report_even_with_nothing_recorded(pytester):
    pytester.makepyfile(NO_MODEL_TEST)
    result = pytester.runpytest("--vitattn-report")
    result.assert_outcomes(passed=1)
    folder = pytester.path / "vitattn-report"
    results = json.loads((folder / "results.json").read_text())
    assert results["records"] == []
    assert results["summary"]["outcomes"] == {"passed": 1}
    assert "No attention was recorded in this run" in (folder / "report.html").read_text()
    result.stdout.fnmatch_lines(
        [f"vitattn: attention report (0 recorded images): {folder}/report.html"]
    )


INTERRUPTED = """
import pytest
from pytest_vitattn import synthetic

IMAGE = synthetic.make_sample(0, split="test").image


@pytest.mark.vitattn(model="vitattn_tiny_shapes", weights="random")
def test_fails_first(vitattn):
    vitattn(IMAGE).expect(layer=-1).concentration(at_least=1.0)


def test_then_ctrl_c():
    raise KeyboardInterrupt


def test_never_runs():
    pass
"""


def test_a_run_stopped_by_ctrl_c_still_writes_what_was_recorded(pytester):
    pytester.makepyfile(test_interrupted=INTERRUPTED)
    result = pytester.runpytest_subprocess(
        "-p", "no:xdist", "-p", "no:hypothesispytest", "--vitattn-report=out/r.html"
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    folder = pytester.path / "out"
    results = json.loads((folder / "results.json").read_text())
    assert results["summary"]["exitstatus"] == int(pytest.ExitCode.INTERRUPTED)
    assert results["summary"]["outcomes"] == {"failed": 1}
    (record,) = results["records"]
    assert (record["nodeid"], record["outcome"]) == (
        "test_interrupted.py::test_fails_first",
        "failed",
    )
    assert record["checks"][0]["passed"] is False
    assert 'class="record status-failed' in (folder / "r.html").read_text()
    # Only the two files: the temporary files were renamed, none left behind.
    assert sorted(path.name for path in folder.iterdir()) == ["r.html", "results.json"]
    result.stdout.fnmatch_lines(["vitattn: attention report (1 recorded images): *r.html"])


def test_a_failed_render_keeps_the_previous_report(tmp_path):
    report = tmp_path / "report.html"
    run = RunInfo("pytest", "now", str(tmp_path), installed_versions(), {"passed": 1})
    first = write_report([], report, run)
    before = report.read_text(), first.json.read_text()
    broken_record = {"record_id": "t::a.png", "nodeid": "t", "outcome": "passed"}  # no maps
    with pytest.raises(KeyError):
        write_report([broken_record], report, run)
    assert (report.read_text(), first.json.read_text()) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.html", "results.json"]


def test_an_atomic_write_replaces_the_file_readable_by_others(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old")
    write_atomically(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [path.name for path in tmp_path.iterdir()] == ["report.html"]
