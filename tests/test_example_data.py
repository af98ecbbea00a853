"""The example suite's data files are exactly what their generator writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_committed_example_data_matches_the_generator(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_example_data.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    committed = ROOT / "example_suite" / "data"
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png"))
    assert written == sorted(p.relative_to(committed) for p in committed.rglob("*.png"))
    changed = [
        str(p) for p in written if (tmp_path / p).read_bytes() != (committed / p).read_bytes()
    ]
    assert not changed, f"regenerate with scripts/make_example_data.py: {changed}"
