"""The trio binding of the MushPi core: characteristics exported through the
generic GATT layer, controller callbacks run in worker threads under the
handler deadline, one notification mailbox and notifier task per notifying
characteristic.

Every MushPi rule (what a read answers, how a write is validated and applied,
what a subscriber gets) lives in :mod:`mushpi_ble.core`; this module only
executes the core's decisions with trio.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from . import __version__
from .config import Settings
from .controller import (
    CallbackRunner,
    ControllerCallbacks,
    ControllerFailure,
    ControllerTimeout,
)
from .core import (
    Ack,
    CallSetter,
    Failure,
    NeedGetter,
    Push,
    Refresh,
    Reject,
    WriteEvent,
    core_for,
)
from .gatt import (
    Characteristic,
    CharacteristicState,
    GattApplication,
    ReadRequest,
    Service,
    WriteRequest,
    device_information_service,
    refusal,
)
from .notify import Mailbox, Outcome, run_notifier
from .protocol import (
    ACTUATOR_STATUS,
    CHARACTERISTICS,
    ENV_MEASUREMENTS,
    SERVICE_HANDLE,
    STATUS_FLAGS,
    StatusFlags,
)
from .protocol import Characteristic as TableRow

log = logging.getLogger(__name__)

LOG_FLUSH_S = 10.0
DEVICE_INFORMATION_HANDLE = 0x0F00
"""The Device Information Service's fixed handles start here, below the MushPi service's
(0x1000) and far above bluetoothd's own services."""

__all__ = ["MushPiService", "WriteEvent"]


class MushPiService:
    """Runs the core on trio; thread-safe publishing API."""

    def __init__(
        self,
        settings: Settings,
        callbacks: Callable[[], ControllerCallbacks],
        *,
        clock: Callable[[], float] = time.time,
        table: Iterable[TableRow] = CHARACTERISTICS,
    ) -> None:
        self.settings = settings
        self._callbacks = callbacks
        self.runner = CallbackRunner(settings.handler_timeout_s)
        self.core = core = core_for(settings, wall_clock=clock, table=table)
        self.mailboxes: dict[str, Mailbox] = {
            name: Mailbox(
                name,
                capacity=settings.ble_queue_max_size,
                policy=settings.policy_for(name),
                put_timeout=settings.queue_put_timeout_s,
            )
            for name in core.notifying
        }
        self._env_box = self.mailboxes.get(ENV_MEASUREMENTS)
        self._status_lock = threading.Lock()
        self.app: GattApplication | None = None
        self._nursery: trio.Nursery | None = None

    # -- description -----------------------------------------------------------
    @property
    def notifying_names(self) -> tuple[str, ...]:
        return self.core.notifying

    @property
    def recent_writes(self) -> deque[WriteEvent]:
        return self.core.recent_writes

    def definition(self) -> Service:
        """The service as data: one generic characteristic per row of the core's table."""
        chars = []
        mode = self.settings.ble_notify_mode
        for row in self.core.characteristics:
            notifies = row.notify is not None
            chars.append(Characteristic(
                row.uuid, row.flags, name=row.name,
                read=self._reader(row.name) if row.read is not None else None,
                write=self._writer(row.name) if row.write is not None else None,
                on_subscribe=self._subscriber(row.name) if notifies else None,
                max_write_length=row.write.max_length if row.write is not None else 512,
                # notify sockets: one per phone, when bluetoothd acquires (see notify_status)
                acquire_notify=notifies and mode != "signal",
                notify_queue=self.settings.ble_queue_max_size,
                notify_policy=self.settings.policy_for(row.name) if notifies else "drop_oldest",
                signal_fallback=mode == "auto",
                handle=row.handle,
            ))
        return Service(self.settings.ble_service_uuid, tuple(chars), name="mushpi",
                       handle=SERVICE_HANDLE)

    def services(self) -> list[Service]:
        """What the application serves: the MushPi service and, unless switched off, the
        Device Information Service with the MushPi values."""
        services = [self.definition()]
        if self.settings.ble_device_info:
            services.append(device_information_service(
                manufacturer=self.settings.ble_manufacturer, model=self.settings.ble_model,
                firmware=self.settings.ble_firmware_revision,
                software=f"mushpi-ble {__version__}", handle=DEVICE_INFORMATION_HANDLE))
        return services

    # -- wiring to a running application ------------------------------------------
    def attach(self, app: GattApplication, nursery: trio.Nursery) -> None:
        """Start one notifier task per notifying characteristic and open the mailboxes."""
        self.app = app
        self._nursery = nursery
        self.core.started()  # env uptime counts from the service's start
        token = trio.lowlevel.current_trio_token()
        with self._status_lock:  # flags the controller set before the start count
            self.core.set_published(STATUS_FLAGS, self.core.status_packet())
        for name, mailbox in self.mailboxes.items():
            state = app.state(name)
            state.value = self.core.published(name)
            nursery.start_soon(self._notifier, mailbox, state)
            mailbox.attach(token)
        nursery.start_soon(self._flush_logs)

    def detach(self) -> None:
        for mailbox in self.mailboxes.values():
            mailbox.detach()

    async def _flush_logs(self) -> None:
        """Counts of suppressed log lines are logged soon after their window ends."""
        while True:
            await trio.sleep(LOG_FLUSH_S)
            self.core.flush_logs()

    async def _notifier(self, mailbox: Mailbox, state: CharacteristicState) -> None:
        app = self.app
        assert app is not None
        name = mailbox.name

        async def emit(payload: bytes) -> bool:
            self.core.set_published(name, payload)
            return await app.notify(state, payload)

        await run_notifier(mailbox, emit, slow_publish_s=self.settings.log_slow_publish_s,
                           min_interval_s=self.settings.notify_interval_s)

    # -- publishing (any thread; never waits for the loop) ----------------------
    @property
    def uptime_ms(self) -> int:
        return self.core.uptime_ms

    def publish_env(self, temperature: object, humidity: object, co2: object,
                    light: object) -> Outcome:
        assert self._env_box is not None
        packet = self.core.env_packet(temperature, humidity, co2, light)
        return Outcome.INVALID if packet is None else self._env_box.offer(packet)

    def publish_status(self, flags: object) -> Outcome:
        """Controller status bits; the CONNECTIVITY bit is the BLE layer's."""
        with self._status_lock:
            # the controller's thread sets the flags, the loop the connectivity bit:
            # build and queue under one lock so the last packet queued is the newest
            self.core.set_status_flags(flags)
            return self.mailboxes[STATUS_FLAGS].offer(self.core.status_packet())

    def republish_status(self) -> Outcome:
        """Queue the status flags again: the core's last bits, our connectivity."""
        with self._status_lock:
            return self.mailboxes[STATUS_FLAGS].offer(self.core.status_packet())

    def set_connected(self, connected: bool) -> Outcome:
        with self._status_lock:
            packet = self.core.set_connected(connected)
            if packet is None:
                return Outcome.QUEUED if self.app else Outcome.NOT_RUNNING
            return self.mailboxes[STATUS_FLAGS].offer(packet)

    @property
    def connected(self) -> bool:
        return self.core.connected

    def publish_actuator(self, control_data: object) -> Outcome:
        mailbox = self.mailboxes.get(ACTUATOR_STATUS)
        if mailbox is None:
            return Outcome.DROPPED
        return mailbox.offer(self.core.actuator_packet(control_data))

    def publish_raw(self, name: str, payload: bytes) -> Outcome:
        """A ready payload for a notifying characteristic; sizes are checked."""
        self.core.check_payload(name, payload)
        if name == STATUS_FLAGS:
            return self.publish_status(StatusFlags.unpack(payload).flags)
        return self.mailboxes[name].offer(bytes(payload))

    # -- running the core's decisions ----------------------------------------------------
    async def _call(self, callback: str, args: tuple[Any, ...]) -> tuple[object, Failure | None]:
        """A controller callback under the handler deadline, through the runner (one
        call of each callback at a time; a hung one holds only its own thread)."""
        fn = getattr(self._callbacks(), callback)
        if fn is None:
            return None, Failure.MISSING
        try:
            return await self.runner.call(callback, fn, args), None
        except ControllerTimeout:
            return None, Failure.TIMEOUT
        except ControllerFailure as exc:
            self.core.callback_raised(callback, str(exc))
            return None, Failure.FAILED

    def _reader(self, name: str) -> Callable[[ReadRequest], Any]:
        def read(request: ReadRequest) -> bytes | Awaitable[bytes]:
            """What the core knows now is answered at once; a getter is awaited."""
            decision = self.core.read(name, request.device, request.offset)
            if isinstance(decision, NeedGetter):
                return self._read_from_getter(decision)
            return decision.value

        return read

    async def _read_from_getter(self, need: NeedGetter) -> bytes:
        result, failure = await self._call(need.callback, need.args)
        return self.core.read_done(need, result, failure).value

    def _writer(self, name: str) -> Callable[[WriteRequest], Any]:
        async def write(request: WriteRequest) -> None:
            decision: Ack | Reject | CallSetter = self.core.write(
                name, request.value, request.device, authorize_only=request.prepare_authorize)
            if isinstance(decision, CallSetter):
                result, failure = await self._call(decision.callback, decision.args)
                decision = self.core.write_done(decision, result, failure)
            if isinstance(decision, Reject):
                raise refusal(decision.app_code, decision.reason)
            if decision.refresh is not None and self._nursery is not None:
                self._nursery.start_soon(self._refresh, decision.refresh)

        return write

    def _subscriber(self, name: str) -> Callable[[], Any]:
        async def subscribed() -> None:
            app = self.app
            assert app is not None
            decision = self.core.subscribed(name)
            if isinstance(decision, Refresh):
                # fresh state for the new subscriber, through the mailbox like every
                # other publish, so a newer publish is never overwritten
                if await self._refresh_with(decision) in (Outcome.QUEUED, Outcome.COALESCED):
                    return
                decision = Push(name, self.core.published(name))
            state = app.state(name)
            state.value = decision.payload
            await app.notify(state, decision.payload)

        return subscribed

    async def _refresh(self, name: str) -> Outcome:
        return await self._refresh_with(self.core.refresh(name))

    async def _refresh_with(self, refresh: Refresh) -> Outcome:
        result, failure = await self._call(refresh.callback, ())
        payload = self.core.refresh_done(refresh, result, failure)
        if payload is None:
            return Outcome.DROPPED
        return self.mailboxes[refresh.characteristic].offer(payload)

    async def refresh_actuator(self) -> Outcome:
        """Read relay state from the controller and publish it (after overrides)."""
        if ACTUATOR_STATUS not in self.mailboxes:
            return Outcome.DROPPED
        return await self._refresh(ACTUATOR_STATUS)

    def has_callback(self, name: str) -> bool:
        """Whether the controller set callback ``name`` (e.g. someone shows a passkey)."""
        return getattr(self._callbacks(), name) is not None

    async def passkey_shown(self, address: str, passkey: int) -> None:
        """Hand a passkey to the controller's ``on_pairing_passkey`` (e.g. an LCD)."""
        await self._call("on_pairing_passkey", (address, passkey))

    # -- status --------------------------------------------------------------------------
    def notify_status(self) -> dict[str, Any]:
        """How notifications leave: the mode, per characteristic the path taken now and
        the notify sockets' totals, and per phone its sockets (``get_status()["notify"]``)."""
        app = self.app
        out: dict[str, Any] = {"mode": self.settings.ble_notify_mode, "characteristics": {},
                               "phones": app.phones() if app is not None else {}}
        if app is None:
            return out
        for state in app.characteristics:
            if not state.spec.notifies:
                continue
            path = ("signal" if state.on_signals else "socket" if state.sockets else "idle")
            totals = {key: getattr(state.departed, key) + sum(
                getattr(p.stats, key) for p in state.sockets.values())
                for key in ("sent", "dropped", "coalesced", "refused")}
            out["characteristics"][state.spec.label] = {
                **totals,
                "path": path, "sockets": len(state.sockets),
                "sockets_acquired": state.sockets_acquired,
                "sockets_closed": state.sockets_closed,
                "socket_losses": state.socket_losses,
                "signal_fallback_devices": sorted(state.suspects),
                "confirmations": state.confirmations + state.departed.confirmations + sum(
                    p.stats.confirmations for p in state.sockets.values()),
            }
        return out

    # -- status --------------------------------------------------------------------------
    def counters(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, mailbox in self.mailboxes.items():
            entry: dict[str, Any] = mailbox.counters().as_dict()
            entry["queue_depth"] = mailbox.depth
            entry["policy"] = mailbox.policy
            entry["latency"] = mailbox.latency.snapshot()
            entry["invalid"] = self.core.refused_publishes.counts.get(name, 0)
            out[name] = entry
        return out
