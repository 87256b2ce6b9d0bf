"""Connected centrals come from bluetoothd's Device1 state, never from a request's word."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from rig import Rig, eventually, make_settings, phone, start_rig

from mushpi_ble.dbus import open_connection
from mushpi_ble.gatt.devices import DeviceTracker
from mushpi_ble.gatt.names import DEVICE_IFACE, OBJECT_MANAGER
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.fakebluez import FakeBluez

UUID = CHARACTERISTIC_UUIDS
ADAPTER = "/org/bluez/hci0"


def tracker_of(rig: Rig) -> DeviceTracker:
    tracker = rig.portal.peripheral.steps.devices.tracker
    assert tracker is not None
    return tracker


@pytest.fixture(params=[0.0, 5.0], ids=["device-removed", "device-kept"])
async def lingering(request: pytest.FixtureRequest, bus_address: str) -> AsyncIterator[Rig]:
    """A rig whose bluetoothd drops a disconnected Device1 at once, or keeps it a while."""
    async with FakeBluez.serve(bus_address, device_remove_delay=request.param) as bluez:
        rig = await start_rig(bus_address, bluez, make_settings())
        try:
            yield rig
        finally:
            await trio.to_thread.run_sync(rig.portal.stop)


async def test_a_request_that_outlives_its_central_is_not_counted(lingering: Rig) -> None:
    rig = lingering
    central = await phone(rig)
    await eventually(lambda: rig.portal.connection_count() == 1)
    rig.bluez.delay_next_call("ReadValue", 0.3)
    async with trio.open_nursery() as nursery:
        # the read reaches the application only after the central has gone
        nursery.start_soon(central.read, UUID["control_targets"])
        await trio.testing.wait_all_tasks_blocked()  # the read waits in the injected delay
        await central.disconnect()
        await eventually(lambda: rig.portal.connection_count() == 0)
    await eventually(lambda: tracker_of(rig).checks_done == 1)
    assert rig.portal.connection_count() == 0
    assert rig.portal.get_status()["connects"] == 1
    assert rig.portal.get_status()["disconnects"] == 1


async def test_a_connected_device_seen_only_in_a_request_is_counted(rig: Rig) -> None:
    await rig.bluez.wait_for_advertisement()  # the last step: devices are followed
    central = await rig.bluez.connect_central(mtu=185, announce=False)
    assert rig.portal.connection_count() == 0
    assert (await central.read(UUID["status_flags"]))[0] & 0x10  # the reader itself
    await eventually(lambda: rig.portal.connection_count() == 1)
    (device,) = rig.portal.get_status()["connected_devices"]
    assert (device["path"], device["mtu"]) == (central.device_path, 185)
    await central.disconnect()
    await eventually(lambda: rig.portal.connection_count() == 0)


async def test_a_sighting_before_devices_are_followed_is_checked_once_they_are(
    bus_address: str, bluez: FakeBluez
) -> None:
    central = await bluez.connect_central(announce=False)
    ghost = f"{ADAPTER}/dev_00_00_00_00_00_01"
    tracker = DeviceTracker(ADAPTER)
    tracker.note_request(central.device_path, 99)  # nobody to ask yet
    tracker.note_request(ghost, 50)
    async with open_connection(bus_address) as conn, trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: tracker.run(conn, timeout=1.0,
                                                            task_status=task_status))
        # the central is in bluetoothd's objects, connected; the ghost is asked about
        assert [(c.path, c.mtu) for c in tracker.connected] == [(central.device_path, 99)]
        with trio.fail_after(2):
            while tracker.checks_done < 1:
                await trio.sleep(0.01)
        assert ghost not in tracker.centrals
        nursery.cancel_scope.cancel()


async def test_a_device_known_from_device1_is_not_asked_about(rig: Rig) -> None:
    central = await phone(rig, mtu=100)
    await eventually(lambda: rig.portal.connection_count() == 1)
    await central.read(UUID["control_targets"])
    await eventually(lambda: rig.portal.get_status()["connected_devices"][0]["mtu"] == 100)
    assert tracker_of(rig).checks_done == 0


async def test_device_signals_from_another_sender_are_ignored(rig: Rig,
                                                              bus_address: str) -> None:
    forged = f"{ADAPTER}/dev_66_55_44_33_22_11"
    peripheral_name = rig.portal.peripheral.host.conn.unique_name
    props = {DEVICE_IFACE: {"Address": ("s", "66:55:44:33:22:11"), "Connected": ("b", True)}}
    async with open_connection(bus_address) as intruder:
        await intruder.emit_signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}",
                                   (forged, props))
        intruder.export(forged, [])
        await intruder.emit_signal(forged, "org.freedesktop.DBus.Properties",
                                   "PropertiesChanged", "sa{sv}as",
                                   (DEVICE_IFACE, {"Connected": ("b", True)}, []))
        # answered only after everything the intruder sent before it was read
        await intruder.call(peripheral_name, "/", "org.freedesktop.DBus.Peer", "Ping")
    central = await phone(rig)
    await eventually(lambda: rig.portal.connection_count() == 1)
    paths = [d["path"] for d in rig.portal.get_status()["connected_devices"]]
    assert paths == [central.device_path]


async def test_an_unconfirmed_sighting_is_asked_about_once_until_it_expires(
    bus_address: str, bluez: FakeBluez
) -> None:
    ghost = f"{ADAPTER}/dev_00_00_00_00_00_01"
    tracker = DeviceTracker(ADAPTER, seen_ttl=0.2)
    async with open_connection(bus_address) as conn, trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: tracker.run(conn, timeout=1.0,
                                                            task_status=task_status))
        tracker.note_request(ghost, 50)
        tracker.note_request(ghost, 60)
        with trio.fail_after(2):
            while tracker.checks_done < 1:
                await trio.sleep(0.01)
        tracker.note_request(ghost, 70)
        await trio.sleep(0.05)
        assert tracker.checks_done == 1
        await trio.sleep(0.2)
        tracker.note_request(ghost, 80)  # expired: asked again
        with trio.fail_after(2):
            while tracker.checks_done < 2:
                await trio.sleep(0.01)
        tracker.note_request("/org/bluez/hci1/dev_00_00_00_00_00_02", 23)  # not our adapter
        await trio.sleep(0.05)
        assert tracker.checks_done == 2
        assert tracker.connected == [] and tracker.centrals == {}
        nursery.cancel_scope.cancel()
