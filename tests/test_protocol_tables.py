"""UUIDs, name tables, status bits and the error type."""

from __future__ import annotations

import pickle
import uuid

import pytest

from mushpi_ble.protocol import (
    APP_ERROR_DESCRIPTIONS,
    CHARACTERISTIC_NAMES,
    CHARACTERISTIC_UUIDS,
    NOTIFYING,
    REQUIRED_BY_APP,
    SERVICE_UUID,
    WRITABLE,
    AppError,
    InvalidPayload,
    StatusFlag,
    light_mode_id,
    light_mode_name,
    mode_id,
    mode_name,
    species_id,
    species_name,
    stage_id,
    stage_name,
)


def test_service_and_characteristic_uuids() -> None:
    assert SERVICE_UUID == "12345678-1234-5678-1234-56789abcdef0"
    assert dict(CHARACTERISTIC_UUIDS) == {
        "env_measurements": "12345678-1234-5678-1234-56789abcdef1",
        "control_targets": "12345678-1234-5678-1234-56789abcdef2",
        "stage_state": "12345678-1234-5678-1234-56789abcdef3",
        "override_bits": "12345678-1234-5678-1234-56789abcdef4",
        "status_flags": "12345678-1234-5678-1234-56789abcdef5",
        "actuator_status": "12345678-1234-5678-1234-56789abcdef6",
        "stage_thresholds": "12345678-1234-5678-1234-56789abcdef9",
    }
    for value in (SERVICE_UUID, *CHARACTERISTIC_UUIDS.values()):
        assert str(uuid.UUID(value)) == value  # canonical lower-case form
    assert {CHARACTERISTIC_NAMES[u]: u for u in CHARACTERISTIC_NAMES} == dict(CHARACTERISTIC_UUIDS)


def test_characteristic_groups() -> None:
    assert set(REQUIRED_BY_APP) == set(CHARACTERISTIC_UUIDS) - {"actuator_status"}
    assert len(REQUIRED_BY_APP) == 6
    assert NOTIFYING == ("env_measurements", "status_flags", "actuator_status")
    assert set(WRITABLE) == {"control_targets", "stage_state", "override_bits", "stage_thresholds"}


def test_species_and_stage_names() -> None:
    assert [species_id(n) for n in ("Oyster", "Shiitake", "Lion's Mane")] == [1, 2, 3]
    assert species_id("oyster") == 0  # case-sensitive
    assert species_id("Harvest") == 0
    assert species_id(None) == 0
    assert species_id(1) == 0
    assert [species_name(i) for i in (0, 1, 2, 3, 4, 255)] == [
        "Unknown",
        "Oyster",
        "Shiitake",
        "Lion's Mane",
        "Unknown",
        "Unknown",
    ]
    assert [stage_id(n) for n in ("Incubation", "Pinning", "Fruiting", "Harvest")] == [1, 2, 3, 0]
    assert stage_id("pinning") == 0
    assert [stage_name(i) for i in (0, 1, 2, 3, 9)] == [
        "Unknown",
        "Incubation",
        "Pinning",
        "Fruiting",
        "Unknown",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("FULL", 0),
        ("semi", 1),
        ("Manual", 2),
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 0),
        (-1, 0),
        (True, 0),
        ("AUTO", 0),
        (None, 0),
        (1.0, 0),
    ],
)
def test_mode_id(value: object, expected: int) -> None:
    assert mode_id(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("off", 0),
        ("ON", 1),
        ("Cycle", 2),
        (True, 1),
        (False, 0),
        (2, 2),
        (5, 0),
        ("strobe", 0),
        (None, 0),
    ],
)
def test_light_mode_id(value: object, expected: int) -> None:
    assert light_mode_id(value) == expected


def test_mode_and_light_mode_names() -> None:
    assert [mode_name(i) for i in (0, 1, 2, 3)] == ["FULL", "SEMI", "MANUAL", "Unknown"]
    assert [light_mode_name(i) for i in (0, 1, 2, 3)] == ["off", "on", "cycle", "Unknown"]


def test_status_flag_bits() -> None:
    assert [int(f) for f in StatusFlag] == [1 << i for i in range(10)]
    assert int(StatusFlag.SENSOR_ERROR) == 0x001
    assert int(StatusFlag.CONNECTIVITY) == 0x010
    assert int(StatusFlag.SIMULATION) == 0x080
    assert int(StatusFlag.HEATER_ON) == 0x200


def test_app_error_table() -> None:
    assert [int(c) for c in AppError] == list(range(0x80, 0x8C))
    assert set(APP_ERROR_DESCRIPTIONS) == set(AppError)
    assert all(0x80 <= c <= 0x9F for c in AppError)


def test_value_error_carries_the_code() -> None:
    exc = InvalidPayload(
        "control_targets", "temp_min", "must be below temp_max (250 >= 240)", AppError.INCONSISTENT
    )
    assert isinstance(exc, ValueError)
    assert exc.app_code == 0x82
    assert exc.detail == "temp_min: must be below temp_max (250 >= 240)"
    assert str(exc) == "control_targets: 0x82 temp_min: must be below temp_max (250 >= 240)"


def test_length_error() -> None:
    exc = InvalidPayload.wrong_length("stage_state", 10, 9)
    assert exc.app_code is None
    assert exc.field == "length"
    assert exc.detail == "length: expected 10 bytes, got 9"


def test_invalid_payload_pickles() -> None:
    exc = InvalidPayload("override_bits", "bits", "bit 15", AppError.FORBIDDEN_BITS)
    back = pickle.loads(pickle.dumps(exc))
    assert (back.characteristic, back.field, back.reason, back.app_code) == (
        "override_bits",
        "bits",
        "bit 15",
        AppError.FORBIDDEN_BITS,
    )
    assert str(back) == str(exc)
