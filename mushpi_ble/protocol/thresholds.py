"""stage_thresholds: UTF-8 JSON, a query/answer pair plus updates.

The phone writes ``{"species", "stage"}`` (a query) and then reads the
answer for that pair; a write that also carries a threshold key is an
update for the controller's set callback. JSON from the air is untrusted:
size, encoding, shape and the types of the known keys are all checked here,
unknown extra keys are passed through untouched.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Final, Self

import attrs

from ._coerce import BytesLike
from .errors import AppError, InvalidPayload
from .names import LIGHT_MODES
from .targets import MINUTES_RANGE
from .uuids import STAGE_THRESHOLDS

__all__ = [
    "DEFAULT_QUERY",
    "MAX_THRESHOLDS_PAYLOAD",
    "THRESHOLD_KEYS",
    "ThresholdsQuery",
    "ThresholdsUpdate",
    "decode_thresholds_write",
    "encode_thresholds_answer",
]

MAX_THRESHOLDS_PAYLOAD: Final = 4096
"""Largest write accepted, in bytes (0x89 beyond). A real update is ~200 bytes."""

NUMERIC_KEYS: Final = (
    "temp_min",
    "temp_max",
    "rh_min",
    "rh_max",
    "co2_max",
    "light_min",
    "light_max",
)
THRESHOLD_KEYS: Final = frozenset((*NUMERIC_KEYS, "light", "expected_days"))
"""Any of these besides species and stage makes a write an update."""

MAX_EXPECTED_DAYS: Final = 365
NOT_FOUND: Final = "Stage not found"
_PAIR_KEYS: Final = ("species", "stage")
MAX_ATTRIBUTE_VALUE: Final = 512
"""ATT's limit on one attribute value; read answers are fitted to it."""
TOO_LARGE_ANSWER: Final = "Thresholds too large"
_MAX_ANSWER_DEPTH: Final = 16
MAX_WRITE_DEPTH: Final = 32
"""Deepest JSON nesting a write may use (0x88 beyond)."""

_C = STAGE_THRESHOLDS


def _fail(field: str, reason: str, code: AppError) -> InvalidPayload:
    return InvalidPayload(_C, field, reason, code)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_name(field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        shown = "missing" if value is None else f"got {_json_type(value)} {value!r}"[:80]
        raise _fail(field, f"must be a non-empty string ({shown})", AppError.JSON_SHAPE)
    return value


def _name_validator(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _check_name(attribute.name, value)


def _check_int(field: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(field, f"must be an integer, got {_json_type(value)}", AppError.JSON_SHAPE)
    if not lo <= value <= hi:
        raise _fail(field, f"{value} is outside {lo}..{hi}", AppError.OUT_OF_RANGE)


def _check_number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(field, f"must be a number, got {_json_type(value)}", AppError.JSON_SHAPE)
    try:
        as_float = float(value)
    except OverflowError:
        as_float = math.inf
    if not math.isfinite(as_float):
        raise _fail(field, "must be a finite number", AppError.OUT_OF_RANGE)
    return as_float


def _check_light(value: object) -> None:
    if not isinstance(value, dict):
        raise _fail("light", f"must be an object, got {_json_type(value)}", AppError.JSON_SHAPE)
    if "mode" in value:
        mode = value["mode"]
        if not isinstance(mode, str):
            raise _fail(
                "light.mode", f"must be a string, got {_json_type(mode)}", AppError.JSON_SHAPE
            )
        if mode.lower() not in LIGHT_MODES:
            raise _fail("light.mode", f"unknown light mode {mode[:40]!r}", AppError.UNKNOWN_ENUM)
    for key in ("on_min", "off_min"):
        if key in value:
            _check_int(f"light.{key}", value[key], *MINUTES_RANGE)


def _check_thresholds(thresholds: Mapping[str, object]) -> None:
    """Validate the known keys of an update; raises :class:`InvalidPayload`."""
    numbers_seen: dict[str, float] = {}
    for key in NUMERIC_KEYS:
        if key in thresholds:
            numbers_seen[key] = _check_number(key, thresholds[key])
    if "light" in thresholds:
        _check_light(thresholds["light"])
    if "expected_days" in thresholds:
        _check_int("expected_days", thresholds["expected_days"], 0, MAX_EXPECTED_DAYS)
    t_min, t_max = numbers_seen.get("temp_min"), numbers_seen.get("temp_max")
    if t_min is not None and t_max is not None and t_min >= t_max:
        raise _fail(
            "temp_min", f"must be below temp_max ({t_min:g} >= {t_max:g})", AppError.INCONSISTENT
        )


def _nesting(value: object) -> int:
    """Depth of JSON containers, without recursion (the input is untrusted)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _is_json(value: object, depth: int = 0) -> bool:
    if depth > 2 * MAX_WRITE_DEPTH:
        return False
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v, depth + 1) for k, v in value.items())
    return False


def _update_validator(
    _instance: Any, _attribute: attrs.Attribute[Any], value: Mapping[str, Any]
) -> None:
    if THRESHOLD_KEYS.isdisjoint(value):
        raise ValueError("an update needs at least one of " + ", ".join(sorted(THRESHOLD_KEYS)))
    if any(k in value for k in _PAIR_KEYS):
        raise ValueError("species and stage are fields of the update, not thresholds")
    if not all(isinstance(k, str) for k in value) or not _is_json(dict(value)):
        raise ValueError("thresholds must be a JSON object with string keys")
    _check_thresholds(value)


def _frozen_copy(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(copy.deepcopy(dict(value)))


def _dump(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@attrs.frozen
class ThresholdsQuery:
    """A write that asks for the thresholds of one species/stage pair."""

    CHARACTERISTIC: ClassVar[str] = STAGE_THRESHOLDS

    species: str = attrs.field(validator=_name_validator)
    stage: str = attrs.field(validator=_name_validator)

    def to_controller(self) -> tuple[str, str]:
        """Arguments for ``get_stage_thresholds(species, stage)``."""
        return (self.species, self.stage)

    def pack(self) -> bytes:
        return _dump({"species": self.species, "stage": self.stage})

    @classmethod
    def unpack(cls, data: BytesLike) -> Self:
        """Decode a write that must be a query; raises :class:`InvalidPayload`."""
        decoded = decode_thresholds_write(data)
        if not isinstance(decoded, cls):
            raise _fail("payload", "carries threshold keys, expected a query", AppError.JSON_SHAPE)
        return decoded


@attrs.frozen
class ThresholdsUpdate:
    """A write that sets thresholds of one species/stage pair.

    ``thresholds`` holds every key of the write except species and stage;
    the known keys are validated, unknown ones are passed through.
    """

    CHARACTERISTIC: ClassVar[str] = STAGE_THRESHOLDS

    species: str = attrs.field(validator=_name_validator)
    stage: str = attrs.field(validator=_name_validator)
    thresholds: Mapping[str, Any] = attrs.field(
        converter=_frozen_copy, validator=_update_validator, hash=False
    )

    def to_controller(self) -> tuple[str, str, dict[str, Any]]:
        """Arguments for ``set_stage_thresholds(species, stage, thresholds)`` (a fresh copy)."""
        return (self.species, self.stage, copy.deepcopy(dict(self.thresholds)))

    def pack(self) -> bytes:
        return _dump({"species": self.species, "stage": self.stage, **self.thresholds})

    @classmethod
    def unpack(cls, data: BytesLike) -> Self:
        """Decode a write that must be an update; raises :class:`InvalidPayload`."""
        decoded = decode_thresholds_write(data)
        if not isinstance(decoded, cls):
            raise _fail(
                "payload",
                "no threshold key (" + ", ".join(sorted(THRESHOLD_KEYS)) + ")",
                AppError.JSON_SHAPE,
            )
        return decoded


DEFAULT_QUERY: Final = ThresholdsQuery("Oyster", "Incubation")
"""The pair a read answers before any query was written."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} overflows a double")
    return value


def decode_thresholds_write(data: BytesLike) -> ThresholdsQuery | ThresholdsUpdate:
    """Decode and validate a stage_thresholds write; raises :class:`InvalidPayload`."""
    if len(data) > MAX_THRESHOLDS_PAYLOAD:
        raise _fail(
            "payload",
            f"{len(data)} bytes, at most {MAX_THRESHOLDS_PAYLOAD}",
            AppError.TOO_LARGE,
        )
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(
            "payload", f"not UTF-8 ({exc.reason} at byte {exc.start})", AppError.NOT_JSON
        ) from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise _fail("payload", "not JSON (nested too deeply)", AppError.NOT_JSON) from None
    except ValueError as exc:
        raise _fail("payload", f"not JSON ({str(exc)[:80]})", AppError.NOT_JSON) from None
    if not isinstance(obj, dict):
        raise _fail(
            "payload", f"expected a JSON object, got {_json_type(obj)}", AppError.JSON_SHAPE
        )
    if _nesting(obj) > MAX_WRITE_DEPTH:
        raise _fail("payload", f"nested deeper than {MAX_WRITE_DEPTH} levels", AppError.JSON_SHAPE)
    species = _check_name("species", obj.get("species"))
    stage = _check_name("stage", obj.get("stage"))
    rest = {k: v for k, v in obj.items() if k not in _PAIR_KEYS}
    if THRESHOLD_KEYS.isdisjoint(rest):
        return ThresholdsQuery(species, stage)
    _check_thresholds(rest)
    return ThresholdsUpdate(species, stage, rest)


def _jsonable(value: object, depth: int = 0) -> Any:
    """Best-effort JSON form of a controller value: the answer must always encode."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Number):
        try:
            as_float = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            return None
        return as_float if math.isfinite(as_float) else None
    if depth >= _MAX_ANSWER_DEPTH:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    return str(value)


def encode_thresholds_answer(
    species: str, stage: str, thresholds: Mapping[Any, object] | None
) -> bytes:
    """The read answer for a pair: compact UTF-8 JSON that always encodes.

    Empty, falsy or non-mapping thresholds answer ``{"error": "Stage not
    found", "species", "stage"}``, which the app treats as "no data".
    Values that JSON cannot carry become null (NaN) or strings.
    """
    if not thresholds or not isinstance(thresholds, Mapping):
        return _dump({"error": NOT_FOUND, "species": species, "stage": stage})
    body: dict[str, Any] = {"species": species, "stage": stage}
    for key, value in thresholds.items():
        name = str(key)
        if name not in _PAIR_KEYS:
            body[name] = _jsonable(value)
    encoded = _dump(body)
    if len(encoded) <= MAX_ATTRIBUTE_VALUE:
        return encoded
    # An ATT attribute value is at most 512 bytes: phones stop reading there and
    # bluetoothd cuts every ReadValue answer to it. Keep the threshold keys the
    # app knows; drop the rest; refuse honestly if even that does not fit.
    essential = {k: v for k, v in body.items() if k in _PAIR_KEYS or k in THRESHOLD_KEYS}
    encoded = _dump(essential)
    if len(encoded) <= MAX_ATTRIBUTE_VALUE:
        return encoded
    return _dump({"error": TOO_LARGE_ANSWER, "species": species, "stage": stage})
