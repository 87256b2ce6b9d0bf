"""Typed views of the option dictionaries bluetoothd sends with each call.

bluetoothd sends ``device`` and ``mtu`` always, ``offset`` only when
non-zero, ``link`` when known and ``prepare-authorize`` only when true.
Anything else is ignored rather than refused, so newer daemons still work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .errors import INVALID_ARGUMENTS, GattError

DEFAULT_MTU = 23


def _option(options: Mapping[str, tuple[str, Any]], key: str, signature: str) -> Any:
    entry = options.get(key)
    if entry is None:
        return None
    sig, value = entry
    if sig != signature:
        raise GattError(INVALID_ARGUMENTS, f"option {key!r} must have type {signature!r}")
    return value


@attrs.frozen
class ReadRequest:
    """One ReadValue call: who asks, their MTU, and where in the value."""

    device: str = ""
    mtu: int = DEFAULT_MTU
    offset: int = 0
    link: str = ""

    @classmethod
    def from_options(cls, options: Mapping[str, tuple[str, Any]]) -> ReadRequest:
        return cls(
            device=_option(options, "device", "o") or "",
            mtu=_option(options, "mtu", "q") or DEFAULT_MTU,
            offset=_option(options, "offset", "q") or 0,
            link=_option(options, "link", "s") or "",
        )


@attrs.frozen
class WriteRequest:
    """One WriteValue call (a piece of a long write when ``offset`` > 0)."""

    value: bytes
    device: str = ""
    mtu: int = DEFAULT_MTU
    offset: int = 0
    link: str = ""
    prepare_authorize: bool = False
    piece: bytes = b""
    """The bytes of this call alone; ``value`` is the whole reassembled value."""

    @classmethod
    def from_options(cls, value: bytes, options: Mapping[str, tuple[str, Any]]) -> WriteRequest:
        return cls(
            value=bytes(value),
            piece=bytes(value),
            device=_option(options, "device", "o") or "",
            mtu=_option(options, "mtu", "q") or DEFAULT_MTU,
            offset=_option(options, "offset", "q") or 0,
            link=_option(options, "link", "s") or "",
            prepare_authorize=bool(_option(options, "prepare-authorize", "b")),
        )
