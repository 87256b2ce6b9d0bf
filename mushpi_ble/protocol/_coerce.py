"""Lenient number handling for values that come from the controller.

Encoding never fails: sensor and controller values may be None, NaN, a
string or out of range, and a notification must still go out. Decoding is
strict and lives with each codec.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import attrs

from .errors import InvalidPayload

BytesLike = bytes | bytearray | memoryview
"""What decoders accept: D-Bus gives bytes, tests and buffers may give the others."""

U8_MAX = 0xFF
U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
S16_MIN = -0x8000
S16_MAX = 0x7FFF


def finite(value: object) -> float | None:
    """``value`` as a float, or None if it is not a usable real number.

    The result is finite, except ±inf for an int too large for a float (so
    it still clamps to the right end). Bools are refused: a stray True is
    not a reading of 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        result = float(value)
    except (OverflowError, ValueError, TypeError):
        # An int too large for a float is still a definite side of any range.
        if isinstance(value, numbers.Integral):
            return math.inf if int(value) > 0 else -math.inf
        return None
    return result if math.isfinite(result) else None


def clamp(value: int, lo: int, hi: int) -> int:
    """``value`` limited to ``lo..hi``."""
    return lo if value < lo else hi if value > hi else value


def _to_int(x: float, lo: int, hi: int, convert: Callable[[float], int]) -> int:
    if math.isinf(x):
        return hi if x > 0 else lo
    return clamp(convert(x), lo, hi)


def truncated(value: object, scale: int, lo: int, hi: int, default: int = 0) -> int:
    """``int(value * scale)`` (toward zero) clamped to ``lo..hi``; ``default`` if unusable."""
    x = finite(value)
    if x is None:
        return default
    return _to_int(x * scale, lo, hi, int)


def rounded(value: object, scale: int, lo: int, hi: int, default: int = 0) -> int:
    """``round(value * scale)`` clamped to ``lo..hi``; ``default`` if unusable.

    Used where a value read back must equal the value written: ``x / 10``
    then ``int(... * 10)`` can lose one (2.3 * 10 == 22.999...).
    """
    x = finite(value)
    if x is None:
        return default
    return _to_int(x * scale, lo, hi, round)


def flag(value: object) -> bool:
    """A relay state: bools as is, numbers by non-zero, common words; else False."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in {"1", "on", "true", "yes"}
    x = finite(value)
    return x is not None and x != 0


def int_range(lo: int, hi: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """attrs validator: an int (not bool) within ``lo..hi``, so ``pack`` cannot fail."""

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{attribute.name} must be an int, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{attribute.name} must be in {lo}..{hi}, got {value}")

    return check


def is_bool(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """attrs validator: a real bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a bool, got {value!r}")


def check_length(characteristic: str, data: BytesLike, size: int) -> None:
    """Raise the InvalidValueLength error unless ``data`` is exactly ``size`` bytes."""
    if len(data) != size:
        raise InvalidPayload.wrong_length(characteristic, size, len(data))
