"""pytest-html integration: each test's heatmap grids as extras on its row.

Teams that publish pytest-html reports see the maps there, next to the test, without
opening the vitattn report. Used only when pytest-html is installed and ``--html`` is given.
"""

from __future__ import annotations

import base64
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
        sprite = heatmaps.sprite_png(
            grid_stack(record), scale=_scale(record), gap=2, opaque_gap=True
        )
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
        f"{columns} (columns). Checks: {'; '.join(checks) or 'none'}."
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
