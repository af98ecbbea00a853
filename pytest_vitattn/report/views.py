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

from pytest_vitattn.maps import grids_text
from pytest_vitattn.records import anchor, decode_array, decode_maps
from pytest_vitattn.report import heatmaps
from pytest_vitattn.report.run_info import RunInfo
from pytest_vitattn.report.tally import OUTCOME_ORDER

# Images are listed in this order: what needs a reviewer first.
IMAGE_STATUS_ORDER = (
    "failed",
    "error",
    "xpassed",
    "not-judged",
    "xfailed",
    "skipped",
    "passed",
)
STATUS_RANK = {name: rank for rank, name in enumerate(IMAGE_STATUS_ORDER)}
TEST_STATUS_RANK = {name: rank for rank, name in enumerate(OUTCOME_ORDER)}
STATUS_LABELS = {"not-judged": "not judged"}
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

    Rows (layers) may hold maps of different sizes; each row starts at its own top.

    Attributes:
        src: data URI of the sprite.
        width, height: sprite size in pixels.
        tops: the sprite row where each layer's maps start.
        sizes: (h, w) of each layer's maps.
        gap: pixels between neighbouring maps.
    """

    src: str
    width: int
    height: int
    tops: list[int]
    sizes: list[tuple[int, int]]
    gap: int = 1

    @property
    def step_x(self) -> int:
        """Distance between neighbouring maps of the last layer, in sprite pixels."""
        return self.sizes[-1][1] + self.gap

    @property
    def step_y(self) -> int:
        return self.sizes[-1][0] + self.gap

    @property
    def uniform(self) -> bool:
        """Whether every layer's maps have the same size."""
        return len(set(self.sizes)) == 1

    def size_style(self, zoom: float) -> str:
        """CSS variables that scale the whole sprite by ``zoom`` (an integer in the grid, so
        patches stay equal squares)."""
        return f"--sheet-w: {self.width * zoom:g}px; --sheet-h: {self.height * zoom:g}px"

    def position(self, column: int, row: int, zoom: float) -> str:
        """The background position that shows map (row, column) at ``zoom``."""
        left = column * (self.sizes[row][1] + self.gap) * zoom
        return f"background-position: -{left:g}px -{self.tops[row] * zoom:g}px"


@dataclass
class CellView:
    """One map of the grid: a window onto the record's sprite.

    Attributes:
        peak: the map's largest value in multiples of uniform attention, e.g. "4.2x",
            shown under the map (no hover needed).
        judged: "failed" when a failed check used this map, "passed" when only passing
            checks did, "" otherwise.
    """

    title: str
    position: str
    peak: str = ""
    judged: str = ""


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
    """One layer. ``style`` sets the row's own cell and sprite sizes (CSS variables), so
    rows whose layers have different grid sizes can share one grid."""

    label: str
    title: str
    cells: list[CellView]
    style: str = ""


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

    @property
    def first_line(self) -> str:
        return self.message.split("\n", 1)[0]


@dataclass
class FailureTextView:
    """pytest's own text for one failing, skipped or xfailed phase of the test."""

    phase: str
    outcome: str
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
    outcome: str
    phase: str
    verdict: str
    failures: list[FailureTextView]
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

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(self.status, self.status)


@dataclass
class FailedImageView:
    """One image under a failure: why it failed, with value, threshold and message."""

    text: str
    href: str
    reasons: list[str]


@dataclass
class FailureView:
    """One failing pytest report (failed, error or xpassed), as pytest counts them."""

    nodeid: str
    outcome: str
    phase: str
    where: str
    first_line: str
    href: str
    images: list[FailedImageView]
    not_judged: int


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
    failures: list[FailureView]
    records: list[RecordView]
    image_counts: list[tuple[str, str, int]] = field(default_factory=list)
    overlay_slots: list[int] = field(default_factory=list)
    colour_bar: str = ""
    shared_ticks: list[tuple[str, str]] = field(default_factory=list)
    opacity_table: str = ""

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
        ordered_statuses = sorted(statuses.items(), key=lambda item: _rank(item[0]))
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
                FilterOption(
                    f"filter-status-{status}",
                    STATUS_LABELS.get(status, status),
                    count,
                    f"status-{status}",
                )
                for status, count in ordered_statuses
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
            failures=failure_views(run.failures, views, run.root, report_dir),
            records=views,
            image_counts=[
                (status, STATUS_LABELS.get(status, status), count)
                for status, count in ordered_statuses
            ],
            overlay_slots=list(range(1, longest + 1)),
            colour_bar=", ".join(heatmaps.gradient_stops()),
            shared_ticks=shared_ticks(),
            opacity_table=" ".join(f"{value:g}" for value in heatmaps.opacity_table()),
        )


def shared_ticks() -> list[tuple[str, str]]:
    """(label, CSS left offset) of the shared colour bar's ticks, e.g. ("1x", "37.5%")."""
    low, high = heatmaps.SHARED_LOG2_RANGE
    ticks = []
    for power in heatmaps.SHARED_TICKS:
        label = f"{2.0**power:g}x" if power >= 0 else f"1/{2**-power}x"
        if power == high:
            label = "≥" + label
        ticks.append((label, f"{100 * (power - low) / (high - low):g}%"))
    return ticks


def failure_views(
    failures: list[dict[str, Any]], views: list[RecordView], root: Path, report_dir: Path
) -> list[FailureView]:
    """The failures list: one entry per failing pytest report, with the test's images that
    failed (value, threshold, first message line) and how many no check judged."""
    by_test: dict[str, list[RecordView]] = {}
    for view in views:
        by_test.setdefault(view.nodeid, []).append(view)
    entries = []
    for failure in failures:
        records = by_test.get(failure["nodeid"], [])
        deciding = [view for view in records if view.phase == failure["phase"]]
        images = [
            FailedImageView(view.image_label, f"#{view.anchor}", _reasons(view))
            for view in deciding
            if view.status == failure["outcome"] or view.status in ("failed", "error")
        ]
        link = _source_link(failure.get("where") or failure.get("location"), root, report_dir)
        message = str(failure.get("message") or "")
        entries.append(
            FailureView(
                nodeid=failure["nodeid"],
                outcome=str(failure["outcome"]),
                phase=str(failure["phase"]),
                where=link.text if link else "",
                first_line=message.split("\n", 1)[0],
                href=f"#{records[0].anchor}" if records else "",
                images=images,
                not_judged=sum(1 for view in deciding if view.status == "not-judged"),
            )
        )
    return entries


def _reasons(view: RecordView) -> list[str]:
    reasons = [
        f"{check.name} {check.value}"
        + (f" (expected {check.expected})" if check.expected else "")
        + (f": {check.first_line}" if check.first_line else "")
        for check in view.checks
        if check.status == "failed"
    ]
    if not reasons and view.verdict:
        reasons.append(view.verdict)
    return reasons


def sort_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Failures first, then by source location; stable, so a test's images keep their order."""

    def key(record: dict[str, Any]) -> tuple[int, str, int, str]:
        path, line = record.get("location") or ("", 0)
        status = record.get("status") or record.get("outcome")
        return _rank(status), str(path), int(line), record["nodeid"]

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
    maps = decode_maps(record["maps"])  # a list of per-layer maps where the grid changes
    rollout = decode_array(record["rollout"]).astype(np.float32) if record.get("rollout") else None
    if isinstance(maps, list):
        prefix_share = [np.asarray(layer, np.float32) for layer in record.get("prefix_share") or []]
    else:
        prefix_share = np.asarray(record.get("prefix_share") or [], dtype=np.float32)
    model = record.get("model") or {}
    outcome = _status_word(record.get("outcome"))
    status = _status_word(record.get("status") or record.get("outcome"))
    checks = [_check_view(check) for check in record.get("checks") or []]
    heads = [len(layer) for layer in maps] if isinstance(maps, list) else len(maps[0])
    judged = _judged_maps(record.get("checks") or [], len(maps), heads)
    sheets, grid = grid_view(maps, rollout, prefix_share, judged, record.get("layer_blocks"))
    stack = _grid_stack(maps, rollout)
    # pytest's text, unless it only repeats a failed check's message (shown with the check).
    repeated = {f"AssertionError: {c.message}".strip() for c in checks if c.status == "failed"}
    failures = [
        FailureTextView(str(item.get("phase")), str(item.get("outcome")), str(item["message"]))
        for item in record.get("failures") or []
        if item.get("message") and str(item["message"]).strip() not in repeated
    ]
    failed_map = next((key for key, verdict in judged.items() if verdict == "failed"), None)
    return RecordView(
        anchor=record_anchor,
        record_id=record["record_id"],
        nodeid=record["nodeid"],
        image_label=record["image_label"],
        status=status,
        outcome=outcome,
        phase=str(record.get("phase") or "call"),
        verdict=_verdict(status, outcome, str(record.get("phase") or "call"), checks),
        failures=failures,
        model_label=f"{model.get('name', '?')} ({model.get('weights', '?')})",
        model_class=f"model-{model_index}",
        location=_source_link(record.get("location"), root, report_dir),
        failed_at=_source_link(record.get("failed_at"), root, report_dir),
        prediction=_prediction_text(record.get("prediction")),
        facts=_facts(record, maps),
        sheet_style=(
            f"--sprite: url({sheets['shared'].src}); --sprite-own: url({sheets['own'].src})"
        ),
        overlay=_overlay_view(
            record, record_anchor, sheets["shared"], stack, rollout is not None, failed_map
        ),
        grid=grid,
        checks=checks,
        baseline=_baseline_view(record, maps),
        randomised=_randomised_view(record, maps),
    )


def _verdict(status: str, outcome: str, phase: str, checks: list[CheckView]) -> str:
    """One sentence on why this image has its status, for the record and failures list."""
    failed = [check for check in checks if check.status == "failed"]
    if status == "failed" and failed:
        return ""  # the failed checks say why
    if status == "failed":
        return (
            "the test failed but no vitattn check did (a plain assert or an exception): "
            "pytest's message is below; it cannot be narrowed to one image"
        )
    if status == "not-judged":
        return "the test failed on another image before any check judged this one"
    if status == "error":
        return f"error in {phase}: the test's outcome is not about this image's attention"
    if outcome == "failed" and status == "passed":
        return "this image's checks passed; the test failed on another image"
    return ""


# Selections as the checks name them, e.g. "layer 11 of 0..11, head 2",
# "layer 11 of 0..11, mean of 3 heads", "rollout to layer 11".
_HEAD_SELECTION = re.compile(r"layer (\d+) of [^,]*, head (\d+)")
_MEAN_SELECTION = re.compile(r"layer (\d+) of [^,]*, mean of \d+ heads")
_ROLLOUT_SELECTION = re.compile(r"rollout to layer (\d+)")


def selection_cell(selection: str, heads: int | list[int]) -> tuple[int, int] | None:
    """(layer, column) of the grid map a check's selection names, or None (e.g. a max over
    heads, which the grid does not show). Columns: heads, head mean (``heads``), rollout.
    ``heads`` is a per-layer list for models whose head count changes between layers."""
    if match := _HEAD_SELECTION.fullmatch(selection):
        return int(match[1]), int(match[2])
    for pattern, extra in ((_MEAN_SELECTION, 0), (_ROLLOUT_SELECTION, 1)):
        if match := pattern.fullmatch(selection):
            layer = int(match[1])
            if isinstance(heads, list):
                return (layer, heads[layer] + extra) if 0 <= layer < len(heads) else None
            return layer, heads + extra
    return None


def _judged_maps(
    checks: list[dict[str, Any]], layers: int, heads: int | list[int]
) -> dict[tuple[int, int], str]:
    """(layer, column) -> "failed" or "passed" for the maps checks used; failed wins."""
    judged: dict[tuple[int, int], str] = {}
    for check in checks:
        if check.get("passed") is None:
            continue
        cell = selection_cell(str(check.get("selection", "")), heads)
        if cell is None or not 0 <= cell[0] < layers:
            continue
        verdict = "passed" if check["passed"] else "failed"
        if judged.get(cell) != "failed":
            judged[cell] = verdict
    return judged


def _status_word(outcome: str | None) -> str:
    # The status becomes a CSS class; anything unexpected is shown as "unknown".
    return outcome if outcome and re.fullmatch(r"[a-z]+(-[a-z]+)?", outcome) else "unknown"


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


def _facts(record: dict[str, Any], maps: Any) -> list[tuple[str, str]]:
    model = record.get("model") or {}
    preprocessing = record.get("preprocessing") or {}
    if isinstance(maps, list):  # a grid and head count per layer
        layers = len(maps)
        heads = "/".join(dict.fromkeys(str(len(layer)) for layer in maps))
        patches = "a grid per layer: " + grids_text([layer.shape[-2:] for layer in maps])
    else:
        layers, heads, grid_h, grid_w = maps.shape
        patches = f"{grid_h}x{grid_w} patches"
    facts = [
        ("model", f"{model.get('name')} — weights {model.get('weights')}"),
        *([("query", f"query_source={model['query_source']}")] if "query_source" in model else []),
        ("weights id", str(model.get("weights_id"))),
        ("extraction", str(record.get("method"))),
        (
            "tokens",
            f"query token {record.get('query_index')} of "
            f"{record.get('num_prefix_tokens')} prefix token(s); {patches}",
        ),
        ("layers x heads", f"{layers} x {heads}"),
        ("preprocessing", ", ".join(f"{k}: {v}" for k, v in preprocessing.items())),
    ]
    prediction = _prediction_text(record.get("prediction"))
    if prediction:
        facts.insert(2, ("prediction", prediction))
    return facts


def _grid_stack(maps: Any, rollout: Any) -> list[np.ndarray]:
    """The grid's maps, per layer: (heads + 1 [+ 1], h, w): heads, head mean[, rollout].

    Args:
        maps: (layers, heads, h, w), or a list of (heads, h, w) arrays whose h and w may
            differ between layers (multi-stage models).
        rollout: (layers, h, w), a list of (h, w) arrays, or None.
    """
    rows = []
    for layer, layer_maps in enumerate(maps):
        layer_maps = np.asarray(layer_maps, dtype=np.float32)
        columns = [layer_maps, layer_maps.mean(axis=0, keepdims=True)]
        if rollout is not None:
            columns.append(np.asarray(rollout[layer], dtype=np.float32)[None])
        rows.append(np.concatenate(columns, axis=0))
    return rows


def _sheets(stack: list[np.ndarray]) -> dict[str, SheetView]:
    """The record's sprites: "shared" and "own" colour scales. The overlay shows the
    shared one through the page's opacity filter (``heatmaps.opacity_table``)."""
    gap = 1
    sizes = [(int(row.shape[1]), int(row.shape[2])) for row in stack]
    tops = [0]
    for map_h, _ in sizes[:-1]:
        tops.append(tops[-1] + map_h + gap)
    width = max(
        row.shape[0] * (map_w + gap) - gap for row, (_, map_w) in zip(stack, sizes, strict=True)
    )
    height = tops[-1] + sizes[-1][0]
    return {
        scale: SheetView(
            src=heatmaps.data_uri(
                heatmaps.sprite_rows_png(stack, tops, (width, height), gap, scale)
            ),
            width=width,
            height=height,
            tops=tops,
            sizes=sizes,
            gap=gap,
        )
        for scale in heatmaps.SCALES
    }


def _zoom(grid_w: int, target: int) -> int:
    return max(1, round(target / grid_w))


def _peak_title(values: np.ndarray, what: str) -> str:
    row, column = divmod(int(values.argmax()), values.shape[-1])
    return (
        f"{what}: peak {float(values.max()):.4f} at row {row}, col {column} "
        f"(uniform {1.0 / values.size:.4f}; {_multiple(values)} uniform)"
    )


def layer_name(layer: int, layer_blocks: list[int] | None) -> str:
    """ "layer 3", or "layer 0 (block 5)" for a record whose model had blocks left out."""
    if not layer_blocks or layer >= len(layer_blocks):
        return f"layer {layer}"
    return f"layer {layer} (block {layer_blocks[layer]})"


def _multiple(values: np.ndarray) -> str:
    """The map's peak in multiples of uniform attention: "0.9x", "4.2x", "37x"."""
    multiple = float(values.max()) * values.size
    return f"{multiple:.1f}x" if multiple < 10 else f"{multiple:.0f}x"


def grid_view(
    maps: np.ndarray | list[np.ndarray],
    rollout: np.ndarray | None,
    prefix_share: np.ndarray | list[np.ndarray],
    judged: dict[tuple[int, int], str] | None = None,
    layer_blocks: list[int] | None = None,
) -> tuple[dict[str, SheetView], GridView]:
    """The grid of one record and the sprites its cells show.

    Args:
        maps: (layers, heads, grid_h, grid_w) CLS attention, or a list of per-layer
            (heads_l, h_l, w_l) maps (models whose grid and head count change between
            layers: each row has its own map size and heads, the rest of it left empty).
        rollout: (layers, grid_h, grid_w) rollout after each layer, or None.
        prefix_share: (layers, heads) share of attention on prefix tokens (a list of
            (heads_l,) arrays for per-layer maps), or empty.
        judged: (layer, column) -> "failed" | "passed" for maps that checks used.
        layer_blocks: each layer's block index when the plugin left blocks out (rows are
            then named "layer 0 (block 5)"), or None.
    """
    judged = judged or {}
    stack = _grid_stack(maps, rollout)
    sheets = _sheets(stack)
    sheet = sheets["shared"]
    has_rollout = rollout is not None
    layers = len(stack)
    # Models whose head count changes between layers (PiT: 2, 4, 8) have rows of their own
    # length: each row's heads, empty cells up to the most heads, then the head mean.
    heads_of = [row.shape[0] - 1 - int(has_rollout) for row in stack]
    heads = max(heads_of)
    columns = heads + 1 + int(has_rollout)
    names = [f"head {head}" for head in range(heads)] + ["head mean"]
    if has_rollout:
        names.append("rollout")
    rows = []
    for layer in range(layers):
        grid_h, grid_w = sheet.sizes[layer]
        zoom = _zoom(grid_w, CELL_WIDTH)
        cells = []
        for column in range(columns):
            own = column if column < heads else column - heads + heads_of[layer]
            if column < heads and column >= heads_of[layer]:
                cells.append(CellView(f"layer {layer} has {heads_of[layer]} heads", ""))
                continue
            verdict = judged.get((layer, own), "")
            title = _peak_title(stack[layer][own], f"layer {layer}, {names[column]}")
            if verdict:
                title += f"; a check on this map {verdict}"
            cells.append(
                CellView(
                    title,
                    sheet.position(own, layer, zoom),
                    _multiple(stack[layer][own]),
                    verdict,
                )
            )
        per_layer = isinstance(prefix_share, list) or prefix_share.ndim == 2
        share = (
            f"; {float(prefix_share[layer].mean()):.1%} of the query's attention went to "
            "prefix tokens (not shown)"
            if per_layer and len(prefix_share) == layers
            else ""
        )
        # Layers with their own map size set their own cell and sprite sizes.
        row_style = "" if sheet.uniform else _cell_style(sheet, grid_h, grid_w, zoom)
        name = layer_name(layer, layer_blocks)
        rows.append(GridRow(name, f"{name}{share}", cells, row_style))
    layer_count = f"{layers} layer" + ("" if layers == 1 else "s")
    caption = (
        f"CLS attention, {layer_count} x {heads} heads; under each map its peak in "
        "multiples of uniform attention (1x = every patch equal)"
    )
    if layer_blocks is not None and len(layer_blocks) == layers:
        caption += "; the model's other blocks have no CLS attention over the patches"
    if len(set(heads_of)) > 1:
        caption = (
            f"CLS attention, {layers} layers x "
            f"{'/'.join(dict.fromkeys(map(str, heads_of)))} heads, each layer on its own grid "
            f"({grids_text(sheet.sizes)}); under each map its peak in multiples of uniform "
            "attention (1x = every patch equal)"
        )
    grid_h, grid_w = sheet.sizes[-1]
    style = _cell_style(sheet, grid_h, grid_w, _zoom(grid_w, CELL_WIDTH))
    return sheets, GridView(caption, names, rows, style)


def _cell_style(sheet: SheetView, grid_h: int, grid_w: int, zoom: int) -> str:
    return f"--cell-w: {grid_w * zoom}px; --cell-h: {grid_h * zoom}px; " + sheet.size_style(zoom)


def _overlay_view(
    record: dict[str, Any],
    record_anchor: str,
    sheet: SheetView,
    stack: list[np.ndarray],
    has_rollout: bool,
    failed_map: tuple[int, int] | None = None,
) -> OverlayView:
    layers = len(stack)
    grid_h, grid_w = sheet.sizes[-1]
    heads_of = [row.shape[0] - 1 - int(has_rollout) for row in stack]  # per layer
    heads = heads_of[-1]
    zoom = _zoom(grid_w, STAGE_WIDTH)
    width, height = grid_w * zoom, grid_h * zoom
    last = layers - 1
    # The maps a reviewer compares most: the last layer's mean (shown first), rollout,
    # the last layer's heads, then the other layers' means; JavaScript adds any cell.
    candidates = [(f"layer {last} mean", heads, last)]
    if has_rollout:
        candidates.append((f"rollout to layer {last}", heads + 1, last))
    candidates += [(f"layer {last} head {head}", head, last) for head in range(heads)]
    candidates += [(f"layer {layer} mean", heads_of[layer], layer) for layer in range(last)]
    # A failed check's map is shown first: where the attention went when it failed.
    if failed_map is not None:
        layer, column = failed_map
        heads = heads_of[layer]
        names = [f"head {head}" for head in range(heads)] + ["mean", "rollout"]
        label = f"failed check: layer {layer} {names[column]}"
        if column == heads + 1:
            label = f"failed check: rollout to layer {layer}"
        candidates = [
            (label, column, layer),
            *[c for c in candidates if (c[1], c[2]) != (column, layer)],
        ]
    group = f"{record_anchor}-overlay"
    choices = [
        ChoiceView(
            f"{group}-{index}", label, _stage_position(sheet, column, row, width), index == 0
        )
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
        outlines=_outlines(record.get("masks") or [], (width, height)),
    )


def _stage_position(sheet: SheetView, column: int, row: int, width: int) -> str:
    """The background of the overlay stage (``width`` pixels wide) that shows map (row,
    column) filling the stage; a layer whose maps have another size is scaled to fit."""
    zoom = width / sheet.sizes[row][1]
    position = sheet.position(column, row, zoom)
    if sheet.sizes[row] == sheet.sizes[-1]:
        return position
    return f"{position}; background-size: {sheet.width * zoom:g}px {sheet.height * zoom:g}px"


def _outlines(masks: list[dict[str, Any]], size: tuple[int, int]) -> list[OutlineView]:
    outlines = []
    for index, mask in enumerate(masks):
        if not mask.get("pixels"):
            continue
        pixels = decode_array(mask["pixels"]).astype(bool)
        colour = heatmaps.OUTLINE_COLOURS[index % len(heatmaps.OUTLINE_COLOURS)]
        outlines.append(
            OutlineView(
                mask["label"],
                heatmaps.data_uri(heatmaps.outline_png(pixels, index, size)),
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
    stored = decode_maps(randomised["maps"])
    checks = [c for c in record.get("checks") or [] if c.get("name") == "depends_on_weights"]
    failed = any(check.get("passed") is False for check in checks)
    label = str(randomised.get("label", "top blocks re-initialised"))
    if isinstance(maps, list) or isinstance(stored, list):
        note = "randomised maps of a model with a grid per layer are not shown"
        return BaselineView(label, failed, note, [])
    if stored.shape != maps.shape:
        note = f"randomised maps of shape {tuple(stored.shape)}, trained {tuple(maps.shape)}"
        return BaselineView(label, failed, note, [])
    trained_means, random_means = maps.mean(axis=1), stored.mean(axis=1)
    rows = []
    for layer in range(maps.shape[0]):
        rows.append(
            _baseline_row(
                layer_name(layer, record.get("layer_blocks")),
                layer,
                trained_means[layer],
                random_means[layer],
                names=("trained", "randomised"),
            )
        )
    note = "head means per layer; a map that depends on the weights moves (red: trained only)"
    return BaselineView(label, failed, note, rows)


def _baseline_view(record: dict[str, Any], maps: np.ndarray) -> BaselineView | None:
    baseline = record.get("baseline")
    if not baseline or not baseline.get("maps"):
        return None
    stored = decode_maps(baseline["maps"])
    checks = [c for c in record.get("checks") or [] if c.get("name") == "baseline"]
    # Only a failed comparison is drift: a missing baseline just written fails its test too.
    drifted = any(
        check.get("passed") is False
        and (check.get("details") or {}).get("status", "compared") == "compared"
        for check in checks
    )
    path = str(baseline.get("path", ""))
    if isinstance(maps, list) or isinstance(stored, list):
        return _per_layer_baseline_view(baseline, maps, stored, path, drifted)
    if stored.shape != maps.shape:
        note = (
            f"the baseline has maps of shape {tuple(stored.shape)}, this run "
            f"{tuple(maps.shape)}: they cannot be compared map by map"
        )
        return BaselineView(path, drifted, note, [])
    current_means, stored_means = maps.mean(axis=1), stored.mean(axis=1)
    rows = []
    for layer in range(maps.shape[0]):
        rows.append(
            _baseline_row(
                layer_name(layer, record.get("layer_blocks")),
                layer,
                current_means[layer],
                stored_means[layer],
            )
        )
    status = str(baseline.get("status") or "compared")
    note = (
        f"{status}; head means per layer, the difference in red (more attention now) and "
        "blue (less)"
    )
    return BaselineView(path, drifted, note, rows)


def _baseline_row(
    label: str,
    layer: int,
    current: Any,
    stored: Any,
    names: tuple[str, str] = ("current", "baseline"),
) -> BaselineRow:
    """One layer's head means, (h, w) each: the reference (``stored``), ``current`` and their
    difference; ``names`` are (current, reference) as the captions call them."""
    now, before = names
    difference = current - stored
    return BaselineRow(
        label=label,
        baseline=_image_cell(stored, f"{before}, layer {layer}, head mean"),
        current=_image_cell(current, f"{now}, layer {layer}, head mean"),
        difference=_image_cell(difference, f"{now} - {before}, layer {layer}", diverging=True),
        # Half the L1 distance: the share of attention mass that moved.
        drift=f"{0.5 * float(np.abs(difference).sum()):.3f}",
    )


def _per_layer_baseline_view(
    baseline: dict[str, Any], maps: Any, stored: Any, path: str, drifted: bool
) -> BaselineView:
    """``_baseline_view`` for a model with a grid per layer: each layer on its own grid."""
    shapes = [tuple(layer.shape) for layer in maps] if isinstance(maps, list) else None
    stored_shapes = [tuple(layer.shape) for layer in stored] if isinstance(stored, list) else None
    if shapes is None or shapes != stored_shapes:
        note = (
            "the baseline's maps and this run's have different shapes per layer "
            f"(baseline {stored_shapes or tuple(stored.shape)}, this run "
            f"{shapes or tuple(maps.shape)}): they cannot be compared map by map"
        )
        return BaselineView(path, drifted, note, [])
    rows = []
    for layer, (current, before) in enumerate(zip(maps, stored, strict=True)):
        grid = f"{current.shape[-2]}x{current.shape[-1]}"
        rows.append(
            _baseline_row(
                f"layer {layer} ({grid})", layer, current.mean(axis=0), before.mean(axis=0)
            )
        )
    status = str(baseline.get("status") or "compared")
    note = (
        f"{status}; head means per layer, each on its own grid, the difference in red (more "
        "attention now) and blue (less)"
    )
    return BaselineView(path, drifted, note, rows)
