"""env_measurements: 12 bytes ``<HhHHI`` — co2, temperature x10, RH x10, light, uptime.

Published every monitor tick, so encoding never fails: a missing or broken
reading becomes 0 and everything is clamped (never wrapped) to its type.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import ClassVar, Self, TypedDict, cast

import attrs

from ._coerce import (
    S16_MAX,
    S16_MIN,
    U16_MAX,
    U32_MAX,
    BytesLike,
    check_length,
    finite,
    int_range,
    truncated,
)
from .uuids import ENV_MEASUREMENTS

__all__ = ["EnvMeasurement", "SensorReadings"]

_STRUCT = struct.Struct("<HhHHI")


class SensorReadings(TypedDict):
    """Readings in the units of the controller's ``get_sensor_data``."""

    temperature: float
    humidity: float
    co2: int
    light: int


@attrs.frozen
class EnvMeasurement:
    """One env_measurements packet, fields in wire units and wire order."""

    SIZE: ClassVar[int] = _STRUCT.size
    CHARACTERISTIC: ClassVar[str] = ENV_MEASUREMENTS

    co2: int = attrs.field(validator=int_range(0, U16_MAX))
    """ppm."""
    temperature_x10: int = attrs.field(validator=int_range(S16_MIN, S16_MAX))
    """°C x 10."""
    humidity_x10: int = attrs.field(validator=int_range(0, U16_MAX))
    """%RH x 10."""
    light: int = attrs.field(validator=int_range(0, U16_MAX))
    """Raw sensor value."""
    uptime_ms: int = attrs.field(validator=int_range(0, U32_MAX))
    """Milliseconds since the BLE service started."""

    @classmethod
    def from_readings(
        cls,
        temperature: object,
        humidity: object,
        co2: object,
        light: object,
        uptime_ms: object,
    ) -> Self:
        """Encode readings as today's server did: bad → 0, x10 truncated, clamped."""
        return cls(
            co2=truncated(co2, 1, 0, U16_MAX),
            temperature_x10=truncated(temperature, 10, S16_MIN, S16_MAX),
            humidity_x10=truncated(humidity, 10, 0, U16_MAX),
            light=truncated(light, 1, 0, U16_MAX),
            uptime_ms=truncated(uptime_ms, 1, 0, U32_MAX),
        )

    @classmethod
    def from_controller(cls, data: Mapping[str, object] | None, uptime_ms: object) -> Self:
        """From a ``get_sensor_data()`` dict (None or missing keys → 0)."""
        d: Mapping[str, object] = data if isinstance(data, Mapping) else {}
        return cls.from_readings(
            d.get("temperature"), d.get("humidity"), d.get("co2"), d.get("light"), uptime_ms
        )

    @property
    def temperature(self) -> float:
        """°C."""
        return self.temperature_x10 / 10

    @property
    def humidity(self) -> float:
        """%RH."""
        return self.humidity_x10 / 10

    def to_controller(self) -> SensorReadings:
        """As a ``get_sensor_data()`` dict (for test centrals and logs)."""
        return {
            "temperature": self.temperature,
            "humidity": self.humidity,
            "co2": self.co2,
            "light": self.light,
        }

    def pack(self) -> bytes:
        return _STRUCT.pack(
            self.co2, self.temperature_x10, self.humidity_x10, self.light, self.uptime_ms
        )

    @classmethod
    def unpack(cls, data: BytesLike) -> Self:
        """Decode a notification; only the length can be wrong."""
        check_length(cls.CHARACTERISTIC, data, cls.SIZE)
        co2, temp, rh, light, uptime = _STRUCT.unpack(data)
        return cls(co2, temp, rh, light, uptime)


_INF = math.inf
READINGS = ("temperature", "humidity", "co2", "light")


def _unusable(value: object) -> bool:
    kind = type(value)
    if kind is int or value is None:
        return False
    if kind is float:
        x = cast(float, value)
        return x != x or x == _INF or x == -_INF
    return finite(value) is None


def unusable_readings(temperature: object, humidity: object, co2: object,
                      light: object) -> tuple[str, ...]:
    """The readings that are given (not None) yet are no finite number: "hot", NaN, a
    stray bool. A packet with such a reading would tell the phone a plausible 0."""
    values = (temperature, humidity, co2, light)
    return tuple(name for name, v in zip(READINGS, values, strict=True) if _unusable(v))


def _fast_field(value: object, scale: int, lo: int, hi: int) -> int:
    """:func:`truncated` for the common exact types, without the generic checks."""
    kind = type(value)
    if kind is float:
        x = cast(float, value)
        if x != x or x == _INF or x == -_INF:  # NaN or infinite reading: unusable
            return 0
        scaled = x * scale
        if scaled >= hi:
            return hi
        if scaled <= lo:
            return lo
        return int(scaled)
    if kind is int:
        scaled_int = cast(int, value) * scale
        return hi if scaled_int > hi else lo if scaled_int < lo else int(scaled_int)
    return truncated(value, scale, lo, hi)


def encode_env(temperature: object, humidity: object, co2: object, light: object,
               uptime_ms: object) -> bytes:
    """The 12-byte packet, byte-identical to ``EnvMeasurement.from_readings(...).pack()``.

    The controller publishes every tick from its own thread; this path skips
    the value object so a publish costs a few microseconds.
    """
    return _STRUCT.pack(
        _fast_field(co2, 1, 0, U16_MAX),
        _fast_field(temperature, 10, S16_MIN, S16_MAX),
        _fast_field(humidity, 10, 0, U16_MAX),
        _fast_field(light, 1, 0, U16_MAX),
        _fast_field(uptime_ms, 1, 0, U32_MAX),
    )
