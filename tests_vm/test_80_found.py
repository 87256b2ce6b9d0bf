"""Found fast, cache kept: what a central sees of #27's pieces on the real bluetoothd.

- The advertising interval on the air (btmon's LE Set Extended Advertising
  Parameters for hci0): fast after the start, slow after the fast period,
  fast again after a central left.
- Fixed handles: the central's discovery finds the MushPi characteristics and
  the Device Information Service at the handles the table declares, after our
  own stop and start and after a bluetoothd restart.
- The Device Information Service read by the central.
- A bonded central that comes back and enables notifications again gets the
  current value (bluetoothd kept its CCC and answers the write itself).

Each runs once per generation, in the classic (att) pass.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator

import pytest
from conftest import (
    CENTRAL_ADAPTER,
    PERIPHERAL_ADAPTER,
    Bluetoothd,
    LoopThread,
    Metrics,
    PortalLab,
    SystemBus,
    btmon_offset,
    btmon_since,
    connect_device,
    device_path,
    device_prop,
    forget_bond,
    pair_as_central,
    portal_in_place_of_the_lab,
    wait_for,
)
from hub import Hub, device_at
from jeepney.wrappers import DBusErrorResponse

from mushpi_ble.protocol import CHARACTERISTIC_UUIDS, EnvMeasurement
from mushpi_ble.protocol.table import CHARACTERISTICS

ONCE = "runs once per generation, in the classic (att) pass"
# hci0's advertising parameters as btmon prints them (the name cut to fit: "LE Set Ext.."
# or "LE Set Exte.."): the minimum interval in ms.
ADV_PARAMS = re.compile(
    r"< HCI Command: LE Set Ext[^\n]*\(0x08\|0x0036\)[^\n]*\[hci0\][^\n]*\n"
    r"(?:\s+[^\n]*\n){0,8}?\s+Min advertising interval: ([0-9.]+) msec")
BTMON_LAG_S = 60
"""btmon writes through 9p from the emulated machine: on a loaded host its file runs
more than 20 s behind the air (seen in CI beside other VMs)."""
DIS_UUID = "0000180a-0000-1000-8000-00805f9b34fb"
DIS_STRINGS = {"00002a29-0000-1000-8000-00805f9b34fb": "manufacturer",
               "00002a24-0000-1000-8000-00805f9b34fb": "model",
               "00002a26-0000-1000-8000-00805f9b34fb": "firmware",
               "00002a28-0000-1000-8000-00805f9b34fb": "software"}


@pytest.fixture(autouse=True)
def _att_pass_only(bluez: str) -> None:
    if bluez != "att":
        pytest.skip(ONCE)


def intervals_since(offset: int) -> list[float]:
    """Every minimum advertising interval hci0 was given since ``offset``, in order."""
    return [float(m) for m in ADV_PARAMS.findall(btmon_since(offset, timeout=0))]



def _leave(bus: SystemBus, address: str) -> None:
    path = device_path(address)
    if device_prop(bus, path, "Connected"):
        with contextlib.suppress(DBusErrorResponse, TimeoutError):
            bus.call(path, "org.bluez.Device1", "Disconnect", timeout=15)


def test_fast_after_the_start_then_slow_then_fast_after_a_central_left(
        portal_lab: PortalLab, system_bus: SystemBus, metrics: Metrics) -> None:
    trace_from = btmon_offset()
    with portal_in_place_of_the_lab(portal_lab, MUSHPI_BLE_ADVERT_FAST_S="8") as portal:
        status = wait_for(lambda: (s := portal.get_status())["advert_state"] == "advertising"
                          and s, 20, "the advert registered")
        assert status["advert_interval"]["phase"] == "fast", status["advert_interval"]
        wait_for(lambda: 20.0 in intervals_since(trace_from), BTMON_LAG_S,
                 "hci0's advertising parameters with 20 ms")
        wait_for(lambda: portal.get_status()["advert_interval"]["phase"] == "slow", 20,
                 "the slow phase")
        wait_for(lambda: 417.5 in intervals_since(trace_from), BTMON_LAG_S,
                 "hci0's advertising parameters with 417.5 ms")
        after_slow = btmon_offset()
        path = connect_device(system_bus, portal_lab.address)
        wait_for(lambda: portal.get_status()["connection_count"] == 1, 20, "the connect")
        _leave(system_bus, portal_lab.address)
        wait_for(lambda: portal.get_status()["connection_count"] == 0, 20, "the central left")
        wait_for(lambda: 20.0 in intervals_since(after_slow), BTMON_LAG_S,
                 "hci0's advertising parameters with 20 ms after the disconnect")
        seen = intervals_since(trace_from)
        metrics.set("found.advert_intervals_seen_ms", seen)
        metrics.set("found.advert_in_force", portal.get_status()["advert_interval"]["in_force"])
        assert path


def central_handles(hub: Hub) -> dict[str, int]:
    """What the central's discovery found, by name: each MushPi characteristic's and each
    Device Information string's declaration handle (BlueZ names a client characteristic's
    object after it, and bleak reads it from there; the value handle is the next)."""
    handles = {name: char.handle for name, char in hub.chars.items()}
    for service in hub.client.services:
        if service.uuid.lower() == DIS_UUID and service.handle >= 0x0F00:
            for char in service.characteristics:
                if char.uuid.lower() in DIS_STRINGS:
                    handles[f"dis.{DIS_STRINGS[char.uuid.lower()]}"] = char.handle
    return handles


@contextlib.contextmanager
def hub_on(system_bus: SystemBus, portal_lab: PortalLab, name: str) -> Iterator[
        tuple[LoopThread, Hub]]:
    path = device_path(portal_lab.address)
    for attempt in range(1, 4):
        if device_prop(system_bus, path, "Connected"):
            break  # the link a pairing made (Device1.Connect on it fails on 5.82)
        # as a phone does: again when the link was not made (btvirt completes one only
        # while the Pi advertises, and the advert is registered anew as a central leaves)
        try:
            path = connect_device(system_bus, portal_lab.address)
            break
        except DBusErrorResponse as exc:
            if exc.name != "org.bluez.Error.Failed" or attempt == 3:
                raise
            time.sleep(1)
    wait_for(lambda: device_prop(system_bus, path, "ServicesResolved"), 40, "ServicesResolved")
    loop = LoopThread(name)
    hub = Hub(device_at(path, portal_lab.address))
    try:
        loop.run(hub.connect(), 60)
        yield loop, hub
    finally:
        with contextlib.suppress(Exception):
            loop.run(hub.disconnect(), 30)
        loop.close()
        _leave(system_bus, portal_lab.address)
        wait_for(lambda: portal_lab.status()["connection_count"] == 0, 20,
                 "the portal to see the central leave")


def test_handles_stay_put_across_our_restart_and_bluetoothds(
        bluez: str, portal_lab: PortalLab, bluetoothd: Bluetoothd, system_bus: SystemBus,
        metrics: Metrics) -> None:
    declared = {c.name: c.handle for c in CHARACTERISTICS
                if c.name in CHARACTERISTIC_UUIDS and c.handle}
    seen: list[dict[str, int]] = []
    with hub_on(system_bus, portal_lab, "handles-1") as (loop, hub):
        seen.append(central_handles(hub))
        # the Device Information Service, read by the central
        info = {DIS_STRINGS[c.uuid.lower()]: loop.run(hub.client.read_gatt_char(c), 20)
                for s in hub.client.services if s.uuid.lower() == DIS_UUID
                and s.handle >= 0x0F00 for c in s.characteristics
                if c.uuid.lower() in DIS_STRINGS}
    settings = portal_lab.portal.settings
    assert bytes(info["manufacturer"]).decode() == settings.ble_manufacturer, info
    assert bytes(info["model"]).decode() == settings.ble_model, info
    assert bytes(info["software"]).decode().startswith("mushpi-ble "), info
    metrics.set("found.device_information", {k: bytes(v).decode() for k, v in info.items()})
    for name, value_handle in declared.items():
        assert seen[0][name] + 1 == value_handle, (name, hex(seen[0][name]), hex(value_handle))
    assert any(k.startswith("dis.") for k in seen[0]), seen[0]

    # our own stop and start
    portal_lab.portal.stop()
    portal_lab.portal.start()
    wait_for(lambda: portal_lab.status()["registered"]
             and portal_lab.status()["advert_state"] == "advertising", 30,
             "the portal registered again")
    with hub_on(system_bus, portal_lab, "handles-2") as (_loop, hub):
        seen.append(central_handles(hub))

    # bluetoothd restarted (systemctl restart bluetooth)
    mode = bluetoothd.mode
    assert mode is not None
    bluetoothd.stop()
    bluetoothd.start(mode)
    wait_for(lambda: portal_lab.status()["registered"]
             and portal_lab.status()["advert_state"] == "advertising"
             and portal_lab.status()["pairing"]["agent_registered"], 40,
             "the portal registered with the new bluetoothd")
    with hub_on(system_bus, portal_lab, "handles-3") as (_loop, hub):
        seen.append(central_handles(hub))
    metrics.set("found.handles", {k: hex(v) for k, v in seen[0].items()})
    assert seen[1] == seen[0] and seen[2] == seen[0], seen


def test_a_bonded_central_back_for_a_second_visit_gets_the_current_value(
        portal_lab: PortalLab, system_bus: SystemBus, metrics: Metrics) -> None:
    central = system_bus.adapter_address(CENTRAL_ADAPTER)
    portal = portal_lab.portal
    try:
        path = connect_device(system_bus, portal_lab.address)
        pair_as_central(path)
        assert device_prop(system_bus, path, "Paired")
        with hub_on(system_bus, portal_lab, "visit-1") as (loop, hub):
            loop.run(hub.subscribe("env_measurements"), 20)
            loop.run(hub.next_value("env_measurements", 10), 15)  # the first subscribe's
        # a value the phone has not seen, published while it is away
        portal.publish_env(22.5, 83.0, 1444, 7.0)
        with hub_on(system_bus, portal_lab, "visit-2") as (loop, hub):
            subscribed = time.perf_counter()
            loop.run(hub.subscribe("env_measurements"), 20)
            at, value = loop.run(hub.next_value("env_measurements", 5), 10)
            waited = at - subscribed
            metrics.set("found.resubscribe_value_after_s", round(waited, 3))
            assert EnvMeasurement.unpack(value).co2 == 1444
            # and what is published from then on reaches it too
            portal.publish_env(22.6, 83.5, 1555, 7.0)
            deadline = time.monotonic() + 10
            while EnvMeasurement.unpack(value).co2 != 1555:
                _at, value = loop.run(hub.next_value(
                    "env_measurements", max(0.1, deadline - time.monotonic())), 15)
    finally:
        _leave(system_bus, portal_lab.address)
        forget_bond(system_bus, CENTRAL_ADAPTER, portal_lab.address)
        forget_bond(system_bus, PERIPHERAL_ADAPTER, central)
