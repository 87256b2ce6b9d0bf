"""One D-Bus connection: a receive loop that answers every call, a writer,
outgoing calls with deadlines, signal subscriptions and name-owner tracking.

Open it with :func:`open_connection` as an ``async with`` resource; it owns
its tasks (receive loop, writer, handler nursery) and cancels them on exit.
"""

from __future__ import annotations

import array
import contextlib
import inspect
import itertools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import attrs
import trio
from jeepney.low_level import HeaderFields, Message, MessageFlag, MessageType
from jeepney.wrappers import (
    DBusAddress,
    new_error,
    new_method_call,
    new_method_return,
    new_signal,
)
from trio_util import AsyncValue

from .dispatch import Dispatcher
from .errors import (
    FAILED,
    NAME_HAS_NO_OWNER,
    CallTimeout,
    ConnectionLost,
    DBusError,
)
from .groups import unwrap_group
from .interface import CallContext, Interface, Method
from .match import MatchRule
from .objects import OBJECT_MANAGER, PROPERTIES, ObjectTree
from .signature import body_from_result
from .templates import (
    encode_method_call,
    encode_method_return,
    encode_properties_changed,
    encode_signal,
)
from .transport import (
    BusUnreachable,
    MessageReader,
    MessageWriter,
    open_authenticated_socket,
    resolve_bus_address,
)

log = logging.getLogger(__name__)

BUS_NAME = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"
DEFAULT_CALL_TIMEOUT = 2.5
DEFAULT_HANDLER_TIMEOUT = 5.0
DEFAULT_WRITE_BUFFER = 64 << 10  # emitters yield to the writer past this


@attrs.frozen
class SignalMessage:
    """A received signal, as delivered to a subscription."""

    sender: str
    path: str
    interface: str
    member: str
    signature: str
    body: tuple[Any, ...]


@attrs.define
class Subscription:
    """Live match rules and their one bounded delivery channel; counts overflow.

    Several rules may share the channel: their signals then arrive in the
    order the bus delivered them, which one task per rule could not keep.
    """

    rules: tuple[MatchRule, ...]
    channel: trio.MemorySendChannel[SignalMessage]
    overflow_timeout: float
    delivered: int = 0
    dropped: int = 0
    waited: int = 0


@attrs.define
class _PendingCall:
    event: trio.Event = attrs.Factory(trio.Event)
    reply: Message | None = None
    error: DBusError | None = None


@attrs.define
class ConnectionStats:
    """Counters a benchmark or status page can read."""

    calls_received: int = 0
    calls_answered: int = 0
    errors_sent: int = 0
    handler_timeouts: int = 0
    handler_failures: int = 0
    late_replies: int = 0
    signals_received: int = 0
    signals_dropped: int = 0


_SENDER, _PATH, _INTERFACE, _MEMBER, _SIGNATURE, _UNIX_FDS = (
    HeaderFields.sender, HeaderFields.path, HeaderFields.interface, HeaderFields.member,
    HeaderFields.signature, HeaderFields.unix_fds,
)
_NO_REPLY_FLAGS = frozenset(f for f in range(256) if f & MessageFlag.no_reply_expected)
# Handler results that are certainly not awaitable (skips inspect.isawaitable).
_PLAIN_RESULTS = frozenset((type(None), bytes, str, int, bool, float, list, dict, tuple))


class Connection:
    """A D-Bus connection serving exported objects and making calls.

    Construct through :func:`open_connection`.
    """

    def __init__(
        self,
        reader: MessageReader,
        writer: MessageWriter,
        *,
        enable_fds: bool,
        call_timeout: float,
        handler_timeout: float,
        timeout_error: tuple[str, str],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._enable_fds = enable_fds
        self.call_timeout = call_timeout
        self.handler_timeout = handler_timeout
        self.timeout_error = timeout_error
        self.unique_name = ""
        self.stats = ConnectionStats()
        self.tree = ObjectTree()
        self.dispatcher = Dispatcher(self.tree, self.current_owner,
                                     self.emit_properties_changed_nowait)
        self._serials = itertools.count(1)
        self._pending: dict[int, _PendingCall] = {}
        self._subscriptions: list[Subscription] = []
        self._owners: dict[str, AsyncValue[str]] = {}
        self._owners_ready: dict[str, trio.Event] = {}
        self._owner_changes: dict[str, int] = {}
        self._handler_nursery: trio.Nursery | None = None
        self._system_nursery: trio.Nursery | None = None
        self._resume: trio.Event | None = None
        self.closed = trio.Event()

    @property
    def writer(self) -> MessageWriter:
        return self._writer

    # ------------------------------------------------------------------
    # sending
    # ------------------------------------------------------------------
    def _serialise(self, msg: Message, serial: int) -> tuple[bytes, array.array[int] | None]:
        if self._enable_fds:
            fds: array.array[int] = array.array("i")
            data = cast(bytes, msg.serialise(serial, fds=fds))
            return data, (fds if len(fds) else None)
        return cast(bytes, msg.serialise(serial)), None

    def _send_now(self, msg: Message) -> int:
        serial = next(self._serials)
        data, fds = self._serialise(msg, serial)
        self._writer.write_nowait(data, fds)
        return serial

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
        """Call a method and return the reply body.

        Raises :class:`DBusError` for an error reply, :class:`CallTimeout` when
        no reply arrives within ``timeout`` (default: the connection's call
        timeout), :class:`ConnectionLost` if the bus goes away. A reply that
        arrives after the deadline is discarded.
        """
        if self.closed.is_set():
            raise ConnectionLost()
        args = (destination, path, interface, member, signature, tuple(body))
        if no_reply:
            self.call_nowait(*args)
            await trio.lowlevel.checkpoint()
            return ()
        deadline = self.call_timeout if timeout is None else timeout
        pending = _PendingCall()
        serial = next(self._serials)
        self._pending[serial] = pending
        try:
            data, fds = self._call_bytes(*args, serial, no_reply=False)
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

    def _call_bytes(
        self, destination: str, path: str, interface: str, member: str, signature: str,
        body: tuple[Any, ...], serial: int, *, no_reply: bool,
    ) -> tuple[bytes, array.array[int] | None]:
        flags = MessageFlag.no_reply_expected if no_reply else 0
        try:
            return encode_method_call(destination, path, interface, member, signature, body,
                                      serial, flags), None
        except Exception:
            pass  # not for the fast encoder: jeepney builds it, or raises its own error
        msg = new_method_call(
            DBusAddress(path, bus_name=destination, interface=interface),
            member,
            signature or None,
            body,
        )
        msg.header.flags |= flags
        return self._serialise(msg, serial)

    def _signal_bytes(
        self, path: str, interface: str, member: str, signature: str, body: tuple[Any, ...]
    ) -> bytes:
        serial = next(self._serials)
        try:
            return encode_signal(path, interface, member, signature, body, serial)
        except Exception:
            pass  # not for the fast encoder: jeepney builds it, or raises its own error
        msg = new_signal(DBusAddress(path, interface=interface), member, signature or None, body)
        return self._serialise(msg, serial)[0]

    async def call_bus(self, member: str, signature: str = "", body: Sequence[Any] = ()) -> Any:
        """Call the bus daemon itself; returns the first reply value or None."""
        reply = await self.call(BUS_NAME, BUS_PATH, BUS_NAME, member, signature, body)
        return reply[0] if reply else None

    def emit_signal_nowait(
        self, path: str, interface: str, member: str, signature: str = "", body: Sequence[Any] = ()
    ) -> None:
        """Queue a signal for the next batched write; never waits."""
        self._writer.queue(self._signal_bytes(path, interface, member, signature, tuple(body)))

    async def emit_signal(
        self, path: str, interface: str, member: str, signature: str = "", body: Sequence[Any] = ()
    ) -> None:
        """Send a signal; waits while the outgoing buffer is full (back-pressure)."""
        await self._writer.write(
            self._signal_bytes(path, interface, member, signature, tuple(body)))

    def _changed_body(
        self, path: str, interface: str, changed: Mapping[str, Any], invalidated: Iterable[str]
    ) -> tuple[Any, ...]:
        variants = {
            name: (self.tree.lookup_property(path, interface, name).signature, value)
            for name, value in changed.items()
        }
        return (interface, variants, list(invalidated))

    def _properties_changed_bytes(
        self, path: str, interface: str, changed: Mapping[str, Any], invalidated: Iterable[str]
    ) -> bytes:
        if len(changed) == 1 and type(invalidated) in (tuple, list) and not invalidated:
            # One changed property and nothing invalidated, as every GATT
            # notification is: a pre-serialised template, only the value written.
            ((name, value),) = changed.items()
            signature = self.tree.lookup_property(path, interface, name).signature
            serial = next(self._serials)
            try:
                return encode_properties_changed(path, interface, name, signature, value, serial)
            except Exception:
                pass  # not for the fast encoder: jeepney builds it, or raises its own error
            msg = new_signal(DBusAddress(path, interface=PROPERTIES), "PropertiesChanged",
                             "sa{sv}as", (interface, {name: (signature, value)}, []))
            return self._serialise(msg, serial)[0]
        body = self._changed_body(path, interface, changed, invalidated)
        return self._signal_bytes(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", body)

    async def emit_properties_changed(
        self,
        path: str,
        interface: str,
        changed: Mapping[str, Any],
        invalidated: Iterable[str] = (),
    ) -> None:
        """Emit PropertiesChanged; signatures come from the exported declaration."""
        await self._writer.write(
            self._properties_changed_bytes(path, interface, changed, invalidated))

    def emit_properties_changed_nowait(
        self,
        path: str,
        interface: str,
        changed: Mapping[str, Any],
        invalidated: Iterable[str] = (),
    ) -> None:
        self._writer.queue(self._properties_changed_bytes(path, interface, changed, invalidated))

    # ------------------------------------------------------------------
    # exporting
    # ------------------------------------------------------------------
    def export(self, path: str, interfaces: Sequence[Interface]) -> None:
        """Export interfaces at ``path``; ObjectManager roots above announce them."""
        added = self.tree.add(path, interfaces)
        for iface in added:
            if iface.allowed_caller and not iface.allowed_caller.startswith(":"):
                self._ensure_owner_watch(iface.allowed_caller)
        if not added:
            return
        props = {iface.name: iface.property_values() for iface in added}
        for root in self.tree.managers_of(path):
            self.emit_signal_nowait(root, OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}",
                                    (path, props))

    def unexport(self, path: str, interface_names: Iterable[str] | None = None) -> None:
        """Remove interfaces (all by default) at ``path``, announcing the removal."""
        removed = self.tree.remove(path, interface_names)
        if not removed:
            return
        for root in self.tree.managers_of(path):
            self.emit_signal_nowait(root, OBJECT_MANAGER, "InterfacesRemoved", "oas",
                                    (path, removed))

    def add_object_manager(self, root: str) -> None:
        """Serve ``org.freedesktop.DBus.ObjectManager`` at ``root``."""
        self.tree.add_manager(root)

    def remove_object_manager(self, root: str) -> None:
        self.tree.remove_manager(root)

    # ------------------------------------------------------------------
    # names
    # ------------------------------------------------------------------
    async def request_name(self, name: str, flags: int = 0) -> int:
        return int(await self.call_bus("RequestName", "su", (name, flags)))

    async def release_name(self, name: str) -> int:
        return int(await self.call_bus("ReleaseName", "s", (name,)))

    async def get_name_owner(self, name: str) -> str:
        try:
            return str(await self.call_bus("GetNameOwner", "s", (name,)))
        except DBusError as exc:
            if exc.name == NAME_HAS_NO_OWNER:
                return ""
            raise

    def _ensure_owner_watch(self, name: str) -> None:
        if name not in self._owners and self._system_nursery is not None:
            self._system_nursery.start_soon(self._watch_in_background, name)

    async def _watch_in_background(self, name: str) -> None:
        try:
            await self.watch_name_owner(name)
        except DBusError as exc:  # callers restricted to ``name`` stay refused meanwhile
            log.warning("cannot follow the owner of name=%s error=%s", name, exc)

    async def watch_name_owner(self, name: str) -> AsyncValue[str]:
        """An :class:`AsyncValue` holding the unique name owning ``name`` ("" if none).

        Kept current from ``NameOwnerChanged``; watching is set up once per name.
        A NameOwnerChanged that arrives while GetNameOwner is in flight is
        newer than its answer, so the answer is then dropped.
        """
        value = self._owners.get(name)
        if value is not None:
            await self._owners_ready[name].wait()
            return value
        value = AsyncValue("")
        ready = trio.Event()
        self._owners[name] = value
        self._owners_ready[name] = ready
        rule = MatchRule(sender=BUS_NAME, interface=BUS_NAME, member="NameOwnerChanged", arg0=name)
        try:
            await self.call_bus("AddMatch", "s", (rule.to_string(),))
            changes_before = self._owner_changes.get(name, 0)
            owner = await self.get_name_owner(name)
            if self._owner_changes.get(name, 0) == changes_before:
                value.value = owner
        except BaseException:
            del self._owners[name]
            del self._owners_ready[name]
            ready.set()  # wake other waiters; they see "" (unknown)
            raise
        ready.set()
        return value

    def current_owner(self, name: str) -> str | None:
        """The tracked owner of ``name``, or None when it is not tracked yet."""
        if name.startswith(":") or name == BUS_NAME:
            return name
        ready = self._owners_ready.get(name)
        if ready is None or not ready.is_set():
            return None
        return str(self._owners[name].value)

    # ------------------------------------------------------------------
    # subscriptions
    # ------------------------------------------------------------------
    @asynccontextmanager
    async def subscribe(
        self, *rules: MatchRule, capacity: int = 1024, overflow_timeout: float = 1.0
    ) -> AsyncIterator[trio.MemoryReceiveChannel[SignalMessage]]:
        """Receive signals matching any of ``rules`` into one bounded channel.

        When the channel is full the receive loop waits up to
        ``overflow_timeout`` for room (back-pressure), then drops the signal,
        counting and logging it. Leaving the block, however it is left
        (cancellation included), removes the match rules from the bus.
        """
        if not rules:
            raise ValueError("subscribe() needs at least one match rule")
        send, recv = trio.open_memory_channel[SignalMessage](capacity)
        sub = Subscription(tuple(rules), send, overflow_timeout)
        for rule in rules:
            if rule.sender and not rule.sender.startswith(":") and rule.sender != BUS_NAME:
                await self.watch_name_owner(rule.sender)
        self._subscriptions.append(sub)
        added: list[MatchRule] = []
        try:
            for rule in rules:
                await self.call_bus("AddMatch", "s", (rule.to_string(),))
                added.append(rule)
            yield recv
        finally:
            self._subscriptions.remove(sub)
            send.close()
            recv.close()
            for rule in added:  # no await: must also work inside a cancelled scope
                self._remove_match_nowait(rule)

    def _remove_match_nowait(self, rule: MatchRule) -> None:
        if self.closed.is_set():
            return
        with contextlib.suppress(ConnectionLost):
            self.call_nowait(BUS_NAME, BUS_PATH, BUS_NAME, "RemoveMatch", "s",
                             (rule.to_string(),))

    def call_nowait(self, destination: str, path: str, interface: str, member: str,
                    signature: str = "", body: Sequence[Any] = ()) -> None:
        """Send a method call flagged NO_REPLY_EXPECTED, without waiting at all."""
        if self.closed.is_set():
            raise ConnectionLost()
        data, fds = self._call_bytes(destination, path, interface, member, signature,
                                     tuple(body), next(self._serials), no_reply=True)
        self._writer.write_nowait(data, fds)

    # ------------------------------------------------------------------
    # the receive loop
    # ------------------------------------------------------------------
    def pause_receiving(self) -> None:
        """Stop reading and handling messages until :meth:`resume_receiving`.

        For tests that simulate a stalled peer: what others send piles up in
        the bus daemon and then in their own buffers. Messages already read
        wait, unhandled, like the rest.
        """
        if self._resume is None:
            self._resume = trio.Event()

    def resume_receiving(self) -> None:
        if self._resume is not None:
            self._resume.set()
            self._resume = None

    async def _receive_loop(self) -> None:
        try:
            while True:
                if self._resume is not None:
                    await self._resume.wait()
                for msg in await self._reader.receive_batch():
                    if self._resume is not None:
                        await self._resume.wait()
                    kind = msg.header.message_type
                    if kind is MessageType.method_call:
                        self._handle_call(msg)
                    elif kind is MessageType.signal:
                        await self._handle_signal(msg)
                    else:
                        self._handle_reply(msg)
        except ConnectionLost as exc:
            self._fail_pending(exc)
            raise
        finally:
            self.closed.set()

    def _fail_pending(self, exc: DBusError) -> None:
        for pending in self._pending.values():
            pending.error = exc
            pending.event.set()

    def _handle_reply(self, msg: Message) -> None:
        serial = msg.header.fields.get(HeaderFields.reply_serial)
        pending = self._pending.get(serial) if serial is not None else None
        if pending is None:
            self.stats.late_replies += 1
            log.debug("discarding reply to a call that is no longer waiting serial=%s", serial)
            return
        pending.reply = msg
        pending.event.set()

    async def _handle_signal(self, msg: Message) -> None:
        fields = msg.header.fields
        self.stats.signals_received += 1
        signal = SignalMessage(
            sender=str(fields.get(HeaderFields.sender, "")),
            path=str(fields.get(HeaderFields.path, "")),
            interface=str(fields.get(HeaderFields.interface, "")),
            member=str(fields.get(HeaderFields.member, "")),
            signature=str(fields.get(HeaderFields.signature, "")),
            body=tuple(msg.body),
        )
        if signal.member == "NameOwnerChanged" and signal.sender == BUS_NAME:
            name, _old, new = signal.body
            watched = self._owners.get(name)
            if watched is not None:
                self._owner_changes[name] = self._owner_changes.get(name, 0) + 1
                watched.value = new
        for sub in list(self._subscriptions):
            if any(self._matches(rule, signal) for rule in sub.rules):
                await self._deliver(sub, signal)

    def _matches(self, rule: MatchRule, signal: SignalMessage) -> bool:
        owner = self.current_owner(rule.sender) if rule.sender else None
        return rule.matches(sender=signal.sender, path=signal.path, interface=signal.interface,
                            member=signal.member, body=signal.body, sender_owner=owner)

    async def _deliver(self, sub: Subscription, signal: SignalMessage) -> None:
        try:
            sub.channel.send_nowait(signal)
            sub.delivered += 1
            return
        except trio.WouldBlock:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        sub.waited += 1
        with trio.move_on_after(sub.overflow_timeout):
            try:
                await sub.channel.send(signal)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            sub.delivered += 1
            return
        sub.dropped += 1
        self.stats.signals_dropped += 1
        if sub.dropped == 1 or sub.dropped % 1000 == 0:
            log.warning(
                "subscription overflow rules=%s dropped=%d capacity=%s",
                " | ".join(rule.to_string() for rule in sub.rules),
                sub.dropped,
                sub.channel.statistics().max_buffer_size,
            )

    # ------------------------------------------------------------------
    # answering calls
    # ------------------------------------------------------------------
    def _reply(self, call: Message, signature: str, body: tuple[Any, ...]) -> None:
        serial = next(self._serials)
        fds = None
        try:
            data = encode_method_return(call, signature, body, serial)
        except Exception:
            data = None  # not for the fast encoder: jeepney builds it, or raises its own error
        if data is None:
            data, fds = self._serialise(new_method_return(call, signature or None, body), serial)
        self._writer.write_nowait(data, fds)
        self.stats.calls_answered += 1

    def _reply_error(self, call: Message, name: str, text: str) -> None:
        self._send_now(new_error(call, name, "s", (text,)))
        self.stats.calls_answered += 1
        self.stats.errors_sent += 1

    def _handle_call(self, msg: Message) -> None:
        header = msg.header
        fields = header.fields
        self.stats.calls_received += 1
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
            ctx = _call_context(fields.get(_SENDER, ""), fields.get(_PATH, "/"),
                                fields.get(_INTERFACE, ""), fields.get(_MEMBER, ""))
        signature = str(fields.get(_SIGNATURE, ""))
        try:
            method = self.dispatcher.resolve(ctx, signature)
            assert method.handler is not None
            result = method.handler(ctx, *msg.body)
            if type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
                if self._handler_nursery is None:
                    _close_awaitable(result)
                    raise DBusError(FAILED, "connection is shutting down")
                self._handler_nursery.start_soon(self._run_async, msg, method, ctx, result,
                                                 no_reply)
                return
            body = body_from_result(method.out_signature, result)
            if not no_reply:
                self._reply(msg, method.out_signature, body)
        except DBusError as exc:
            if not no_reply:
                self._reply_error(msg, exc.name, exc.text)
        except Exception as exc:
            self.stats.handler_failures += 1
            log.exception("handler failed path=%s member=%s", ctx.path, ctx.member)
            if not no_reply:
                self._reply_error(msg, FAILED, f"{type(exc).__name__}: {exc}")

    async def _run_async(self, msg: Message, method: Method, ctx: CallContext,
                         pending: Awaitable[Any], no_reply: bool) -> None:
        timeout = method.timeout if method.timeout is not None else self.handler_timeout
        try:
            with trio.move_on_after(timeout) as scope:
                result = await pending
            if scope.cancelled_caught:
                self.stats.handler_timeouts += 1
                log.warning("handler deadline expired path=%s member=%s timeout_s=%.3f",
                            ctx.path, ctx.member, timeout)
                if not no_reply:
                    self._reply_error(msg, *self.timeout_error)
                return
            body = body_from_result(method.out_signature, result)
            if not no_reply:
                self._reply(msg, method.out_signature, body)
        except DBusError as exc:
            if not no_reply:
                self._reply_error(msg, exc.name, exc.text)
        except trio.Cancelled:
            if not no_reply and not self.closed.is_set():
                with contextlib.suppress(ConnectionLost):
                    self._reply_error(msg, FAILED, "shutting down")
            raise
        except Exception as exc:
            self.stats.handler_failures += 1
            log.exception("handler failed path=%s member=%s", ctx.path, ctx.member)
            if not no_reply:
                self._reply_error(msg, FAILED, f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------
    # lifetime
    # ------------------------------------------------------------------
    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as handlers:
            self._handler_nursery = handlers
            task_status.started()
            await trio.sleep_forever()


_CONTEXTS: dict[tuple[Any, Any, Any, Any], CallContext] = {}


def _call_context(sender: Any, path: Any, interface: Any, member: Any) -> CallContext:
    """The (immutable, so shareable) context of a call without descriptors."""
    key = (sender, path, interface, member)
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = CallContext(sender=str(sender), path=str(path), interface=str(interface),
                          member=str(member))
        if len(_CONTEXTS) >= 512:
            _CONTEXTS.clear()
        _CONTEXTS[key] = ctx
    return ctx


def _close_awaitable(pending: Awaitable[Any]) -> None:
    close = getattr(pending, "close", None)
    if close is not None:
        close()


@asynccontextmanager
async def open_connection(
    bus: str = "SYSTEM",
    *,
    enable_fds: bool = True,
    call_timeout: float = DEFAULT_CALL_TIMEOUT,
    handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
    timeout_error: tuple[str, str] = ("org.bluez.Error.Failed", "timeout"),
    max_write_buffer: int = DEFAULT_WRITE_BUFFER,
) -> AsyncIterator[Connection]:
    """Connect to ``bus`` (``"SYSTEM"``, ``"SESSION"`` or an address) and serve.

    ``"SYSTEM"`` honours ``DBUS_SYSTEM_BUS_ADDRESS`` and ``"SESSION"``
    ``DBUS_SESSION_BUS_ADDRESS``. The connection's tasks live until the
    block exits; a lost bus raises :class:`ConnectionLost` out of it.
    """
    if not (call_timeout > 0 and math.isfinite(call_timeout)):
        raise ValueError("call_timeout must be a positive number of seconds")
    address = resolve_bus_address(bus)
    try:
        with trio.fail_after(call_timeout):
            sock = await open_authenticated_socket(address, enable_fds=enable_fds)
    except trio.TooSlowError:
        raise BusUnreachable(f"D-Bus at {address!r} did not answer within "
                             f"{call_timeout:.3g} s") from None
    conn = Connection(
        MessageReader(sock, enable_fds=enable_fds),
        MessageWriter(sock, max_buffer=max_write_buffer),
        enable_fds=enable_fds,
        call_timeout=call_timeout,
        handler_timeout=handler_timeout,
        timeout_error=timeout_error,
    )
    try:
        # The connection's own tasks are shielded from the caller's cancellation
        # so that cleanup in the body (unregistering, say) can still make calls;
        # they stop when the body is left, however it is left.
        internal: list[trio.CancelScope] = []

        async def shielded(run: Callable[..., Awaitable[None]], reports_start: bool = False,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope(shield=True) as scope:
                internal.append(scope)
                if reports_start:
                    await run(task_status=task_status)
                else:
                    task_status.started()
                    await run()

        async with trio.open_nursery() as nursery:
            conn._system_nursery = nursery
            try:
                await nursery.start(shielded, conn._receive_loop)
                await nursery.start(shielded, conn.writer.run)
                await nursery.start(shielded, conn._run, True)
                conn.unique_name = str(await conn.call_bus("Hello"))
                log.debug("connected address=%s unique_name=%s", address, conn.unique_name)
                yield conn
            finally:
                for scope in internal:
                    scope.cancel()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise unwrap_group(group) from None
    finally:
        conn._handler_nursery = None
        conn.closed.set()
        sock.close()
