"""Fixed attribute handles: the table's, laid out as bluetoothd lays a service out,
the same after every restart, and a clash named at start-up."""

from __future__ import annotations

import pytest
import trio
from rig import make_settings, phone, start_rig, status_until

from mushpi_ble.controller import ControllerCallbacks
from mushpi_ble.dbus import open_connection
from mushpi_ble.errors import StartError
from mushpi_ble.gatt import (
    Characteristic,
    GattApplication,
    GattDefinitionError,
    Service,
    fixed_handles,
)
from mushpi_ble.gatt import validate_services as validate
from mushpi_ble.portal import BlePortal
from mushpi_ble.protocol import CHARACTERISTICS, SERVICE_HANDLE
from mushpi_ble.service import MushPiService
from mushpi_ble.testing.fakebluez import FakeBluez

UUID = "12345678-1234-5678-1234-56789abcdef0"


def test_the_table_follows_bluetoothds_layout() -> None:
    spans = [2 + (row.notify is not None) for row in CHARACTERISTICS]
    assert tuple(row.handle for row in CHARACTERISTICS) == fixed_handles(SERVICE_HANDLE, spans)
    # optional rows come last: leaving one out moves no other row's handle
    optional = [i for i, row in enumerate(CHARACTERISTICS)
                if row.notify is not None and row.notify.optional]
    assert optional == list(range(len(CHARACTERISTICS) - len(optional), len(CHARACTERISTICS)))


@pytest.mark.parametrize(
    ("why", "service_handle", "spans", "expected"),
    [
        ("read/write: declaration and value", 0x10, [2, 2], (0x12, 0x14)),
        ("a notifying one adds its CCC", 0x10, [3, 2], (0x12, 0x15)),
        ("an extended-properties descriptor too", 0x10, [4, 3], (0x12, 0x16)),
    ],
)
def test_fixed_handles(why: str, service_handle: int, spans: list[int],
                       expected: tuple[int, ...]) -> None:
    assert fixed_handles(service_handle, spans) == expected, why


async def _ok() -> None:
    return None


def chars(*handles: int, notify: bool = True) -> tuple[Characteristic, ...]:
    flags = ("read", "notify") if notify else ("read",)
    return tuple(Characteristic(f"0000aa0{i}-0000-1000-8000-00805f9b34fb", flags,
                                read=lambda _r: b"", name=f"c{i}", handle=h)
                 for i, h in enumerate(handles))


@pytest.mark.parametrize(
    ("services", "message"),
    [
        ([Service(UUID, chars(0x102, 0x106), handle=0x100, name="s")],
         "c1: handle 0x0106 clashes with bluetoothd's layout of service s at 0x0100: its "
         "value handle must be 0x0105"),
        ([Service(UUID, chars(0x102), handle=0, name="s")],
         "c0: handle 0x0102 needs a fixed handle for its service s too"),
        ([Service(UUID, chars(0x102, 0x105), handle=0x100, name="a"),
          Service("180a", chars(0x106), handle=0x104, name="b")],
         "service b: handles 0x0104..0x0107 clash with service a at 0x0100..0x0106"),
        ([Service(UUID, chars(0xFFFF), handle=0xFFFE, name="s")],
         "do not fit in 0x0001..0xffff"),
    ],
)
def test_a_clash_is_named(services: list[Service], message: str) -> None:
    with pytest.raises(GattDefinitionError) as error:
        validate(services)
    assert message in str(error.value)


async def test_handles_are_the_tables_and_survive_every_restart(
    bus_address: str, bluez: FakeBluez
) -> None:
    def seen(central: object) -> dict[str, int]:
        return {row.name: central.characteristic(row.uuid).handle  # type: ignore[attr-defined]
                for row in CHARACTERISTICS}

    rig = await start_rig(bus_address, bluez, make_settings())
    try:
        expected = {row.name: row.handle for row in CHARACTERISTICS}
        central = await phone(rig)
        assert seen(central) == expected
        assert bluez.applications()[0].services[0].handle == SERVICE_HANDLE
        await central.disconnect()
        # bluetoothd restarts: registered again, at the same handles
        await bluez.restart()
        await bluez.wait_for_application(timeout=5.0)
        await status_until(rig.portal, lambda s: s["registered"])
        assert seen(await phone(rig, address="11:22:33:44:55:77")) == expected
        # our own stop and start
        await trio.to_thread.run_sync(rig.portal.stop)
        await bluez.wait_until(lambda: not bluez.applications())
        await trio.to_thread.run_sync(rig.portal.start)
        await bluez.wait_for_application()
        assert seen(await phone(rig, address="11:22:33:44:55:78")) == expected
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_without_actuator_status_the_others_keep_their_handles(
    bus_address: str, bluez: FakeBluez
) -> None:
    rig = await start_rig(bus_address, bluez,
                          make_settings(MUSHPI_BLE_ACTUATOR_STATUS_ENABLE="false"))
    try:
        central = await phone(rig)
        for row in CHARACTERISTICS:
            if row.name != "actuator_status":
                assert central.characteristic(row.uuid).handle == row.handle
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_a_clash_with_a_service_bluetoothd_holds_is_a_start_error_naming_the_handles(
    bus_address: str, bluez: FakeBluez
) -> None:
    # another program's application already holds those handles (a second MushPi
    # peripheral would be refused earlier, naming the first: one per adapter)
    other_service = MushPiService(make_settings(), ControllerCallbacks).definition()
    second = BlePortal(make_settings(MUSHPI_DBUS_APP_PATH="/com/other/gatt",
                                     MUSHPI_BLE_ADV_ENABLE="false"), bus=bus_address)
    async with open_connection(bus_address) as conn, trio.open_nursery() as nursery:
        other = GattApplication(conn, "/com/another/program", [other_service],
                                nursery=nursery, handler_timeout=1.0)
        other.export()
        await other.register("/org/bluez/hci0", timeout=2.0)
        try:
            with pytest.raises(StartError) as refused:
                await trio.to_thread.run_sync(second.start)
            text = str(refused.value)
            assert "Failed to create entry in database" in text
            assert "fixed handles (mushpi 0x1000..0x1011, device_information 0x0f00..0x0f06)" \
                in text
        finally:
            await trio.to_thread.run_sync(second.stop)
            await other.unregister(timeout=2.0)
