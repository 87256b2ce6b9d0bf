"""A GATT application exported to BlueZ: objects, handlers, notifications.

Turns :class:`~.model.Service` descriptions into ``GattService1`` /
``GattCharacteristic1`` objects under one root with
an ObjectManager, answers bluetoothd's calls (offset reads, writes,
StartNotify/StopNotify) and sends notifications as PropertiesChanged on
``Value`` — on the same connection that registered, as bluetoothd requires.
AcquireNotify and each phone's socket are :mod:`.notify_sockets`' job, the
pieces of a long write :mod:`.long_write`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

import attrs
import trio

from mushpi_ble.dbus import CallContext, Connection, DBusError, Interface, Method, Property

from .access import READ, WRITE, AccessGate
from .devices import Central
from .errors import NOT_PERMITTED, NOT_SUPPORTED, GattError
from .in_flight import BLUEZ_AFFECTED, InFlight
from .long_write import LongWrites
from .model import (
    Characteristic,
    IncompleteValue,
    ReadHandler,
    Service,
    slice_for_offset,
    validate_services,
)
from .names import (
    BLUEZ,
    GATT_CHARACTERISTIC_IFACE,
    GATT_MANAGER_IFACE,
    GATT_SERVICE_IFACE,
)
from .notify_sockets import CLOSE_GRACE_S, DeviceSeen, NotifySockets
from .requests import ReadRequest, WriteRequest
from .resubscribe import REPLAY_SETTLE_S, replay_on_reconnect
from .state import CharacteristicState

log = logging.getLogger(__name__)

OPTIONS = "a{sv}"
# A handler's own deadline should fire first; the D-Bus layer's is the backstop.
DEADLINE_MARGIN_S = 0.25


async def _read_later(value: bytes | Awaitable[bytes], offset: int) -> bytes:
    """A read handler's answer, given now or awaited, sliced at ``offset``."""
    return slice_for_offset(value if isinstance(value, bytes) else await value, offset)


class GattApplication:
    """One registered (or registrable) set of services on a connection."""

    def __init__(
        self,
        conn: Connection,
        root: str,
        services: Sequence[Service],
        *,
        nursery: trio.Nursery,
        handler_timeout: float,
        allowed_caller: str | None = BLUEZ,
        on_device_seen: DeviceSeen | None = None,
        long_write_timeout: float = 30.0,
        access: AccessGate | None = None,
        close_grace: float = CLOSE_GRACE_S,
    ) -> None:
        """``access``: who may read and write (flags for bluetoothd and our own check);
        None is open access."""
        validate_services(services)
        self._conn = conn
        self.root = root
        self.services = tuple(services)
        self._nursery = nursery
        self._handler_timeout = handler_timeout
        self._allowed_caller = allowed_caller
        self._on_device_seen = on_device_seen
        self._long_writes = LongWrites(long_write_timeout)
        self.in_flight = InFlight()
        self.access = access
        self._states: dict[str, CharacteristicState] = {}
        self.replay_looks = 0
        self._last_left = float("-inf")
        """Bonded centrals' connects looked at by :meth:`replay_subscriptions`."""
        self.exported = False
        self.registered_on: str | None = None
        self._layout()
        self._sockets = NotifySockets(
            conn, tuple(self._states.values()), nursery=nursery,
            handler_timeout=handler_timeout, close_grace=close_grace,
            registered=lambda: self.registered_on is not None,
            on_device_seen=self._saw_device, start_subscribe_hook=self._start_subscribe_hook,
            access=access)

    # -- layout ------------------------------------------------------------
    def _layout(self) -> None:
        for s_index, service in enumerate(self.services):
            s_path = f"{self.root}/service{s_index}"
            for c_index, char in enumerate(service.characteristics):
                c_path = f"{s_path}/char{c_index}"
                self._states[char.uuid] = CharacteristicState(char, c_path)

    def state(self, uuid_or_name: str) -> CharacteristicState:
        """The run-time state of a characteristic, by UUID or by name."""
        for state in self._states.values():
            if uuid_or_name in (state.spec.uuid, state.spec.name):
                return state
        raise KeyError(uuid_or_name)

    @property
    def characteristics(self) -> Iterable[CharacteristicState]:
        return self._states.values()

    # -- export ------------------------------------------------------------
    def export(self) -> None:
        """Export every object under the root, with an ObjectManager at the root."""
        if self.exported:
            return
        self._conn.add_object_manager(self.root)
        for s_index, service in enumerate(self.services):
            s_path = f"{self.root}/service{s_index}"
            self._conn.export(s_path, [self._service_interface(service)])
            for char in service.characteristics:
                state = self._states[char.uuid]
                self._conn.export(state.path, [self._characteristic_interface(state, s_path)])
        self.exported = True

    def _service_interface(self, service: Service) -> Interface:
        properties = [
            Property("UUID", "s", get=lambda: service.uuid),
            Property("Primary", "b", get=lambda: service.primary),
            Property("Includes", "ao", get=lambda: []),
        ]
        if service.handle:  # asked for; without it bluetoothd chooses
            properties.append(Property("Handle", "q", get=lambda: service.handle))
        return Interface(GATT_SERVICE_IFACE, properties=properties)

    def _characteristic_interface(self, state: CharacteristicState, s_path: str) -> Interface:
        spec = state.spec
        deadline = self._handler_timeout + DEADLINE_MARGIN_S
        properties = [
            Property("UUID", "s", get=lambda: spec.uuid),
            Property("Service", "o", get=lambda: s_path),
            Property("Flags", "as", get=lambda: list(self.flags_of(spec))),
            Property("Notifying", "b", get=lambda: state.notifying),
            Property("Value", "ay", get=lambda: state.value, restricted=True),
        ]
        if spec.handle:
            properties.append(Property("Handle", "q", get=lambda: spec.handle))
        methods = [
            Method("ReadValue", OPTIONS, "ay", arg_names=["options"], out_names=["value"],
                   handler=lambda ctx, opts: self._read_value(ctx, state, opts),
                   timeout=deadline),
            Method("WriteValue", "ay" + OPTIONS, "", arg_names=["value", "options"],
                   handler=lambda ctx, v, opts: self._write_value(ctx, state, v, opts),
                   timeout=deadline),
            Method("StartNotify", handler=lambda ctx: self._start_notify(ctx, state)),
            Method("StopNotify", handler=lambda ctx: self._stop_notify(ctx, state)),
            Method("Confirm", handler=lambda ctx: self._confirmed(state)),
        ]
        if spec.acquire_notify:
            # bluetoothd calls AcquireNotify only where it sees NotifyAcquired
            properties.append(Property("NotifyAcquired", "b", get=lambda: bool(state.sockets)))
            methods.append(Method("AcquireNotify", OPTIONS, "hq",
                                  handler=lambda _ctx, opts: self._sockets.acquire(state, opts)))
        return Interface(GATT_CHARACTERISTIC_IFACE, allowed_caller=self._allowed_caller,
                         methods=methods, properties=properties)

    def flags_of(self, spec: Characteristic) -> tuple[str, ...]:
        """The flags bluetoothd sees: the description's, secured by the access rules."""
        return spec.flags if self.access is None else self.access.rules.flags(spec.flags)

    # -- handlers ------------------------------------------------------------
    def _saw_device(self, device: str, mtu: int) -> None:
        if device and self._on_device_seen is not None:
            self._on_device_seen(device, mtu)

    def _read_value(self, _ctx: CallContext, state: CharacteristicState,
                    options: dict[str, Any]) -> bytes | Awaitable[bytes]:
        """The value now when the characteristic has it and no access check must wait
        (bluetoothd's read is answered inline, no task started), else an awaitable."""
        request = ReadRequest.from_options(options)
        self._saw_device(request.device, request.mtu)
        read = state.spec.read
        if read is None:
            raise GattError(NOT_PERMITTED, f"{state.spec.label} is not readable")
        if self.access is not None and self.access.guards(READ):  # open: no await
            return self._read_checked(state, read, request)
        value = read(request)
        if isinstance(value, bytes):
            return slice_for_offset(value, request.offset)
        return self._read_awaited(value, request)

    async def _read_awaited(self, value: Awaitable[bytes], request: ReadRequest) -> bytes:
        with self.in_flight.answering(request.device):
            return await _read_later(value, request.offset)

    async def _read_checked(self, state: CharacteristicState, read: ReadHandler,
                            request: ReadRequest) -> bytes:
        assert self.access is not None
        with self.in_flight.answering(request.device):
            await self.access.check(READ, request.device, state.spec.label, request.link)
            return await _read_later(read(request), request.offset)

    async def _write_value(self, _ctx: CallContext, state: CharacteristicState, value: bytes,
                           options: dict[str, Any]) -> None:
        piece = WriteRequest.from_options(value, options)
        with self.in_flight.answering(piece.device):
            await self._write_piece(state, piece)

    async def _write_piece(self, state: CharacteristicState, piece: WriteRequest) -> None:
        self._saw_device(piece.device, piece.mtu)
        if state.spec.write is None:
            raise GattError(NOT_PERMITTED, f"{state.spec.label} is not writable")
        if self.access is not None and self.access.guards(WRITE):  # open: no await
            await self.access.check(WRITE, piece.device, state.spec.label, piece.link)
        whole = self._long_writes.assemble(state.spec, piece)
        try:
            await state.spec.write(attrs.evolve(piece, value=whole, offset=0))
        except IncompleteValue:
            self._long_writes.hold(state.spec, piece.device, whole)
            return
        self._long_writes.done(state.spec, piece.device)

    def _start_notify(self, _ctx: CallContext, state: CharacteristicState) -> None:
        if not state.spec.notifies:
            raise GattError(NOT_SUPPORTED, f"{state.spec.label} does not notify")
        state.start_notify_calls += 1
        state.last_start_notify = trio.current_time()
        if not state.notifying:
            state.notifying = True
            self._conn.emit_properties_changed_nowait(state.path, GATT_CHARACTERISTIC_IFACE,
                                                      {"Notifying": True})
            log.info("notifications on characteristic=%s", state.spec.label)
        if state.spec.on_subscribe is not None:
            # after this handler returns, so the reply to StartNotify leaves first
            self._start_subscribe_hook(state)

    async def replay_subscriptions(self, central: Central, *,
                                   settle: float = REPLAY_SETTLE_S) -> list[str]:
        """A central connected: after ``settle``, give each characteristic it is still
        subscribed to, as far as bluetoothd tells us, its subscribe push once (see
        :mod:`.resubscribe`). Returns the labels replayed."""
        # bluetoothd's StartNotify may overtake the Device1 signal of the same connect, so
        # one since the last central left counts as this phone's (StartNotify names none)
        since = self._last_left
        connected = trio.current_time()
        await trio.sleep(settle)
        replayed = []
        for state in self._states.values():
            if state.spec.on_subscribe is None:
                continue
            pipe = state.sockets.get(central.path)
            if pipe is not None:
                # bluetoothd kept this phone's socket open while it was away (5.66: the
                # one shared socket, held by its kept CCC): the same push, into it
                kept_sent = pipe.last_offered is not None and pipe.last_offered >= connected
                if replay_on_reconnect(bonded=central.bonded, notifying=not pipe.closed,
                                       subscribed_since=pipe.opened_at >= since,
                                       sent_since=kept_sent):
                    replayed.append(state.spec.label)
                    self._sockets.push_subscribe(state, central.path)
                continue
            fresh = state.last_start_notify is not None and state.last_start_notify >= since
            sent = state.last_sent is not None and state.last_sent >= connected
            # a socket characteristic whose phone has no socket (5.82 closes a bonded
            # phone's socket when it leaves and asks for none when its kept CCC is
            # enabled again): bluetoothd may hold a CCC we cannot see, and a signal
            # reaches exactly the phones whose CCC is on
            unseen = state.spec.acquire_notify and not state.notifying
            if replay_on_reconnect(bonded=central.bonded,
                                   notifying=state.notifying or unseen,
                                   subscribed_since=fresh, sent_since=sent):
                if unseen and not self._sockets.serve_by_signals(state, central.path):
                    continue
                replayed.append(state.spec.label)
                self._start_subscribe_hook(state)
        self.replay_looks += 1
        log.debug("reconnect look device=%s bonded=%s since=%s states=%s", central.path,
                  central.bonded, since, [(st.spec.label, st.notifying, st.last_start_notify)
                                          for st in self._states.values()])
        if replayed:
            log.info("current value again for a bonded central device=%s characteristics=%s",
                     central.path, ",".join(replayed))
        return replayed

    def _start_subscribe_hook(self, state: CharacteristicState) -> None:
        self._nursery.start_soon(self._run_subscribe_hook, state)

    async def _run_subscribe_hook(self, state: CharacteristicState) -> None:
        assert state.spec.on_subscribe is not None
        try:
            with trio.move_on_after(self._handler_timeout) as scope:
                await state.spec.on_subscribe()
            if scope.cancelled_caught:
                log.warning("subscribe push timed out characteristic=%s", state.spec.label)
        except Exception:
            log.exception("subscribe push failed characteristic=%s", state.spec.label)

    def _stop_notify(self, _ctx: CallContext, state: CharacteristicState) -> None:
        if state.notifying:
            state.notifying = False
            self._conn.emit_properties_changed_nowait(state.path, GATT_CHARACTERISTIC_IFACE,
                                                      {"Notifying": False})
            log.info("notifications off characteristic=%s", state.spec.label)

    def _confirmed(self, state: CharacteristicState) -> None:
        """Confirm(): a phone confirmed an indication (bluetoothd before 5.80)."""
        state.confirmations += 1

    # -- notify sockets ---------------------------------------------------------------
    def device_left(self, device: str, *, link_ended: bool = True) -> None:
        """A phone disconnected: it is no longer a reason to stay on signals (and a
        StartNotify from now on belongs to a phone that comes, see replay_subscriptions).
        ``link_ended``: its own link went (False: bluetoothd went, with every link), so
        requests it left open are counted and named."""
        self._last_left = trio.current_time()
        self._sockets.device_left(device)
        waiting = self.in_flight.device_left(device) if link_ended else 0
        if waiting:
            log.warning(
                "phone left before we answered device=%s requests=%d: bluetoothd (%s) "
                "keeps such a request and may crash about 5 s after it; a controller "
                "callback that answers quickly keeps this rare (README, 'Against the "
                "real bluetoothd')", device, waiting, BLUEZ_AFFECTED)

    def phones(self) -> dict[str, dict[str, Any]]:
        """Per device: its acquired sockets, MTU, queues and counters."""
        return self._sockets.phones()

    # -- notifications -------------------------------------------------------
    async def notify(self, state: CharacteristicState, value: bytes) -> bool:
        """Store ``value`` and, while someone subscribes, send it; True if sent.

        As a signal, waits only for the connection's outgoing buffer; into the
        sockets without waiting (see ``NotifySockets.offer``).
        """
        state.value = value
        if not self.registered_on:
            return False
        if state.on_signals:
            await self._conn.emit_properties_changed(state.path, GATT_CHARACTERISTIC_IFACE,
                                                     {"Value": value})
            state.notifications_sent += 1
            state.last_sent = trio.current_time()
            return True
        return self._sockets.offer(state, value)

    def reset_subscriptions(self) -> None:
        """bluetoothd is gone: nobody is subscribed and no write is half done."""
        for state in self._states.values():
            state.notifying = False
        self._long_writes.clear()
        self._sockets.close_all("bluetoothd gone")

    # -- registration ----------------------------------------------------------
    def fixed_handles(self) -> str | None:
        """The handle ranges asked of bluetoothd, in words (None: it chooses them all)."""
        ranges = [f"{service.name or service.uuid} 0x{service.handle:04x}.."
                  f"0x{service.end_handle:04x}" for service in self.services if service.handle]
        return ", ".join(ranges) or None

    async def register(self, adapter_path: str, *, timeout: float) -> None:
        """RegisterApplication under a deadline; raises DBusError on refusal."""
        self.export()
        self._sockets.registering()
        await self._conn.call(BLUEZ, adapter_path, GATT_MANAGER_IFACE, "RegisterApplication",
                              "oa{sv}", (self.root, {}), timeout=timeout)
        self.registered_on = adapter_path
        log.info("application registered root=%s adapter=%s", self.root, adapter_path)

    async def unregister(self, *, timeout: float) -> None:
        """UnregisterApplication if registered; errors are logged, not raised.

        First, when a phone that had a notify socket left meanwhile, one signal per
        characteristic that had sockets (see ``NotifySockets.flush_left_subscriptions``).
        """
        adapter_path, self.registered_on = self.registered_on, None
        if adapter_path is not None:
            await self._sockets.flush_left_subscriptions()
        self.reset_subscriptions()
        if adapter_path is None:
            return
        try:
            await self._conn.call(BLUEZ, adapter_path, GATT_MANAGER_IFACE, "UnregisterApplication",
                                  "o", (self.root,), timeout=timeout)
            log.info("application unregistered root=%s", self.root)
        except DBusError as exc:
            log.warning("unregister failed root=%s error=%s", self.root, exc)


__all__ = [
    "CharacteristicState",
    "GattApplication",
]
