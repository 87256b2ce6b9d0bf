"""The trio side of the peripheral: one connection, one nursery, supervised.

Connects to the bus, waits for ``org.bluez``, finds (and powers) the
adapter, exports and registers the MushPi application, advertises, follows
connected centrals, and keeps all of it alive across bluetoothd restarts by
watching who owns ``org.bluez``: each owner gets a *session* that is
cancelled when the owner changes. Shutdown unregisters within a bound.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio
from trio_util import AsyncValue

from .config import Settings
from .controller import ControllerFailure, ControllerTimeout
from .dbus import (
    BusUnreachable,
    Connection,
    ConnectionLost,
    DBusError,
    MatchRule,
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
    ADAPTER_IFACE,
    ensure_powered,
    managed_objects,
    pick_adapter,
    set_property,
)
from .gatt.adapter import (
    OBJECT_MANAGER as OBJECT_MANAGER_IFACE,
)
from .gatt.advertising import (
    Advertisement,
    AdvertisingCapabilities,
    AdvertPlan,
    advert_path,
    plan_advertisement,
    read_capabilities,
)
from .gatt.devices import Central, DeviceTracker
from .naming import advertised_name
from .service import MushPiService

log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
ADAPTER_WAIT_S = 10.0


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


def _backoff(attempt: int) -> float:
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, attempt - 1)))


class Peripheral:
    """Runs the MushPi service against bluetoothd until cancelled."""

    def __init__(self, settings: Settings, service: MushPiService, *, bus: str = "SYSTEM") -> None:
        self.settings = settings
        self.service = service
        self.bus = bus
        self.status = PeripheralStatus()
        self.tracker: DeviceTracker | None = None
        self.conn: Connection | None = None
        self.app: GattApplication | None = None
        self.advert: Advertisement | None = None
        self._capabilities = AdvertisingCapabilities()
        self._advert_wanted = trio.Event()
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self.name = advertised_name(settings.ble_name_prefix, None)
        self.fixed_name: str | None = None
        self.stage_getter: Callable[[], Callable[[], object] | None] = lambda: None

    # -- lifetime ---------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start, report ``started`` once registered, then supervise until cancelled.

        May be called again after it returned (a portal started after a stop):
        nothing of the previous run — its advert object, device tracker or
        connectivity — carries over.
        """
        self._reset()
        timeout = self.settings.bus_timeout_s
        try:
            async with open_connection(
                self.bus,
                call_timeout=timeout,
                handler_timeout=self.settings.handler_timeout_s + 0.5,
            ) as conn:
                with single_errors():
                    async with trio.open_nursery() as nursery:
                        await self._serve(conn, nursery, task_status)
        except BusUnreachable as exc:
            raise BusUnavailable(f"cannot reach the D-Bus bus: {exc}") from exc

    def _reset(self) -> None:
        self.status = PeripheralStatus()
        self.advert = None
        self.tracker = None
        self.app = None
        self._advert_wanted = trio.Event()
        self._stopping = False
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
        )
        self.app = app
        app.export()
        self.service.attach(app, nursery)
        self.status.running = True
        self.status.started_at = time.time()
        try:
            owner = await conn.watch_name_owner(BLUEZ)
            await self._first_registration(conn, app, owner)
            task_status.started()
            await self._supervise(conn, app, owner)
        finally:
            self._stopping = True
            self.status.running = False
            self.service.detach()
            await self._shutdown(app)

    async def _shutdown(self, app: GattApplication) -> None:
        with trio.CancelScope(shield=True):
            await self._unregister_all(self.settings.shutdown_timeout_s * 0.8)
        self.status.registered = False
        self.status.advertising = False

    # -- registration --------------------------------------------------------------------
    async def _first_registration(self, conn: Connection, app: GattApplication,
                                  owner: AsyncValue[str]) -> None:
        timeout = self.settings.bus_timeout_s
        deadline = trio.current_time() + timeout
        if not owner.value:
            log.info("waiting for bluetoothd (org.bluez) timeout_s=%.3g", timeout)
            with trio.move_on_at(deadline):
                await owner.wait_value(lambda v: bool(v))
            if not owner.value:
                raise BluezUnavailable(
                    "org.bluez is not on the bus: is bluetoothd running? "
                    "(systemctl status bluetooth)"
                )
        try:
            with trio.fail_at(deadline):
                await self._register(conn, app, owner.value, wait_for_adapter=False)
        except trio.TooSlowError as exc:
            raise StartTimeout(
                f"registration did not finish within {timeout:.3g} s "
                f"(MUSHPI_DBUS_BUS_TIMEOUT_MS)"
            ) from exc

    async def _find_adapter(self, conn: Connection, *, wait: bool) -> str:
        """The configured adapter's path; optionally wait (bounded) for it to appear."""
        timeout = self.settings.bus_timeout_s
        give_up = trio.current_time() + (ADAPTER_WAIT_S if wait else 0)
        attempt = 0
        while True:
            objects = await managed_objects(conn, timeout=timeout)
            adapter = pick_adapter(objects, self.settings.ble_adapter)
            if adapter is not None:
                return adapter
            if trio.current_time() >= give_up:
                found = sorted(p.rsplit("/", 1)[-1] for p in objects if p.count("/") == 3)
                raise AdapterNotFound(
                    f"adapter {self.settings.ble_adapter!r} not found (MUSHPI_BLE_ADAPTER); "
                    f"bluetoothd has: {', '.join(found) or 'no adapters'}"
                )
            attempt += 1
            log.info("waiting for adapter=%s attempt=%d", self.settings.ble_adapter, attempt)
            await trio.sleep(_backoff(attempt))

    async def _register(self, conn: Connection, app: GattApplication, bluez_owner: str, *,
                        wait_for_adapter: bool) -> None:
        timeout = self.settings.bus_timeout_s
        adapter = await self._find_adapter(conn, wait=wait_for_adapter)
        await ensure_powered(conn, adapter, timeout=timeout)
        try:
            await app.register(adapter, timeout=timeout)
        except DBusError as exc:
            raise RegistrationRefused(
                f"bluetoothd refused the GATT application: {exc.name}: {exc.text}"
            ) from exc
        self.status.adapter = adapter
        self.status.registered = True
        self.status.bluez_owner = bluez_owner
        self.status.last_error = None

    # -- supervision ---------------------------------------------------------------------
    async def _supervise(self, conn: Connection, app: GattApplication,
                         owner: AsyncValue[str]) -> None:
        """One session per bluetoothd instance; a new owner means a new session."""
        recovering_since: float | None = None
        while True:
            current = owner.value
            if not current:
                self._forget_registrations("bluetoothd left the bus")
                await owner.wait_value(lambda v: bool(v))
                recovering_since = trio.current_time()
                continue
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._session, conn, app, current, recovering_since)
                await owner.wait_value(partial(operator.ne, current))
                nursery.cancel_scope.cancel()
            recovering_since = trio.current_time()
            self._forget_registrations("bluetoothd left the bus")

    def _forget_registrations(self, reason: str) -> None:
        if not (self.status.registered or self.status.bluez_owner):
            return
        log.warning("registrations are gone reason=%s", reason)
        assert self.app is not None
        self.app.registered_on = None
        self.app.reset_subscriptions()
        if self.advert is not None:
            self.advert.registered_on = None
        self.status.registered = False
        self.status.advertising = False
        self.status.bluez_owner = ""
        if self.tracker is not None:
            self.tracker.clear()
        self.service.set_connected(False)

    async def _session(self, conn: Connection, app: GattApplication, bluez_owner: str,
                       recovering_since: float | None) -> None:
        """Everything that lives as long as one bluetoothd: registration, advert, devices.

        A D-Bus failure inside the session (a busy or dying bluetoothd timing
        out a call, a refused match rule) must not end the peripheral: undo
        what is registered, back off, and start the session again.
        """
        attempt = 0
        while True:
            try:
                with single_errors():
                    await self._session_once(conn, app, bluez_owner, recovering_since)
            except ConnectionLost:
                raise
            except DBusError as exc:
                attempt += 1
                self.status.last_error = f"session: {exc}"
                log.warning("session failed attempt=%d retry_in_s=%.2f error=%s", attempt,
                            _backoff(attempt), exc)
                await self._unregister_all(self.settings.bus_timeout_s)
                self._forget_registrations("session failed")
                recovering_since = trio.current_time()
                await trio.sleep(_backoff(attempt))

    async def _unregister_all(self, bound: float) -> None:
        """Best effort, bounded: bluetoothd may be gone or stuck."""
        assert self.app is not None
        with trio.move_on_after(bound):
            if self.advert is not None:
                await self.advert.unregister(timeout=bound / 2)
            await self.app.unregister(timeout=bound / 2)

    async def _session_once(self, conn: Connection, app: GattApplication, bluez_owner: str,
                            recovering_since: float | None) -> None:
        """An adapter that disappears takes its registrations with it; the
        session then waits for it to return and registers again."""
        rule = MatchRule(sender=BLUEZ, path="/", interface=OBJECT_MANAGER_IFACE,
                         member="InterfacesRemoved")
        async with conn.subscribe(rule) as removals:
            while True:
                await self._register_with_retry(conn, app, bluez_owner, recovering_since)
                assert self.status.adapter is not None
                adapter = self.status.adapter
                tracker = DeviceTracker(adapter, self._connection_changed)
                self.tracker = tracker
                async with trio.open_nursery() as nursery:
                    await nursery.start(partial(tracker.run, conn,
                                                timeout=self.settings.bus_timeout_s))
                    nursery.start_soon(self._keep_advertising, conn, adapter)
                    async for signal in removals:
                        path, ifaces = signal.body
                        if path == adapter and ADAPTER_IFACE in ifaces:
                            break
                    nursery.cancel_scope.cancel()
                log.warning("adapter removed adapter=%s", adapter)
                self._forget_registrations("adapter removed")
                recovering_since = trio.current_time()

    async def _register_with_retry(self, conn: Connection, app: GattApplication,
                                   bluez_owner: str, recovering_since: float | None) -> None:
        attempt = 0
        while not self.status.registered:
            attempt += 1
            try:
                await self._register(conn, app, bluez_owner, wait_for_adapter=True)
            except (StartError, DBusError) as exc:
                self.status.last_error = str(exc)
                log.info("registration attempt=%d failed retry_in_s=%.2f error=%s",
                         attempt, _backoff(attempt), exc)
                await trio.sleep(_backoff(attempt))
                continue
            if recovering_since is not None:
                self.status.restarts += 1
                self.status.last_recovery_s = trio.current_time() - recovering_since
                log.info("registered again attempts=%d recovery_s=%.3f", attempt,
                         self.status.last_recovery_s)

    # -- advertising and the name ----------------------------------------------------------
    async def _keep_advertising(self, conn: Connection, adapter: str) -> None:
        """Set the alias; when enabled, register the advert and re-register on Release."""
        timeout = self.settings.bus_timeout_s
        self.name = await self.current_name()
        log.info("advertised name name=%s", self.name)
        await self._apply_alias(conn, adapter)
        if not self.settings.ble_adv_enable:
            log.info("advertising disabled (MUSHPI_BLE_ADV_ENABLE=false); alias only name=%s",
                     self.name)
            return
        attempt = 0
        while True:
            try:
                self._capabilities = await read_capabilities(conn, adapter, timeout=timeout)
                plan = self._plan()
                if self.advert is None:
                    self.advert = Advertisement(conn, advert_path(self.settings.dbus_app_path),
                                                plan, on_release=self._advert_released)
                elif self.advert.plan != plan:
                    await self.advert.update(plan)
                self._advert_wanted = trio.Event()
                await self.advert.register(adapter, timeout=timeout)
                self.status.advertising = True
                attempt = 0
            except DBusError as exc:
                attempt += 1
                self.status.last_error = f"advertising: {exc}"
                log.warning("advertisement registration failed attempt=%d retry_in_s=%.2f "
                            "error=%s", attempt, _backoff(attempt), exc)
                await trio.sleep(_backoff(attempt))
                continue
            await self._advert_wanted.wait()
            self.status.advertising = False
            attempt += 1
            await trio.sleep(_backoff(attempt))

    def _advert_released(self) -> None:
        self.status.advertising = False
        if not self._stopping:
            self._advert_wanted.set()

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

    # -- devices -------------------------------------------------------------------------
    def _device_seen(self, device: str, mtu: int) -> None:
        if self.tracker is not None:
            self.tracker.note_mtu(device, mtu)

    def _connection_changed(self, central: Central, connected: bool) -> None:
        if connected:
            self.status.connects += 1
        else:
            self.status.disconnects += 1
        self.service.set_connected(bool(self.tracker and self.tracker.connected))

    @property
    def centrals(self) -> list[Central]:
        return list(self.tracker.centrals.values()) if self.tracker else []
