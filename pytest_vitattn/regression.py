"""The baseline check: compare a record's maps with its stored baseline, write or update it.

``TestBaselines`` is one test's view of the baselines: its ``BaselineStore``, the run's
``BaselinePolicy`` (update, missing baselines) and the test's tolerance. Each check adds a
``CheckResult(name="baseline")`` to the record and sets ``record.baseline`` for the report.

What makes two runs comparable: the grid, layers, heads, token layout and preprocessing
must match the baseline's, or the check is an error (the maps would differ for reasons
other than the model). The model and its weights may differ, since catching a new model
that looks elsewhere is the point; every message then says so, and ``baseline_model=
"require-same"`` turns it into an error. Library versions are informational. The image must
be the baseline's: a baseline whose pixel hash differs from the probed image's is an error,
never a drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytest_vitattn import baseline as files
from pytest_vitattn import drift
from pytest_vitattn.baseline import Baseline, BaselineStore
from pytest_vitattn.errors import BaselineError
from pytest_vitattn.policy import MISSING_FLAG, UPDATE_FLAG, BaselinePolicy
from pytest_vitattn.records import AttentionRecord, CheckResult
from pytest_vitattn.tolerance import Tolerance

TABLE_ROWS = 10

_RANDOM_WEIGHTS = "random-init"


@dataclass(frozen=True)
class MapEntry:
    """One compared map: its name in messages, and its layer/head when it is a single head."""

    label: str
    layer: int | None = None
    head: int | None = None


@dataclass(frozen=True)
class TestBaselines:
    """The baselines of one test.

    Attributes:
        store: where the test's baseline files are.
        policy: the run's update / missing-baseline policy.
        tolerance: the test's tolerance (marker > CLI > ini > default).
        model_rule: "require-same" (another model or weights fails, with the drift shown)
            or "compare" (it is compared, and the failure message says so).
        defer_missing: a missing baseline does not stop the test: it is recorded (and
            written, by the policy) and ``finish`` fails the test once, naming every one,
            so a test of several images writes all its baselines in one run. The plugin
            sets it and calls ``finish`` after the test; elsewhere the check fails at once.
        missing: (status, shown path) of each missing baseline so far, for ``finish``.
    """

    __test__ = False  # not a pytest test class, despite the name

    store: BaselineStore
    policy: BaselinePolicy
    tolerance: Tolerance
    model_rule: str = "require-same"
    defer_missing: bool = False
    missing: list[tuple[str, str]] = field(default_factory=list)

    def finish(self) -> str | None:
        """The failure message for the missing baselines of the test, or None when none was."""
        if not self.missing:
            return None
        written = [shown for status, shown in self.missing if status != "missing"]
        absent = [shown for status, shown in self.missing if status == "missing"]
        self.missing.clear()
        if written:
            return _written_message(written, self.policy)
        return _missing_message(absent, self.policy)

    def check_record(
        self,
        record: AttentionRecord,
        tolerance: Any = None,
        layers: Sequence[int] | None = None,
        report_hint: str = "",
    ) -> drift.Drift:
        """Every head of every layer (or of ``layers``) against the baseline.

        Returns:
            The drift, arrays shaped (len(layers), H); for per-layer maps (a model whose
            grid and heads change between layers), (maps,), each layer's heads in order.

        Raises:
            AssertionError: maps drifted past the tolerance, or the baseline was missing
                (unless ``defer_missing``: then ``finish`` reports it after the test).
            BaselineError: the baseline is corrupt or was made under other conditions.
        """
        __tracebackhide__ = True
        if isinstance(record.maps, list):
            return self._check_layers(record, tolerance, layers, report_hint)
        num_layers, num_heads = record.maps.shape[:2]
        chosen = _layer_indices(layers, num_layers)
        entries = [
            MapEntry(f"layer {layer}, head {head}", layer, head)
            for layer in chosen
            for head in range(num_heads)
        ]
        selection = (
            "every layer and head"
            if layers is None
            else f"heads of layer(s) {', '.join(map(str, chosen))}"
        )
        measured = self._check(
            record, tolerance, lambda maps: maps[chosen], entries, selection, report_hint
        )
        return measured.reshape(len(chosen), num_heads)

    def _check_layers(
        self,
        record: AttentionRecord,
        tolerance: Any,
        layers: Sequence[int] | None,
        report_hint: str,
    ) -> drift.Drift:
        """``check_record`` for a model with a grid and head count per layer.

        Returns:
            The drift, arrays of shape (maps,): each chosen layer's heads in order.
        """
        __tracebackhide__ = True
        chosen = _layer_indices(layers, len(record.maps))
        entries = [
            MapEntry(f"layer {layer}, head {head}", layer, head)
            for layer in chosen
            for head in range(record.maps[layer].shape[0])
        ]
        selection = (
            "every layer and head"
            if layers is None
            else f"heads of layer(s) {', '.join(map(str, chosen))}"
        )
        return self._check(
            record,
            tolerance,
            lambda maps: [maps[layer] for layer in chosen],
            entries,
            selection,
            report_hint,
        )

    def check_map(
        self,
        record: AttentionRecord,
        select: Callable[[np.ndarray], np.ndarray],
        label: str,
        tolerance: Any = None,
        report_hint: str = "",
    ) -> drift.Drift:
        """One map (a head, or fused heads) against the same map taken from the baseline.

        Args:
            select: takes (L, H, h, w) maps to the (h, w) map being checked.
            label: the map's name, e.g. "layer 5 of 0..5, mean of 3 heads".

        Returns:
            The drift, arrays of shape ().
        """
        __tracebackhide__ = True
        measured = self._check(record, tolerance, select, [MapEntry(label)], label, report_hint)
        return measured.reshape()

    def _check(
        self,
        record: AttentionRecord,
        tolerance: Any,
        select: Callable[[np.ndarray], np.ndarray],
        entries: list[MapEntry],
        selection: str,
        report_hint: str,
    ) -> drift.Drift:
        __tracebackhide__ = True
        tolerance = self.tolerance if tolerance is None else Tolerance.of(tolerance)
        image_key = _image_key(record)
        path = self.store.path_for(image_key)
        shown = self.store.shown(path)
        conclude = _Conclusion(record, tolerance, selection, shown)
        _refuse_random_weights(record, conclude)
        current = files.stored_values(record.maps)
        metadata = files.describe(record, self.store.test, image_key)

        if self.policy.update or (not path.exists() and self.policy.missing != "fail"):
            status = self._write(path, current, metadata)
            record.baseline = _view(current, shown, status, metadata)
            if self.policy.update or self.policy.missing == "write":
                return conclude.written(status, select(current))
            return self._missing(conclude, status, shown, record, path, select(current))
        if not path.exists():
            return self._missing(conclude, "missing", shown, record, path, select(current))

        stored = _read(path, shown, conclude)
        # Other pixels first: the most useful thing to say about a renamed or copied file.
        self._check_image(stored, record, shown, conclude)
        self._check_identity(stored, image_key, shown, conclude)
        model_note = self._model_note(stored, metadata)
        _check_comparable(stored, metadata, shown, conclude, model_note)
        record.baseline = _view(stored.maps, shown, "compared", stored.metadata)
        measured = _compare(select(current), select(stored.maps))
        refuse_other_model = model_note is not None and self.model_rule == "require-same"
        return conclude.compared(
            measured, entries, stored, metadata, model_note, report_hint, refuse_other_model
        )

    def _missing(
        self,
        conclude: _Conclusion,
        status: str,
        shown: str,
        record: AttentionRecord,
        path: Any,
        maps: np.ndarray,
    ) -> drift.Drift:
        """A missing baseline: fail now, or (deferred) record it and go on to the next one."""
        __tracebackhide__ = True
        others = [
            self.store.shown(other) for other in self.store.others_of(record.image_file, path)
        ]
        note = _others_note(others)
        if not self.defer_missing:
            message = (
                _missing_message([shown], self.policy)
                if status == "missing"
                else _written_message([shown], self.policy)
            )
            conclude.fail(status, message + note)
        if all(entry[1] != shown for entry in self.missing):
            self.missing.append((status, shown + note))
        return conclude.deferred(status, maps, f"missing baseline {shown}{note}")

    def _check_image(
        self, stored: Baseline, record: AttentionRecord, shown: str, conclude: _Conclusion
    ) -> None:
        """A baseline of other pixels is an error that says so, never a drift."""
        __tracebackhide__ = True
        before = stored.metadata.get("image_sha256")
        if not before:
            conclude.error(
                f"baseline {shown} does not record which image it was made from (format "
                f"{stored.metadata.get('format_version')}, pytest-vitattn 0.1): re-create it "
                f"with pytest {UPDATE_FLAG}"
            )
        if record.image_sha256 and before != record.image_sha256:
            conclude.error(
                f"baseline {shown} was made from another image: its pixels' SHA-256 is "
                f"{before[:16]}..., this image's ({record.image_label}) is "
                f"{record.image_sha256[:16]}...; comparing their attention would report a "
                "drift that is only a different picture. If the image was meant to change, "
                f"re-create the baseline: pytest {UPDATE_FLAG}"
            )

    def _write(self, path: Any, maps: np.ndarray, metadata: dict[str, Any]) -> str:
        data = files.encode(maps, metadata)
        if not path.exists():
            files.write(path, data)
            return "written"
        if path.read_bytes() == data:
            return "unchanged"
        files.write(path, data)
        return "updated"

    def _check_identity(
        self, stored: Baseline, image_key: str, shown: str, conclude: _Conclusion
    ) -> None:
        # Two names can share a file on a case-insensitive disk; never compare another test's.
        owner = (stored.metadata.get("test"), stored.metadata.get("image"))
        if owner != (self.store.test, image_key):
            conclude.error(
                f"baseline {shown} belongs to test {owner[0]!r}, image {owner[1]!r}, not to "
                f"test {self.store.test!r}, image {image_key!r}: it was copied or renamed, or "
                "two names differ only in case on a case-insensitive disk. Delete it, or "
                f"re-create it with pytest {UPDATE_FLAG}"
            )

    def _model_note(self, stored: Baseline, metadata: dict[str, Any]) -> str | None:
        """None for the baseline's model and weights; else a sentence naming both."""
        before, now = stored.metadata.get("model", {}), metadata["model"]
        if _model_key(before) == _model_key(now):
            return None
        return f"this run uses {_model_text(now)}; the baseline was made with {_model_text(before)}"


def _other_model_message(note: str | None, drift_message: str, nodeid: str) -> str:
    """Why a baseline of another model or weights fails under baseline_model='require-same'."""
    measured = (
        drift_message
        if drift_message
        else "  (its maps are within the tolerance of the baseline's)"
    )
    return (
        f"baseline made with other weights: {note}.\n"
        "  baseline_model='require-same' (the default) fails such a comparison, so a swapped "
        "model never passes silently.\n"
        f"  if the new model is meant to replace the old: pytest {UPDATE_FLAG} '{nodeid}'; to "
        "compare the attention of different models, use baseline_model='compare'.\n"
        f"{measured}"
    )


def _check_comparable(
    stored: Baseline,
    metadata: dict[str, Any],
    shown: str,
    conclude: _Conclusion,
    model_note: str | None,
) -> None:
    problems = incompatibilities(stored.metadata, metadata)
    if problems:
        if model_note:  # the likely cause, named beside what it changed
            problems.append(f"model: {model_note}")
        conclude.error(
            f"baseline {shown} was made under other conditions, so its maps cannot be "
            "compared:\n"
            + "\n".join(f"  - {problem}" for problem in problems)
            + f"\nIf this change is intended, re-create the baseline: pytest {UPDATE_FLAG}"
        )


def incompatibilities(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Differences that make the maps of two runs incomparable, one sentence each.

    Args:
        stored, current: baseline metadata (see ``baseline.describe``).
    """
    problems = []
    model_before, model_now = stored.get("model", {}), current.get("model", {})
    for key, default in (("query_source", "auto"), ("branch", "primary")):
        if model_before.get(key, default) != model_now.get(key, default):
            problems.append(
                f"{key}: baseline {model_before.get(key, default)!r}, this run "
                f"{model_now.get(key, default)!r} (another query of the model)"
            )
    for axis, name in enumerate(("layers", "heads")):
        before, now = _layers_heads(stored)[axis], _layers_heads(current)[axis]
        if before != now:
            problems.append(f"{name}: baseline {before}, this run {now}")
    layout_before, layout_now = stored.get("token_layout", {}), current["token_layout"]
    for key, name in (
        ("grid", "patch grid"),
        ("layer_grids", "patch grid per layer"),
        ("num_prefix_tokens", "prefix tokens"),
        ("query_index", "query token index"),
    ):
        if layout_before.get(key) != layout_now.get(key):
            problems.append(
                f"{name}: baseline {layout_before.get(key)}, this run {layout_now[key]}"
            )
    before, now = stored.get("preprocessing", {}), current["preprocessing"]
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            problems.append(
                f"preprocessing {key}: baseline {before.get(key)!r}, this run {now.get(key)!r}"
            )
    return problems


def _layers_heads(metadata: dict[str, Any]) -> tuple[Any, Any]:
    """(layers, heads) of baseline metadata; heads is a per-layer list for format 3."""
    shapes = metadata.get("layer_shapes")
    if shapes is not None:
        return len(shapes), [shape[0] for shape in shapes]
    return metadata["shape"][0], metadata["shape"][1]


def version_changes(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, list[str]]:
    """Libraries whose version differs from the baseline's: name -> [baseline, now]."""
    before, now = stored.get("versions", {}), current["versions"]
    return {
        name: [str(before.get(name)), str(now.get(name))]
        for name in sorted(set(before) | set(now))
        if before.get(name) != now.get(name)
    }


class _Conclusion:
    """Turns the outcome of one check into a ``CheckResult`` and, on failure, an exception."""

    def __init__(
        self, record: AttentionRecord, tolerance: Tolerance, selection: str, shown: str
    ) -> None:
        self.record = record
        self.tolerance = tolerance
        self.selection = selection
        self.shown = shown

    def written(self, status: str, maps: Any) -> drift.Drift:
        self._add(0.0, True, "", {"status": status})
        return _compare(maps, maps)

    def deferred(self, status: str, maps: Any, message: str) -> drift.Drift:
        """A missing baseline, recorded as a failed check; the test fails later."""
        self._add(0.0, False, message, {"status": status})
        return _compare(maps, maps)

    def fail(self, status: str, message: str) -> None:
        __tracebackhide__ = True
        self._add(0.0, False, message, {"status": status})
        raise AssertionError(message)

    def error(self, message: str) -> None:
        __tracebackhide__ = True
        self._add(0.0, False, message, {"status": "error"})
        raise BaselineError(message)

    def compared(
        self,
        measured: drift.Drift,
        entries: list[MapEntry],
        stored: Baseline,
        metadata: dict[str, Any],
        model_note: str | None,
        report_hint: str,
        refuse_other_model: bool = False,
    ) -> drift.Drift:
        __tracebackhide__ = True
        bad = drift.failing(measured, self.tolerance)
        changes = version_changes(stored.metadata, metadata)
        details = {
            "status": "compared",
            "maps": [
                {**_entry_dict(entry), **measured.at((i,))} for i, entry in enumerate(entries)
            ],
            "failing": [entries[i].label for i in np.flatnonzero(bad)],
            "baseline_model": stored.metadata.get("model"),
            "model_changed": model_note is not None,
            "version_changes": changes,
        }
        message = ""
        if bad.any():
            message = self._drift_message(
                measured, entries, int(bad.sum()), model_note, changes, report_hint
            )
        if refuse_other_model:
            # The maps were still measured, so the report can show what changed.
            message = _other_model_message(model_note, message, self.record.nodeid)
        failed = bool(bad.any()) or refuse_other_model
        self._add(float(measured.js.max()), not failed, message, details)
        if failed:
            raise AssertionError(message)
        return measured

    def _drift_message(
        self,
        measured: drift.Drift,
        entries: list[MapEntry],
        count: int,
        model_note: str | None,
        changes: dict[str, list[str]],
        report_hint: str,
    ) -> str:
        several = len(entries) > 1
        what = f"{count} of {len(entries)} maps" if several else entries[0].label
        headline = (
            f"attention drifted from its baseline in {what} "
            f"(tolerance: {self.tolerance.describe()})"
        )
        if model_note:
            headline += "; the baseline was made with another model or weights"
        lines = [
            headline + (", worst first:" if several else ":"),
            *drift.drift_table(
                measured, self.tolerance, [entry.label for entry in entries], TABLE_ROWS
            ),
            "  (! marks a measure past its bound)",
            f"  image: {self.record.image_label}   baseline: {self.shown}",
            f"  model: {model_note or _model_text(self.record.model) + ', as in the baseline'}",
        ]
        if changes:
            text = ", ".join(
                f"{name} {now} (baseline {was})" for name, (was, now) in changes.items()
            )
            lines.append(f"  library versions differ from the baseline's: {text}")
        if report_hint:
            lines.append(f"  heatmap: {report_hint}")
        lines.append(
            f"  if the new maps are right: pytest {UPDATE_FLAG} '{self.record.nodeid}', "
            "then commit the file"
        )
        return "\n".join(lines)

    def _add(self, value: float, passed: bool, message: str, details: dict[str, Any]) -> None:
        bounds = self.tolerance.bounds()
        self.record.checks.append(
            CheckResult(
                name="baseline",
                value=value,
                passed=passed,
                op="<=",
                threshold=bounds.get("max_js"),
                chance=None,
                selection=self.selection,
                message=message,
                details={"path": self.shown, "tolerance": bounds, **details},
            )
        )


def _read(path: Any, shown: str, conclude: _Conclusion) -> Baseline:
    __tracebackhide__ = True
    try:
        return files.read(path, shown)
    except BaselineError as error:
        conclude.error(str(error))
        raise  # unreachable: conclude.error raises


def _compare(current: Any, stored: Any) -> drift.Drift:
    """The drift of (..., h, w) maps, or of a list of per-layer maps (each layer on its own
    grid), flattened to one entry per map in order."""
    if not isinstance(current, list):
        return drift.compare(
            current.reshape(-1, *current.shape[-2:]), stored.reshape(-1, *current.shape[-2:])
        )
    parts = [_compare(now, before) for now, before in zip(current, stored, strict=True)]
    return drift.Drift(
        **{name: np.concatenate([getattr(part, name) for part in parts]) for name in drift.MEASURES}
    )


def _view(maps: Any, shown: str, status: str, metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "maps": (
            [np.asarray(layer, dtype=np.float32) for layer in maps]
            if isinstance(maps, list)
            else np.asarray(maps, dtype=np.float32)
        ),
        "path": shown,
        "status": status,
        "model": metadata.get("model"),
    }


def _image_key(record: AttentionRecord) -> str:
    if not record.image_sha256:
        raise BaselineError(
            f"the record of {record.image_label} has no image hash, so its baseline cannot be "
            "named; probe images with a pytest_vitattn Probe"
        )
    return files.image_key(record.image_file, record.image_sha256)


def _layer_indices(layers: Sequence[int] | None, count: int) -> list[int]:
    if layers is None:
        return list(range(count))
    if isinstance(layers, int) or not layers:
        raise ValueError(f"layers must be a non-empty list of layer indices, got {layers!r}")
    chosen = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layer index must be an int, got {layer!r}")
        if not -count <= layer < count:
            raise ValueError(f"layer {layer} is out of range for {count} layers (0..{count - 1})")
        chosen.append(int(layer) % count)
    return chosen


def _refuse_random_weights(record: AttentionRecord, conclude: _Conclusion) -> None:
    __tracebackhide__ = True
    if record.model.get("weights_id") == _RANDOM_WEIGHTS:
        conclude.error(
            f"{record.model.get('name')} runs with weights='random', which are drawn anew in "
            "every session, so no baseline can hold for them: save the weights "
            "(safetensors.torch.save_file(model.state_dict(), path)) and use weights=PATH"
        )


def _entry_dict(entry: MapEntry) -> dict[str, Any]:
    data: dict[str, Any] = {"label": entry.label}
    if entry.layer is not None:
        data.update(layer=entry.layer, head=entry.head)
    return data


def _model_key(model: Mapping[str, Any]) -> tuple[Any, ...]:
    # A missing query key is the default query (files from before the keys existed).
    return (
        model.get("name"),
        model.get("weights_id"),
        model.get("branch", "primary"),
        model.get("query_source", "auto"),
    )


def _model_text(model: Mapping[str, Any]) -> str:
    query = "".join(f", {key}={model[key]!r}" for key in ("branch", "query_source") if key in model)
    return (
        f"{model.get('name')} (weights: {model.get('weights')}, {model.get('weights_id')}{query})"
    )


def _written_message(shown: list[str], policy: BaselinePolicy) -> str:
    what = (
        f"no attention baseline for this test and image yet; wrote {shown[0]}"
        if len(shown) == 1
        else f"no attention baseline yet for {len(shown)} images of this test; wrote all of "
        "them in this run:\n" + "\n".join(f"    {path}" for path in shown)
    )
    return (
        f"{what}\n"
        "  Review it (pytest --vitattn-report shows the maps), commit it, and run again to "
        "compare against it.\n"
        f"  (a missing baseline is written and fails the test: {policy.reason}; with the CI "
        "environment variable set it fails without being written)"
    )


def _missing_message(shown: list[str], policy: BaselinePolicy) -> str:
    where = (
        f"{shown[0]}, and"
        if len(shown) == 1
        else "\n" + "\n".join(f"    {path}" for path in shown) + "\n  and"
    )
    return (
        f"no attention baseline at {where} missing baselines fail here ({policy.reason}).\n"
        f"  Create it where the model is right: pytest {MISSING_FLAG}=write, then commit it."
    )


def _others_note(others: list[str]) -> str:
    if not others:
        return ""
    return (
        "\n  (this test's folder has a baseline for the same file name made from other pixels "
        "or by pytest-vitattn 0.1: " + ", ".join(others) + "; delete it if the image changed)"
    )
