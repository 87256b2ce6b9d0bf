"""Which centrals are connected to our adapter, from bluetoothd's Device1 state only.

Reads ``Device1`` objects from bluetoothd's ObjectManager, then follows
InterfacesAdded / InterfacesRemoved and PropertiesChanged on ``Connected``,
from the owner of ``org.bluez`` only (the match rules name it as sender).
A device path that only appears in a request's options is not taken on its
word: bluetoothd is asked once, ``Properties.Get(Device1, Connected)`` under
a deadline, and the device counts only if the answer says connected. When it
cannot be asked, the sighting expires after ``SEEN_TTL_S`` without ever being
counted — so a central whose signals were missed, or a request that outlived
its central, never stays counted after the central is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from mushpi_ble.dbus import Connection, DBusError, MatchRule, SignalMessage

from .adapter import get_property, managed_objects
from .names import BLUEZ, DEVICE_IFACE, OBJECT_MANAGER, PROPERTIES

log = logging.getLogger(__name__)

SEEN_TTL_S = 5.0
"""How long a device seen only in a request is remembered (its MTU, no second check)."""
CHECK_TIMEOUT_S = 1.0
"""The longest a Connected check may take; the bus timeout when that is shorter."""


@attrs.define
class Central:
    """A device bluetoothd knows on our adapter."""

    path: str
    address: str = ""
    connected: bool = False
    mtu: int = 23
    connected_at: float | None = None
    bonded: bool = False
    """bluetoothd keeps its keys (Device1 ``Bonded``): its subscriptions outlive a visit."""


@attrs.define
class _Sighting:
    """A device path seen in a request's options and not (yet) confirmed by Device1."""

    mtu: int
    expires: float


ConnectionChange = Callable[[Central, bool], None]


class DeviceTracker:
    """Keeps ``centrals`` current; calls ``on_change(central, connected)``."""

    def __init__(self, adapter_path: str, on_change: ConnectionChange | None = None, *,
                 seen_ttl: float = SEEN_TTL_S) -> None:
        self.adapter_path = adapter_path
        self.centrals: dict[str, Central] = {}
        self._on_change = on_change
        self._seen_ttl = seen_ttl
        self._seen: dict[str, _Sighting] = {}
        self._signals_about: dict[str, int] = {}
        self._conn: Connection | None = None
        self._checks: trio.Nursery | None = None
        self._check_timeout = CHECK_TIMEOUT_S
        self.checks_done = 0
        """Connected checks answered or failed (for tests and diagnostics)."""

    @property
    def connected(self) -> list[Central]:
        return [c for c in self.centrals.values() if c.connected]

    def note_request(self, path: str, mtu: int) -> None:
        """A request's options name ``path`` with ``mtu``.

        A connected central takes the MTU. Any other device of our adapter is
        checked with bluetoothd in the background (once per sighting); it is
        never counted as connected on the request's word alone.
        """
        central = self.centrals.get(path)
        if central is not None:
            central.mtu = mtu
            if central.connected:
                return
        if not self._mine(path):
            return
        now = trio.current_time()
        for stale in [p for p, s in self._seen.items() if s.expires <= now]:
            del self._seen[stale]
        sighting = self._seen.get(path)
        if sighting is not None:
            sighting.mtu = mtu
            return
        self._seen[path] = _Sighting(mtu, now + self._seen_ttl)
        if self._checks is not None:
            self._checks.start_soon(self._check, path)

    async def _check(self, path: str) -> None:
        """Ask bluetoothd whether ``path`` is connected; a signal meanwhile is newer."""
        assert self._conn is not None
        before = self._signals_about.get(path, 0)
        try:
            connected = await get_property(self._conn, path, DEVICE_IFACE, "Connected",
                                           timeout=self._check_timeout)
        except DBusError as exc:
            log.info("device seen in a request is not counted device=%s error=%s", path,
                     exc.name)
            return
        finally:
            self.checks_done += 1
        if self._signals_about.get(path, 0) != before or not connected:
            return
        log.info("device seen in a request is connected device=%s", path)
        self._update(path, {"Connected": True})

    def clear(self) -> None:
        for central in list(self.centrals.values()):
            if central.connected:
                self._set_connected(central, False)
        self.centrals.clear()
        self._seen.clear()
        self._signals_about.clear()

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
        central = self.centrals.get(path)
        if central is None:
            central = self.centrals[path] = Central(path)
            sighting = self._seen.pop(path, None)
            if sighting is not None:
                central.mtu = sighting.mtu
        if "Address" in props:
            central.address = str(props["Address"])
        if "Bonded" in props:
            central.bonded = bool(props["Bonded"])
        if "Connected" in props:
            self._set_connected(central, bool(props["Connected"]))

    def _remove(self, path: str) -> None:
        self._seen.pop(path, None)
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
        async with conn.subscribe(om_rule, pc_rule) as signals, \
                trio.open_nursery() as checks:
            for path, ifaces in (await managed_objects(conn, timeout=timeout)).items():
                if DEVICE_IFACE in ifaces and self._mine(path):
                    self._update(path, {k: v[1] for k, v in ifaces[DEVICE_IFACE].items()})
            self._conn, self._checks = conn, checks
            self._check_timeout = min(timeout, CHECK_TIMEOUT_S)
            for path in self._seen:  # sighted before we could ask
                if not (path in self.centrals and self.centrals[path].connected):
                    checks.start_soon(self._check, path)
            try:
                task_status.started()
                await self._follow(signals)
            finally:
                self._checks = None

    async def _follow(self, signals: trio.MemoryReceiveChannel[SignalMessage]) -> None:
        async for signal in signals:
            if signal.member == "InterfacesAdded":
                path, ifaces = signal.body
                if DEVICE_IFACE in ifaces and self._mine(path):
                    self._heard_about(path)
                    self._update(path, {k: v[1] for k, v in ifaces[DEVICE_IFACE].items()})
            elif signal.member == "InterfacesRemoved":
                path, names = signal.body
                if DEVICE_IFACE in names and self._mine(path):
                    self._heard_about(path)
                    self._remove(path)
            elif signal.member == "PropertiesChanged" and self._mine(signal.path):
                _iface, changed, _invalidated = signal.body
                self._heard_about(signal.path)
                self._update(signal.path, {k: v[1] for k, v in changed.items()})

    def _heard_about(self, path: str) -> None:
        self._signals_about[path] = self._signals_about.get(path, 0) + 1
