"""The advertisement step: registered, watched, and registered again when lost.

Executes :mod:`.advert_duty`'s decisions. A refused advert leaves the
peripheral serving alias-only, with the refusal explained in plain words,
and is retried after a back-off of its own. The :class:`AdvertMonitor`
looks at bluetoothd's ``ActiveInstances`` after registering and after every
connect and disconnect, and reports an advert that is gone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from ..dbus import ConnectionLost, DBusError
from ..gatt import (
    ERROR_PREFIX,
    Advertisement,
    AdvertisingCapabilities,
    AdvertMonitor,
    AdvertPlan,
    PairingWindow,
    advert_path,
    explain_refusal,
    plan_advertisement,
    read_capabilities,
)
from . import advert_duty as duty
from . import advert_interval as pace
from .step import CentralConnected, CentralLeft, PowerChanged, SessionEvent, Step, Stopping

log = logging.getLogger(__name__)


class Advertiser(Step):
    """Our LE advertisement, kept on the air while ``MUSHPI_BLE_ADV_ENABLE`` is set."""

    name = "advertisement"

    def __init__(self, *, app_root: str, service_uuid: str, tx_power: str,
                 enabled: bool, timeout: float, name: Callable[[], str],
                 intervals: pace.IntervalSettings | None = None,
                 window: PairingWindow | None = None) -> None:
        super().__init__()
        self._window = window
        self._unwatch: Callable[[], None] | None = None
        self._intervals = intervals or pace.IntervalSettings(enabled=False)
        self._path = advert_path(app_root)
        self._service_uuid = service_uuid
        self._tx_power = tx_power
        self.enabled = enabled
        self._timeout = timeout
        self._name = name
        self._reset_run()

    def _reset_run(self) -> None:
        self.advert: Advertisement | None = None
        self._capabilities = AdvertisingCapabilities()
        self.advertising = False
        self.stopping = False
        self.left_out: tuple[str, ...] = ()
        self.problem: str | None = None
        """Why we serve alias-only, in plain words (None while advertising works)."""
        self.refusals = 0
        self.drops = 0
        self.instances: dict[str, int | None] = {"active": None, "available": None}
        self._refusals_in_a_row = 0
        self._connected = False
        self._fast_until: float | None = None
        self._fast_until_wall: float | None = None
        self._pace_changed = trio.Event()
        self._began = False
        self.interval_fallback: str | None = None
        """Why bluetoothd's default interval is used although intervals are asked for."""
        self.interval = pace.Interval("default")
        """The interval the advert was last registered with."""
        self._reset_session()

    def _reset_session(self) -> None:
        self.monitor: AdvertMonitor | None = None
        self._registrations = 0
        self._registering = False


    def detach(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        super().detach()
        self._reset_run()

    def _watch_window(self) -> None:
        """A pairing window opening (any thread) starts a fast period, in the loop."""
        if self._window is None or self._unwatch is not None:
            return
        token = trio.lowlevel.current_trio_token()

        def in_loop() -> None:
            if self._host is not None:
                self.hurry(pace.WindowOpened(trio.current_time()), "a pairing window opened")

        def opened() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(in_loop)

        self._unwatch = self._window.watch(opened)

    # -- the rule's facts and its execution ---------------------------------------------------
    def _facts(self) -> duty.AdvertFacts:
        return duty.AdvertFacts(done=self.done, registering=self._registering,
                                advertising=self.advertising, stopping=self.stopping)

    def _apply(self, event: duty.AdvertEvent) -> None:
        decision = duty.decide(self._facts(), event)
        if decision.register_again is not None:
            self.host.redo(self, decision.register_again)
        if decision.look and self.monitor is not None:
            self.monitor.poke()

    def on_event(self, event: SessionEvent) -> None:
        if isinstance(event, CentralConnected):
            self._connected = True
            self._apply(duty.CentralCame())
        elif isinstance(event, CentralLeft):
            self._connected = event.any_connected
            self._apply(duty.CentralWent())
            self.hurry(pace.CentralWent(trio.current_time()), "a central left")
        elif isinstance(event, PowerChanged):
            self._apply(duty.PowerSeen(event.was, event.condition.powered))
        elif isinstance(event, Stopping):
            self.stopping = True

    def _registration(self) -> int | None:
        return duty.expected_registration(self._facts(), self._registrations)

    # -- registration -------------------------------------------------------------------------
    async def register(self, adapter: str) -> None:
        """Register the advert (re-planned from the adapter's capabilities) when enabled."""
        if not self.enabled:
            log.info("advertising disabled (MUSHPI_BLE_ADV_ENABLE=false); alias only name=%s",
                     self._name())
            return
        conn = self.host.conn
        self._capabilities = await read_capabilities(conn, adapter, timeout=self._timeout)
        self._instances(self._capabilities)
        self._watch_window()
        if not self._began:
            self._began = True
            self.host.spawn(self._pacer)
            self._set_fast_until(pace.fast_until(self._intervals, None,
                                                 pace.Began(trio.current_time())))
        plan = self._plan()
        if self.advert is None:
            self.advert = Advertisement(conn, self._path, plan, on_release=self._released)
        self._set_advertising(False)  # until bluetoothd takes it again
        self._registering = True
        try:
            if self.advert.registered_on is not None:
                # dropped without a Release: bluetoothd may still hold it
                await self.advert.unregister(timeout=self._timeout, quiet=True)
            if self.advert.plan != plan:
                # only now, unregistered: a PropertiesChanged on an advert bluetoothd
                # holds, followed at once by its UnregisterAdvertisement, crashed
                # bluetoothd 5.66 (SIGSEGV in its D-Bus proxy code) in the VM lab
                await self.advert.update(plan, announce=False)
            await self._watch(adapter)
            await self._register_paced(adapter)
        except ConnectionLost:
            raise
        except DBusError as exc:
            if not exc.name.startswith(ERROR_PREFIX + "."):
                raise  # bluetoothd gone or silent (NoReply, ServiceUnknown, timeout): retry
            self._refused(exc)
        else:
            self._registered()
        finally:
            self._registering = False

    async def _register_paced(self, adapter: str) -> None:
        """Register with the interval of the moment; one refused for its interval is
        registered again at once without it, and stays so (the reason is kept)."""
        assert self.advert is not None
        try:
            await self.advert.register(adapter, timeout=self._timeout)
        except DBusError as exc:
            reason = pace.fallback_reason(self.interval, exc.name, exc.text)
            if reason is None or not exc.name.startswith(ERROR_PREFIX + "."):
                raise
            self.interval_fallback = reason
            log.warning("advertising interval refused: %s", reason)
            await self.advert.update(self._plan(), announce=False)  # refused: not held
            await self.advert.register(adapter, timeout=self._timeout)
        self._pace_changed.set()

    async def _pacer(self) -> None:
        """One task per run: at the end of each fast period, registered again with the
        slow interval (a period made longer meanwhile is waited for anew)."""
        while True:
            changed = self._pace_changed = trio.Event()
            until = self._fast_until
            if until is not None:
                with trio.move_on_at(until):
                    await changed.wait()
                if not changed.is_set():
                    self._pace_again("the fast advertising period is over")
            await changed.wait()

    def hurry(self, event: pace.IntervalEvent, why: str) -> None:
        """Start (or lengthen) a fast period: a central left, a pairing window opened."""
        self._set_fast_until(pace.fast_until(self._intervals, self._fast_until, event))
        self._pace_again(f"{why}; advertising fast")

    def _set_fast_until(self, until: float | None) -> None:
        self._fast_until = until
        self._fast_until_wall = (None if until is None
                                 else time.time() + until - trio.current_time())
        self._pace_changed.set()
        self.host.changed()

    def _pace_again(self, reason: str) -> None:
        wanted = pace.interval_at(self._intervals, self._fast_until, trio.current_time(),
                                  self.interval_fallback,
                                  honoured=self._capabilities.honours_intervals)
        if wanted != self.interval and self._facts().on_duty:
            self.host.redo(self, reason)

    async def _watch(self, adapter: str) -> None:
        """Once per session: the monitor that confirms the advert is on the air."""
        if self.monitor is None:
            self.monitor = AdvertMonitor(self.host.conn, adapter, registration=self._registration,
                                         on_gone=self._gone, on_instances=self._instances,
                                         timeout=self._timeout)
            await self.host.start_in_session(self.monitor.run)

    def _registered(self) -> None:
        self._registrations += 1
        if self.problem is not None:
            log.info("advertising again after %d refusals; no longer alias-only", self.refusals)
        self.problem = None
        self._refusals_in_a_row = 0
        self._set_advertising(True)  # last: a status reader woken now sees all of it
        self._apply(duty.Registered())

    def _refused(self, exc: DBusError) -> None:
        """Serve alias-only, say why in plain words, retry after a growing back-off."""
        problem = duty.refusal_problem(explain_refusal(exc, self._capabilities),
                                       f"{exc.name}: {exc.text}", connected=self._connected,
                                       previous=self.problem)
        self.refusals += 1
        self._refusals_in_a_row += 1
        delay = duty.retry_delay(self._refusals_in_a_row)
        level = logging.WARNING if problem != self.problem else logging.DEBUG
        log.log(level, "advertisement refused error=%s: %s; serving alias-only name=%s",
                exc.name, problem, self._name())
        log.log(level, "advertisement retry retry_in_s=%.1f refusals=%d", delay, self.refusals)
        self.problem = problem
        self._set_advertising(False)
        self.host.note_error(f"advertisement: {exc.name}: {exc.text}", self.name)
        self.host.spawn_in_session(partial(self._retry, delay))

    async def _retry(self, delay: float, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(delay)
        self._apply(duty.RetryDue())

    def _gone(self, caps: AdvertisingCapabilities) -> None:
        self.drops += 1
        log.warning("advertisement no longer active in bluetoothd (ActiveInstances 0, "
                    "available %d, no Release); registering it again drops=%d",
                    caps.supported_instances, self.drops)
        self._apply(duty.Gone())  # decided on the facts the monitor looked with
        self._set_advertising(False)

    def _released(self) -> None:
        self._apply(duty.Released())
        self._set_advertising(False)

    def _instances(self, caps: AdvertisingCapabilities) -> None:
        self.instances = {"active": caps.active_instances, "available": caps.supported_instances}
        self.host.changed()

    def _set_advertising(self, advertising: bool) -> None:
        self.advertising = advertising
        self.host.changed()

    async def unregister(self, timeout: float) -> None:
        if self.advert is not None:
            await self.advert.unregister(timeout=timeout)
        self._set_advertising(False)

    def forget(self) -> None:
        if self.advert is not None:
            self.advert.registered_on = None
        self._reset_session()
        self._set_advertising(False)

    # -- the plan and the name ----------------------------------------------------------------
    def _plan(self) -> AdvertPlan:
        self.interval = pace.interval_at(self._intervals, self._fast_until, trio.current_time(),
                                         self.interval_fallback,
                                         honoured=self._capabilities.honours_intervals)
        plan = plan_advertisement(self._name(), self._service_uuid, self._capabilities,
                                  self._tx_power, self.interval.ms)
        if plan.left_out and plan.left_out != self.left_out:
            log.info("advertisement leaves out: %s", "; ".join(plan.left_out))
        self.left_out = plan.left_out
        return plan

    async def replan(self) -> None:
        """The name changed: apply the new plan live, no re-registration."""
        if self.advert is not None and self.enabled:
            await self.advert.update(self._plan())

    @property
    def state(self) -> str:
        """"advertising", "alias-only" (refused: see ``problem``), "disabled" or
        "not-advertising" (being registered, or the adapter is off)."""
        if not self.enabled:
            return "disabled"
        if self.advertising:
            return "advertising"
        return "alias-only" if self.problem else "not-advertising"

    def snapshot(self) -> dict[str, Any]:
        return {
            "advertising": self.advertising,
            "advert_state": self.state,
            "advert_left_out": list(self.left_out),
            "advert_problem": self.problem,
            "advert_refusals": self.refusals,
            "advert_drops": self.drops,
            "advert_instances": dict(self.instances),
            "advert_interval": {
                "phase": self.interval.phase,
                "asked_ms": self.interval.ms,
                "on_air_ms": self.interval.on_air_ms,
                "in_force": pace.in_force(self.interval),
                "fast_until": self._fast_until_wall,
                "fallback": self.interval_fallback,
            },
        }
