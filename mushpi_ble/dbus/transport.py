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


ADDRESS_FORM = ("SYSTEM, SESSION or a D-Bus address such as "
                "unix:path=/run/dbus/system_bus_socket")


def _socket_path(address: str) -> str:
    if ":" not in address or "=" not in address:
        raise BusUnreachable(f"unusable D-Bus address {address!r}: expected {ADDRESS_FORM}")
    try:
        return str(next(get_connectable_addresses(address)))
    except (RuntimeError, ValueError, StopIteration) as exc:
        raise BusUnreachable(f"unusable D-Bus address {address!r}: {exc} "
                             f"(expected {ADDRESS_FORM})") from exc


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
    """Reads and parses what the socket holds, draining it in one pass.

    It never waits itself: the receive loop awaits readability and then calls
    :meth:`read_available` and :meth:`parsed` (one coroutine frame less to resume
    per wake-up, on the path every call from bluetoothd takes)."""

    def __init__(self, sock: socket.socket, *, enable_fds: bool, parser: WireParser) -> None:
        self._sock = sock
        self._enable_fds = enable_fds
        self._parser = parser
        self._fd_buf = fds_buf_size() if enable_fds else 0

    @property
    def parser(self) -> WireParser:
        return self._parser

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

    @property
    def sock(self) -> socket.socket:
        return self._sock

    def read_available(self) -> None:
        """Read what the kernel holds (up to a bound per pass); never waits."""
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

    def parsed(self) -> list[Message]:
        """Every complete message read so far (screened, decoded), in order."""
        messages: list[Message] = []
        get_next = self._parser.get_next_message
        while True:
            msg = get_next()
            if msg is None:
                return messages
            messages.append(msg)


_Item = tuple[memoryview, "array.array[int] | None"]


class MessageWriter:
    """The single writer for all outgoing bytes of a connection.

    ``write_nowait`` tries the socket at once when nothing is queued, so a
    reply usually leaves without a scheduler pass; what the kernel does not
    take is queued for the writer task, which waits for writability and
    flushes queued messages in batches. ``write`` is the back-pressured
    variant for signals: it waits while more than ``max_buffer`` bytes are
    queued, so a slow peer costs time, never unbounded memory.

    Two lanes: an ``urgent`` message (a reply the preferred peer waits for)
    goes out before everything queued in the normal lane (signals, other
    replies, calls): it waits behind at most the one message whose bytes are
    already partly sent, never behind the queued signals. Each lane keeps
    its own order.
    """

    def __init__(self, sock: socket.socket, *, max_buffer: int) -> None:
        self._sock = sock
        self._queue: deque[_Item] = deque()
        self._urgent: deque[_Item] = deque()
        self._partial: _Item | None = None  # the rest of a message partly sent
        self._queued_bytes = 0
        self._max_buffer = max_buffer
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._space_lot = trio.lowlevel.ParkingLot()
        self._flush_requested = False
        self._closed = False
        self.eagain_count = 0
        self.backpressure_waits = 0
        self.messages_sent = 0
        self.urgent_sent = 0
        self.batches = 0
        self.peak_queued_bytes = 0

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def _idle(self) -> bool:
        return self._partial is None and not self._queue and not self._urgent

    def write_nowait(self, data: bytes, fds: array.array[int] | None = None, *,
                     urgent: bool = False) -> None:
        """Send now if possible, else queue; never waits and never drops.

        An ``urgent`` message is sent at once even while normal messages are
        queued, and otherwise queued ahead of them.
        """
        if self._closed:
            raise ConnectionLost()
        self.messages_sent += 1
        if urgent:
            self.urgent_sent += 1
            inline = self._partial is None and not self._urgent
        else:
            inline = self._idle()
        if inline:
            try:
                sent = (self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                        if fds else self._sock.send(data))
            except BlockingIOError:
                self.eagain_count += 1
                sent = 0
            except OSError as exc:
                self._closed = True
                raise ConnectionLost(f"bus connection failed: {exc}") from exc
            if sent == len(data):
                return  # the usual case: no view, no queue
            if sent:  # the rest must leave before any other message's bytes
                rest = memoryview(data)[sent:]
                self._partial = (rest, None)
                self._queued_bytes += len(rest)
                self._request_flush()
                return
        self._enqueue(self._urgent if urgent else self._queue, memoryview(data), fds)

    def queue(self, data: bytes) -> None:
        """Queue for the next batch flush (signals), never sending inline."""
        if self._closed:
            raise ConnectionLost()
        self.messages_sent += 1
        self._enqueue(self._queue, memoryview(data), None)

    async def write(self, data: bytes) -> None:
        """Queue with back-pressure: wait while the queue is over its bound."""
        while self._queued_bytes >= self._max_buffer and not self._closed:
            self.backpressure_waits += 1
            await self._space_lot.park()
        self.queue(data)

    def _enqueue(self, lane: deque[_Item], view: memoryview,
                 fds: array.array[int] | None) -> None:
        lane.append((view, fds))
        queued = self._queued_bytes = self._queued_bytes + len(view)
        if queued > self.peak_queued_bytes:
            self.peak_queued_bytes = queued
        self._request_flush()

    def _request_flush(self) -> None:
        if not self._flush_requested:
            self._flush_requested = True
            self._writer_lot.unpark()

    async def run(self) -> None:
        """The writer task: flush the queue, waiting only on EAGAIN."""
        try:
            while True:
                if self._idle():
                    self._flush_requested = False
                    await self._writer_lot.park()
                    continue
                await self._flush()
        finally:
            self._closed = True
            self._space_lot.unpark_all()

    def _batch(self) -> tuple[list[memoryview], array.array[int] | None]:
        """The next batch, in sending order (the partly sent message, the urgent
        lane, the normal lane): its views, and the descriptors of its only message
        if it carries some."""
        views: list[memoryview] = []
        size = 0
        if self._partial is not None:
            views.append(self._partial[0])
            size = len(self._partial[0])
        for lane in (self._urgent, self._queue):
            for item_view, item_fds in lane:
                if item_fds:
                    return (views, None) if views else ([item_view], item_fds)
                if size >= MAX_WRITE_BATCH or len(views) >= MAX_WRITE_IOVECS:
                    return views, None
                views.append(item_view)
                size += len(item_view)
        return views, None

    async def _flush(self) -> None:
        while not self._idle():
            views, fds = self._batch()
            try:
                if fds:
                    sent = self._sock.sendmsg(views, [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                else:
                    sent = self._sock.sendmsg(views)
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
        """Drop ``sent`` bytes in sending order; a message cut short becomes the
        partly sent one."""
        self._queued_bytes -= sent
        if self._partial is not None:
            view = self._partial[0]
            if sent < len(view):
                self._partial = (view[sent:], None)
                return
            sent -= len(view)
            self._partial = None
        for lane in (self._urgent, self._queue):
            while sent and lane:
                view, _fds = lane[0]
                lane.popleft()
                if sent >= len(view):
                    sent -= len(view)
                else:
                    self._partial = (view[sent:], None)
                    return
