"""The legacy BlueZero backend on its own: the missing-extra fallback, start-up
failures, the bounded producer queue and its policies, shutdown bounds.

These tests import BlueZero, dbus-python and PyGObject directly: without the
``bluezero`` extra they fail at collection, loudly (scripts/install-bluezero-deps).
"""

from __future__ import annotations

import importlib
import logging
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from rig import eventually, make_settings

from mushpi_ble.backends import select_backend
from mushpi_ble.backends.bluez_dbus import BluezDbusBackend
from mushpi_ble.backends.bluezero_backend import INSTALL_HINT, BluezeroBackend
from mushpi_ble.notify import Outcome
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.controller import SimulatedController
from mushpi_ble.testing.fakebluez import FakeBluez

UUID = CHARACTERISTIC_UUIDS


@pytest.fixture
async def backends(bluez: FakeBluez) -> AsyncIterator[list[BluezeroBackend]]:
    """Backends a test made; stopped before the fake bluetoothd goes."""
    made: list[BluezeroBackend] = []
    yield made
    for backend in made:
        await trio.to_thread.run_sync(backend.stop)


async def started(bus_address: str, made: list[BluezeroBackend],
                  controller: SimulatedController | None = None, **env: str) -> BluezeroBackend:
    backend = BluezeroBackend(make_settings(MUSHPI_BLE_BACKEND="bluezero", **env),
                              bus=bus_address)
    made.append(backend)
    backend.set_callbacks((controller or SimulatedController(seed=1)).callbacks())
    assert await trio.to_thread.run_sync(backend.start), backend.last_error
    return backend


def test_missing_extra_falls_back_with_a_warning_naming_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """select_backend's contract: an unimportable backend falls back, with a warning."""
    monkeypatch.setitem(sys.modules, "dbus", None)  # as if dbus-python were not installed
    monkeypatch.delitem(sys.modules, "mushpi_ble.backends.bluezero_backend")
    with pytest.raises(ImportError) as info:
        importlib.import_module("mushpi_ble.backends.bluezero_backend")
    assert "pip install 'mushpi-ble[bluezero]'" in str(info.value)
    assert "libdbus-1-dev" in str(info.value)
    caplog.set_level(logging.WARNING)
    backend = select_backend(make_settings(MUSHPI_BLE_BACKEND="bluezero"))
    assert isinstance(backend, BluezDbusBackend)
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "falling back to bluez-dbus" in warning.getMessage()
    assert "pip install 'mushpi-ble[bluezero]'" in warning.getMessage()
    assert "mushpi-ble[bluezero]" in INSTALL_HINT


async def test_start_failures_are_false_with_the_reason(bus_address: str, bluez: FakeBluez,
                                                        backends: list[BluezeroBackend]) -> None:
    wrong = BluezeroBackend(make_settings(MUSHPI_BLE_ADAPTER="hci7"), bus=bus_address)
    backends.append(wrong)
    assert await trio.to_thread.run_sync(wrong.start) is False
    assert wrong.last_error == "adapter hci7 not found; bluetoothd has: hci0"
    bluez.refuse_next_registration()
    refused = BluezeroBackend(make_settings(), bus=bus_address)
    backends.append(refused)
    assert await trio.to_thread.run_sync(refused.start) is False
    assert refused.last_error is not None
    assert "refused the GATT application: org.bluez.Error.Failed" in refused.last_error
    assert refused.publish_env(20.0, 80.0, 900, 1) is Outcome.NOT_RUNNING
    # nothing leaked: the next start works
    backend = await started(bus_address, backends)
    assert backend.is_running()
    assert backend.get_status()["registered"] is True
    assert backend.publish_env("hot", 80.0, 900, 1) is Outcome.INVALID  # the same core rule


async def test_one_bluezero_backend_per_process(bus_address: str, bluez: FakeBluez,
                                                backends: list[BluezeroBackend]) -> None:
    first = await started(bus_address, backends)
    second = BluezeroBackend(make_settings(), bus=bus_address)
    backends.append(second)
    assert await trio.to_thread.run_sync(second.start) is False
    assert second.last_error is not None and "another BluezeroBackend" in second.last_error
    await trio.to_thread.run_sync(first.stop)
    assert await trio.to_thread.run_sync(second.start)


async def test_connectivity_bit_follows_centrals(bus_address: str, bluez: FakeBluez,
                                                 backends: list[BluezeroBackend]) -> None:
    backend = await started(bus_address, backends)
    one = await bluez.connect_central(address="11:22:33:44:55:01")
    await eventually(lambda: backend.connection_count() == 1)
    await one.subscribe(UUID["status_flags"])
    assert (await one.next_notification(UUID["status_flags"])).value == bytes.fromhex("10000000")
    two = await bluez.connect_central(address="11:22:33:44:55:02")
    await eventually(lambda: backend.connection_count() == 2)
    await two.disconnect()
    await eventually(lambda: backend.connection_count() == 1)
    await one.unsubscribe(UUID["status_flags"])
    await one.disconnect()
    await eventually(lambda: backend.connection_count() == 0)
    status = backend.get_status()
    assert (status["connects"], status["disconnects"]) == (2, 2)


async def test_stalled_bluetoothd_never_stalls_the_producer(
    bus_address: str, bluez: FakeBluez, backends: list[BluezeroBackend]
) -> None:
    backend = await started(bus_address, backends)
    central = await bluez.connect_central()
    await central.subscribe(UUID["env_measurements"])
    await central.next_notification(UUID["env_measurements"])
    bluez.stop_reading()
    try:
        def flood() -> float:
            worst = 0.0
            for n in range(3000):
                began = time.perf_counter()
                backend.publish_env(20.0, 80.0, n, 1)
                worst = max(worst, time.perf_counter() - began)
            return worst

        worst = await trio.to_thread.run_sync(flood)
    finally:
        bluez.resume_reading()
    assert worst < backend.settings.queue_put_timeout_s + 0.1
    c = backend.get_status()["characteristics"]["env_measurements"]
    assert c["offered"] == 3000
    assert c["offered"] == c["sent"] + c["dropped"] + c["coalesced"] + c["pending"]


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest", "coalesce"])
async def test_policies_when_the_glib_loop_is_busy(bus_address: str, bluez: FakeBluez,
                                                   backends: list[BluezeroBackend],
                                                   policy: str) -> None:
    """A slow controller getter holds the GLib loop, so the worker waits and the
    bounded queue fills: each policy then does what it says, and counters add up."""
    release = threading.Event()
    controller = SimulatedController(seed=1)
    original = controller.get_control_targets

    def hung_getter() -> dict[str, Any]:
        release.wait(5)
        return original()

    controller.get_control_targets = hung_getter  # type: ignore[method-assign]
    backend = await started(bus_address, backends, controller, MUSHPI_BLE_QUEUE_MAX_SIZE="8",
                            MUSHPI_BLE_QUEUE_PUT_TIMEOUT_MS="1",
                            MUSHPI_BLE_POLICY_ENV_MEASUREMENTS=policy)
    central = await bluez.connect_central()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(central.read, UUID["control_targets"])
        await trio.sleep(0.1)  # the GLib loop is now inside the getter
        outcomes = await trio.to_thread.run_sync(
            lambda: [backend.publish_env(20.0, 80.0, n, 1) for n in range(100)])
        release.set()
    c = backend.get_status()["characteristics"]["env_measurements"]
    assert c["offered"] == 100
    assert c["offered"] == c["sent"] + c["dropped"] + c["coalesced"] + c["pending"]
    expected = {"drop_oldest": Outcome.QUEUED, "drop_newest": Outcome.DROPPED,
                "coalesce": Outcome.COALESCED}[policy]
    assert outcomes[-1] is expected
    assert (c["dropped"] > 0) is (policy != "coalesce")
    assert (c["coalesced"] > 0) is (policy == "coalesce")
    if policy != "drop_newest":  # the newest value survives
        with trio.fail_after(3):
            while struct.unpack_from("<H", await central.read(UUID["env_measurements"]))[0] \
                    != 99:
                await trio.sleep(0.01)


async def test_stop_is_bounded_even_inside_a_hung_callback(
    bus_address: str, bluez: FakeBluez, backends: list[BluezeroBackend]
) -> None:
    release = threading.Event()
    controller = SimulatedController(seed=1)

    def hung_stage() -> dict[str, Any]:
        release.wait(5)
        return {"species": "Oyster", "stage": "Pinning"}

    backend = await started(bus_address, backends, controller,
                            MUSHPI_BLE_SHUTDOWN_TIMEOUT_MS="300")
    backend.set_callbacks({"get_stage_data": hung_stage})
    central = await bluez.connect_central()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(central.read, UUID["stage_state"])
        await trio.sleep(0.1)
        began = time.monotonic()
        await trio.to_thread.run_sync(backend.stop)
        assert time.monotonic() - began < 0.3 + 0.3
        assert not backend.is_running()
        release.set()
    # once the callback returns, the loop finishes its teardown and a new start works
    await bluez.wait_until(lambda: not bluez.applications(), timeout=3)
    await eventually(lambda: all(t.name != "mushpi-ble-glib" for t in threading.enumerate()))
    again = await started(bus_address, backends)
    assert again.is_running()
