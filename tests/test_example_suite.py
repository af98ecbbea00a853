"""The example suite as a newcomer runs it: green with the faithful model, and its stored
baselines catch the shortcut model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "example_suite"


def run_suite(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "report.html"
    env = {**os.environ, "CI": "1"}  # never write a baseline from a test run
    env.pop("VITATTN_DEIT_TINY_WEIGHTS", None)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            f"--vitattn-report={report}",
            *args,
        ],
        cwd=SUITE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    return completed, results


def test_the_example_suite_passes_and_reports_the_shortcut_failures(tmp_path):
    completed, results = run_suite(tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:]
    outcomes = {record["outcome"] for record in results["records"]}
    assert {"passed", "xfailed"} <= outcomes
    assert "skipped" in completed.stdout.splitlines()[-1]  # the deit module says how to enable it
    shortcut = [
        r for r in results["records"] if r["model"]["name"] == "vitattn_tiny_shapes_shortcut"
    ]
    failed_checks = [c for r in shortcut for c in r["checks"] if c["passed"] is False]
    assert failed_checks, "the shortcut model's attention checks must fail (and be xfailed)"


@pytest.mark.parametrize(
    ("model", "expect_pass"),
    [("vitattn_tiny_shapes", True), ("vitattn_tiny_shapes_shortcut", False)],
)
def test_stored_baselines_pass_the_faithful_model_and_fail_the_shortcut(
    tmp_path, model, expect_pass
):
    completed, results = run_suite(tmp_path, "test_baselines.py", f"--vitattn-model={model}")
    checks = [c for r in results["records"] for c in r["checks"] if c["name"] == "baseline"]
    assert len(checks) == 6
    if expect_pass:
        assert completed.returncode == 0, completed.stdout[-3000:]
        assert all(check["passed"] for check in checks)
    else:
        assert completed.returncode == 1
        assert not any(check["passed"] for check in checks)
        # The shortcut model reads six layers where the faithful one reads one (block 5):
        # the error names that and the model that caused it.
        errors = [
            line
            for line in completed.stdout.splitlines()
            if line.startswith("E ") and "was made under other conditions" in line
        ]
        assert len(errors) == 6, completed.stdout[-3000:]
        assert "- layers: baseline 1, this run 6" in completed.stdout
        assert f"- model: this run uses {model}" in completed.stdout
