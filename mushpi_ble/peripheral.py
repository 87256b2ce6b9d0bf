"""The trio side of the peripheral: one connection, one supervisor, one nursery.

One loop keeps the MushPi application registered with whoever owns
``org.bluez``. It is a small state machine; each state does its work and
names the next::

    stopped                 → waiting-for-bluetoothd   run() begins
    waiting-for-bluetoothd  → finding-adapter          org.bluez has an owner
    finding-adapter         → registering              the adapter is there (and powered on)
                            → backing-off              it is not, or a D-Bus call failed
    registering             → serving                  every step is done
                            → backing-off              a step failed
    serving                 → backing-off              bluetoothd let a step go (advert Release,
                                                       advert gone from ActiveInstances, a
                                                       refused advert's retry is due)
    backing-off             → finding-adapter          after 0.05 s, doubling up to 2 s
    any state               → waiting-for-bluetoothd   bluetoothd left or changed, or the
                                                       adapter was removed: the session's
                                                       registrations are forgotten
    any state               → stopped                  cancelled: steps undone in reverse

*Registering* runs the session's steps in order — the GATT application,
device tracking, the adapter alias, the advertisement — skipping the ones
already done, so a failed or released step is all that is done again.
Adding a registration (a pairing agent) is one more :class:`Step`.

Two watchers live with each session. The adapter watcher
(:class:`AdapterRecovery`) powers the adapter on and lifts rfkill soft blocks
(``MUSHPI_BLE_ADAPTER_RECOVERY``), reporting every step; a powered-off or
blocked adapter does not stop registration, so the service is reachable the
moment it powers on. The advert monitor looks at bluetoothd's
``ActiveInstances`` after registering and after every connect and
disconnect, and has the advert registered again when it is gone. A central
connecting also has it registered again: the controller stops advertising
on a connection and the kernel does not restart it while the link lasts,
yet bluetoothd still counts it active (seen with BlueZ 5.66/kernel 6.1 and
5.82/6.12), so only a new registration lets a second phone find the Pi. A refused
advert leaves the peripheral serving alias-only, with the refusal explained
in plain words, and retried after a back-off of its own (0.5 s doubling to
60 s), so bluetoothd's log is not flooded.
While starting, a failure raises the matching ``StartError`` instead of
backing off, and the whole start is bounded by the bus timeout. Shutdown
undoes the steps in reverse order within a bound.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NoReturn

import attrs
import trio
from trio_util import AsyncValue

from .access import RoomAccess
from .config import Settings
from .controller import ControllerFailure, ControllerTimeout
from .dbus import (
    BusUnreachable,
    Connection,
    ConnectionLost,
    DBusError,
    MatchRule,
    SignalMessage,
    open_connection,
)
from .dbus.groups import single_errors
from .errors import (
    AdapterNotFound,
    BluezUnavailable,
    BusUnavailable,
    RegistrationRefused,
    StartError,
    StartTimeout,
)
from .gatt import GattApplication
from .gatt.adapter import (
    AdapterCondition,
    AdapterRecovery,
    Recovery,
    managed_objects,
    pick_adapter,
    set_property,
)
from .gatt.advertising import (
    Advertisement,
    AdvertisingCapabilities,
    AdvertMonitor,
    AdvertPlan,
    advert_path,
    explain_refusal,
    plan_advertisement,
    read_capabilities,
)
from .gatt.agent import Pairing, agent_path
from .gatt.devices import Central, DeviceTracker
from .gatt.errors import DEADLINE_ERROR
from .gatt.names import ADAPTER_IFACE, BLUEZ, ERROR_PREFIX, OBJECT_MANAGER
from .gatt.rfkill import Rfkill
from .management import Management
from .naming import advertised_name
from .service import MushPiService

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
ADVERT_RETRY_FIRST_S = 0.5
ADVERT_RETRY_MAX_S = 60.0
RECOVERIES_KEPT = 20


REFUSED_WHILE_CONNECTED = ("the controller did not take the advertisement again while a "
                           "phone is connected")


@attrs.define
class PeripheralStatus:
    """What ``get_status()`` reports of the trio side (read from any thread)."""

    running: bool = False
    registered: bool = False
    advertising: bool = False
    adapter: str | None = None
    advertised_name: str = ""
    advert_left_out: tuple[str, ...] = ()
    bluez_owner: str = ""
    restarts: int = 0
    last_recovery_s: float | None = None
    last_error: str | None = None
    started_at: float | None = None
    connects: int = 0
    disconnects: int = 0
    adapter_state: str = "unknown"
    """bluetoothd's PowerState ("on", "off", "off-enabling", "on-disabling",
    "off-blocked"), or "removed" while the adapter is gone."""
    rfkill: str = "unknown"
    recoveries: deque[dict[str, Any]] = attrs.field(
        factory=lambda: deque(maxlen=RECOVERIES_KEPT))
    recovery_totals: dict[str, int] = attrs.field(factory=dict)
    """"action:result" → how often, since start."""
    advert_problem: str | None = None
    """Why we serve alias-only, in plain words (None while advertising works)."""
    advert_refusals: int = 0
    advert_drops: int = 0
    advert_instances: dict[str, int | None] = attrs.field(
        factory=lambda: {"active": None, "available": None})

    def record(self, step: Recovery) -> None:
        self.recoveries.append(step.as_dict())
        key = f"{step.action}:{step.result}"
        self.recovery_totals[key] = self.recovery_totals.get(key, 0) + 1


def _backoff(attempt: int) -> float:
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, attempt - 1)))


class State(enum.Enum):
    """Where the supervisor is; see the module docstring for the transitions."""

    STOPPED = "stopped"
    WAITING_FOR_BLUEZ = "waiting-for-bluetoothd"
    FINDING_ADAPTER = "finding-adapter"
    REGISTERING = "registering"
    SERVING = "serving"
    BACKING_OFF = "backing-off"


async def _nothing_to_undo(_timeout: float) -> None:
    return None


def _nothing_to_forget() -> None:
    return None


@attrs.frozen
class Step:
    """One thing every bluetoothd session needs on the adapter, done in list order.

    ``register(conn, adapter)`` raises ``DBusError`` (or a ``StartError``) when
    it fails, and is then retried after a back-off. ``unregister(timeout)``
    undoes it at stop, best effort. ``forget()`` drops what we hold locally
    when bluetoothd or the adapter took the registration away with it.
    ``required`` steps must succeed before ``start()`` returns.
    """

    name: str
    register: Callable[[Connection, str], Awaitable[None]]
    unregister: Callable[[float], Awaitable[None]] = _nothing_to_undo
    forget: Callable[[], None] = _nothing_to_forget
    required: bool = False


@attrs.define
class _Start:
    """A start in progress: whom to tell, and the deadline that bounds it."""

    task_status: trio.TaskStatus[None]
    scope: trio.CancelScope


StateHandler = Callable[[Connection], Awaitable[State]]


class Peripheral:
    """Runs the MushPi service against bluetoothd until cancelled."""

    def __init__(self, settings: Settings, service: MushPiService, *, bus: str = "SYSTEM") -> None:
        self.settings = settings
        self.service = service
        self.bus = bus
        self.status = PeripheralStatus()
        self.state = State.STOPPED
        self.tracker: DeviceTracker | None = None
        self.conn: Connection | None = None
        self.app: GattApplication | None = None
        self.advert: Advertisement | None = None
        self._capabilities = AdvertisingCapabilities()
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self.name = advertised_name(settings.ble_name_prefix, None)
        self.fixed_name: str | None = None
        self.stage_getter: Callable[[], Callable[[], object] | None] = lambda: None
        self.rfkill = Rfkill()
        """Where rfkill switches are read and lifted (tests point it at a directory)."""
        self.pairing: Pairing | None = None
        self.access = RoomAccess(settings)
        """Who may read and write, the pairing window and bonds; kept across runs."""
        self.management: Management | None = None
        self.steps: list[Step] = [
            Step("application", self._register_application, self._unregister_application,
                 self._forget_application, required=True),
            Step("devices", self._follow_devices, forget=self._forget_devices),
            Step("alias", self._set_alias),
            Step("bonds", self._follow_bonds),
            Step("pairing agent", self._register_agent, self._unregister_agent,
                 self._forget_agent),
            Step("advertisement", self._register_advert, self._unregister_advert,
                 self._forget_advert),
        ]
        self._reset_session()

    def _reset_session(self) -> None:
        """What one bluetoothd session holds; empty between sessions."""
        self._owner = ""
        self._adapter: str | None = None
        self._adapter_removed = False
        self._done: set[str] = set()
        self._session_scopes: list[trio.CancelScope] = []
        self._advert_monitor: AdvertMonitor | None = None
        self._advert_registrations = 0
        self._advert_registering = False
        self._adapter_recovery: AdapterRecovery | None = None

    # -- lifetime ---------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start, report ``started`` once registered, then supervise until cancelled.

        May be called again after it returned (a portal started after a stop):
        nothing of the previous run — its advert object, device tracker or
        connectivity — carries over.
        """
        self._reset()
        try:
            async with open_connection(
                self.bus,
                call_timeout=self.settings.bus_timeout_s,
                handler_timeout=self.settings.handler_timeout_s + 0.5,
                timeout_error=DEADLINE_ERROR,
            ) as conn:
                with single_errors():
                    async with trio.open_nursery() as nursery:
                        await self._serve(conn, nursery, task_status)
        except BusUnreachable as exc:
            raise BusUnavailable(f"cannot reach the D-Bus bus: {exc}") from exc

    def _reset(self) -> None:
        self.status = PeripheralStatus()
        self.state = State.STOPPED
        self.advert = None
        self.tracker = None
        self.app = None
        self.pairing = None
        self._stopping = False
        self._start: _Start | None = None
        self._scope: trio.CancelScope | None = None
        self._wake = trio.Event()
        self._attempt = 0
        self._failure = ""
        self._recovering_since: float | None = None
        self._logged: set[tuple[State, State, str]] = set()
        self._advert_attempt = 0
        self._reset_session()
        self.service.set_connected(False)

    async def _serve(self, conn: Connection, nursery: trio.Nursery,
                     task_status: trio.TaskStatus[None]) -> None:
        self.conn = conn
        self._nursery = nursery
        app = GattApplication(
            conn,
            self.settings.dbus_app_path,
            [self.service.definition()],
            nursery=nursery,
            handler_timeout=self.settings.handler_timeout_s,
            on_device_seen=self._device_seen,
            access=self.access.gate,
        )
        self.app = app
        app.export()
        self.pairing = Pairing(conn, agent_path(self.settings.dbus_app_path),
                               self.settings.pairing_mode, window=self.access.window,
                               on_passkey=self._passkey_shown)
        self.access.attach(conn, self.pairing)
        self.management = Management(conn, self.access)
        await self.management.start()
        self.service.attach(app, nursery)
        self.status.running = True
        self.status.started_at = time.time()
        try:
            owner = await conn.watch_name_owner(BLUEZ)
            await self._supervise(conn, owner, task_status)
        finally:
            self._stopping = True
            self.status.running = False
            self.service.detach()
            await self._shutdown()
            self.access.detach()

    async def _shutdown(self) -> None:
        """Undo the steps in reverse order; best effort, bounded: bluetoothd may be gone."""
        bound = self.settings.shutdown_timeout_s * 0.8
        with trio.CancelScope(shield=True), trio.move_on_after(bound):
            for step in reversed(self.steps):
                if step.name in self._done:
                    await step.unregister(bound / 2)
        self._done.clear()
        self.status.registered = False
        self.status.advertising = False
        self._enter(State.STOPPED)

    # -- the supervisor ------------------------------------------------------------------
    async def _supervise(self, conn: Connection, owner: AsyncValue[str],
                         task_status: trio.TaskStatus[None]) -> None:
        """Run the state machine; while starting, bounded by the bus timeout."""
        timeout = self.settings.bus_timeout_s
        removals = MatchRule(sender=BLUEZ, path="/", interface=OBJECT_MANAGER,
                             member="InterfacesRemoved")
        with single_errors():
            async with conn.subscribe(removals) as removed, trio.open_nursery() as watchers:
                watchers.start_soon(self._watch_owner, owner)
                watchers.start_soon(self._watch_adapter, removed)
                with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
                    self._start = _Start(task_status, scope)
                    await self._loop(conn, owner)
                watchers.cancel_scope.cancel()  # only the start's deadline ends the loop
        if self.state is State.WAITING_FOR_BLUEZ:
            raise BluezUnavailable(
                "org.bluez is not on the bus: is bluetoothd running? "
                "(systemctl status bluetooth)"
            )
        raise StartTimeout(
            f"registration did not finish within {timeout:.3g} s (MUSHPI_DBUS_BUS_TIMEOUT_MS)"
        )

    async def _loop(self, conn: Connection, owner: AsyncValue[str]) -> NoReturn:
        """The one loop. Losing bluetoothd or the adapter cancels whatever state runs."""
        handlers: dict[State, StateHandler] = {
            State.WAITING_FOR_BLUEZ: partial(self._wait_for_bluez, owner=owner),
            State.FINDING_ADAPTER: self._find_adapter,
            State.REGISTERING: self._register,
            State.SERVING: self._serving,
            State.BACKING_OFF: self._back_off,
        }
        state = State.WAITING_FOR_BLUEZ
        while True:
            self._enter(state)
            with trio.CancelScope() as self._scope:
                try:
                    state = await handlers[state](conn)
                except (DBusError, StartError) as exc:
                    if self._start is not None or isinstance(exc, ConnectionLost):
                        raise
                    state = self._failed(str(exc))
            self._scope = None
            lost = self._lost(owner)
            if lost:
                self._forget(lost)
                state = State.WAITING_FOR_BLUEZ

    def _enter(self, state: State) -> None:
        """Log each transition once (a repeat, e.g. the same failure again, at debug)."""
        old, self.state = self.state, state
        if old is state:
            return
        detail = ""
        if state is State.BACKING_OFF:
            detail = f" retry_in_s={_backoff(self._attempt + 1):.2f} reason={self._failure}"
        key = (old, state, detail and self._failure)
        level = logging.DEBUG if key in self._logged else logging.INFO
        self._logged.add(key)
        log.log(level, "supervisor %s -> %s%s", old.value, state.value, detail)

    def _failed(self, reason: str) -> State:
        self.status.last_error = reason
        self._failure = reason
        return State.BACKING_OFF

    def _lost(self, owner: AsyncValue[str]) -> str | None:
        """Why this session's registrations are gone, if they are."""
        if self._owner and owner.value != self._owner:
            return "bluetoothd left the bus"
        if self._adapter_removed:
            return "adapter removed"
        return None

    async def _watch_owner(self, owner: AsyncValue[str]) -> None:
        async for _ in owner.eventual_values():
            if self._lost(owner) and self._scope is not None:
                self._scope.cancel()

    async def _watch_adapter(self, removed: trio.MemoryReceiveChannel[SignalMessage]) -> None:
        async for signal in removed:
            path, ifaces = signal.body
            if path == self._adapter and ADAPTER_IFACE in ifaces:
                log.warning("adapter removed adapter=%s", path)
                self.status.adapter_state = "removed"
                self.status.record(Recovery(time.time(), "wait", "waiting",
                                            "adapter removed; waiting for it to return"))
                self._adapter_removed = True
                if self._scope is not None:
                    self._scope.cancel()

    def _forget(self, reason: str) -> None:
        """bluetoothd or the adapter took every registration with it: drop ours too."""
        if self._done or self.status.bluez_owner:
            log.warning("registrations are gone reason=%s", reason)
        for scope in self._session_scopes:
            scope.cancel()
        for step in reversed(self.steps):
            step.forget()
        self._reset_session()
        if self._start is None and self._recovering_since is None:
            self._recovering_since = trio.current_time()
        self.status.registered = False
        self.status.advertising = False
        self.status.bluez_owner = ""
        self.service.set_connected(False)

    def _lose(self, step: str, reason: str) -> None:
        """bluetoothd let go of one step (an advert's Release): do it again."""
        if step in self._done:
            self._done.discard(step)
            self._failure = reason
            self._wake.set()

    def _started(self) -> None:
        start, self._start = self._start, None
        if start is not None:
            start.scope.deadline = math.inf
            start.task_status.started()

    # -- the states ----------------------------------------------------------------------
    async def _wait_for_bluez(self, _conn: Connection, *, owner: AsyncValue[str]) -> State:
        if not owner.value:
            await owner.wait_value(bool)
        self._owner = owner.value
        return State.FINDING_ADAPTER

    async def _find_adapter(self, conn: Connection) -> State:
        """The configured adapter, powered on."""
        timeout = self.settings.bus_timeout_s
        objects = await managed_objects(conn, timeout=timeout)
        adapter = pick_adapter(objects, self.settings.ble_adapter)
        if adapter is None:
            found = sorted(p.rsplit("/", 1)[-1] for p in objects if p.count("/") == 3)
            raise AdapterNotFound(
                f"adapter {self.settings.ble_adapter!r} not found (MUSHPI_BLE_ADAPTER); "
                f"bluetoothd has: {', '.join(found) or 'no adapters'}"
            )
        if self.status.adapter_state == "removed":
            self.status.record(Recovery(time.time(), "wait", "ok", "adapter returned"))
            log.info("adapter returned adapter=%s", adapter)
        self._adapter = adapter
        self.status.adapter = adapter
        await self._keep_adapter_powered(conn, adapter)
        return State.REGISTERING

    async def _keep_adapter_powered(self, conn: Connection, adapter: str) -> None:
        """Recover the adapter now if it is down, then watch it for this session.

        Not a precondition of registering: bluetoothd takes the application and
        the advert on a powered-off adapter and serves them once it powers on.
        """
        if self._adapter_recovery is None:
            recovery = AdapterRecovery(
                conn, adapter, allowed=self.settings.ble_adapter_recovery, rfkill=self.rfkill,
                timeout=self.settings.bus_timeout_s, on_step=self.status.record,
                on_condition=self._adapter_condition)
            await recovery.recover()
            self._adapter_recovery = recovery
            assert self._nursery is not None
            await self._nursery.start(self._in_session, recovery.run)

    def _adapter_condition(self, condition: AdapterCondition) -> None:
        was = self.status.adapter_state
        self.status.adapter_state = condition.state
        if (condition.powered and was not in ("on", "unknown", "removed")
                and self._advert_on_duty()):
            # Powered on again: the reset controller may have lost its advertising sets
            # while bluetoothd still counts ours active (kernel 6.1 with an
            # extended-advertising controller): register it again.
            self._lose("advertisement", f"the adapter is on again (was {was})")
        self.status.rfkill = condition.rfkill.describe()

    async def _register(self, conn: Connection) -> State:
        """Every step not yet done in this session, in order."""
        assert self._adapter is not None
        self._wake = trio.Event()
        for step in self.steps:
            if step.name in self._done:
                continue
            # done from the call on: a Release that overtakes the reply undoes it
            self._done.add(step.name)
            try:
                await step.register(conn, self._adapter)
            except (DBusError, StartError) as exc:
                self._done.discard(step.name)
                if self._start is not None or isinstance(exc, ConnectionLost):
                    raise
                return self._failed(f"{step.name}: {exc}")
            if self._start is not None and all(s.name in self._done
                                               for s in self.steps if s.required):
                self._started()
        return State.SERVING

    async def _serving(self, _conn: Connection) -> State:
        self._attempt = 0
        self._logged.clear()
        await self._wake.wait()
        return State.BACKING_OFF

    async def _back_off(self, _conn: Connection) -> State:
        self._attempt += 1
        await trio.sleep(_backoff(self._attempt))
        return State.FINDING_ADAPTER

    async def _in_session(self, fn: Callable[..., Awaitable[None]], *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run ``fn`` (a ``nursery.start`` task) until this bluetoothd session ends."""
        with trio.CancelScope() as scope:
            self._session_scopes.append(scope)
            await fn(task_status=task_status)

    # -- the steps -----------------------------------------------------------------------
    async def _register_application(self, _conn: Connection, adapter: str) -> None:
        assert self.app is not None
        try:
            await self.app.register(adapter, timeout=self.settings.bus_timeout_s)
        except ConnectionLost:
            raise
        except DBusError as exc:
            raise RegistrationRefused(
                f"bluetoothd refused the GATT application: {exc.name}: {exc.text}"
            ) from exc
        self.status.registered = True
        self.status.bluez_owner = self._owner
        self.status.last_error = None
        if self._recovering_since is not None:
            self.status.restarts += 1
            self.status.last_recovery_s = trio.current_time() - self._recovering_since
            self._recovering_since = None
            log.info("registered again recovery_s=%.3f", self.status.last_recovery_s)

    async def _unregister_application(self, timeout: float) -> None:
        assert self.app is not None
        await self.app.unregister(timeout=timeout)

    def _forget_application(self) -> None:
        assert self.app is not None
        self.app.registered_on = None
        self.app.reset_subscriptions()

    async def _follow_devices(self, conn: Connection, adapter: str) -> None:
        assert self._nursery is not None
        tracker = DeviceTracker(adapter, self._connection_changed)
        self.tracker = tracker
        with single_errors():
            await self._nursery.start(
                self._in_session, partial(tracker.run, conn, timeout=self.settings.bus_timeout_s))

    def _forget_devices(self) -> None:
        if self.tracker is not None:
            self.tracker.clear()

    async def _follow_bonds(self, _conn: Connection, adapter: str) -> None:
        assert self._nursery is not None and self.pairing is not None
        self.access.adapter_ready(adapter)
        with single_errors():
            await self._nursery.start(
                self._in_session,
                partial(self.pairing.run_bonds, adapter, timeout=self.settings.bus_timeout_s))

    async def _register_agent(self, _conn: Connection, adapter: str) -> None:
        """After every bluetoothd (re)start; a refusal is shown in the status, not retried."""
        assert self.pairing is not None
        await self.pairing.register(timeout=self.settings.bus_timeout_s, adapter_path=adapter)

    async def _unregister_agent(self, timeout: float) -> None:
        if self.pairing is not None:
            await self.pairing.unregister(timeout=timeout)

    def _forget_agent(self) -> None:
        if self.pairing is not None:
            self.pairing.forget()

    async def _set_alias(self, conn: Connection, adapter: str) -> None:
        self.name = await self.current_name()
        log.info("advertised name name=%s", self.name)
        await self._apply_alias(conn, adapter)

    async def _register_advert(self, conn: Connection, adapter: str) -> None:
        """Register the advert (re-planned from the adapter's capabilities) when enabled."""
        if not self.settings.ble_adv_enable:
            log.info("advertising disabled (MUSHPI_BLE_ADV_ENABLE=false); alias only name=%s",
                     self.name)
            return
        timeout = self.settings.bus_timeout_s
        self._capabilities = await read_capabilities(conn, adapter, timeout=timeout)
        self._instances(self._capabilities)
        plan = self._plan()
        if self.advert is None:
            self.advert = Advertisement(conn, advert_path(self.settings.dbus_app_path), plan,
                                        on_release=self._advert_released)
        elif self.advert.plan != plan:
            await self.advert.update(plan)
        self.status.advertising = False  # until bluetoothd takes it again
        self._advert_registering = True
        try:
            if self.advert.registered_on is not None:
                # dropped without a Release: bluetoothd may still hold it
                await self.advert.unregister(timeout=timeout, quiet=True)
            monitor = await self._watch_advert(conn, adapter)
            await self.advert.register(adapter, timeout=timeout)
        except ConnectionLost:
            raise
        except DBusError as exc:
            if not exc.name.startswith(ERROR_PREFIX + "."):
                raise  # bluetoothd gone or silent (NoReply, ServiceUnknown, timeout): retry
            self._advert_refused(exc)
        else:
            self._advert_registered()
            monitor.poke()
        finally:
            self._advert_registering = False

    def _advert_registered(self) -> None:
        self._advert_registrations += 1
        self.status.advertising = True
        if self.status.advert_problem is not None:
            log.info("advertising again after %d refusals; no longer alias-only",
                     self.status.advert_refusals)
        self.status.advert_problem = None
        self._advert_attempt = 0

    def _advert_refused(self, exc: DBusError) -> None:
        """Serve alias-only, say why in plain words, retry after a growing back-off."""
        problem = explain_refusal(exc, self._capabilities)
        previous = self.status.advert_problem
        if self.centrals_connected() and (previous is None
                                          or previous.startswith(REFUSED_WHILE_CONNECTED)):
            # it was on the air before this phone came: not a kernel/BlueZ mismatch
            problem = (f"{REFUSED_WHILE_CONNECTED} ({exc.name}: {exc.text}); a second phone "
                       "cannot find the Pi until it leaves. Serving alias only, retrying.")
        self.status.advertising = False
        self.status.advert_refusals += 1
        self._advert_attempt += 1
        delay = min(ADVERT_RETRY_MAX_S, ADVERT_RETRY_FIRST_S * 2 ** (self._advert_attempt - 1))
        level = logging.WARNING if problem != self.status.advert_problem else logging.DEBUG
        log.log(level, "advertisement refused error=%s: %s; serving alias-only name=%s",
                exc.name, problem, self.name)
        log.log(level, "advertisement retry retry_in_s=%.1f refusals=%d", delay,
                self.status.advert_refusals)
        self.status.advert_problem = problem
        self.status.last_error = f"advertisement: {exc.name}: {exc.text}"
        assert self._nursery is not None
        self._nursery.start_soon(self._in_session, partial(self._retry_advert, delay))

    async def _retry_advert(self, delay: float, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
        task_status.started()
        await trio.sleep(delay)
        self._lose("advertisement", "retrying the refused advertisement")

    async def _watch_advert(self, conn: Connection, adapter: str) -> AdvertMonitor:
        """Once per session: the monitor that confirms the advert is on the air."""
        if self._advert_monitor is None:
            monitor = AdvertMonitor(conn, adapter, registration=self._advert_registration,
                                    on_gone=self._advert_gone, on_instances=self._instances,
                                    timeout=self.settings.bus_timeout_s)
            self._advert_monitor = monitor
            assert self._nursery is not None
            await self._nursery.start(self._in_session, monitor.run)
        return self._advert_monitor

    def _advert_on_duty(self) -> bool:
        """Registered, or being registered: a connect or a power-on (which can stop the
        controller advertising behind bluetoothd's back) calls for registering again."""
        return ((self.status.advertising or self._advert_registering)
                and "advertisement" in self._done and not self._stopping)

    def _advert_registration(self) -> int | None:
        """Which of our registrations bluetoothd should have on the air, if any (none
        while one is being made)."""
        return (self._advert_registrations
                if self.status.advertising and self._advert_on_duty() else None)

    def _advert_gone(self, caps: AdvertisingCapabilities) -> None:
        self.status.advertising = False
        self.status.advert_drops += 1
        log.warning("advertisement no longer active in bluetoothd (ActiveInstances 0, "
                    "available %d, no Release); registering it again drops=%d",
                    caps.supported_instances, self.status.advert_drops)
        self._lose("advertisement", "advertisement dropped by bluetoothd")

    def _instances(self, caps: AdvertisingCapabilities) -> None:
        self.status.advert_instances = {"active": caps.active_instances,
                                        "available": caps.supported_instances}

    async def _unregister_advert(self, timeout: float) -> None:
        if self.advert is not None:
            await self.advert.unregister(timeout=timeout)

    def _forget_advert(self) -> None:
        if self.advert is not None:
            self.advert.registered_on = None
        self.status.advertising = False

    # -- advertising and the name ----------------------------------------------------------
    def _advert_released(self) -> None:
        self.status.advertising = False
        if not self._stopping:
            self._lose("advertisement", "advertisement released")

    def _plan(self) -> AdvertPlan:
        plan = plan_advertisement(self.name, self.settings.ble_service_uuid,
                                  self._capabilities, self.settings.ble_adv_tx_power)
        if plan.left_out and plan.left_out != self.status.advert_left_out:
            log.info("advertisement leaves out: %s", "; ".join(plan.left_out))
        self.status.advert_left_out = plan.left_out
        return plan

    async def _apply_alias(self, conn: Connection, adapter: str) -> None:
        try:
            await set_property(conn, adapter, ADAPTER_IFACE, "Alias", "s", self.name,
                               timeout=self.settings.bus_timeout_s)
            self.status.advertised_name = self.name
        except DBusError as exc:
            log.warning("setting the adapter alias failed error=%s", exc)

    def request_name_refresh(self, fixed: str | None = None) -> None:
        """From the loop thread: recompute (or fix) the name and apply it, not waited for.

        ``fixed`` pins the name until the next refresh without one.
        """
        self.fixed_name = fixed
        if self._nursery is not None:
            self._nursery.start_soon(self.refresh_name)

    def spawn(self, fn: Callable[[], Awaitable[object]]) -> None:
        """From the loop thread: run ``fn`` as a task of the peripheral's nursery."""
        if self._nursery is not None:
            self._nursery.start_soon(fn)

    async def current_name(self) -> str:
        """The pinned name, or ``{prefix}-{Species}{Stage}`` from the stage getter (run in
        a worker thread under the handler deadline; on failure the name stays)."""
        if self.fixed_name is not None:
            return self.fixed_name
        getter = self.stage_getter()
        if getter is None:
            return advertised_name(self.settings.ble_name_prefix, None)
        try:
            stage = await self.service.runner.call("get_stage_data", getter)
        except (ControllerTimeout, ControllerFailure) as exc:
            log.warning("advertised name not recomputed error=%s", exc)
            return self.name
        return advertised_name(self.settings.ble_name_prefix, stage)

    async def refresh_name(self) -> None:
        await self.rename(await self.current_name())

    async def rename(self, name: str) -> None:
        """Apply a new advertised name live (alias and advert), no re-registration."""
        if name == self.name:
            return
        self.name = name
        log.info("advertised name name=%s", name)
        conn, adapter = self.conn, self.status.adapter
        if conn is None or adapter is None or not self.status.registered:
            return
        await self._apply_alias(conn, adapter)
        if self.advert is not None and self.settings.ble_adv_enable:
            await self.advert.update(self._plan())

    def _passkey_shown(self, address: str, passkey: int) -> None:
        """From the agent (loop thread): the controller's ``on_pairing_passkey``, in a
        worker thread like every callback."""
        if self._nursery is not None:
            self._nursery.start_soon(self.service.passkey_shown, address, passkey)

    # -- devices -------------------------------------------------------------------------
    def _device_seen(self, device: str, mtu: int) -> None:
        if self.tracker is not None:
            self.tracker.note_request(device, mtu)

    def _connection_changed(self, central: Central, connected: bool) -> None:
        if connected:
            self.status.connects += 1
            if self._advert_on_duty():
                # on the air again for a second phone (see the module's docstring)
                self._lose("advertisement", "a central connected; the controller stopped "
                           "advertising")
        else:
            self.status.disconnects += 1
            if self.app is not None:
                self.app.device_left(central.path)  # no longer a reason to stay on signals
        if self._advert_monitor is not None:
            self._advert_monitor.poke()  # some controllers stop advertising on either
        self.service.set_connected(bool(self.tracker and self.tracker.connected))

    def centrals_connected(self) -> bool:
        return bool(self.tracker and self.tracker.connected)

    @property
    def centrals(self) -> list[Central]:
        return list(self.tracker.centrals.values()) if self.tracker else []
