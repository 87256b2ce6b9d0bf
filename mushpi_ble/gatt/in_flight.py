"""The phones' reads and writes we are still answering, and the phones that left first.

bluetoothd (BLUEZ_AFFECTED) mishandles a ReadValue or WriteValue whose central's
link ends before the application answers: the request outlives the ATT channel, and
5 s after it bluetoothd answers it on freed memory and crashes, or sends an error
into another phone's link (README, "Against the real bluetoothd"). Nothing in our
reply avoids that, but the operator should read the cause in our log, next to
bluetoothd's crash, instead of guessing: a phone that leaves while requests of its
own are in flight is counted and named, with what it means.

:class:`InFlight` is bookkeeping only (no clock, no logging): the application opens
:meth:`InFlight.answering` around each request it awaits and reports departures
with :meth:`InFlight.device_left`, which says how many of that phone's requests were
still open.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import attrs

BLUEZ_AFFECTED = "BlueZ 5.66 to 5.87"
"""The bluetoothd versions known to crash after a request its phone left open (the
lab's 5.66 and 5.82; the code is unchanged to 5.87 and master)."""


@attrs.define
class InFlight:
    """Per device, the requests being answered; how many phones left before an answer."""

    open: dict[str, int] = attrs.field(factory=dict)
    phones_left_waiting: int = 0
    """Departures that found requests of the phone still open (counted once each)."""
    requests_outlived_link: int = 0
    """The requests those phones left open."""

    @contextmanager
    def answering(self, device: str) -> Iterator[None]:
        """While the peripheral answers one request of ``device`` ("" when bluetoothd
        named none: not tracked)."""
        if not device:
            yield
            return
        self.open[device] = self.open.get(device, 0) + 1
        try:
            yield
        finally:
            left = self.open.get(device, 0) - 1
            if left > 0:
                self.open[device] = left
            else:
                self.open.pop(device, None)

    def counts(self) -> dict[str, int]:
        """For the status: ``phones`` that left waiting, and their open ``requests``."""
        return {"phones": self.phones_left_waiting, "requests": self.requests_outlived_link}

    def device_left(self, device: str) -> int:
        """``device``'s link ended: how many of its requests are still open (counted)."""
        waiting = self.open.get(device, 0)
        if waiting:
            self.phones_left_waiting += 1
            self.requests_outlived_link += waiting
        return waiting
