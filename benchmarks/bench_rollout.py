"""Rollout's cost next to a plain forward, and optionally next to another checkout's rollout.

Usage::

    python benchmarks/bench_rollout.py --repeats 5 --threads 1
    python benchmarks/bench_rollout.py --compare-with /path/to/old/package/parent:old_name

vit_base_patch16_224 at 512 px (1,025 tokens), random weights, batch 2. Every method runs
right after a plain fused forward of its own; the ratio of the pair is kept and the median
over repeats printed (process CPU time with ``--clock cpu``, steadier on a shared machine).
``--compare-with DIR:PACKAGE`` imports an older copy of this package (e.g. extracted with
``git archive <commit> pytest_vitattn`` and renamed) and times its fast path with rollout
in the same run, so both ratios see the same machine. Peak RSS of one call above the RSS
before it is read from ``/proc/self/status`` (Linux) in a child process whose malloc returns
large blocks to the system on free (``MALLOC_MMAP_THRESHOLD_``), so RSS follows live
memory; the timings run with the ordinary allocator.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch

from pytest_vitattn.extract import extract_cls_attention


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_rss_mib(fn) -> float:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--compare-with", metavar="DIR:PACKAGE")
    parser.add_argument("--rss-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=512).eval()
    pixels = torch.randn(2, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    methods = {
        "plain forward": lambda: model(pixels),
        "fast, no rollout": lambda: extract_cls_attention(model, pixels, rollout_fusion=None),
        "fast + rollout (mean)": lambda: extract_cls_attention(model, pixels),
        "fast + rollout (max, discard 0.9)": lambda: extract_cls_attention(
            model, pixels, rollout_fusion="max", rollout_discard_ratio=0.9
        ),
    }
    if args.compare_with:
        directory, package = args.compare_with.split(":")
        sys.path.insert(0, directory)
        old = importlib.import_module(f"{package}.extract")
        methods[f"{package}: fast + rollout (mean)"] = lambda: old.extract_cls_attention(
            model, pixels
        )
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    def timed(fn) -> float:
        began = clock()
        fn()
        return clock() - began

    with torch.inference_mode():
        for fn in methods.values():
            fn()  # warm-up
        if args.rss_probe:
            print(json.dumps({name: peak_rss_mib(fn) for name, fn in methods.items()}))
            return
        ratios: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                plain = timed(methods["plain forward"])
                ratios[name].append(1.0 if name == "plain forward" else timed(fn) / plain)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    child = subprocess.run(
        [sys.executable, __file__, *sys.argv[1:], "--rss-probe"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    peaks = json.loads(child.stdout.strip().splitlines()[-1])
    print(
        f"torch {torch.__version__}, vit_base_patch16_224 at 512 px (1,025 tokens), batch 2, "
        f"{args.threads} thread(s), {args.clock} clock, median of {args.repeats} paired "
        "repeats\n"
    )
    print("| method | x plain forward | peak RSS of a call |")
    print("|---|---|---|")
    for name in methods:
        print(f"| {name} | {statistics.median(ratios[name]):.2f} | {peaks[name]:,.1f} MiB |")


if __name__ == "__main__":
    main()
