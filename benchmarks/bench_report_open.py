"""How long a 1,000-grid report takes to write and to open in headless Chromium.

Each record is deit_tiny_patch16_224-shaped (12 layers x 3 heads of 14 x 14 maps, rollout,
a 224 x 224 image and its mask, two checks); one in ten fails. The page is opened with
``pytest_vitattn.report.chromium`` (Debian package ``chromium``).
Run: ``python benchmarks/bench_report_open.py [--records N] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pytest_vitattn.records import AttentionRecord, CheckResult, MaskRecord
from pytest_vitattn.report.chromium import Chromium, find_chromium
from pytest_vitattn.report.run_info import RunInfo, installed_versions
from pytest_vitattn.report.writer import write_report
from pytest_vitattn.synthetic import make_sample

sys.path.insert(0, str(Path(__file__).parent))
from bench_report_grid import GRID, HEADS, LAYERS, SIZE, attention_like_maps

DISTINCT_IMAGES = 20


def make_records(count: int) -> list[dict]:
    rng = np.random.default_rng(0)
    samples = [make_sample(index, split="example", size=SIZE) for index in range(DISTINCT_IMAGES)]
    records = []
    for index in range(count):
        sample = samples[index % DISTINCT_IMAGES]
        maps = attention_like_maps(rng)
        failed = index % 10 == 0
        checks = [
            CheckResult("mass_in_mask", 0.3 if failed else 0.7, not failed, ">=", 0.6, 0.2,
                        "layer 11 of 0..11, mean of 3 heads", "mask.png",
                        "mass in mask is 0.300, expected >= 0.600" if failed else ""),
            CheckResult("pointing_game", 1.0, True, "hit", None, 0.2,
                        "layer 11 of 0..11, mean of 3 heads", "mask.png"),
        ]  # fmt: skip
        record = AttentionRecord(
            record_id=f"tests/test_many.py::test_image[{index}]::image{index}.png",
            nodeid=f"tests/test_many.py::test_image[{index}]",
            location=("tests/test_many.py", 10),
            image_label=f"image{index}.png",
            model={"name": "deit_tiny_patch16_224", "weights": "random", "weights_id": "-"},
            preprocessing={"input_size": [3, SIZE, SIZE], "mode": "resize"},
            method="fast",
            num_prefix_tokens=1,
            query_index=0,
            image=np.asarray(sample.image, dtype=np.uint8),
            maps=maps,
            rollout=maps.mean(axis=1),
            prefix_share=np.full((LAYERS, HEADS), 0.1, np.float32),
            masks=[MaskRecord("mask.png", np.zeros((GRID, GRID), np.float32), sample.mask)],
            checks=checks,
            outcome="failed" if failed else "passed",
        )
        data = record.to_dict()
        data["status"] = record.outcome  # one image a test: the image's status is the test's
        data["phase"] = "call"
        if failed:
            message = f"AssertionError: {checks[0].message}"
            data["failures"] = [
                {"phase": "call", "outcome": "failed", "message": message, "where": None}
            ]
        records.append(data)
    return records


def failures_of(records: list[dict]) -> list[dict]:
    """The run's failures list (one failing report per failed test), as the session keeps it."""
    return [
        {"nodeid": r["nodeid"], "location": r["location"], **r["failures"][0]}
        for r in records
        if r["outcome"] == "failed"
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--keep", type=Path, help="write the report here instead of a temp dir")
    args = parser.parse_args()
    if find_chromium() is None:
        print("no Chromium found: apt-get install chromium (or set VITATTN_CHROMIUM)")
        return 2

    start = time.perf_counter()
    records = make_records(args.records)
    made = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        run = RunInfo("pytest (benchmark)", "now", str(folder), installed_versions())
        run.failures = failures_of(records)
        start = time.perf_counter()
        files = write_report(records, folder / "report.html", run)
        written = time.perf_counter() - start
        size = files.html.stat().st_size
        print(f"{args.records} records of {LAYERS}x{HEADS} {GRID}x{GRID} maps")
        print(f"  records made in {made:.1f} s; report written in {written:.1f} s")
        print(f"  report.html {size / 1e6:.1f} MB ({size / args.records / 1e3:.0f} kB a record)")
        with Chromium(window=(1280, 900), timeout=300) as browser:
            loaded = browser.open(files.html.as_uri())
            start = time.perf_counter()
            browser.screenshot()
            painted = loaded + time.perf_counter() - start
            start = time.perf_counter()
            browser.evaluate("document.getElementById('filter-status-passed').click()")
            browser.screenshot()
            filtered = time.perf_counter() - start
            start = time.perf_counter()
            browser.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            browser.screenshot()
            scrolled = time.perf_counter() - start
            errors = list(browser.console_errors)
            shown = browser.evaluate("document.getElementById('shown-count').textContent")
    print(f"  Chromium: load event {loaded:.2f} s, first screen painted {painted:.2f} s")
    print(f"  hide passed records and repaint {filtered:.2f} s ({shown})")
    print(f"  jump to the end and paint {scrolled:.2f} s")
    print(f"  console errors: {errors or 'none'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
