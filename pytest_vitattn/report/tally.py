"""Counts of test outcomes, from the reports pytest (or the xdist controller) logs.

Stdlib only, so the session can count without importing the report's heavy modules.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

# Order in which outcomes are listed in the summary: the ones a reviewer acts on first.
OUTCOME_ORDER = ("failed", "error", "xpassed", "xfailed", "skipped", "passed")


class OutcomeTally:
    """One outcome per test phase that decides it, as pytest's terminal summary counts."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, report: Any) -> None:
        """Count a ``pytest.TestReport`` (``when`` is "setup", "call" or "teardown")."""
        outcome = outcome_of(report)
        if outcome is not None:
            self.counts[outcome] += 1

    def as_dict(self) -> dict[str, int]:
        """Counts in ``OUTCOME_ORDER`` first, then any other outcome, zero counts left out."""
        known = [name for name in OUTCOME_ORDER if self.counts[name]]
        others = sorted(name for name in self.counts if name not in OUTCOME_ORDER)
        return {name: self.counts[name] for name in known + others}


def outcome_of(report: Any) -> str | None:
    """The outcome a report decides for its test, or None when it decides nothing."""
    if hasattr(report, "wasxfail"):
        if report.skipped:
            return "xfailed"
        return "xpassed" if report.when == "call" else None
    if report.when == "call":
        return str(report.outcome)
    if report.failed:
        return "error"
    if report.skipped:
        return "skipped"
    return None
