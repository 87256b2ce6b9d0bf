"""start() says why it cannot start: one error type and message per cause."""

from __future__ import annotations

import logging

import pytest
import trio
from rig import make_settings

from mushpi_ble.backends import select_backend
from mushpi_ble.backends.bluez_dbus import BluezDbusBackend
from mushpi_ble.errors import (
    AdapterNotFound,
    AlreadyServing,
    BluezUnavailable,
    BusUnavailable,
    RegistrationRefused,
    StartTimeout,
)
from mushpi_ble.portal import BlePortal
from mushpi_ble.testing.fakebluez import FakeBluez


async def start(portal: BlePortal) -> None:
    await trio.to_thread.run_sync(portal.start)


async def test_bus_unreachable() -> None:
    portal = BlePortal(make_settings(), bus="unix:path=/nonexistent/bus")
    with pytest.raises(BusUnavailable, match="cannot reach the D-Bus bus"):
        await start(portal)
    assert not portal.is_running()


async def test_no_bluetoothd_on_the_bus(bus_address: str) -> None:
    portal = BlePortal(make_settings(MUSHPI_DBUS_BUS_TIMEOUT_MS="300"), bus=bus_address)
    with pytest.raises(BluezUnavailable, match=r"org\.bluez is not on the bus"):
        await start(portal)
    assert not portal.is_running()


async def test_no_such_adapter(bus_address: str, bluez: FakeBluez) -> None:
    portal = BlePortal(make_settings(MUSHPI_BLE_ADAPTER="hci3"), bus=bus_address)
    with pytest.raises(AdapterNotFound, match="'hci3' not found"):
        await start(portal)


async def test_registration_refused(bus_address: str, bluez: FakeBluez) -> None:
    bluez.refuse_next_registration("org.bluez.Error.Failed", "No valid service object found")
    portal = BlePortal(make_settings(), bus=bus_address)
    with pytest.raises(RegistrationRefused,
                       match=r"org\.bluez\.Error\.Failed: No valid service object found"):
        await start(portal)
    # nothing is left running, and a later start works
    await start(portal)
    assert portal.is_running()
    await trio.to_thread.run_sync(portal.stop)


async def test_slow_registration_times_out(bus_address: str, bluez: FakeBluez) -> None:
    bluez.delay_next_call("RegisterApplication", 5.0)
    portal = BlePortal(make_settings(MUSHPI_DBUS_BUS_TIMEOUT_MS="300"), bus=bus_address)
    with pytest.raises(StartTimeout,
                       match=r"did not finish within 0\.3 s \(MUSHPI_DBUS_BUS_TIMEOUT_MS\)"):
        await start(portal)
    assert not portal.is_running()


async def test_backend_start_returns_false_with_the_reason(bus_address: str) -> None:
    backend = BluezDbusBackend(make_settings(MUSHPI_DBUS_BUS_TIMEOUT_MS="200"), bus=bus_address)
    assert backend.initialize() is True
    assert await trio.to_thread.run_sync(backend.start) is False
    assert "org.bluez is not on the bus" in backend.get_status()["start_error"]
    backend.stop()  # idempotent after a failed start


def test_select_backend_by_setting() -> None:
    assert isinstance(select_backend(make_settings()), BluezDbusBackend)


def test_select_backend_falls_back_when_import_fails(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import mushpi_ble.backends as backends

    monkeypatch.setitem(backends.BACKEND_MODULES, "bluezero",
                        ("mushpi_ble.backends.not_installed_here", "Nope"))
    caplog.set_level(logging.WARNING)
    backend = select_backend(make_settings(MUSHPI_BLE_BACKEND="bluezero"))
    assert isinstance(backend, BluezDbusBackend)
    assert "backend bluezero cannot be imported" in caplog.text
    assert "falling back to bluez-dbus" in caplog.text


async def test_a_second_peripheral_on_the_adapter_refuses_to_start(
        bus_address: str, bluez: FakeBluez, caplog: pytest.LogCaptureFixture) -> None:
    """Two would register two applications and adverts; the second names the first."""
    caplog.set_level(logging.INFO, logger="mushpi_ble.portal")
    first = BlePortal(make_settings(), bus=bus_address)
    await start(first)
    try:
        second = BlePortal(make_settings(), bus=bus_address)
        with pytest.raises(AlreadyServing, match=r"already serves adapter hci0 .*process \d+"):
            await start(second)
        assert not second.is_running()
        assert first.get_status()["registered"]
    finally:
        await trio.to_thread.run_sync(first.stop)
    # the log says at start which access is in force and where the settings came from
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("starting")]
    assert "write_access=open read_access=open pairing=just-works" in started[0]
    assert "settings_file=" in started[0]
