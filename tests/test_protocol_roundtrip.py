"""Property tests: pack/unpack and controller-dict round trips, lenient encoders."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mushpi_ble.protocol import (
    SPECIES,
    STAGES,
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
)
from mushpi_ble.protocol.thresholds import MIN_MAX_PAIRS, NUMBER_RANGES

NOW = 1_700_000_000.0
YEAR = 365 * 86400

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
s16 = st.integers(-0x8000, 0x7FFF)
u32 = st.integers(0, 0xFFFF_FFFF)


def now() -> float:
    return NOW


envs = st.builds(EnvMeasurement, u16, s16, u16, u16, u32)
statuses = st.builds(StatusFlags, u16)
actuators = st.builds(
    ActuatorStatus,
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    u8,
    u8,
    u8,
    u8,
)
overrides = st.builds(
    OverrideBits, st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans()
)


@st.composite
def valid_targets(draw: st.DrawFn) -> ControlTargets:
    """Targets a phone may write (the ranges of protocol.md)."""
    t_min = draw(st.integers(-100, 499))
    return ControlTargets(
        t_min,
        draw(st.integers(t_min + 1, 500)),
        draw(st.integers(0, 1000)),
        draw(st.integers(400, 10000)),
        draw(st.integers(0, 2)),
        draw(st.integers(0, 1440)),
        draw(st.integers(0, 1440)),
    )


@st.composite
def controller_targets(draw: st.DrawFn) -> ControlTargets:
    """Targets a controller may report: any wire value; minutes only in cycle mode."""
    mode = draw(st.integers(0, 2))
    cycle = mode == 2
    return ControlTargets(
        draw(s16),
        draw(s16),
        draw(u16),
        draw(u16),
        mode,
        draw(u16) if cycle else 0,
        draw(u16) if cycle else 0,
    )


valid_stages = st.builds(
    StageState,
    st.integers(0, 2),
    u8,
    u8,
    st.integers(int(NOW) - YEAR, int(NOW)),
    st.integers(0, 365),
)
named_stages = st.builds(
    StageState, st.integers(0, 2), st.integers(0, 3), st.integers(0, 3), u32, u16
)

names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=30
).filter(lambda s: bool(s.strip()))
queries = st.builds(ThresholdsQuery, names, names)


def in_range(key: str) -> st.SearchStrategy[float]:
    lo, hi = NUMBER_RANGES[key]
    return st.one_of(st.floats(lo, hi), st.integers(math.ceil(lo), math.floor(hi)))


@st.composite
def threshold_dicts(draw: st.DrawFn) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if draw(st.booleans()):
        result["co2_max"] = draw(in_range("co2_max"))
    for low_key, high_key in MIN_MAX_PAIRS:
        if draw(st.booleans()):
            a, b = draw(in_range(low_key)), draw(in_range(high_key))
            if a != b:
                result[low_key], result[high_key] = min(a, b), max(a, b)
        elif draw(st.booleans()):
            key = draw(st.sampled_from((low_key, high_key)))
            result[key] = draw(in_range(key))
    if draw(st.booleans()):
        light: dict[str, Any] = {}
        if draw(st.booleans()):
            light["mode"] = draw(st.sampled_from(["off", "on", "cycle", "CYCLE"]))
        if draw(st.booleans()):
            light["on_min"] = draw(st.integers(0, 1440))
        if draw(st.booleans()):
            light["off_min"] = draw(st.integers(0, 1440))
        result["light"] = light
    if draw(st.booleans()) or not result:
        result["expected_days"] = draw(st.integers(0, 365))
    return result


updates = st.builds(
    ThresholdsUpdate,
    st.sampled_from(list(SPECIES)),
    st.sampled_from(list(STAGES)),
    threshold_dicts(),
)


# -- pack / unpack -----------------------------------------------------------


@given(envs)
def test_env_roundtrip(value: EnvMeasurement) -> None:
    packed = value.pack()
    assert len(packed) == 12
    assert EnvMeasurement.unpack(packed) == value


@given(statuses)
def test_status_roundtrip(value: StatusFlags) -> None:
    packed = value.pack()
    assert len(packed) == 4
    assert packed[2:] == b"\x00\x00"
    assert StatusFlags.unpack(packed) == value


@given(actuators)
def test_actuator_roundtrip(value: ActuatorStatus) -> None:
    packed = value.pack()
    assert len(packed) == 6
    assert ActuatorStatus.unpack(packed) == value


@given(overrides)
def test_override_roundtrip(value: OverrideBits) -> None:
    packed = value.pack()
    assert len(packed) == 2
    assert OverrideBits.unpack(packed) == value


@given(valid_targets())
def test_targets_roundtrip(value: ControlTargets) -> None:
    packed = value.pack()
    assert len(packed) == 15
    assert packed[13:] == b"\x00\x00"
    assert ControlTargets.unpack(packed) == value


@given(valid_stages)
def test_stage_roundtrip(value: StageState) -> None:
    packed = value.pack()
    assert len(packed) == 10
    assert packed[9] == 0
    assert StageState.unpack(packed, now=now) == value


@given(queries)
def test_query_roundtrip(value: ThresholdsQuery) -> None:
    assert ThresholdsQuery.unpack(value.pack()) == value


@given(updates)
def test_update_roundtrip(value: ThresholdsUpdate) -> None:
    assert ThresholdsUpdate.unpack(value.pack()) == value
    assert decode_thresholds_write(value.pack()) == value


# -- controller dicts --------------------------------------------------------


@given(controller_targets())
def test_targets_dict_roundtrip(value: ControlTargets) -> None:
    assert ControlTargets.from_controller(value.to_controller()) == value


@given(named_stages)
def test_stage_dict_roundtrip(value: StageState) -> None:
    assert StageState.from_controller(value.to_controller()) == value


@given(overrides)
def test_override_dict_roundtrip(value: OverrideBits) -> None:
    assert OverrideBits.from_controller(value.to_controller()) == value


@given(actuators)
def test_actuator_dict_roundtrip(value: ActuatorStatus) -> None:
    assert ActuatorStatus.from_controller(value.to_controller()) == value


@given(statuses)
def test_status_dict_roundtrip(value: StatusFlags) -> None:
    assert StatusFlags.from_controller(value.to_controller()) == value


@given(updates)
def test_update_dict_roundtrip(value: ThresholdsUpdate) -> None:
    species, stage, thresholds = value.to_controller()
    assert ThresholdsUpdate(species, stage, thresholds) == value


# -- lenient encoders never fail ---------------------------------------------

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


@given(anything, anything, anything, anything, anything)
def test_env_from_anything(t: object, rh: object, co2: object, light: object, up: object) -> None:
    EnvMeasurement.from_readings(t, rh, co2, light, up).pack()


@given(st.floats(-3276.0, 3276.0), st.floats(0, 6553.0))
def test_env_truncates_toward_zero(temperature: float, humidity: float) -> None:
    env = EnvMeasurement.from_readings(temperature, humidity, 0, 0, 0)
    assert env.temperature_x10 == int(temperature * 10)
    assert env.humidity_x10 == int(humidity * 10)
    assert abs(env.temperature_x10) <= abs(temperature * 10)


@given(
    st.dictionaries(
        st.sampled_from(["temp_min", "temp_max", "rh_min", "co2_max", "light"]), anything
    )
)
def test_targets_from_anything(d: dict[str, object]) -> None:
    ControlTargets.from_controller(d).pack()


@given(
    st.dictionaries(
        st.sampled_from(["species", "stage", "mode", "stage_start_ts", "expected_days"]), anything
    )
)
def test_stage_from_anything(d: dict[str, object]) -> None:
    StageState.from_controller(d).pack()


@given(st.dictionaries(st.sampled_from(["light", "fan", "mist", "heater", "fan_reason"]), anything))
def test_actuator_from_anything(d: dict[str, object]) -> None:
    ActuatorStatus.from_controller(d).pack()


@given(anything)
def test_status_from_anything(flags: object) -> None:
    StatusFlags.from_controller(flags).pack()


# -- controller leniency, by example -----------------------------------------


def test_targets_missing_none_and_invalid_keep_defaults() -> None:
    default = ControlTargets.DEFAULT
    assert ControlTargets.from_controller({"temp_min": None, "co2_max": None}) == default
    assert ControlTargets.from_controller({"temp_min": math.nan, "rh_min": "high"}) == default
    assert ControlTargets.from_controller({"co2_max": 1e9}).co2_max == 0xFFFF
    assert ControlTargets.from_controller({"temp_max": -1e9}).temp_max_x10 == -0x8000


def test_targets_light_shapes() -> None:
    def light(value: object) -> tuple[int, int, int]:
        t = ControlTargets.from_controller({"light": value})
        return (t.light_mode, t.on_minutes, t.off_minutes)

    assert light(True) == (1, 0, 0)
    assert light(False) == (0, 0, 0)
    assert light("ON") == (1, 0, 0)
    assert light("cycle") == (2, 0, 0)
    assert light({"mode": "Cycle", "on_min": 600, "off_min": 840}) == (2, 600, 840)
    assert light({"mode": "on", "on_min": 600, "off_min": 840}) == (1, 0, 0)
    assert light({"mode": "disco"}) == (0, 0, 0)
    assert light({"mode": "cycle", "on_min": None, "off_min": 70000}) == (2, 0, 0xFFFF)
    assert light(None) == (0, 0, 0)


def test_targets_read_back_what_was_written() -> None:
    # 2.3 * 10 == 22.999...: a truncating encoder would read back 22
    written = ControlTargets.unpack(bytes.fromhex("1700 1801 bc02 8813 00 0000 0000 0000"))
    assert written.to_controller()["temp_min"] == 2.3
    assert ControlTargets.from_controller(written.to_controller()) == written


def test_stage_from_controller_examples() -> None:
    assert StageState.from_controller({"mode": "manual"}).mode == 2
    assert StageState.from_controller({"mode": 7}).mode == 0
    harvest = StageState.from_controller({"species": "Oyster", "stage": "Harvest"})
    assert (harvest.species_id, harvest.stage_id) == (1, 0)
    assert StageState.from_controller({"stage_start_ts": 1.7e9}).stage_start_ts == 1_700_000_000
    assert StageState.from_controller({"stage_start_ts": -5}).stage_start_ts == 0
    assert StageState.from_controller({"expected_days": 10**9}).expected_days == 0xFFFF


def test_actuator_from_controller_examples() -> None:
    assert ActuatorStatus.from_controller(None) == ActuatorStatus()
    status = ActuatorStatus.from_controller({"fan": 1, "fan_reason": 300, "mist_reason": -5})
    assert (status.fan, status.fan_reason, status.mist_reason) == (True, 255, 0)


def test_status_flags_from_controller_and_connectivity() -> None:
    assert StatusFlags.from_controller(0x1_0091).flags == 0x0091
    assert StatusFlags.from_controller(-1).flags == 0
    assert StatusFlags.from_controller("3").flags == 0
    flags = StatusFlags.from_controller(StatusFlag.SENSOR_ERROR | StatusFlag.CONNECTIVITY)
    assert flags.with_connectivity(False).flags == StatusFlag.SENSOR_ERROR
    assert flags.with_connectivity(False).with_connectivity(True) == flags
    assert flags.has(StatusFlag.SENSOR_ERROR)
    assert not flags.has(StatusFlag.SIMULATION)


_READING = st.one_of(
    st.none(), st.booleans(), st.text(max_size=3),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)


@given(_READING, _READING, _READING, _READING, _READING)
def test_fast_env_encoder_matches_the_value_class(t: object, rh: object, co2: object,
                                                  light: object, up: object) -> None:
    from mushpi_ble.protocol import EnvMeasurement, encode_env

    assert encode_env(t, rh, co2, light, up) == EnvMeasurement.from_readings(
        t, rh, co2, light, up).pack()
