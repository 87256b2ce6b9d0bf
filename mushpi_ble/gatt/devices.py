"""Which centrals are connected to our adapter, followed through bluetoothd.

Reads ``Device1`` objects from bluetoothd's ObjectManager, then follows
InterfacesAdded / InterfacesRemoved and PropertiesChanged on ``Connected``.
The set it keeps drives the status CONNECTIVITY bit and connection counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from mushpi_ble.dbus import Connection, MatchRule, SignalMessage

from .adapter import BLUEZ, DEVICE_IFACE, OBJECT_MANAGER, PROPERTIES, managed_objects

log = logging.getLogger(__name__)


@attrs.define
class Central:
    """A device bluetoothd knows on our adapter."""

    path: str
    address: str = ""
    connected: bool = False
    mtu: int = 23
    connected_at: float | None = None


ConnectionChange = Callable[[Central, bool], None]


class DeviceTracker:
    """Keeps ``centrals`` current; calls ``on_change(central, connected)``."""

    def __init__(self, adapter_path: str, on_change: ConnectionChange | None = None) -> None:
        self.adapter_path = adapter_path
        self.centrals: dict[str, Central] = {}
        self._on_change = on_change

    @property
    def connected(self) -> list[Central]:
        return [c for c in self.centrals.values() if c.connected]

    def note_mtu(self, path: str, mtu: int) -> None:
        """MTU comes from the options of a central's requests."""
        central = self.centrals.get(path)
        if central is None:
            central = self.centrals[path] = Central(path)
            self._set_connected(central, True)
        central.mtu = mtu

    def clear(self) -> None:
        for central in list(self.centrals.values()):
            if central.connected:
                self._set_connected(central, False)
        self.centrals.clear()

    def _mine(self, path: str) -> bool:
        return path.startswith(self.adapter_path + "/dev_")

    def _set_connected(self, central: Central, connected: bool) -> None:
        if central.connected == connected:
            return
        central.connected = connected
        central.connected_at = time.time() if connected else None
        log.info("central %s device=%s address=%s", "connected" if connected else "disconnected",
                 central.path, central.address or "-")
        if self._on_change is not None:
            self._on_change(central, connected)

    def _update(self, path: str, props: dict[str, Any]) -> None:
        central = self.centrals.setdefault(path, Central(path))
        if "Address" in props:
            central.address = str(props["Address"])
        if "Connected" in props:
            self._set_connected(central, bool(props["Connected"]))

    def _remove(self, path: str) -> None:
        central = self.centrals.pop(path, None)
        if central is not None and central.connected:
            self._set_connected(central, False)

    async def run(self, conn: Connection, *, timeout: float,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe first, then read the current state, then follow changes."""
        om_rule = MatchRule(sender=BLUEZ, path="/", interface=OBJECT_MANAGER)
        pc_rule = MatchRule(sender=BLUEZ, path_namespace=self.adapter_path,
                            interface=PROPERTIES, member="PropertiesChanged",
                            arg0=DEVICE_IFACE)
        # one channel for both rules: connects, disconnects and removals must be
        # applied in the order bluetoothd sent them
        async with conn.subscribe(om_rule, pc_rule) as signals:
            for path, ifaces in (await managed_objects(conn, timeout=timeout)).items():
                if DEVICE_IFACE in ifaces and self._mine(path):
                    self._update(path, {k: v[1] for k, v in ifaces[DEVICE_IFACE].items()})
            task_status.started()
            await self._follow(signals)

    async def _follow(self, signals: trio.MemoryReceiveChannel[SignalMessage]) -> None:
        async for signal in signals:
            if signal.member == "InterfacesAdded":
                path, ifaces = signal.body
                if DEVICE_IFACE in ifaces and self._mine(path):
                    self._update(path, {k: v[1] for k, v in ifaces[DEVICE_IFACE].items()})
            elif signal.member == "InterfacesRemoved":
                path, names = signal.body
                if DEVICE_IFACE in names and self._mine(path):
                    self._remove(path)
            elif signal.member == "PropertiesChanged" and self._mine(signal.path):
                _iface, changed, _invalidated = signal.body
                self._update(signal.path, {k: v[1] for k, v in changed.items()})
