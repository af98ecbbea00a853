"""Installed versions of Python and of named packages, for reports and baseline metadata."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """{"python": "3.x.y", name: version or "not installed", ...} in the order given."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
