"""One phone's notify socket: what bluetoothd gave us with ``AcquireNotify``.

bluetoothd reads each SOCK_SEQPACKET message we write and sends it as one
notification (or indication) to that phone (5.69+; before that one socket
is shared by every subscriber). Unlike a ``PropertiesChanged`` signal, which
bluetoothd queues without limit, a socket pushes back: when the phone's link
is slower than we publish, ``send`` says EAGAIN. So each socket has a small
queue of its own with the characteristic's overflow policy, a writer that
waits until the socket is writable, and a reader that watches for the end:

* EOF or an error = bluetoothd closed it (the phone unsubscribed or left);
* a readable byte ``0x01`` = an indication was confirmed (bluetoothd 5.80+),
  not a close.

Offering a value never waits: the caller is the characteristic's notifier,
and one slow phone must not delay the others.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections import deque
from collections.abc import Callable

import attrs
import trio

from mushpi_ble.lograte import LogRate, RateLimitedLog

from .queue_policy import Admission, admit

log = logging.getLogger(__name__)

ATT_NOTIFY_OVERHEAD = 3
"""Opcode and handle: a notification carries at most MTU - 3 bytes."""
CONFIRMATION = 0x01
SEND_BUFFER = 4096
"""Our end's send buffer: small, so a slow phone shows as EAGAIN soon and values wait
in our bounded queue (where the policy applies), not in the kernel."""

PEER_CLOSED = "closed by bluetoothd"
_PEER_GONE = frozenset({errno.EPIPE, errno.ECONNRESET})
"""How bluetoothd's close can also show: a send after it, or unread values it dropped."""

_too_long_log = RateLimitedLog(log, "values longer than the MTU allows", LogRate(burst=3))


@attrs.define
class SocketStats:
    """Counters of one socket; they add up: offered = sent + dropped + coalesced +
    refused + pending."""

    offered: int = 0
    sent: int = 0
    dropped: int = 0
    coalesced: int = 0
    refused: int = 0
    confirmations: int = 0
    peak_depth: int = 0


Closed = Callable[["NotifySocket", str], None]


class NotifySocket:
    """Our end of one acquired notify socket, for one device and one characteristic."""

    def __init__(self, sock: socket.socket, *, device: str, characteristic: str, mtu: int,
                 link: str, capacity: int, policy: str, on_closed: Closed) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.sock = sock
        self.device = device
        self.characteristic = characteristic
        self.mtu = mtu
        self.link = link
        self.capacity = 1 if policy == "coalesce" else max(1, capacity)
        self.policy = policy
        self.stats = SocketStats()
        self.last_error = ""
        self.closed = False
        self.close_reason = ""
        self._queue: deque[bytes] = deque()
        self.opened_at = trio.current_time()
        self.last_offered: float | None = None
        """When a value was last taken for this socket (trio time; see :mod:`.resubscribe`)."""
        self._on_closed = on_closed
        self._wake = trio.Event()
        self._scope = trio.CancelScope()

    def __repr__(self) -> str:
        return (f"<NotifySocket {self.characteristic} device={self.device} mtu={self.mtu} "
                f"depth={len(self._queue)}>")

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def max_value(self) -> int:
        return self.mtu - ATT_NOTIFY_OVERHEAD

    # -- the producer's side (the notifier task; never waits) ----------------------------
    def offer(self, value: bytes) -> Admission:
        """Send at once if the socket takes it, else queue it by the policy."""
        stats = self.stats
        stats.offered += 1
        if self.closed:
            stats.dropped += 1
            return Admission.REFUSED
        if len(value) > self.max_value:
            stats.refused += 1
            self.last_error = f"value of {len(value)} bytes exceeds MTU - 3 = {self.max_value}"
            _too_long_log.log(f"{self.characteristic}:{self.device}", logging.WARNING,
                              "notification refused characteristic=%s device=%s bytes=%d "
                              "max=%d", self.characteristic, self.device, len(value),
                              self.max_value)
            return Admission.REFUSED
        self.last_offered = trio.current_time()
        queue = self._queue
        if not queue and self._send(value, lost=True):
            stats.sent += 1
            return Admission.QUEUED
        if self.closed:  # by this send, which counted the value as dropped
            return Admission.REFUSED
        admission = admit(queue, value, self.capacity, self.policy)
        if admission is Admission.COALESCED:
            stats.coalesced += 1
        elif admission is not Admission.QUEUED:
            stats.dropped += 1
        stats.peak_depth = max(stats.peak_depth, len(queue))
        self._wake.set()
        return admission

    def _send(self, value: bytes, *, lost: bool = False) -> bool:
        """One non-blocking send; False when the socket is full (or now closed). ``lost``:
        the value is in no queue, so count it dropped if the socket turns out closed
        (before the close hands the counters over)."""
        try:
            self.sock.send(value, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return False
        except OSError as exc:
            if lost:
                self.stats.dropped += 1
            self._close(_reason("send", exc))
            return False
        return True

    # -- the socket's tasks ----------------------------------------------------------------
    async def run(self) -> None:
        """Write queued values as the socket drains; watch for confirmations and the end."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                await self._reader()
                nursery.cancel_scope.cancel()

    async def _writer(self) -> None:
        queue = self._queue
        while not self.closed:
            while queue:
                await trio.lowlevel.wait_writable(self.sock)
                if not queue:
                    break
                if self._send(queue[0]):
                    queue.popleft()
                    self.stats.sent += 1
                elif self.closed:
                    return
            self._wake = trio.Event()
            if not queue:
                await self._wake.wait()

    async def _reader(self) -> None:
        while not self.closed:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                data = self.sock.recv(64)
            except BlockingIOError:
                continue
            except OSError as exc:
                self._close(_reason("read", exc))
                return
            if not data:
                self._close(PEER_CLOSED)
                return
            confirmations = data.count(CONFIRMATION)
            self.stats.confirmations += confirmations
            if confirmations != len(data):
                log.warning("unexpected bytes on notify socket characteristic=%s device=%s "
                            "data=%s", self.characteristic, self.device, data.hex())

    # -- the end -----------------------------------------------------------------------------
    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.stats.dropped += len(self._queue)
        self._queue.clear()
        if reason != PEER_CLOSED:
            self.last_error = reason
        self._scope.cancel()
        self.sock.close()
        self._wake.set()
        self._on_closed(self, reason)

    def close(self, reason: str = "closed by us") -> None:
        """Close our end (replaced, unregistered, shutting down)."""
        self._close(reason)


def _reason(what: str, exc: OSError) -> str:
    if exc.errno in _PEER_GONE:
        return PEER_CLOSED
    return f"{what} failed: {errno.errorcode.get(exc.errno or 0, str(exc))}"
