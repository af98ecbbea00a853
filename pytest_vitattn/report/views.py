"""View models: everything the report template shows, computed here so templates hold no logic.

``ReportView.build(records, run, report_dir)`` turns the run's record dicts (see
``AttentionRecord.to_dict``) into plain objects with display-ready strings and image URIs.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from pytest_vitattn.records import anchor, decode_array
from pytest_vitattn.report import heatmaps
from pytest_vitattn.report.run_info import RunInfo
from pytest_vitattn.report.tally import OUTCOME_ORDER

# Records are listed in this order: what needs a reviewer first.
STATUS_RANK = {name: rank for rank, name in enumerate(OUTCOME_ORDER)}
# Target sizes in CSS pixels; the zoom is rounded to an integer number of pixels per patch.
CELL_WIDTH = 48
STAGE_WIDTH = 256

_OPS = {">=": "≥", "<=": "≤"}
_CHECK_TITLES = {
    "mass_in_mask": "mass in mask",
    "pointing_game": "pointing game",
    "top_k_iou": "top-k IoU",
    "concentration": "concentration",
    "baseline": "baseline drift",
}


@dataclass
class SheetView:
    """A record's grid maps tiled in one sprite image, one pixel per patch (1 px gaps).

    Attributes:
        src: data URI of the sprite.
        width, height: sprite size in pixels.
        step_x, step_y: distance between neighbouring maps in sprite pixels.
    """

    src: str
    width: int
    height: int
    step_x: int
    step_y: int

    def size_style(self, zoom: int) -> str:
        """CSS variables that scale the whole sprite by ``zoom`` (an integer, so patches
        stay equal squares)."""
        return f"--sheet-w: {self.width * zoom}px; --sheet-h: {self.height * zoom}px"

    def position(self, column: int, row: int, zoom: int) -> str:
        """The background position that shows map (row, column) at ``zoom``."""
        return (
            f"background-position: -{column * self.step_x * zoom}px -{row * self.step_y * zoom}px"
        )


@dataclass
class CellView:
    """One map of the grid: a window onto the record's sprite."""

    title: str
    position: str


@dataclass
class ImageCellView:
    """One heatmap as its own image (the baseline comparison, outside the sprite)."""

    src: str
    alt: str
    title: str
    width: int
    height: int


@dataclass
class GridRow:
    label: str
    title: str
    cells: list[CellView]


@dataclass
class GridView:
    """Layers (rows) x heads (columns), plus head-mean and rollout columns.

    Attributes:
        style: CSS variables giving the cell size and the scaled sprite size.
    """

    caption: str
    columns: list[str]
    rows: list[GridRow]
    style: str


@dataclass
class ChoiceView:
    """One map the overlay can show; a radio button without JavaScript.

    Attributes:
        position: the sprite position of the map, or "" for "image only".
    """

    input_id: str
    label: str
    position: str
    checked: bool


@dataclass
class OutlineView:
    label: str
    src: str
    colour: str


@dataclass
class OverlayView:
    """The image with one chosen map and the mask outlines on top.

    Attributes:
        style: stage size and the sprite scaled by ``zoom``, as CSS.
        zoom: screen pixels per patch, an integer.
        steps: "step_x step_y" of the sprite, for JavaScript.
        custom_id: the radio that JavaScript uses to show any clicked grid cell.
    """

    group: str
    photo_src: str
    photo_alt: str
    photo_pixelated: bool
    width: int
    height: int
    zoom: int
    steps: str
    style: str
    choices: list[ChoiceView]
    custom_id: str
    outline_toggle_id: str
    outlines: list[OutlineView]


@dataclass
class CheckView:
    name: str
    status: str
    status_text: str
    selection: str
    mask: str
    value: str
    expected: str
    chance: str
    details: str
    message: str


@dataclass
class BaselineRow:
    label: str
    baseline: ImageCellView
    current: ImageCellView
    difference: ImageCellView
    drift: str


@dataclass
class BaselineView:
    """Baseline vs current vs difference, per layer (head means)."""

    path: str
    drifted: bool
    note: str
    rows: list[BaselineRow]


@dataclass
class LinkView:
    text: str
    href: str


@dataclass
class RecordView:
    """One test x one image: everything its section of the report shows."""

    anchor: str
    record_id: str
    nodeid: str
    image_label: str
    status: str
    model_label: str
    model_class: str
    location: LinkView | None
    failed_at: LinkView | None
    prediction: str
    facts: list[tuple[str, str]]
    sheet_style: str
    overlay: OverlayView
    grid: GridView
    checks: list[CheckView]
    baseline: BaselineView | None
    # Cascading randomisation (pytest_vitattn.sanity): randomised vs trained, per layer.
    randomised: BaselineView | None = None

    @property
    def css_class(self) -> str:
        return f"status-{self.status} {self.model_class}"


@dataclass
class FilterOption:
    input_id: str
    label: str
    count: int
    css_class: str


@dataclass
class ModelView:
    name: str
    weights: str
    weights_id: str
    device: str
    records: int


@dataclass
class ReportView:
    """The whole page."""

    title: str
    run: RunInfo
    outcomes: list[tuple[str, int]]
    record_count: int
    models: list[ModelView]
    versions: list[tuple[str, str]]
    status_filters: list[FilterOption]
    model_filters: list[FilterOption]
    failures: list[LinkView]
    records: list[RecordView]
    overlay_slots: list[int] = field(default_factory=list)

    @property
    def record_count_text(self) -> str:
        return f"{self.record_count} recorded image{'' if self.record_count == 1 else 's'}"

    @classmethod
    def build(cls, records: list[dict[str, Any]], run: RunInfo, report_dir: Path) -> ReportView:
        """The page for ``records``.

        Args:
            records: record dicts with "outcome" set, in any order.
            run: the run's facts.
            report_dir: where the HTML goes; source links are relative to it.
        """
        ordered = sort_records(records)
        model_keys = _model_keys(ordered)
        views = [
            record_view(record, model_keys[_model_key(record)], run.root, report_dir)
            for record in ordered
        ]
        statuses = Counter(view.status for view in views)
        model_counts = Counter(_model_key(record) for record in ordered)
        # One more slot than choices: the radio JavaScript uses for a clicked grid map.
        longest = max((len(view.overlay.choices) + 1 for view in views), default=0)
        return cls(
            title="ViT attention report",
            run=run,
            outcomes=list(run.outcomes.items()),
            record_count=len(views),
            models=[ModelView(*key, records=model_counts[key]) for key in model_keys],
            versions=list(run.versions.items()),
            status_filters=[
                FilterOption(f"filter-status-{status}", status, count, f"status-{status}")
                for status, count in sorted(statuses.items(), key=lambda item: _rank(item[0]))
            ],
            model_filters=[
                FilterOption(
                    f"filter-model-{index}",
                    f"{key[0]} ({key[1]})",
                    model_counts[key],
                    f"model-{index}",
                )
                for key, index in model_keys.items()
            ],
            failures=[
                LinkView(f"{view.nodeid} [{view.image_label}]", f"#{view.anchor}")
                for view in views
                if view.status in ("failed", "error", "xpassed")
            ],
            records=views,
            overlay_slots=list(range(1, longest + 1)),
        )


def sort_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Failures first, then by source location; stable, so a test's images keep their order."""

    def key(record: dict[str, Any]) -> tuple[int, str, int, str]:
        path, line = record.get("location") or ("", 0)
        return _rank(record.get("outcome")), str(path), int(line), record["nodeid"]

    return sorted(records, key=key)


def _rank(status: str | None) -> int:
    return STATUS_RANK.get(status or "", len(STATUS_RANK))


def _model_key(record: dict[str, Any]) -> tuple[str, str, str, str]:
    model = record.get("model") or {}
    return (
        str(model.get("name", "?")),
        str(model.get("weights", "?")),
        str(model.get("weights_id", "?")),
        str(model.get("device", "?")),
    )


def _model_keys(records: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], int]:
    keys: dict[tuple[str, str, str, str], int] = {}
    for record in records:
        keys.setdefault(_model_key(record), len(keys))
    return keys


def record_view(
    record: dict[str, Any], model_index: int, root: Path, report_dir: Path
) -> RecordView:
    """The view of one record dict; ``model_index`` numbers its model for the filters."""
    record_anchor = anchor(record["record_id"])
    maps = decode_array(record["maps"]).astype(np.float32)
    rollout = decode_array(record["rollout"]).astype(np.float32) if record.get("rollout") else None
    prefix_share = np.asarray(record.get("prefix_share") or [], dtype=np.float32)
    model = record.get("model") or {}
    status = _status_word(record.get("outcome"))
    sheet, grid = grid_view(maps, rollout, prefix_share)
    stack = _grid_stack(maps, rollout)
    return RecordView(
        anchor=record_anchor,
        record_id=record["record_id"],
        nodeid=record["nodeid"],
        image_label=record["image_label"],
        status=status,
        model_label=f"{model.get('name', '?')} ({model.get('weights', '?')})",
        model_class=f"model-{model_index}",
        location=_source_link(record.get("location"), root, report_dir),
        failed_at=_source_link(record.get("failed_at"), root, report_dir),
        prediction=_prediction_text(record.get("prediction")),
        facts=_facts(record, maps.shape),
        sheet_style=f"--sprite: url({sheet.src})",
        overlay=_overlay_view(record, record_anchor, sheet, stack, rollout is not None),
        grid=grid,
        checks=[_check_view(check) for check in record.get("checks") or []],
        baseline=_baseline_view(record, maps),
        randomised=_randomised_view(record, maps),
    )


def _status_word(outcome: str | None) -> str:
    # The status becomes a CSS class; anything unexpected is shown as "unknown".
    return outcome if outcome and re.fullmatch(r"[a-z]+", outcome) else "unknown"


def _source_link(location: Any, root: Path, report_dir: Path) -> LinkView | None:
    if not location:
        return None
    path, line = str(location[0]), int(location[1])
    target = Path(path) if Path(path).is_absolute() else root / path
    relative = os.path.relpath(target, report_dir).replace(os.sep, "/")
    shown = os.path.relpath(target, root) if target.is_relative_to(root) else str(target)
    return LinkView(f"{shown}:{line}", f"{quote(relative)}#L{line}")


def _prediction_text(prediction: dict[str, Any] | None) -> str:
    if not prediction:
        return ""
    return (
        f"{prediction.get('label')} (class {prediction.get('index')}, "
        f"p = {float(prediction.get('probability', 0.0)):.3f})"
    )


def _facts(record: dict[str, Any], shape: tuple[int, ...]) -> list[tuple[str, str]]:
    model = record.get("model") or {}
    preprocessing = record.get("preprocessing") or {}
    layers, heads, grid_h, grid_w = shape
    facts = [
        ("model", f"{model.get('name')} — weights {model.get('weights')}"),
        ("weights id", str(model.get("weights_id"))),
        ("extraction", str(record.get("method"))),
        (
            "tokens",
            f"query token {record.get('query_index')} of "
            f"{record.get('num_prefix_tokens')} prefix token(s); {grid_h}x{grid_w} patches",
        ),
        ("layers x heads", f"{layers} x {heads}"),
        ("preprocessing", ", ".join(f"{k}: {v}" for k, v in preprocessing.items())),
    ]
    prediction = _prediction_text(record.get("prediction"))
    if prediction:
        facts.insert(2, ("prediction", prediction))
    return facts


def _grid_stack(maps: np.ndarray, rollout: np.ndarray | None) -> np.ndarray:
    """Returns: (layers, heads + 1 [+ 1], grid_h, grid_w): heads, head mean[, rollout]."""
    columns = [maps, maps.mean(axis=1, keepdims=True)]
    if rollout is not None:
        columns.append(rollout[:, None])
    return np.concatenate(columns, axis=1)


def _sheet(stack: np.ndarray) -> SheetView:
    rows, columns, grid_h, grid_w = stack.shape
    gap = 1
    return SheetView(
        src=heatmaps.data_uri(heatmaps.sprite_png(stack, gap=gap)),
        width=columns * (grid_w + gap) - gap,
        height=rows * (grid_h + gap) - gap,
        step_x=grid_w + gap,
        step_y=grid_h + gap,
    )


def _zoom(grid_w: int, target: int) -> int:
    return max(1, round(target / grid_w))


def _peak_title(values: np.ndarray, what: str) -> str:
    row, column = divmod(int(values.argmax()), values.shape[-1])
    return (
        f"{what}: peak {float(values.max()):.4f} at row {row}, col {column} "
        f"(uniform {1.0 / values.size:.4f})"
    )


def grid_view(
    maps: np.ndarray, rollout: np.ndarray | None, prefix_share: np.ndarray
) -> tuple[SheetView, GridView]:
    """The grid of one record and the sprite its cells show.

    Args:
        maps: (layers, heads, grid_h, grid_w) CLS attention.
        rollout: (layers, grid_h, grid_w) rollout after each layer, or None.
        prefix_share: (layers, heads) share of attention on prefix tokens, or empty.
    """
    stack = _grid_stack(maps, rollout)
    sheet = _sheet(stack)
    has_rollout = rollout is not None
    layers, columns, grid_h, grid_w = stack.shape
    heads = columns - 1 - int(has_rollout)
    zoom = _zoom(grid_w, CELL_WIDTH)
    names = [f"head {head}" for head in range(heads)] + ["head mean"]
    if has_rollout:
        names.append("rollout")
    rows = []
    for layer in range(layers):
        cells = [
            CellView(
                _peak_title(stack[layer, column], f"layer {layer}, {names[column]}"),
                sheet.position(column, layer, zoom),
            )
            for column in range(columns)
        ]
        share = (
            f"; {float(prefix_share[layer].mean()):.1%} of the query's attention went to "
            "prefix tokens (not shown)"
            if prefix_share.ndim == 2 and prefix_share.shape[0] == layers
            else ""
        )
        rows.append(GridRow(f"layer {layer}", f"layer {layer}{share}", cells))
    caption = (
        f"CLS attention, {layers} layers x {heads} heads; each map coloured from its own "
        "minimum to maximum (viridis); hover a map for its numbers"
    )
    style = f"--cell-w: {grid_w * zoom}px; --cell-h: {grid_h * zoom}px; " + sheet.size_style(zoom)
    return sheet, GridView(caption, names, rows, style)


def _overlay_view(
    record: dict[str, Any],
    record_anchor: str,
    sheet: SheetView,
    stack: np.ndarray,
    has_rollout: bool,
) -> OverlayView:
    layers, columns, grid_h, grid_w = stack.shape
    heads = columns - 1 - int(has_rollout)
    zoom = _zoom(grid_w, STAGE_WIDTH)
    width, height = grid_w * zoom, grid_h * zoom
    last, mean_column = layers - 1, heads
    # The maps a reviewer compares most: the last layer's mean (shown first), rollout,
    # the last layer's heads, then the other layers' means; JavaScript adds any cell.
    candidates = [(f"layer {last} mean", mean_column, last)]
    if has_rollout:
        candidates.append((f"rollout to layer {last}", heads + 1, last))
    candidates += [(f"layer {last} head {head}", head, last) for head in range(heads)]
    candidates += [(f"layer {layer} mean", mean_column, layer) for layer in range(last)]
    group = f"{record_anchor}-overlay"
    choices = [
        ChoiceView(f"{group}-{index}", label, sheet.position(column, row, zoom), index == 0)
        for index, (label, column, row) in enumerate(candidates)
    ]
    choices.append(ChoiceView(f"{group}-none", "image only", "", False))
    image = decode_array(record["image"]) if record.get("image") else None
    photo_src = ""
    if image is not None and image.size:
        photo_src = heatmaps.data_uri(*heatmaps.photo_bytes(image))
    photo_pixelated = image is not None and image.size > 0 and width >= 2 * image.shape[1]
    return OverlayView(
        group=group,
        photo_src=photo_src,
        photo_alt=f"{record['image_label']} as the model saw it",
        photo_pixelated=photo_pixelated,
        width=width,
        height=height,
        zoom=zoom,
        steps=f"{sheet.step_x} {sheet.step_y}",
        style=f"width: {width}px; height: {height}px; " + sheet.size_style(zoom),
        choices=choices,
        custom_id=f"{group}-cell",
        outline_toggle_id=f"{record_anchor}-outline",
        outlines=_outlines(record.get("masks") or []),
    )


def _outlines(masks: list[dict[str, Any]]) -> list[OutlineView]:
    outlines = []
    for index, mask in enumerate(masks):
        if not mask.get("pixels"):
            continue
        pixels = decode_array(mask["pixels"]).astype(bool)
        colour = heatmaps.OUTLINE_COLOURS[index % len(heatmaps.OUTLINE_COLOURS)]
        outlines.append(
            OutlineView(
                mask["label"],
                heatmaps.data_uri(heatmaps.outline_png(pixels, index)),
                "rgb({}, {}, {})".format(*colour),
            )
        )
    return outlines


def _image_cell(values: np.ndarray, what: str, diverging: bool = False) -> ImageCellView:
    grid_h, grid_w = values.shape
    if diverging:
        title = f"{what}: largest change {float(np.abs(values).max()):.4f}"
        png = heatmaps.difference_png(values)
    else:
        title, png = _peak_title(values, what), heatmaps.heatmap_png(values)
    zoom = _zoom(grid_w, CELL_WIDTH)
    return ImageCellView(heatmaps.data_uri(png), what, title, grid_w * zoom, grid_h * zoom)


def _check_view(check: dict[str, Any]) -> CheckView:
    passed = check.get("passed")
    status = "measured" if passed is None else ("passed" if passed else "failed")
    op = check.get("op", "")
    value = float(check.get("value", float("nan")))
    threshold = check.get("threshold")
    if op == "hit":
        value_text, expected = ("hit" if value >= 0.5 else "miss"), "peak patch in mask"
    else:
        value_text = f"{value:.3f}"
        expected = f"{_OPS.get(op, op)} {threshold:.3f}" if threshold is not None else ""
    chance = check.get("chance")
    name = str(check.get("name", "?"))
    return CheckView(
        name=_CHECK_TITLES.get(name, name),
        status=status,
        status_text={"passed": "pass", "failed": "FAIL", "measured": "measured"}[status],
        selection=str(check.get("selection", "")),
        mask=str(check.get("mask") or ""),
        value=value_text,
        expected=expected,
        chance=f"{chance:.3f}" if chance is not None else "",
        details=_details_text(check.get("details") or {}),
        message=str(check.get("message") or ""),
    )


def _details_text(details: dict[str, Any], limit: int = 300) -> str:
    """Scalars and short lists of scalars, e.g. "path: ...; failing: [layer 5 head 2]";
    nested tables (per-map drift) are left to the check's message."""

    def scalar(value: Any) -> bool:
        return value is None or isinstance(value, (str, int, float, bool))

    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(show(item) for item in value) + "]"
        return str(value)

    shown = [
        f"{key}: {show(value)}"
        for key, value in details.items()
        if scalar(value) or (isinstance(value, (list, tuple)) and all(map(scalar, value)))
    ]
    text = "; ".join(shown)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _randomised_view(record: dict[str, Any], maps: np.ndarray) -> BaselineView | None:
    """The maps with the top blocks re-initialised beside the trained ones (head means)."""
    randomised = record.get("randomised")
    if not randomised or not randomised.get("maps"):
        return None
    stored = decode_array(randomised["maps"]).astype(np.float32)
    checks = [c for c in record.get("checks") or [] if c.get("name") == "depends_on_weights"]
    failed = any(check.get("passed") is False for check in checks)
    label = str(randomised.get("label", "top blocks re-initialised"))
    if stored.shape != maps.shape:
        note = f"randomised maps of shape {tuple(stored.shape)}, trained {tuple(maps.shape)}"
        return BaselineView(label, failed, note, [])
    trained_means, random_means = maps.mean(axis=1), stored.mean(axis=1)
    rows = []
    for layer in range(maps.shape[0]):
        difference = trained_means[layer] - random_means[layer]
        rows.append(
            BaselineRow(
                label=f"layer {layer}",
                baseline=_image_cell(random_means[layer], f"randomised, layer {layer}, head mean"),
                current=_image_cell(trained_means[layer], f"trained, layer {layer}, head mean"),
                difference=_image_cell(
                    difference, f"trained - randomised, layer {layer}", diverging=True
                ),
                drift=f"{0.5 * float(np.abs(difference).sum()):.3f}",
            )
        )
    note = "head means per layer; a map that depends on the weights moves (red: trained only)"
    return BaselineView(label, failed, note, rows)


def _baseline_view(record: dict[str, Any], maps: np.ndarray) -> BaselineView | None:
    baseline = record.get("baseline")
    if not baseline or not baseline.get("maps"):
        return None
    stored = decode_array(baseline["maps"]).astype(np.float32)
    checks = [c for c in record.get("checks") or [] if c.get("name") == "baseline"]
    drifted = any(check.get("passed") is False for check in checks)
    path = str(baseline.get("path", ""))
    if stored.shape != maps.shape:
        note = (
            f"the baseline has maps of shape {tuple(stored.shape)}, this run "
            f"{tuple(maps.shape)}: they cannot be compared map by map"
        )
        return BaselineView(path, drifted, note, [])
    current_means, stored_means = maps.mean(axis=1), stored.mean(axis=1)
    rows = []
    for layer in range(maps.shape[0]):
        difference = current_means[layer] - stored_means[layer]
        rows.append(
            BaselineRow(
                label=f"layer {layer}",
                baseline=_image_cell(stored_means[layer], f"baseline, layer {layer}, head mean"),
                current=_image_cell(current_means[layer], f"current, layer {layer}, head mean"),
                difference=_image_cell(
                    difference, f"current - baseline, layer {layer}", diverging=True
                ),
                # Half the L1 distance: the share of attention mass that moved.
                drift=f"{0.5 * float(np.abs(difference).sum()):.3f}",
            )
        )
    status = str(baseline.get("status") or "compared")
    note = (
        f"{status}; head means per layer, the difference in red (more attention now) and "
        "blue (less)"
    )
    return BaselineView(path, drifted, note, rows)
