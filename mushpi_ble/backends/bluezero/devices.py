"""The centrals connected through the adapter, as bluetoothd's Device1 objects say.

Kept apart from the GATT objects because BlueZero does not track connections:
this follows bluetoothd's signals, counts connects and disconnects, and tells the
backend when the first central connects or the last one goes (the CONNECTIVITY bit
of status_flags follows that).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from .bus import BLUEZ, DEVICE_IFACE, OBJECT_MANAGER_IFACE, PROPERTIES_IFACE

log = logging.getLogger(__name__)


class Centrals:
    """Device paths under the adapter and whether each is connected."""

    def __init__(self, on_connectivity_change: Callable[[], object]) -> None:
        self._on_connectivity_change = on_connectivity_change
        self.devices: dict[str, bool] = {}
        self.connects = 0
        self.disconnects = 0

    def reset(self) -> None:
        self.devices = {}

    def watch(self, conn: Any, adapter_path: str, objects: Mapping[str, Any]) -> list[Any]:
        """Take the devices bluetoothd lists now, follow its signals from here on;
        returns the signal matches (removed when the bus closes)."""
        prefix = adapter_path + "/"
        for path, ifaces in objects.items():
            if str(path).startswith(prefix) and DEVICE_IFACE in ifaces:
                self.devices[str(path)] = bool(ifaces[DEVICE_IFACE].get("Connected", False))

        def added(path: Any, ifaces: Any) -> None:
            if str(path).startswith(prefix) and DEVICE_IFACE in ifaces:
                self.set_device(str(path), bool(ifaces[DEVICE_IFACE].get("Connected", False)))

        def removed(path: Any, ifaces: Any) -> None:
            if DEVICE_IFACE in ifaces:
                self.set_device(str(path), None)

        def changed(iface: Any, props: Any, _invalidated: Any, path: Any = None) -> None:
            if iface == DEVICE_IFACE and "Connected" in props and str(path).startswith(prefix):
                self.set_device(str(path), bool(props["Connected"]))

        return [
            conn.add_signal_receiver(added, "InterfacesAdded", OBJECT_MANAGER_IFACE, BLUEZ),
            conn.add_signal_receiver(removed, "InterfacesRemoved", OBJECT_MANAGER_IFACE, BLUEZ),
            conn.add_signal_receiver(changed, "PropertiesChanged", PROPERTIES_IFACE, BLUEZ,
                                     path_keyword="path", arg0=DEVICE_IFACE),
        ]

    def set_device(self, path: str, connected: bool | None) -> None:
        before = self.count()
        was = self.devices.get(path, False)
        if connected is None:
            self.devices.pop(path, None)
        else:
            self.devices[path] = connected
        now = bool(connected)
        if now and not was:
            self.connects += 1
            log.info("central connected backend=bluezero path=%s", path)
        elif was and not now:
            self.disconnects += 1
            log.info("central disconnected backend=bluezero path=%s", path)
        if (before > 0) != (self.count() > 0):
            self._on_connectivity_change()

    def count(self) -> int:
        return sum(1 for connected in list(self.devices.values()) if connected)

    def listing(self) -> list[dict[str, Any]]:
        return [{"path": p, "connected": c} for p, c in list(self.devices.items())]
