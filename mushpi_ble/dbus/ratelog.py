"""Logging what strangers cause, at a bounded rate.

Anyone on the bus can make the connection refuse or drop messages as fast
as it can send them; one log line each would let it fill the disk. A
:class:`RateLog` writes the first line per key and interval, and the next
line after the interval says how many were left out meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

DEFAULT_INTERVAL = 60.0
MAX_KEYS = 1024  # keys are chosen by strangers (their bus names): bounded


class RateLog:
    """At most one log line per key and ``interval`` seconds, counting the rest."""

    def __init__(self, logger: logging.Logger, *, interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self.interval = interval
        self._clock = clock
        self._keys: dict[Hashable, tuple[float, int]] = {}

    def warning(self, key: Hashable, message: str, *args: object) -> None:
        """Log ``message % args`` now if ``key`` was quiet for an interval, else count it."""
        now = self._clock()
        last = self._keys.get(key)
        if last is not None and now - last[0] < self.interval:
            self._keys[key] = (last[0], last[1] + 1)
            return
        if len(self._keys) >= MAX_KEYS:
            self._keys.clear()
        self._keys[key] = (now, 0)
        suppressed = last[1] if last is not None else 0
        if suppressed:
            self._log.warning(message + " (and %d more like it in the last %.0f s)",
                              *args, suppressed, now - last[0] if last else 0.0)
        else:
            self._log.warning(message, *args)
