"""Every invalid input class of every writable characteristic, one case each,
plus fuzzing: random input either raises InvalidPayload or decodes to a value
whose controller dict is valid."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mushpi_ble.protocol import (
    SPECIES,
    STAGES,
    THRESHOLD_KEYS,
    AppError,
    ControlTargets,
    InvalidPayload,
    OverrideBits,
    StageState,
    ThresholdsQuery,
    ThresholdsUpdate,
    decode_thresholds_write,
)
from mushpi_ble.protocol.thresholds import MIN_MAX_PAIRS, NUMBER_RANGES

NOW = 1_700_000_000.0
YEAR = 365 * 86400


def now() -> float:
    return NOW


def targets(
    t_min: int = 200,
    t_max: int = 280,
    rh: int = 700,
    co2: int = 5000,
    mode: int = 0,
    on: int = 0,
    off: int = 0,
    reserved: int = 0,
) -> bytes:
    return struct.pack("<hhHHBHHH", t_min, t_max, rh, co2, mode, on, off, reserved)


def stage(
    mode: int = 1,
    species: int = 1,
    stage_: int = 2,
    start: int = int(NOW) - 86400,
    days: int = 14,
    reserved: int = 0,
) -> bytes:
    return struct.pack("<BBBIHB", mode, species, stage_, start, days, reserved)


def expect(exc: pytest.ExceptionInfo[InvalidPayload], field: str, code: AppError | None) -> None:
    assert exc.value.field == field
    assert exc.value.app_code == code


# -- control_targets ---------------------------------------------------------

TARGETS_INVALID = [
    pytest.param(b"", "length", None, id="empty"),
    pytest.param(targets()[:14], "length", None, id="short"),
    pytest.param(targets() + b"\x00", "length", None, id="long"),
    pytest.param(targets(t_min=-101), "temp_min", AppError.OUT_OF_RANGE, id="temp_min-low"),
    pytest.param(
        targets(t_min=501, t_max=500), "temp_min", AppError.OUT_OF_RANGE, id="temp_min-high"
    ),
    pytest.param(
        targets(t_min=-100, t_max=-101), "temp_max", AppError.OUT_OF_RANGE, id="temp_max-low"
    ),
    pytest.param(targets(t_max=501), "temp_max", AppError.OUT_OF_RANGE, id="temp_max-high"),
    pytest.param(targets(rh=1001), "rh_min", AppError.OUT_OF_RANGE, id="rh_min-high"),
    pytest.param(targets(co2=399), "co2_max", AppError.OUT_OF_RANGE, id="co2_max-low"),
    pytest.param(targets(co2=10001), "co2_max", AppError.OUT_OF_RANGE, id="co2_max-high"),
    pytest.param(targets(mode=3), "light_mode", AppError.UNKNOWN_ENUM, id="light_mode-3"),
    pytest.param(targets(mode=255), "light_mode", AppError.UNKNOWN_ENUM, id="light_mode-255"),
    pytest.param(targets(mode=2, on=1441), "on_minutes", AppError.OUT_OF_RANGE, id="on-high"),
    pytest.param(targets(mode=2, off=1441), "off_minutes", AppError.OUT_OF_RANGE, id="off-high"),
    pytest.param(targets(t_min=250, t_max=250), "temp_min", AppError.INCONSISTENT, id="equal"),
    pytest.param(targets(t_min=250, t_max=240), "temp_min", AppError.INCONSISTENT, id="inverted"),
]


@pytest.mark.parametrize(("payload", "field", "code"), TARGETS_INVALID)
def test_control_targets_rejects(payload: bytes, field: str, code: AppError | None) -> None:
    with pytest.raises(InvalidPayload) as exc:
        ControlTargets.unpack(payload)
    assert exc.value.characteristic == "control_targets"
    expect(exc, field, code)


def test_control_targets_inconsistent_message() -> None:
    with pytest.raises(InvalidPayload) as exc:
        ControlTargets.unpack(targets(t_min=250, t_max=240))
    assert exc.value.app_code == 0x82
    assert exc.value.detail == "temp_min: must be below temp_max (250 >= 240)"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(targets(t_min=-100, t_max=-99), id="temp-low-edge"),
        pytest.param(targets(t_min=499, t_max=500), id="temp-high-edge"),
        pytest.param(targets(rh=0, co2=400), id="rh-co2-low-edge"),
        pytest.param(targets(rh=1000, co2=10000), id="rh-co2-high-edge"),
        pytest.param(targets(mode=2, on=0, off=1440), id="minutes-edges"),
        pytest.param(targets(mode=0, on=30, off=30), id="minutes-without-cycle"),
        pytest.param(targets(reserved=0xFFFF), id="reserved-set"),
    ],
)
def test_control_targets_accepts_edges(payload: bytes) -> None:
    ControlTargets.unpack(payload)


# -- stage_state -------------------------------------------------------------

STAGE_INVALID = [
    pytest.param(stage()[:9], "length", None, id="short"),
    pytest.param(stage() + b"\x00", "length", None, id="long"),
    pytest.param(stage(mode=3), "mode", AppError.UNKNOWN_ENUM, id="mode-3"),
    pytest.param(stage(mode=255), "mode", AppError.UNKNOWN_ENUM, id="mode-255"),
    pytest.param(
        stage(start=int(NOW) + 1), "stage_start_ts", AppError.TIMESTAMP_IN_FUTURE, id="future"
    ),
    pytest.param(
        stage(start=0xFFFFFFFF), "stage_start_ts", AppError.TIMESTAMP_IN_FUTURE, id="far-future"
    ),
    pytest.param(
        stage(start=int(NOW) - YEAR - 1),
        "stage_start_ts",
        AppError.TIMESTAMP_TOO_OLD,
        id="365-days-and-1-s",
    ),
    pytest.param(
        stage(start=int(NOW) - 366 * 86400),
        "stage_start_ts",
        AppError.TIMESTAMP_TOO_OLD,
        id="366-days",
    ),
    pytest.param(stage(start=0), "stage_start_ts", AppError.TIMESTAMP_TOO_OLD, id="epoch"),
    pytest.param(stage(days=366), "expected_days", AppError.OUT_OF_RANGE, id="days-366"),
    pytest.param(stage(days=0xFFFF), "expected_days", AppError.OUT_OF_RANGE, id="days-max"),
]


@pytest.mark.parametrize(("payload", "field", "code"), STAGE_INVALID)
def test_stage_state_rejects(payload: bytes, field: str, code: AppError | None) -> None:
    with pytest.raises(InvalidPayload) as exc:
        StageState.unpack(payload, now=now)
    assert exc.value.characteristic == "stage_state"
    expect(exc, field, code)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(stage(start=int(NOW)), id="start-now"),
        pytest.param(stage(start=int(NOW) - YEAR), id="start-365-days"),
        pytest.param(stage(days=0), id="days-0"),
        pytest.param(stage(days=365), id="days-365"),
        pytest.param(stage(mode=2, species=0, stage_=0), id="unknown-ids-0"),
        pytest.param(stage(species=200, stage_=99), id="unknown-ids"),
        pytest.param(stage(reserved=0xFF), id="reserved-set"),
    ],
)
def test_stage_state_accepts_edges(payload: bytes) -> None:
    StageState.unpack(payload, now=now)


def test_stage_state_uses_the_injected_clock() -> None:
    payload = stage(start=int(NOW) + 10)
    with pytest.raises(InvalidPayload):
        StageState.unpack(payload, now=now)
    assert StageState.unpack(payload, now=lambda: NOW + 10).stage_start_ts == int(NOW) + 10


# -- override_bits -----------------------------------------------------------

OVERRIDE_INVALID = [
    pytest.param(b"\x01", "length", None, id="short"),
    pytest.param(b"\x01\x00\x00", "length", None, id="long"),
    pytest.param(bytes.fromhex("0080"), "bits", AppError.FORBIDDEN_BITS, id="bit-15"),
    pytest.param(bytes.fromhex("1000"), "bits", AppError.FORBIDDEN_BITS, id="bit-4"),
    pytest.param(bytes.fromhex("4000"), "bits", AppError.FORBIDDEN_BITS, id="bit-6"),
    pytest.param(bytes.fromhex("0001"), "bits", AppError.FORBIDDEN_BITS, id="bit-8"),
    pytest.param(bytes.fromhex("ffff"), "bits", AppError.FORBIDDEN_BITS, id="all-bits"),
]


@pytest.mark.parametrize(("payload", "field", "code"), OVERRIDE_INVALID)
def test_override_bits_rejects(payload: bytes, field: str, code: AppError | None) -> None:
    with pytest.raises(InvalidPayload) as exc:
        OverrideBits.unpack(payload)
    assert exc.value.characteristic == "override_bits"
    expect(exc, field, code)


# -- stage_thresholds --------------------------------------------------------


def pair(**extra: Any) -> bytes:
    return json.dumps({"species": "Oyster", "stage": "Pinning", **extra}).encode()


THRESHOLDS_INVALID = [
    pytest.param(pair(note="x" * 5000), "payload", AppError.TOO_LARGE, id="too-large"),
    pytest.param(b"\xff\xfe{}", "payload", AppError.NOT_JSON, id="bad-utf8"),
    pytest.param(b'{"species":"Oyster\xc3"}', "payload", AppError.NOT_JSON, id="truncated-utf8"),
    pytest.param(b"", "payload", AppError.NOT_JSON, id="empty"),
    pytest.param(b"species=Oyster", "payload", AppError.NOT_JSON, id="not-json"),
    pytest.param(b'{"species":"Oyster",', "payload", AppError.NOT_JSON, id="truncated-json"),
    pytest.param(
        b'{"species":"Oyster","stage":"Pinning","temp_min":NaN}',
        "payload",
        AppError.NOT_JSON,
        id="nan",
    ),
    pytest.param(
        b'{"species":"Oyster","stage":"Pinning","temp_min":1e999}',
        "payload",
        AppError.NOT_JSON,
        id="overflowing-float",
    ),
    pytest.param(b"[]", "payload", AppError.JSON_SHAPE, id="array"),
    pytest.param(b'"Oyster"', "payload", AppError.JSON_SHAPE, id="string"),
    pytest.param(b"null", "payload", AppError.JSON_SHAPE, id="null"),
    pytest.param(
        b'{"species":"Oyster","stage":"Pinning","x":' + b"[" * 40 + b"]" * 40 + b"}",
        "payload",
        AppError.JSON_SHAPE,
        id="deep-nesting",
    ),
    pytest.param(b"[" * 3000 + b"]" * 3000, "payload", AppError.TOO_LARGE, id="deep-and-large"),
    pytest.param(b"[" * 2000 + b"]" * 2000, "payload", AppError.NOT_JSON, id="recursion"),
    pytest.param(b'{"stage":"Pinning"}', "species", AppError.JSON_SHAPE, id="missing-species"),
    pytest.param(b'{"species":"Oyster"}', "stage", AppError.JSON_SHAPE, id="missing-stage"),
    pytest.param(
        b'{"species":"","stage":"Pinning"}', "species", AppError.JSON_SHAPE, id="empty-species"
    ),
    pytest.param(
        b'{"species":"Oyster","stage":" "}', "stage", AppError.JSON_SHAPE, id="blank-stage"
    ),
    pytest.param(
        b'{"species":1,"stage":"Pinning"}', "species", AppError.JSON_SHAPE, id="species-number"
    ),
    pytest.param(pair(temp_min="20"), "temp_min", AppError.JSON_SHAPE, id="temp_min-string"),
    pytest.param(pair(rh_max=True), "rh_max", AppError.JSON_SHAPE, id="rh_max-bool"),
    pytest.param(pair(co2_max=None), "co2_max", AppError.JSON_SHAPE, id="co2_max-null"),
    pytest.param(pair(co2_max=[900]), "co2_max", AppError.JSON_SHAPE, id="co2_max-array"),
    pytest.param(pair(temp_min=10**400), "temp_min", AppError.OUT_OF_RANGE, id="temp_min-huge-int"),
    pytest.param(
        pair(temp_max=-(10**400)), "temp_max", AppError.OUT_OF_RANGE, id="temp_max-huge-negative"
    ),
    pytest.param(pair(co2_max=-5), "co2_max", AppError.OUT_OF_RANGE, id="co2-negative"),
    pytest.param(pair(co2_max=1e30), "co2_max", AppError.OUT_OF_RANGE, id="co2-1e30"),
    pytest.param(pair(co2_max=399), "co2_max", AppError.OUT_OF_RANGE, id="co2-below-400"),
    pytest.param(pair(co2_max=10000.5), "co2_max", AppError.OUT_OF_RANGE, id="co2-above-10000"),
    pytest.param(pair(temp_min=-10.1), "temp_min", AppError.OUT_OF_RANGE, id="temp_min-low"),
    pytest.param(pair(temp_max=50.01), "temp_max", AppError.OUT_OF_RANGE, id="temp_max-high"),
    pytest.param(pair(temp_min=-273.15), "temp_min", AppError.OUT_OF_RANGE, id="absolute-zero"),
    pytest.param(pair(rh_min=-0.1), "rh_min", AppError.OUT_OF_RANGE, id="rh_min-negative"),
    pytest.param(pair(rh_max=100.5), "rh_max", AppError.OUT_OF_RANGE, id="rh_max-high"),
    pytest.param(pair(light_min=-1), "light_min", AppError.OUT_OF_RANGE, id="light_min-negative"),
    pytest.param(pair(light_max=65536), "light_max", AppError.OUT_OF_RANGE, id="light_max-high"),
    pytest.param(pair(light="on"), "light", AppError.JSON_SHAPE, id="light-string"),
    pytest.param(pair(light=True), "light", AppError.JSON_SHAPE, id="light-bool"),
    pytest.param(pair(light={"mode": 1}), "light.mode", AppError.JSON_SHAPE, id="light-mode-int"),
    pytest.param(
        pair(light={"mode": "strobe"}), "light.mode", AppError.UNKNOWN_ENUM, id="light-mode-bad"
    ),
    pytest.param(
        pair(light={"mode": "on\u0000"}), "light.mode", AppError.UNKNOWN_ENUM, id="light-mode-nul"
    ),
    pytest.param(
        pair(light={"on_min": 1.5}), "light.on_min", AppError.JSON_SHAPE, id="on_min-float"
    ),
    pytest.param(
        pair(light={"on_min": True}), "light.on_min", AppError.JSON_SHAPE, id="on_min-bool"
    ),
    pytest.param(
        pair(light={"off_min": 1441}), "light.off_min", AppError.OUT_OF_RANGE, id="off_min-high"
    ),
    pytest.param(
        pair(light={"on_min": -1}), "light.on_min", AppError.OUT_OF_RANGE, id="on_min-low"
    ),
    pytest.param(pair(expected_days=366), "expected_days", AppError.OUT_OF_RANGE, id="days-366"),
    pytest.param(pair(expected_days=-1), "expected_days", AppError.OUT_OF_RANGE, id="days-neg"),
    pytest.param(pair(expected_days=14.0), "expected_days", AppError.JSON_SHAPE, id="days-float"),
    pytest.param(pair(expected_days=True), "expected_days", AppError.JSON_SHAPE, id="days-bool"),
    pytest.param(
        pair(temp_min=24, temp_max=24), "temp_min", AppError.INCONSISTENT, id="temp-equal"
    ),
    pytest.param(
        pair(temp_min=24.5, temp_max=18), "temp_min", AppError.INCONSISTENT, id="temp-reversed"
    ),
    pytest.param(pair(rh_min=95, rh_max=85), "rh_min", AppError.INCONSISTENT, id="rh-reversed"),
    pytest.param(pair(rh_min=90, rh_max=90.0), "rh_min", AppError.INCONSISTENT, id="rh-equal"),
    pytest.param(
        pair(light_min=500, light_max=100), "light_min", AppError.INCONSISTENT, id="light-reversed"
    ),
    # keys the controller does not know: at the top (even without a threshold key,
    # where a typo would otherwise pass as a query) and inside light
    pytest.param(pair(temp_min=18, note="x"), "payload", AppError.JSON_SHAPE, id="unknown-key"),
    pytest.param(pair(tmp_min=18), "payload", AppError.JSON_SHAPE, id="typo-key-alone"),
    pytest.param(pair(error="x"), "payload", AppError.JSON_SHAPE, id="answer-key"),
    pytest.param(
        pair(light={"mode": "on", "lux": 300}), "light", AppError.JSON_SHAPE, id="light-unknown-key"
    ),
    pytest.param(pair(**{"": 1}), "payload", AppError.JSON_SHAPE, id="empty-key"),
    # names: an update must name a known pair; any name must be text
    pytest.param(
        json.dumps({"species": "Enoki", "stage": "Pinning", "temp_min": 18}).encode(),
        "species",
        AppError.UNKNOWN_ENUM,
        id="update-species-enoki",
    ),
    pytest.param(
        json.dumps({"species": "Oyster", "stage": "Harvest", "co2_max": 900}).encode(),
        "stage",
        AppError.UNKNOWN_ENUM,
        id="update-stage-unknown",
    ),
    pytest.param(
        json.dumps({"species": "oyster", "stage": "Pinning", "co2_max": 900}).encode(),
        "species",
        AppError.UNKNOWN_ENUM,
        id="update-species-case",
    ),
    pytest.param(
        b'{"species":"Oyster\\u0000","stage":"Pinning"}',
        "species",
        AppError.JSON_SHAPE,
        id="query-species-nul",
    ),
    pytest.param(
        b'{"species":"Oyster","stage":"Pin\\nning","temp_min":18}',
        "stage",
        AppError.JSON_SHAPE,
        id="update-stage-newline",
    ),
    pytest.param(
        b'{"species":"\\ud800","stage":"Pinning"}', "payload", AppError.NOT_JSON, id="surrogate"
    ),
    pytest.param(
        b'{"species":"Oyster","stage":"Pinning","temp_min":18,"light":{"mode":"\\udfff"}}',
        "payload",
        AppError.NOT_JSON,
        id="surrogate-in-light",
    ),
    pytest.param(
        b'{"species":"Oyster","stage":"Pinning","\\ud83d":1}',
        "payload",
        AppError.NOT_JSON,
        id="surrogate-key",
    ),
    pytest.param(
        b'{"species":"Oyster","stage":"Pinning","x":"' + bytes.fromhex("eda080") + b'"}',
        "payload",
        AppError.NOT_JSON,
        id="surrogate-utf8",
    ),
]


@pytest.mark.parametrize(("payload", "field", "code"), THRESHOLDS_INVALID)
def test_stage_thresholds_rejects(payload: bytes, field: str, code: AppError) -> None:
    with pytest.raises(InvalidPayload) as exc:
        decode_thresholds_write(payload)
    assert exc.value.characteristic == "stage_thresholds"
    expect(exc, field, code)
    # the log line shows the reason, quoted, on one line
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "thresholds",
    [
        {"temp_min": -10, "temp_max": 50},
        {"temp_min": -10.0, "temp_max": -9.9},
        {"rh_min": 0, "rh_max": 100},
        {"co2_max": 400},
        {"co2_max": 10000.0},
        {"light_min": 0, "light_max": 65535},
        {"light": {}},
        {"light": {"mode": "CYCLE", "on_min": 0, "off_min": 1440}},
        {"expected_days": 0},
        {"expected_days": 365},
        {"temp_min": 19},  # one side of a pair alone: the controller merges it
    ],
)
def test_stage_thresholds_accepts_edges(thresholds: dict[str, Any]) -> None:
    for species in SPECIES:
        for stage_name in STAGES:
            payload = json.dumps({"species": species, "stage": stage_name, **thresholds})
            value = decode_thresholds_write(payload.encode())
            assert value == ThresholdsUpdate(species, stage_name, thresholds)
            assert value.to_controller() == (species, stage_name, thresholds)


def test_thresholds_class_unpack_wants_its_kind() -> None:
    with pytest.raises(InvalidPayload) as exc:
        ThresholdsQuery.unpack(pair(temp_min=18))
    expect(exc, "payload", AppError.JSON_SHAPE)
    with pytest.raises(InvalidPayload) as exc:
        ThresholdsUpdate.unpack(pair())
    expect(exc, "payload", AppError.JSON_SHAPE)


def test_thresholds_query_may_name_any_pair() -> None:
    """The controller may know pairs the tables do not; it answers "Stage not found" else."""
    for species, stage_name in [("Enoki", "Pinning"), ("Oyster", "Harvest"), ("Lion’s Mane", "x")]:
        payload = json.dumps({"species": species, "stage": stage_name}, ensure_ascii=False)
        assert decode_thresholds_write(payload.encode()) == ThresholdsQuery(species, stage_name)


def test_thresholds_update_constructor_checks_like_the_decoder() -> None:
    with pytest.raises(InvalidPayload) as exc:
        ThresholdsUpdate("Enoki", "Pinning", {"temp_min": 18})
    expect(exc, "species", AppError.UNKNOWN_ENUM)
    with pytest.raises(InvalidPayload) as exc:
        ThresholdsUpdate("Oyster", "Pinning", {"temp_min": 18, "note": "x"})
    expect(exc, "payload", AppError.JSON_SHAPE)
    with pytest.raises(InvalidPayload) as exc:
        ThresholdsUpdate("Oyster", "Pinning", {"co2_max": math.nan})
    expect(exc, "co2_max", AppError.OUT_OF_RANGE)
    with pytest.raises(InvalidPayload) as exc:
        ThresholdsUpdate("Oyster", "Pinning", {"rh_min": 80, "rh_max": 70})
    expect(exc, "rh_min", AppError.INCONSISTENT)
    with pytest.raises(InvalidPayload) as exc:
        ThresholdsQuery("Oyster\x00", "Pinning")
    expect(exc, "species", AppError.JSON_SHAPE)
    with pytest.raises(ValueError, match="at least one"):
        ThresholdsUpdate("Oyster", "Pinning", {})
    with pytest.raises(ValueError, match="fields of the update"):
        ThresholdsUpdate("Oyster", "Pinning", {"species": "Oyster", "temp_min": 18})


def test_thresholds_payload_at_the_cap_is_decoded() -> None:
    base = pair()
    payload = base[:-1] + b" " * (4096 - len(base)) + base[-1:]
    assert len(payload) == 4096
    assert decode_thresholds_write(payload) == ThresholdsQuery("Oyster", "Pinning")
    with pytest.raises(InvalidPayload) as exc:
        decode_thresholds_write(payload + b" ")
    expect(exc, "payload", AppError.TOO_LARGE)


# -- every rule, for every key: hypothesis -------------------------------------

_finite = st.floats(allow_nan=False, allow_infinity=False)


@given(st.sampled_from(sorted(NUMBER_RANGES)), st.one_of(_finite, st.integers()))
def test_every_number_in_range_passes_and_every_other_is_refused(key: str, value: float) -> None:
    lo, hi = NUMBER_RANGES[key]
    payload = pair(**{key: value})
    if lo <= value <= hi:
        expected = ThresholdsUpdate("Oyster", "Pinning", {key: value})
        assert decode_thresholds_write(payload) == expected
        return
    with pytest.raises(InvalidPayload) as exc:
        decode_thresholds_write(payload)
    expect(exc, key, AppError.OUT_OF_RANGE)


@given(st.sampled_from(MIN_MAX_PAIRS), st.data())
def test_every_min_max_pair_is_ordered(pair_keys: tuple[str, str], data: st.DataObject) -> None:
    low_key, high_key = pair_keys
    lo, hi = NUMBER_RANGES[low_key]
    low = data.draw(st.floats(lo, hi), label="low")
    high = data.draw(st.floats(lo, hi), label="high")
    payload = pair(**{low_key: low, high_key: high})
    if low < high:
        assert isinstance(decode_thresholds_write(payload), ThresholdsUpdate)
        return
    with pytest.raises(InvalidPayload) as exc:
        decode_thresholds_write(payload)
    expect(exc, low_key, AppError.INCONSISTENT)


@given(
    st.sampled_from(sorted(THRESHOLD_KEYS)),
    st.one_of(st.booleans(), st.none(), st.text(max_size=5), st.lists(st.integers(), max_size=2)),
)
def test_no_threshold_takes_a_bool_null_string_or_array(key: str, value: object) -> None:
    with pytest.raises(InvalidPayload) as exc:
        decode_thresholds_write(pair(**{key: value}))
    assert exc.value.app_code == AppError.JSON_SHAPE


_KNOWN_TOP_KEYS = {*THRESHOLD_KEYS, "species", "stage"}


@given(st.text(min_size=1, max_size=12).filter(lambda k: k not in _KNOWN_TOP_KEYS))
def test_every_unknown_key_is_refused(key: str) -> None:
    for extra in ({key: 1}, {key: 1, "temp_min": 18}):
        with pytest.raises(InvalidPayload) as exc:
            decode_thresholds_write(pair(**extra))
        # NOT_JSON when the key holds a lone surrogate
        assert exc.value.app_code in (AppError.JSON_SHAPE, AppError.NOT_JSON)


@given(
    st.text(min_size=1, max_size=12).filter(lambda s: s not in SPECIES),
    st.sampled_from(sorted(THRESHOLD_KEYS - {"light"})),
)
def test_an_update_for_an_unknown_species_never_decodes(species: str, key: str) -> None:
    lo, _hi = NUMBER_RANGES.get(key, (0, 0))
    value = int(lo) if key != "expected_days" else 1
    payload = json.dumps({"species": species, "stage": "Pinning", key: value}).encode()
    with pytest.raises(InvalidPayload) as exc:
        decode_thresholds_write(payload)
    assert exc.value.app_code in (AppError.UNKNOWN_ENUM, AppError.JSON_SHAPE, AppError.NOT_JSON)


# -- fuzzing: InvalidPayload or a valid controller dict, nothing else --------


def assert_valid_targets(value: ControlTargets) -> None:
    d = value.to_controller()
    assert set(d) == {"temp_min", "temp_max", "rh_min", "co2_max", "light"}
    assert -10.0 <= d["temp_min"] < d["temp_max"] <= 50.0
    assert 0.0 <= d["rh_min"] <= 100.0
    assert isinstance(d["co2_max"], int)
    assert 400 <= d["co2_max"] <= 10000
    light = d["light"]
    assert light["mode"] in ("off", "on", "cycle")
    if light["mode"] == "cycle":
        assert set(light) == {"mode", "on_min", "off_min"}
        assert 0 <= light["on_min"] <= 1440
        assert 0 <= light["off_min"] <= 1440
    else:
        assert set(light) == {"mode"}


def assert_valid_stage(value: StageState) -> None:
    d = value.to_controller()
    assert set(d) == {"mode", "species", "stage", "stage_start_ts", "expected_days"}
    assert d["mode"] in (0, 1, 2)
    assert d["species"] in (*SPECIES, "Unknown")
    assert d["stage"] in (*STAGES, "Unknown")
    assert NOW - YEAR <= d["stage_start_ts"] <= NOW
    assert 0 <= d["expected_days"] <= 365


def assert_valid_overrides(value: OverrideBits) -> None:
    d = value.to_controller()
    assert d["emergency_stop"] is False
    assert d["raw_bits"] & ~0x008F == 0
    for key in ("light_override", "fan_override", "mist_override", "heater_override"):
        assert isinstance(d[key], bool)
    assert d["light_override"] == bool(d["raw_bits"] & 1)
    assert d["disable_automation"] == bool(d["raw_bits"] & 0x80)


def assert_valid_thresholds(value: ThresholdsQuery | ThresholdsUpdate) -> None:
    if isinstance(value, ThresholdsQuery):
        species, stage_name = value.to_controller()
        for name in (species, stage_name):
            assert name.strip()
            assert all(ch >= " " and ch != "\x7f" and not "\ud800" <= ch <= "\udfff" for ch in name)
        return
    species, stage_name, thresholds = value.to_controller()
    assert species in SPECIES
    assert stage_name in STAGES
    assert thresholds
    assert set(thresholds) <= THRESHOLD_KEYS
    for key, (lo, hi) in NUMBER_RANGES.items():
        if key in thresholds:
            assert not isinstance(thresholds[key], bool)
            assert isinstance(thresholds[key], (int, float))
            assert lo <= thresholds[key] <= hi
    for low_key, high_key in MIN_MAX_PAIRS:
        if low_key in thresholds and high_key in thresholds:
            assert thresholds[low_key] < thresholds[high_key]
    if "expected_days" in thresholds:
        assert type(thresholds["expected_days"]) is int
        assert 0 <= thresholds["expected_days"] <= 365
    if "light" in thresholds:
        light = thresholds["light"]
        assert isinstance(light, dict)
        assert set(light) <= {"mode", "on_min", "off_min"}
        if "mode" in light:
            assert light["mode"].lower() in ("off", "on", "cycle")
        for key in ("on_min", "off_min"):
            if key in light:
                assert type(light[key]) is int
                assert 0 <= light[key] <= 1440
    json.dumps(thresholds, allow_nan=False).encode()
    assert decode_thresholds_write(value.pack()) == value


def sized(size: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=size + 4), st.binary(min_size=size, max_size=size))


@given(sized(15))
def test_fuzz_control_targets(data: bytes) -> None:
    try:
        value = ControlTargets.unpack(data)
    except InvalidPayload:
        return
    assert_valid_targets(value)


@given(
    st.one_of(
        sized(10),
        st.builds(
            stage,
            mode=st.integers(0, 255),
            species=st.integers(0, 255),
            stage_=st.integers(0, 255),
            start=st.integers(int(NOW) - YEAR - 5, int(NOW) + 5),
            days=st.integers(0, 0xFFFF),
            reserved=st.integers(0, 255),
        ),
    )
)
def test_fuzz_stage_state(data: bytes) -> None:
    try:
        value = StageState.unpack(data, now=now)
    except InvalidPayload:
        return
    assert_valid_stage(value)


@given(sized(2))
def test_fuzz_override_bits(data: bytes) -> None:
    try:
        value = OverrideBits.unpack(data)
    except InvalidPayload:
        return
    assert_valid_overrides(value)


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_threshold_values = st.one_of(
    _json_values,
    st.integers(-2, 400),
    st.floats(-50, 50),
    st.dictionaries(
        st.sampled_from(["mode", "on_min", "off_min", "x"]),
        st.one_of(st.sampled_from(["off", "ON", "cycle", "x"]), st.integers(-2, 1500)),
    ),
)
_threshold_objects = st.builds(
    lambda pair_, extra: {**extra, **pair_},
    st.one_of(
        st.just({"species": "Oyster", "stage": "Pinning"}),
        st.fixed_dictionaries(
            {},
            optional={
                "species": st.one_of(st.just("Lion's Mane"), _json_values),
                "stage": st.one_of(st.just("Fruiting"), _json_values),
            },
        ),
    ),
    st.dictionaries(
        st.sampled_from(sorted({*THRESHOLD_KEYS, "mode", "note"})), _threshold_values, max_size=3
    ),
)


@given(
    st.one_of(
        st.binary(max_size=64),
        _json_values.map(lambda v: json.dumps(v).encode()),
        _threshold_objects.map(lambda v: json.dumps(v).encode()),
    )
)
def test_fuzz_stage_thresholds(data: bytes) -> None:
    try:
        value = decode_thresholds_write(data)
    except InvalidPayload:
        return
    assert_valid_thresholds(value)
