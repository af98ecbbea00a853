"""The report renders from an installed wheel, whose templates live inside the package.

Builds the wheel from this checkout (hatchling, without build isolation, so offline), installs
it with ``pip install --target`` and renders a report in a fresh interpreter that imports the
installed copy, not the editable one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_vitattn

REPO = Path(pytest_vitattn.__file__).resolve().parents[1]

RENDER = """
import sys
from pathlib import Path

import numpy as np

import pytest_vitattn
from pytest_vitattn.records import AttentionRecord
from pytest_vitattn.report.html import template_dirs
from pytest_vitattn.report.run_info import RunInfo, installed_versions
from pytest_vitattn.report.writer import write_report

site, out = Path(sys.argv[1]), Path(sys.argv[2])
assert Path(pytest_vitattn.__file__).is_relative_to(site), pytest_vitattn.__file__
assert template_dirs() == [site / "pytest_vitattn" / "templates"], template_dirs()
maps = np.full((2, 3, 4, 4), 1 / 16, np.float32)
record = AttentionRecord(
    record_id="t.py::test_wheel::a.png", nodeid="t.py::test_wheel", location=("t.py", 1),
    image_label="a.png", model={"name": "tiny", "weights": "random", "weights_id": "-"},
    preprocessing={}, method="fast", num_prefix_tokens=1, query_index=0,
    image=np.zeros((32, 32, 3), np.uint8), maps=maps, rollout=None,
    prefix_share=np.zeros((2, 3), np.float32), outcome="passed",
)
run = RunInfo("pytest", "now", str(out), installed_versions())
print(write_report([record.to_dict()], out / "report.html", run).html)
"""


@pytest.mark.skipif(
    not (REPO / "pyproject.toml").is_file(), reason="needs the source checkout to build from"
)
def test_an_installed_wheel_renders_the_report_with_its_own_templates(tmp_path):
    pytest.importorskip("hatchling", reason="building the wheel offline needs hatchling")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    dist, site, out = tmp_path / "dist", tmp_path / "site", tmp_path / "out"
    subprocess.run(
        [*pip, "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(dist)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("pytest_vitattn-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    assert (site / "pytest_vitattn" / "templates" / "report.html").is_file()

    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", RENDER, str(site), str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    page = (out / "report.html").read_text()
    assert result.stdout.strip() == str(out / "report.html")
    assert 'id="rec-' in page and "t.py::test_wheel" in page
    assert ".record { padding" in page  # the stylesheet was inlined from the package
    assert (out / "results.json").is_file()
