"""What a run does with baselines: update them all, and what a missing one means.

Resolved once per run from ``--vitattn-update-baselines``, ``--vitattn-missing-baselines``
(ini ``vitattn_missing_baselines``) and the ``CI`` environment variable. Pure Python, cheap
to import: the plugin resolves it when pytest starts, so a contradiction stops the run early.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MISSING_MODES = ("auto", "write", "fail")
UPDATE_FLAG = "--vitattn-update-baselines"
MISSING_FLAG = "--vitattn-missing-baselines"

_NOT_CI = ("", "0", "false", "no")


@dataclass(frozen=True)
class BaselinePolicy:
    """What this run does with baselines.

    Attributes:
        update: write every checked baseline, replacing what is there, and pass.
        missing: for a missing baseline: "write-and-fail" (write it, fail the test so it gets
            reviewed), "write" (write it and pass) or "fail" (fail, write nothing).
        reason: why ``missing`` is what it is, for failure messages.
    """

    update: bool = False
    missing: str = "write-and-fail"
    reason: str = "the default outside CI"

    @classmethod
    def resolve(cls, update: bool, missing: str, environ: Mapping[str, str]) -> BaselinePolicy:
        """The policy for ``--vitattn-update-baselines`` and ``--vitattn-missing-baselines``.

        ``missing="auto"`` fails when the ``CI`` environment variable is set (to anything but
        "", "0", "false" or "no"), and otherwise writes the baseline and fails the test.

        Raises:
            ValueError: the two options contradict each other.
        """
        if missing not in MISSING_MODES:
            raise ValueError(f"missing baselines mode {missing!r} is not one of {MISSING_MODES}")
        if update and missing == "fail":
            raise ValueError(
                f"{UPDATE_FLAG} writes every baseline, but missing baselines are set to fail "
                f"({MISSING_FLAG}=fail or ini vitattn_missing_baselines): drop one of the two"
            )
        if missing == "write":
            return cls(update, "write", f"{MISSING_FLAG}=write")
        if missing == "fail":
            return cls(update, "fail", f"{MISSING_FLAG}=fail")
        if environ.get("CI", "").strip().lower() not in _NOT_CI:
            return cls(update, "fail", "the CI environment variable is set")
        return cls(update, "write-and-fail", "the default outside CI")
