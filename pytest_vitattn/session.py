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

    def spec(self) -> ModelSpec:
        return ModelSpec(self.model, self.weights, self.device)


class VitattnSession:
    """Settings, models and records of one pytest run (one per xdist worker, too)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.run_settings = _run_settings(config)
        self.models = ModelCache()
        self.records: list[dict[str, Any]] = []
        self.report_path = _report_path(config)
        self.tally = OutcomeTally()
        self.report_files: ReportFiles | None = None
        self.report_error: str | None = None
        self.baseline_policy = _baseline_policy(config, self.run_settings["missing_baselines"])

    @property
    def is_xdist_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def settings_for(self, item: pytest.Item) -> TestSettings:
        """Merge the test's ``vitattn`` markers (closest wins) over the run settings."""
        values = dict(self.run_settings)
        marker_values: dict[str, Any] = {}
        for marker in reversed(list(item.iter_markers("vitattn"))):
            if marker.args:
                raise VitAttnError(
                    "@pytest.mark.vitattn takes keyword arguments only, e.g. "
                    "@pytest.mark.vitattn(model='deit_tiny_patch16_224')"
                )
            marker_values.update(marker.kwargs)
        for key, raw in marker_values.items():
            try:
                value = parse_marker_value(key, raw)
            except ValueError as error:
                raise VitAttnError(str(error)) from None
            if SETTINGS_BY_KEY[key].is_path and value not in ("pretrained", "random"):
                value = str((Path(str(item.path)).parent / value).resolve())
            values[key] = value
        return TestSettings(**values)

    def probe_for(self, item: pytest.Item) -> Any:
        """A ``Probe`` bound to the test's model, recording into the test's record list."""
        from pytest_vitattn.probe import Probe, ProbeContext

        settings = self.settings_for(item)
        loaded = self.models.get(settings.spec())
        context = ProbeContext(
            nodeid=item.nodeid,
            location=(item.location[0], item.location[1] + 1)
            if item.location[1] is not None
            else None,
            records=item.stash.setdefault(RECORDS_KEY, []),
            report_hint=self._report_hint,
            baselines=self._baselines_for(item, settings),
        )
        return Probe(
            loaded,
            preprocess=settings.preprocess,
            extraction=settings.extraction,
            rollout=settings.rollout,
            rollout_discard_ratio=settings.rollout_discard_ratio,
            query_index=_query_index(settings.token, loaded),
            context=context,
        )

    def _baselines_for(self, item: pytest.Item, settings: TestSettings) -> Any:
        from pytest_vitattn.baseline import BaselineStore
        from pytest_vitattn.regression import TestBaselines

        store = BaselineStore.for_test(
            item.nodeid, Path(str(item.path)), settings.baseline_dir, self.config.rootpath
        )
        return TestBaselines(
            store, self.baseline_policy, settings.tolerance, settings.baseline_model
        )

    def attach_records(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """Move the test's records onto its report, as plain dicts with the outcome."""
        records = item.stash.get(RECORDS_KEY, [])
        if not records:
            return
        outcome = _outcome(report)
        payload = []
        failed_at = _failed_at(report)
        for record in records:
            record.outcome = outcome
            payload.append({**record.to_dict(), "failed_at": failed_at})
        setattr(report, RECORDS_ATTRIBUTE, payload)
        item.stash[RECORDS_KEY] = []

    def collect(self, report: pytest.TestReport) -> None:
        """Keep the records a report carries (reports from xdist workers arrive here too)."""
        self.records.extend(getattr(report, RECORDS_ATTRIBUTE, None) or [])
        self.tally.add(report)

    def write_report(self, exitstatus: int | None = None) -> None:
        """Write the HTML report and results.json, in the process that saw every record."""
        if self.report_path is None or self.is_xdist_worker:
            return
        from pytest_vitattn.report.run_info import RunInfo
        from pytest_vitattn.report.writer import write_report

        run = RunInfo.from_config(self.config, self.tally.as_dict(), exitstatus)
        try:
            self.report_files = write_report(self.records, self.report_path, run)
        except (OSError, VitAttnError) as error:
            self.report_error = f"could not write the report {self.report_path}: {error}"

    def report_lines(self) -> list[str]:
        """What the terminal summary says about the report."""
        if self.report_error:
            return [f"vitattn: {self.report_error}"]
        if self.report_files is None:
            return []
        return [
            f"vitattn: attention report ({self.report_files.records} recorded images): "
            f"{self.report_files.html}",
            f"vitattn: numbers for CI: {self.report_files.json}",
        ]

    def _report_hint(self, record: Any) -> str:
        from pytest_vitattn.records import anchor

        if self.report_path is None:
            return "run pytest with --vitattn-report to see the heatmaps"
        return f"{self.report_path}#{anchor(record.record_id)}"


RECORDS_KEY = pytest.StashKey[list]()


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


def _failed_at(report: pytest.TestReport) -> list[str | int] | None:
    # pytest's crash location honours __tracebackhide__: it is the user's failing line.
    crash = getattr(report.longrepr, "reprcrash", None) if report.failed else None
    return [str(crash.path), int(crash.lineno)] if crash is not None else None


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    return str(report.outcome)
