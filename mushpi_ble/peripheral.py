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

*Registering* runs the session's steps (:mod:`.session`) in order — the
GATT application, device tracking, the adapter alias, bonds, the pairing
agent, the advertisement — skipping the ones already done, so a failed or
released step is all that is done again. Each step owns its state and its
part of the status; steps hear of connects, power changes and the stop
through events this supervisor passes on (:meth:`Peripheral.announce`), and
ask to be registered again through :meth:`Peripheral.redo`. When our advert
is registered again is decided in one place, ``session.advert_duty``.

While starting, a failure raises the matching ``StartError`` instead of
backing off, and the whole start is bounded by the bus timeout. Shutdown
undoes the steps in reverse order within a bound.
"""
from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NoReturn

import attrs
import trio
from trio_util import AsyncValue

from .access import RoomAccess
from .config import Settings
from .dbus import (
    BusUnreachable,
    Connection,
    ConnectionLost,
    DBusError,
    MatchRule,
    SignalMessage,
    open_connection,
    single_errors,
)
from .errors import BluezUnavailable, BusUnavailable, StartError, StartTimeout
from .gatt import ADAPTER_IFACE, BLUEZ, DEADLINE_ERROR, OBJECT_MANAGER, GattApplication
from .management import Management
from .service import MushPiService
from .session import SessionHost, SessionSteps, Stopping

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0


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
        self.stage_getter: Callable[[], Callable[[], object] | None] = lambda: None
        self.access = RoomAccess(settings)
        """Who may read and write, the pairing window and bonds; kept across runs."""
        self.steps = SessionSteps(settings, self.access, on_connectivity=service.set_connected,
                                  ask_stage=self._ask_stage,
                                  on_passkey=self._passkey_shown)
        self.host = SessionHost(self.steps.ordered)
        self.status_source: Callable[[], dict[str, Any]] = self.snapshot
        """What the management interface's GetStatus answers (the portal's fuller view)."""
        self.state = State.STOPPED
        self.management: Management | None = None
        self._reset()

    def _reset(self) -> None:
        """Nothing of a previous run carries over."""
        self.running = False
        self.started_at: float | None = None
        self.restarts = 0
        self.last_recovery_s: float | None = None
        self._start: _Start | None = None
        self._scope: trio.CancelScope | None = None
        self._attempt = 0
        self._recovering_since: float | None = None
        self._logged: set[tuple[State, State, str]] = set()
        self._owner = ""
        self.steps.adapter.reset_run()

    # -- lifetime ---------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start, report ``started`` once registered, then supervise until cancelled.

        May be called again after it returned (a portal started after a stop).
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

    async def _serve(self, conn: Connection, nursery: trio.Nursery,
                     task_status: trio.TaskStatus[None]) -> None:
        self.host.open_run(conn, nursery)
        app = GattApplication(conn, self.settings.dbus_app_path, self.service.services(),
                              nursery=nursery, handler_timeout=self.settings.handler_timeout_s,
                              on_device_seen=self.steps.devices.note_request,
                              access=self.access.gate)
        app.export()
        self.steps.application.serve(app)
        for step in self.steps:
            step.attach(self.host)
        self.management = Management(conn, self.access, status=lambda: self.status_source(),
                                     adapter=self.settings.ble_adapter)
        await self.management.start()
        self.service.attach(app, nursery)
        self.running, self.started_at = True, time.time()
        try:
            owner = await conn.watch_name_owner(BLUEZ)
            await self._supervise(conn, owner, task_status)
        finally:
            self.running = False
            self.host.announce(Stopping())
            self.service.detach()
            await self._shutdown()
            for step in self.steps:
                step.detach()
            self.host.close_run()

    async def _shutdown(self) -> None:
        """Undo the steps in reverse order; best effort, bounded: bluetoothd may be gone."""
        bound = self.settings.shutdown_timeout_s * 0.8
        with trio.CancelScope(shield=True), trio.move_on_after(bound):
            for step in reversed(self.steps.ordered):
                if step.done:
                    await step.unregister(bound / 2)
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
        """Log each transition once (a repeat, e.g. the same failure again, at debug); the
        line is written before the state changes, so a status reader in another thread
        that sees the new state finds its line logged."""
        old = self.state
        if old is state:
            return
        detail = ""
        if state is State.BACKING_OFF:
            detail = f" retry_in_s={_backoff(self._attempt + 1):.2f} reason={self.host.reason}"
        key = (old, state, detail and self.host.reason)
        level = logging.DEBUG if key in self._logged else logging.INFO
        self._logged.add(key)
        log.log(level, "supervisor %s -> %s%s", old.value, state.value, detail)
        self.state = state
        self.host.changed()

    def _failed(self, reason: str, step: str | None = None) -> State:
        self.host.note_error(reason, step)
        self.host.reason = reason
        return State.BACKING_OFF

    def _lost(self, owner: AsyncValue[str]) -> str | None:
        """Why this session's registrations are gone, if they are."""
        if self._owner and owner.value != self._owner:
            return "bluetoothd left the bus"
        if self.steps.adapter.removed:
            return "adapter removed"
        return None

    async def _watch_owner(self, owner: AsyncValue[str]) -> None:
        async for _ in owner.eventual_values():
            if self._lost(owner) and self._scope is not None:
                self._scope.cancel()

    async def _watch_adapter(self, removed: trio.MemoryReceiveChannel[SignalMessage]) -> None:
        async for signal in removed:
            path, ifaces = signal.body
            if ADAPTER_IFACE in ifaces and self.steps.adapter.removed_now(path):
                self.host.changed()
                if self._scope is not None:
                    self._scope.cancel()

    def _forget(self, reason: str) -> None:
        """bluetoothd or the adapter took every registration with it: drop ours too."""
        if any(step.done for step in self.steps) or self._owner:
            log.warning("registrations are gone reason=%s", reason)
        for step in reversed(self.steps.ordered):
            step.forget()
        self.steps.adapter.forget()
        self.host.end_session()
        self._owner = ""
        if self._start is None and self._recovering_since is None:
            self._recovering_since = trio.current_time()
        self.host.changed()

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
        await self.steps.adapter.find(conn, self.host)
        return State.REGISTERING

    async def _register(self, _conn: Connection) -> State:
        """Every step not yet done in this session, in order."""
        adapter = self.steps.adapter.adapter
        assert adapter is not None
        self.host.wake = trio.Event()
        for step in self.steps:
            if step.done:
                continue
            step.done = True  # from the call on: a Release that overtakes the reply undoes it
            errors_before = self.host.errors_noted
            try:
                await step.register(adapter)
            except (DBusError, StartError) as exc:
                step.done = False
                if self._start is not None or isinstance(exc, ConnectionLost):
                    raise
                return self._failed(f"{step.name}: {exc}", step.name)
            self.host.step_succeeded(step, errors_before)
            if step.required:
                self._registered()
            if self._start is not None and self.steps.all_required_done():
                self._started()
        return State.SERVING

    def _registered(self) -> None:
        """A required registration went through: the session is up (again)."""
        self.host.note_error(None)
        if self._recovering_since is not None:
            self.restarts += 1
            self.last_recovery_s = trio.current_time() - self._recovering_since
            self._recovering_since = None
            log.info("registered again recovery_s=%.3f", self.last_recovery_s)

    async def _serving(self, _conn: Connection) -> State:
        self._attempt = 0
        self._logged.clear()
        await self.host.wake.wait()
        return State.BACKING_OFF

    async def _back_off(self, _conn: Connection) -> State:
        self._attempt += 1
        await trio.sleep(_backoff(self._attempt))
        return State.FINDING_ADAPTER

    # -- what the controller and the steps ask -----------------------------------------
    async def _ask_stage(self) -> object | None:
        getter = self.stage_getter()
        return None if getter is None else await self.service.runner.call("get_stage_data",
                                                                          getter)

    def _passkey_shown(self, address: str, passkey: int) -> bool:
        """From the agent (loop thread): the controller's ``on_pairing_passkey``, in a
        worker thread like every callback; False when the controller set none."""
        if not self.service.has_callback("on_pairing_passkey"):
            return False
        self.host.spawn(partial(self.service.passkey_shown, address, passkey))
        return True

    def request_name_refresh(self, fixed: str | None = None) -> None:
        """From the loop thread: recompute (or pin) the name and apply it, not waited for."""
        self.steps.naming.fixed = fixed
        self.host.spawn(self.steps.refresh_name)

    def snapshot(self) -> dict[str, Any]:
        """The trio side's status, each fact from the one part that owns it."""
        management = self.management
        return {
            "state": self.state.value,
            "bluez_owner": self._owner if self.steps.application.registered else "",
            "restarts": self.restarts,
            "last_recovery_s": self.last_recovery_s,
            "last_error": self.host.last_error,
            "started_at": self.started_at,
            **self.steps.snapshot(),
            "management": management.status.as_dict() if management is not None else None,
        }
