"""actuator_status: 6 bytes ``<H4B`` — relay bits, then reason bytes fan, mist, light, heater.

Note the two different orders: relay bits are light, fan, mist, heater
(bits 0..3) but the reason bytes follow fan, mist, light, heater.
Reason codes are opaque to the BLE layer.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import ClassVar, Self, TypedDict

import attrs

from ._coerce import U8_MAX, BytesLike, check_length, flag, int_range, is_bool, truncated
from .uuids import ACTUATOR_STATUS

__all__ = ["ActuatorState", "ActuatorStatus"]

_STRUCT = struct.Struct("<H4B")

_LIGHT, _FAN, _MIST, _HEATER = 1 << 0, 1 << 1, 1 << 2, 1 << 3


class ActuatorState(TypedDict):
    """The relay part of a ``get_control_data()`` dict."""

    light: bool
    fan: bool
    mist: bool
    heater: bool
    fan_reason: int
    mist_reason: int
    light_reason: int
    heater_reason: int


_REASON = int_range(0, U8_MAX)


@attrs.frozen
class ActuatorStatus:
    """Relay states and the controller's reason code for each."""

    SIZE: ClassVar[int] = _STRUCT.size
    CHARACTERISTIC: ClassVar[str] = ACTUATOR_STATUS

    light: bool = attrs.field(default=False, validator=is_bool)
    fan: bool = attrs.field(default=False, validator=is_bool)
    mist: bool = attrs.field(default=False, validator=is_bool)
    heater: bool = attrs.field(default=False, validator=is_bool)
    fan_reason: int = attrs.field(default=0, validator=_REASON)
    mist_reason: int = attrs.field(default=0, validator=_REASON)
    light_reason: int = attrs.field(default=0, validator=_REASON)
    heater_reason: int = attrs.field(default=0, validator=_REASON)

    @classmethod
    def from_controller(cls, data: Mapping[str, object] | None) -> Self:
        """From ``get_control_data()``: missing keys → False/0, reasons clamped to 0..255."""
        d: Mapping[str, object] = data if isinstance(data, Mapping) else {}
        return cls(
            light=flag(d.get("light")),
            fan=flag(d.get("fan")),
            mist=flag(d.get("mist")),
            heater=flag(d.get("heater")),
            fan_reason=truncated(d.get("fan_reason"), 1, 0, U8_MAX),
            mist_reason=truncated(d.get("mist_reason"), 1, 0, U8_MAX),
            light_reason=truncated(d.get("light_reason"), 1, 0, U8_MAX),
            heater_reason=truncated(d.get("heater_reason"), 1, 0, U8_MAX),
        )

    def to_controller(self) -> ActuatorState:
        return {
            "light": self.light,
            "fan": self.fan,
            "mist": self.mist,
            "heater": self.heater,
            "fan_reason": self.fan_reason,
            "mist_reason": self.mist_reason,
            "light_reason": self.light_reason,
            "heater_reason": self.heater_reason,
        }

    @property
    def relay_bits(self) -> int:
        return (
            (_LIGHT if self.light else 0)
            | (_FAN if self.fan else 0)
            | (_MIST if self.mist else 0)
            | (_HEATER if self.heater else 0)
        )

    def pack(self) -> bytes:
        return _STRUCT.pack(
            self.relay_bits,
            self.fan_reason,
            self.mist_reason,
            self.light_reason,
            self.heater_reason,
        )

    @classmethod
    def unpack(cls, data: BytesLike) -> Self:
        """Decode a notification; relay bits above bit 3 are ignored."""
        check_length(cls.CHARACTERISTIC, data, cls.SIZE)
        bits, fan_r, mist_r, light_r, heater_r = _STRUCT.unpack(data)
        return cls(
            light=bool(bits & _LIGHT),
            fan=bool(bits & _FAN),
            mist=bool(bits & _MIST),
            heater=bool(bits & _HEATER),
            fan_reason=fan_r,
            mist_reason=mist_r,
            light_reason=light_r,
            heater_reason=heater_r,
        )
