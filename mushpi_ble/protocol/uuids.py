"""UUIDs of the MushPi GATT service and its characteristics (wire contract).

The phone app finds the device and every characteristic by these exact
UUIDs; the names are the project's own handles for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "ACTUATOR_STATUS",
    "CHARACTERISTIC_NAMES",
    "CHARACTERISTIC_UUIDS",
    "CONTROL_TARGETS",
    "ENV_MEASUREMENTS",
    "OVERRIDE_BITS",
    "SERVICE_UUID",
    "STAGE_STATE",
    "STAGE_THRESHOLDS",
    "STATUS_FLAGS",
]

SERVICE_UUID = "12345678-1234-5678-1234-56789abcdef0"

ENV_MEASUREMENTS = "env_measurements"
CONTROL_TARGETS = "control_targets"
STAGE_STATE = "stage_state"
OVERRIDE_BITS = "override_bits"
STATUS_FLAGS = "status_flags"
ACTUATOR_STATUS = "actuator_status"
STAGE_THRESHOLDS = "stage_thresholds"

_PREFIX = "12345678-1234-5678-1234-56789abcdef"

CHARACTERISTIC_UUIDS: Mapping[str, str] = MappingProxyType(
    {
        ENV_MEASUREMENTS: _PREFIX + "1",
        CONTROL_TARGETS: _PREFIX + "2",
        STAGE_STATE: _PREFIX + "3",
        OVERRIDE_BITS: _PREFIX + "4",
        STATUS_FLAGS: _PREFIX + "5",
        ACTUATOR_STATUS: _PREFIX + "6",
        STAGE_THRESHOLDS: _PREFIX + "9",
    }
)
"""Characteristic name to UUID (lower case, as BlueZ reports them)."""

CHARACTERISTIC_NAMES: Mapping[str, str] = MappingProxyType(
    {uuid: name for name, uuid in CHARACTERISTIC_UUIDS.items()}
)
"""UUID (lower case) to characteristic name."""
