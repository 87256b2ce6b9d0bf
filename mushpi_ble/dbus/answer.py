"""Answering incoming method calls: every call gets exactly one answer.

A call resolves to a handler through the :class:`~.dispatch.Dispatcher`.
Plain handlers are answered inline, from the receive loop; awaitable ones
run as tasks in the answerer's nursery under a deadline. The answer is the
value, the handler's :class:`DBusError`, a generic failure, the configured
deadline error, or "shutting down" on cancellation; ``NO_REPLY_EXPECTED``
is honoured. Replies to the preferred peer go in the writer's urgent lane,
ahead of queued signals.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio
from jeepney.low_level import HeaderFields, Message, MessageFlag

from .dispatch import Dispatcher
from .errors import FAILED, ConnectionLost, DBusError
from .interface import CallContext, Method
from .signature import body_from_result
from .stats import ConnectionStats
from .transport import MessageWriter
from .wire import Wire

log = logging.getLogger(__name__)

_SENDER, _PATH, _INTERFACE, _MEMBER, _SIGNATURE, _UNIX_FDS = (
    HeaderFields.sender, HeaderFields.path, HeaderFields.interface, HeaderFields.member,
    HeaderFields.signature, HeaderFields.unix_fds,
)
_NO_REPLY_FLAGS = frozenset(f for f in range(256) if f & MessageFlag.no_reply_expected)
# Handler results that are certainly not awaitable (skips inspect.isawaitable).
_PLAIN_RESULTS = frozenset((type(None), bytes, str, int, bool, float, list, dict, tuple))
_CONTEXT_CACHE_LIMIT = 512


class Answerer:
    """Answers the method calls one connection receives."""

    def __init__(self, dispatcher: Dispatcher, wire: Wire, writer: MessageWriter,
                 serials: Iterator[int], closed: trio.Event, stats: ConnectionStats, *,
                 enable_fds: bool, handler_timeout: float,
                 timeout_error: tuple[str, str],
                 urgent: Callable[[str | None], bool] = lambda _sender: False) -> None:
        """``urgent(sender)``: whether replies to ``sender`` go ahead of queued signals."""
        self._dispatcher = dispatcher
        self._wire = wire
        self._writer = writer
        self._serials = serials
        self._closed = closed
        self._stats = stats
        self._enable_fds = enable_fds
        self.handler_timeout = handler_timeout
        self.timeout_error = timeout_error
        self._urgent = urgent
        self._contexts: dict[tuple[Any, Any, Any, Any], CallContext] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery of awaitable handlers until cancelled."""
        async with trio.open_nursery() as handlers:
            self._nursery = handlers
            task_status.started()
            await trio.sleep_forever()

    def stop(self) -> None:
        """Refuse awaitable handlers from now on ("shutting down")."""
        self._nursery = None

    # -- replying ---------------------------------------------------------------------
    def _reply(self, call: Message, signature: str, body: tuple[Any, ...]) -> None:
        data, fds = self._wire.method_return(call, signature, body, next(self._serials))
        if self._send(call, data, fds):
            self._stats.calls_answered += 1

    def reply_error(self, call: Message, name: str, text: str) -> None:
        """Answer ``call`` with the error ``name`` (``text``)."""
        data, fds = self._wire.error(call, name, text, next(self._serials))
        if self._send(call, data, fds):
            self._stats.calls_answered += 1
            self._stats.errors_sent += 1

    def _send(self, call: Message, data: bytes, fds: Any) -> bool:
        """Queue an answer; False when the connection is already gone (a handler that
        outlived its connection has nobody left to answer, and must not fail for it)."""
        try:
            self._writer.write_nowait(data, fds,
                                      urgent=self._urgent(call.header.fields.get(_SENDER)))
        except ConnectionLost:
            self._stats.answers_lost += 1
            return False
        return True

    # -- handling -------------------------------------------------------------------
    def _context(self, sender: Any, path: Any, interface: Any, member: Any) -> CallContext:
        """The (immutable, so shareable) context of a call without descriptors."""
        key = (sender, path, interface, member)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = CallContext(sender=str(sender), path=str(path), interface=str(interface),
                              member=str(member))
            if len(self._contexts) >= _CONTEXT_CACHE_LIMIT:
                self._contexts.clear()
            self._contexts[key] = ctx
        return ctx

    def on_call(self, msg: Message) -> None:
        """Answer ``msg`` now, or start its awaitable handler under a deadline."""
        header = msg.header
        fields = header.fields
        self._stats.calls_received += 1
        no_reply = header.flags in _NO_REPLY_FLAGS
        if _UNIX_FDS in fields:
            ctx = CallContext(
                sender=str(fields.get(_SENDER, "")),
                path=str(fields.get(_PATH, "/")),
                interface=str(fields.get(_INTERFACE, "")),
                member=str(fields.get(_MEMBER, "")),
                fds=(tuple(a for a in msg.body if hasattr(a, "fileno"))
                     if self._enable_fds else ()),
            )
        else:
            get = fields.get
            key = (get(_SENDER, ""), get(_PATH, "/"), get(_INTERFACE, ""), get(_MEMBER, ""))
            ctx = self._contexts.get(key) or self._context(*key)
        signature = fields.get(_SIGNATURE, "")
        try:
            method = self._dispatcher.resolve(ctx, str(signature))
            handler = method.handler
            assert handler is not None
            result = handler(ctx, *msg.body)
            if type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
                if self._nursery is None:
                    _close_awaitable(result)
                    raise DBusError(FAILED, "connection is shutting down")
                self._stats.calls_deferred += 1
                self._nursery.start_soon(self._run_async, msg, method, ctx, result, no_reply)
                return
            body = body_from_result(method.out_signature, result)
            if not no_reply:
                self._reply(msg, method.out_signature, body)
        except DBusError as exc:
            if not no_reply:
                self.reply_error(msg, exc.name, exc.text)
        except Exception as exc:
            self._stats.handler_failures += 1
            log.exception("handler failed path=%s member=%s", ctx.path, ctx.member)
            if not no_reply:
                self.reply_error(msg, FAILED, f"{type(exc).__name__}: {exc}")

    async def _run_async(self, msg: Message, method: Method, ctx: CallContext,
                         pending: Awaitable[Any], no_reply: bool) -> None:
        timeout = method.timeout if method.timeout is not None else self.handler_timeout
        try:
            with trio.move_on_after(timeout) as scope:
                result = await pending
            if scope.cancelled_caught:
                self._stats.handler_timeouts += 1
                log.warning("handler deadline expired path=%s member=%s timeout_s=%.3f",
                            ctx.path, ctx.member, timeout)
                if not no_reply:
                    self.reply_error(msg, *self.timeout_error)
                return
            body = body_from_result(method.out_signature, result)
            if not no_reply:
                self._reply(msg, method.out_signature, body)
        except DBusError as exc:
            if not no_reply:
                self.reply_error(msg, exc.name, exc.text)
        except trio.Cancelled:
            if not no_reply and not self._closed.is_set():
                with contextlib.suppress(ConnectionLost):
                    self.reply_error(msg, FAILED, "shutting down")
            raise
        except Exception as exc:
            self._stats.handler_failures += 1
            log.exception("handler failed path=%s member=%s", ctx.path, ctx.member)
            if not no_reply:
                self.reply_error(msg, FAILED, f"{type(exc).__name__}: {exc}")


def _close_awaitable(pending: Awaitable[Any]) -> None:
    close = getattr(pending, "close", None)
    if close is not None:
        close()
