"""Counters of one connection, shared by the parts that do the counting."""

from __future__ import annotations

import attrs


@attrs.define
class ConnectionStats:
    """Counters a benchmark or status page can read."""

    calls_received: int = 0
    calls_answered: int = 0
    calls_deferred: int = 0  # answered by a task (an awaitable handler), not inline
    errors_sent: int = 0
    answers_lost: int = 0  # answers to calls whose connection was gone by then
    handler_timeouts: int = 0
    handler_failures: int = 0
    late_replies: int = 0
    signals_received: int = 0
    signals_dropped: int = 0
    signals_unwanted: int = 0  # no subscription could want them: dropped from the header
    foreign_refused: int = 0  # calls from other senders answered from their header alone
    foreign_throttled: int = 0  # messages past their sender's budget, never decoded
    foreign_skipped: int = 0  # messages too long to read, skipped as they arrived
    foreign_skipped_bytes: int = 0
