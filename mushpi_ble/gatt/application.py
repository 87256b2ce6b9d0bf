"""A GATT application exported to BlueZ: objects, handlers, notifications.

Turns :class:`~.model.Service` descriptions into ``GattService1`` /
``GattCharacteristic1`` / ``GattDescriptor1`` objects under one root with
an ObjectManager, answers bluetoothd's calls (offset reads, long writes,
StartNotify/StopNotify, AcquireNotify), and sends notifications either as
PropertiesChanged on ``Value`` — on the same connection that registered, as
bluetoothd requires — or into each phone's notify socket.

Which path a characteristic's notifications take: its sockets while every
subscriber acquired one; one PropertiesChanged while anyone subscribed by
StartNotify or a socket was lost under a connected phone (bluetoothd sends
that signal to every subscribed phone, so the sockets pause meanwhile — no
phone gets a value twice).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import attrs
import trio

from mushpi_ble.dbus import CallContext, Connection, DBusError, Interface, Method, Property

from .access import READ, WRITE, AccessGate
from .errors import (
    FAILED,
    INVALID_VALUE_LENGTH,
    NOT_PERMITTED,
    NOT_SUPPORTED,
    GattError,
    invalid_offset,
    not_permitted,
)
from .model import (
    Characteristic,
    Descriptor,
    IncompleteValue,
    ReadHandler,
    Service,
    slice_for_offset,
    validate_services,
)
from .names import (
    BLUEZ,
    DEVICE_IFACE,
    GATT_CHARACTERISTIC_IFACE,
    GATT_DESCRIPTOR_IFACE,
    GATT_MANAGER_IFACE,
    GATT_SERVICE_IFACE,
    PROPERTIES,
)
from .notify_socket import PEER_CLOSED, NotifySocket, SocketStats
from .requests import ReadRequest, WriteRequest

log = logging.getLogger(__name__)

OPTIONS = "a{sv}"
# A handler's own deadline should fire first; the D-Bus layer's is the backstop.
DEADLINE_MARGIN_S = 0.25
CLOSE_GRACE_S = 1.0
"""How long after a notify socket's end we ask whether its phone is still connected:
bluetoothd closes the socket of a leaving phone before it says Connected=false."""
SENT_END_HOLD_S = 2.0
MAX_DEPARTURES = 64


@attrs.define
class PendingWrite:
    """A long write being reassembled, piece by piece, for one device."""

    data: bytearray
    started: float


@attrs.define
class CharacteristicState:
    """What the application knows about one characteristic at run time."""

    spec: Characteristic
    path: str
    value: bytes = b""
    notifying: bool = False
    start_notify_calls: int = 0
    notifications_sent: int = 0
    pending_writes: dict[str, PendingWrite] = attrs.Factory(dict)
    sockets: dict[str, NotifySocket] = attrs.Factory(dict)
    """Acquired notify sockets by device path."""
    suspects: set[str] = attrs.Factory(set)
    """Devices whose socket closed while they stayed connected (bluez/bluez#1452)."""
    sockets_acquired: int = 0
    sockets_closed: int = 0
    socket_losses: int = 0
    """Sockets closed under a still-connected phone: counted, answered by signals."""
    confirmations: int = 0
    """Indication confirmations: Confirm() calls and 0x01 bytes on the sockets."""
    acquired_since_register: bool = False
    """A socket was acquired since RegisterApplication (see ``GattApplication.unregister``)."""
    departed: SocketStats = attrs.Factory(SocketStats)
    """The counters of sockets already closed, so the totals never go back."""

    @property
    def on_signals(self) -> bool:
        """Notifications go out as one PropertiesChanged (not into the sockets)."""
        return self.notifying or bool(self.suspects)


DeviceSeen = Callable[[str, int], None]
_PUSH_TO: contextvars.ContextVar[str | None] = contextvars.ContextVar("push_to", default=None)
"""Set in the task of a subscribe hook started by AcquireNotify: notify() inside it
writes to that phone's socket only."""


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
        self._long_write_timeout = long_write_timeout
        self.access = access
        self._close_grace = close_grace
        self._departures: dict[str, float] = {}  # device -> when it last disconnected
        self._socket_devices: set[str] = set()  # devices that acquired a socket (this registration)
        self._socket_device_left = False
        self._states: dict[str, CharacteristicState] = {}
        self._paths: list[str] = []
        self.exported = False
        self.registered_on: str | None = None
        self._layout()

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
            self._export(s_path, self._service_interface(service))
            for char in service.characteristics:
                state = self._states[char.uuid]
                self._export(state.path, self._characteristic_interface(state, s_path))
                for d_index, desc in enumerate(char.descriptors):
                    self._export(f"{state.path}/desc{d_index}",
                                 self._descriptor_interface(desc, state.path))
        self.exported = True

    def _export(self, path: str, iface: Interface) -> None:
        self._conn.export(path, [iface])
        self._paths.append(path)

    def unexport(self) -> None:
        for path in reversed(self._paths):
            self._conn.unexport(path)
        self._paths.clear()
        self._conn.remove_object_manager(self.root)
        self.exported = False

    def _service_interface(self, service: Service) -> Interface:
        return Interface(
            GATT_SERVICE_IFACE,
            properties=[
                Property("UUID", "s", get=lambda: service.uuid),
                Property("Primary", "b", get=lambda: service.primary),
                Property("Includes", "ao", get=lambda: []),
            ],
        )

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
        acquire: Callable[[CallContext, dict[str, Any]], Any] = _not_supported
        if spec.acquire_notify:
            properties.append(Property("NotifyAcquired", "b", get=lambda: bool(state.sockets)))

            def acquire(ctx: CallContext, opts: dict[str, Any]) -> tuple[socket.socket, int]:
                return self._acquire_notify(ctx, state, opts)
        return Interface(
            GATT_CHARACTERISTIC_IFACE,
            allowed_caller=self._allowed_caller,
            methods=[
                Method("ReadValue", OPTIONS, "ay", arg_names=["options"], out_names=["value"],
                       handler=lambda ctx, opts: self._read_value(ctx, state, opts),
                       timeout=deadline),
                Method("WriteValue", "ay" + OPTIONS, "", arg_names=["value", "options"],
                       handler=lambda ctx, v, opts: self._write_value(ctx, state, v, opts),
                       timeout=deadline),
                Method("StartNotify", handler=lambda ctx: self._start_notify(ctx, state)),
                Method("StopNotify", handler=lambda ctx: self._stop_notify(ctx, state)),
                Method("AcquireNotify", OPTIONS, "hq", handler=acquire),
                Method("AcquireWrite", OPTIONS, "hq", handler=_not_supported),
                Method("Confirm", handler=lambda ctx: self._confirmed(state)),
            ],
            properties=properties,
        )

    def _descriptor_interface(self, desc: Descriptor, c_path: str) -> Interface:
        async def read(_ctx: CallContext, opts: dict[str, Any]) -> bytes:
            if desc.read is None:
                raise not_permitted("descriptor is not readable")
            request = ReadRequest.from_options(opts)
            return await _read_later(desc.read(request), request.offset)

        async def write(_ctx: CallContext, value: bytes, opts: dict[str, Any]) -> None:
            if desc.write is None:
                raise not_permitted("descriptor is not writable")
            await desc.write(WriteRequest.from_options(value, opts))

        return Interface(
            GATT_DESCRIPTOR_IFACE,
            allowed_caller=self._allowed_caller,
            methods=[
                Method("ReadValue", OPTIONS, "ay", handler=read),
                Method("WriteValue", "ay" + OPTIONS, "", handler=write),
            ],
            properties=[
                Property("UUID", "s", get=lambda: desc.uuid),
                Property("Characteristic", "o", get=lambda: c_path),
                Property("Flags", "as", get=lambda: list(desc.flags)),
            ],
        )

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
        return _read_later(value, request.offset)

    async def _read_checked(self, state: CharacteristicState, read: ReadHandler,
                            request: ReadRequest) -> bytes:
        assert self.access is not None
        await self.access.check(READ, request.device, state.spec.label)
        return await _read_later(read(request), request.offset)

    async def _write_value(self, _ctx: CallContext, state: CharacteristicState, value: bytes,
                           options: dict[str, Any]) -> None:
        piece = WriteRequest.from_options(value, options)
        self._saw_device(piece.device, piece.mtu)
        if state.spec.write is None:
            raise GattError(NOT_PERMITTED, f"{state.spec.label} is not writable")
        if self.access is not None and self.access.guards(WRITE):  # open: no await
            await self.access.check(WRITE, piece.device, state.spec.label)
        whole = self._assemble(state, piece)
        try:
            await state.spec.write(attrs.evolve(piece, value=whole, offset=0))
        except IncompleteValue:
            state.pending_writes[piece.device] = PendingWrite(bytearray(whole),
                                                              trio.current_time())
            return
        except (DBusError, trio.Cancelled):
            raise
        state.pending_writes.pop(piece.device, None)

    def _assemble(self, state: CharacteristicState, piece: WriteRequest) -> bytes:
        """Join a long write's pieces; offset 0 always starts afresh."""
        if piece.offset == 0:
            unfinished = state.pending_writes.pop(piece.device, None)
            if unfinished is not None:
                log.warning("unfinished long write discarded characteristic=%s device=%s "
                            "bytes=%d", state.spec.label, piece.device or "-",
                            len(unfinished.data))
            whole = piece.value
        else:
            pending = state.pending_writes.get(piece.device)
            now = trio.current_time()
            if pending is not None and now - pending.started > self._long_write_timeout:
                state.pending_writes.pop(piece.device, None)
                log.warning("unfinished long write expired characteristic=%s device=%s "
                            "bytes=%d", state.spec.label, piece.device or "-",
                            len(pending.data))
                pending = None
            if pending is None or piece.offset != len(pending.data):
                have = 0 if pending is None else len(pending.data)
                state.pending_writes.pop(piece.device, None)
                raise invalid_offset(piece.offset, have)
            whole = bytes(pending.data) + piece.value
        if len(whole) > state.spec.max_write_length:
            state.pending_writes.pop(piece.device, None)
            raise GattError(
                INVALID_VALUE_LENGTH,
                f"{state.spec.label}: {len(whole)} bytes exceeds {state.spec.max_write_length}",
            )
        return whole

    def _start_notify(self, _ctx: CallContext, state: CharacteristicState) -> None:
        if not state.spec.notifies:
            raise GattError(NOT_SUPPORTED, f"{state.spec.label} does not notify")
        state.start_notify_calls += 1
        if not state.notifying:
            state.notifying = True
            self._conn.emit_properties_changed_nowait(state.path, GATT_CHARACTERISTIC_IFACE,
                                                      {"Notifying": True})
            log.info("notifications on characteristic=%s", state.spec.label)
        if state.spec.on_subscribe is not None:
            # after this handler returns, so the reply to StartNotify leaves first
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

    # -- notify sockets ------------------------------------------------------------
    def _acquire_notify(self, _ctx: CallContext, state: CharacteristicState,
                        options: dict[str, Any]) -> tuple[socket.socket, int]:
        """One SOCK_SEQPACKET pair per phone: the far end to bluetoothd, ours kept."""
        spec = state.spec
        device = _option(options, "device", "")
        mtu = int(_option(options, "mtu", 23))
        link = _option(options, "link", "")
        self._saw_device(device, mtu)
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:
            log.warning("notify socket not created characteristic=%s device=%s error=%s",
                        spec.label, device or "-", exc)
            # NotSupported makes bluetoothd fall back to StartNotify; Failed does not
            raise GattError(NOT_SUPPORTED if spec.signal_fallback else FAILED,
                            f"no socket: {exc}") from None
        old = state.sockets.pop(device, None)
        if old is not None:
            old.close("replaced by a new AcquireNotify")
        first = not state.sockets
        pipe = NotifySocket(ours, device=device, characteristic=spec.label, mtu=mtu, link=link,
                            capacity=spec.notify_queue, policy=spec.notify_policy,
                            on_closed=lambda s, why: self._socket_closed(state, s, why))
        state.sockets[device] = pipe
        state.sockets_acquired += 1
        state.acquired_since_register = True
        if device:
            self._socket_devices.add(device)
        if device in state.suspects:
            state.suspects.discard(device)
            log.info("notify socket acquired again characteristic=%s device=%s", spec.label,
                     device)
        self._nursery.start_soon(pipe.run)
        self._nursery.start_soon(self._close_sent_end, theirs)
        if first:
            self._conn.emit_properties_changed_nowait(state.path, GATT_CHARACTERISTIC_IFACE,
                                                      {"NotifyAcquired": True})
        log.info("notify socket acquired characteristic=%s device=%s mtu=%d link=%s",
                 spec.label, device or "-", mtu, link or "-")
        if spec.on_subscribe is not None:
            # the hook's push goes to the new phone only: the others have that value
            token = _PUSH_TO.set(device)
            try:
                self._nursery.start_soon(self._run_subscribe_hook, state)
            finally:
                _PUSH_TO.reset(token)
        return theirs, mtu

    async def _close_sent_end(self, theirs: socket.socket) -> None:
        """Close our copy of bluetoothd's end once the reply carrying it has left, so
        bluetoothd's close reaches us as EOF."""
        writer = self._conn.writer
        with trio.move_on_after(SENT_END_HOLD_S):
            await trio.sleep(0)
            while writer.queued_bytes > 0:
                await trio.sleep(0.005)
        theirs.close()

    def _socket_closed(self, state: CharacteristicState, pipe: NotifySocket,
                       reason: str) -> None:
        state.sockets_closed += 1
        _add_stats(state.departed, pipe.stats)
        if state.sockets.get(pipe.device) is pipe:
            del state.sockets[pipe.device]
            if not state.sockets and self.exported:
                self._conn.emit_properties_changed_nowait(state.path, GATT_CHARACTERISTIC_IFACE,
                                                          {"NotifyAcquired": False})
        log.info("notify socket ended characteristic=%s device=%s reason=%s sent=%d "
                 "dropped=%d", state.spec.label, pipe.device or "-", reason, pipe.stats.sent,
                 pipe.stats.dropped)
        if reason == PEER_CLOSED and pipe.device and self.registered_on:
            self._nursery.start_soon(self._check_loss, state, pipe.device, trio.current_time())

    async def _check_loss(self, state: CharacteristicState, device: str,
                          ended_at: float) -> None:
        """A socket ended: did its phone leave, or is it still there (bluez#1452)?

        A phone that left around the end and is connected again (a quick reconnect)
        left: its socket ended with its link.
        """
        await trio.sleep(self._close_grace)
        if device in state.sockets or not self.registered_on:
            return  # acquired again meanwhile
        if self._departures.get(device, -math.inf) >= ended_at - self._close_grace:
            return
        try:
            connected = bool(_unwrap(await self._conn.call(
                BLUEZ, device, PROPERTIES, "Get", "ss", (DEVICE_IFACE, "Connected"),
                timeout=self._handler_timeout)))
        except DBusError:
            connected = False
        if not connected or device in state.sockets:
            return
        state.socket_losses += 1
        if state.spec.signal_fallback:
            state.suspects.add(device)
            log.warning("notify socket lost under a connected phone characteristic=%s "
                        "device=%s: serving it by signals until the phone leaves or "
                        "acquires again", state.spec.label, device)
        else:
            log.warning("notify socket lost under a connected phone characteristic=%s "
                        "device=%s: no fallback (notify mode socket)", state.spec.label, device)

    def device_left(self, device: str) -> None:
        """A phone disconnected: it is no longer a reason to stay on signals."""
        self._departures.pop(device, None)
        self._departures[device] = trio.current_time()
        if device in self._socket_devices:
            self._socket_device_left = True
        while len(self._departures) > MAX_DEPARTURES:
            del self._departures[next(iter(self._departures))]
        for state in self._states.values():
            state.suspects.discard(device)

    def phones(self) -> dict[str, dict[str, Any]]:
        """Per device: its acquired sockets, MTU, queues and counters."""
        out: dict[str, dict[str, Any]] = {}
        for state in self._states.values():
            for device, pipe in state.sockets.items():
                entry = out.setdefault(device, {
                    "characteristics": [], "mtu": pipe.mtu, "queue_depth": 0, "sent": 0,
                    "dropped": 0, "coalesced": 0, "refused": 0, "confirmations": 0,
                    "last_error": ""})
                entry["characteristics"].append(state.spec.label)
                entry["mtu"] = pipe.mtu
                entry["queue_depth"] += pipe.depth
                for key in ("sent", "dropped", "coalesced", "refused", "confirmations"):
                    entry[key] += getattr(pipe.stats, key)
                entry["last_error"] = pipe.last_error or entry["last_error"]
        return out

    # -- notifications -------------------------------------------------------
    async def notify(self, state: CharacteristicState, value: bytes) -> bool:
        """Store ``value`` and, while someone subscribes, send it; True if sent.

        Into the sockets without waiting (each applies its own queue policy);
        as a signal, waits only for the connection's outgoing buffer.
        """
        state.value = value
        if not self.registered_on:
            return False
        if state.on_signals:
            await self._conn.emit_properties_changed(state.path, GATT_CHARACTERISTIC_IFACE,
                                                     {"Value": value})
            state.notifications_sent += 1
            return True
        if not state.sockets:
            return False
        only = _PUSH_TO.get()
        if only is not None:
            pipe = state.sockets.get(only)
            if pipe is None:
                return False
            pipe.offer(value)
            return True
        for pipe in list(state.sockets.values()):
            pipe.offer(value)
        state.notifications_sent += 1
        return True

    def reset_subscriptions(self) -> None:
        """bluetoothd is gone: nobody is subscribed and no write is half done."""
        for state in self._states.values():
            state.notifying = False
            state.pending_writes.clear()
            state.suspects.clear()
            for pipe in list(state.sockets.values()):
                pipe.close("bluetoothd gone")

    # -- registration ----------------------------------------------------------
    async def register(self, adapter_path: str, *, timeout: float) -> None:
        """RegisterApplication under a deadline; raises DBusError on refusal."""
        self.export()
        self._socket_devices.clear()
        self._socket_device_left = False
        for state in self._states.values():
            state.acquired_since_register = False
        await self._conn.call(BLUEZ, adapter_path, GATT_MANAGER_IFACE, "RegisterApplication",
                              "oa{sv}", (self.root, {}), timeout=timeout)
        self.registered_on = adapter_path
        log.info("application registered root=%s adapter=%s", self.root, adapter_path)

    async def unregister(self, *, timeout: float) -> None:
        """UnregisterApplication if registered; errors are logged, not raised.

        First, when a phone that had a notify socket left meanwhile, one signal per
        characteristic that had sockets (see ``_flush_left_subscriptions``).
        """
        adapter_path, self.registered_on = self.registered_on, None
        if adapter_path is not None:
            await self._flush_left_subscriptions()
        self.reset_subscriptions()
        if adapter_path is None:
            return
        try:
            await self._conn.call(BLUEZ, adapter_path, GATT_MANAGER_IFACE, "UnregisterApplication",
                                  "o", (self.root,), timeout=timeout)
            log.info("application unregistered root=%s", self.root)
        except DBusError as exc:
            log.warning("unregister failed root=%s error=%s", self.root, exc)

    async def _flush_left_subscriptions(self) -> None:
        """Let bluetoothd drop a gone bonded phone's subscription while our
        characteristics still exist.

        bluetoothd (seen with 5.82) keeps a bonded phone's subscriptions after it
        disconnects; once its bond is removed they wait for the next notification
        to be cleared. UnregisterApplication frees our characteristics first and
        then sends Service Changed, which clears them: the clearing runs on a freed
        characteristic, and where that one had notify sockets it walks a freed
        list and bluetoothd dies. A ``Value`` signal on each characteristic that
        had sockets, sent first (bluetoothd reads our messages in order), has the
        clearing run while everything is alive. Phones still subscribed get the
        current value once more.
        """
        if not self._socket_device_left:
            return
        for state in self._states.values():
            if state.acquired_since_register and state.value:
                with contextlib.suppress(DBusError, OSError):
                    await self._conn.emit_properties_changed(
                        state.path, GATT_CHARACTERISTIC_IFACE, {"Value": state.value})
                log.info("value sent before unregistering characteristic=%s reason=a phone "
                         "with a notify socket left", state.spec.label)


def _not_supported(_ctx: CallContext, _options: dict[str, Any]) -> tuple[int, int]:
    raise GattError(NOT_SUPPORTED, "use StartNotify / WriteValue")


def _unwrap(reply: Any) -> Any:
    """The value of a Properties.Get reply: ((signature, value),)."""
    (variant,) = reply
    return variant[1]


def _option(options: dict[str, Any], key: str, default: Any) -> Any:
    item = options.get(key)
    return default if item is None else item[1]


def _add_stats(total: SocketStats, one: SocketStats) -> None:
    for field in attrs.fields(SocketStats):
        if field.name == "peak_depth":
            total.peak_depth = max(total.peak_depth, one.peak_depth)
        else:
            setattr(total, field.name, getattr(total, field.name) + getattr(one, field.name))


__all__ = [
    "FAILED",
    "CharacteristicState",
    "GattApplication",
]
