"""Write the report and its JSON twin atomically, and check early that they can be written.

Stdlib only at import time: the session calls ``check_writable`` while pytest configures,
before any test runs; the heavy modules are imported by ``write_report``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_vitattn.errors import VitAttnError
from pytest_vitattn.report.run_info import RunInfo

JSON_NAME = "results.json"
JSON_SCHEMA = 1


class ReportPathError(VitAttnError):
    """The report cannot be written where it was asked for."""


@dataclass(frozen=True)
class ReportFiles:
    """Where a report went: the HTML page and ``results.json`` beside it."""

    html: Path
    json: Path
    records: int


def json_path(html_path: Path) -> Path:
    return html_path.parent / JSON_NAME


def check_writable(path: Path) -> None:
    """Create the report's folder and make sure files can be created in it.

    Raises:
        ReportPathError: with one sentence saying what is wrong with ``path``.
    """
    if path.is_dir():
        raise ReportPathError(
            f"{path} is a folder; give a file name, e.g. --vitattn-report={path / 'report.html'}"
        )
    existing = next(folder for folder in path.parents if folder.exists())
    if not existing.is_dir():
        raise ReportPathError(f"cannot create the folder {path.parent}: {existing} is a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ReportPathError(
            f"cannot create the folder {path.parent} for the report: {error.strerror or error}"
        ) from None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".vitattn-check-"):
            pass
    except OSError as error:
        raise ReportPathError(
            f"cannot write the report in {path.parent}: {error.strerror or error}"
        ) from None


def write_report(records: list[dict[str, Any]], path: Path, run: RunInfo) -> ReportFiles:
    """Render ``records`` to ``path`` and write ``results.json`` beside it, each atomically.

    Args:
        records: record dicts (``AttentionRecord.to_dict()`` with "outcome"), any order.
        path: the HTML file; its folder is created if needed.
        run: facts about the run for the header and the JSON summary.
    """
    from pytest_vitattn.report.html import render_page
    from pytest_vitattn.report.views import ReportView, sort_records

    ordered = sort_records(records)
    # Both are made before either is written: a failure leaves the previous pair intact.
    document = json.dumps(results_document(ordered, run), indent=1) + "\n"
    page = render_page(ReportView.build(ordered, run, path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json_path(path)
    write_atomically(results, document)
    write_atomically(path, page)
    return ReportFiles(path, results, len(ordered))


def results_document(records: list[dict[str, Any]], run: RunInfo) -> dict[str, Any]:
    """The JSON twin: the run summary and every record's numbers, without pixels.

    ``summary.outcomes`` counts tests as pytest does, ``summary.failures`` lists each failing
    report with pytest's message, and ``summary.images`` counts records by their own status
    (``verdicts.image_status``): "failed" only where the image's own evidence failed.
    """
    statuses: dict[str, int] = {}
    for record in records:
        status = str(record.get("status") or record.get("outcome"))
        statuses[status] = statuses.get(status, 0) + 1
    failed = sum(statuses.get(name, 0) for name in ("failed", "error", "xpassed"))
    return {
        "schema": JSON_SCHEMA,
        "summary": {
            **run.to_dict(),
            "records": len(records),
            "failed_records": failed,
            "images": statuses,
        },
        "records": [without_pixels(record) for record in records],
    }


def without_pixels(record: dict[str, Any]) -> dict[str, Any]:
    """The record as ``to_dict(include_pixels=False)`` gives it: no image or mask pixels."""
    masks = [{**mask, "pixels": None} for mask in record.get("masks") or []]
    return {**record, "image": None, "masks": masks}


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``, so
    readers see the old file or the new one, never half of one."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with open(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file 0600; a report is for sharing.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
