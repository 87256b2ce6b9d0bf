"""stage_thresholds: UTF-8 JSON, a query/answer pair plus updates.

The phone writes ``{"species", "stage"}`` (a query) and then reads the
answer for that pair; a write that also carries a threshold key is an
update for the controller's set callback. JSON from the air is untrusted,
so a write is checked as strictly as the binary characteristics before
anything reaches the controller:

====  ==================================================================
code  refused when
====  ==================================================================
0x89  more than :data:`MAX_THRESHOLDS_PAYLOAD` bytes
0x87  not UTF-8, not JSON (NaN, Infinity, a float that overflows), or a
      string holding a lone surrogate (``"\\ud800"``: not Unicode text)
0x88  not an object; nested too deeply; species or stage missing, empty
      or holding a control character; a key the controller does not know
      (at the top or in ``light``); a value of the wrong JSON type (a bool
      is not a number)
0x86  an update for a species or stage outside the name tables; an
      unknown light mode
0x81  a number outside its physical range (:data:`NUMBER_RANGES`), light
      minutes outside 0..1440, expected_days outside 0..365
0x82  a min not below its max (:data:`MIN_MAX_PAIRS`)
====  ==================================================================

A query may name any pair (the controller may know stages the tables do
not, and answers "Stage not found" otherwise); an update may not.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import unicodedata
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Final, Self

import attrs

from ._coerce import U16_MAX, BytesLike
from .errors import AppError, InvalidPayload
from .names import LIGHT_MODES, SPECIES, STAGES
from .targets import CO2_RANGE, MINUTES_RANGE, RH_RANGE, TEMP_RANGE
from .uuids import STAGE_THRESHOLDS

__all__ = [
    "DEFAULT_QUERY",
    "LIGHT_KEYS",
    "MAX_THRESHOLDS_PAYLOAD",
    "MIN_MAX_PAIRS",
    "NUMBER_RANGES",
    "THRESHOLD_KEYS",
    "ThresholdsQuery",
    "ThresholdsUpdate",
    "decode_thresholds_write",
    "encode_thresholds_answer",
]

MAX_THRESHOLDS_PAYLOAD: Final = 4096
"""Largest write accepted, in bytes (0x89 beyond). A real update is ~200 bytes."""

NUMBER_RANGES: Final[Mapping[str, tuple[float, float]]] = MappingProxyType(
    {
        # The units the controller speaks: °C and %RH (control_targets carries x10).
        "temp_min": (TEMP_RANGE[0] / 10, TEMP_RANGE[1] / 10),
        "temp_max": (TEMP_RANGE[0] / 10, TEMP_RANGE[1] / 10),
        "rh_min": (RH_RANGE[0] / 10, RH_RANGE[1] / 10),
        "rh_max": (RH_RANGE[0] / 10, RH_RANGE[1] / 10),
        "co2_max": (float(CO2_RANGE[0]), float(CO2_RANGE[1])),
        # The raw light value env_measurements carries (a u16).
        "light_min": (0.0, float(U16_MAX)),
        "light_max": (0.0, float(U16_MAX)),
    }
)
"""Numeric threshold keys and their physical range, bounds included (0x81 outside)."""

NUMERIC_KEYS: Final = tuple(NUMBER_RANGES)
MIN_MAX_PAIRS: Final = (("temp_min", "temp_max"), ("rh_min", "rh_max"), ("light_min", "light_max"))
"""Pairs whose min must be below their max when both are written (0x82)."""

THRESHOLD_KEYS: Final = frozenset((*NUMERIC_KEYS, "light", "expected_days"))
"""The keys an update may carry besides species and stage; any of them makes a write an update."""

LIGHT_KEYS: Final = frozenset(("mode", "on_min", "off_min"))
"""The keys the ``light`` object may carry."""

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


def _shown(text: str) -> str:
    """A string from the air, quoted and cut short for a log line."""
    return repr(text[:40]) + ("..." if len(text) > 40 else "")


def _check_name(field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        shown = "missing" if value is None else f"got {_json_type(value)} {value!r}"[:80]
        raise _fail(field, f"must be a non-empty string ({shown})", AppError.JSON_SHAPE)
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise _fail(field, f"holds a control character ({_shown(value)})", AppError.JSON_SHAPE)
    return value


def _check_known_name(field: str, value: object, table: Mapping[str, int]) -> str:
    name = _check_name(field, value)
    if name not in table:
        known = ", ".join(table)
        reason = f"unknown {field} {_shown(name)} (known: {known})"
        raise _fail(field, reason, AppError.UNKNOWN_ENUM)
    return name


def _name_validator(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _check_name(attribute.name, value)


def _species_validator(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _check_known_name(attribute.name, value, SPECIES)


def _stage_validator(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _check_known_name(attribute.name, value, STAGES)


def _check_keys(field: str, keys: Iterable[object], known: frozenset[str]) -> None:
    unknown = sorted(str(k) for k in keys if k not in known)
    if unknown:
        names = ", ".join(_shown(k) for k in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise _fail(
            field,
            f"unknown key {names} (known: {', '.join(sorted(known))})",
            AppError.JSON_SHAPE,
        )


def _check_int(field: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(field, f"must be an integer, got {_json_type(value)}", AppError.JSON_SHAPE)
    if not lo <= value <= hi:
        raise _fail(field, f"{value} is outside {lo}..{hi}"[:80], AppError.OUT_OF_RANGE)


def _check_number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(field, f"must be a number, got {_json_type(value)}", AppError.JSON_SHAPE)
    try:
        as_float = float(value)
    except OverflowError:
        as_float = math.inf if value > 0 else -math.inf
    if not math.isfinite(as_float):
        raise _fail(field, "must be a finite number", AppError.OUT_OF_RANGE)
    lo, hi = NUMBER_RANGES[field]
    if not lo <= as_float <= hi:
        raise _fail(field, f"{as_float:g} is outside {lo:g}..{hi:g}", AppError.OUT_OF_RANGE)
    return as_float


def _check_light(value: object) -> None:
    if not isinstance(value, dict):
        raise _fail("light", f"must be an object, got {_json_type(value)}", AppError.JSON_SHAPE)
    _check_keys("light", value, LIGHT_KEYS)
    if "mode" in value:
        mode = value["mode"]
        if not isinstance(mode, str):
            raise _fail(
                "light.mode", f"must be a string, got {_json_type(mode)}", AppError.JSON_SHAPE
            )
        if mode.lower() not in LIGHT_MODES:
            raise _fail("light.mode", f"unknown light mode {_shown(mode)}", AppError.UNKNOWN_ENUM)
    for key in ("on_min", "off_min"):
        if key in value:
            _check_int(f"light.{key}", value[key], *MINUTES_RANGE)


def _check_thresholds(thresholds: Mapping[str, object]) -> None:
    """Validate every key of an update; raises :class:`InvalidPayload`."""
    _check_keys("payload", thresholds, THRESHOLD_KEYS)
    seen: dict[str, float] = {}
    for key in NUMERIC_KEYS:
        if key in thresholds:
            seen[key] = _check_number(key, thresholds[key])
    if "light" in thresholds:
        _check_light(thresholds["light"])
    if "expected_days" in thresholds:
        _check_int("expected_days", thresholds["expected_days"], 0, MAX_EXPECTED_DAYS)
    for low_key, high_key in MIN_MAX_PAIRS:
        low, high = seen.get(low_key), seen.get(high_key)
        if low is not None and high is not None and low >= high:
            raise _fail(
                low_key, f"must be below {high_key} ({low:g} >= {high:g})", AppError.INCONSISTENT
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


def _update_validator(
    _instance: Any, _attribute: attrs.Attribute[Any], value: Mapping[str, Any]
) -> None:
    if any(k in value for k in _PAIR_KEYS):
        raise ValueError("species and stage are fields of the update, not thresholds")
    if THRESHOLD_KEYS.isdisjoint(value):
        raise ValueError("an update needs at least one of " + ", ".join(sorted(THRESHOLD_KEYS)))
    _check_thresholds(value)


def _frozen_copy(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(copy.deepcopy(dict(value)))


def _dump(obj: Mapping[str, Any], errors: str = "strict") -> bytes:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8", errors)


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

    ``thresholds`` holds every key of the write except species and stage,
    all of them known to the controller and within their ranges; the pair
    is one of the name tables'.
    """

    CHARACTERISTIC: ClassVar[str] = STAGE_THRESHOLDS

    species: str = attrs.field(validator=_species_validator)
    stage: str = attrs.field(validator=_stage_validator)
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
    try:
        _dump(obj)
    except UnicodeEncodeError:
        raise _fail(
            "payload", "a string holds a lone surrogate (not Unicode text)", AppError.NOT_JSON
        ) from None
    species = _check_name("species", obj.get("species"))
    stage = _check_name("stage", obj.get("stage"))
    rest = {k: v for k, v in obj.items() if k not in _PAIR_KEYS}
    _check_keys("payload", rest, THRESHOLD_KEYS)
    if not rest:
        return ThresholdsQuery(species, stage)
    _check_known_name("species", species, SPECIES)
    _check_known_name("stage", stage, STAGES)
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


def _dump_answer(obj: Mapping[str, Any]) -> bytes:
    # A lone surrogate from the controller becomes "?": the answer must encode.
    return _dump(obj, errors="replace")


def encode_thresholds_answer(
    species: str, stage: str, thresholds: Mapping[Any, object] | None
) -> bytes:
    """The read answer for a pair: compact UTF-8 JSON that always encodes.

    Empty, falsy or non-mapping thresholds answer ``{"error": "Stage not
    found", "species", "stage"}``, which the app treats as "no data".
    Values that JSON cannot carry become null (NaN) or strings, and a lone
    surrogate ``"?"``.
    """
    if not thresholds or not isinstance(thresholds, Mapping):
        return _dump_answer({"error": NOT_FOUND, "species": species, "stage": stage})
    body: dict[str, Any] = {"species": species, "stage": stage}
    for key, value in thresholds.items():
        name = str(key)
        if name not in _PAIR_KEYS:
            body[name] = _jsonable(value)
    encoded = _dump_answer(body)
    if len(encoded) <= MAX_ATTRIBUTE_VALUE:
        return encoded
    # An ATT attribute value is at most 512 bytes: phones stop reading there and
    # bluetoothd cuts every ReadValue answer to it. Keep the threshold keys the
    # app knows; drop the rest; refuse honestly if even that does not fit.
    essential = {k: v for k, v in body.items() if k in _PAIR_KEYS or k in THRESHOLD_KEYS}
    encoded = _dump_answer(essential)
    if len(encoded) <= MAX_ATTRIBUTE_VALUE:
        return encoded
    return _dump_answer({"error": TOO_LARGE_ANSWER, "species": species, "stage": stage})
