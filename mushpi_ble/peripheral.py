"""The trio side of the peripheral: one connection, one nursery, supervised.

Connects to the bus, waits for ``org.bluez``, finds (and powers) the
adapter, exports and registers the MushPi application, runs the notifier
tasks, and keeps the registration alive across bluetoothd restarts by
watching who owns ``org.bluez``. Shutdown unregisters within a bound.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio
from trio_util import AsyncValue

from .config import Settings
from .dbus import BusUnreachable, Connection, DBusError, open_connection
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
from .gatt.adapter import ensure_powered, managed_objects, pick_adapter
from .service import MushPiService

log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0


@attrs.define
class DeviceInfo:
    """A central seen through its requests (address path and negotiated MTU)."""

    path: str
    mtu: int = 23
    connected: bool = True
    first_seen: float = attrs.Factory(time.time)


@attrs.define
class PeripheralStatus:
    """What ``get_status()`` reports of the trio side (read from any thread)."""

    running: bool = False
    registered: bool = False
    adapter: str | None = None
    bluez_owner: str = ""
    restarts: int = 0
    last_recovery_s: float | None = None
    last_error: str | None = None
    started_at: float | None = None


class Peripheral:
    """Runs the MushPi service against bluetoothd until cancelled."""

    def __init__(self, settings: Settings, service: MushPiService, *, bus: str = "SYSTEM") -> None:
        self.settings = settings
        self.service = service
        self.bus = bus
        self.status = PeripheralStatus()
        self.devices: dict[str, DeviceInfo] = {}
        self.conn: Connection | None = None
        self.app: GattApplication | None = None
        self.on_registered: list[Callable[[], Any]] = []

    # -- lifetime ---------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start, report ``started`` once registered, then supervise until cancelled."""
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

    async def _serve(self, conn: Connection, nursery: trio.Nursery,
                     task_status: trio.TaskStatus[None]) -> None:
        self.conn = conn
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
            self.status.running = False
            self.service.detach()
            await self._shutdown(app)

    async def _shutdown(self, app: GattApplication) -> None:
        bound = self.settings.shutdown_timeout_s
        with trio.CancelScope(shield=True), trio.move_on_after(bound * 0.8):
            await app.unregister(timeout=bound * 0.5)
        self.status.registered = False

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
                await self._register(conn, app, owner.value)
        except trio.TooSlowError as exc:
            raise StartTimeout(
                f"registration did not finish within {timeout:.3g} s "
                f"(MUSHPI_DBUS_BUS_TIMEOUT_MS)"
            ) from exc

    async def _register(self, conn: Connection, app: GattApplication, bluez_owner: str) -> None:
        timeout = self.settings.bus_timeout_s
        objects = await managed_objects(conn, timeout=timeout)
        adapter = pick_adapter(objects, self.settings.ble_adapter)
        if adapter is None:
            found = sorted(p.rsplit("/", 1)[-1] for p in objects if p.count("/") == 3)
            raise AdapterNotFound(
                f"adapter {self.settings.ble_adapter!r} not found (MUSHPI_BLE_ADAPTER); "
                f"bluetoothd has: {', '.join(found) or 'no adapters'}"
            )
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
        for hook in self.on_registered:
            hook()

    # -- supervision ---------------------------------------------------------------------
    async def _supervise(self, conn: Connection, app: GattApplication,
                         owner: AsyncValue[str]) -> None:
        """Follow ``org.bluez``: forget state when it goes, register when it returns."""
        while True:
            current = owner.value
            if current and current == self.status.bluez_owner and self.status.registered:
                await owner.wait_transition()
                continue
            if not current:
                if self.status.registered or self.status.bluez_owner:
                    self._bluez_gone()
                await owner.wait_value(lambda v: bool(v))
                continue
            await self._recover(conn, app, owner, current)

    def _bluez_gone(self) -> None:
        log.warning("bluetoothd left the bus; registrations are gone")
        assert self.app is not None
        self.app.registered_on = None
        self.app.reset_subscriptions()
        self.status.registered = False
        self.status.bluez_owner = ""
        self.devices.clear()
        self.service.set_connected(False)

    async def _recover(self, conn: Connection, app: GattApplication, owner: AsyncValue[str],
                       new_owner: str) -> None:
        """Register again with bounded exponential backoff while ``new_owner`` stays."""
        started = trio.current_time()
        if self.status.registered:
            self._bluez_gone()
        delay = BACKOFF_FIRST_S
        attempt = 0
        while owner.value == new_owner:
            attempt += 1
            try:
                await self._register(conn, app, new_owner)
            except (StartError, DBusError) as exc:
                self.status.last_error = str(exc)
                log.info("re-registration attempt=%d failed retry_in_s=%.2f error=%s",
                         attempt, delay, exc)
                with trio.move_on_after(delay):
                    await owner.wait_transition()
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self.status.restarts += 1
            self.status.last_recovery_s = trio.current_time() - started
            log.info("registered again after bluetoothd restart attempts=%d recovery_s=%.3f",
                     attempt, self.status.last_recovery_s)
            return

    # -- devices -------------------------------------------------------------------------
    def _device_seen(self, device: str, mtu: int) -> None:
        info = self.devices.get(device)
        if info is None:
            self.devices[device] = DeviceInfo(device, mtu)
            log.info("central seen device=%s mtu=%d", device, mtu)
        else:
            info.mtu = mtu
