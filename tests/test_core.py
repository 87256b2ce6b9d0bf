"""The MushPi core's rules, decision by decision, without a bus, a loop or a thread."""

from __future__ import annotations

import json
import struct

import pytest

from mushpi_ble.core import (
    MAX_REMEMBERED,
    READ_SNAPSHOT_TTL_S,
    RECENT_WRITES,
    Ack,
    Answer,
    CallSetter,
    Failure,
    MushPiCore,
    NeedGetter,
    Push,
    Refresh,
    Reject,
)
from mushpi_ble.protocol import AppError, ControlTargets, StageState

NOW = 1_700_000_000.0
TARGETS = {"temp_min": 20.0, "temp_max": 24.0, "rh_min": 85.0, "co2_max": 1000,
           "light": {"mode": "CYCLE", "on_minutes": 960, "off_minutes": 480}}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make_core(**kwargs: object) -> tuple[MushPiCore, Clock]:
    clock = Clock()
    core = MushPiCore(wall_clock=lambda: NOW, monotonic=clock, **kwargs)  # type: ignore[arg-type]
    return core, clock


def targets_payload(t_min: int = 200, t_max: int = 240) -> bytes:
    return struct.pack("<hhHHBHHH", t_min, t_max, 850, 1000, 2, 960, 480, 0)


# -- the table as the core serves it ---------------------------------------------------------
def test_the_core_serves_the_seven_characteristics_in_table_order() -> None:
    core, _ = make_core()
    assert [row.name for row in core.characteristics] == [
        "env_measurements", "control_targets", "stage_state", "override_bits",
        "status_flags", "stage_thresholds", "actuator_status"]
    assert core.notifying == ("env_measurements", "status_flags", "actuator_status")


def test_actuator_status_can_be_left_out() -> None:
    core, _ = make_core(actuator_enabled=False)
    assert "actuator_status" not in [row.name for row in core.characteristics]
    assert core.notifying == ("env_measurements", "status_flags")


# -- reads -------------------------------------------------------------------------------
def test_published_reads_answer_zeros_until_the_first_publish() -> None:
    core, _ = make_core()
    assert core.read("env_measurements") == Answer(bytes(12))
    core.set_published("env_measurements", b"\x01" * 12)
    assert core.read("env_measurements") == Answer(b"\x01" * 12)


def test_a_status_read_counts_its_own_reader_as_connected() -> None:
    core, _ = make_core()
    core.set_status_flags(0b101)
    assert core.read("status_flags") == Answer(bytes.fromhex("05000000"))
    assert core.read("status_flags", "/org/bluez/hci0/dev_1") == Answer(bytes.fromhex("15000000"))
    assert core.set_connected(True) == bytes.fromhex("15000000")
    assert core.set_connected(True) is None  # unchanged: nothing to publish
    assert core.read("status_flags") == Answer(bytes.fromhex("15000000"))


def test_the_controller_cannot_set_the_connectivity_bit() -> None:
    core, _ = make_core()
    core.set_status_flags(0x1F)
    assert core.status_packet() == struct.pack("<I", 0x0F)


def test_a_getter_read_asks_the_controller_and_encodes_its_answer() -> None:
    core, _ = make_core()
    need = core.read("control_targets", "/dev_1")
    assert need == NeedGetter("control_targets", "get_control_targets", (), "/dev_1",
                              "control_targets")
    assert isinstance(need, NeedGetter)
    answer = core.read_done(need, TARGETS)
    assert answer == Answer(ControlTargets.from_controller(TARGETS).pack())


@pytest.mark.parametrize("failure", [Failure.FAILED, Failure.TIMEOUT, Failure.MISSING])
def test_a_failed_getter_read_answers_the_last_good_value(failure: Failure) -> None:
    core, _ = make_core()
    need = core.read("control_targets")
    assert isinstance(need, NeedGetter)
    # nothing good yet: the protocol's defaults
    assert core.read_done(need, failure=failure) == Answer(ControlTargets.DEFAULT.pack())
    good = core.read_done(need, TARGETS)
    assert core.read_done(need, failure=failure) == good


def test_an_unusable_getter_answer_is_a_failed_read() -> None:
    core, _ = make_core()
    need = core.read("stage_state")
    assert isinstance(need, NeedGetter)
    assert core.read_done(need, {"species": object()}).value == StageState.from_controller(
        None).pack()


def test_an_actuator_read_rereads_the_relays_and_falls_back_to_the_published_value() -> None:
    core, _ = make_core()
    need = core.read("actuator_status")
    assert isinstance(need, NeedGetter) and need.callback == "get_control_data"
    assert core.read_done(need, {"fan": True, "fan_reason": 3}) == Answer(
        bytes.fromhex("0200 03 00 00 00"))
    core.set_published("actuator_status", bytes.fromhex("0100 00 00 00 00"))
    assert core.read_done(need, failure=Failure.TIMEOUT) == Answer(
        bytes.fromhex("0100 00 00 00 00"))
    # a read never publishes: the notification path keeps its own value
    assert core.published("actuator_status") == bytes.fromhex("0100 00 00 00 00")


def test_a_long_read_continues_its_own_snapshot_until_it_expires() -> None:
    core, clock = make_core()
    first = core.read("control_targets", "/dev_1")
    assert isinstance(first, NeedGetter)
    snapshot = core.read_done(first, TARGETS).value
    # the controller's value changes, but offset reads of the same device continue
    assert core.read("control_targets", "/dev_1", offset=8) == Answer(snapshot)
    # another phone's long read has no snapshot: it asks the controller
    assert isinstance(core.read("control_targets", "/dev_2", offset=8), NeedGetter)
    clock.t += READ_SNAPSHOT_TTL_S + 0.1
    assert isinstance(core.read("control_targets", "/dev_1", offset=8), NeedGetter)


def test_a_getter_answer_serves_reads_for_the_cache_age_only() -> None:
    core, clock = make_core(read_cache_s=0.5)
    need = core.read("control_targets", "/dev_1")
    assert isinstance(need, NeedGetter)
    value = core.read_done(need, TARGETS).value
    clock.t += 0.4
    assert core.read("control_targets", "/dev_2") == Answer(value)  # any phone
    assert core.cache_hits == 1
    # a long read that began on a cached answer continues that answer
    assert core.read("control_targets", "/dev_2", offset=8) == Answer(value)
    clock.t += 0.2
    assert isinstance(core.read("control_targets", "/dev_1"), NeedGetter)


def test_any_write_the_controller_took_ends_the_cache() -> None:
    core, _ = make_core(read_cache_s=60.0)
    for name, getter_answer in (("control_targets", TARGETS),):
        need = core.read(name)
        assert isinstance(need, NeedGetter)
        core.read_done(need, getter_answer)
        assert isinstance(core.read(name), Answer)
    call = core.write("stage_state", struct.pack("<BBBIHB", 0, 2, 3, int(NOW - 10), 14, 0))
    assert isinstance(call, CallSetter)
    # while the setter runs, the cached answer still serves (the write is not done)
    assert isinstance(core.read("control_targets"), Answer)
    core.write_done(call, None, Failure.TIMEOUT)  # even a failed setter may have changed it
    assert isinstance(core.read("control_targets"), NeedGetter)


def test_failures_are_not_cached_and_the_cache_is_off_by_default() -> None:
    core, _ = make_core(read_cache_s=60.0)
    need = core.read("stage_state")
    assert isinstance(need, NeedGetter)
    core.read_done(need, None, Failure.TIMEOUT)
    assert isinstance(core.read("stage_state"), NeedGetter)
    plain, _ = make_core()
    need = plain.read("stage_state")
    assert isinstance(need, NeedGetter)
    plain.read_done(need, {"species": "Oyster", "stage": "Pinning", "mode": 0,
                           "stage_start_ts": int(NOW - 10), "expected_days": 14})
    assert isinstance(plain.read("stage_state"), NeedGetter)
    assert plain.cache_hits == 0


def test_thresholds_reads_follow_the_cursor() -> None:
    core, _ = make_core()
    need = core.read("stage_thresholds")
    assert isinstance(need, NeedGetter)
    assert need.args == ("Oyster", "Incubation")
    answer = json.loads(core.read_done(need, {"temp_min": 20.0}).value)
    assert answer == {"species": "Oyster", "stage": "Incubation", "temp_min": 20.0}
    query = json.dumps({"species": "Shiitake", "stage": "Fruiting"}).encode()
    assert core.write("stage_thresholds", query) == Ack()
    need = core.read("stage_thresholds")
    assert isinstance(need, NeedGetter) and need.args == ("Shiitake", "Fruiting")
    assert need.key == "stage_thresholds:Shiitake:Fruiting"


def test_thresholds_without_a_getter_say_not_found_and_a_failure_says_so() -> None:
    core, _ = make_core()
    need = core.read("stage_thresholds")
    assert isinstance(need, NeedGetter)
    assert json.loads(core.read_done(need, failure=Failure.MISSING).value) == {
        "error": "Stage not found", "species": "Oyster", "stage": "Incubation"}
    assert json.loads(core.read_done(need, failure=Failure.TIMEOUT).value) == {
        "error": "controller did not answer", "species": "Oyster", "stage": "Incubation"}


def test_caches_keyed_by_what_phones_send_stay_bounded() -> None:
    core, _ = make_core()
    for n in range(MAX_REMEMBERED + 30):
        core.write("stage_thresholds",
                   json.dumps({"species": "Oyster", "stage": "Pinning"}).encode())
        need = core.read("stage_thresholds", f"/dev_{n}")
        assert isinstance(need, NeedGetter)
        core.read_done(need, {"temp_min": float(n % 30)})
        need = core.read("control_targets", f"/dev_{n}")
        assert isinstance(need, NeedGetter)
        core.read_done(need, TARGETS)
    assert len(core._snapshots) <= MAX_REMEMBERED
    assert len(core._last_good) <= MAX_REMEMBERED


# -- writes --------------------------------------------------------------------------------
def test_a_valid_write_asks_for_the_setter_and_is_remembered_once_applied() -> None:
    core, _ = make_core()
    call = core.write("control_targets", targets_payload(), "/dev_1")
    assert isinstance(call, CallSetter)
    assert call.callback == "set_control_targets"
    assert call.args == (dict(ControlTargets.unpack(targets_payload()).to_controller()),)
    assert core.write_done(call, True) == Ack()
    # an applied value is the read's last good value
    need = core.read("control_targets")
    assert isinstance(need, NeedGetter)
    assert core.read_done(need, failure=Failure.FAILED).value == targets_payload()
    assert core.recent_writes[-1].accepted
    assert core.recent_writes[-1].device == "/dev_1"


@pytest.mark.parametrize(("failure", "code"), [(Failure.MISSING, AppError.CONTROLLER_FAILED),
                                               (Failure.FAILED, AppError.CONTROLLER_FAILED),
                                               (Failure.TIMEOUT, AppError.CONTROLLER_TIMEOUT)])
def test_a_setter_that_fails_refuses_the_write(failure: Failure, code: AppError) -> None:
    core, _ = make_core()
    call = core.write("stage_state", struct.pack("<BBBIHB", 1, 1, 2, int(NOW) - 86400, 14, 0))
    assert isinstance(call, CallSetter)
    decision = core.write_done(call, failure=failure)
    assert isinstance(decision, Reject) and decision.app_code == code
    assert not core.recent_writes[-1].accepted
    # a refused write is not remembered
    need = core.read("stage_state")
    assert isinstance(need, NeedGetter)
    assert core.read_done(need, failure=Failure.FAILED).value == StageState.from_controller(
        None).pack()


def test_invalid_writes_are_refused_with_the_protocol_code_and_never_reach_the_setter() -> None:
    core, _ = make_core()
    decision = core.write("control_targets", targets_payload(250, 240))
    assert isinstance(decision, Reject) and decision.app_code == AppError.INCONSISTENT
    decision = core.write("control_targets", b"\x00")
    assert isinstance(decision, Reject) and decision.app_code is None  # wrong length
    assert "length" in decision.reason
    assert [w.accepted for w in core.recent_writes] == [False, False]


def test_ignore_mode_acknowledges_invalid_writes_without_applying_them() -> None:
    core, _ = make_core(ignore_invalid_writes=True)
    assert core.write("override_bits", struct.pack("<H", 0x8000)) == Ack()
    assert not core.recent_writes[-1].accepted


def test_prepare_authorize_is_answered_but_never_applied() -> None:
    core, _ = make_core()
    assert core.write("control_targets", targets_payload(), authorize_only=True) == Ack()
    decision = core.write("control_targets", targets_payload(250, 240), authorize_only=True)
    assert isinstance(decision, Reject) and decision.app_code == AppError.INCONSISTENT
    query = json.dumps({"species": "Shiitake", "stage": "Fruiting"}).encode()
    assert core.write("stage_thresholds", query, authorize_only=True) == Ack()
    assert (core.cursor.species, core.cursor.stage) == ("Oyster", "Incubation")


def test_an_override_write_asks_for_the_relays_to_be_republished() -> None:
    core, _ = make_core()
    call = core.write("override_bits", struct.pack("<H", 0x0001))
    assert isinstance(call, CallSetter) and call.callback == "apply_overrides"
    assert core.write_done(call, None) == Ack(refresh="actuator_status")
    quiet, _ = make_core(actuator_enabled=False)
    call = quiet.write("override_bits", struct.pack("<H", 0x0001))
    assert isinstance(call, CallSetter)
    assert quiet.write_done(call, None) == Ack()


def test_a_thresholds_update_calls_the_setter_with_the_pair_and_moves_the_cursor() -> None:
    core, _ = make_core()
    update = {"species": "Shiitake", "stage": "Fruiting", "temp_min": 12.0, "temp_max": 18.0}
    call = core.write("stage_thresholds", json.dumps(update).encode())
    assert isinstance(call, CallSetter)
    assert call.callback == "set_stage_thresholds"
    assert call.args[:2] == ("Shiitake", "Fruiting")
    assert call.args[2]["temp_min"] == 12.0
    assert (core.cursor.species, core.cursor.stage) == ("Oyster", "Incubation")
    assert core.write_done(call, True) == Ack()
    assert (core.cursor.species, core.cursor.stage) == ("Shiitake", "Fruiting")
    assert core.recent_writes[-1].detail == "update Shiitake/Fruiting saved=True"


def test_recent_writes_are_bounded() -> None:
    core, _ = make_core()
    for _ in range(RECENT_WRITES + 10):
        core.write("control_targets", b"")
    assert len(core.recent_writes) == RECENT_WRITES


def test_reading_or_writing_what_the_table_does_not_allow_is_a_programming_error() -> None:
    core, _ = make_core()
    with pytest.raises(KeyError):
        core.read("override_bits")
    with pytest.raises(KeyError):
        core.write("env_measurements", bytes(12))
    with pytest.raises(KeyError):
        core.subscribed("control_targets")


# -- subscriptions and publishing -------------------------------------------------------------
def test_a_subscriber_gets_the_current_value_and_status_with_connectivity() -> None:
    core, _ = make_core()
    core.set_published("env_measurements", b"\x02" * 12)
    assert core.subscribed("env_measurements") == Push("env_measurements", b"\x02" * 12)
    core.set_status_flags(0b1)
    assert core.subscribed("status_flags") == Push("status_flags", bytes.fromhex("11000000"))
    assert core.published("status_flags") == bytes.fromhex("11000000")


def test_an_actuator_subscriber_gets_fresh_relays() -> None:
    core, _ = make_core()
    refresh = core.subscribed("actuator_status")
    assert refresh == Refresh("actuator_status", "get_control_data")
    assert isinstance(refresh, Refresh)
    assert core.refresh_done(refresh, {"heater": True}) == bytes.fromhex("0800 00 00 00 00")
    assert core.refresh_done(refresh, failure=Failure.TIMEOUT) is None


def test_env_packets_carry_the_uptime_since_the_start() -> None:
    core, clock = make_core()
    clock.t += 50
    core.started()
    clock.t += 2.5
    packet = core.env_packet(21.57, 88.04, 950, 600)
    assert packet is not None
    assert packet[:8] == bytes.fromhex("b603 d700 7003 5802")
    assert struct.unpack_from("<I", packet, 8)[0] == 2500


def test_ready_payloads_are_checked() -> None:
    core, _ = make_core()
    core.check_payload("env_measurements", bytes(12))
    with pytest.raises(ValueError, match="12 bytes"):
        core.check_payload("env_measurements", bytes(11))
    with pytest.raises(KeyError):
        core.check_payload("control_targets", bytes(15))


def test_only_characteristics_the_table_re_reads_can_be_refreshed() -> None:
    core, _ = make_core()
    assert core.refresh("actuator_status") == Refresh("actuator_status", "get_control_data")
    with pytest.raises(KeyError):
        core.refresh("env_measurements")


@pytest.mark.parametrize("readings", [
    ("hot", 80.0, 900, 10), (float("nan"), 80.0, 900, 10), (20.0, float("inf"), 900, 10),
    (20.0, 80.0, True, 10), (20.0, 80.0, 900, b"\x01"),
])
def test_a_reading_that_is_no_number_is_refused_not_zeroed(
    readings: tuple[object, ...], caplog: pytest.LogCaptureFixture
) -> None:
    core, _ = make_core()
    assert core.env_packet(*readings) is None
    assert core.refused_publishes.counts == {"env_measurements": 1}
    assert "publish refused: a reading is no number" in caplog.text


def test_a_missing_reading_is_no_refusal() -> None:
    core, _ = make_core()
    assert core.env_packet(None, None, None, None) is not None
    assert core.refused_publishes.counts == {}


def test_refused_publishes_are_logged_within_a_budget(caplog: pytest.LogCaptureFixture) -> None:
    core, _ = make_core()
    for _ in range(20):
        core.env_packet("hot", 80.0, 900, 10)
    assert core.refused_publishes.counts == {"env_measurements": 20}
    assert caplog.text.count("publish refused") <= 5
