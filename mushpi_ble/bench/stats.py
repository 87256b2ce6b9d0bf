"""The one percentile definition and the one latency-summary shape.

Every benchmark summarises samples with :func:`summary`, so a ``p99`` means
the same thing in every table and JSON file. No trio or D-Bus imports: a
server process can import this without its memory figures growing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

SUMMARY_KEYS = ("p50", "p95", "p99", "mean", "min", "max", "n")
"""The keys of every latency summary, in every report."""


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (0-100), linear interpolation between closest
    ranks (NumPy's default); NaN when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * min(max(pct, 0.0), 100.0) / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summary(samples: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """p50/p95/p99/mean/min/max/n of ``samples`` multiplied by ``scale`` (e.g. 1e6
    for seconds to µs, 1e-3 for ns to µs); NaN figures and n = 0 when empty."""
    if not samples:
        return {key: (0.0 if key == "n" else math.nan) for key in SUMMARY_KEYS}
    values = sorted(s * scale for s in samples)
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": sum(values) / len(values),
        "min": values[0],
        "max": values[-1],
        "n": float(len(values)),
    }


def present(value: float | None) -> bool:
    """A number that can be shown and divided (not None, not NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are present; None if there are none."""
    ordered = sorted(float(v) for v in values if v is not None and present(v))
    if not ordered:
        return None
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2.0


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the divisor is 0."""
    if numerator is None or denominator is None or not present(numerator):
        return None
    if not present(denominator) or denominator == 0:
        return None
    return numerator / denominator


def fmt(value: object, digits: int = 0) -> str:
    """A table cell: fixed digits with thousands separators, '-' for no number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not present(value):
        return "-"
    return f"{value:,.{digits}f}"
