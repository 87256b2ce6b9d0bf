"""One D-Bus connection: the public face over the parts that do the work.

:class:`Connection` wires together the receive loop (:mod:`.receive`),
answering calls (:mod:`.answer`), outgoing calls (:mod:`.calls`), signal
subscriptions (:mod:`.signals`) and name-owner tracking (:mod:`.owners`),
all sharing one :class:`~.wire.Wire`, one writer and one serial counter;
it also exports objects and emits signals.

Open it with :func:`open_connection` as an ``async with`` resource; it owns
its tasks (receive loop, writer, handler nursery) and cancels them on exit.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import trio
from trio_util import AsyncValue

from .answer import Answerer
from .calls import BUS_NAME, BUS_PATH, Calls
from .dispatch import Dispatcher
from .errors import FAILED
from .groups import unwrap_group
from .interface import Interface
from .match import MatchRule
from .objects import OBJECT_MANAGER, PROPERTIES, ObjectTree
from .owners import NameOwners
from .receive import Receiver
from .signals import SignalMessage, Subscription, Subscriptions
from .stats import ConnectionStats
from .transport import (
    BusUnreachable,
    MessageReader,
    MessageWriter,
    open_authenticated_socket,
    resolve_bus_address,
)
from .wire import Wire

__all__ = [
    "BUS_NAME",
    "BUS_PATH",
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_HANDLER_TIMEOUT",
    "DEFAULT_TIMEOUT_ERROR",
    "DEFAULT_WRITE_BUFFER",
    "Connection",
    "ConnectionStats",
    "SignalMessage",
    "Subscription",
    "open_connection",
]

log = logging.getLogger(__name__)

DEFAULT_CALL_TIMEOUT = 2.5
DEFAULT_HANDLER_TIMEOUT = 5.0
DEFAULT_TIMEOUT_ERROR = (FAILED, "timeout")  # what a handler past its deadline answers
DEFAULT_WRITE_BUFFER = 64 << 10  # emitters yield to the writer past this


class Connection:
    """A D-Bus connection serving exported objects and making calls.

    Construct through :func:`open_connection`.
    """

    def __init__(
        self,
        reader: MessageReader,
        writer: MessageWriter,
        *,
        wire: Wire,
        enable_fds: bool,
        call_timeout: float,
        handler_timeout: float,
        timeout_error: tuple[str, str],
    ) -> None:
        self._writer = writer
        self._wire = wire
        self._serials = itertools.count(1)
        self.unique_name = ""
        self.stats = ConnectionStats()
        self.closed = trio.Event()
        self.tree = ObjectTree()
        self._calls = Calls(wire, writer, self._serials, self.closed, self.stats,
                            timeout=call_timeout)
        # Watches look owners up through the connection's own get_name_owner,
        # bound late, so whatever answers it for the connection answers them too.
        self._owners = NameOwners(self._calls, lambda name: self.get_name_owner(name))
        self._subscriptions = Subscriptions(self._calls, self._owners, self.closed, self.stats)
        self.dispatcher = Dispatcher(self.tree, self._owners.current,
                                     self.emit_properties_changed_nowait)
        self._answerer = Answerer(self.dispatcher, wire, writer, self._serials, self.closed,
                                  self.stats, enable_fds=enable_fds,
                                  handler_timeout=handler_timeout, timeout_error=timeout_error)
        self._receiver = Receiver(reader, on_call=self._answerer.on_call,
                                  on_signal=self._subscriptions.on_signal,
                                  on_reply=self._calls.on_reply, on_lost=self._calls.fail_all,
                                  closed=self.closed)

    @property
    def writer(self) -> MessageWriter:
        return self._writer

    @property
    def call_timeout(self) -> float:
        """The deadline of a call made without its own ``timeout``."""
        return self._calls.timeout

    @call_timeout.setter
    def call_timeout(self, value: float) -> None:
        self._calls.timeout = value

    @property
    def handler_timeout(self) -> float:
        """The deadline of an awaitable handler whose method sets none."""
        return self._answerer.handler_timeout

    @handler_timeout.setter
    def handler_timeout(self, value: float) -> None:
        self._answerer.handler_timeout = value

    @property
    def timeout_error(self) -> tuple[str, str]:
        """The error (name, text) a handler past its deadline answers."""
        return self._answerer.timeout_error

    @timeout_error.setter
    def timeout_error(self, value: tuple[str, str]) -> None:
        self._answerer.timeout_error = value

    # ------------------------------------------------------------------
    # calls
    # ------------------------------------------------------------------
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
        return await self._calls.call(destination, path, interface, member, signature, body,
                                      timeout=timeout, no_reply=no_reply)

    def call_nowait(self, destination: str, path: str, interface: str, member: str,
                    signature: str = "", body: Sequence[Any] = ()) -> None:
        """Send a method call flagged NO_REPLY_EXPECTED, without waiting at all."""
        self._calls.call_nowait(destination, path, interface, member, signature, body)

    async def call_bus(self, member: str, signature: str = "", body: Sequence[Any] = ()) -> Any:
        """Call the bus daemon itself; returns the first reply value or None."""
        return await self._calls.call_bus(member, signature, body)

    # ------------------------------------------------------------------
    # emitting signals
    # ------------------------------------------------------------------
    def _signal_bytes(
        self, path: str, interface: str, member: str, signature: str, body: tuple[Any, ...]
    ) -> bytes:
        return self._wire.signal(path, interface, member, signature, body, next(self._serials))

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

    def _properties_changed_bytes(
        self, path: str, interface: str, changed: Mapping[str, Any], invalidated: Iterable[str]
    ) -> bytes:
        if len(changed) == 1 and type(invalidated) in (tuple, list) and not invalidated:
            # One changed property and nothing invalidated, as every GATT
            # notification is: the wire keeps a template for this shape.
            ((name, value),) = changed.items()
            signature = self.tree.lookup_property(path, interface, name).signature
            return self._wire.property_changed(path, interface, name, signature, value,
                                               next(self._serials))
        variants = {
            name: (self.tree.lookup_property(path, interface, name).signature, value)
            for name, value in changed.items()
        }
        return self._signal_bytes(path, PROPERTIES, "PropertiesChanged", "sa{sv}as",
                                  (interface, variants, list(invalidated)))

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
                self._owners.ensure_watch(iface.allowed_caller)
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
        """The unique name owning ``name`` now, asked of the bus ("" if none)."""
        return await self._owners.get_name_owner(name)

    async def watch_name_owner(self, name: str) -> AsyncValue[str]:
        """An :class:`AsyncValue` holding the unique name owning ``name`` ("" if none).

        Kept current from ``NameOwnerChanged``; watching is set up once per name.
        A NameOwnerChanged that arrives while GetNameOwner is in flight is
        newer than its answer, so the answer is then dropped.
        """
        return await self._owners.watch(name)

    def current_owner(self, name: str) -> str | None:
        """The tracked owner of ``name``, or None when it is not tracked yet."""
        return self._owners.current(name)

    # ------------------------------------------------------------------
    # subscriptions
    # ------------------------------------------------------------------
    def subscribe(
        self, *rules: MatchRule, capacity: int = 1024, overflow_timeout: float = 1.0
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[SignalMessage]]:
        """Receive signals matching any of ``rules`` into one bounded channel.

        When the channel is full the receive loop waits up to
        ``overflow_timeout`` for room (back-pressure), then drops the signal,
        counting and logging it. Leaving the block, however it is left
        (cancellation included), removes the match rules from the bus.
        """
        return self._subscriptions.subscribe(*rules, capacity=capacity,
                                             overflow_timeout=overflow_timeout)

    # ------------------------------------------------------------------
    # the receive loop
    # ------------------------------------------------------------------
    def pause_receiving(self) -> None:
        """Stop reading and handling messages until :meth:`resume_receiving`.

        For tests that simulate a stalled peer: what others send piles up in
        the bus daemon and then in their own buffers. Messages already read
        wait, unhandled, like the rest.
        """
        self._receiver.pause()

    def resume_receiving(self) -> None:
        self._receiver.resume()

    # ------------------------------------------------------------------
    # lifetime
    # ------------------------------------------------------------------
    def _internal_tasks(self) -> tuple[Callable[..., Awaitable[None]], ...]:
        """What runs while the connection is open: the receive loop, the writer,
        and the nursery of awaitable handlers (which reports when it is ready)."""
        return self._receiver.run, self._writer.run, self._answerer.run

    def _started(self, nursery: trio.Nursery) -> None:
        self._owners.nursery = nursery

    def _stopped(self) -> None:
        self._answerer.stop()
        self.closed.set()


@asynccontextmanager
async def open_connection(
    bus: str = "SYSTEM",
    *,
    enable_fds: bool = True,
    call_timeout: float = DEFAULT_CALL_TIMEOUT,
    handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
    timeout_error: tuple[str, str] = DEFAULT_TIMEOUT_ERROR,
    max_write_buffer: int = DEFAULT_WRITE_BUFFER,
) -> AsyncIterator[Connection]:
    """Connect to ``bus`` (``"SYSTEM"``, ``"SESSION"`` or an address) and serve.

    ``"SYSTEM"`` honours ``DBUS_SYSTEM_BUS_ADDRESS`` and ``"SESSION"``
    ``DBUS_SESSION_BUS_ADDRESS``. The connection's tasks live until the
    block exits; a lost bus raises :class:`ConnectionLost` out of it.
    ``timeout_error`` is the error a handler past its deadline answers.
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
    wire = Wire(enable_fds=enable_fds)
    conn = Connection(
        MessageReader(sock, enable_fds=enable_fds, parser=wire.parser()),
        MessageWriter(sock, max_buffer=max_write_buffer),
        wire=wire,
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

        receive_loop, write_loop, handlers = conn._internal_tasks()
        async with trio.open_nursery() as nursery:
            conn._started(nursery)
            try:
                await nursery.start(shielded, receive_loop)
                await nursery.start(shielded, write_loop)
                await nursery.start(shielded, handlers, True)
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
        conn._stopped()
        sock.close()
