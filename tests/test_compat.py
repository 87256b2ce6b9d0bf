"""The facade's own promises: names and signatures, callbacks that None never clears,
no exception ever reaching the controller, and start-up that fails with False."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
from rig import eventually, make_settings

from mushpi_ble.compat import ble_gatt
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.controller import SimulatedController
from mushpi_ble.testing.fakebluez import FakeBluez

BACKENDS = ("bluez-dbus", "bluezero")


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    ble_gatt._reset_for_tests()
    yield
    ble_gatt._reset_for_tests()


def test_the_controller_api_is_there_with_its_signatures() -> None:
    expected = {
        "set_callbacks": ["get_sensor_data", "get_control_data", "get_control_targets",
                          "get_stage_data", "set_control_targets", "set_stage_state",
                          "apply_overrides", "get_stage_thresholds", "set_stage_thresholds",
                          "on_pairing_passkey"],
        "initialize_ble_service": [],
        "start_ble_service": [],
        "stop_ble_service": [],
        "notify_env_packet": ["temp", "rh", "co2", "light"],
        "update_status_flags": ["flags"],
        "notify_actuator_status": [],
        "is_service_running": [],
        "get_connection_count": [],
        "update_advertising_name": [],
        "get_service_instance": [],
        "open_pairing_window": ["seconds"],
        "close_pairing_window": [],
        "approve_bond": ["address"],
    }
    for name, params in expected.items():
        fn = getattr(ble_gatt, name)
        assert list(inspect.signature(fn).parameters) == params, name
    assert all(p.default is None
               for p in inspect.signature(ble_gatt.set_callbacks).parameters.values())


def test_set_callbacks_positional_order_and_none_keeps_earlier() -> None:
    def a() -> None: ...

    def b() -> None: ...

    def c() -> None: ...

    ble_gatt.set_callbacks(a, b)  # positional: get_sensor_data, get_control_data
    ble_gatt.set_callbacks(get_control_data=None, apply_overrides=c)
    ble_gatt.set_callbacks(None, None, None, None, None, None, None, None, c)
    assert ble_gatt._state.callbacks == {"get_sensor_data": a, "get_control_data": b,
                                         "apply_overrides": c, "set_stage_thresholds": c}
    ble_gatt.set_callbacks(get_sensor_data="not callable")  # type: ignore[arg-type]
    assert ble_gatt._state.callbacks["get_sensor_data"] is a


def test_everything_is_a_quiet_no_op_before_start() -> None:
    ble_gatt.notify_env_packet(21.5, 80.0, 900, 10)
    ble_gatt.notify_env_packet(None, None, None, None)
    ble_gatt.update_status_flags(0b101)
    ble_gatt.notify_actuator_status()
    ble_gatt.update_advertising_name()
    ble_gatt.stop_ble_service()
    assert ble_gatt.is_service_running() is False
    assert ble_gatt.get_connection_count() == 0
    assert ble_gatt.get_service_instance() is None


def test_bad_configuration_gives_false_not_an_exception(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MUSHPI_BLE_BACKEND", "bluetooth-classic")
    assert ble_gatt.initialize_ble_service() is False
    assert ble_gatt.start_ble_service() is False
    assert "MUSHPI_BLE_BACKEND" in caplog.text


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_without_a_bus_is_false_within_the_timeout(backend: str) -> None:
    settings = make_settings(MUSHPI_BLE_BACKEND=backend, MUSHPI_DBUS_BUS_TIMEOUT_MS="300")
    ble_gatt.configure(settings=settings, bus="unix:path=/nonexistent/mushpi-bus")
    started = time.monotonic()
    assert ble_gatt.start_ble_service() is False
    assert time.monotonic() - started < 0.3 + 1.5
    assert ble_gatt.is_service_running() is False


@pytest.mark.parametrize("backend", BACKENDS)
async def test_start_without_bluetoothd_is_false(bus_address: str, backend: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(MUSHPI_BLE_BACKEND=backend, MUSHPI_DBUS_BUS_TIMEOUT_MS="300")
    ble_gatt.configure(settings=settings, bus=bus_address)
    assert await trio.to_thread.run_sync(ble_gatt.start_ble_service) is False
    assert "org.bluez" in caplog.text
    ble_gatt.notify_env_packet(20.0, 80.0, 900, 1)  # still a quiet no-op


@pytest.fixture
async def env_bus(bus_address: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeBluez]:
    """The system bus, as far as this process knows, is the private test bus."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus_address)
    async with FakeBluez.serve(bus_address) as bluez:
        try:
            yield bluez
        finally:
            await trio.to_thread.run_sync(ble_gatt._reset_for_tests)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_environment_chooses_backend_and_bus(env_bus: FakeBluez,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   backend: str) -> None:
    """No configure(): MUSHPI_BLE_BACKEND picks the backend, DBUS_SYSTEM_BUS_ADDRESS the bus."""
    monkeypatch.setenv("MUSHPI_BLE_BACKEND", backend)
    controller = SimulatedController(seed=3)
    ble_gatt.set_callbacks(**controller.callbacks())
    assert await trio.to_thread.run_sync(ble_gatt.start_ble_service)
    instance = ble_gatt.get_service_instance()
    assert instance is not None and instance.name == backend
    status: dict[str, Any] = instance.get_status()
    assert status["running"] is True
    central = await env_bus.connect_central()
    await eventually(lambda: ble_gatt.get_connection_count() == 1)
    ble_gatt.notify_env_packet(20.0, 80.0, 777, 1)
    with trio.fail_after(3):
        while (await central.read(CHARACTERISTIC_UUIDS["env_measurements"]))[:2] != \
                (777).to_bytes(2, "little"):
            await trio.sleep(0.01)



class _BrokenBackend:
    """A backend whose every call fails: what the facade's one guard is for."""

    name = "broken"

    def __getattr__(self, name: str) -> Any:
        if name == "is_running":
            return lambda: True

        def fail(*_args: object, **_kwargs: object) -> Any:
            raise RuntimeError(f"{name} exploded")

        return fail


def test_the_facade_is_the_one_guard_nothing_raises_into_the_controller(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ble_gatt, "PublishingBackend", object)
    ble_gatt._state.backend = _BrokenBackend()  # type: ignore[assignment]
    assert ble_gatt.notify_env_packet(21.5, 80.0, 900, 10) is None
    assert ble_gatt.update_status_flags(1) is None
    assert ble_gatt.notify_actuator_status() is None
    assert ble_gatt.update_advertising_name() is None
    assert ble_gatt.get_connection_count() == 0
    ble_gatt.set_callbacks(get_sensor_data=lambda: None)
    ble_gatt.stop_ble_service()
    assert ble_gatt._state.backend is None  # forgotten even though its stop failed
    for name in ("notify_env_packet", "update_status_flags", "notify_actuator_status",
                 "update_advertising_name", "get_connection_count", "set_callbacks",
                 "stop_ble_service"):
        assert f"{name} failed: RuntimeError" in caplog.text, name


async def test_a_button_opens_a_pairing_window_through_the_facade(
        bus_address: str, bluez: FakeBluez, caplog: pytest.LogCaptureFixture) -> None:
    assert ble_gatt.open_pairing_window(60) is None  # nothing initialised: logged, no raise
    assert "need the bluez-dbus backend" in caplog.text
    settings = make_settings(MUSHPI_BLE_WRITE_ACCESS="bonded")
    ble_gatt.configure(settings=settings, bus=bus_address)
    assert await trio.to_thread.run_sync(ble_gatt.start_ble_service)
    try:
        until = ble_gatt.open_pairing_window(60)
        assert until is not None and until > time.time() + 50
        backend = ble_gatt.get_service_instance()
        assert backend is not None and backend.get_status()["access"]["window_open"]
        ble_gatt.close_pairing_window()
        assert not backend.get_status()["access"]["window_open"]
        assert ble_gatt.open_pairing_window(0) is None  # a bad length is logged, not raised
        assert "pairing window lasts" in caplog.text
        # no such bond: logged, not raised
        assert await trio.to_thread.run_sync(ble_gatt.approve_bond, "11:22:33:44:55:66") is False
        assert "no bonded phone 11:22:33:44:55:66" in caplog.text
    finally:
        await trio.to_thread.run_sync(ble_gatt.stop_ble_service)
