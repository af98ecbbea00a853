"""Bounds of a check (``at_least``, ``at_most`` or both), and the dangers of a passing one.

A check against a mask can pass for the wrong reason: a mask that covers most of the image
(often an inverted mask: 0 = object) gets most of any map's attention, and a value below
chance passes a low ``at_least`` bound while saying the map avoids the object. ``dangers``
names these; the check warns with ``MaskWarning``, or fails under ``vitattn_strict_masks``.
No torch, no pytest here.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

# A mask covering more than this share of the image is flagged.
LARGE_MASK = 0.5


class MaskWarning(UserWarning):
    """A mask check passed, but its mask or value suggests it means nothing."""


@dataclass(frozen=True)
class Bounds:
    """Inclusive bounds on a metric in [0, 1]; at least one is set.

    Attributes:
        at_least: lower bound, or None.
        at_most: upper bound, or None.
    """

    at_least: float | None
    at_most: float | None

    @classmethod
    def of(cls, check: str, at_least: Any, at_most: Any) -> Bounds:
        """Checked bounds; ``check`` names the call in messages, e.g. "mass_in"."""
        if at_least is None and at_most is None:
            raise ValueError(f"{check}() needs at_least=, at_most=, or both (a range)")
        for name, bound in (("at_least", at_least), ("at_most", at_most)):
            if bound is not None:
                check_bound(name, bound)
        if at_least is not None and at_most is not None and at_least > at_most:
            raise ValueError(
                f"{check}(at_least={at_least!r}, at_most={at_most!r}) is an empty range"
            )
        return cls(
            None if at_least is None else float(at_least),
            None if at_most is None else float(at_most),
        )

    def verdict(self, value: float) -> tuple[bool, str, float]:
        """(holds, op, threshold): the bound that failed, else the lower one (or the only one)."""
        too_low = self.at_least is not None and value < self.at_least
        too_high = self.at_most is not None and value > self.at_most
        if too_high or self.at_least is None:
            assert self.at_most is not None
            return not (too_low or too_high), "<=", self.at_most
        return not (too_low or too_high), ">=", self.at_least

    def describe(self) -> str:
        """ "at least 0.2", "at most 0.1" or "in [0.2, 0.5]"."""
        if self.at_least is not None and self.at_most is not None:
            return f"in [{self.at_least:.3f}, {self.at_most:.3f}]"
        if self.at_least is not None:
            return f">= {self.at_least:.3f}"
        return f"<= {self.at_most:.3f}"

    def details(self) -> dict[str, float]:
        """The bounds that were given, for a check's details."""
        given = {"at_least": self.at_least, "at_most": self.at_most}
        return {name: bound for name, bound in given.items() if bound is not None}


def dangers(value: float, chance: float, mask_share: float, bounds: Bounds) -> list[str]:
    """Why a passing check may mean nothing, one sentence each (empty when nothing is wrong).

    Args:
        value: the measured value.
        chance: what a map that ignores the image would score (see ``metrics``).
        mask_share: the mask's share of the model input, in [0, 1].
        bounds: the check's bounds.
    """
    found = []
    if mask_share > LARGE_MASK:
        found.append(
            f"the mask covers {mask_share:.0%} of the image (more than half): any map puts "
            "most of its attention there; is the mask inverted (0 = object)?"
        )
    if bounds.at_least is not None and value < chance:
        found.append(
            f"the value {value:.3f} passes at_least={bounds.at_least:.3f} but is below chance "
            f"({chance:.3f}, {value / chance:.2f}x): the map looks at the mask LESS than a "
            "uniform map would"
        )
    return found


def warn(message: str) -> None:
    """Issue a ``MaskWarning`` attributed to the first caller outside this package."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(MaskWarning(message), stacklevel=level)


def check_bound(name: str, value: Any) -> None:
    """A bound must be a real number in [0, 1] (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0 <= value <= 1:
        raise ValueError(f"{name}={value!r} must be in [0, 1]")
