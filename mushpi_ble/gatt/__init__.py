"""A generic BlueZ GATT peripheral: services as data, exported and registered.

Knows BlueZ; knows nothing of mushrooms.
"""

from .application import GattApplication
from .errors import (
    GattError,
    failed,
    invalid_offset,
    invalid_value_length,
    not_permitted,
    refusal,
)
from .model import (
    Characteristic,
    Descriptor,
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
    "Descriptor",
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
    "not_permitted",
    "refusal",
    "validate_services",
]
