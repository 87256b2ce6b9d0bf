"""A generic BlueZ GATT peripheral: services as data, exported and registered.

Knows BlueZ; knows nothing of mushrooms.
"""

from .application import GattApplication
from .errors import (
    GattError,
    failed,
    invalid_offset,
    invalid_value_length,
    refusal,
)
from .model import (
    Characteristic,
    GattDefinitionError,
    IncompleteValue,
    Service,
    normalise_uuid,
    validate_services,
)
from .requests import ReadRequest, WriteRequest
from .state import CharacteristicState

__all__ = [
    "Characteristic",
    "CharacteristicState",
    "GattApplication",
    "GattDefinitionError",
    "GattError",
    "IncompleteValue",
    "ReadRequest",
    "Service",
    "WriteRequest",
    "failed",
    "invalid_offset",
    "invalid_value_length",
    "normalise_uuid",
    "refusal",
    "validate_services",
]
