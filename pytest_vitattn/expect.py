"""Checks on an attention map whose failures explain themselves.

Each check computes its metric, adds a ``CheckResult`` to the image's record (so the
report shows passing checks too), and raises ``AssertionError`` with the value, the
threshold, the chance level, the selection, the model and where the heatmap is.
``__tracebackhide__`` makes pytest point at the user's line, not at this module.
"""

from __future__ import annotations

from typing import Any

from pytest_vitattn import metrics, sanity
from pytest_vitattn.attention import AttentionMap, ResolvedMask
from pytest_vitattn.bounds import Bounds, check_bound, dangers, warn
from pytest_vitattn.errors import BaselineError, user_facing
from pytest_vitattn.records import CheckResult

_TITLES = {
    "mass_in_mask": "CLS attention mass in mask",
    "pointing_game": "pointing game",
    "top_k_iou": "top-k IoU with mask",
    "concentration": "attention concentration (1 - normalised entropy)",
    "depends_on_weights": "share of attention moved by re-initialising the top blocks",
}


_MASK_AREA = object()  # _conclude's default chance: the mask's area


class Expectation:
    """Checks on one ``AttentionMap``; each returns the measured value when it holds."""

    def __init__(self, attention_map: AttentionMap) -> None:
        self.map = attention_map

    @user_facing
    def mass_in(
        self,
        mask: Any,
        at_least: float | None = None,
        at_most: float | None = None,
        *,
        label: Any = None,
    ) -> float:
        """The share of attention on ``mask`` is within the bounds (both inclusive).

        ``at_most=`` states "not on the marker"; both bounds make a range. ``label=`` picks
        the object's id(s) in a label map or palette PNG.
        """
        __tracebackhide__ = True
        bounds = Bounds.of("mass_in", at_least, at_most)
        resolved = self.map.resolve_mask(mask, label)
        value = metrics.mass_in_mask(self.map.grid, resolved.grid)
        chance = metrics.chance_level(resolved.grid)
        return self._judge("mass_in_mask", value, bounds, resolved, chance)

    @user_facing
    def pointing_game(self, mask: Any, *, label: Any = None) -> bool:
        """The most attended patch touches ``mask`` (``label=``: ids in a label map)."""
        __tracebackhide__ = True
        resolved = self.map.resolve_mask(mask, label)
        hit = metrics.pointing_game(self.map.grid, resolved.grid)
        notes = self._dangers(float(hit), 0.0, resolved, None) if hit else []
        headline = details = None
        if notes:
            headline = "pointing game hit, but vitattn_strict_masks fails it:\n" + "\n".join(
                f"  - {note}" for note in notes
            )
            details = {"strict_masks": notes}
        holds = hit and not notes
        self._conclude(
            "pointing_game",
            float(hit),
            holds,
            "hit",
            None,
            resolved,
            details=details,
            headline=headline,
        )
        return hit

    @user_facing
    def top_k_iou(
        self,
        mask: Any,
        at_least: float | None = None,
        k: int | float | None = None,
        *,
        at_most: float | None = None,
        label: Any = None,
    ) -> float:
        """The ``k`` most attended patches overlap the mask's patches with IoU in the bounds.

        Args:
            mask: the object's mask; ``label=`` picks its id(s) in a label map.
            at_least, at_most: inclusive bounds on the IoU (one or both).
            k: None (as many patches as the mask's), an int >= 1 (a count of patches), or a
                float in (0, 1) (a fraction of the patches); ``k=1.0`` and bools are refused.

        A mask with no patch at least half covered has no top-k target: the check fails and
        says so.
        """
        __tracebackhide__ = True
        bounds = Bounds.of("top_k_iou", at_least, at_most)
        resolved = self.map.resolve_mask(mask, label)
        try:
            value = metrics.top_k_iou(self.map.grid, resolved.grid, k)
        except metrics.UndefinedMetricError as error:
            undefined = str(error)
        else:
            undefined = None
        if undefined is not None:  # outside the except: no chained traceback
            return self._undefined("top_k_iou", undefined, bounds, resolved)
        chance = metrics.top_k_chance(resolved.grid, k)
        return self._judge("top_k_iou", value, bounds, resolved, chance)

    @user_facing
    def concentration(self, at_least: float | None = None, at_most: float | None = None) -> float:
        """The map's concentration lies within the given bounds (both inclusive)."""
        __tracebackhide__ = True
        if at_least is None and at_most is None:
            raise ValueError("concentration() needs at_least=, at_most=, or both")
        for name, bound in (("at_least", at_least), ("at_most", at_most)):
            if bound is not None:
                _check_bound(name, bound)
        value = metrics.concentration(self.map.grid)
        too_low = at_least is not None and value < at_least
        too_high = at_most is not None and value > at_most
        # Report the bound that failed; when both hold, the lower one (or the only one).
        op, threshold = ("<=", at_most) if too_high or at_least is None else (">=", at_least)
        holds = not (too_low or too_high)
        return self._conclude("concentration", value, holds, op, threshold, None)

    @user_facing
    def depends_on_weights(
        self, at_least: float = sanity.DEFAULT_MIN_MOVED, blocks: int = sanity.DEFAULT_BLOCKS
    ) -> float:
        """Re-initialising ``blocks`` blocks up to this map's layer (and all above) moves at
        least ``at_least`` of its attention: the map shows what the model learnt, not only
        the input (cascading randomisation, Adebayo et al. 2018; see ``sanity``).

        Returns:
            The share of attention that moved (total variation distance, 0 to 1).
        """
        __tracebackhide__ = True
        _check_bound("at_least", at_least)
        result = sanity.randomise(self.map, blocks)
        holds = result.moved >= at_least
        message = ""
        if not holds:
            headline, rest = self._failure_message(
                "depends_on_weights", result.moved, ">=", at_least, None, None
            ).split("\n", 1)
            message = "\n".join(
                [
                    headline,
                    f"  randomised: {result.randomisation.label}; rank correlation with the "
                    f"trained map {result.rank_correlation:.3f}",
                    "  a map that barely moves when the weights are replaced shows the input, "
                    "not what the model learnt",
                    rest,
                ]
            )
        self.map.parent.record.checks.append(
            CheckResult(
                name="depends_on_weights",
                value=float(result.moved),
                passed=bool(holds),
                op=">=",
                threshold=at_least,
                chance=None,
                selection=self.map.label,
                message=message,
                details={
                    "randomised": result.randomisation.label,
                    "rank_correlation": round(result.rank_correlation, 6),
                },
            )
        )
        if not holds:
            raise AssertionError(message)
        return result.moved

    @user_facing
    def matches_baseline(self, tolerance: Any = None) -> Any:
        """The map matches the same map of this test's stored baseline within ``tolerance``.

        A head is compared with the baseline's head, fused heads with the baseline's heads
        fused the same way. See ``CLSAttention.matches_baseline`` for every head at once.

        Args:
            tolerance: the largest Jensen-Shannon divergence, or bounds as a dict, string or
                ``Tolerance``; default: marker > CLI > ini > 0.02.

        Returns:
            The ``drift.Drift`` measures of the map (arrays of shape ()).
        """
        __tracebackhide__ = True
        if self.map.take is None:
            raise BaselineError(
                f"{self.map.label} cannot be compared with a baseline: baselines hold the "
                "CLS maps of each layer and head, from which rollout cannot be rebuilt; "
                "check a layer instead, e.g. attn.expect(layer=-1).matches_baseline()"
            )
        parent = self.map.parent
        return parent.baselines().check_map(
            parent.record, self.map.take, self.map.label, tolerance, parent.report_hint()
        )

    def _judge(
        self, name: str, value: float, bounds: Bounds, mask: ResolvedMask, chance: float
    ) -> float:
        """Conclude a bounded mask check; a pass that may mean nothing warns, or fails when
        strict."""
        __tracebackhide__ = True
        holds, op, threshold = bounds.verdict(value)
        notes = self._dangers(value, chance, mask, bounds) if holds else []
        headline = None
        if notes:
            holds = False
            headline = (
                f"{_TITLES[name]} passed its bound ({value:.3f} {op} {threshold:.3f}), but "
                "vitattn_strict_masks fails it:\n" + "\n".join(f"  - {note}" for note in notes)
            )
        details: dict[str, Any] = bounds.details()
        if notes:
            details["strict_masks"] = notes
        return self._conclude(
            name, value, holds, op, threshold, mask, chance, details=details, headline=headline
        )

    def _dangers(
        self, value: float, chance: float, mask: ResolvedMask, bounds: Bounds | None
    ) -> list[str]:
        """The dangers of a passing check: warned about and [] returned, or returned (to fail
        the check) under strict_masks."""
        found = dangers(value, chance, metrics.chance_level(mask.grid), bounds or _NO_BOUNDS)
        if found and not self.map.parent.strict_masks:
            where = f"{self.map.parent.image_label}, mask {mask.label}, {self.map.label}"
            for danger in found:
                warn(f"vitattn: {danger} ({where}; {_STRICT_HINT})")
            return []
        return found

    def _undefined(self, name: str, reason: str, bounds: Bounds, mask: ResolvedMask) -> float:
        """A check whose metric has no target fails (not errors), saying why."""
        __tracebackhide__ = True
        op, threshold = (
            (">=", bounds.at_least)
            if bounds.at_least is not None
            else (
                "<=",
                bounds.at_most,
            )
        )
        headline = f"{_TITLES[name]} is undefined for this mask: {reason}"
        details = {**bounds.details(), "undefined": reason}
        return self._conclude(
            name, 0.0, False, op, threshold, mask, None, details=details, headline=headline
        )

    def _conclude(
        self,
        name: str,
        value: float,
        holds: bool,
        op: str,
        threshold: float | None,
        mask: ResolvedMask | None,
        chance: float | object | None = _MASK_AREA,
        *,
        details: dict[str, Any] | None = None,
        headline: str | None = None,
    ) -> float:
        """Record the check; raise AssertionError with the rich message when it fails.

        ``chance`` defaults to the mask's area (None: no chance level); ``headline``
        replaces the message's first line.
        """
        __tracebackhide__ = True
        if chance is _MASK_AREA:
            chance = metrics.chance_level(mask.grid) if mask is not None else None
        assert chance is None or isinstance(chance, float)
        message = (
            ""
            if holds
            else self._failure_message(name, value, op, threshold, chance, mask, headline)
        )
        self.map.parent.record.checks.append(
            CheckResult(
                name=name,
                value=float(value),
                passed=bool(holds),
                op=op,
                threshold=threshold,
                chance=chance,
                selection=self.map.label,
                mask=mask.label if mask is not None else None,
                message=message,
                details=details or {},
            )
        )
        if not holds:
            raise AssertionError(message)
        return value

    def _failure_message(
        self,
        name: str,
        value: float,
        op: str,
        threshold: float | None,
        chance: float | None,
        mask: ResolvedMask | None,
        headline: str | None = None,
    ) -> str:
        parent = self.map.parent
        if headline is not None:
            pass
        elif op == "hit":
            grid_h, grid_w = (int(size) for size in self.map.grid.shape[-2:])
            peak = divmod(int(self.map.grid.argmax()), grid_w)
            headline = (
                f"pointing game missed: the most attended patch (row {peak[0]}, col {peak[1]} "
                f"of the {grid_h}x{grid_w} grid) does not touch the mask"
            )
        else:
            headline = f"{_TITLES[name]} is {value:.3f}, expected {op} {threshold:.3f}"
        lines = [headline]
        if chance is not None:
            ratio = f" (the value is {value / chance:.1f}x chance)" if chance > 0 else ""
            basis = "random patches" if name == "top_k_iou" else "mask area"
            lines.append(f"  chance level ({basis}): {chance:.3f}{ratio}")
        lines.append(f"  selection: {self.map.label}")
        if mask is not None:
            lines.append(f"  image: {parent.image_label}   mask: {mask.label}")
        else:
            lines.append(f"  image: {parent.image_label}")
        model = parent.record.model
        lines.append(
            f"  model: {model['name']} (weights: {model['weights']}, {model['weights_id']})"
        )
        lines.append(f"  heatmap: {parent.report_hint()}")
        return "\n".join(lines)


_check_bound = check_bound
_NO_BOUNDS = Bounds(None, None)
_STRICT_HINT = "vitattn_strict_masks = true turns this warning into a failure"
