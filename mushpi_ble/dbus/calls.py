"""Method calls a connection makes: serials, reply matching, deadlines.

Each call waits for the reply carrying its serial, up to its own deadline;
a reply arriving later finds nobody waiting and is counted and dropped.
When the bus goes away every waiting call fails with :class:`ConnectionLost`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import trio
from jeepney.low_level import HeaderFields, Message, MessageType

from .errors import FAILED, CallTimeout, ConnectionLost, DBusError
from .stats import ConnectionStats
from .transport import MessageWriter
from .wire import Wire

log = logging.getLogger(__name__)

BUS_NAME = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"


@attrs.define
class _PendingCall:
    event: trio.Event = attrs.Factory(trio.Event)
    reply: Message | None = None
    error: DBusError | None = None


class Calls:
    """The outgoing calls of one connection and the replies they wait for."""

    def __init__(self, wire: Wire, writer: MessageWriter, serials: Iterator[int],
                 closed: trio.Event, stats: ConnectionStats, *, timeout: float) -> None:
        self._wire = wire
        self._writer = writer
        self._serials = serials
        self._closed = closed
        self._stats = stats
        self.timeout = timeout
        self._pending: dict[int, _PendingCall] = {}

    async def call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        no_reply: bool = False,
    ) -> tuple[Any, ...]:
        """Call a method and return the reply body (see :meth:`.Connection.call`)."""
        if self._closed.is_set():
            raise ConnectionLost()
        if no_reply:
            self.call_nowait(destination, path, interface, member, signature, body)
            await trio.lowlevel.checkpoint()
            return ()
        deadline = self.timeout if timeout is None else timeout
        pending = _PendingCall()
        serial = next(self._serials)
        self._pending[serial] = pending
        try:
            data, fds = self._wire.method_call(destination, path, interface, member, signature,
                                               tuple(body), serial)
            self._writer.write_nowait(data, fds)
            with trio.move_on_after(deadline):
                await pending.event.wait()
        finally:
            self._pending.pop(serial, None)
        if pending.error is not None:
            raise pending.error
        reply = pending.reply
        if reply is None:
            raise CallTimeout(f"{interface}.{member} on {destination}{path}: no reply within "
                              f"{deadline:.3g} s")
        if reply.header.message_type is MessageType.error:
            name = str(reply.header.fields.get(HeaderFields.error_name, FAILED))
            text = str(reply.body[0]) if reply.body and isinstance(reply.body[0], str) else ""
            raise DBusError(name, text)
        return tuple(reply.body)

    def call_nowait(self, destination: str, path: str, interface: str, member: str,
                    signature: str = "", body: Sequence[Any] = ()) -> None:
        """Send a method call flagged NO_REPLY_EXPECTED, without waiting at all."""
        if self._closed.is_set():
            raise ConnectionLost()
        data, fds = self._wire.method_call(destination, path, interface, member, signature,
                                           tuple(body), next(self._serials), no_reply=True)
        self._writer.write_nowait(data, fds)

    async def call_bus(self, member: str, signature: str = "", body: Sequence[Any] = ()) -> Any:
        """Call the bus daemon itself; returns the first reply value or None."""
        reply = await self.call(BUS_NAME, BUS_PATH, BUS_NAME, member, signature, body)
        return reply[0] if reply else None

    def on_reply(self, msg: Message) -> None:
        """Hand a method return or error to the call waiting for it, if any."""
        serial = msg.header.fields.get(HeaderFields.reply_serial)
        pending = self._pending.get(serial) if serial is not None else None
        if pending is None:
            self._stats.late_replies += 1
            log.debug("discarding reply to a call that is no longer waiting serial=%s", serial)
            return
        pending.reply = msg
        pending.event.set()

    def fail_all(self, exc: DBusError) -> None:
        """Fail every waiting call with ``exc`` (the bus went away)."""
        for pending in self._pending.values():
            pending.error = exc
            pending.event.set()
