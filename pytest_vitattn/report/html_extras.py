"""pytest-html integration: each test's heatmap grids as extras on its row.

Teams that publish pytest-html reports see the maps there, next to the test, without
opening the vitattn report. Used only when pytest-html is installed and ``--html`` is given.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup, escape

from pytest_vitattn.records import anchor, decode_array
from pytest_vitattn.report import heatmaps

RECORDS_ATTRIBUTE = "vitattn_records"
CELL_PIXELS = 48


def attach_extras(report: Any, report_path: Path | None, config: Any) -> None:
    """Append a grid image and a short summary per record to ``report.extras``."""
    records = getattr(report, RECORDS_ATTRIBUTE, None) or []
    if not records:
        return
    from pytest_html import extras

    html_report = Path(str(config.getoption("htmlpath"))).resolve()
    added = []
    for record in records:
        if isinstance(record["maps"], list):  # a grid per layer: each row at its own size
            sprite = layer_rows_png(record)
        else:
            sprite = labelled_grid_png(grid_stack(record), column_names(record), _scale(record))
        added.append(
            extras.png(
                base64.b64encode(sprite).decode("ascii"),
                name=f"CLS attention: {record['image_label']}",
            )
        )
        added.append(extras.html(str(summary_html(record, report_path, html_report.parent))))
    report.extras = [*getattr(report, "extras", []), *added]


def grid_stack(record: dict[str, Any]) -> np.ndarray:
    """Returns: (layers, heads + 1 [+ 1], grid_h, grid_w): heads, head mean, rollout."""
    maps = decode_array(record["maps"]).astype(np.float32)
    columns = [maps, maps.mean(axis=1, keepdims=True)]
    if record.get("rollout"):
        columns.append(decode_array(record["rollout"]).astype(np.float32)[:, None])
    return np.concatenate(columns, axis=1)


def layer_rows_png(record: dict[str, Any]) -> bytes:
    """The grid of a model whose grid and heads change between layers (``show``'s rows)."""
    from pytest_vitattn.show import render_layer_rows_png

    maps = [decode_array(layer).astype(np.float32) for layer in record["maps"]]
    image = decode_array(record["image"]) if record.get("image") else None
    if image is None or not image.size:
        image = np.full((8, 8, 3), 255, np.uint8)
    return render_layer_rows_png(maps, image, "shared")


def column_names(record: dict[str, Any]) -> list[str]:
    """Column headings of the grid: "h0", "h1", ..., "mean"[, "rollout"]."""
    heads = int(record["maps"]["shape"][1])
    return (
        [f"h{head}" for head in range(heads)]
        + ["mean"]
        + (["rollout"] if record.get("rollout") else [])
    )


def labelled_grid_png(stack: np.ndarray, columns: list[str], scale: int) -> bytes:
    """The grid on the shared colour scale, with layer labels on the left, column headings
    on top and a colour bar with its ticks below, all drawn into one PNG.

    Args:
        stack: (layers, columns, grid_h, grid_w) maps (``grid_stack``).
        columns: one heading per column.
        scale: pixels per patch.
    """
    from PIL import Image, ImageDraw, ImageFont

    layers, _, grid_h, grid_w = stack.shape
    gap, left, top, bottom = 2, 34, 16, 44
    sprite = Image.open(
        io.BytesIO(heatmaps.sprite_png(stack, scale, gap, opaque_gap=True, colour_scale="shared"))
    ).convert("RGB")
    canvas = Image.new("RGB", (left + sprite.width + 24, top + sprite.height + bottom), "white")
    canvas.paste(sprite, (left, top))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    cell_w, cell_h = grid_w * scale + gap, grid_h * scale + gap
    for column, name in enumerate(columns):
        draw.text((left + column * cell_w + 1, 2), name[: max(2, cell_w // 6)], "black", font)
    for layer in range(layers):
        draw.text((2, top + layer * cell_h + cell_h // 2 - 6), f"L{layer}", "black", font)
    # The colour bar: the palette left to right, ticks in multiples of uniform attention.
    bar_top, bar_width = top + sprite.height + 6, min(sprite.width, 240)
    flat = heatmaps.palette(heatmaps.SEQUENTIAL)
    for x in range(bar_width):
        index = 3 * round(x / max(1, bar_width - 1) * (heatmaps.LEVELS - 1))
        draw.line([(left + x, bar_top), (left + x, bar_top + 8)], tuple(flat[index : index + 3]))
    for multiple, label in ((0.125, "1/8x"), (1, "1x"), (8, "8x"), (32, ">=32x")):
        x = left + round(heatmaps.shared_position(multiple) * (bar_width - 1))
        draw.line([(x, bar_top + 8), (x, bar_top + 11)], "black")
        draw.text((max(0, x - 10), bar_top + 12), label, "black", font)
    draw.text((2, bar_top + 26), "x uniform attention (log)", "black", font)
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def summary_html(record: dict[str, Any], report_path: Path | None, html_dir: Path) -> Markup:
    """One escaped paragraph: what the grid shows, the checks, and a link to the report."""
    columns = "heads, head mean" + (", rollout" if record.get("rollout") else "")
    checks = [
        f"{check['name']} {check['value']:.3f}"
        + ("" if check.get("passed") is None else (" ok" if check["passed"] else " FAILED"))
        for check in record.get("checks") or []
    ]
    text = escape(
        f"{record['image_label']} on {record['model'].get('name')}: layers (rows) x "
        f"{columns} (columns), coloured in multiples of uniform attention (1x = every "
        f"patch equal). Checks: {'; '.join(checks) or 'none'}."
    )
    if isinstance(record["maps"], list):
        text = escape(
            f"{record['image_label']} on {record['model'].get('name')}: layers (rows, each "
            f"at its own patch grid) x the image, that layer's heads and their mean, coloured "
            f"in multiples of uniform attention (1x = every patch equal). Checks: "
            f"{'; '.join(checks) or 'none'}."
        )
    if report_path is None:
        return Markup("<p>{}</p>").format(text)
    href = os.path.relpath(report_path, html_dir).replace(os.sep, "/")
    return Markup('<p>{} <a href="{}#{}">Open in the vitattn report</a></p>').format(
        text, href, anchor(record["record_id"])
    )


def _scale(record: dict[str, Any]) -> int:
    grid_h, grid_w = record["grid"]
    return max(2, round(CELL_PIXELS / max(grid_h, grid_w)))
