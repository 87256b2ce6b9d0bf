"""Golden vectors: bytes computed by hand from protocol.md, as hex literals."""

from __future__ import annotations

import json

import pytest

from mushpi_ble.protocol import (
    DEFAULT_QUERY,
    ActuatorStatus,
    ControlTargets,
    EnvMeasurement,
    OverrideBits,
    StageState,
    StatusFlag,
    StatusFlags,
    ThresholdsQuery,
    ThresholdsUpdate,
    decode_thresholds_write,
    decode_write,
    encode_thresholds_answer,
)

NOW = 1_700_000_100.0


def now() -> float:
    return NOW


# -- env_measurements -------------------------------------------------------


def test_env_typical() -> None:
    # co2 800=0x0320, 21.57 C -> 215=0x00d7, 65.0 % -> 650=0x028a, light 300=0x012c,
    # uptime 123456=0x0001e240
    env = EnvMeasurement.from_readings(21.57, 65.0, 800, 300, 123456)
    assert env.pack() == bytes.fromhex("2003 d700 8a02 2c01 40e20100")
    assert EnvMeasurement.unpack(env.pack()) == env
    assert env.temperature == 21.5


def test_env_negative_temperature_and_clamps() -> None:
    # co2 70000 -> 0xffff; -3.27 C -> -32 (toward zero) = 0xffe0; 45.67 % -> 456=0x01c8;
    # light 512.9 -> 512=0x0200; uptime 2**32+5 -> 0xffffffff
    env = EnvMeasurement.from_readings(-3.27, 45.67, 70000, 512.9, 2**32 + 5)
    assert env.pack() == bytes.fromhex("ffff e0ff c801 0002 ffffffff")
    assert (env.co2, env.temperature_x10, env.humidity_x10) == (65535, -32, 456)


def test_env_missing_and_invalid_readings_are_zero() -> None:
    env = EnvMeasurement.from_readings(None, float("nan"), "400", float("inf"), None)
    assert env.pack() == bytes(12)


def test_env_huge_ints_clamp() -> None:
    env = EnvMeasurement.from_readings(-(10**400), 10**400, 10**400, -(10**400), 10**400)
    assert env.pack() == bytes.fromhex("ffff 0080 ffff 0000 ffffffff")


def test_env_clamps_low_and_high_ends() -> None:
    # -4000 C -> -32768 = 0x8000; 5000 C -> 32767 = 0x7fff; negatives on unsigned -> 0
    assert EnvMeasurement.from_readings(-4000, -5, -1, -1, -1).pack() == bytes.fromhex(
        "0000 0080 0000 0000 00000000"
    )
    assert EnvMeasurement.from_readings(5000, 7000, 1e12, 1e300, 1e300).pack() == bytes.fromhex(
        "ffff ff7f ffff ffff ffffffff"
    )


# -- status_flags and actuator_status --------------------------------------


def test_status_flags() -> None:
    flags = StatusFlags(StatusFlag.SENSOR_ERROR | StatusFlag.CONNECTIVITY | StatusFlag.SIMULATION)
    assert flags.pack() == bytes.fromhex("9100 0000")
    assert StatusFlags.unpack(bytes.fromhex("9100 0000")) == flags
    # the reserved half is ignored on decode and written as 0
    assert StatusFlags.unpack(bytes.fromhex("0102 ffff")).pack() == bytes.fromhex("0102 0000")


def test_actuator_status() -> None:
    # relays light(0)+fan(1)+heater(3) = 0x0b; reasons in order fan, mist, light, heater
    status = ActuatorStatus.from_controller(
        {
            "light": True,
            "fan": True,
            "mist": False,
            "heater": True,
            "mode": "auto",
            "fan_reason": 3,
            "mist_reason": 0,
            "light_reason": 1,
            "heater_reason": 255,
        }
    )
    assert status.pack() == bytes.fromhex("0b00 03 00 01 ff")
    assert ActuatorStatus.unpack(bytes.fromhex("0b00 03 00 01 ff")) == status


def test_actuator_mist_only_reason_order() -> None:
    status = ActuatorStatus(mist=True, mist_reason=7, light_reason=9)
    assert status.pack() == bytes.fromhex("0400 00 07 09 00")


# -- control_targets ---------------------------------------------------------


def test_control_targets_default() -> None:
    default = bytes.fromhex("c800 1801 bc02 8813 00 0000 0000 0000")
    assert ControlTargets.from_controller(None).pack() == default
    assert ControlTargets.from_controller({}).pack() == default
    assert ControlTargets.DEFAULT.pack() == default
    assert ControlTargets.unpack(default) == ControlTargets.DEFAULT


def test_control_targets_cycle() -> None:
    # 18.5 -> 185=0x00b9, 24.0 -> 240=0x00f0, 85.0 -> 850=0x0352, 1200=0x04b0, cycle=2,
    # 720=0x02d0 twice, reserved 0
    raw = bytes.fromhex("b900 f000 5203 b004 02 d002 d002 0000")
    targets = ControlTargets.unpack(raw)
    assert targets.to_controller() == {
        "temp_min": 18.5,
        "temp_max": 24.0,
        "rh_min": 85.0,
        "co2_max": 1200,
        "light": {"mode": "cycle", "on_min": 720, "off_min": 720},
    }
    assert ControlTargets.from_controller(targets.to_controller()).pack() == raw


def test_control_targets_negative_temperature() -> None:
    # -5.0 C -> -50 = 0xffce; 4.5 C -> 45 = 0x002d; mode on, minutes dropped
    raw = bytes.fromhex("ceff 2d00 0000 9001 01 0000 0000 0000")
    targets = ControlTargets.unpack(raw)
    assert targets.to_controller() == {
        "temp_min": -5.0,
        "temp_max": 4.5,
        "rh_min": 0.0,
        "co2_max": 400,
        "light": {"mode": "on"},
    }


def test_control_targets_reserved_tolerated_and_zeroed() -> None:
    raw = bytes.fromhex("c800 1801 bc02 8813 00 0000 0000 abcd")
    assert ControlTargets.unpack(raw).pack() == bytes.fromhex(
        "c800 1801 bc02 8813 00 0000 0000 0000"
    )


# -- stage_state -------------------------------------------------------------


def test_stage_state() -> None:
    # SEMI=1, Shiitake=2, Pinning=2, 1700000000=0x6553f100, 14 days, reserved 0
    raw = bytes.fromhex("01 02 02 00f15365 0e00 00")
    stage = StageState.from_controller(
        {
            "species": "Shiitake",
            "stage": "Pinning",
            "mode": "SEMI",
            "stage_start_ts": 1_700_000_000,
            "expected_days": 14,
            "notes": "ignored",
        }
    )
    assert stage.pack() == raw
    assert StageState.unpack(raw, now=now) == stage
    assert stage.to_controller() == {
        "mode": 1,
        "species": "Shiitake",
        "stage": "Pinning",
        "stage_start_ts": 1_700_000_000,
        "expected_days": 14,
    }


def test_stage_state_unknown_ids_accepted_on_write() -> None:
    # Lion's Mane with stage id 7 (unknown), reserved byte set
    raw = bytes.fromhex("02 03 07 00f15365 0000 ff")
    stage = StageState.unpack(raw, now=now)
    assert stage.to_controller()["species"] == "Lion's Mane"
    assert stage.to_controller()["stage"] == "Unknown"
    assert stage.pack() == bytes.fromhex("02 03 07 00f15365 0000 00")


def test_stage_state_none_is_zeros() -> None:
    assert StageState.from_controller(None).pack() == bytes(10)


# -- override_bits -----------------------------------------------------------


def test_override_bits() -> None:
    overrides = OverrideBits.unpack(bytes.fromhex("8900"))
    assert overrides.to_controller() == {
        "light_override": True,
        "fan_override": False,
        "mist_override": False,
        "heater_override": True,
        "disable_automation": True,
        "emergency_stop": False,
        "raw_bits": 0x89,
    }
    assert overrides.pack() == bytes.fromhex("8900")
    assert OverrideBits.unpack(bytes.fromhex("8f00")).bits == 0x8F
    assert OverrideBits.unpack(bytes.fromhex("0000")).to_controller()["raw_bits"] == 0


# -- stage_thresholds --------------------------------------------------------


def test_thresholds_query() -> None:
    payload = b'{"species":"Oyster","stage":"Pinning"}'
    query = decode_thresholds_write(payload)
    assert query == ThresholdsQuery("Oyster", "Pinning")
    assert query.pack() == payload
    assert query.to_controller() == ("Oyster", "Pinning")
    assert ThresholdsQuery("Oyster", "Incubation") == DEFAULT_QUERY


def test_thresholds_update() -> None:
    payload = (
        b'{"species":"Oyster","stage":"Fruiting","temp_min":18,"temp_max":24.5,'
        b'"light":{"mode":"cycle","on_min":720,"off_min":720},"expected_days":7}'
    )
    update = decode_thresholds_write(payload)
    assert isinstance(update, ThresholdsUpdate)
    assert update.to_controller() == (
        "Oyster",
        "Fruiting",
        {
            "temp_min": 18,
            "temp_max": 24.5,
            "light": {"mode": "cycle", "on_min": 720, "off_min": 720},
            "expected_days": 7,
        },
    )
    assert update.pack() == payload
    # the controller may mutate what it gets without touching the value
    update.to_controller()[2]["light"]["mode"] = "off"
    assert update.thresholds["light"]["mode"] == "cycle"


def test_thresholds_answer() -> None:
    answer = encode_thresholds_answer(
        "Oyster",
        "Pinning",
        {"temp_min": 18.0, "rh_min": 90, "light": {"mode": "on"}, "stage": "ignored"},
    )
    assert answer == (
        b'{"species":"Oyster","stage":"Pinning","temp_min":18.0,"rh_min":90,"light":{"mode":"on"}}'
    )


def test_thresholds_answer_replaces_lone_surrogates() -> None:
    answer = encode_thresholds_answer("Oyster", "Pinning", {"notes": "a\ud800b", "\udfff": 1})
    assert json.loads(answer) == {"species": "Oyster", "stage": "Pinning", "notes": "a?b", "?": 1}


@pytest.mark.parametrize("thresholds", [None, {}, [], 0, ""])
def test_thresholds_answer_not_found(thresholds: object) -> None:
    answer = encode_thresholds_answer("Lion's Mane", "Fruiting", thresholds)  # type: ignore[arg-type]
    assert answer == b'{"error":"Stage not found","species":"Lion\'s Mane","stage":"Fruiting"}'


def test_thresholds_answer_always_encodes() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    answer = encode_thresholds_answer(
        "Oyster",
        "Pinning",
        {"a": float("nan"), "b": (1, 2), "c": Odd(), 5: "five", "d": {"e": float("inf")}},
    )
    assert json.loads(answer) == {
        "species": "Oyster",
        "stage": "Pinning",
        "a": None,
        "b": [1, 2],
        "c": "odd",
        "5": "five",
        "d": {"e": None},
    }


# -- dispatch and self-check -------------------------------------------------


def test_decode_write_dispatch() -> None:
    assert decode_write("override_bits", bytes.fromhex("0100")) == OverrideBits(light=True)
    assert isinstance(
        decode_write("control_targets", ControlTargets.DEFAULT.pack()), ControlTargets
    )
    stage = decode_write("stage_state", bytes.fromhex("01 02 02 00f15365 0e00 00"), now=now)
    assert isinstance(stage, StageState)
    assert decode_write("stage_thresholds", b'{"species":"a","stage":"b"}') == ThresholdsQuery(
        "a", "b"
    )
    with pytest.raises(KeyError):
        decode_write("env_measurements", bytes(12))


def test_unpack_accepts_bytearray_and_memoryview() -> None:
    raw = bytes.fromhex("c800 1801 bc02 8813 00 0000 0000 0000")
    assert ControlTargets.unpack(bytearray(raw)) == ControlTargets.DEFAULT
    assert ControlTargets.unpack(memoryview(raw)) == ControlTargets.DEFAULT
    assert decode_thresholds_write(bytearray(b'{"species":"a","stage":"b"}')) == ThresholdsQuery(
        "a", "b"
    )


def test_thresholds_answer_fits_one_attribute_value() -> None:
    """Over 512 bytes: extra keys go first, then an honest error — never a cut JSON."""
    import json

    from mushpi_ble.protocol import encode_thresholds_answer

    big_note = {"temp_min": 15.0, "co2_max": 900, "notes": "x" * 600}
    answer = json.loads(encode_thresholds_answer("Oyster", "Pinning", big_note))
    assert answer == {"species": "Oyster", "stage": "Pinning", "temp_min": 15.0, "co2_max": 900}
    huge = {"light": {"mode": "cycle", "schedule": list(range(300))}}
    raw = encode_thresholds_answer("Oyster", "Pinning", huge)
    assert len(raw) <= 512
    assert json.loads(raw) == {"error": "Thresholds too large", "species": "Oyster",
                               "stage": "Pinning"}
