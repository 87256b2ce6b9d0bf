"""Shared set-up for peripheral tests: settings, a portal on the fake bluetoothd."""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable
from functools import partial

import attrs
import trio

from mushpi_ble.api_types import Status
from mushpi_ble.config import Settings, load_settings
from mushpi_ble.portal import BlePortal
from mushpi_ble.testing.controller import SimulatedController
from mushpi_ble.testing.fakebluez import FakeBluez, FakeCentral

NOW = 1_700_000_000.0

PROTOCOL_FLAGS = {
    "env_measurements": ("read", "notify"),
    "control_targets": ("read", "write"),
    "stage_state": ("read", "write"),
    "override_bits": ("write",),
    "status_flags": ("read", "notify"),
    "actuator_status": ("read", "notify"),
    "stage_thresholds": ("read", "write"),
}
"""Every characteristic's BlueZ flags, as shared/protocol.md fixes them."""


def targets_payload(*fields: int) -> bytes:
    """A control_targets write: the seven fields, then the reserved u16."""
    return struct.pack("<hhHHBHHH", *fields, 0)


def make_settings(**env: str) -> Settings:
    # tests change the controller's state between reads: every read asks it, unless a
    # test is about the read cache
    # ... and each gets a state directory of its own (bonded access keeps its approved
    # phones there)
    base = {"MUSHPI_DBUS_BUS_TIMEOUT_MS": "2000", "MUSHPI_BLE_HANDLER_TIMEOUT_MS": "1000",
            "MUSHPI_BLE_READ_CACHE_MS": "0",
            "MUSHPI_BLE_STATE_DIR": tempfile.mkdtemp(prefix="mushpi-state-")}
    return load_settings(environ={**base, **env}, env_file=None)


@attrs.define
class Rig:
    portal: BlePortal
    controller: SimulatedController
    bluez: FakeBluez


async def start_rig(bus_address: str, bluez: FakeBluez, settings: Settings,
                    controller: SimulatedController | None = None) -> Rig:
    controller = controller or SimulatedController(seed=1, now=lambda: NOW)
    portal = BlePortal(settings, bus=bus_address, clock=lambda: NOW)
    portal.set_callbacks(controller.callbacks())
    await trio.to_thread.run_sync(portal.start)
    return Rig(portal, controller, bluez)


async def phone(rig: Rig, mtu: int = 512, address: str = "11:22:33:44:55:66") -> FakeCentral:
    return await rig.bluez.connect_central(address=address, mtu=mtu)


async def status_until(portal: BlePortal, predicate: Callable[[Status], object],
                       timeout: float = 3.0) -> Status:
    """Wait until the portal's status satisfies ``predicate``: woken by each change the
    peripheral's parts report (``BlePortal.wait_for_status``), never polled."""
    return await trio.to_thread.run_sync(partial(portal.wait_for_status, predicate, timeout),
                                         abandon_on_cancel=True)


async def eventually(predicate: Callable[[], object], timeout: float = 3.0) -> None:
    """Poll a condition on state nothing reports changes of (what bluetoothd or the fake
    decides, a phone's received values, socket internals)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
