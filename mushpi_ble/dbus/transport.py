"""The socket under a D-Bus connection: connect, authenticate, read, write.

Everything here runs on the trio thread with a non-blocking stdlib socket:
writes are tried at once and only wait for writability on EAGAIN (never
fatal); reads drain what the kernel holds before waiting again. jeepney
supplies the SASL conversation; the connection's :class:`~.wire.Wire`
supplies the parser.
"""

from __future__ import annotations

import array
import errno
import logging
import os
import socket
from collections import deque
from collections.abc import Sequence
from typing import Any

import trio
from jeepney.auth import BEGIN, Authenticator
from jeepney.bus import get_connectable_addresses
from jeepney.fds import FileDescriptor, fds_buf_size
from jeepney.low_level import Message

from .codec import WireParser
from .errors import ConnectionLost

log = logging.getLogger(__name__)

SYSTEM_BUS_DEFAULT = "unix:path=/var/run/dbus/system_bus_socket"
READ_CHUNK = 65536
MAX_READ_PER_PASS = 1 << 20
MAX_WRITE_BATCH = 1 << 18
MAX_WRITE_IOVECS = 512
_MSG_CTRUNC = int(getattr(socket, "MSG_CTRUNC", 0))  # a plain int: no enum arithmetic


class BusUnreachable(OSError):
    """The bus address could not be resolved, connected to, or authenticated."""


def resolve_bus_address(bus: str) -> str:
    """Map ``"SYSTEM"``/``"SESSION"`` to an address via the standard variables."""
    if bus == "SYSTEM":
        return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS_DEFAULT
    if bus == "SESSION":
        address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        if not address:
            raise BusUnreachable("DBUS_SESSION_BUS_ADDRESS is not set")
        return address
    return bus


def _socket_path(address: str) -> str:
    try:
        return str(next(get_connectable_addresses(address)))
    except (RuntimeError, ValueError, StopIteration) as exc:
        raise BusUnreachable(f"unusable D-Bus address {address!r}: {exc}") from exc


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


async def _recv_some(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(4096)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


async def open_authenticated_socket(address: str, *, enable_fds: bool) -> socket.socket:
    """Connect to ``address`` and finish SASL EXTERNAL (and fd negotiation)."""
    path = _socket_path(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        try:
            sock.connect(path)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err)) from None
        auth = Authenticator(enable_fds=enable_fds, inc_null_byte=False)
        await _send_all(sock, b"\0")
        for request in auth:
            if request:
                await _send_all(sock, request)
            reply = await _recv_some(sock)
            if not reply:
                raise OSError(errno.ECONNRESET, "bus closed the connection during auth")
            auth.feed(reply)
        await _send_all(sock, BEGIN)
    except (OSError, ValueError) as exc:
        sock.close()
        raise BusUnreachable(f"cannot connect to D-Bus at {address!r}: {exc}") from exc
    return sock


class MessageReader:
    """Reads messages, draining the socket before it waits again."""

    def __init__(self, sock: socket.socket, *, enable_fds: bool, parser: WireParser) -> None:
        self._sock = sock
        self._enable_fds = enable_fds
        self._parser = parser
        self._fd_buf = fds_buf_size() if enable_fds else 0

    def _read_once(self) -> int:
        if self._enable_fds:
            data, ancdata, flags, _ = self._sock.recvmsg(READ_CHUNK, self._fd_buf)
            if flags & _MSG_CTRUNC:
                raise ConnectionLost("file descriptors were truncated by the kernel")
            fds: Sequence[Any] = FileDescriptor.from_ancdata(ancdata) if ancdata else []
        else:
            data = self._sock.recv(READ_CHUNK)
            fds = []
        if not data:
            raise ConnectionLost("the bus closed the connection")
        self._parser.add_data(data, fds)
        return len(data)

    async def receive_batch(self) -> list[Message]:
        """Wait for data, then return every complete message read so far."""
        while True:
            messages = self._parse_all()
            if messages:
                return messages
            await trio.lowlevel.wait_readable(self._sock)
            total = 0
            try:
                while total < MAX_READ_PER_PASS:
                    got = self._read_once()
                    total += got
                    if got < READ_CHUNK:
                        break  # the kernel had no more; do not pay for an EAGAIN
            except BlockingIOError:
                pass
            except OSError as exc:
                raise ConnectionLost(f"bus connection failed: {exc}") from exc

    def _parse_all(self) -> list[Message]:
        messages: list[Message] = []
        while True:
            msg = self._parser.get_next_message()
            if msg is None:
                return messages
            messages.append(msg)


class MessageWriter:
    """The single writer for all outgoing bytes of a connection.

    ``write_nowait`` tries the socket at once when nothing is queued, so a
    reply usually leaves without a scheduler pass; what the kernel does not
    take is queued for the writer task, which waits for writability and
    flushes queued messages in batches. ``write`` is the back-pressured
    variant for signals: it waits while more than ``max_buffer`` bytes are
    queued, so a slow peer costs time, never unbounded memory.
    """

    def __init__(self, sock: socket.socket, *, max_buffer: int) -> None:
        self._sock = sock
        self._queue: deque[tuple[memoryview, array.array[int] | None]] = deque()
        self._queued_bytes = 0
        self._max_buffer = max_buffer
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._space_lot = trio.lowlevel.ParkingLot()
        self._flush_requested = False
        self._closed = False
        self.eagain_count = 0
        self.backpressure_waits = 0
        self.messages_sent = 0
        self.batches = 0
        self.peak_queued_bytes = 0

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def write_nowait(self, data: bytes, fds: array.array[int] | None = None) -> None:
        """Send now if possible, else queue; never waits and never drops."""
        if self._closed:
            raise ConnectionLost()
        self.messages_sent += 1
        view = memoryview(data)
        if not self._queue:
            try:
                sent = self._send_first(view, fds)
            except BlockingIOError:
                self.eagain_count += 1
                sent = 0
            except OSError as exc:
                self._closed = True
                raise ConnectionLost(f"bus connection failed: {exc}") from exc
            if sent == len(view):
                return
            if sent:
                view = view[sent:]
                fds = None
        self._enqueue(view, fds)

    def queue(self, data: bytes) -> None:
        """Queue for the next batch flush (signals), never sending inline."""
        if self._closed:
            raise ConnectionLost()
        self.messages_sent += 1
        self._enqueue(memoryview(data), None)

    async def write(self, data: bytes) -> None:
        """Queue with back-pressure: wait while the queue is over its bound."""
        while self._queued_bytes >= self._max_buffer and not self._closed:
            self.backpressure_waits += 1
            await self._space_lot.park()
        self.queue(data)

    def _enqueue(self, view: memoryview, fds: array.array[int] | None) -> None:
        self._queue.append((view, fds))
        self._queued_bytes += len(view)
        self.peak_queued_bytes = max(self.peak_queued_bytes, self._queued_bytes)
        if not self._flush_requested:
            self._flush_requested = True
            self._writer_lot.unpark()

    def _send_first(self, view: memoryview, fds: array.array[int] | None) -> int:
        if fds:
            return self._sock.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        return self._sock.send(view)

    async def run(self) -> None:
        """The writer task: flush the queue, waiting only on EAGAIN."""
        try:
            while True:
                if not self._queue:
                    self._flush_requested = False
                    await self._writer_lot.park()
                    continue
                await self._flush()
        finally:
            self._closed = True
            self._space_lot.unpark_all()

    async def _flush(self) -> None:
        while self._queue:
            view, fds = self._queue[0]
            if fds:
                batch_views = [view]
            else:
                batch_views = []
                size = 0
                for item_view, item_fds in self._queue:
                    if item_fds or size >= MAX_WRITE_BATCH or len(batch_views) >= MAX_WRITE_IOVECS:
                        break
                    batch_views.append(item_view)
                    size += len(item_view)
            try:
                if fds:
                    sent = self._sock.sendmsg(
                        batch_views, [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
                    )
                else:
                    sent = self._sock.sendmsg(batch_views)
            except BlockingIOError:
                self.eagain_count += 1
                await trio.lowlevel.wait_writable(self._sock)
                continue
            except OSError as exc:
                raise ConnectionLost(f"bus connection failed: {exc}") from exc
            self.batches += 1
            self._consume(sent)
            if self._queued_bytes < self._max_buffer:
                self._space_lot.unpark_all()
        await trio.lowlevel.checkpoint()

    def _consume(self, sent: int) -> None:
        self._queued_bytes -= sent
        while sent:
            view, _fds = self._queue[0]
            if sent >= len(view):
                self._queue.popleft()
                sent -= len(view)
            else:
                self._queue[0] = (view[sent:], None)
                sent = 0
