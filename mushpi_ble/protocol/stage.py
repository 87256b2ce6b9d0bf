"""stage_state: 10 bytes ``<BBBIHB`` — mode, species, stage, stage start, expected days.

The wire carries ids, the controller speaks names. A write is checked
against a clock the caller injects, so tests and replays are deterministic.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping
from typing import ClassVar, Self, TypedDict

import attrs

from ._coerce import U8_MAX, U16_MAX, U32_MAX, BytesLike, check_length, int_range, truncated
from .errors import AppError, InvalidPayload
from .names import ControlMode, mode_id, species_id, species_name, stage_id, stage_name
from .uuids import STAGE_STATE

__all__ = ["MAX_EXPECTED_DAYS", "MAX_STAGE_AGE_S", "StageDict", "StageState"]

_STRUCT = struct.Struct("<BBBIHB")

MAX_STAGE_AGE_S = 365 * 86400
"""A written stage start may be at most this old (seconds)."""
MAX_EXPECTED_DAYS = 365
"""Largest expected_days a write may carry."""


class StageDict(TypedDict):
    """What ``set_stage_state`` receives."""

    mode: int
    species: str
    stage: str
    stage_start_ts: int
    expected_days: int


_U8 = int_range(0, U8_MAX)


@attrs.frozen
class StageState:
    """Growing stage in wire form; unknown species/stage ids are kept as they are."""

    SIZE: ClassVar[int] = _STRUCT.size
    CHARACTERISTIC: ClassVar[str] = STAGE_STATE

    mode: int = attrs.field(default=0, validator=int_range(0, len(ControlMode) - 1))
    species_id: int = attrs.field(default=0, validator=_U8)
    stage_id: int = attrs.field(default=0, validator=_U8)
    stage_start_ts: int = attrs.field(default=0, validator=int_range(0, U32_MAX))
    """Unix seconds."""
    expected_days: int = attrs.field(default=0, validator=int_range(0, U16_MAX))

    @property
    def species(self) -> str:
        return species_name(self.species_id)

    @property
    def stage(self) -> str:
        return stage_name(self.stage_id)

    @classmethod
    def from_controller(cls, data: Mapping[str, object] | None) -> Self:
        """From ``get_stage_data()``: None → all zeros; unknown names → 0; mode by
        int or name in any case; numbers clamped to their wire types."""
        if not isinstance(data, Mapping):
            return cls()
        return cls(
            mode=mode_id(data.get("mode")),
            species_id=species_id(data.get("species")),
            stage_id=stage_id(data.get("stage")),
            stage_start_ts=truncated(data.get("stage_start_ts"), 1, 0, U32_MAX),
            expected_days=truncated(data.get("expected_days"), 1, 0, U16_MAX),
        )

    def to_controller(self) -> StageDict:
        """The dict ``set_stage_state`` gets; unknown ids become ``"Unknown"``."""
        return {
            "mode": self.mode,
            "species": self.species,
            "stage": self.stage,
            "stage_start_ts": self.stage_start_ts,
            "expected_days": self.expected_days,
        }

    def pack(self) -> bytes:
        return _STRUCT.pack(
            self.mode,
            self.species_id,
            self.stage_id,
            self.stage_start_ts,
            self.expected_days,
            0,
        )

    @classmethod
    def unpack(cls, data: BytesLike, now: Callable[[], float] = time.time) -> Self:
        """Decode and validate a write against ``now()``; raises :class:`InvalidPayload`."""
        check_length(cls.CHARACTERISTIC, data, cls.SIZE)
        mode, species, stage, start, days, _reserved = _STRUCT.unpack(data)
        if mode > ControlMode.MANUAL:
            raise InvalidPayload(
                cls.CHARACTERISTIC,
                "mode",
                f"unknown mode {mode} (0 FULL, 1 SEMI, 2 MANUAL)",
                AppError.UNKNOWN_ENUM,
            )
        current = now()
        if start > current:
            raise InvalidPayload(
                cls.CHARACTERISTIC,
                "stage_start_ts",
                f"{start} is in the future (now {int(current)})",
                AppError.TIMESTAMP_IN_FUTURE,
            )
        if start < current - MAX_STAGE_AGE_S:
            raise InvalidPayload(
                cls.CHARACTERISTIC,
                "stage_start_ts",
                f"{start} is more than 365 days old (now {int(current)})",
                AppError.TIMESTAMP_TOO_OLD,
            )
        if days > MAX_EXPECTED_DAYS:
            raise InvalidPayload(
                cls.CHARACTERISTIC,
                "expected_days",
                f"{days} is outside 0..{MAX_EXPECTED_DAYS}",
                AppError.OUT_OF_RANGE,
            )
        return cls(mode, species, stage, start, days)
