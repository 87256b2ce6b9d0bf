"""Fault injection: slow answers, refused registrations.

Each injected fault is consumed once, in the order it was added, so a test
states exactly which call misbehaves; a standing refusal (every advert
refused, as by a mismatched kernel) lasts until lifted.
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
        self._always: dict[str, tuple[str, str]] = {}
        self.refused: defaultdict[str, int] = defaultdict(int)
        """Calls answered with an injected refusal, by member."""

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

    def refuse_always(self, member: str, error: str, text: str) -> None:
        """Every call named ``member`` fails like this until :meth:`stop_refusing`."""
        self._always[member] = (error, text)

    def stop_refusing(self, member: str) -> None:
        self._always.pop(member, None)

    def take_refusal(self, member: str) -> tuple[str, str] | None:
        queue = self._refusals.get(member)
        if queue:
            error, text = queue.popleft()
        elif member in self._always:
            error, text = self._always[member]
        else:
            return None
        self.refused[member] += 1
        log.info("injected refusal member=%s error=%s", member, error)
        return error, text
