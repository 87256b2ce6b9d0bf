"""The event loops' own cost per call: servers that answer ReadValue with a canned reply.

``dbus_layer`` compares whole processes: our D-Bus layer on trio against
dbus-fast on asyncio. These two servers do the least a D-Bus server can do
on each loop — wait for the socket, read, patch the call's serial into a
prepared method return, send — so the difference between ``ours`` and the
trio floor is what our layer costs per call, and the difference between
dbus-fast and the asyncio floor is what dbus-fast costs; the two floors
differ by what the loops themselves cost.

Each floor reads once per wake-up and sends one reply per call, as both real
servers do; neither decodes more than the fixed header. They serve one client
(the benchmark's): the first call's sender is learnt with jeepney's parser.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

from mushpi_ble.bench import wire

TRIO_FLOOR, ASYNCIO_FLOOR = "trio-floor", "asyncio-floor"
_U32 = struct.Struct("<I")
_LENGTHS = struct.Struct("<III")  # body length, serial, header-fields length
_METHOD_CALL = 1
_PLACEHOLDER_SERIAL = 0x5EED5EED
_PLACEHOLDER_REPLY_SERIAL = 0x0DDBA11


class CannedReplies:
    """Splits what the socket gives into messages and answers every method call."""

    def __init__(self, sock: socket.socket, value: bytes) -> None:
        self._sock = sock
        self._value = value
        self._pending = bytearray()
        self._reply: bytearray | None = None
        self._serial_at = self._reply_serial_at = 0
        self._serial = 0

    def _learn(self, raw: bytes) -> None:
        """The reply template, for the sender of the first call."""
        from jeepney.low_level import Parser
        from jeepney.wrappers import new_method_return

        parser = Parser()
        parser.add_data(raw)
        call = parser.get_next_message()
        assert call is not None
        call.header.serial = _PLACEHOLDER_REPLY_SERIAL
        reply = bytearray(new_method_return(call, "ay", (self._value,))
                          .serialise(serial=_PLACEHOLDER_SERIAL))
        self._serial_at = bytes(reply).index(_U32.pack(_PLACEHOLDER_SERIAL))
        self._reply_serial_at = bytes(reply).index(_U32.pack(_PLACEHOLDER_REPLY_SERIAL))
        self._reply = reply

    def feed(self, data: bytes) -> None:
        """Answer every complete call in ``data`` (and what was left before it)."""
        pending = self._pending
        pending += data
        out: list[bytes] = []
        pos = 0
        while len(pending) - pos >= 16:
            body_len, serial, fields_len = _LENGTHS.unpack_from(pending, pos + 4)
            end = pos + 16 + ((fields_len + 7) & ~7) + body_len
            if end > len(pending):
                break
            if pending[pos + 1] == _METHOD_CALL:
                if self._reply is None:
                    self._learn(bytes(pending[pos:end]))
                reply = self._reply
                assert reply is not None
                self._serial += 1
                _U32.pack_into(reply, self._serial_at, self._serial)
                _U32.pack_into(reply, self._reply_serial_at, serial)
                out.append(bytes(reply))
            pos = end
        del pending[:pos]
        if out:
            self._sock.send(b"".join(out) if len(out) > 1 else out[0])


def _connect(address: str) -> tuple[socket.socket, str]:
    from jeepney.io.blocking import open_dbus_connection

    conn = open_dbus_connection(address)
    sock = conn.sock
    sock.setblocking(False)
    return sock, str(conn.unique_name)


def _serve_trio(sock: socket.socket, feed: Callable[[bytes], None]) -> None:
    import trio

    async def main() -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                return
            feed(data)

    trio.run(main)


def _serve_asyncio(sock: socket.socket, feed: Callable[[bytes], None]) -> None:
    import asyncio

    loop = asyncio.new_event_loop()
    done = loop.create_future()

    def on_readable() -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(sock)
            done.set_result(None)
            return
        feed(data)

    loop.add_reader(sock, on_readable)
    loop.run_until_complete(done)


def serve_floor(variant: str, address: str, *, value: bytes) -> None:
    """Run floor server ``variant`` (:data:`TRIO_FLOOR` or :data:`ASYNCIO_FLOOR`) until
    the bus closes."""
    serve = {TRIO_FLOOR: _serve_trio, ASYNCIO_FLOOR: _serve_asyncio}[variant]
    sock, name = _connect(address)
    replies = CannedReplies(sock, value)
    wire.emit("ready", name=name)
    serve(sock, replies.feed)
