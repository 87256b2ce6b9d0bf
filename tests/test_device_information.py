"""The Device Information Service: generic data in gatt, the MushPi values from the
settings and our version, read by a central from the fake bluetoothd."""

from __future__ import annotations

import pytest
import trio
from rig import make_settings, phone, start_rig

from mushpi_ble import __version__
from mushpi_ble.gatt import (
    DEVICE_INFORMATION,
    ReadRequest,
    device_information_service,
    normalise_uuid,
    validate_services,
)
from mushpi_ble.testing.fakebluez import FakeBluez

MANUFACTURER = normalise_uuid("2a29")
MODEL = normalise_uuid("2a24")
FIRMWARE = normalise_uuid("2a26")
SOFTWARE = normalise_uuid("2a28")


def test_the_service_is_data_with_what_is_given_in_the_specifications_order() -> None:
    service = device_information_service(manufacturer="Acme", software="1.0",
                                         model="Grow Box")
    assert service.uuid == normalise_uuid(DEVICE_INFORMATION)
    assert [c.uuid for c in service.characteristics] == [MANUFACTURER, MODEL, SOFTWARE]
    assert all(c.flags == ("read",) for c in service.characteristics)
    request = ReadRequest(device="/org/bluez/hci0/dev_X", mtu=23, offset=0)
    assert [c.read(request) for c in service.characteristics if c.read] == [
        b"Acme", b"Grow Box", b"1.0"]
    assert service.handle == 0 and all(c.handle == 0 for c in service.characteristics)
    validate_services([service])


def test_fixed_handles_follow_bluetoothds_layout() -> None:
    service = device_information_service(manufacturer="Acme", model="Box", handle=0x0F00)
    assert [c.handle for c in service.characteristics] == [0x0F02, 0x0F04]
    validate_services([service])


def test_a_value_longer_than_an_attribute_is_refused() -> None:
    with pytest.raises(ValueError, match="manufacturer_name: 513 bytes"):
        device_information_service(manufacturer="x" * 513)


async def test_a_central_reads_who_made_it_and_which_firmware_runs(
    bus_address: str, bluez: FakeBluez
) -> None:
    rig = await start_rig(bus_address, bluez, make_settings(
        MUSHPI_BLE_MANUFACTURER="Hyphae Ltd", MUSHPI_BLE_FIRMWARE_REVISION="2.3.1"))
    try:
        central = await phone(rig)
        assert await central.read(MANUFACTURER) == b"Hyphae Ltd"
        assert await central.read(MODEL) == b"MushPi Controller"
        assert await central.read(FIRMWARE) == b"2.3.1"
        assert await central.read(SOFTWARE) == f"mushpi-ble {__version__}".encode()
        assert central.characteristic(MANUFACTURER).handle == 0x0F02
        assert central.characteristic(MANUFACTURER).service_uuid == normalise_uuid("180a")
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_without_a_controller_version_the_firmware_revision_is_left_out(
    bus_address: str, bluez: FakeBluez
) -> None:
    rig = await start_rig(bus_address, bluez, make_settings())
    try:
        central = await phone(rig)
        assert await central.read(SOFTWARE) == f"mushpi-ble {__version__}".encode()
        with pytest.raises(KeyError):
            central.characteristic(FIRMWARE)
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_switched_off_there_is_none(bus_address: str, bluez: FakeBluez) -> None:
    rig = await start_rig(bus_address, bluez, make_settings(MUSHPI_BLE_DEVICE_INFO="false"))
    try:
        central = await phone(rig)
        with pytest.raises(KeyError):
            central.characteristic(MANUFACTURER)
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)
