"""Fault injection: slow answers, refused registrations.

Each injected fault is consumed once, in the order it was added, so a test
states exactly which call misbehaves.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque

import trio

log = logging.getLogger(__name__)


class Faults:
    """Pending faults by D-Bus member name."""

    def __init__(self) -> None:
        self._delays: defaultdict[str, deque[float]] = defaultdict(deque)
        self._refusals: defaultdict[str, deque[tuple[str, str]]] = defaultdict(deque)

    def delay_next_call(self, member: str, seconds: float) -> None:
        """The next call named ``member`` waits ``seconds`` first.

        Applies to methods the fake answers (RegisterApplication, ...) and to
        calls it makes into applications (ReadValue, StartNotify, ...).
        """
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self._delays[member].append(seconds)

    def refuse_next(self, member: str, error: str, text: str) -> None:
        self._refusals[member].append((error, text))

    async def delay(self, member: str) -> None:
        queue = self._delays.get(member)
        if not queue:
            return
        seconds = queue.popleft()
        log.info("injected delay member=%s seconds=%.3f", member, seconds)
        await trio.sleep(seconds)

    def take_refusal(self, member: str) -> tuple[str, str] | None:
        queue = self._refusals.get(member)
        if not queue:
            return None
        error, text = queue.popleft()
        log.info("injected refusal member=%s error=%s", member, error)
        return error, text
