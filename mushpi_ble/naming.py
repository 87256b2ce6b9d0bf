"""The advertised name: ``{prefix}-{Species}{Stage}``, or ``{prefix}-Init``."""

from __future__ import annotations

from collections.abc import Mapping

from .protocol import SPECIES, STAGES


def _compact(name: str) -> str:
    return "".join(ch for ch in name if ch.isalnum())


def advertised_name(prefix: str, stage_data: object) -> str:
    """From ``get_stage_data()``: known species and stage give e.g. MushPi-OysterPinning."""
    if isinstance(stage_data, Mapping):
        species = stage_data.get("species")
        stage = stage_data.get("stage")
        if species in SPECIES and stage in STAGES:
            return f"{prefix}-{_compact(str(species))}{_compact(str(stage))}"
    return f"{prefix}-Init"
