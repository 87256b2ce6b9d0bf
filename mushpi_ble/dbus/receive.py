"""The receive loop: the one task that reads every message and routes it.

Method calls go to the answerer, signals to the subscriptions, returns and
errors to the calls waiting for them. Nothing else reads the socket, so a
reply never waits behind a task that is not running.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import trio
from jeepney.low_level import Message, MessageType

from .errors import ConnectionLost, DBusError
from .transport import MessageReader

_METHOD_CALL, _SIGNAL = MessageType.method_call, MessageType.signal


class Receiver:
    """Reads and routes the messages of one connection; can be paused."""

    def __init__(
        self,
        reader: MessageReader,
        *,
        on_call: Callable[[Message], None],
        on_signal: Callable[[Message], Awaitable[None]],
        on_reply: Callable[[Message], None],
        on_lost: Callable[[DBusError], None],
        closed: trio.Event,
        order: Callable[[list[Message]], Iterable[Message]] = lambda batch: batch,
    ) -> None:
        """``order`` may reorder each batch read (the preferred peer's messages first)."""
        self._reader = reader
        self._on_call = on_call
        self._on_signal = on_signal
        self._on_reply = on_reply
        self._on_lost = on_lost
        self._closed = closed
        self._order = order
        self._resume: trio.Event | None = None

    def pause(self) -> None:
        """Stop reading and handling messages until :meth:`resume`."""
        if self._resume is None:
            self._resume = trio.Event()

    def resume(self) -> None:
        if self._resume is not None:
            self._resume.set()
            self._resume = None

    async def run(self) -> None:
        """Route messages until the bus goes away; then fail the waiting calls."""
        on_call, on_signal, on_reply = self._on_call, self._on_signal, self._on_reply
        order = self._order
        reader = self._reader
        parsed, read_available, sock = reader.parsed, reader.read_available, reader.sock
        wait_readable = trio.lowlevel.wait_readable
        try:
            while True:
                if self._resume is not None:
                    await self._resume.wait()
                batch = parsed()
                if not batch:  # the wait is here, not in a helper: one frame less to resume
                    await wait_readable(sock)
                    read_available()
                    continue
                for msg in order(batch):
                    if self._resume is not None:
                        await self._resume.wait()
                    kind = msg.header.message_type
                    if kind is _METHOD_CALL:
                        on_call(msg)
                    elif kind is _SIGNAL:
                        await on_signal(msg)
                    else:
                        on_reply(msg)
        except ConnectionLost as exc:
            self._on_lost(exc)
            raise
        finally:
            self._closed.set()
