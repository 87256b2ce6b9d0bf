"""Latency histograms with fixed buckets and recent-sample percentiles.

Fixed buckets export as Prometheus histograms; a bounded ring of recent
samples gives p50/p95/p99 for ``get_status()`` without unbounded memory.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque

# seconds: 50 µs .. 5 s
BUCKETS: tuple[float, ...] = (
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
    100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0,
)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


class LatencyHistogram:
    """Thread-safe histogram of durations in seconds."""

    def __init__(self, recent: int = 2048) -> None:
        self._lock = threading.Lock()
        self._counts = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0
        self._count = 0
        self._max = 0.0
        self._recent: deque[float] = deque(maxlen=recent)

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            self._counts[index] += 1
            self._sum += seconds
            self._count += 1
            self._max = max(self._max, seconds)
            self._recent.append(seconds)

    def snapshot(self) -> dict[str, float | int]:
        """count, sum, max and recent p50/p95/p99, all in seconds."""
        with self._lock:
            recent = sorted(self._recent)
            count, total, peak = self._count, self._sum, self._max
        return {
            "count": count,
            "sum_s": total,
            "max_s": peak,
            "p50_s": percentile(recent, 50),
            "p95_s": percentile(recent, 95),
            "p99_s": percentile(recent, 99),
        }

    def buckets(self) -> list[tuple[float, int]]:
        """Cumulative (upper bound, count) pairs, the last bound being +inf."""
        with self._lock:
            counts = list(self._counts)
        cumulative = []
        running = 0
        for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return cumulative

    @property
    def total(self) -> tuple[int, float]:
        with self._lock:
            return self._count, self._sum
