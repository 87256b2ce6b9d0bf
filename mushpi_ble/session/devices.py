"""The devices step: which centrals are connected, told to every other step."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ..gatt import Central, DeviceTracker
from .step import CentralConnected, CentralLeft, Step


class Devices(Step):
    """Follows bluetoothd's Device1 objects of our adapter for the session."""

    name = "devices"

    def __init__(self, *, timeout: float, on_connectivity: Callable[[bool], object]) -> None:
        super().__init__()
        self._timeout = timeout
        self._on_connectivity = on_connectivity
        self.tracker: DeviceTracker | None = None
        self.connects = 0
        self.disconnects = 0
        self._forgetting = False

    def detach(self) -> None:
        super().detach()
        self.tracker = None
        self.connects = self.disconnects = 0
        self._on_connectivity(False)

    async def register(self, adapter: str) -> None:
        tracker = DeviceTracker(adapter, self._changed)
        self.tracker = tracker
        await self.host.start_in_session(partial(tracker.run, self.host.conn,
                                                 timeout=self._timeout))

    def forget(self) -> None:
        if self.tracker is not None:
            self._forgetting = True
            try:
                self.tracker.clear()
            finally:
                self._forgetting = False

    def note_request(self, device: str, mtu: int) -> None:
        """A request named ``device`` (from the application, before or after we follow)."""
        if self.tracker is not None:
            self.tracker.note_request(device, mtu)

    def _changed(self, central: Central, connected: bool) -> None:
        if connected:
            self.connects += 1
            self.host.announce(CentralConnected(central))
        else:
            self.disconnects += 1
            self.host.announce(CentralLeft(central, any_connected=self.any_connected,
                                           session_ended=self._forgetting))
        self._on_connectivity(self.any_connected)
        self.host.changed()

    @property
    def any_connected(self) -> bool:
        return bool(self.tracker and self.tracker.connected)

    @property
    def centrals(self) -> list[Central]:
        return list(self.tracker.centrals.values()) if self.tracker else []

    def snapshot(self) -> dict[str, Any]:
        devices = [
            {"path": c.path, "address": c.address, "mtu": c.mtu, "connected": c.connected,
             "connected_at": c.connected_at}
            for c in self.centrals
        ]
        return {
            "connected_devices": devices,
            "connection_count": sum(1 for d in devices if d["connected"]),
            "connects": self.connects,
            "disconnects": self.disconnects,
        }
