"""How far attention maps may drift from their baseline: ``Tolerance``.

A tolerance bounds per-map drift measures (see ``pytest_vitattn.drift``); a map passes when
every bound that is set holds. A plain number means the largest Jensen-Shannon divergence
allowed, so ``tolerance=0.05`` reads "each map may move about 10% of its attention". Pure
Python: the plugin imports this when it parses options, so it must stay cheap.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

# Jensen-Shannon divergence (bits) of about 4% of the attention moved to patches that had
# none: far above the float16 rounding of a stored baseline (< 1e-6), well below a real move.
DEFAULT_MAX_JS = 0.02

# Field -> (range of the bound, "max" or "min": whether the measure may not exceed or may not
# fall below it). JS and the absolute difference are distances; correlation and IoU are
# similarities.
_BOUNDS: dict[str, tuple[tuple[float, float], str]] = {
    "max_js": ((0.0, 1.0), "max"),
    "min_correlation": ((-1.0, 1.0), "min"),
    "min_top_k_iou": ((0.0, 1.0), "min"),
    "max_abs_diff": ((0.0, 1.0), "max"),
}

_SYNTAX = "a number (the largest JS divergence) or e.g. 'max_js=0.05,min_correlation=0.9'"


@dataclass(frozen=True)
class Tolerance:
    """Per-map bounds on drift from the baseline; None leaves a measure unchecked.

    Attributes:
        max_js: largest Jensen-Shannon divergence (base 2, in [0, 1]) of a map from its
            baseline. Roughly twice this share of attention may move to new patches.
        min_correlation: smallest Pearson correlation of a map with its baseline, in [-1, 1].
        min_top_k_iou: smallest IoU of the most attended 10% of patches, in [0, 1].
        max_abs_diff: largest change of any one patch's share of attention, in [0, 1].
    """

    max_js: float | None = DEFAULT_MAX_JS
    min_correlation: float | None = None
    min_top_k_iou: float | None = None
    max_abs_diff: float | None = None

    def __post_init__(self) -> None:
        for name, ((low, high), _) in _BOUNDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"tolerance {name} must be a number, got {value!r}")
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"tolerance {name}={value!r} must be in [{low:g}, {high:g}]")
            object.__setattr__(self, name, float(value))
        if all(getattr(self, name) is None for name in _BOUNDS):
            raise ValueError(f"a tolerance needs at least one bound: {', '.join(_BOUNDS)}")

    @classmethod
    def of(cls, value: Any) -> Tolerance:
        """A ``Tolerance`` from a number (max JS), a mapping of bounds, a string, or itself.

        Raises:
            ValueError: the value names an unknown bound or is out of range.
        """
        if isinstance(value, Tolerance):
            return value
        if isinstance(value, bool):
            raise ValueError(f"tolerance must be {_SYNTAX}, got {value!r}")
        if isinstance(value, (int, float)):
            return cls(max_js=value)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(_BOUNDS))
            if unknown:
                raise ValueError(
                    f"unknown tolerance bound(s) {', '.join(map(repr, unknown))}; "
                    f"use {', '.join(_BOUNDS)}"
                )
            # Only the bounds written are checked: {"min_correlation": 0.9} drops max_js.
            return cls(**{name: value.get(name) for name in _BOUNDS})
        if isinstance(value, str):
            return _parse_text(value)
        raise ValueError(f"tolerance must be {_SYNTAX}, got {type(value).__name__}")

    def bounds(self) -> dict[str, float]:
        """The bounds that are set, by field name."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if value is not None}

    def describe(self) -> str:
        """E.g. ``"js <= 0.02, correlation >= 0.9"``."""
        return ", ".join(
            f"{name[4:]} {'<=' if _BOUNDS[name][1] == 'max' else '>='} {value:g}"
            for name, value in self.bounds().items()
        )


def bound_kind(name: str) -> str:
    """Whether bound ``name`` is an upper ("max") or a lower ("min") limit."""
    return _BOUNDS[name][1]


def parse_tolerance(text: Any) -> Tolerance:
    """Option parser for ``--vitattn-tolerance`` and the ini/marker ``tolerance``.

    Raises:
        argparse.ArgumentTypeError: with what is wrong and the accepted syntax.
    """
    try:
        return Tolerance.of(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parse_text(text: str) -> Tolerance:
    text = text.strip()
    if _is_number(text):
        return Tolerance(max_js=float(text))
    if "=" not in text:
        raise ValueError(f"tolerance {text!r} is not {_SYNTAX}")
    bounds: dict[str, float] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, sep, number = (piece.strip() for piece in part.partition("="))
        if not sep or not _is_number(number):
            raise ValueError(f"tolerance part {part!r} is not NAME=NUMBER (in {text!r})")
        bounds[name] = float(number)
    return Tolerance.of(bounds)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
