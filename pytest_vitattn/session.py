"""The plugin's state for one pytest run: settings, the model cache and the records.

``plugin`` keeps one ``VitattnSession`` in ``config.stash`` and hands every hook to it.
Heavy modules (torch, timm) are imported only when a test first asks for a probe.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_vitattn.errors import VitAttnError
from pytest_vitattn.models import ModelCache, ModelSpec
from pytest_vitattn.options import SETTINGS, SETTINGS_BY_KEY, parse_marker_value
from pytest_vitattn.policy import BaselinePolicy
from pytest_vitattn.report.tally import OutcomeTally
from pytest_vitattn.report.verdicts import (
    FAILING,
    PHASE_ORDER,
    image_status,
    phase_verdict,
    test_outcome,
)
from pytest_vitattn.report.writer import ReportFiles, ReportPathError, check_writable
from pytest_vitattn.tolerance import Tolerance

RECORDS_ATTRIBUTE = "vitattn_records"


@dataclass(frozen=True)
class TestSettings:
    """The settings that apply to one test, after marker > CLI > ini > default."""

    model: str
    weights: str
    device: str
    preprocess: str
    extraction: str
    rollout: str | None
    rollout_discard_ratio: float
    token: str | int
    tolerance: Tolerance
    baseline_dir: str | None
    missing_baselines: str
    baseline_model: str
    strict_masks: bool = False
    branch: str | int = "primary"
    query_source: str = "auto"
    model_kwargs: tuple[tuple[str, Any], ...] | None = None
    model_factory: str | None = None
    strict_weights: bool = False
    threads: int | None = None

    def spec(self) -> ModelSpec:
        return ModelSpec(
            self.model,
            self.weights,
            self.device,
            kwargs=self.model_kwargs or (),
            factory=self.model_factory,
            branch=self.branch,
            query_source=self.query_source,
            strict=self.strict_weights,
        )


class VitattnSession:
    """Settings, models and records of one pytest run (one per xdist worker, too)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.run_settings = _run_settings(config)
        self.models = ModelCache()
        self.records: list[dict[str, Any]] = []
        self.report_path = _report_path(config)
        self.tally = OutcomeTally()
        # One entry per failing report (failed, error, xpassed), as pytest counts them.
        self.failures: list[dict[str, Any]] = []
        self.report_files: ReportFiles | None = None
        self.report_error: str | None = None
        self.baseline_policy = _baseline_policy(config, self.run_settings["missing_baselines"])
        self.current_item: pytest.Item | None = None
        self._adopted: dict[int, tuple[Any, Any]] = {}

    @property
    def is_xdist_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def settings_for(
        self, item: pytest.Item, overrides: dict[str, Any] | None = None
    ) -> TestSettings:
        """Merge the test's ``vitattn`` markers (closest wins) over the run settings."""
        marker_values = {**self._marker_values(item), **(overrides or {})}
        values = self._merged(dict(self.run_settings), marker_values, Path(str(item.path)).parent)
        return TestSettings(**values)

    def _marker_values(self, item: pytest.Item) -> dict[str, Any]:
        marker_values: dict[str, Any] = {}
        for marker in reversed(list(item.iter_markers("vitattn"))):
            if marker.args:
                raise VitAttnError(
                    "@pytest.mark.vitattn takes keyword arguments only, e.g. "
                    "@pytest.mark.vitattn(model='deit_tiny_patch16_224')"
                )
            marker_values.update(marker.kwargs)
        return marker_values

    @staticmethod
    def _merged(values: dict[str, Any], marker_values: dict[str, Any], base: Path) -> dict:
        for key, raw in marker_values.items():
            try:
                value = parse_marker_value(key, raw)
            except ValueError as error:
                raise VitAttnError(str(error)) from None
            if SETTINGS_BY_KEY[key].is_path and value not in ("pretrained", "random"):
                value = str((base / value).resolve())
            values[key] = value
        return values

    def probe_for(self, item: pytest.Item, module: Any = None, **overrides: Any) -> Any:
        """A ``Probe`` bound to the test's model, recording into the test's record list.

        Args:
            item: the test.
            module: an ``nn.Module`` from the ``vitattn_module`` fixture, or None.
            overrides: marker-style settings for ``vitattn.using(...)``.
        """
        from pytest_vitattn.probe import ProbeContext

        settings = self.settings_for(item, overrides)
        loaded = self.loaded_for(item, settings, module)
        context = ProbeContext(
            nodeid=item.nodeid,
            location=_location(item),
            records=item.stash.setdefault(RECORDS_KEY, []),
            report_hint=self._report_hint,
            baselines=self._baselines_for(item, settings),
            strict_masks=settings.strict_masks,
            using=lambda **more: self.probe_for(item, None, **more),
        )
        return self._probe(loaded, settings, context)

    def loaded_for(self, item: pytest.Item, settings: TestSettings, module: Any = None) -> Any:
        """The test's ``LoadedModel``: the ``vitattn_module`` fixture's module, or by spec."""
        if module is None:
            return self._load(settings)
        chosen = sorted(_MODEL_KEYS & set(self._marker_values(item)))
        if chosen:
            raise VitAttnError(
                f"the vitattn_module fixture gives this test its model, and its marker sets "
                f"{', '.join(chosen)} too; remove one of them"
            )
        return self.adopt(module, settings.device)

    def _load(self, settings: TestSettings) -> Any:
        from pytest_vitattn.threads import probe_threads, torch_threads

        # Building a model (weight init, loading) is the plugin's work, as a probe is.
        with torch_threads(probe_threads(settings.threads)):
            return self.models.get(settings.spec())

    def adopt(self, module: Any, device: str) -> Any:
        """A ``LoadedModel`` for a user's module, checked once per module object."""
        from pytest_vitattn.models import OWN_MODULE_PREFIX, ModelSpec, adopt_module

        cached = self._adopted.get(id(module))
        if cached is not None and cached[0] is module:
            return cached[1]
        spec = ModelSpec(f"{OWN_MODULE_PREFIX}{type(module).__name__}", "pretrained", device)
        loaded = adopt_module(module, spec)
        self._adopted[id(module)] = (module, loaded)  # the module is kept, so its id stays
        return loaded

    def shared_probe(self, **settings: Any) -> Any:
        """A probe for module- or session-scoped fixtures (the ``vitattn_probe`` factory).

        Settings come from the CLI, ini and ``settings`` (marker keywords), not from test
        markers; relative weights paths resolve against the rootdir. Records go to the test
        that is running when an image is probed.
        """
        values = self._merged(dict(self.run_settings), settings, Path(str(self.config.rootpath)))
        test_settings = TestSettings(**values)
        loaded = self._load(test_settings)
        probe = self._probe(loaded, test_settings, self.shared_context())
        probe.refresh_context = self.shared_context
        return probe

    def shared_context(self) -> Any:
        """Where a shared probe's records go now: the running test, if any."""
        from pytest_vitattn.probe import ProbeContext

        item = self.current_item
        if item is None:
            return ProbeContext(nodeid="<vitattn_probe>", report_hint=self._report_hint)
        return ProbeContext(
            nodeid=item.nodeid,
            location=_location(item),
            records=item.stash.setdefault(RECORDS_KEY, []),
            report_hint=self._report_hint,
        )

    def _probe(self, loaded: Any, settings: TestSettings, context: Any) -> Any:
        from pytest_vitattn.probe import Probe
        from pytest_vitattn.threads import probe_threads

        return Probe(
            loaded,
            preprocess=settings.preprocess,
            extraction=settings.extraction,
            rollout=settings.rollout,
            rollout_discard_ratio=settings.rollout_discard_ratio,
            query_index=_query_index(settings.token, loaded),
            context=context,
            threads=probe_threads(settings.threads),
            eager_rollout=self.report_shows_rollout,
        )

    @property
    def report_shows_rollout(self) -> bool:
        """Whether a report (ours or pytest-html's) shows every record's rollout column."""
        return self.report_path is not None or bool(self.config.getoption("htmlpath", None))

    def model_notes(self) -> list[str]:
        """What loading changed or inferred (e.g. num_classes from a checkpoint's head)."""
        return [note for loaded in self.models.loaded() for note in loaded.notes]

    def _baselines_for(self, item: pytest.Item, settings: TestSettings) -> Any:
        from pytest_vitattn.baseline import BaselineStore
        from pytest_vitattn.regression import TestBaselines

        store = BaselineStore.for_test(
            item.nodeid, Path(str(item.path)), settings.baseline_dir, self.config.rootpath
        )
        baselines = TestBaselines(
            store,
            self.baseline_policy,
            settings.tolerance,
            settings.baseline_model,
            defer_missing=True,
        )
        item.stash[BASELINES_KEY] = baselines
        return baselines

    def missing_baselines_message(self, item: pytest.Item) -> str | None:
        """Why the test fails for missing baselines (all of them, written in this run)."""
        baselines = item.stash.get(BASELINES_KEY, None)
        return baselines.finish() if baselines is not None else None

    def attach_records(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """Note what this phase decided; at teardown, move the test's records onto the
        teardown report as plain dicts with the test's outcome, each image's status, the
        deciding phase and pytest's failure text.

        Records made in setup, call or teardown all wait for teardown, the one phase that
        always runs, so an error in setup or teardown is never lost or shown as "passed".
        """
        verdicts = item.stash.setdefault(VERDICTS_KEY, [])
        verdicts.append(phase_verdict(report))
        if report.when != "teardown":
            return
        item.stash[VERDICTS_KEY] = []
        records = item.stash.get(RECORDS_KEY, [])
        if not records:
            return
        outcome, deciding = test_outcome(verdicts)
        failures = [
            {key: verdict[key] for key in ("phase", "outcome", "message", "where")}
            for verdict in verdicts
            if verdict["outcome"] in (*FAILING, "xfailed", "skipped")
        ]
        any_failed_check = any(
            check.passed is False for record in records for check in record.checks
        )
        payload = []
        for record in records:
            record.outcome = outcome
            payload.append(
                {
                    **record.to_dict(),
                    "status": image_status(outcome, record.checks, any_failed_check),
                    "phase": deciding["phase"] if deciding else "call",
                    "failures": failures,
                    "failed_at": deciding["where"] if deciding else None,
                }
            )
        setattr(report, RECORDS_ATTRIBUTE, payload)
        item.stash[RECORDS_KEY] = []

    def collect(self, report: pytest.TestReport) -> None:
        """Keep the records a report carries (reports from xdist workers arrive here too)."""
        self.records.extend(getattr(report, RECORDS_ATTRIBUTE, None) or [])
        self.tally.add(report)
        verdict = phase_verdict(report)
        if verdict["outcome"] in FAILING:
            path, line, _ = report.location
            self.failures.append(
                {
                    "nodeid": report.nodeid,
                    "location": [str(path), None if line is None else int(line) + 1],
                    **verdict,
                }
            )

    def write_report(self, exitstatus: int | None = None) -> None:
        """Write the HTML report and results.json, in the process that saw every record."""
        if self.report_path is None or self.is_xdist_worker:
            return
        from pytest_vitattn.report.run_info import RunInfo
        from pytest_vitattn.report.writer import write_report

        run = RunInfo.from_config(self.config, self.tally.as_dict(), exitstatus)
        run.failures = sorted(self.failures, key=_failure_key)
        try:
            self.report_files = write_report(self.records, self.report_path, run)
        except (OSError, VitAttnError) as error:
            self.report_error = f"could not write the report {self.report_path}: {error}"

    def report_lines(self) -> list[str]:
        """What the terminal summary says about the loaded models and the report."""
        notes = [f"vitattn: {note}" for note in self.model_notes()]
        if self.report_error:
            return [*notes, f"vitattn: {self.report_error}"]
        if self.report_files is None:
            return notes
        return [
            *notes,
            f"vitattn: attention report ({self.report_files.records} recorded images): "
            f"{self.report_files.html}",
            f"vitattn: numbers for CI: {self.report_files.json}",
        ]

    def _report_hint(self, record: Any) -> str:
        from pytest_vitattn.records import anchor

        if self.report_path is None:
            return "run pytest with --vitattn-report to see the heatmaps"
        # Relative to where pytest ran: the link still works in a CI artifact.
        shown = os.path.relpath(self.report_path, self.config.invocation_params.dir)
        return f"{Path(shown).as_posix()}#{anchor(record.record_id)}"


RECORDS_KEY = pytest.StashKey[list]()
VERDICTS_KEY = pytest.StashKey[list]()


def _failure_key(failure: dict[str, Any]) -> tuple[str, int, str, int]:
    # Source order, then phase order: the same list in serial and xdist runs.
    path, line = failure["location"]
    return str(path), int(line or 0), failure["nodeid"], PHASE_ORDER[failure["phase"]]


BASELINES_KEY = pytest.StashKey[Any]()
# Settings that choose the model; with the vitattn_module fixture they would be ambiguous.
_MODEL_KEYS = {"model", "weights", "model_kwargs", "model_factory"}


def _location(item: pytest.Item) -> tuple[str, int] | None:
    return (item.location[0], item.location[1] + 1) if item.location[1] is not None else None


def _run_settings(config: pytest.Config) -> dict[str, Any]:
    """CLI > ini > default for every setting; ini values are checked here."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        cli = config.getoption(f"vitattn_{setting.key}")
        ini = str(config.getini(setting.ini) or "").strip()
        if cli is not None:
            value = cli
            if setting.is_path and value not in ("pretrained", "random"):
                value = str((config.invocation_params.dir / value).resolve())
        elif ini:
            try:
                value = setting.parse(ini)
            except argparse.ArgumentTypeError as error:
                raise pytest.UsageError(f"ini option {setting.ini}: {error}") from None
            if setting.is_path and value not in ("pretrained", "random"):
                base = config.inipath.parent if config.inipath else config.rootpath
                value = str((base / value).resolve())
        else:
            value = (
                setting.parse(setting.default)
                if isinstance(setting.default, str)
                else setting.default
            )
        values[setting.key] = value
    return values


def _baseline_policy(config: pytest.Config, missing: str) -> BaselinePolicy:
    try:
        return BaselinePolicy.resolve(
            bool(config.getoption("vitattn_update_baselines")), missing, os.environ
        )
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


def _report_path(config: pytest.Config) -> Path | None:
    value = config.getoption("vitattn_report")
    if value is None:
        return None
    path = (config.invocation_params.dir / value).resolve()
    if not hasattr(config, "workerinput"):  # only the xdist controller (or a plain run) writes
        try:
            check_writable(path)
        except ReportPathError as error:
            raise pytest.UsageError(f"--vitattn-report: {error}") from None
    return path


def _query_index(token: str | int, loaded: Any) -> int:
    # The anatomy knows the model's queries: CLS, DeiT's distillation token, registers, the
    # attention-pool query; it refuses models without a CLS-like query with the reason.
    return loaded.anatomy.resolve_query(token, loaded.spec.name)
