"""The MushPi peripheral end to end: BlePortal (trio in its own thread) against
the fake bluetoothd on a private bus, driven by simulated centrals."""

from __future__ import annotations

import json
import struct
import threading
import time
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from rig import (
    NOW,
    PROTOCOL_FLAGS,
    Rig,
    eventually,
    make_settings,
    phone,
    start_rig,
    targets_payload,
)

from mushpi_ble.notify import Outcome
from mushpi_ble.portal import BlePortal
from mushpi_ble.protocol import (
    CHARACTERISTIC_UUIDS,
    ControlTargets,
    OverrideBits,
    unusable_readings,
)
from mushpi_ble.testing.controller import SimulatedController
from mushpi_ble.testing.fakebluez import AttError, FakeBluez

UUID = CHARACTERISTIC_UUIDS


async def test_registration_serves_the_protocol_table(rig: Rig) -> None:
    app = await rig.bluez.wait_for_application()
    central = await phone(rig)
    for name, flags in PROTOCOL_FLAGS.items():
        info = central.characteristic(UUID[name])
        assert info.flags == flags, name
        assert info.descriptors in ((), ("00002902-0000-1000-8000-00805f9b34fb",)), name
        assert info.service_uuid == "12345678-1234-5678-1234-56789abcdef0"
    assert app.sender == info.sender
    assert rig.portal.get_status()["registered"] is True


async def test_handler_deadline_answers_bluez_failed(rig: Rig) -> None:
    """Past the D-Bus layer's backstop deadline bluetoothd hears BlueZ's own Failed."""
    await rig.bluez.wait_for_application()
    conn = rig.portal.peripheral.host.conn
    assert conn is not None
    assert conn.timeout_error == ("org.bluez.Error.Failed", "timeout")


async def test_reads_give_exact_bytes_for_a_known_state(rig: Rig) -> None:
    central = await phone(rig)
    # zeros until the first publish, as the legacy server did
    assert await central.read(UUID["env_measurements"]) == bytes(12)
    # an actuator read asks the controller for the relays (all off here)
    assert await central.read(UUID["actuator_status"]) == bytes(6)
    assert rig.portal.publish_env(21.57, 88.04, 950, 600) is Outcome.QUEUED
    # the connect's own status packet may still be queued: the newest replaces it
    assert rig.portal.publish_status(0b101) in (Outcome.QUEUED, Outcome.COALESCED)
    rig.controller.relays["fan"] = True
    rig.controller.reasons["fan"] = 3
    with trio.fail_after(2):
        while (await central.read(UUID["env_measurements"])) == bytes(12):
            await trio.sleep(0.01)
    env = await central.read(UUID["env_measurements"])
    assert env[:8] == bytes.fromhex("b603 d700 7003 5802")
    assert struct.unpack_from("<I", env, 8)[0] < 60_000  # uptime in ms
    # controller bits 0 and 2, plus CONNECTIVITY (bit 4): a central is connected
    assert await central.read(UUID["status_flags"]) == bytes.fromhex("1500 0000")
    assert await central.read(UUID["actuator_status"]) == bytes.fromhex("0200 03 00 00 00")
    assert await central.read(UUID["control_targets"]) == bytes.fromhex(
        "c800 1801 bc02 8813 00 0000 0000 0000")
    assert await central.read(UUID["stage_state"]) == bytes.fromhex("00010180fc4f650e0000")
    answer = json.loads(await central.read_long(UUID["stage_thresholds"]))
    assert answer["species"] == "Oyster"
    assert answer["stage"] == "Incubation"
    assert answer["temp_min"] == 20.0
    assert answer["expected_days"] == 14


async def test_long_thresholds_read_by_offset_reassembles(rig: Rig) -> None:
    central = await phone(rig, mtu=64)
    query = {"species": "Lion's Mane", "stage": "Fruiting"}
    await central.write(UUID["stage_thresholds"], json.dumps(query).encode())
    raw = await central.read_long(UUID["stage_thresholds"])
    assert len(raw) > 3 * 63  # several Read Blob requests at MTU 64
    answer = json.loads(raw)
    assert answer["species"] == "Lion's Mane"
    assert answer["notes"].startswith("Lion's Mane likes fresh air")
    # an offset past the end is refused like bluetoothd expects
    with pytest.raises(AttError) as info:
        await central.read(UUID["stage_thresholds"], offset=len(raw) + 1)
    assert info.value.code == 0x07


def _stage(mode: int = 0, start: float = NOW - 10, days: int = 14) -> bytes:
    return struct.pack("<BBBIHB", mode, 2, 3, int(start), days, 0)


INVALID_WRITES = [
    ("control_targets", targets_payload(200, 280, 700, 5000, 0, 0, 0)[:-1], 0x0D),
    ("control_targets", targets_payload(200, 280, 700, 5000, 0, 0, 0) + b"\0", 0x0D),
    ("control_targets", targets_payload(280, 280, 700, 5000, 0, 0, 0), 0x82),
    ("control_targets", targets_payload(-101, 280, 700, 5000, 0, 0, 0), 0x81),
    ("control_targets", targets_payload(200, 280, 700, 300, 0, 0, 0), 0x81),
    ("control_targets", targets_payload(200, 280, 1001, 5000, 0, 0, 0), 0x81),
    ("control_targets", targets_payload(200, 280, 700, 5000, 3, 0, 0), 0x86),
    ("control_targets", targets_payload(200, 280, 700, 5000, 2, 1441, 0), 0x81),
    ("stage_state", _stage()[:-1], 0x0D),
    ("stage_state", _stage(mode=3), 0x86),
    ("stage_state", _stage(start=NOW + 60), 0x84),
    ("stage_state", _stage(start=NOW - 366 * 86400), 0x85),
    ("stage_state", _stage(days=366), 0x81),
    ("override_bits", b"\x01", 0x0D),
    ("override_bits", struct.pack("<H", 0x8000), 0x83),
    ("override_bits", struct.pack("<H", 0x0010), 0x83),
    ("stage_thresholds", b"\xff\xfe{}", 0x87),
    ("stage_thresholds", b"{not json", 0x87),
    ("stage_thresholds", b"[1, 2]", 0x88),
    ("stage_thresholds", b'{"species": "Oyster"}', 0x88),
    ("stage_thresholds", b'{"species": "Oyster", "stage": "Pinning", "temp_min": "x"}', 0x88),
]


@pytest.mark.parametrize(("name", "payload", "code"), INVALID_WRITES)
async def test_invalid_writes_are_refused_and_never_reach_the_controller(
    rig: Rig, name: str, payload: bytes, code: int
) -> None:
    central = await phone(rig)
    before = (dict(rig.controller.control_targets), dict(rig.controller.stage),
              dict(rig.controller.overrides), json.dumps(list(rig.controller.thresholds.items())))
    with pytest.raises(AttError) as info:
        await central.write(UUID[name], payload)
    assert info.value.code == code
    assert rig.controller.writes == []
    after = (dict(rig.controller.control_targets), dict(rig.controller.stage),
             dict(rig.controller.overrides), json.dumps(list(rig.controller.thresholds.items())))
    assert after == before
    rejected = [e for e in rig.portal.service.recent_writes if not e.accepted]
    assert rejected and rejected[-1].characteristic == name


async def test_ignore_mode_acknowledges_but_never_applies(bus_address: str,
                                                          bluez: FakeBluez) -> None:
    rig = await start_rig(bus_address, bluez, make_settings(MUSHPI_BLE_INVALID_WRITE="ignore"))
    try:
        central = await phone(rig)
        await central.write(UUID["control_targets"], targets_payload(280, 200, 700, 5000, 0, 0, 0))
        await central.write(UUID["override_bits"], struct.pack("<H", 0x8000))
        assert rig.controller.writes == []
        assert [e.accepted for e in rig.portal.service.recent_writes] == [False, False]
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_valid_writes_reach_the_controller_with_its_dict_shapes(rig: Rig) -> None:
    central = await phone(rig)
    await central.write(UUID["control_targets"], targets_payload(180, 240, 850, 1200, 2, 600, 840))
    assert rig.controller.control_targets == {
        "temp_min": 18.0, "temp_max": 24.0, "rh_min": 85.0, "co2_max": 1200,
        "light": {"mode": "cycle", "on_min": 600, "off_min": 840},
    }
    written = targets_payload(180, 240, 850, 1200, 2, 600, 840)
    assert await central.read(UUID["control_targets"]) == written
    await central.write(UUID["stage_state"], _stage(mode=1, start=NOW - 86400, days=10))
    assert rig.controller.stage == {"mode": 1, "species": "Shiitake", "stage": "Fruiting",
                                    "stage_start_ts": int(NOW - 86400), "expected_days": 10}
    await central.write(UUID["override_bits"], OverrideBits(light=True, disable_automation=True)
                        .pack())
    assert rig.controller.overrides == {
        "light_override": True, "fan_override": False, "mist_override": False,
        "heater_override": False, "disable_automation": True, "emergency_stop": False,
        "raw_bits": 0x81,
    }
    update = {"species": "Oyster", "stage": "Pinning", "temp_min": 14.5, "co2_max": 900}
    await central.write(UUID["stage_thresholds"], json.dumps(update).encode())
    assert rig.controller.thresholds[("Oyster", "Pinning")]["temp_min"] == 14.5
    answer = json.loads(await central.read_long(UUID["stage_thresholds"]))
    assert (answer["stage"], answer["co2_max"]) == ("Pinning", 900)


async def test_long_thresholds_write_in_pieces(rig: Rig) -> None:
    central = await phone(rig, mtu=40)
    update = {"species": "Oyster", "stage": "Fruiting", "temp_min": 16.0, "temp_max": 20.5,
              "rh_min": 86.0, "rh_max": 93.0, "co2_max": 950, "expected_days": 8,
              "light": {"mode": "cycle", "on_min": 720, "off_min": 720}}
    payload = json.dumps(update).encode()
    assert len(payload) > 3 * 35
    await central.write(UUID["stage_thresholds"], payload)
    stored = rig.controller.thresholds[("Oyster", "Fruiting")]
    assert (stored["temp_max"], stored["co2_max"], stored["expected_days"]) == (20.5, 950, 8)


@pytest.mark.parametrize("policy", ["drop_oldest", None])
async def test_subscribe_pushes_current_value_and_notifications_arrive_in_order(
    bus_address: str, bluez: FakeBluez, policy: str | None,
) -> None:
    """drop_oldest (an event stream) delivers every value of a burst in order; the
    table's own policy for env_measurements (a snapshot: the last value wins) delivers
    values in order too, never an older one after a newer, and always the newest."""
    env = {"MUSHPI_BLE_POLICY_ENV_MEASUREMENTS": policy} if policy else {}
    rig = await start_rig(bus_address, bluez, make_settings(**env))
    try:
        central = await phone(rig)
        rig.portal.publish_env(20.0, 80.0, 1000, 10)
        await trio.sleep(0.05)
        await central.subscribe(UUID["env_measurements"])
        first = await central.next_notification(UUID["env_measurements"])
        assert first.value[:4] == bytes.fromhex("e803 c800")  # pushed at once
        await central.subscribe(UUID["status_flags"])
        status = await central.next_notification(UUID["status_flags"])
        assert status.value == bytes.fromhex("1000 0000")
        outcomes = [rig.portal.publish_env(20.0, 80.0, co2, 10) for co2 in range(1001, 1051)]
        got: list[int] = []
        while not got or got[-1] != 1050:
            packet = await central.next_notification(UUID["env_measurements"])
            got.append(struct.unpack_from("<H", packet.value)[0])
        counters = rig.portal.get_status()["characteristics"]["env_measurements"]
        assert counters["offered"] == 51
        if policy == "drop_oldest":
            assert outcomes == [Outcome.QUEUED] * 50
            assert got == list(range(1001, 1051))
            assert counters["sent"] + counters["pending"] == 51
        else:
            assert counters["policy"] == "coalesce"
            assert set(outcomes) <= {Outcome.QUEUED, Outcome.COALESCED}
            assert got == sorted(set(got))  # in order, none twice
            assert counters["offered"] == counters["sent"] + counters["coalesced"] + counters[
                "pending"]
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_override_write_triggers_fresh_actuator_notification(rig: Rig) -> None:
    central = await phone(rig)
    await central.subscribe(UUID["actuator_status"])
    pushed = await central.next_notification(UUID["actuator_status"])
    assert pushed.value == bytes(6)
    await central.write(UUID["override_bits"], OverrideBits(mist=True).pack())
    packet = await central.next_notification(UUID["actuator_status"])
    assert packet.value == bytes.fromhex("0400 00 10 00 00")  # mist on, reason 0x10


@pytest.mark.parametrize(
    ("policy", "expect_dropped", "expect_coalesced"),
    [("drop_oldest", True, False), ("drop_newest", True, False), ("coalesce", False, True)],
)
async def test_policies_under_overload_keep_counters_consistent(
    bus_address: str, bluez: FakeBluez, policy: str, expect_dropped: bool,
    expect_coalesced: bool,
) -> None:
    settings = make_settings(MUSHPI_BLE_QUEUE_MAX_SIZE="8",
                             MUSHPI_BLE_POLICY_ENV_MEASUREMENTS=policy)
    rig = await start_rig(bus_address, bluez, settings)
    try:
        central = await phone(rig)
        await central.subscribe(UUID["env_measurements"])
        await central.next_notification(UUID["env_measurements"])
        bluez.stop_reading()

        def flood() -> list[Outcome]:
            return [rig.portal.publish_env(20.0, 80.0, n, 1) for n in range(5000)]

        outcomes = await trio.to_thread.run_sync(flood)
        status = rig.portal.get_status()["characteristics"]["env_measurements"]
        assert status["policy"] == policy
        assert status["offered"] == 5000
        assert (status["offered"] == status["sent"] + status["dropped"] + status["coalesced"]
                + status["pending"])
        assert (status["dropped"] > 0) == expect_dropped
        assert (status["coalesced"] > 0) == expect_coalesced
        assert status["queue_depth"] <= (1 if policy == "coalesce" else 8)
        if policy == "drop_newest":
            assert Outcome.DROPPED in outcomes
        bluez.resume_reading()
        # the newest value always survives drop_oldest and coalesce
        if policy != "drop_newest":
            with trio.fail_after(5):
                while True:
                    value = await central.read(UUID["env_measurements"])
                    if struct.unpack_from("<H", value)[0] == 4999:
                        break
                    await trio.sleep(0.02)
    finally:
        bluez.resume_reading()
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_hung_getter_delays_nothing_else(bus_address: str, bluez: FakeBluez) -> None:
    release = threading.Event()
    controller = SimulatedController(seed=1, now=lambda: NOW)
    original = controller.get_control_targets

    def hung_getter() -> dict[str, Any]:
        release.wait(10)  # a getter that hangs for 10 s
        return original()

    controller.get_control_targets = hung_getter  # type: ignore[method-assign]
    settings = make_settings(MUSHPI_BLE_HANDLER_TIMEOUT_MS="3000")
    rig = await start_rig(bus_address, bluez, settings, controller)
    try:
        slow_phone = await phone(rig, address="11:22:33:44:55:01")
        fast_phone = await phone(rig, address="11:22:33:44:55:02")
        await fast_phone.subscribe(UUID["env_measurements"])
        await fast_phone.next_notification(UUID["env_measurements"])
        results: dict[str, Any] = {}

        async def slow_read() -> None:
            results["targets"] = await slow_phone.read(UUID["control_targets"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_read)
            await trio.sleep(0.1)
            # while the getter hangs: other reads and notifications go through
            assert await fast_phone.read(UUID["stage_state"]) == bytes.fromhex(
                "00010180fc4f650e0000")
            rig.portal.publish_env(19.0, 90.0, 777, 5)
            packet = await fast_phone.next_notification(UUID["env_measurements"], timeout=1.0)
            assert struct.unpack_from("<H", packet.value)[0] == 777
            assert "targets" not in results
        # the hung read fell back to the last good value at its deadline
        assert results["targets"] == ControlTargets.DEFAULT.pack()
    finally:
        release.set()
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_stop_with_work_pending_is_bounded_and_unregisters(
    bus_address: str, bluez: FakeBluez
) -> None:
    settings = make_settings(MUSHPI_BLE_SHUTDOWN_TIMEOUT_MS="500")
    rig = await start_rig(bus_address, bluez, settings)
    central = await phone(rig)
    await central.subscribe(UUID["env_measurements"])
    await central.next_notification(UUID["env_measurements"])
    for n in range(200):
        rig.portal.publish_env(20.0, 80.0, n, 1)
    started = time.monotonic()
    await trio.to_thread.run_sync(rig.portal.stop)
    elapsed = time.monotonic() - started
    assert elapsed < settings.shutdown_timeout_s + 0.5  # the bound, plus thread join slack
    assert not rig.portal.is_running()
    with trio.fail_after(2):
        while bluez.applications():
            await trio.sleep(0.01)
    # idempotent, and publishing afterwards is a no-op
    await trio.to_thread.run_sync(rig.portal.stop)
    assert rig.portal.publish_env(1, 2, 3, 4) is Outcome.NOT_RUNNING


async def test_ten_thousand_publishes_while_bus_stalled_never_block(
    bus_address: str, bluez: FakeBluez
) -> None:
    settings = make_settings(MUSHPI_BLE_QUEUE_PUT_TIMEOUT_MS="250")
    rig = await start_rig(bus_address, bluez, settings)
    try:
        central = await phone(rig)
        await central.subscribe(UUID["env_measurements"])
        await central.next_notification(UUID["env_measurements"])
        bluez.stop_reading()

        def flood() -> tuple[list[Outcome], float]:
            worst = 0.0
            outcomes = []
            for n in range(10_000):
                started = time.perf_counter()
                outcomes.append(rig.portal.publish_env(20.0, 80.0, n % 60000, 1))
                worst = max(worst, time.perf_counter() - started)
            return outcomes, worst

        outcomes, worst = await trio.to_thread.run_sync(flood)
        assert worst < settings.queue_put_timeout_s
        assert set(outcomes) <= {Outcome.QUEUED, Outcome.DROPPED, Outcome.COALESCED}
        c = rig.portal.get_status()["characteristics"]["env_measurements"]
        assert c["offered"] == 10_000
        assert c["offered"] == c["sent"] + c["dropped"] + c["coalesced"] + c["pending"]
        assert c["coalesced"] > 0  # a snapshot: the newest value replaces the queued one
        assert c["queue_depth"] <= 1
    finally:
        bluez.resume_reading()
        await trio.to_thread.run_sync(rig.portal.stop)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(),
                          st.binary(), st.decimals(), st.fractions(),
                          st.dictionaries(st.text(), st.integers())), min_size=4, max_size=4))
def test_publishing_takes_any_value_without_raising(values: list[object]) -> None:
    """The portal has no catch-all of its own: its codecs are total."""
    portal = BlePortal(make_settings(), bus="unix:path=/nonexistent")
    refused = unusable_readings(*values)
    assert portal.publish_env(*values) is (Outcome.INVALID if refused else Outcome.NOT_RUNNING)
    assert portal.publish_status(values[0]) is Outcome.NOT_RUNNING
    data = values[3] if isinstance(values[3], dict) else {"fan": values[0]}
    assert portal.publish_actuator(data) is Outcome.NOT_RUNNING


async def test_getter_answers_serve_reads_for_the_cache_age(bus_address: str,
                                                           bluez: FakeBluez) -> None:
    """MUSHPI_BLE_READ_CACHE_MS: a phone polling a getter-backed value asks the controller
    once per cache age, and a write the controller took is seen by the next read."""
    calls: list[str] = []
    controller = SimulatedController(seed=1, now=lambda: NOW)

    def get_control_targets() -> dict[str, Any]:
        calls.append("get_control_targets")
        return controller.get_control_targets()

    rig = await start_rig(bus_address, bluez, make_settings(MUSHPI_BLE_READ_CACHE_MS="60000"),
                          controller)
    rig.portal.set_callbacks(get_control_targets=get_control_targets)
    try:
        central = await phone(rig)
        first = await central.read(UUID["control_targets"])
        for _ in range(5):
            assert await central.read(UUID["control_targets"]) == first
        assert calls == ["get_control_targets"]
        written = targets_payload(190, 260, 750, 4000, 0, 0, 0)
        await central.write(UUID["control_targets"], written)
        assert await central.read(UUID["control_targets"]) == written
        assert calls == ["get_control_targets", "get_control_targets"]
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_a_published_burst_reaches_the_phone_paced(bus_address: str,
                                                        bluez: FakeBluez) -> None:
    """MUSHPI_BLE_NOTIFY_INTERVAL_MS reaches the notifier: a burst of four arrives in
    order, spread over at least three intervals (a lower bound, so a slow machine
    cannot fail it; the slack is for the fake stamping on arrival)."""
    controller = SimulatedController(seed=1, now=lambda: NOW)
    # drop_oldest: every value of the burst matters here (the table's coalesce would send
    # the first and the newest)
    rig = await start_rig(bus_address, bluez, make_settings(
        MUSHPI_BLE_NOTIFY_INTERVAL_MS="200", MUSHPI_BLE_POLICY_ENV_MEASUREMENTS="drop_oldest"),
        controller)
    try:
        central = await phone(rig)
        await central.subscribe(UUID["env_measurements"])
        await central.next_notification(UUID["env_measurements"])  # the current value
        await trio.sleep(0.2)  # a quiet spell: the burst's first value is not held back
        for co2 in range(1001, 1005):
            assert rig.portal.publish_env(20.0, 80.0, co2, 10) is Outcome.QUEUED
        got = [await central.next_notification(UUID["env_measurements"], timeout=5.0)
               for _ in range(4)]
        assert [struct.unpack_from("<H", n.value)[0] for n in got] == [1001, 1002, 1003, 1004]
        assert got[-1].timestamp - got[0].timestamp >= 3 * 0.200 - 0.1
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_a_publish_that_is_no_number_reaches_no_phone(rig: Rig) -> None:
    """"hot" and NaN are refused where they are offered: the phone keeps the last good
    value instead of a plausible 0, and the refusal is counted."""
    central = await phone(rig)
    await central.subscribe(UUID["env_measurements"])
    assert rig.portal.publish_env(21.5, 80.0, 900, 10) is Outcome.QUEUED
    await eventually(lambda: len(central.notifications(UUID["env_measurements"])) >= 1)
    before = len(central.notifications(UUID["env_measurements"]))
    assert rig.portal.publish_env("hot", 80.0, 900, 10) is Outcome.INVALID
    assert rig.portal.publish_env(float("nan"), 80.0, 900, 10) is Outcome.INVALID
    counters = rig.portal.get_status()["characteristics"]["env_measurements"]
    assert counters["invalid"] == 2 and counters["offered"] == 1
    assert rig.portal.publish_env(22.0, 80.0, 901, 10) is Outcome.QUEUED
    await eventually(lambda: len(central.notifications(UUID["env_measurements"])) == before + 1)
    latest = central.notifications(UUID["env_measurements"])[-1].value
    assert latest[:2] == (901).to_bytes(2, "little")
