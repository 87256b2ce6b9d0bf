"""The service's registration with bluetoothd, done on the GLib loop thread.

Set-up makes blocking calls, each within the start deadline, to find and power the
adapter and set its alias, then registers the GATT application asynchronously
(bluetoothd calls back into GetManagedObjects, which only the running loop can
answer) and the legacy advertisement. Teardown unregisters both within a budget,
closes the bus and quits the loop, whatever fails on the way.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from mushpi_ble.config import Settings
from mushpi_ble.errors import AdapterNotFound, BluezUnavailable, RegistrationRefused, StartTimeout

from .bus import (
    AD_MANAGER_IFACE,
    ADAPTER_IFACE,
    BLUEZ,
    GATT_MANAGER_IFACE,
    OBJECT_MANAGER_IFACE,
    PROPERTIES_IFACE,
    SharedSystemBus,
)
from .deps import GLib, bz_advertisement, dbus
from .devices import Centrals
from .gatt import GattService

log = logging.getLogger(__name__)


class BluezSession:
    """The adapter in use, and whether the application and the advert are registered."""

    def __init__(self, settings: Settings, bus: SharedSystemBus, gatt: GattService,
                 centrals: Centrals) -> None:
        self.settings = settings
        self._bus = bus
        self._gatt = gatt
        self._centrals = centrals
        self._advert: Any = None
        self.adapter_path = ""
        self.registered = False
        self.advertising = False

    def _remaining(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise StartTimeout(f"start-up took longer than {self.settings.bus_timeout_s:.3g} s")
        return left

    def setup(self, ready: concurrent.futures.Future[None], deadline: float, loop: Any, *,
              alias: Callable[[], str]) -> None:
        """Open the bus and register; ``ready`` is settled once bluetoothd answered (or
        by an exception raised here). A refusal quits ``loop``."""
        conn = self._bus.open()
        if not conn.name_has_owner(BLUEZ):
            raise BluezUnavailable("org.bluez is not on the bus: is bluetoothd running? "
                                   "(systemctl status bluetooth)")
        try:
            objects = self._bus.call("/", OBJECT_MANAGER_IFACE, "GetManagedObjects",
                                     timeout=self._remaining(deadline))
        except dbus.exceptions.DBusException as exc:
            raise BluezUnavailable(f"bluetoothd did not list its objects: {exc}") from exc
        self.adapter_path = path = self._pick_adapter(objects)
        if not bool(objects[path][ADAPTER_IFACE].get("Powered", False)):
            self._bus.call(path, PROPERTIES_IFACE, "Set", "ssv",
                           (ADAPTER_IFACE, "Powered", dbus.Boolean(True)),
                           timeout=self._remaining(deadline))
        self._bus.call(path, PROPERTIES_IFACE, "Set", "ssv",
                       (ADAPTER_IFACE, "Alias", dbus.String(alias())),
                       timeout=self._remaining(deadline))
        self._bus.signal_matches = self._centrals.watch(conn, path, objects)
        self._bus.exported = self._gatt.build()
        app = self._gatt.app

        def registered() -> None:
            self.registered = True
            log.info("GATT application registered backend=bluezero path=%s", app.get_path())
            if self.settings.ble_adv_enable:
                self._register_advert(ready, deadline)
            elif not ready.done():
                ready.set_result(None)

        def refused(error: Any) -> None:
            if not ready.done():
                ready.set_exception(RegistrationRefused(
                    f"bluetoothd refused the GATT application: {error.get_dbus_name()}: "
                    f"{error.get_dbus_message()}"))
            loop.quit()

        self._bus.call_async(path, GATT_MANAGER_IFACE, "RegisterApplication", "oa{sv}",
                             (app.get_path(), {}), registered, refused,
                             timeout=self._remaining(deadline))

    def _register_advert(self, ready: concurrent.futures.Future[None], deadline: float) -> None:
        """Legacy advert: the service UUID only, the name travels in the adapter alias.
        A refusal is logged, not fatal (the GATT service still works)."""
        advert = bz_advertisement.Advertisement(1, "peripheral")
        advert.service_UUIDs = [self.settings.ble_service_uuid]
        self._advert = advert
        self._bus.exported.append(advert)

        def done() -> None:
            self.advertising = True
            if not ready.done():
                ready.set_result(None)

        def failed(error: Any) -> None:
            log.warning("advertisement not registered backend=bluezero error=%s",
                        error.get_dbus_name())
            if not ready.done():
                ready.set_result(None)

        self._bus.call_async(self.adapter_path, AD_MANAGER_IFACE, "RegisterAdvertisement",
                             "oa{sv}", (advert.get_path(), {}), done, failed,
                             timeout=max(0.1, deadline - time.monotonic()))

    def _pick_adapter(self, objects: Mapping[str, Any]) -> str:
        wanted = self.settings.ble_adapter
        adapters = {str(path): ifaces[ADAPTER_IFACE] for path, ifaces in objects.items()
                    if ADAPTER_IFACE in ifaces}
        for path, props in sorted(adapters.items()):
            if path.rsplit("/", 1)[-1] == wanted or str(props.get("Address", "")) == wanted:
                return path
        names = ", ".join(p.rsplit("/", 1)[-1] for p in sorted(adapters)) or "none"
        raise AdapterNotFound(f"adapter {wanted} not found; bluetoothd has: {names}")

    def teardown(self, budget: float, loop: Any) -> bool:
        """On the loop: unregister (bounded), drop our objects, close the bus, quit.

        Whatever fails on the way, the loop quits: at the latest when ``budget`` is up."""
        finished = False
        outstanding = 0

        def finish() -> bool:
            nonlocal finished
            if not finished:
                finished = True
                try:
                    self._bus.close()
                finally:
                    loop.quit()
            return False

        def answered(*_args: Any) -> None:
            nonlocal outstanding
            outstanding -= 1
            if outstanding == 0:
                finish()

        GLib.timeout_add(max(1, int(budget * 1000)), finish)
        calls: list[tuple[str, str, Any]] = []
        app = self._gatt.app
        if self.advertising and self._advert is not None:
            calls.append((AD_MANAGER_IFACE, "UnregisterAdvertisement", self._advert.get_path()))
        if self.registered and app is not None:
            calls.append((GATT_MANAGER_IFACE, "UnregisterApplication", app.get_path()))
        self.registered = self.advertising = False
        try:
            if self._bus.conn is None or not self.adapter_path:
                calls = []
            outstanding = len(calls)
            for iface, member, path in calls:
                self._bus.call_async(self.adapter_path, iface, member, "o", (path,), answered,
                                     answered, timeout=budget)
        except Exception:
            log.exception("unregistering failed backend=bluezero")
            outstanding = 0
        if outstanding == 0:
            finish()
        return False

    def apply_alias(self, name: str) -> bool:
        """On the loop: set the adapter alias (the legacy advert carries no name)."""
        if self._bus.conn is not None and self.adapter_path:
            self._bus.call_async(self.adapter_path, PROPERTIES_IFACE, "Set", "ssv",
                                 (ADAPTER_IFACE, "Alias", dbus.String(name)),
                                 lambda: log.info("advertised name set name=%s", name),
                                 lambda e: log.warning("alias not set error=%s", e),
                                 timeout=self.settings.bus_timeout_s)
        return False
