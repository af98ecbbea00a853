"""Open report files alternately in headless Chromium and time each opening.

On a shared machine single timings swing by 2x; alternating two reports (e.g. one written by
the previous version, one by this) compares them under the same load. Each opening is a
fresh browser: ``Chromium.open`` (to the load event) plus one screenshot (first paint).
Run: ``python benchmarks/bench_report_compare.py A.html B.html [--rounds 2]``
(``bench_report_open.py --keep DIR`` writes a 1,000-record report to compare).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pytest_vitattn.report.chromium import Chromium, find_chromium


def open_and_paint(path: Path) -> float:
    """Seconds from navigation to the first screenshot of ``path`` in a fresh browser."""
    with Chromium(window=(1280, 900), timeout=300) as browser:
        loaded = browser.open(path.resolve().as_uri())
        start = time.perf_counter()
        browser.screenshot()
        return loaded + time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--repeats", type=int, default=2, help="openings per report a round")
    args = parser.parse_args()
    if find_chromium() is None:
        print("no Chromium found: apt-get install chromium (or set VITATTN_CHROMIUM)")
        return 2
    times: dict[Path, list[float]] = {path: [] for path in args.reports}
    for _ in range(args.rounds):
        for path in args.reports:
            times[path] += [open_and_paint(path) for _ in range(args.repeats)]
    for path, seconds in times.items():
        size = path.stat().st_size / 1e6
        shown = ", ".join(f"{value:.2f}" for value in seconds)
        print(f"{path} ({size:.1f} MB): {shown} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
