"""One image's layers x heads grid of CLS heatmaps, as PNG, HTML report or array, no pytest.

This is the reference notebook's figure as a function: the same extraction as the plugin
(``Probe``), and the report's look (its sprite of per-map-scaled viridis heatmaps, columns
heads, head mean and rollout, from ``report.heatmaps`` and ``report.views``).
"""

from __future__ import annotations

import io
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pytest_vitattn.errors import VitAttnError

OUTPUT_SUFFIXES = (".png", ".html", ".npy", ".npz")
CELL_PIXELS = 96
GAP_PIXELS = 2


@dataclass(frozen=True)
class GridLayout:
    """Where each map sits in a rendered grid PNG.

    Attributes:
        left: x of the first map column (the image column comes before it).
        scale: pixels per patch.
        step_x, step_y: distance between neighbouring maps, in pixels.
        columns: names of the map columns, e.g. ("head 0", ..., "head mean", "rollout").
    """

    left: int
    scale: int
    step_x: int
    step_y: int
    columns: tuple[str, ...]


def grid_stack(maps: np.ndarray, rollout: np.ndarray | None) -> np.ndarray:
    """The report's grid columns: (layers, heads + 1 [+ 1], grid_h, grid_w)."""
    from pytest_vitattn.report.views import _grid_stack

    # The report's rows may differ in size (multi-stage models); a uniform grid stacks.
    return np.stack(_grid_stack(maps, rollout))


def render_grid_png(
    maps: np.ndarray,
    rollout: np.ndarray | None,
    image: np.ndarray,
    colour_scale: str = "shared",
) -> tuple[bytes, GridLayout]:
    """The grid as one PNG: the model's input image, then heads, head mean (and rollout).

    Each row is a layer, as in the notebook's figure, on viridis. ``colour_scale="shared"``
    (the report's default) colours every map in multiples of uniform attention (1/8x..32x,
    log), so a near-uniform head looks flat; ``"own"`` scales each map to its own min..max,
    as the notebook's imshow does (vivid even when the map is nearly uniform).

    Args:
        maps: (layers, heads, grid_h, grid_w) CLS attention maps.
        rollout: (layers, grid_h, grid_w) rollout maps, or None.
        image: (height, width, 3) uint8, the image as the model saw it.
        colour_scale: "shared" or "own" (see above).

    Returns:
        PNG bytes and the layout of the maps in it.
    """
    from pytest_vitattn.report import heatmaps

    stack = grid_stack(maps, rollout)
    layers, _, grid_h, grid_w = stack.shape
    scale = max(1, round(CELL_PIXELS / max(grid_h, grid_w)))
    sprite = Image.open(
        io.BytesIO(
            heatmaps.sprite_png(
                stack, scale=scale, gap=GAP_PIXELS, opaque_gap=True, colour_scale=colour_scale
            )
        )
    ).convert("RGB")
    cell_w, cell_h = grid_w * scale, grid_h * scale
    left = cell_w + GAP_PIXELS
    canvas = Image.new("RGB", (left + sprite.width, sprite.height), (255, 255, 255))
    canvas.paste(sprite, (left, 0))
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    picture = picture.resize((cell_w, cell_h), Image.Resampling.BILINEAR)
    for layer in range(layers):
        canvas.paste(picture, (0, layer * (cell_h + GAP_PIXELS)))
    heads = maps.shape[1]
    names = [f"head {head}" for head in range(heads)] + ["head mean"]
    if rollout is not None:
        names.append("rollout")
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    layout = GridLayout(left, scale, cell_w + GAP_PIXELS, cell_h + GAP_PIXELS, tuple(names))
    return buffer.getvalue(), layout


def render_layer_rows_png(
    layer_maps: list[np.ndarray], image: np.ndarray, colour_scale: str = "shared"
) -> bytes:
    """``render_grid_png`` for a model whose grid and heads change between layers: each row
    (a layer) at its own grid, scaled to about ``CELL_PIXELS``, with its own heads and the
    head mean; the image first in every row.

    Args:
        layer_maps: per layer, (heads_l, h_l, w_l) CLS attention maps.
        image: (height, width, 3) uint8, the image as the model saw it.
    """
    from pytest_vitattn.report import heatmaps

    rows = []
    for maps in layer_maps:
        grid_h, grid_w = maps.shape[-2:]
        scale = max(1, round(CELL_PIXELS / max(grid_h, grid_w)))
        stack = np.concatenate([maps, maps.mean(axis=0, keepdims=True)])[None]
        sprite = Image.open(
            io.BytesIO(
                heatmaps.sprite_png(
                    stack, scale=scale, gap=GAP_PIXELS, opaque_gap=True, colour_scale=colour_scale
                )
            )
        ).convert("RGB")
        picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
        picture = picture.resize((grid_w * scale, grid_h * scale), Image.Resampling.BILINEAR)
        row = Image.new("RGB", (picture.width + GAP_PIXELS + sprite.width, sprite.height), "white")
        row.paste(picture, (0, 0))
        row.paste(sprite, (picture.width + GAP_PIXELS, 0))
        rows.append(row)
    width = max(row.width for row in rows)
    height = sum(row.height for row in rows) + GAP_PIXELS * (len(rows) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    top = 0
    for row in rows:
        canvas.paste(row, (0, top))
        top += row.height + GAP_PIXELS
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    return buffer.getvalue()


def save_maps(path: Path, attention: Any) -> None:
    """Maps as arrays: ``.npy`` (layers, heads, grid_h, grid_w), ``.npz`` with rollout too.

    A model whose grid changes between layers has no (layers, heads, h, w) array: ``.npz``
    then holds ``maps_0``, ``maps_1``, ... (heads_l, h_l, w_l) and ``prefix_share_0``, ...;
    ``.npy`` is refused.
    """
    if attention.ragged:
        if path.suffix == ".npy":
            raise VitAttnError(
                f"--out {path.name}: {attention.model_name} has a grid per layer "
                f"({', '.join(f'{h}x{w}' for h, w in dict.fromkeys(attention.grids))}), which "
                "one .npy array cannot hold; use .npz (maps_0, maps_1, ... per layer)"
            )
        arrays = {f"maps_{i}": m.numpy() for i, m in enumerate(attention.layer_maps)}
        arrays.update(
            {f"prefix_share_{i}": s.numpy() for i, s in enumerate(attention.prefix_share)}
        )
        np.savez(path, **arrays)
        return
    maps = attention.maps.numpy()
    if path.suffix == ".npy":
        np.save(path, maps)
        return
    arrays = {"maps": maps, "prefix_share": attention.prefix_share.numpy()}
    if attention.rollout_maps is not None:
        arrays["rollout"] = attention.rollout_maps.numpy()
    np.savez(path, **arrays)


def show(
    image: Any,
    out: Path,
    *,
    model: str,
    weights: str = "pretrained",
    model_kwargs: tuple[tuple[str, Any], ...] | None = None,
    model_factory: str | None = None,
    device: str = "cpu",
    preprocess: str = "resize",
    rollout: str | None = "mean",
    token: str | int = "cls",
    threads: int | None = None,
    colour_scale: str = "shared",
) -> Any:
    """Probe one image and write its grid to ``out`` (.png, .html, .npy or .npz).

    Returns:
        The ``CLSAttention`` of the image.
    """
    from pytest_vitattn.models import ModelSpec, load_model
    from pytest_vitattn.probe import Probe, ProbeContext
    from pytest_vitattn.threads import probe_threads

    if out.suffix not in OUTPUT_SUFFIXES:
        raise VitAttnError(
            f"--out {out.name}: the suffix must be one of {', '.join(OUTPUT_SUFFIXES)}"
        )
    spec = ModelSpec(model, weights, device, kwargs=model_kwargs or (), factory=model_factory)
    loaded = load_model(spec)
    context = ProbeContext(nodeid="vitattn show")
    probe = Probe(
        loaded,
        preprocess=preprocess,
        rollout=rollout,
        query_index=loaded.anatomy.resolve_query(token, spec.label),
        context=context,
        threads=probe_threads(threads),
    )
    attention = probe(image)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png" and attention.ragged:
        layer_maps = [maps.numpy() for maps in attention.layer_maps]
        out.write_bytes(render_layer_rows_png(layer_maps, attention.record.image, colour_scale))
    elif out.suffix == ".png":
        rollout_maps = None if attention.rollout_maps is None else attention.rollout_maps.numpy()
        data, _ = render_grid_png(
            attention.maps.numpy(), rollout_maps, attention.record.image, colour_scale
        )
        out.write_bytes(data)
    elif out.suffix == ".html":
        _write_report(context.records, out)
    else:
        save_maps(out, attention)
    return attention


def _write_report(records: list[Any], out: Path) -> None:
    from pytest_vitattn.report.run_info import RunInfo, installed_versions
    from pytest_vitattn.report.writer import write_report

    run = RunInfo(
        command=shlex.join(["vitattn", *sys.argv[1:]]),
        date=datetime.now().astimezone().isoformat(timespec="seconds"),
        rootdir=str(Path.cwd()),
        versions=installed_versions(),
        outcomes={"shown": len(records)},
        exitstatus=0,
    )
    for record in records:
        record.outcome = "shown"
    write_report([{**record.to_dict(), "failed_at": None} for record in records], out, run)
