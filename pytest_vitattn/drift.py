"""How far attention maps moved from their baseline: four measures per map, and a verdict.

Pure numpy: no pytest, no timm. Maps are (..., h, w) arrays of non-negative attention over
the patch grid, e.g. (L, H, h, w) for every layer and head; each measure returns one number
per map, shaped like the leading dimensions. Maps are renormalised to sum to 1 first, so a
baseline stored in float16 compares like the float32 original.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pytest_vitattn.errors import AttentionValueError
from pytest_vitattn.tolerance import Tolerance, bound_kind

# Share of the patches that top-k IoU compares: the attention's "hot spot".
TOP_K_FRACTION = 0.1

MEASURES = ("js", "correlation", "top_k_iou", "max_abs_diff")
_BOUND_OF = {
    "js": "max_js",
    "correlation": "min_correlation",
    "top_k_iou": "min_top_k_iou",
    "max_abs_diff": "max_abs_diff",
}


def js_divergence(current: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits between each map and its baseline.

    JS(p, q) = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2: symmetric, defined where
    either map is zero, 0 for equal maps and 1 for maps with disjoint support. Moving a
    share s of the attention to patches that had none gives about s / 2 (s = 0.1 -> 0.05).

    Args:
        current, baseline: (..., h, w) non-negative maps with positive sums.

    Returns:
        (...) float64 in [0, 1].
    """
    p, q = _distributions(current, baseline)
    m = (p + q) / 2
    return np.clip((_kl(p, m) + _kl(q, m)) / 2, 0.0, 1.0)


def pearson_correlation(current: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Pearson correlation of each map's patch values with its baseline's.

    Sensitive to where attention goes, blind to how sharp it is. A constant map has no
    pattern: two constant maps score 1, a constant map against a varying one scores 0.

    Args:
        current, baseline: (..., h, w) non-negative maps with positive sums.

    Returns:
        (...) float64 in [-1, 1].
    """
    p, q = _distributions(current, baseline)
    p = p - p.mean(axis=-1, keepdims=True)
    q = q - q.mean(axis=-1, keepdims=True)
    spread = np.sqrt((p * p).sum(axis=-1) * (q * q).sum(axis=-1))
    flat_p, flat_q = ~p.any(axis=-1), ~q.any(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.clip((p * q).sum(axis=-1) / spread, -1.0, 1.0)
    correlation = np.where(flat_p | flat_q, np.where(flat_p & flat_q, 1.0, 0.0), correlation)
    return np.asarray(correlation, dtype=np.float64)


def top_k_iou(
    current: np.ndarray, baseline: np.ndarray, fraction: float = TOP_K_FRACTION
) -> np.ndarray:
    """IoU of the most attended patches of each map and of its baseline.

    Both sides take their ``max(1, round(fraction * patches))`` highest patches; ties go to
    the lower patch index, so equal maps always score 1.

    Args:
        current, baseline: (..., h, w) non-negative maps with positive sums.
        fraction: share of patches in (0, 1].

    Returns:
        (...) float64 in [0, 1].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must be a share of patches in (0, 1]")
    p, q = _distributions(current, baseline)
    count = max(1, round(fraction * p.shape[-1]))
    top_p, top_q = _top(p, count), _top(q, count)
    intersection = (top_p & top_q).sum(axis=-1)
    return intersection / (2 * count - intersection)


def max_abs_diff(current: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Largest change of any one patch's share of attention.

    In units of attention share, so it depends on the grid: a uniform 14x14 map gives each
    patch 1/196 = 0.005.

    Args:
        current, baseline: (..., h, w) non-negative maps with positive sums.

    Returns:
        (...) float64 in [0, 1].
    """
    p, q = _distributions(current, baseline)
    return np.abs(p - q).max(axis=-1)


@dataclass(frozen=True)
class Drift:
    """The four measures for every compared map; each array has the maps' leading shape.

    Attributes:
        js: Jensen-Shannon divergence in bits, 0 = same.
        correlation: Pearson correlation, 1 = same pattern.
        top_k_iou: IoU of the top 10% patches, 1 = same hot spot.
        max_abs_diff: largest per-patch change of attention share, 0 = same.
    """

    js: np.ndarray
    correlation: np.ndarray
    top_k_iou: np.ndarray
    max_abs_diff: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.js.shape)

    def reshape(self, *shape: int) -> Drift:
        """The same measures with the maps' leading shape changed, e.g. (L * H,) -> (L, H)."""
        return Drift(**{name: getattr(self, name).reshape(shape) for name in MEASURES})

    def at(self, index: tuple[int, ...]) -> dict[str, float]:
        """The four numbers of one map, rounded for reports."""
        return {name: round(float(getattr(self, name)[index]), 6) for name in MEASURES}


def compare(current: np.ndarray, baseline: np.ndarray) -> Drift:
    """All four measures of ``current`` against ``baseline``.

    Args:
        current, baseline: (..., h, w) maps of the same shape.

    Returns:
        A ``Drift`` whose arrays have shape (...).
    """
    return Drift(
        js=js_divergence(current, baseline),
        correlation=pearson_correlation(current, baseline),
        top_k_iou=top_k_iou(current, baseline),
        max_abs_diff=max_abs_diff(current, baseline),
    )


def severity(drift: Drift, tolerance: Tolerance) -> np.ndarray:
    """How many times the allowed drift each map shows, by its worst bounded measure.

    Each measure is turned into a distance (1 - correlation, 1 - IoU) and divided by the
    allowed distance, so 1 is on the bound and above 1 fails. A zero allowance makes any
    drift infinitely severe.

    Returns:
        (...) float64 >= 0; a map fails where it is > 1.
    """
    worst = np.zeros(drift.shape)
    for ratio in _ratios(drift, tolerance).values():
        worst = np.maximum(worst, ratio)
    return worst


def failing(drift: Drift, tolerance: Tolerance) -> np.ndarray:
    """(...) bool, True where a map breaks a bound of ``tolerance``."""
    return severity(drift, tolerance) > 1.0


def violated(drift: Drift, tolerance: Tolerance, index: tuple[int, ...]) -> list[str]:
    """The measures of the map at ``index`` that break their bound."""
    return [name for name, ratio in _ratios(drift, tolerance).items() if ratio[index] > 1.0]


def _ratios(drift: Drift, tolerance: Tolerance) -> dict[str, np.ndarray]:
    ratios = {}
    for measure in MEASURES:
        bound = getattr(tolerance, _BOUND_OF[measure])
        if bound is None:
            continue
        value = getattr(drift, measure)
        if bound_kind(_BOUND_OF[measure]) == "max":
            distance, allowed = value, bound
        else:
            distance, allowed = 1.0 - value, 1.0 - bound
        # Below 1e-9 the difference is float rounding, not drift.
        distance = np.where(distance <= 1e-9, 0.0, distance)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(distance == 0, 0.0, distance / allowed if allowed else np.inf)
        ratios[measure] = ratio
    return ratios


def drift_table(
    drift: Drift,
    tolerance: Tolerance,
    labels: Sequence[str],
    limit: int = 10,
) -> list[str]:
    """Text rows for the failing maps, worst first, one per map, at most ``limit``.

    Args:
        drift: measures of maps with leading shape S.
        tolerance: the bounds the maps were held to.
        labels: one name per map in C order of S, e.g. "layer 5, head 2".
        limit: rows shown; the rest are counted in a last line.

    Returns:
        Lines: a header, one row per failing map (a measure past its bound is marked
        with "!"), and "... and N more" when truncated. Empty when nothing fails.
    """
    ratio = severity(drift, tolerance).reshape(-1)
    failed = np.flatnonzero(ratio > 1.0)
    if failed.size == 0:
        return []
    if len(labels) != ratio.size:
        raise ValueError(f"{len(labels)} labels for {ratio.size} maps")
    # Worst first; the JS divergence breaks ties (e.g. several infinitely severe maps).
    js = drift.js.reshape(-1)
    order = sorted(failed.tolist(), key=lambda i: (-ratio[i], -js[i], i))
    width = max(len(labels[i]) for i in order[:limit])
    lines = [f"  {'':<{width}}  {'JS div':>8}  {'corr':>7}  {'top-k IoU':>9}  {'max|diff|':>9}"]
    for flat in order[:limit]:
        index = np.unravel_index(flat, drift.shape)
        bad = set(violated(drift, tolerance, index))
        cells = [
            _cell(drift.js[index], "js" in bad, 8, 4),
            _cell(drift.correlation[index], "correlation" in bad, 7, 3),
            _cell(drift.top_k_iou[index], "top_k_iou" in bad, 9, 3),
            _cell(drift.max_abs_diff[index], "max_abs_diff" in bad, 9, 4),
        ]
        lines.append((f"  {labels[flat]:<{width}}  " + "  ".join(cells)).rstrip())
    if len(order) > limit:
        lines.append(f"  ... and {len(order) - limit} more")
    return lines


def _cell(value: float, bad: bool, width: int, digits: int) -> str:
    return f"{value:>{width - 1}.{digits}f}{'!' if bad else ' '}"


def _distributions(current: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as (..., h * w) float64 distributions, after checking them."""
    current, baseline = np.asarray(current), np.asarray(baseline)
    if current.shape != baseline.shape:
        raise AttentionValueError(
            f"maps of shape {current.shape} cannot be compared with a baseline of shape "
            f"{baseline.shape}"
        )
    if current.ndim < 2:
        raise AttentionValueError(f"expected (..., h, w) maps, got shape {current.shape}")
    return _distribution(current, "map"), _distribution(baseline, "baseline map")


def _distribution(maps: np.ndarray, what: str) -> np.ndarray:
    flat = maps.astype(np.float64).reshape(*maps.shape[:-2], -1)
    if not np.isfinite(flat).all():
        raise AttentionValueError(f"a {what} contains NaN or infinite values")
    total = flat.sum(axis=-1, keepdims=True)
    if (flat < 0).any() or (total <= 0).any():
        raise AttentionValueError(f"a {what} must be non-negative with a positive sum")
    return flat / total


def _kl(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    # 0 * log(0 / m) = 0; m > 0 wherever p > 0 because m = (p + q) / 2.
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p / m), 0.0)
    return terms.sum(axis=-1)


def _top(flat: np.ndarray, count: int) -> np.ndarray:
    # A stable sort of the negated values ranks ties by patch index, deterministically.
    order = np.argsort(-flat, axis=-1, kind="stable")[..., :count]
    chosen = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(chosen, order, True, axis=-1)
    return chosen
