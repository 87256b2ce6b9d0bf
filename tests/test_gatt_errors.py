"""The one mapping of a refused value to the BlueZ error bluetoothd turns into ATT."""

from __future__ import annotations

import pytest

from mushpi_ble.gatt import GattError, failed, refusal
from mushpi_ble.protocol import AppError, ControlTargets, InvalidPayload


def bluetoothd_ecode(message: str) -> int:
    """What bluetoothd >= 5.66 makes of a Failed message (strtol base 0, whole string)."""
    try:
        code = int(message, 0)
    except ValueError:
        return 0x80
    return code if 0x80 <= code <= 0x9F else 0x0E


def test_an_application_code_is_failed_with_the_bare_code() -> None:
    error = refusal(AppError.INCONSISTENT, "temp_min: must be below temp_max")
    assert isinstance(error, GattError)
    assert error.name == "org.bluez.Error.Failed"
    assert error.text == "0x82"
    for code in AppError:
        assert bluetoothd_ecode(refusal(code, "why").text) == code


def test_a_wrong_length_is_invalid_value_length_with_the_reason() -> None:
    exc = InvalidPayload.wrong_length("stage_state", 10, 9)
    error = refusal(exc.app_code, exc.detail)
    assert error.name == "org.bluez.Error.InvalidValueLength"
    assert error.text == "length: expected 10 bytes, got 9"


def test_a_decoder_refusal_maps_through_the_same_function() -> None:
    payload = bytes.fromhex("fa00 f000 bc02 8813 00 0000 0000 0000")  # temp_min 25.0 > max 24.0
    with pytest.raises(InvalidPayload) as exc:
        ControlTargets.unpack(payload)
    error = refusal(exc.value.app_code, exc.value.detail)
    assert (error.name, error.text) == ("org.bluez.Error.Failed", "0x82")


def test_codes_outside_the_application_range_are_refused() -> None:
    with pytest.raises(ValueError):
        failed(0x0E)
    with pytest.raises(ValueError):
        refusal(0xA0, "not an application code")
