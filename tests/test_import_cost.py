"""Installing the plugin costs nothing in pytest runs that don't use it: no torch, no timm.

Each check runs in a fresh interpreter, so what this test process imported doesn't count.
Timings: ``benchmarks/bench_plugin_import.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "timm", "torchvision")

_REPORT = """
import json, sys
heavy = [name for name in {heavy!r} if name in sys.modules]
print(json.dumps({{"heavy": heavy, "plugin": "pytest_vitattn.plugin" in sys.modules}}))
"""


def run_python(code: str, cwd: Path) -> dict:
    """Run ``code`` then report which heavy modules got imported; returns that report."""
    script = code + _REPORT.format(heavy=HEAVY)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_plugin_imports_neither_torch_nor_timm(tmp_path):
    assert run_python("import pytest_vitattn.plugin", tmp_path) == {"heavy": [], "plugin": True}


def test_pytest_help_with_the_plugin_imports_neither_torch_nor_timm(tmp_path):
    code = "import pytest\npytest.main(['--help', '-p', 'no:cacheprovider'])\n"
    assert run_python(code, tmp_path) == {"heavy": [], "plugin": True}


def test_an_unrelated_test_run_imports_neither_torch_nor_timm(tmp_path):
    (tmp_path / "test_unrelated.py").write_text("def test_sums():\n    assert 1 + 1 == 2\n")
    code = (
        "import pytest\n"
        "assert pytest.main(['-q', '-p', 'no:cacheprovider', 'test_unrelated.py']) == 0\n"
    )
    assert run_python(code, tmp_path) == {"heavy": [], "plugin": True}


def test_the_plugin_imports_in_under_half_of_what_pytest_itself_costs(tmp_path):
    # -X importtime counts only import work (not interpreter start-up). A ratio to pytest's
    # own import in the same interpreter, not a time limit: load on the machine slows both.
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import pytest; import pytest_vitattn.plugin"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [line.split("|") for line in out.stderr.splitlines() if line.startswith("import time:")]
    top_level = [
        (name[1:], int(cumulative))
        for _, cumulative, name in rows
        if cumulative.strip().isdigit() and not name[1:].startswith(" ")
    ]
    names = [name for name, _ in top_level]
    pytest_cost = top_level[names.index("pytest")][1]
    after_pytest = top_level[names.index("pytest") + 1 :]
    assert "pytest_vitattn.plugin" in [name for name, _ in after_pytest]
    microseconds = sum(cumulative for _, cumulative in after_pytest)
    if microseconds >= 0.5 * pytest_cost:
        pytest.fail(
            f"importing the plugin took {microseconds / 1e3:.0f} ms, pytest itself "
            f"{pytest_cost / 1e3:.0f} ms: {after_pytest}"
        )
