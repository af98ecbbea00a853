"""Time and size of one report grid against the reference notebook's matplotlib figure.

The notebook draws a 12 x 4 subplot figure (the image, then 3 heads per layer) of
deit_tiny_patch16_224's CLS attention and saves it as PNG. The report draws the same
12 layers x 3 heads of 14 x 14 maps, plus a head-mean and a rollout column, as tiny
palette PNGs scaled up by the browser. Run: ``python benchmarks/bench_report_grid.py``.
The goal is at most 1/20 of the figure's time and size; the exit status is 1 if missed.
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from pytest_vitattn.records import AttentionRecord, MaskRecord, decode_array
from pytest_vitattn.report.html import environment
from pytest_vitattn.report.views import grid_view, record_view, shared_ticks
from pytest_vitattn.synthetic import make_sample

LAYERS, HEADS, GRID, SIZE = 12, 3, 14, 224  # deit_tiny_patch16_224
REPEATS = 5
GOAL = 20


def attention_like_maps(rng: np.random.Generator) -> np.ndarray:
    """(LAYERS, HEADS, GRID, GRID) float32 maps, each summing to 1: a blob on noise, which
    compresses about as well as real attention (pure noise would flatter the notebook)."""
    rows, cols = np.mgrid[0:GRID, 0:GRID]
    maps = np.empty((LAYERS, HEADS, GRID, GRID), np.float32)
    for layer in range(LAYERS):
        for head in range(HEADS):
            centre = rng.uniform(2, GRID - 2, size=2)
            blob = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / 8.0)
            logits = blob * rng.uniform(1, 6) + rng.normal(0, 0.5, (GRID, GRID))
            weights = np.exp(logits)
            maps[layer, head] = weights / weights.sum()
    return maps


def make_record() -> AttentionRecord:
    rng = np.random.default_rng(0)
    sample = make_sample(0, split="example", size=SIZE)
    maps = attention_like_maps(rng)
    return AttentionRecord(
        record_id="bench::image.png",
        nodeid="bench.py::test_grid",
        location=("bench.py", 1),
        image_label="image.png",
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
    )


def notebook_figure(record: AttentionRecord) -> bytes:
    """The reference notebook's figure, drawn and saved as it does (matplotlib defaults)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(LAYERS, HEADS + 1, figsize=(12, 24))
    for layer in range(LAYERS):
        for head in range(HEADS):
            axs[layer, head + 1].imshow(record.maps[layer, head], cmap="viridis")
        axs[layer, 0].imshow(record.image)
    for ax in axs.flat:
        ax.set(xticks=[], yticks=[])
    plt.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


# What the record's templates read from the page's view: the colour bar's ticks.
PAGE = SimpleNamespace(shared_ticks=shared_ticks())


def report_grid(data: dict) -> str:
    """One grid as the report ships it: its sprites (data URIs: shared scale, per-map scale,
    overlay) and the grid table's HTML with peaks and colour bars.

    12 x 3 heads plus a head-mean and a rollout column: 60 maps to the figure's 36.
    """
    maps = decode_array(data["maps"]).astype(np.float32)
    rollout = decode_array(data["rollout"]).astype(np.float32)
    sheets, grid = grid_view(maps, rollout, np.asarray(data["prefix_share"], np.float32))
    table = (
        environment().get_template("grid.html").render(record=SimpleNamespace(grid=grid), view=PAGE)
    )
    return "".join(sheet.src for sheet in sheets.values()) + table


def report_record(data: dict) -> str:
    """The record's whole section: grid, image with overlay choices, mask outline, checks."""
    view = record_view(data, 0, Path("."), Path("."))
    return environment().get_template("record.html").render(record=view, view=PAGE)


def timed(function, *args) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(REPEATS):
        start = time.perf_counter()
        output = function(*args)
        times.append(time.perf_counter() - start)
        size = len(output)
    return statistics.median(times), size


def main() -> int:
    record = make_record()
    data = record.to_dict()
    notebook_figure(record)  # warm up matplotlib's caches, as a notebook session would
    report_record(data)  # ... and the colormap and template caches
    figure_time, figure_size = timed(notebook_figure, record)
    grid_time, grid_size = timed(report_grid, data)
    record_time, record_size = timed(report_record, data)
    print(f"{LAYERS} layers x {HEADS} heads of {GRID}x{GRID} maps, median of {REPEATS} runs")
    print(f"  notebook figure (12x4, PNG):   {figure_time * 1000:8.1f} ms {figure_size:>10,} bytes")
    print(
        f"  report grid (cells only):      {grid_time * 1000:8.1f} ms {grid_size:>10,} bytes"
        f"   1/{figure_time / grid_time:.0f} time, 1/{figure_size / grid_size:.0f} size"
    )
    print(
        f"  report record (whole section): {record_time * 1000:8.1f} ms {record_size:>10,} bytes"
        f"   1/{figure_time / record_time:.0f} time, 1/{figure_size / record_size:.0f} size"
    )
    met = figure_time / grid_time >= GOAL and figure_size / grid_size >= GOAL
    verdict = "met" if met else "MISSED"
    print(f"goal (a grid at most 1/{GOAL} of the figure's time and size): {verdict}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
