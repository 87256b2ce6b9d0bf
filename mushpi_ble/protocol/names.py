"""Name tables shared by the phone app and the controller, and the status bits.

The wire carries small ids; the controller speaks names. Lookups never
raise: an unknown name maps to id 0 and an unknown id to ``"Unknown"``, as
the controller contract requires.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "LIGHT_MODES",
    "MODES",
    "SPECIES",
    "STAGES",
    "UNKNOWN",
    "ControlMode",
    "LightMode",
    "StatusFlag",
    "light_mode_id",
    "light_mode_name",
    "mode_id",
    "mode_name",
    "species_id",
    "species_name",
    "stage_id",
    "stage_name",
]

UNKNOWN = "Unknown"

SPECIES: Mapping[str, int] = MappingProxyType({"Oyster": 1, "Shiitake": 2, "Lion's Mane": 3})
"""Species name (case-sensitive) to wire id."""

STAGES: Mapping[str, int] = MappingProxyType({"Incubation": 1, "Pinning": 2, "Fruiting": 3})
"""Stage name (case-sensitive) to wire id."""


class ControlMode(enum.IntEnum):
    """Automation mode of the controller (stage_state byte 0)."""

    FULL = 0
    SEMI = 1
    MANUAL = 2


class LightMode(enum.IntEnum):
    """Light schedule mode (control_targets byte 8)."""

    OFF = 0
    ON = 1
    CYCLE = 2


MODES: Mapping[str, int] = MappingProxyType({m.name: m.value for m in ControlMode})
"""Mode name (upper case; lookups ignore case) to wire id."""

LIGHT_MODES: Mapping[str, int] = MappingProxyType({m.name.lower(): m.value for m in LightMode})
"""Light mode name (lower case; lookups ignore case) to wire id."""


class StatusFlag(enum.IntFlag):
    """Bits of the status_flags u16."""

    SENSOR_ERROR = 1 << 0
    CONTROL_ERROR = 1 << 1
    STAGE_READY = 1 << 2
    THRESHOLD_ALARM = 1 << 3
    CONNECTIVITY = 1 << 4
    LIGHT_ON = 1 << 5
    FAN_ON = 1 << 6
    SIMULATION = 1 << 7
    MIST_ON = 1 << 8
    HEATER_ON = 1 << 9


_SPECIES_BY_ID: Mapping[int, str] = {v: k for k, v in SPECIES.items()}
_STAGES_BY_ID: Mapping[int, str] = {v: k for k, v in STAGES.items()}


def species_id(name: object) -> int:
    """Wire id of a species name; 0 for anything unknown."""
    return SPECIES.get(name, 0) if isinstance(name, str) else 0


def species_name(ident: int) -> str:
    """Species name of a wire id; ``"Unknown"`` for anything unknown."""
    return _SPECIES_BY_ID.get(ident, UNKNOWN)


def stage_id(name: object) -> int:
    """Wire id of a stage name; 0 for anything unknown."""
    return STAGES.get(name, 0) if isinstance(name, str) else 0


def stage_name(ident: int) -> str:
    """Stage name of a wire id; ``"Unknown"`` for anything unknown."""
    return _STAGES_BY_ID.get(ident, UNKNOWN)


def mode_id(value: object) -> int:
    """Wire id of a control mode given as a name (any case) or an int 0..2; else 0."""
    if isinstance(value, str):
        return MODES.get(value.upper(), 0)
    if isinstance(value, int) and not isinstance(value, bool) and value in MODES.values():
        return value
    return 0


def mode_name(ident: int) -> str:
    """``"FULL"``, ``"SEMI"`` or ``"MANUAL"``; ``"Unknown"`` for other ids."""
    try:
        return ControlMode(ident).name
    except ValueError:
        return UNKNOWN


def light_mode_id(value: object) -> int:
    """Wire id of a light mode given as a name (any case), a bool or an int 0..2; else 0."""
    if isinstance(value, bool):
        return int(LightMode.ON if value else LightMode.OFF)
    if isinstance(value, str):
        return LIGHT_MODES.get(value.lower(), 0)
    if isinstance(value, int) and value in LIGHT_MODES.values():
        return value
    return 0


def light_mode_name(ident: int) -> str:
    """``"off"``, ``"on"`` or ``"cycle"``; ``"Unknown"`` for other ids."""
    try:
        return LightMode(ident).name.lower()
    except ValueError:
        return UNKNOWN
