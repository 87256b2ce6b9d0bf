"""One behavioural suite, both backends, through the controller's facade.

``mushpi_ble.compat.ble_gatt`` is driven exactly as MushPi's controller
drives it, against the fake bluetoothd, once with ``bluez-dbus`` and once
with the legacy ``bluezero`` backend. Where the legacy design behaves
differently, the difference is written down in :data:`KNOWN_DIFFERENCES`
and asserted as such for each backend — never skipped.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio
from rig import PROTOCOL_FLAGS, eventually, make_settings, targets_payload

from mushpi_ble.backends.base import BLEBackend
from mushpi_ble.compat import ble_gatt
from mushpi_ble.dbus import DBusError, open_connection
from mushpi_ble.protocol import (
    CHARACTERISTIC_UUIDS,
    ControlTargets,
    OverrideBits,
    StageState,
)
from mushpi_ble.testing.controller import SimulatedController
from mushpi_ble.testing.fakebluez import AttError, FakeBluez, FakeCentral

UUID = CHARACTERISTIC_UUIDS
BACKENDS = ("bluez-dbus", "bluezero")

KNOWN_DIFFERENCES: dict[str, dict[str, bool]] = {
    # Not a difference, recorded because it was expected to be one: BlueZero turns an
    # exception raised by a write callback into the D-Bus error reply, so the legacy
    # backend refuses invalid writes with the same ATT codes.
    "invalid_write_refused": {"bluez-dbus": True, "bluezero": True},
    # Legacy: controller callbacks run on the one GLib thread, so a slow getter holds up
    # every other read (and notification) until it returns.
    "slow_getter_blocks_other_reads": {"bluez-dbus": False, "bluezero": True},
    # Legacy: no handler deadline; the write waits for the setter and is then acknowledged.
    "hung_setter_answered_at_deadline": {"bluez-dbus": True, "bluezero": False},
    # Not a difference either: BlueZero means to ignore StartNotify while notifying, but its
    # check (``Notifying is True``) never matches a dbus.Boolean, so every subscribe pushes.
    "push_on_every_subscribe": {"bluez-dbus": True, "bluezero": True},
    # Legacy: a publish made just before a subscription can be emitted (from the GLib
    # queue) after it, so the new subscriber may get the pushed value a second time.
    "may_repeat_value_pushed_on_subscribe": {"bluez-dbus": False, "bluezero": True},
    # Legacy registers once; after a bluetoothd restart the service is gone until restarted.
    "re_registers_after_bluetoothd_restart": {"bluez-dbus": True, "bluezero": False},
    # Legacy objects answer any caller on the bus, not only the owner of org.bluez.
    "refuses_callers_other_than_bluetoothd": {"bluez-dbus": True, "bluezero": False},
}


@attrs.define
class Served:
    """A facade started on one backend, with its simulated controller and bluetoothd."""

    backend: str
    controller: SimulatedController
    bluez: FakeBluez

    def instance(self) -> BLEBackend:
        instance = ble_gatt.get_service_instance()
        assert instance is not None
        return instance

    async def phone(self, mtu: int = 512, address: str = "11:22:33:44:55:66") -> FakeCentral:
        central = await self.bluez.connect_central(address=address, mtu=mtu)
        count = len(self.bluez.adapter("hci0").centrals)
        await eventually(lambda: ble_gatt.get_connection_count() == count)
        return central


async def serve(bus_address: str, bluez: FakeBluez, backend: str,
                controller: SimulatedController | None = None, **env: str) -> Served:
    """Start the facade on ``backend``; a silent fallback to the other one fails here."""
    await trio.to_thread.run_sync(ble_gatt._reset_for_tests)
    ble_gatt.configure(settings=make_settings(MUSHPI_BLE_BACKEND=backend, **env),
                       bus=bus_address)
    controller = controller or SimulatedController(seed=1)
    ble_gatt.set_callbacks(**controller.callbacks())
    assert await trio.to_thread.run_sync(ble_gatt.start_ble_service)
    served = Served(backend, controller, bluez)
    assert served.instance().name == backend
    await bluez.wait_for_application()
    return served


@pytest.fixture(params=BACKENDS)
async def served(request: pytest.FixtureRequest, bus_address: str,
                 bluez: FakeBluez) -> AsyncIterator[Served]:
    running = await serve(bus_address, bluez, request.param)
    try:
        yield running
    finally:
        await trio.to_thread.run_sync(ble_gatt._reset_for_tests)


@pytest.fixture
async def stopped(bluez: FakeBluez) -> AsyncIterator[None]:
    """Stop what a test started with its own settings (before the fake bluetoothd goes)."""
    yield
    await trio.to_thread.run_sync(ble_gatt._reset_for_tests)


async def read_until(central: FakeCentral, name: str, done: Callable[[bytes], bool]) -> bytes:
    with trio.fail_after(3):
        while not done(value := await central.read(UUID[name])):
            await trio.sleep(0.01)
    return value


def _stage(mode: int = 0, age: float = 10, days: int = 14, species: int = 2,
           stage: int = 3) -> bytes:
    return struct.pack("<BBBIHB", mode, species, stage, int(time.time() - age), days, 0)


def invalid_writes() -> list[tuple[str, bytes, int]]:
    return [
        ("control_targets", targets_payload(200, 280, 700, 5000, 0, 0, 0)[:-1], 0x0D),
        ("control_targets", targets_payload(200, 280, 700, 5000, 0, 0, 0) + b"\0", 0x0D),
        ("control_targets", targets_payload(280, 280, 700, 5000, 0, 0, 0), 0x82),
        ("control_targets", targets_payload(-101, 280, 700, 5000, 0, 0, 0), 0x81),
        ("control_targets", targets_payload(200, 280, 700, 300, 0, 0, 0), 0x81),
        ("control_targets", targets_payload(200, 280, 700, 5000, 3, 0, 0), 0x86),
        ("stage_state", _stage()[:-1], 0x0D),
        ("stage_state", _stage(mode=3), 0x86),
        ("stage_state", _stage(age=-3600), 0x84),
        ("stage_state", _stage(age=366 * 86400), 0x85),
        ("stage_state", _stage(days=366), 0x81),
        ("override_bits", b"\x01", 0x0D),
        ("override_bits", struct.pack("<H", 0x8000), 0x83),
        ("stage_thresholds", b"\xff\xfe{}", 0x87),
        ("stage_thresholds", b"{not json", 0x87),
        ("stage_thresholds", b"[1, 2]", 0x88),
        ("stage_thresholds", b'{"species": "Oyster"}', 0x88),
    ]


# -- the behavioural suite -----------------------------------------------------------------
async def test_registration_serves_the_protocol_table(served: Served) -> None:
    central = await served.phone()
    for name, flags in PROTOCOL_FLAGS.items():
        info = central.characteristic(UUID[name])
        assert info.flags == flags, name
        assert info.service_uuid == "12345678-1234-5678-1234-56789abcdef0"
    status = served.instance().get_status()
    assert status["registered"] is True
    assert status["backend"] == served.backend
    assert ble_gatt.is_service_running()
    # the alias is a session step of its own, applied right after the application
    await eventually(lambda: served.bluez.adapter("hci0").alias == "MushPi-OysterIncubation")


async def test_reads_give_exact_bytes_for_a_known_state(served: Served) -> None:
    central = await served.phone()
    assert await central.read(UUID["env_measurements"]) == bytes(12)
    assert await central.read(UUID["actuator_status"]) == bytes(6)
    served.controller.relays["fan"] = True
    served.controller.reasons["fan"] = 3
    ble_gatt.notify_env_packet(21.57, 88.04, 950, 600)
    ble_gatt.update_status_flags(0b101)
    ble_gatt.notify_actuator_status()  # re-reads relay state through get_control_data
    assert await read_until(central, "actuator_status", lambda v: v != bytes(6)) == \
        bytes.fromhex("0200 03 00 00 00")
    env = await read_until(central, "env_measurements", lambda v: v != bytes(12))
    assert env[:8] == bytes.fromhex("b603 d700 7003 5802")
    assert struct.unpack_from("<I", env, 8)[0] < 60_000
    # controller bits 0 and 2, plus CONNECTIVITY (bit 4) owned by the BLE layer
    await read_until(central, "status_flags", lambda v: v == bytes.fromhex("1500 0000"))
    assert await central.read(UUID["control_targets"]) == bytes.fromhex(
        "c800 1801 bc02 8813 00 0000 0000 0000")
    assert await central.read(UUID["stage_state"]) == StageState.from_controller(
        served.controller.get_stage_data()).pack()
    answer = json.loads(await central.read_long(UUID["stage_thresholds"]))
    assert (answer["species"], answer["stage"], answer["temp_min"]) == (
        "Oyster", "Incubation", 20.0)


async def test_long_thresholds_read_by_offset(served: Served) -> None:
    central = await served.phone(mtu=64)
    query = {"species": "Lion's Mane", "stage": "Fruiting"}
    await central.write(UUID["stage_thresholds"], json.dumps(query).encode())
    raw = await central.read_long(UUID["stage_thresholds"])
    assert len(raw) > 3 * 63
    assert json.loads(raw)["notes"].startswith("Lion's Mane likes fresh air")
    with pytest.raises(AttError) as info:
        await central.read(UUID["stage_thresholds"], offset=len(raw) + 1)
    assert info.value.code == 0x07


async def test_invalid_writes_are_refused_and_never_reach_the_controller(
    served: Served,
) -> None:
    central = await served.phone()
    for name, payload, code in invalid_writes():
        with pytest.raises(AttError) as info:
            await central.write(UUID[name], payload)
        assert info.value.code == code, (name, payload.hex())
    assert served.controller.writes == []
    assert KNOWN_DIFFERENCES["invalid_write_refused"][served.backend] is True


@pytest.mark.parametrize("backend", BACKENDS)
async def test_ignore_mode_acknowledges_but_never_applies(
    bus_address: str, bluez: FakeBluez, stopped: None, backend: str
) -> None:
    running = await serve(bus_address, bluez, backend, MUSHPI_BLE_INVALID_WRITE="ignore")
    central = await running.phone()
    await central.write(UUID["control_targets"], targets_payload(280, 200, 700, 5000, 0, 0, 0))
    await central.write(UUID["override_bits"], struct.pack("<H", 0x8000))
    assert running.controller.writes == []


async def test_valid_writes_reach_the_controller_with_its_dict_shapes(served: Served) -> None:
    central = await served.phone()
    controller = served.controller
    await central.write(UUID["control_targets"], targets_payload(180, 240, 850, 1200, 2, 600, 840))
    assert controller.control_targets == {
        "temp_min": 18.0, "temp_max": 24.0, "rh_min": 85.0, "co2_max": 1200,
        "light": {"mode": "cycle", "on_min": 600, "off_min": 840},
    }
    written = targets_payload(180, 240, 850, 1200, 2, 600, 840)
    assert await central.read(UUID["control_targets"]) == written
    start = int(time.time()) - 86400
    await central.write(UUID["stage_state"], struct.pack("<BBBIHB", 1, 2, 3, start, 10, 0))
    assert controller.stage == {"mode": 1, "species": "Shiitake", "stage": "Fruiting",
                                "stage_start_ts": start, "expected_days": 10}
    await central.write(UUID["override_bits"],
                        OverrideBits(light=True, disable_automation=True).pack())
    assert controller.overrides["raw_bits"] == 0x81
    assert controller.overrides["light_override"] is True
    update = {"species": "Oyster", "stage": "Pinning", "temp_min": 14.5, "co2_max": 900}
    await central.write(UUID["stage_thresholds"], json.dumps(update).encode())
    assert controller.thresholds[("Oyster", "Pinning")]["temp_min"] == 14.5
    answer = json.loads(await central.read_long(UUID["stage_thresholds"]))
    assert (answer["stage"], answer["co2_max"]) == ("Pinning", 900)


async def test_subscribe_pushes_current_value_and_notifications_arrive_in_order(
    served: Served,
) -> None:
    central = await served.phone()
    ble_gatt.notify_env_packet(20.0, 80.0, 1000, 10)
    await read_until(central, "env_measurements", lambda v: v[:2] == bytes.fromhex("e803"))
    await central.subscribe(UUID["env_measurements"])
    first = await central.next_notification(UUID["env_measurements"])
    assert first.value[:4] == bytes.fromhex("e803 c800")
    await central.subscribe(UUID["status_flags"])
    status = await central.next_notification(UUID["status_flags"])
    assert status.value == bytes.fromhex("1000 0000")
    for co2 in range(1001, 1051):
        ble_gatt.notify_env_packet(20.0, 80.0, co2, 10)
    got: list[int] = []
    repeats = 0
    while not got or got[-1] != 1050:
        packet = await central.next_notification(UUID["env_measurements"])
        co2 = struct.unpack_from("<H", packet.value)[0]
        if co2 == 1000 and not got:
            repeats += 1
            continue
        got.append(co2)
    # env_measurements is a snapshot (the table's policy: the last value wins): a burst
    # may be thinned, never reordered, and its newest value always arrives
    assert got == sorted(set(got)) and set(got) <= set(range(1001, 1051))
    if not KNOWN_DIFFERENCES["may_repeat_value_pushed_on_subscribe"][served.backend]:
        assert repeats == 0
    counters = served.instance().get_status()["characteristics"]["env_measurements"]
    assert counters["offered"] == 51
    assert counters["offered"] == (counters["sent"] + counters["dropped"]
                                   + counters["coalesced"] + counters["pending"])


async def test_override_write_triggers_fresh_actuator_notification(served: Served) -> None:
    central = await served.phone()
    await central.subscribe(UUID["actuator_status"])
    assert (await central.next_notification(UUID["actuator_status"])).value == bytes(6)
    await central.write(UUID["override_bits"], OverrideBits(mist=True).pack())
    packet = await central.next_notification(UUID["actuator_status"])
    assert packet.value == bytes.fromhex("0400 00 10 00 00")  # mist on, reason 0x10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stalled", [False, True], ids=["live", "stalled-bluetoothd"])
async def test_stop_is_bounded_and_unregisters(
    bus_address: str, bluez: FakeBluez, stopped: None, backend: str, stalled: bool
) -> None:
    running = await serve(bus_address, bluez, backend, MUSHPI_BLE_SHUTDOWN_TIMEOUT_MS="500")
    central = await running.phone()
    await central.subscribe(UUID["env_measurements"])
    await central.next_notification(UUID["env_measurements"])
    for n in range(200):
        ble_gatt.notify_env_packet(20.0, 80.0, n, 1)
    if stalled:
        bluez.stop_reading()
    started = time.monotonic()
    try:
        await trio.to_thread.run_sync(ble_gatt.stop_ble_service)
        elapsed = time.monotonic() - started
    finally:
        bluez.resume_reading()
    assert elapsed < 0.5 + 0.5  # the bound, plus thread-join slack
    assert not ble_gatt.is_service_running()
    assert ble_gatt.get_service_instance() is None
    ble_gatt.notify_env_packet(1, 2, 3, 4)  # a no-op now, and no exception
    await trio.to_thread.run_sync(ble_gatt.stop_ble_service)  # idempotent
    await bluez.wait_until(lambda: not bluez.applications(), timeout=3)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_driven_like_the_controller_main_loop(
    bus_address: str, bluez: FakeBluez, stopped: None, backend: str
) -> None:
    """set_callbacks by keyword, start, a monitor loop of env packets, an override whose
    callback calls notify_actuator_status() from inside, a renamed stage, stop."""
    await trio.to_thread.run_sync(ble_gatt._reset_for_tests)
    ble_gatt.configure(settings=make_settings(MUSHPI_BLE_BACKEND=backend), bus=bus_address)
    controller = SimulatedController(seed=7)
    inside: list[str] = []

    def apply_overrides(overrides: dict[str, Any]) -> None:
        controller.apply_overrides(overrides)
        ble_gatt.notify_actuator_status()  # re-entrant calls from inside a callback
        assert ble_gatt.is_service_running() and ble_gatt.get_connection_count() == 1
        assert ble_gatt.get_service_instance() is not None
        ble_gatt.update_status_flags(0b100)
        ble_gatt.update_advertising_name()
        inside.append(threading.current_thread().name)

    ble_gatt.set_callbacks(
        get_sensor_data=controller.get_sensor_data,
        get_control_data=controller.get_control_data,
        get_control_targets=controller.get_control_targets,
        get_stage_data=controller.get_stage_data,
        set_control_targets=controller.set_control_targets,
        set_stage_state=controller.set_stage_state,
        apply_overrides=apply_overrides,
        get_stage_thresholds=controller.get_stage_thresholds,
        set_stage_thresholds=controller.set_stage_thresholds,
    )
    assert ble_gatt.initialize_ble_service()
    assert await trio.to_thread.run_sync(ble_gatt.start_ble_service)
    assert ble_gatt.is_service_running()
    assert await trio.to_thread.run_sync(ble_gatt.start_ble_service)  # already running
    central = await bluez.connect_central(mtu=512)
    await eventually(lambda: ble_gatt.get_connection_count() == 1)
    await central.subscribe(UUID["env_measurements"])
    await central.subscribe(UUID["actuator_status"])
    await central.next_notification(UUID["env_measurements"])
    await central.next_notification(UUID["actuator_status"])

    for _tick in range(10):  # the controller's monitor loop, sped up
        reading = controller.sensor_reading()
        ble_gatt.notify_env_packet(reading["temperature"], reading["humidity"],
                                   reading["co2"], reading["light"])
        ble_gatt.update_status_flags(0)
        packet = await central.next_notification(UUID["env_measurements"])
        assert struct.unpack_from("<H", packet.value)[0] == reading["co2"]

    with trio.fail_after(3):  # no deadlock: the write is answered
        await central.write(UUID["override_bits"], OverrideBits(fan=True).pack())
    assert inside and inside[0] != threading.current_thread().name
    packet = await central.next_notification(UUID["actuator_status"])
    assert packet.value[:2] == struct.pack("<H", 0b0010)  # fan on

    start = int(time.time()) - 3600
    await central.write(UUID["stage_state"], struct.pack("<BBBIHB", 0, 2, 3, start, 7, 0))
    await trio.to_thread.run_sync(ble_gatt.update_advertising_name)
    await bluez.wait_until(lambda: bluez.adapter("hci0").alias == "MushPi-ShiitakeFruiting")

    assert ble_gatt.get_connection_count() == 1
    await central.disconnect()
    await eventually(lambda: ble_gatt.get_connection_count() == 0)
    await trio.to_thread.run_sync(ble_gatt.stop_ble_service)
    assert not ble_gatt.is_service_running()
    assert ble_gatt.get_connection_count() == 0


# -- known differences, asserted per backend ---------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
async def test_known_difference_slow_getter(bus_address: str, bluez: FakeBluez,
                                            stopped: None, backend: str) -> None:
    controller = SimulatedController(seed=1)
    original = controller.get_control_targets

    def slow_targets() -> dict[str, Any]:
        time.sleep(0.6)
        return original()

    controller.get_control_targets = slow_targets  # type: ignore[method-assign]
    running = await serve(bus_address, bluez, backend, controller)
    slow = await running.phone(address="11:22:33:44:55:01")
    fast = await running.phone(address="11:22:33:44:55:02")
    elapsed = 0.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow.read, UUID["control_targets"])
        await trio.sleep(0.1)
        started = time.monotonic()
        await fast.read(UUID["stage_state"])
        elapsed = time.monotonic() - started
    observed = elapsed > 0.3
    assert observed is KNOWN_DIFFERENCES["slow_getter_blocks_other_reads"][backend], elapsed


@pytest.mark.parametrize("backend", BACKENDS)
async def test_known_difference_handler_deadline(bus_address: str, bluez: FakeBluez,
                                                 stopped: None, backend: str) -> None:
    controller = SimulatedController(seed=1)
    original = controller.set_control_targets

    def hung_setter(targets: dict[str, Any]) -> None:
        time.sleep(0.8)
        original(targets)

    controller.set_control_targets = hung_setter  # type: ignore[method-assign]
    running = await serve(bus_address, bluez, backend, controller,
                          MUSHPI_BLE_HANDLER_TIMEOUT_MS="200")
    central = await running.phone()
    try:
        await central.write(UUID["control_targets"], ControlTargets.DEFAULT.pack())
        observed = False
    except AttError as exc:
        assert exc.code == 0x8B  # the controller did not answer within the deadline
        observed = True
    assert observed is KNOWN_DIFFERENCES["hung_setter_answered_at_deadline"][backend]


async def test_known_difference_push_on_every_subscribe(served: Served) -> None:
    first = await served.phone(address="11:22:33:44:55:01")
    second = await served.phone(address="11:22:33:44:55:02")
    await first.subscribe(UUID["env_measurements"])
    await first.next_notification(UUID["env_measurements"])
    await second.subscribe(UUID["env_measurements"])
    try:
        await second.next_notification(UUID["env_measurements"], timeout=0.5)
        observed = True
    except trio.TooSlowError:
        observed = False
    assert observed is KNOWN_DIFFERENCES["push_on_every_subscribe"][served.backend]


async def test_known_difference_bluetoothd_restart(served: Served) -> None:
    await served.bluez.restart()
    try:
        await served.bluez.wait_for_application(timeout=2.0)
        observed = True
    except trio.TooSlowError:
        observed = False
    assert observed is KNOWN_DIFFERENCES["re_registers_after_bluetoothd_restart"][
        served.backend]


async def test_known_difference_foreign_callers(served: Served, bus_address: str) -> None:
    app = await served.bluez.wait_for_application()
    central = await served.phone()
    path = central.characteristic(UUID["control_targets"]).path
    valid = ControlTargets(180, 240, 850, 1200, 0, 0, 0).pack()
    async with open_connection(bus_address) as intruder:
        try:
            await intruder.call(app.sender, path, "org.bluez.GattCharacteristic1",
                                "WriteValue", "aya{sv}", (valid, {}))
            refused = False
        except DBusError as exc:
            assert exc.name == "org.freedesktop.DBus.Error.AccessDenied"
            refused = True
    assert refused is KNOWN_DIFFERENCES["refuses_callers_other_than_bluetoothd"][
        served.backend]
    assert (served.controller.writes == []) is refused
