"""override_bits: 2 bytes ``<H`` (write only) — manual relay overrides.

Only bits 0..3 (light, fan, mist, heater) and 7 (disable automation) exist;
any other bit is refused rather than guessed at, because an override drives
mains relays.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import ClassVar, Self, TypedDict

import attrs

from ._coerce import BytesLike, check_length, flag, is_bool
from .errors import AppError, InvalidPayload
from .uuids import OVERRIDE_BITS

__all__ = ["ACCEPTED_MASK", "OverrideBits", "OverridesDict"]

_STRUCT = struct.Struct("<H")

LIGHT = 1 << 0
FAN = 1 << 1
MIST = 1 << 2
HEATER = 1 << 3
DISABLE_AUTOMATION = 1 << 7
ACCEPTED_MASK = LIGHT | FAN | MIST | HEATER | DISABLE_AUTOMATION
"""0x008F: the bits a write may set."""


class OverridesDict(TypedDict):
    """What ``apply_overrides`` receives."""

    light_override: bool
    fan_override: bool
    mist_override: bool
    heater_override: bool
    disable_automation: bool
    emergency_stop: bool
    raw_bits: int


@attrs.frozen
class OverrideBits:
    """One override write."""

    SIZE: ClassVar[int] = _STRUCT.size
    CHARACTERISTIC: ClassVar[str] = OVERRIDE_BITS

    light: bool = attrs.field(default=False, validator=is_bool)
    fan: bool = attrs.field(default=False, validator=is_bool)
    mist: bool = attrs.field(default=False, validator=is_bool)
    heater: bool = attrs.field(default=False, validator=is_bool)
    disable_automation: bool = attrs.field(default=False, validator=is_bool)

    @property
    def bits(self) -> int:
        return (
            (LIGHT if self.light else 0)
            | (FAN if self.fan else 0)
            | (MIST if self.mist else 0)
            | (HEATER if self.heater else 0)
            | (DISABLE_AUTOMATION if self.disable_automation else 0)
        )

    @classmethod
    def from_bits(cls, bits: int) -> Self:
        """From a raw u16; raises :class:`InvalidPayload` (0x83) for bits outside 0x008F."""
        extra = bits & ~ACCEPTED_MASK
        if extra:
            raise InvalidPayload(
                cls.CHARACTERISTIC,
                "bits",
                f"0x{bits:04x} sets bits 0x{extra:04x} outside mask 0x{ACCEPTED_MASK:04x}",
                AppError.FORBIDDEN_BITS,
            )
        return cls(
            light=bool(bits & LIGHT),
            fan=bool(bits & FAN),
            mist=bool(bits & MIST),
            heater=bool(bits & HEATER),
            disable_automation=bool(bits & DISABLE_AUTOMATION),
        )

    @classmethod
    def from_controller(cls, data: Mapping[str, object] | None) -> Self:
        """From an ``apply_overrides``-shaped dict (for test centrals); ``raw_bits`` ignored."""
        d: Mapping[str, object] = data if isinstance(data, Mapping) else {}
        return cls(
            light=flag(d.get("light_override")),
            fan=flag(d.get("fan_override")),
            mist=flag(d.get("mist_override")),
            heater=flag(d.get("heater_override")),
            disable_automation=flag(d.get("disable_automation")),
        )

    def to_controller(self) -> OverridesDict:
        """The dict ``apply_overrides`` gets; there is no wire bit for emergency stop."""
        return {
            "light_override": self.light,
            "fan_override": self.fan,
            "mist_override": self.mist,
            "heater_override": self.heater,
            "disable_automation": self.disable_automation,
            "emergency_stop": False,
            "raw_bits": self.bits,
        }

    def pack(self) -> bytes:
        return _STRUCT.pack(self.bits)

    @classmethod
    def unpack(cls, data: BytesLike) -> Self:
        """Decode and validate a write; raises :class:`InvalidPayload`."""
        check_length(cls.CHARACTERISTIC, data, cls.SIZE)
        (bits,) = _STRUCT.unpack(data)
        return cls.from_bits(bits)
