"""Cost of CLS attention extraction next to a plain forward pass; prints Markdown tables.

Usage::

    python benchmarks/bench_extraction.py                 # CPU, 5 repeats, all three models
    python benchmarks/bench_extraction.py --device cuda   # on a GPU
    python benchmarks/bench_extraction.py --repeats 3 --models deit_tiny --no-rss

Models (random weights, batch of 2, ``img_size=`` override): deit_tiny_patch16_224 at 224 px
(197 tokens), vit_small_patch16_224 at 448 px (785 tokens), vit_base_patch16_224 at 512 px
(1,025 tokens).

Methods, each a complete extraction of one batch:

* ``plain forward``: ``model(x)`` with timm's fused attention; the baseline (ratio 1.00).
* ``notebook (fx, all matrices)``: the reference notebook's code: ``fused_attn = False`` on
  every block (of a copy) and torchvision's ``create_feature_extractor`` on the
  ``attn_drop`` nodes, returning every (B, H, N, N) softmax.
* ``timm AttentionExtract``: ``timm.utils.AttentionExtract`` (fx, its ``*attn.softmax``
  default) on a copy with fused attention off; returns every matrix.
* ``vitattn fx``: this project's fx path (the notebook's method, CLS rows kept).
* ``vitattn fast``: this project's fast path, no rollout (``--vitattn-rollout=none``).
* ``vitattn fast + rollout``: the fast path with mean-fusion rollout (the plugin default);
  rollout needs every layer's full matrix, computed from q and k one layer at a time.
* ``vitattn fast + rollout, discard 0.9``: the same with vit-explain's ``discard_ratio=0.9``
  (``--vitattn-rollout-discard-ratio=0.9``): the lowest 90% of each fused matrix zeroed.

Timing: graphs are traced and every method warmed up first. Each repeat then runs every
method right after a plain forward of its own; ``x plain forward`` is the median over repeats
of that pair's ratio (both halves of a pair see the same machine load, so the ratio is
steadier than the times on a shared machine), ``s / batch`` the median time.

Memory, two measures:

* ``attention held``: bytes of the attention tensors a method hands back and keeps (the
  matrices, or our (B, L, H, N) rows plus (B, L, N) rollout rows). Exact, machine-independent.
* ``peak ... of a call``: peak memory during one call above the memory in use just before it
  (activations, temporaries and the returned tensors; the plain forward's row is the
  baseline). CPU: peak RSS from ``/proc/self/status`` (``VmHWM``, reset per call), in a child
  process whose malloc returns large blocks on free; CUDA: ``max_memory_allocated``. Skip with
  ``--no-memory``.

On a shared machine, ``--clock cpu --threads 1`` measures process CPU time, which other
processes disturb far less than wall time.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from pytest_vitattn.extract import extract_cls_attention

MODELS = {
    "deit_tiny": ("deit_tiny_patch16_224", 224),
    "vit_small": ("vit_small_patch16_224", 448),
    "vit_base": ("vit_base_patch16_224", 512),
}
METHODS = (
    "plain forward",
    "notebook (fx, all matrices)",
    "timm AttentionExtract",
    "vitattn fx",
    "vitattn fast",
    "vitattn fast + rollout",
    "vitattn fast + rollout, discard 0.9",
)
BATCH = 2

Runner = Callable[[torch.Tensor], list[torch.Tensor]]


def fused_off_copy(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return clone


def runner(model: nn.Module, method: str) -> Runner:
    """``method`` as x -> the attention tensors it hands back (graphs traced here)."""
    if method == "plain forward":
        return lambda x: [model(x)][:0]
    if method == "notebook (fx, all matrices)":
        nodes = [f"blocks.{i}.attn.attn_drop" for i in range(len(model.blocks))]
        notebook = create_feature_extractor(fused_off_copy(model), return_nodes=nodes)
        return lambda x: list(notebook(x).values())
    if method == "timm AttentionExtract":
        timm_extract = timm.utils.AttentionExtract(fused_off_copy(model), method="fx")
        return lambda x: list(timm_extract(x).values())
    path, rollout, discard = {
        "vitattn fx": ("fx", None, 0.0),
        "vitattn fast": ("fast", None, 0.0),
        "vitattn fast + rollout": ("fast", "mean", 0.0),
        "vitattn fast + rollout, discard 0.9": ("fast", "mean", 0.9),
    }[method]

    def ours(x: torch.Tensor) -> list[torch.Tensor]:
        extraction = extract_cls_attention(
            model, x, method=path, rollout_fusion=rollout, rollout_discard_ratio=discard
        )
        return [t for t in (extraction.rows, extraction.rollout) if t is not None]

    return ours


def create(name: str, size: int, device: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model(MODELS[name][0], pretrained=False, img_size=size).eval()
    pixels = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    return model.to(device), pixels.to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_methods(
    name: str, device: str, repeats: int, clock: Callable[[], float]
) -> dict[str, tuple[float, float, int]]:
    """Per method: (median seconds, median ratio to its paired plain forward, bytes held)."""
    model, pixels = create(name, MODELS[name][1], device)
    run = {method: runner(model, method) for method in METHODS}
    held: dict[str, int] = {}

    def timed(fn: Runner) -> float:
        sync(device)
        began = clock()
        fn(pixels)
        sync(device)
        return clock() - began

    with torch.inference_mode():
        for method, fn in run.items():  # warm-up; the held bytes
            tensors = fn(pixels)
            held[method] = sum(t.numel() * t.element_size() for t in tensors)
            del tensors
        seconds: dict[str, list[float]] = {method: [] for method in run}
        ratios: dict[str, list[float]] = {method: [] for method in run}
        for _ in range(repeats):
            for method, fn in run.items():
                # Each method right after its own plain forward: on a shared machine the
                # pair sees the same load, so their ratio is steadier than either time.
                plain = timed(run["plain forward"])
                took = plain if method == "plain forward" else timed(fn)
                seconds[method].append(took)
                ratios[method].append(took / plain)
    return {
        method: (
            statistics.median(seconds[method]),
            statistics.median(ratios[method]),
            held[method],
        )
        for method in run
    }


def peak_memory(name: str, device: str) -> dict[str, float]:
    """Per method: peak memory during one call, above the memory in use before it (bytes).

    CUDA: ``max_memory_allocated``. CPU: the kernel's peak-RSS mark (``VmHWM``), reset before
    each call through ``/proc/self/clear_refs``; run in a child whose malloc returns large
    blocks to the system on free (``MALLOC_MMAP_THRESHOLD_``), so RSS follows live memory.
    """
    if device.startswith("cuda"):
        model, pixels = create(name, MODELS[name][1], device)
        peaks = {}
        with torch.inference_mode():
            for method in METHODS:
                fn = runner(model, method)
                fn(pixels)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                fn(pixels)
                torch.cuda.synchronize()
                peaks[method] = torch.cuda.max_memory_allocated() - before
        return peaks
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, __file__, "--rss-probe", name],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss_probe(name: str) -> None:
    """Child process: print {method: peak RSS of one call above RSS before it} as JSON."""
    model, pixels = create(name, MODELS[name][1], "cpu")
    run = {method: runner(model, method) for method in METHODS}
    peaks = {}
    with torch.inference_mode():
        for method, fn in run.items():
            fn(pixels)  # warm-up: lazy initialisation is not the method's cost
            gc.collect()
            Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
            before = _status_kib("VmRSS")
            fn(pixels)
            peaks[method] = (_status_kib("VmHWM") - before) * 1024
    print(json.dumps(peaks))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def mib(nbytes: float) -> str:
    if nbytes != nbytes:  # nan
        return "n/a"
    return f"{nbytes / 2**20:,.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:,.1f} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: process CPU time (steadier on a shared machine; "
        "use with --threads 1, where no thread waits on another)",
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument("--rss-probe", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_probe:
        rss_probe(args.rss_probe)
        return
    cuda = args.device.startswith("cuda")
    device_name = (
        torch.cuda.get_device_name(args.device)
        if cuda
        else f"CPU, {torch.get_num_threads()} threads"
    )
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(
        f"torch {torch.__version__}, timm {timm.__version__}, {device_name}; batch {BATCH}, "
        f"random weights; {args.clock} clock, median of {args.repeats} interleaved repeats\n"
    )
    peak_label = "peak CUDA memory of a call" if cuda else "peak RSS of a call"
    for name in args.models:
        timm_name, size = MODELS[name]
        tokens = (size // 16) ** 2 + 1
        results = time_methods(name, args.device, args.repeats, clock)
        peaks = {} if args.no_memory else peak_memory(name, args.device)
        notebook_held = results["notebook (fx, all matrices)"][2]
        print(f"### {timm_name} at {size} px ({tokens} tokens)\n")
        print(f"| method | s / batch | x plain forward | attention held | {peak_label} |")
        print("|---|---|---|---|---|")
        for method, (seconds, ratio, held) in results.items():
            smaller = (
                f" ({notebook_held / held:,.0f}x less)"
                if held and method.startswith("vitattn")
                else ""
            )
            print(
                f"| {method} | {seconds:.3f} | {ratio:.2f} | {mib(held)}{smaller} | "
                f"{mib(peaks.get(method, float('nan')))} |"
            )
        notebook, fast = results["notebook (fx, all matrices)"], results["vitattn fast"]
        print(
            f"\nvitattn fast: {notebook[1] / fast[1]:.2f}x faster than the notebook's method "
            f"(ratio of the ratios), {notebook[2] / fast[2]:,.0f}x less attention held.\n"
        )


if __name__ == "__main__":
    main()
