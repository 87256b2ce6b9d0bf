"""The one error a payload decoder raises, and the ATT application codes it carries.

A rejected write must become a precise ATT error on the phone, not a silent
drop, so every decoder failure says which characteristic and field were
wrong, why, and what kind of refusal it is: a wrong length
(``app_code`` None, ATT 0x0D) or an application code 0x80..0x9F. The GATT
layer (``mushpi_ble.gatt.errors.refusal``) alone turns that into a BlueZ
error; the protocol knows no D-Bus.

Application error codes (ATT 0x80..0x9F, MushPi-specific):

====  =========================================================================
code  meaning
====  =========================================================================
0x80  unspecified failure
0x81  value out of range
0x82  inconsistent fields (temp_min >= temp_max)
0x83  reserved or forbidden bits set (override mask 0x008F)
0x84  timestamp in the future
0x85  timestamp too old (more than 365 days)
0x86  unknown enumerated value (control mode, light mode)
0x87  not UTF-8 or not JSON
0x88  JSON shape wrong (not an object, missing or wrongly typed keys)
0x89  payload too large
0x8A  the controller refused or failed to apply a valid value
0x8B  the controller did not answer within the handler deadline
====  =========================================================================
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "APP_ERROR_DESCRIPTIONS",
    "AppError",
    "InvalidPayload",
]

class AppError(enum.IntEnum):
    """ATT application error codes sent in a ``Failed`` reply (see module docstring)."""

    UNSPECIFIED = 0x80
    OUT_OF_RANGE = 0x81
    INCONSISTENT = 0x82
    FORBIDDEN_BITS = 0x83
    TIMESTAMP_IN_FUTURE = 0x84
    TIMESTAMP_TOO_OLD = 0x85
    UNKNOWN_ENUM = 0x86
    NOT_JSON = 0x87
    JSON_SHAPE = 0x88
    TOO_LARGE = 0x89
    CONTROLLER_FAILED = 0x8A
    CONTROLLER_TIMEOUT = 0x8B


APP_ERROR_DESCRIPTIONS: Mapping[AppError, str] = MappingProxyType(
    {
        AppError.UNSPECIFIED: "unspecified failure",
        AppError.OUT_OF_RANGE: "value out of range",
        AppError.INCONSISTENT: "inconsistent fields (temp_min >= temp_max)",
        AppError.FORBIDDEN_BITS: "reserved or forbidden bits set (override mask 0x008F)",
        AppError.TIMESTAMP_IN_FUTURE: "timestamp in the future",
        AppError.TIMESTAMP_TOO_OLD: "timestamp too old (more than 365 days)",
        AppError.UNKNOWN_ENUM: "unknown enumerated value (control mode, light mode)",
        AppError.NOT_JSON: "not UTF-8 or not JSON",
        AppError.JSON_SHAPE: "JSON shape wrong (not an object, missing or wrongly typed keys)",
        AppError.TOO_LARGE: "payload too large",
        AppError.CONTROLLER_FAILED: "the controller refused or failed to apply a valid value",
        AppError.CONTROLLER_TIMEOUT: "the controller did not answer within the handler deadline",
    }
)


class InvalidPayload(ValueError):
    """A written payload was refused; carries what the GATT layer needs to answer.

    ``app_code`` is None exactly for length errors; every other refusal
    carries an :class:`AppError`.
    """

    characteristic: str
    field: str
    reason: str
    app_code: AppError | None

    def __init__(
        self,
        characteristic: str,
        field: str,
        reason: str,
        app_code: AppError | None,
    ) -> None:
        self.characteristic = characteristic
        self.field = field
        self.reason = reason
        self.app_code = app_code
        super().__init__(self._describe())

    @classmethod
    def wrong_length(cls, characteristic: str, expected: int, got: int) -> InvalidPayload:
        """A fixed-size payload of the wrong size."""
        return cls(characteristic, "length", f"expected {expected} bytes, got {got}", None)

    @property
    def detail(self) -> str:
        """Human text, ``"field: reason"``."""
        return f"{self.field}: {self.reason}"

    def _describe(self) -> str:
        code = "length" if self.app_code is None else f"0x{int(self.app_code):02x}"
        return f"{self.characteristic}: {code} {self.detail}"

    def __reduce__(self) -> tuple[type[InvalidPayload], tuple[str, str, str, AppError | None]]:
        return (type(self), (self.characteristic, self.field, self.reason, self.app_code))
