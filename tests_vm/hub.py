"""The central side: bleak on hci1, behaving like the MushPi Hub app.

All coroutines here run on the suite's asyncio loop thread (see
``conftest.LoopThread``); the tests drive them with ``loop.run(...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from mushpi_ble.protocol import CHARACTERISTIC_UUIDS, SERVICE_UUID

log = logging.getLogger("tests_vm.hub")

CENTRAL_ADAPTER = "hci1"
NAME_PREFIX = "MushPi"

# What the app relies on (protocol.md): the six it requires, plus actuator_status.
EXPECTED_PROPERTIES: dict[str, set[str]] = {
    "env_measurements": {"read", "notify"},
    "control_targets": {"read", "write"},
    "stage_state": {"read", "write"},
    "override_bits": {"write"},
    "status_flags": {"read", "notify"},
    "stage_thresholds": {"read", "write"},
    "actuator_status": {"read", "notify"},
}
REQUIRED_BY_APP = ("env_measurements", "control_targets", "stage_state", "override_bits",
                   "status_flags", "stage_thresholds")


@dataclass
class Sighting:
    device: BLEDevice
    adv: AdvertisementData
    at: float
    names: set[str] = field(default_factory=set)
    uuids: set[str] = field(default_factory=set)


class HubScanner:
    """Scan on hci1 (or ``adapter``) like the app: the MushPi service UUID or the name prefix."""

    def __init__(self, adapter: str = CENTRAL_ADAPTER) -> None:
        self.adapter = adapter
        self.sightings: dict[str, Sighting] = {}
        self.found = asyncio.Event()
        self.scanner: BleakScanner | None = None
        self.started_at = 0.0
        self.rescans = 0

    def _on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        uuids = {u.lower() for u in adv.service_uuids}
        name = adv.local_name or ""
        if SERVICE_UUID not in uuids and not name.startswith(NAME_PREFIX):
            return
        sighting = self.sightings.get(device.address)
        if sighting is None:
            sighting = self.sightings[device.address] = Sighting(device, adv, time.monotonic())
            log.info("advert from %s name=%r uuids=%s after %.2f s", device.address,
                     adv.local_name, sorted(uuids), sighting.at - self.started_at)
        sighting.device, sighting.adv = device, adv
        if name:
            sighting.names.add(name)
        sighting.uuids |= uuids
        self.found.set()

    async def start(self) -> None:
        self.found.clear()
        self.sightings.clear()
        self.scanner = BleakScanner(detection_callback=self._on_advert,
                                    service_uuids=[SERVICE_UUID],
                                    bluez={"adapter": self.adapter})
        self.started_at = time.monotonic()
        await self.scanner.start()

    async def stop(self) -> None:
        if self.scanner is not None:
            scanner, self.scanner = self.scanner, None
            await scanner.stop()

    async def discover(self, address: str, name: str | None = None,
                       first_wait: float = 20.0, rescan_wait: float = 25.0) -> Sighting:
        """Wait for ``address``; if it stays silent, scan again once.

        The emulator reports an advertiser only on an edge (scanning enabled
        while the peer advertises, or advertising enabled while the peer
        scans) and the kernel may drop that first report; a new scan is a
        new edge. This is the one place the suite retries.
        """
        try:
            return await self.wait(address, first_wait, name)
        except TimeoutError:
            if self.scanner is None:
                raise
        self.rescans += 1
        log.warning("no advert from %s within %.0f s; scanning again", address, first_wait)
        await self.scanner.stop()
        await self.scanner.start()
        return await self.wait(address, rescan_wait, name)

    async def wait(self, address: str, timeout: float, name: str | None = None,
                   name_grace: float = 5.0) -> Sighting:
        """Wait for an advert from ``address``; then up to ``name_grace`` s for ``name``."""
        deadline = time.monotonic() + timeout
        while address not in self.sightings:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no MushPi advert from {address} within {timeout:.0f} s "
                                   f"(seen: {sorted(self.sightings)})")
            self.found.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.found.wait(), remaining)
        sighting = self.sightings[address]
        grace_end = time.monotonic() + name_grace
        while name is not None and name not in sighting.names and time.monotonic() < grace_end:
            await asyncio.sleep(0.1)
        return sighting


class Hub:
    """One connection, as the app makes it: connect, discover, then subscribe."""

    def __init__(self, device: BLEDevice, *, on_disconnect: Any = None,
                 adapter: str = CENTRAL_ADAPTER) -> None:
        self.device = device
        self.disconnected = asyncio.Event()
        self.client = BleakClient(device, bluez={"adapter": adapter}, timeout=40,
                                  disconnected_callback=self._on_disconnect)
        self.chars: dict[str, BleakGATTCharacteristic] = {}
        self.queues: dict[str, asyncio.Queue[tuple[float, bytes]]] = {}
        self.read_latencies_ms: list[float] = []
        self.connect_s = 0.0

    def _on_disconnect(self, _client: BleakClient) -> None:
        log.info("disconnected from %s", self.device.address)
        self.disconnected.set()

    async def connect(self) -> None:
        started = time.monotonic()
        await self.client.connect()
        self.connect_s = time.monotonic() - started
        service = self.client.services.get_service(SERVICE_UUID)
        if service is None:
            found = [s.uuid for s in self.client.services]
            raise AssertionError(f"MushPi service {SERVICE_UUID} not found; services: {found}")
        by_uuid = {c.uuid.lower(): c for c in service.characteristics}
        self.chars = {name: by_uuid[uuid] for name, uuid in CHARACTERISTIC_UUIDS.items()
                      if uuid in by_uuid}
        log.info("connected in %.2f s, mtu=%d, characteristics=%s", self.connect_s,
                 self.mtu, sorted(self.chars))

    @property
    def mtu(self) -> int:
        """The ATT MTU bluetoothd reports on the characteristics (the ``MTU`` property)."""
        mtus = [int(c.obj[1].get("MTU", 0)) for c in self.chars.values()]
        return max(mtus, default=23)

    def properties(self) -> dict[str, set[str]]:
        return {name: set(c.properties) for name, c in self.chars.items()}

    async def read(self, name: str) -> bytes:
        started = time.perf_counter()
        value = bytes(await self.client.read_gatt_char(self.chars[name]))
        self.read_latencies_ms.append((time.perf_counter() - started) * 1000)
        return value

    async def write(self, name: str, data: bytes, response: bool = True) -> None:
        await self.client.write_gatt_char(self.chars[name], data, response=response)

    async def subscribe(self, name: str, *, acquire: bool = False) -> None:
        """Enable notifications; ``acquire``: through ``AcquireNotify`` (a socket from
        bluetoothd) instead of bleak's default ``StartNotify``."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.queues[name] = queue

        def on_value(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            queue.put_nowait((time.perf_counter(), bytes(data)))

        await self.client.start_notify(self.chars[name], on_value,
                                       bluez={"use_start_notify": not acquire})

    async def unsubscribe(self, name: str) -> None:
        """Write the CCC back to 0, as an app that stops listening does."""
        await self.client.stop_notify(self.chars[name])

    async def next_value(self, name: str, timeout: float) -> tuple[float, bytes]:
        """The next notification on ``name``: (perf_counter at arrival, value)."""
        return await asyncio.wait_for(self.queues[name].get(), timeout)

    def drain(self, name: str) -> list[bytes]:
        queue = self.queues[name]
        out = []
        while not queue.empty():
            out.append(queue.get_nowait()[1])
        return out

    async def disconnect(self) -> float:
        started = time.monotonic()
        if self.client.is_connected:
            await self.client.disconnect()
        return time.monotonic() - started


def att_error_code(exc: BaseException) -> int | None:
    """The ATT error code a failed bleak read/write carries, however bleak spells it.

    bleak 3.x raises ``BleakGATTProtocolError`` (``.code``) for the codes its
    enum knows; for application codes (0x80-0x9F) building that enum fails
    inside bleak and a ``ValueError("130 is not a valid
    BleakGATTProtocolErrorCode")`` comes out instead. Older bleak raises
    ``BleakDBusError`` with bluetoothd's text ("Operation failed with ATT
    error: 0x82", "Invalid Length").
    """
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return int(code)
    text = " ".join(str(a) for a in exc.args)
    if isinstance(exc, ValueError):
        match = re.match(r"^(\d+) is not a valid BleakGATTProtocolErrorCode", text)
        if match:
            return int(match.group(1))
    match = re.search(r"ATT error: (0x[0-9a-fA-F]+)", text)
    if match:
        return int(match.group(1), 16)
    if "Invalid Length" in text:
        return 0x0D
    return None


def device_at(path: str, address: str, name: str | None = None) -> BLEDevice:
    """A BLEDevice for a BlueZ device object, for bleak without a scan."""
    return BLEDevice(address, name, {"path": path, "props": {}})
