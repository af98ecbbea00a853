"""What each test phase decided, and what that means for each image a test recorded.

Stdlib only: the session calls these in every phase's ``pytest_runtest_makereport`` (on the
xdist workers too), so serial and distributed runs give the same records.

One counting rule runs through the report: pytest's reports are counted as pytest counts
them (a test that fails and then errors in teardown is "1 failed, 1 error"), and every such
failing report is one entry of the failures list; images are counted separately, each with
the status of its own evidence (``image_status``).
"""

from __future__ import annotations

from typing import Any

from pytest_vitattn.report.tally import outcome_of

# Statuses a report counts as a failure a reviewer must act on.
FAILING = ("failed", "error", "xpassed")
# The longest failure message kept per phase (assertion explanations can be long).
MESSAGE_LIMIT = 4000
PHASE_ORDER = {"setup": 0, "call": 1, "teardown": 2}


def phase_verdict(report: Any) -> dict[str, Any]:
    """What one ``pytest.TestReport`` says, as plain data.

    Returns:
        {"phase": "setup" | "call" | "teardown", "outcome": the outcome this report decides
        ("failed", "error", "skipped", "xfailed", "xpassed", "passed") or None when it
        decides nothing (a passing setup or teardown), "message": pytest's short text of the
        failure, skip or xfail (the crash message, with assertion rewriting) or "",
        "where": [path, line] of the failing line (user code, ``__tracebackhide__``
        honoured) or None}.
    """
    return {
        "phase": str(report.when),
        "outcome": outcome_of(report),
        "message": _message(report),
        "where": _where(report),
    }


def _message(report: Any) -> str:
    longrepr = report.longrepr
    text = ""
    if longrepr is None:
        if hasattr(report, "wasxfail") and report.passed:
            reason = report.wasxfail
            text = f"unexpectedly passed (xfail reason: {reason})" if reason else ""
    elif isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, line, reason)
        text = str(longrepr[2])
    else:
        crash = getattr(longrepr, "reprcrash", None)
        text = str(crash.message) if crash is not None else str(report.longreprtext)
    if hasattr(report, "wasxfail") and report.skipped and report.wasxfail:
        text = f"{text}\n(xfail reason: {report.wasxfail})" if text else str(report.wasxfail)
    text = text.strip()
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _where(report: Any) -> list[str | int] | None:
    # pytest's crash location honours __tracebackhide__: it is the user's failing line.
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is None or not (report.failed or hasattr(report, "wasxfail")):
        return None
    return [str(crash.path), int(crash.lineno)]


def test_outcome(verdicts: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
    """The test's outcome from its phases' verdicts, and the verdict that decided it.

    An error in setup decides; else the call's outcome, unless it passed and teardown
    errored (then "error"); a setup skip (or xfail) decides when there was no call.
    """
    by_phase = {verdict["phase"]: verdict for verdict in verdicts}
    setup, call, teardown = (by_phase.get(name) for name in ("setup", "call", "teardown"))
    if setup is not None and setup["outcome"] is not None:
        return setup["outcome"], setup
    if call is not None and call["outcome"] in FAILING:
        return call["outcome"], call
    if teardown is not None and teardown["outcome"] is not None:
        return teardown["outcome"], teardown
    if call is not None and call["outcome"] is not None:
        return call["outcome"], call
    return "passed", None


def image_status(outcome: str, record_checks: list[Any], test_has_failed_check: bool) -> str:
    """The status of one image of a test.

    Args:
        outcome: the test's outcome (``test_outcome``).
        record_checks: this image's ``CheckResult`` objects.
        test_has_failed_check: whether any image of the test has a failed check.

    Returns:
        "failed" where a check on this image failed, or where the test failed in a way no
        check saw (a plain ``assert``, an exception): then the failure cannot be narrowed to
        one image and every image of the test shows it. When another image's check failed:
        "passed" if a check on this image passed, else "not-judged". Otherwise the
        test's outcome ("error" for setup and teardown errors, "xfailed", ...).
    """
    if outcome != "failed":
        return outcome
    if any(check.passed is False for check in record_checks):
        return "failed"
    if not test_has_failed_check:
        return "failed"
    return "passed" if any(check.passed for check in record_checks) else "not-judged"
