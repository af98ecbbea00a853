"""What the report's header says about the run: when, how, with which versions.

Stdlib only: versions come from package metadata, so nothing heavy is imported for them.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pytest_vitattn.versions import package_versions

_VERSIONED = ("pytest-vitattn", "torch", "timm", "pytest")


@dataclass
class RunInfo:
    """Facts about one pytest run.

    Attributes:
        command: the pytest command line as typed (arguments shell-quoted).
        date: local date and time the report was written, ISO 8601.
        rootdir: pytest's rootdir; record locations are relative to it.
        versions: package name -> version ("python" included), "not installed" if missing.
        outcomes: test outcome -> count, e.g. {"failed": 1, "passed": 3}.
        exitstatus: pytest's exit status, or None when the run had not finished.
        failures: one dict per failing pytest report (failed, error, xpassed), as pytest
            counts them: {"nodeid", "location": [path, line], "phase", "outcome",
            "message", "where"}; see ``verdicts.phase_verdict``.
    """

    command: str
    date: str
    rootdir: str
    versions: dict[str, str]
    outcomes: dict[str, int] = field(default_factory=dict)
    exitstatus: int | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_config(
        cls, config: Any, outcomes: dict[str, int], exitstatus: int | None = None
    ) -> RunInfo:
        """Reads the command line and rootdir from a ``pytest.Config``."""
        return cls(
            command=shlex.join(["pytest", *config.invocation_params.args]),
            date=datetime.now().astimezone().isoformat(timespec="seconds"),
            rootdir=str(config.rootpath),
            versions=installed_versions(),
            outcomes=dict(outcomes),
            exitstatus=None if exitstatus is None else int(exitstatus),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def root(self) -> Path:
        return Path(self.rootdir)


def installed_versions() -> dict[str, str]:
    """Versions of the packages that decide what the maps look like, and of Python."""
    return package_versions(_VERSIONED)
