"""Every phone's acquired notify socket of one application: AcquireNotify and what follows.

bluetoothd calls AcquireNotify once per phone that subscribes (5.69+); we answer with one
end of a SOCK_SEQPACKET pair and keep the other as a :class:`~.notify_socket.NotifySocket`.

Which path a characteristic's notifications take: its sockets while every subscriber
acquired one; one PropertiesChanged while anyone subscribed by StartNotify or a socket was
lost under a connected phone (bluetoothd sends that signal to every subscribed phone, so
the sockets pause meanwhile — no phone gets a value twice). This module keeps the sockets
and decides when a lost one puts its characteristic on signals; the application sends
the signal.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from mushpi_ble.dbus import Connection, DBusError

from .access import READ, AccessGate
from .errors import FAILED, NOT_SUPPORTED, GattError
from .names import BLUEZ, DEVICE_IFACE, GATT_CHARACTERISTIC_IFACE, PROPERTIES
from .notify_socket import PEER_CLOSED, NotifySocket, SocketStats
from .state import CharacteristicState

log = logging.getLogger(__name__)

CLOSE_GRACE_S = 1.0
"""How long after a notify socket's end we ask whether its phone is still connected:
bluetoothd closes the socket of a leaving phone before it says Connected=false."""
SENT_END_HOLD_S = 2.0
MAX_DEPARTURES = 64

_PUSH_TO: contextvars.ContextVar[str | None] = contextvars.ContextVar("push_to", default=None)
"""Set in the task of a subscribe hook started by AcquireNotify: a notification inside it
goes to that phone's socket only."""

DeviceSeen = Callable[[str, int], None]
Acquired = tuple[socket.socket, int]


class NotifySockets:
    """The acquired sockets of one application's characteristics, by phone.

    ``registered`` says whether the application is registered now (a socket's end only
    means a lost phone then); ``start_subscribe_hook`` pushes the current value to a new
    subscriber.
    """

    def __init__(
        self,
        conn: Connection,
        states: Sequence[CharacteristicState],
        *,
        nursery: trio.Nursery,
        handler_timeout: float,
        close_grace: float,
        registered: Callable[[], bool],
        on_device_seen: DeviceSeen,
        start_subscribe_hook: Callable[[CharacteristicState], None],
        access: AccessGate | None = None,
    ) -> None:
        """``access``: where reads are gated, so is AcquireNotify (it names its device)."""
        self._conn = conn
        self._states = states
        self._nursery = nursery
        self._handler_timeout = handler_timeout
        self._close_grace = close_grace
        self._registered = registered
        self._on_device_seen = on_device_seen
        self._start_subscribe_hook = start_subscribe_hook
        self._access = access
        self._departures: dict[str, float] = {}  # device -> when it last disconnected
        self._devices: set[str] = set()  # devices that acquired a socket (this registration)
        self._device_left = False

    # -- AcquireNotify -------------------------------------------------------------------
    @property
    def _gated(self) -> bool:
        return self._access is not None and self._access.guards(READ)

    def acquire(self, state: CharacteristicState,
                options: dict[str, Any]) -> Acquired | Awaitable[Acquired]:
        """A subscription from a phone that may read: answered now where reads are open,
        after the access check where they are not."""
        if self._gated:
            return self._acquire_checked(state, options)
        return self._acquire(state, options)

    async def _acquire_checked(self, state: CharacteristicState,
                               options: dict[str, Any]) -> Acquired:
        """Refused with ``Failed``: any other error makes bluetoothd fall back to
        StartNotify, which carries no device and would subscribe the phone anyway."""
        assert self._access is not None
        try:
            await self._access.check(READ, _option(options, "device", ""), state.spec.label,
                                     _option(options, "link", ""))
        except GattError as exc:
            raise GattError(FAILED, f"subscription refused: {exc.text}") from None
        return self._acquire(state, options)

    def _acquire(self, state: CharacteristicState, options: dict[str, Any]) -> Acquired:
        """One SOCK_SEQPACKET pair per phone: the far end to bluetoothd, ours kept."""
        spec = state.spec
        device = _option(options, "device", "")
        mtu = int(_option(options, "mtu", 23))
        link = _option(options, "link", "")
        self._on_device_seen(device, mtu)
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:
            log.warning("notify socket not created characteristic=%s device=%s error=%s",
                        spec.label, device or "-", exc)
            # NotSupported makes bluetoothd fall back to StartNotify; Failed does not (and
            # where reads are gated, a StartNotify could not be)
            fallback = spec.signal_fallback and not self._gated
            raise GattError(NOT_SUPPORTED if fallback else FAILED,
                            f"no socket: {exc}") from None
        old = state.sockets.pop(device, None)
        if old is not None:
            old.close("replaced by a new AcquireNotify")
        first = not state.sockets
        pipe = NotifySocket(ours, device=device, characteristic=spec.label, mtu=mtu, link=link,
                            capacity=spec.notify_queue, policy=spec.notify_policy,
                            on_closed=lambda s, why: self._closed(state, s, why))
        state.sockets[device] = pipe
        state.sockets_acquired += 1
        state.acquired_since_register = True
        if device:
            self._devices.add(device)
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
                self._start_subscribe_hook(state)
            finally:
                _PUSH_TO.reset(token)
        return theirs, mtu

    def push_subscribe(self, state: CharacteristicState, device: str) -> None:
        """A first subscribe's push, again, into ``device``'s socket only."""
        token = _PUSH_TO.set(device)
        try:
            self._start_subscribe_hook(state)
        finally:
            _PUSH_TO.reset(token)

    async def _close_sent_end(self, theirs: socket.socket) -> None:
        """Close our copy of bluetoothd's end once the reply carrying it has left, so
        bluetoothd's close reaches us as EOF."""
        writer = self._conn.writer
        with trio.move_on_after(SENT_END_HOLD_S):
            await trio.sleep(0)
            while writer.queued_bytes > 0:
                await trio.sleep(0.005)
        theirs.close()

    # -- a socket's end ------------------------------------------------------------------
    def _closed(self, state: CharacteristicState, pipe: NotifySocket, reason: str) -> None:
        state.sockets_closed += 1
        _add_stats(state.departed, pipe.stats)
        if state.sockets.get(pipe.device) is pipe:
            del state.sockets[pipe.device]
            if not state.sockets:
                self._conn.emit_properties_changed_nowait(state.path, GATT_CHARACTERISTIC_IFACE,
                                                          {"NotifyAcquired": False})
        log.info("notify socket ended characteristic=%s device=%s reason=%s sent=%d "
                 "dropped=%d", state.spec.label, pipe.device or "-", reason, pipe.stats.sent,
                 pipe.stats.dropped)
        if reason == PEER_CLOSED and pipe.device and self._registered():
            self._nursery.start_soon(self._check_loss, state, pipe.device, trio.current_time())

    async def _check_loss(self, state: CharacteristicState, device: str,
                          ended_at: float) -> None:
        """A socket ended: did its phone leave, or is it still there (bluez#1452)?

        A phone that left around the end and is connected again (a quick reconnect)
        left: its socket ended with its link.
        """
        await trio.sleep(self._close_grace)
        if device in state.sockets or not self._registered():
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

    def serve_by_signals(self, state: CharacteristicState, device: str) -> bool:
        """A bonded phone is back with no socket of its own: bluetoothd 5.69+ closed it
        with the link, kept its CCC, and asks for no new socket when the phone enables
        it again. Serve the characteristic by signals (which bluetoothd sends to every
        phone whose CCC is on) until that phone leaves or acquires again; False where
        the notify mode allows no signals."""
        if not state.spec.signal_fallback:
            log.warning("bonded phone back without a notify socket characteristic=%s "
                        "device=%s: it gets notifications only once it subscribes anew "
                        "(notify mode socket)", state.spec.label, device)
            return False
        if device not in state.suspects:
            state.suspects.add(device)
            log.info("bonded phone back without a notify socket characteristic=%s "
                     "device=%s: serving it by signals until it leaves or acquires again",
                     state.spec.label, device)
        return True

    def device_left(self, device: str) -> None:
        """A phone disconnected: it is no longer a reason to stay on signals."""
        self._departures.pop(device, None)
        self._departures[device] = trio.current_time()
        if device in self._devices:
            self._device_left = True
        while len(self._departures) > MAX_DEPARTURES:
            del self._departures[next(iter(self._departures))]
        for state in self._states:
            state.suspects.discard(device)

    # -- notifications -------------------------------------------------------------------
    def offer(self, state: CharacteristicState, value: bytes) -> bool:
        """Into each socket without waiting (each applies its own queue policy); into the
        new phone's only inside its subscribe hook. True if any socket took it."""
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

    def phones(self) -> dict[str, dict[str, Any]]:
        """Per device: its acquired sockets, MTU, queues and counters."""
        out: dict[str, dict[str, Any]] = {}
        for state in self._states:
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

    # -- registration --------------------------------------------------------------------
    def registering(self) -> None:
        """A new registration: no socket acquired under it yet."""
        self._devices.clear()
        self._device_left = False
        for state in self._states:
            state.acquired_since_register = False

    def close_all(self, reason: str) -> None:
        """bluetoothd is gone (or we leave it): every socket closed, no suspect left."""
        for state in self._states:
            state.suspects.clear()
            for pipe in list(state.sockets.values()):
                pipe.close(reason)

    async def flush_left_subscriptions(self) -> None:
        """Before UnregisterApplication: let bluetoothd drop a gone bonded phone's
        subscription while our characteristics still exist.

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
        if not self._device_left:
            return
        for state in self._states:
            if state.acquired_since_register and state.value:
                with contextlib.suppress(DBusError, OSError):
                    await self._conn.emit_properties_changed(
                        state.path, GATT_CHARACTERISTIC_IFACE, {"Value": state.value})
                log.info("value sent before unregistering characteristic=%s reason=a phone "
                         "with a notify socket left", state.spec.label)


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
