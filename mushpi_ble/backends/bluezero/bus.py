"""The bus connection BlueZero's objects export themselves on, and calls to bluetoothd.

BlueZero only talks to dbus-python's shared system bus, so the configured bus
(``"SYSTEM"``, ``"SESSION"`` or an address) is installed as that shared connection for
the backend's lifetime; closing puts the previous one back and takes off the objects
exported and the signal receivers added meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mushpi_ble.dbus import resolve_bus_address
from mushpi_ble.errors import BusUnavailable

from .deps import dbus

log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
GATT_MANAGER_IFACE = "org.bluez.GattManager1"
AD_MANAGER_IFACE = "org.bluez.LEAdvertisingManager1"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"


class SharedSystemBus:
    """One connection, installed as dbus-python's shared system bus while open."""

    def __init__(self, spec: str) -> None:
        self._spec = spec
        self.conn: Any = None
        self._previous_shared: Any = None
        self.exported: list[Any] = []
        """Objects on the connection, taken off it on close."""
        self.signal_matches: list[Any] = []
        """Signal receivers added on the connection, removed on close."""

    def open(self) -> Any:
        """Connect and install the connection as dbus-python's shared system bus,
        the one BlueZero's objects export themselves on."""
        try:
            address = resolve_bus_address(self._spec)
        except OSError as exc:
            raise BusUnavailable(str(exc)) from exc
        try:
            conn = dbus.bus.BusConnection(address,
                                          mainloop=dbus.mainloop.glib.DBusGMainLoop())
        except dbus.exceptions.DBusException as exc:
            raise BusUnavailable(f"cannot connect to the D-Bus bus at {address}: "
                                 f"{exc.get_dbus_message()}") from exc
        shared = dbus.Bus._shared_instances
        self._previous_shared = shared.get(dbus.Bus.TYPE_SYSTEM)
        shared[dbus.Bus.TYPE_SYSTEM] = conn
        self.conn = conn
        return conn

    def close(self) -> None:
        conn = self.conn
        if conn is None:
            return
        shared = dbus.Bus._shared_instances
        if shared.get(dbus.Bus.TYPE_SYSTEM) is conn:
            previous = self._previous_shared
            if previous is not None and previous.get_is_connected():
                shared[dbus.Bus.TYPE_SYSTEM] = previous
            else:
                del shared[dbus.Bus.TYPE_SYSTEM]
        self._previous_shared = None
        for obj in self.exported:
            try:
                obj.remove_from_connection()
            except Exception:
                log.debug("object already removed path=%s", getattr(obj, "path", "?"))
        self.exported = []
        for match in self.signal_matches:
            match.remove()
        self.signal_matches = []
        try:
            conn.close()
        except Exception:
            log.debug("closing the bus connection failed", exc_info=True)
        self.conn = None

    def call(self, path: str, iface: str, member: str, signature: str = "",
             args: tuple[Any, ...] = (), *, timeout: float) -> Any:
        """A blocking call to bluetoothd (set-up only, before the loop runs)."""
        return self.conn.call_blocking(BLUEZ, path, iface, member, signature, args,
                                       timeout=timeout)

    def call_async(self, path: str, iface: str, member: str, signature: str,
                   args: tuple[Any, ...], reply: Callable[..., None],
                   error: Callable[[Any], None], *, timeout: float) -> None:
        """An asynchronous call to bluetoothd, answered on the loop."""
        self.conn.call_async(BLUEZ, path, iface, member, signature, args, reply, error,
                             timeout=timeout)
