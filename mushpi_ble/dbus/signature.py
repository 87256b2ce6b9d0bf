"""D-Bus signature helpers: split into complete types, check variants.

jeepney serialises from a signature string but does not say where one
complete type ends; the object layer needs that to pack handler results
and to describe arguments for introspection.
"""

from __future__ import annotations

from typing import Any

_BASIC = set("ybnqiuxtdsogh")


def _complete_type_end(sig: str, start: int) -> int:
    """Index just past the complete type that begins at ``start``."""
    if start >= len(sig):
        raise ValueError(f"signature {sig!r} ends inside a type")
    code = sig[start]
    if code in _BASIC or code == "v":
        return start + 1
    if code == "a":
        return _complete_type_end(sig, start + 1)
    if code in "({":
        closer = ")" if code == "(" else "}"
        pos = start + 1
        count = 0
        while pos < len(sig) and sig[pos] != closer:
            pos = _complete_type_end(sig, pos)
            count += 1
        if pos >= len(sig):
            raise ValueError(f"signature {sig!r}: unclosed {code!r}")
        if count == 0 or (code == "{" and count != 2):
            raise ValueError(f"signature {sig!r}: bad container at {start}")
        return pos + 1
    raise ValueError(f"signature {sig!r}: unknown type code {code!r}")


def split_signature(sig: str) -> list[str]:
    """Split a signature into its complete types: ``"sa{sv}as"`` → three."""
    types: list[str] = []
    pos = 0
    while pos < len(sig):
        end = _complete_type_end(sig, pos)
        types.append(sig[pos:end])
        pos = end
    return types


def is_valid_signature(sig: str) -> bool:
    """True when ``sig`` parses as a sequence of complete types."""
    try:
        split_signature(sig)
    except ValueError:
        return False
    return len(sig) <= 255


_SPLIT_CACHE: dict[str, tuple[str, ...]] = {}


def body_from_result(out_signature: str, result: Any) -> tuple[Any, ...]:
    """Turn a handler's return value into a message body.

    No out-arguments: the result is ignored. One: the result is the value.
    Several: the result must be a tuple of that many values.
    """
    types = _SPLIT_CACHE.get(out_signature)
    if types is None:
        types = tuple(split_signature(out_signature))
        if len(_SPLIT_CACHE) >= 1024:
            _SPLIT_CACHE.clear()
        _SPLIT_CACHE[out_signature] = types
    if not types:
        return ()
    if len(types) == 1:
        return (result,)
    if not isinstance(result, tuple) or len(result) != len(types):
        raise TypeError(
            f"handler must return a {len(types)}-tuple for signature {out_signature!r}"
        )
    return result
