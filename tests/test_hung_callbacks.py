"""A hung controller callback stays contained: one call of each callback runs at a time,
a hung one holds only its own thread, is reported, and recovers when it returns.

The runner's rules are checked directly (threads, no bus); the peripheral through the
controller's facade against the fake bluetoothd on a private bus, with a phone reading
a hung getter a hundred times while everything else must keep working.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from rig import eventually, make_settings, targets_payload

from mushpi_ble.compat import ble_gatt
from mushpi_ble.controller import CallbackRunner, ControllerFailure, ControllerTimeout
from mushpi_ble.portal import BlePortal
from mushpi_ble.prometheus import StatusCollector
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS, ActuatorStatus, OverrideBits
from mushpi_ble.testing.controller import SimulatedController
from mushpi_ble.testing.fakebluez import FakeBluez

UUID = CHARACTERISTIC_UUIDS
HUNG_READS = 100


class Gate:
    """A callback body that blocks until released, counting its calls."""

    def __init__(self, answer: object = None) -> None:
        self.answer = answer
        self.release = threading.Event()
        self.calls: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> object:
        with self._lock:
            self.calls.append(args)
        self.release.wait(30)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


@pytest.fixture
def gates() -> Iterator[list[Gate]]:
    """Every gate a test makes is opened at the end, whatever happened."""
    made: list[Gate] = []
    yield made
    for gate in made:
        gate.release.set()


def _gate(gates: list[Gate], answer: object = None) -> Gate:
    gate = Gate(answer)
    gates.append(gate)
    return gate


# -- the runner ----------------------------------------------------------------------------
async def test_reads_of_a_running_getter_join_it(gates: list[Gate]) -> None:
    runner = CallbackRunner(5.0)
    gate = _gate(gates, {"temp_min": 20})
    answers: list[object] = []

    async def read() -> None:
        answers.append(await runner.call("get_control_targets", gate))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(read)
        await eventually(lambda: runner.status()["get_control_targets"]["joined"] == 19)
        gate.release.set()
    assert answers == [{"temp_min": 20}] * 20
    assert len(gate.calls) == 1
    entry = runner.status()["get_control_targets"]
    assert entry == {"in_flight": False, "hung_since": None, "hangs": 0, "calls": 1,
                     "joined": 19, "timeouts": 0}


async def test_a_read_after_a_write_never_joins_a_call_started_before_it(
    gates: list[Gate]
) -> None:
    runner = CallbackRunner(5.0)
    stage = {"stage": "Incubation"}
    gate = _gate(gates)

    def get_stage() -> dict[str, str]:
        gate()
        return dict(stage)

    answers: list[object] = []

    async def read() -> None:
        answers.append(await runner.call("get_stage_data", get_stage))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await eventually(lambda: gate.calls)
        await runner.call("set_stage_state", stage.update, ({"stage": "Pinning"},))
        nursery.start_soon(read)  # arrives after the write was applied
        await trio.sleep(0.05)
        assert runner.status()["get_stage_data"]["joined"] == 0
        gate.release.set()
    # the first read may answer either value; the second must see the write
    assert answers[-1] == {"stage": "Pinning"}
    assert runner.status()["get_stage_data"]["calls"] == 2


async def test_a_getter_with_other_arguments_waits_for_its_turn(gates: list[Gate]) -> None:
    runner = CallbackRunner(5.0)
    seen: list[tuple[Any, ...]] = []

    def thresholds(species: str, stage: str) -> str:
        seen.append((species, stage))
        return species

    gate = _gate(gates)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.call, "get_stage_thresholds", gate, ("Oyster", "Pinning"))
        await eventually(lambda: gate.calls)
        # a different question of the same getter does not share the running answer
        nursery.start_soon(runner.call, "get_stage_thresholds", thresholds, ("Shiitake", "X"))
        await trio.sleep(0.05)
        assert seen == []  # not started while the first runs
        gate.release.set()
    assert seen == [("Shiitake", "X")]
    assert runner.status()["get_stage_thresholds"]["calls"] == 2


async def test_a_setter_never_piles_up_threads_behind_a_hung_call(gates: list[Gate]) -> None:
    runner = CallbackRunner(0.1)
    gate = _gate(gates)
    results: list[str] = []

    async def write(i: int) -> None:
        try:
            await runner.call("set_stage_state", gate, ({"n": i},))
            results.append("applied")
        except ControllerTimeout:
            results.append("timeout")

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(write, i)
    assert results == ["timeout"] * 10  # every caller answered at its own deadline
    assert len(gate.calls) == 1  # and only one thread ever ran the setter
    # once it returns, the next write runs at once
    gate.release.set()
    await eventually(lambda: not runner.status()["set_stage_state"]["in_flight"])
    assert await runner.call("set_stage_state", lambda value: value["n"], ({"n": 7},)) == 7


async def test_a_failure_is_every_joined_caller_s_failure(gates: list[Gate]) -> None:
    runner = CallbackRunner(5.0)
    gate = _gate(gates, RuntimeError("sensor bus"))
    failures: list[str] = []

    async def read() -> None:
        with pytest.raises(ControllerFailure) as info:
            await runner.call("get_sensor_data", gate)
        failures.append(str(info.value))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(read)
        await eventually(lambda: runner.status()["get_sensor_data"]["joined"] == 2)
        gate.release.set()
    assert failures == ["get_sensor_data raised RuntimeError: sensor bus"] * 3


async def test_a_hung_call_is_reported_once_and_recovers(
    gates: list[Gate], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mushpi_ble.controller")
    runner = CallbackRunner(0.05, clock=lambda: 1234.5)
    gate = _gate(gates, "late")
    for _ in range(3):  # three deadlines pass while the same call hangs
        with pytest.raises(ControllerTimeout):
            await runner.call("get_stage_data", gate)
    await eventually(lambda: runner.status()["get_stage_data"]["hung_since"] is not None)
    await trio.sleep(0.1)
    assert runner.status()["get_stage_data"] == {
        "in_flight": True, "hung_since": 1234.5, "hangs": 1, "calls": 1, "joined": 2,
        "timeouts": 3}
    gate.release.set()
    await eventually(lambda: not runner.status()["get_stage_data"]["in_flight"])
    assert runner.status()["get_stage_data"]["hung_since"] is None
    assert await runner.call("get_stage_data", lambda: "fresh") == "fresh"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("callback hung callback=get_stage_data" in m for m in messages) == 1
    assert sum("returned after hanging callback=get_stage_data" in m for m in messages) == 1
    # other callbacks were never affected
    assert all(entry["hangs"] == 0 for name, entry in runner.status().items()
               if name != "get_stage_data")


# -- the peripheral ---------------------------------------------------------------------------
@pytest.fixture
def facade(bus_address: str) -> Iterator[None]:
    ble_gatt._reset_for_tests()
    ble_gatt.configure(settings=make_settings(MUSHPI_BLE_HANDLER_TIMEOUT_MS="1000",
                                              MUSHPI_BLE_SHUTDOWN_TIMEOUT_MS="300"),
                       bus=bus_address)
    yield
    ble_gatt._reset_for_tests()


def _portal() -> BlePortal:
    backend = ble_gatt.get_service_instance()
    assert backend is not None
    portal = getattr(backend, "portal", None)
    assert isinstance(portal, BlePortal)
    return portal


def _metrics(portal: BlePortal) -> str:
    registry = CollectorRegistry()
    registry.register(StatusCollector(portal.get_status, lambda: {}))
    return generate_latest(registry).decode()


async def test_a_hundred_hung_reads_leave_every_other_callback_working(
    facade: None, bluez: FakeBluez, gates: list[Gate], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mushpi_ble")
    controller = SimulatedController(seed=1)
    hung = _gate(gates, dict(controller.control_targets))
    callbacks: dict[str, Callable[..., Any]] = {**controller.callbacks(),
                                                "get_control_targets": hung}
    ble_gatt.set_callbacks(**callbacks)
    try:
        assert await trio.to_thread.run_sync(ble_gatt.start_ble_service)
        portal = _portal()
        central = await bluez.connect_central()
        await central.subscribe(UUID["actuator_status"])
        await central.next_notification(UUID["actuator_status"])
        threads_before = threading.active_count()

        answers: list[bytes] = []

        async def read_targets() -> None:
            answers.append(await central.read(UUID["control_targets"]))

        async with trio.open_nursery() as nursery:
            for _ in range(HUNG_READS):
                nursery.start_soon(read_targets)
            # all hundred wait on the one hung call (a read arriving after a write
            # would wait for it instead of joining: see the runner tests)
            await eventually(lambda: portal.get_status()["callbacks"]["get_control_targets"]
                             ["joined"] == HUNG_READS - 1)
            # while they wait, every write reaches its setter
            await central.write(UUID["control_targets"],
                                targets_payload(180, 240, 850, 1200, 2, 600, 840))
            start = int(time.time()) - 86400
            await central.write(UUID["stage_state"], struct.pack("<BBBIHB", 1, 2, 3, start,
                                                                 10, 0))
            await central.write(UUID["override_bits"], OverrideBits(fan=True).pack())
            update = {"species": "Oyster", "stage": "Pinning", "temp_min": 14.0}
            await central.write(UUID["stage_thresholds"], json.dumps(update).encode())
        assert [name for name, _ in controller.writes] == [
            "control_targets", "stage_state", "override_bits", "stage_thresholds"]
        # every hung read was answered (the last good value) and shared one thread
        assert len(answers) == HUNG_READS and all(len(a) == 15 for a in answers)
        assert len(hung.calls) == 1
        assert threading.active_count() <= threads_before + 8

        # notify_actuator_status still notifies: the relays as get_control_data has them
        controller.relays["mist"] = True
        expected = ActuatorStatus.from_controller(controller.get_control_data()).pack()
        await trio.to_thread.run_sync(ble_gatt.notify_actuator_status)
        with trio.fail_after(3):
            while (await central.next_notification(UUID["actuator_status"])).value != expected:
                pass

        # the hung getter is reported ...
        await eventually(lambda: portal.get_status()["callbacks"]["get_control_targets"]
                         ["hung_since"] is not None)
        entry = portal.get_status()["callbacks"]["get_control_targets"]
        assert entry["in_flight"] and entry["hangs"] == 1 and entry["calls"] == 1
        assert entry["joined"] == HUNG_READS - 1
        assert not any(e["in_flight"] for name, e in portal.get_status()["callbacks"].items()
                       if name != "get_control_targets")
        metrics = _metrics(portal)
        assert 'mushpi_ble_callback_hung{callback="get_control_targets"} 1.0' in metrics
        assert 'mushpi_ble_callback_hung{callback="set_stage_state"} 0.0' in metrics
        assert 'mushpi_ble_callback_hangs_total{callback="get_control_targets"} 1.0' in metrics
        assert ('mushpi_ble_callback_joined_total{callback="get_control_targets"} '
                f'{float(HUNG_READS - 1)}') in metrics

        # ... and recovers on its own when the call returns
        hung.answer = controller.get_control_targets()
        hung.release.set()
        await eventually(lambda: not portal.get_status()["callbacks"]["get_control_targets"]
                         ["in_flight"])
        assert portal.get_status()["callbacks"]["get_control_targets"]["hung_since"] is None
        assert await central.read(UUID["control_targets"]) == targets_payload(
            180, 240, 850, 1200, 2, 600, 840)
        assert 'mushpi_ble_callback_hung{callback="get_control_targets"} 0.0' in _metrics(portal)
        messages = [r.getMessage() for r in caplog.records]
        assert sum("callback hung callback=get_control_targets" in m for m in messages) == 1
        assert sum("returned after hanging callback=get_control_targets" in m
                   for m in messages) == 1
    finally:
        for gate in gates:
            gate.release.set()
        await trio.to_thread.run_sync(ble_gatt.stop_ble_service)


async def test_publish_actuator_notifies_while_every_getter_but_its_own_hangs(
    bus_address: str, bluez: FakeBluez, gates: list[Gate]
) -> None:
    controller = SimulatedController(seed=1)
    portal = BlePortal(make_settings(MUSHPI_BLE_HANDLER_TIMEOUT_MS="200"), bus=bus_address)
    hung = {name: _gate(gates) for name in ("get_sensor_data", "get_control_targets",
                                            "get_stage_data", "get_stage_thresholds")}
    portal.set_callbacks({**controller.callbacks(), **hung})
    await trio.to_thread.run_sync(portal.start)
    try:
        central = await bluez.connect_central()
        await central.subscribe(UUID["actuator_status"])
        await central.next_notification(UUID["actuator_status"])
        async with trio.open_nursery() as nursery:
            for _ in range(HUNG_READS // 4):
                for name in ("control_targets", "stage_state", "stage_thresholds"):
                    nursery.start_soon(central.read, UUID[name])
        for _ in range(HUNG_READS // 4):
            portal.update_advertising_name()  # the name refresh asks get_stage_data too
        assert all(len(g.calls) <= 1 for g in hung.values())
        controller.relays["heater"] = True
        expected = ActuatorStatus.from_controller(controller.get_control_data()).pack()
        portal.publish_actuator()
        with trio.fail_after(3):
            while (await central.next_notification(UUID["actuator_status"])).value != expected:
                pass
        calls = portal.get_status()["callbacks"]
        assert calls["get_stage_data"]["in_flight"]
        assert calls["get_control_data"]["hangs"] == 0
    finally:
        for gate in gates:
            gate.release.set()
        await trio.to_thread.run_sync(portal.stop)


async def test_a_phone_that_leaves_while_its_read_waits_is_named(
    bus_address: str, bluez: FakeBluez, gates: list[Gate], caplog: pytest.LogCaptureFixture
) -> None:
    """bluetoothd (5.66 to 5.87) may crash about 5 s after a request whose phone left
    before we answered it (README, "Against the real bluetoothd"): such a departure is
    counted in the status and logged as a WARNING naming the phone; a phone that leaves
    with nothing open is neither."""
    portal, hung = await _started_with_hung_targets(bus_address, gates)
    try:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mushpi_ble"):
            quiet = await bluez.connect_central(address="11:22:33:44:55:01")
            await quiet.read(UUID["stage_state"])
            await quiet.disconnect()
            central = await bluez.connect_central(address="11:22:33:44:55:02")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_ignoring_the_end, central)
                await eventually(lambda: len(hung.calls) == 1)
                await central.disconnect()
                await eventually(lambda: portal.get_status()["left_waiting"]["phones"] == 1)
                hung.release.set()
        assert portal.get_status()["left_waiting"] == {"phones": 1, "requests": 1}
        warned = [r.getMessage() for r in caplog.records if "phone left before" in r.getMessage()]
        assert len(warned) == 1 and "dev_11_22_33_44_55_02" in warned[0], warned
        assert "requests=1" in warned[0]
        assert "mushpi_ble_phones_left_waiting_total 1.0" in _metrics(portal)
    finally:
        hung.release.set()
        await trio.to_thread.run_sync(portal.stop)


async def test_phones_counted_gone_because_bluetoothd_went_are_not_blamed(
    bus_address: str, bluez: FakeBluez, gates: list[Gate], caplog: pytest.LogCaptureFixture
) -> None:
    """bluetoothd restarting (or crashing) ends every link at once: a phone whose read
    was being answered then did not leave on its own, and is neither counted nor named
    (the log beside a bluetoothd crash must not blame a bystander)."""
    portal, hung = await _started_with_hung_targets(bus_address, gates)
    try:
        central = await bluez.connect_central(address="11:22:33:44:55:03")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_ignoring_the_end, central)
            await eventually(lambda: len(hung.calls) == 1)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="mushpi_ble"):
                await bluez.restart(graceful=False)
                await eventually(lambda: portal.get_status()["restarts"] >= 1, timeout=10)
            hung.release.set()
            nursery.cancel_scope.cancel()  # the old bluetoothd's read waits for no one
        assert portal.get_status()["left_waiting"] == {"phones": 0, "requests": 0}
        assert not [r for r in caplog.records if "phone left before" in r.getMessage()]
    finally:
        hung.release.set()
        await trio.to_thread.run_sync(portal.stop)


async def _started_with_hung_targets(
    bus_address: str, gates: list[Gate]
) -> tuple[BlePortal, Gate]:
    """A started portal whose controller holds every control-targets read at a gate."""
    controller = SimulatedController(seed=1)
    portal = BlePortal(make_settings(), bus=bus_address)
    hung = _gate(gates, controller.get_control_targets())
    portal.set_callbacks({**controller.callbacks(), "get_control_targets": hung})
    await trio.to_thread.run_sync(portal.start)
    return portal, hung


async def _read_ignoring_the_end(central: Any) -> None:
    """A read whose phone leaves before the answer: the fake's call may fail either way."""
    with contextlib.suppress(Exception):
        await central.read(UUID["control_targets"])
