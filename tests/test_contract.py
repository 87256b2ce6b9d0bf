"""Controller-contract details: callbacks never run on the controller's thread or
without a deadline, state set before start is served, stop never waits for a start,
uptime counts from the start, a long bad JSON write is refused."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from rig import Rig, eventually, make_settings, phone

from mushpi_ble.compat import ble_gatt
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.controller import SimulatedController
from mushpi_ble.testing.fakebluez import AttError, FakeBluez

UUID = CHARACTERISTIC_UUIDS


@pytest.fixture
def facade(bus_address: str) -> Iterator[None]:
    ble_gatt._reset_for_tests()
    ble_gatt.configure(settings=make_settings(MUSHPI_BLE_HANDLER_TIMEOUT_MS="300",
                                              MUSHPI_BLE_SHUTDOWN_TIMEOUT_MS="300"),
                       bus=bus_address)
    yield
    ble_gatt._reset_for_tests()


async def test_hung_relay_getter_never_blocks_notify_actuator_status(
    facade: None, bluez: FakeBluez
) -> None:
    release = threading.Event()
    calls: list[str] = []

    def hung_control_data() -> dict[str, Any]:
        calls.append(threading.current_thread().name)
        release.wait(5)
        return {"fan": True}

    ble_gatt.set_callbacks(get_control_data=hung_control_data)
    try:
        assert await trio.to_thread.run_sync(ble_gatt.start_ble_service)
        started = time.monotonic()
        await trio.to_thread.run_sync(ble_gatt.notify_actuator_status)
        assert time.monotonic() - started < 0.2  # handed over, not waited for
        await eventually(lambda: calls)
        assert calls[0] != threading.current_thread().name
    finally:
        release.set()
        await trio.to_thread.run_sync(ble_gatt.stop_ble_service)


async def test_slow_stage_getter_never_blocks_update_advertising_name(
    facade: None, bluez: FakeBluez
) -> None:
    stage = {"species": "Shiitake", "stage": "Fruiting"}

    def slow_stage() -> dict[str, Any]:
        time.sleep(0.15)
        return stage

    ble_gatt.set_callbacks(get_stage_data=slow_stage)
    try:
        assert await trio.to_thread.run_sync(ble_gatt.start_ble_service)
        await bluez.wait_until(lambda: bluez.adapter("hci0").alias == "MushPi-ShiitakeFruiting")
        stage["stage"] = "Pinning"
        started = time.monotonic()
        await trio.to_thread.run_sync(ble_gatt.update_advertising_name)
        assert time.monotonic() - started < 0.1
        await bluez.wait_until(lambda: bluez.adapter("hci0").alias == "MushPi-ShiitakePinning")
    finally:
        await trio.to_thread.run_sync(ble_gatt.stop_ble_service)


async def test_status_flags_set_before_start_are_served(facade: None, bluez: FakeBluez) -> None:
    ble_gatt.update_status_flags(0x80)  # simulation mode, before the service runs
    try:
        assert await trio.to_thread.run_sync(ble_gatt.start_ble_service)
        central = await bluez.connect_central()
        value = await central.read(UUID["status_flags"])
        assert struct.unpack("<HH", value)[0] == 0x80 | 0x10
    finally:
        await trio.to_thread.run_sync(ble_gatt.stop_ble_service)


async def test_stop_does_not_wait_for_a_start_in_progress(facade: None,
                                                          bluez: FakeBluez) -> None:
    bluez.delay_next_call("RegisterApplication", 3.0)
    result: dict[str, bool] = {}
    thread = threading.Thread(target=lambda: result.update(ok=ble_gatt.start_ble_service()))
    thread.start()
    await trio.sleep(0.3)
    started = time.monotonic()
    await trio.to_thread.run_sync(ble_gatt.stop_ble_service)
    assert time.monotonic() - started < 1.0  # bounded by the shutdown timeout, not the start
    await trio.to_thread.run_sync(thread.join, 5)
    assert result == {"ok": False}
    assert not ble_gatt.is_service_running()


async def test_env_uptime_counts_from_the_start(bus_address: str, bluez: FakeBluez) -> None:
    from mushpi_ble.portal import BlePortal

    portal = BlePortal(make_settings(), bus=bus_address)
    portal.set_callbacks(SimulatedController(seed=1).callbacks())
    await trio.sleep(0.5)  # built well before it starts
    await trio.to_thread.run_sync(portal.start)
    try:
        portal.publish_env(20.0, 80.0, 900, 10)
        central = await bluez.connect_central()
        with trio.fail_after(2):
            while (value := await central.read(UUID["env_measurements"])) == bytes(12):
                await trio.sleep(0.01)
        assert struct.unpack_from("<I", value, 8)[0] < 400
    finally:
        await trio.to_thread.run_sync(portal.stop)


async def test_long_single_write_of_bad_json_is_refused(rig: Rig) -> None:
    central = await phone(rig, mtu=512)
    for size in (100, 507, 509):  # plain Write Requests carry up to MTU-3 bytes
        prefix = b'{"species": "Oyster", "stage": "'
        payload = prefix + b"x" * (size - len(prefix))
        assert len(payload) == size
        with pytest.raises(AttError) as info:
            await central.write(UUID["stage_thresholds"], payload)
        assert info.value.code == 0x87
    assert rig.controller.writes == []
