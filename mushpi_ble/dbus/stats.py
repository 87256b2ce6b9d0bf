"""Counters of one connection, shared by the parts that do the counting."""

from __future__ import annotations

import attrs


@attrs.define
class ConnectionStats:
    """Counters a benchmark or status page can read."""

    calls_received: int = 0
    calls_answered: int = 0
    errors_sent: int = 0
    handler_timeouts: int = 0
    handler_failures: int = 0
    late_replies: int = 0
    signals_received: int = 0
    signals_dropped: int = 0
