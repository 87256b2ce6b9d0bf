"""Log lines that anyone on the air can provoke, limited per source and counted.

A phone that writes garbage a thousand times a second, or a hung controller
callback that fails every read, must not fill the disk of a Pi: the first
few lines per key (a device, a sender, a characteristic) per window are
logged, the rest only counted, and the count is logged as one summary line
when the window has ended — at the next line of any key, or when the owner
calls :meth:`RateLimitedLog.flush` on a timer.

:class:`LogRate` is the pure decision (an injected clock, no logging);
:class:`RateLimitedLog` applies it to a :class:`logging.Logger`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import attrs

OVERFLOW_KEY = "*"
"""Where lines of new keys are counted while ``max_keys`` windows are open."""


@attrs.frozen
class Suppressed:
    """``count`` lines of ``key`` were not logged in the window that began at ``since``."""

    key: str
    count: int
    since: float


@attrs.frozen
class Verdict:
    """Log this line or not; ``last`` when it is the last one logged in its window;
    ``summaries`` of ended windows, to log before it."""

    log: bool
    last: bool
    summaries: tuple[Suppressed, ...]


@attrs.define
class _Window:
    start: float
    seen: int = 0


class LogRate:
    """At most ``burst`` lines per key per ``window`` seconds; the rest are counted.

    Windows open at a key's first line and are kept in opening order, so the
    ended ones are always at the front. At most ``max_keys`` are open, the
    last of them :data:`OVERFLOW_KEY`'s, which further keys share. Not thread-safe
    (one owner thread, like the core's events).
    """

    def __init__(self, *, burst: int = 5, window: float = 60.0, max_keys: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or window <= 0 or max_keys < 2:
            raise ValueError("burst must be >= 1, max_keys >= 2, window > 0")
        self.burst = burst
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def allow(self, key: str) -> Verdict:
        """Account one line of ``key``."""
        summaries = self.due()
        window = self._windows.get(key)
        if window is None:
            named = len(self._windows) - (OVERFLOW_KEY in self._windows)
            if named >= self.max_keys - 1:  # the last slot is the overflow window's
                key = OVERFLOW_KEY
                window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(self._clock())
        window.seen += 1
        return Verdict(window.seen <= self.burst, window.seen == self.burst, summaries)

    def due(self) -> tuple[Suppressed, ...]:
        """Close the windows that have ended: the counts of those that suppressed lines."""
        now = self._clock()
        ended: list[Suppressed] = []
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if now - window.start < self.window:
                break
            del self._windows[key]
            if window.seen > self.burst:
                ended.append(Suppressed(key, window.seen - self.burst, window.start))
        return tuple(ended)

    @property
    def open_windows(self) -> int:
        return len(self._windows)


class RateLimitedLog:
    """A logger for one kind of line (``what``), limited per key by a :class:`LogRate`."""

    def __init__(self, logger: logging.Logger, what: str, rate: LogRate | None = None) -> None:
        self.logger = logger
        self.what = what
        self.rate = rate if rate is not None else LogRate()

    def log(self, key: str, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` is over its budget; True if it was logged."""
        verdict = self.rate.allow(key)
        self._summarise(verdict.summaries)
        if not verdict.log:
            return False
        if verdict.last:
            msg += " (more %s of key=%s are counted, not logged, for up to %.0f s)"
            args = (*args, self.what, key, self.rate.window)
        self.logger.log(level, msg, *args)
        return True

    def flush(self) -> None:
        """Log the summaries of the windows that have ended (call it on a timer)."""
        self._summarise(self.rate.due())

    def _summarise(self, summaries: tuple[Suppressed, ...]) -> None:
        for s in summaries:
            self.logger.warning("%s not logged key=%s count=%d window_s=%.0f", self.what,
                                s.key, s.count, self.rate.window)
