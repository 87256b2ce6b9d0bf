"""control_targets: 15 bytes ``<hhHHBHHH`` — the climate and light set points.

Reads encode whatever the controller says (clamped to the wire types only:
the controller is the source of truth); writes from the phone are checked
against the ranges of the wire contract before they reach the controller.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import ClassVar, NotRequired, Self, TypedDict

import attrs

from ._coerce import S16_MAX, S16_MIN, U16_MAX, BytesLike, check_length, int_range, rounded
from .errors import AppError, InvalidPayload
from .names import LightMode, light_mode_id, light_mode_name
from .uuids import CONTROL_TARGETS

__all__ = ["ControlTargets", "ControlTargetsDict", "LightDict"]

_STRUCT = struct.Struct("<hhHHBHHH")

TEMP_RANGE = (-100, 500)
"""Valid temp_min/temp_max on write, °C x 10."""
RH_RANGE = (0, 1000)
"""Valid rh_min on write, %RH x 10."""
CO2_RANGE = (400, 10000)
"""Valid co2_max on write, ppm."""
MINUTES_RANGE = (0, 1440)
"""Valid light on/off minutes on write."""


class LightDict(TypedDict):
    mode: str
    on_min: NotRequired[int]
    off_min: NotRequired[int]


class ControlTargetsDict(TypedDict):
    """What ``set_control_targets`` receives."""

    temp_min: float
    temp_max: float
    rh_min: float
    co2_max: int
    light: LightDict


_S16 = int_range(S16_MIN, S16_MAX)
_U16 = int_range(0, U16_MAX)


@attrs.frozen
class ControlTargets:
    """Set points in wire units (x10 for temperature and humidity)."""

    SIZE: ClassVar[int] = _STRUCT.size
    CHARACTERISTIC: ClassVar[str] = CONTROL_TARGETS

    temp_min_x10: int = attrs.field(validator=_S16)
    temp_max_x10: int = attrs.field(validator=_S16)
    rh_min_x10: int = attrs.field(validator=_U16)
    co2_max: int = attrs.field(validator=_U16)
    light_mode: int = attrs.field(default=0, validator=int_range(0, len(LightMode) - 1))
    on_minutes: int = attrs.field(default=0, validator=_U16)
    """Only meaningful in cycle mode."""
    off_minutes: int = attrs.field(default=0, validator=_U16)
    """Only meaningful in cycle mode."""

    DEFAULT: ClassVar[ControlTargets]
    """What a read answers when the controller has nothing: 20.0, 28.0, 70.0, 5000, off."""

    @classmethod
    def from_controller(cls, data: Mapping[str, object] | None) -> Self:
        """From ``get_control_targets()``; missing, None or unusable values keep the default.

        ``light`` may be a dict with ``mode``/``on_min``/``off_min``, a bool
        (True → on) or a mode string; minutes count only in cycle mode.
        """
        d: Mapping[str, object] = data if isinstance(data, Mapping) else {}
        dflt = ControlTargets.DEFAULT
        mode, on_min, off_min = _light_from_controller(d.get("light"))
        return cls(
            temp_min_x10=rounded(d.get("temp_min"), 10, S16_MIN, S16_MAX, dflt.temp_min_x10),
            temp_max_x10=rounded(d.get("temp_max"), 10, S16_MIN, S16_MAX, dflt.temp_max_x10),
            rh_min_x10=rounded(d.get("rh_min"), 10, 0, U16_MAX, dflt.rh_min_x10),
            co2_max=rounded(d.get("co2_max"), 1, 0, U16_MAX, dflt.co2_max),
            light_mode=mode,
            on_minutes=on_min,
            off_minutes=off_min,
        )

    def to_controller(self) -> ControlTargetsDict:
        """The dict ``set_control_targets`` gets; on/off minutes only for cycle."""
        light: LightDict = {"mode": light_mode_name(self.light_mode)}
        if self.light_mode == LightMode.CYCLE:
            light["on_min"] = self.on_minutes
            light["off_min"] = self.off_minutes
        return {
            "temp_min": self.temp_min_x10 / 10,
            "temp_max": self.temp_max_x10 / 10,
            "rh_min": self.rh_min_x10 / 10,
            "co2_max": self.co2_max,
            "light": light,
        }

    def pack(self) -> bytes:
        return _STRUCT.pack(
            self.temp_min_x10,
            self.temp_max_x10,
            self.rh_min_x10,
            self.co2_max,
            self.light_mode,
            self.on_minutes,
            self.off_minutes,
            0,
        )

    @classmethod
    def unpack(cls, data: BytesLike) -> Self:
        """Decode and validate a write; raises :class:`InvalidPayload`."""
        check_length(cls.CHARACTERISTIC, data, cls.SIZE)
        t_min, t_max, rh_min, co2_max, mode, on_min, off_min, _reserved = _STRUCT.unpack(data)
        _check_range("temp_min", t_min, TEMP_RANGE)
        _check_range("temp_max", t_max, TEMP_RANGE)
        _check_range("rh_min", rh_min, RH_RANGE)
        _check_range("co2_max", co2_max, CO2_RANGE)
        if mode > LightMode.CYCLE:
            raise InvalidPayload(
                cls.CHARACTERISTIC,
                "light_mode",
                f"unknown light mode {mode} (0 off, 1 on, 2 cycle)",
                AppError.UNKNOWN_ENUM,
            )
        _check_range("on_minutes", on_min, MINUTES_RANGE)
        _check_range("off_minutes", off_min, MINUTES_RANGE)
        if t_min >= t_max:
            raise InvalidPayload(
                cls.CHARACTERISTIC,
                "temp_min",
                f"must be below temp_max ({t_min} >= {t_max})",
                AppError.INCONSISTENT,
            )
        return cls(t_min, t_max, rh_min, co2_max, mode, on_min, off_min)


ControlTargets.DEFAULT = ControlTargets(200, 280, 700, 5000, 0, 0, 0)


def _light_from_controller(light: object) -> tuple[int, int, int]:
    if isinstance(light, Mapping):
        mode = light_mode_id(light.get("mode"))
        if mode == LightMode.CYCLE:
            return (
                mode,
                rounded(light.get("on_min"), 1, 0, U16_MAX),
                rounded(light.get("off_min"), 1, 0, U16_MAX),
            )
        return mode, 0, 0
    # A bool, a bare mode name or id: no schedule, so a bare "cycle" reads 0/0.
    return light_mode_id(light), 0, 0


def _check_range(field: str, value: int, bounds: tuple[int, int]) -> None:
    lo, hi = bounds
    if not lo <= value <= hi:
        raise InvalidPayload(
            CONTROL_TARGETS, field, f"{value} is outside {lo}..{hi}", AppError.OUT_OF_RANGE
        )
