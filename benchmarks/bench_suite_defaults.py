"""A 30-test suite under default settings vs the hand-tuned best, serial and ``-n 2``.

Usage::

    python benchmarks/bench_suite_defaults.py [--tests 30] [--rounds 2] [--before DIR]

Generates a suite of ``--tests`` tests in a temporary directory, each probing one image with
``vit_tiny_patch16_384`` (random weights, 577 tokens) and checking the last layer's mean
map, as a user's suite would. Then runs it, in fresh pytest processes:

* default: nothing set (no ``OMP_NUM_THREADS``, no vitattn options): the plugin picks the
  probe threads (cores / xdist workers) and skips rollout, which no test asks for;
* hand-tuned: ``OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 --vitattn-threads=1
  --vitattn-rollout=none``, the best a user could set by hand;

* before (with ``--before DIR``): the defaults of another checkout of the package, e.g.
  ``git archive <commit> pytest_vitattn | tar -x -C DIR``, put first on ``PYTHONPATH``;

each serially and with ``-n 2`` (pytest-xdist). Rounds are interleaved so that a change of
load on a shared machine hits every configuration alike; medians of wall-clock seconds are
reported with the ratios default / hand-tuned and (-n 2) / serial.

Targets (issue 15): default <= 1.3x hand-tuned, serially and under -n 2; -n 2 not slower
than serial.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEST_FILE = """
import numpy as np
import pytest

pytestmark = pytest.mark.vitattn(model="vit_tiny_patch16_{size}", weights="random")


@pytest.mark.parametrize("seed", range({count}))
def test_attention(vitattn, seed):
    rng = np.random.default_rng(seed)
    image = (rng.random(({size}, {size}, 3)) * 255).astype(np.uint8)
    attn = vitattn(image)
    assert 0.0 <= attn.layer(-1).mean_heads().concentration() <= 1.0
"""

CONFIGS = {
    "default": ({}, []),
    "hand-tuned": (
        {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        ["--vitattn-threads=1", "--vitattn-rollout=none"],
    ),
}


def run_suite(suite: Path, env_extra: dict[str, str], options: list[str], workers: int) -> float:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTEST_ADDOPTS")
    }
    env.update(env_extra)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options]
    if workers > 1:
        command += ["-n", str(workers)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=suite, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"suite failed ({' '.join(command)}):\n{result.stdout[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=384, choices=(224, 384))
    parser.add_argument("--before", type=Path, default=None, metavar="DIR")
    args = parser.parse_args()
    configs = dict(CONFIGS)
    if args.before is not None:
        configs["before"] = ({"PYTHONPATH": str(args.before.resolve())}, [])

    times: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        suite = Path(folder)
        (suite / "pytest.ini").write_text("[pytest]\n")
        (suite / "test_suite.py").write_text(TEST_FILE.format(count=args.tests, size=args.img_size))
        for round_index in range(args.rounds):
            for workers in (1, 2):
                for name, (env_extra, options) in configs.items():
                    seconds = run_suite(suite, env_extra, options, workers)
                    times.setdefault((name, workers), []).append(seconds)
                    print(
                        f"round {round_index + 1}: {name}, workers={workers}: {seconds:.1f} s",
                        file=sys.stderr,
                    )

    median = {key: statistics.median(values) for key, values in times.items()}
    load = os.getloadavg()[0]
    print(
        f"{args.tests} tests, vit_tiny_patch16_{args.img_size}, {os.cpu_count()} CPUs, "
        f"{args.rounds} interleaved rounds (median), 1-min load at the end {load:.1f}\n"
    )
    print("| run | default (s) | hand-tuned (s) | default / hand-tuned |")
    print("|---|---|---|---|")
    for workers, label in ((1, "serial"), (2, "-n 2")):
        default, tuned = median[("default", workers)], median[("hand-tuned", workers)]
        print(f"| {label} | {default:.1f} | {tuned:.1f} | {default / tuned:.2f}x |")
    if "before" in configs:
        for workers, label in ((1, "serial"), (2, "-n 2")):
            before, default = median[("before", workers)], median[("default", workers)]
            print(f"\n{label}: before {before:.1f} s, default / before = {default / before:.2f}x")
    for name in configs:
        ratio = median[(name, 2)] / median[(name, 1)]
        print(f"\n{name}: -n 2 / serial = {ratio:.2f}x", end="")
    print()


if __name__ == "__main__":
    main()
