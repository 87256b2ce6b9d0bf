"""D-Bus messages as the benchmark's raw client sees them: header fields and the
Value of a PropertiesChanged decoded with a few ``struct`` calls, no more."""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

MSG_METHOD_RETURN = 2
MSG_ERROR = 3
MSG_SIGNAL = 4
FIELD_ERROR_NAME = 4
FIELD_REPLY_SERIAL = 5
FIELD_MEMBER = 3
FIELD_SIGNATURE = 8

U32 = {b"l"[0]: struct.Struct("<I"), b"B"[0]: struct.Struct(">I")}
HEADER = {b"l"[0]: struct.Struct("<III"), b"B"[0]: struct.Struct(">III")}
SEQ = struct.Struct("<I")


class RawMessage(NamedTuple):
    mtype: int
    data: bytes
    fields_end: int
    body_start: int


def align(pos: int, n: int) -> int:
    return (pos + n - 1) & -n


def parse_fields(msg: RawMessage) -> dict[int, Any]:
    """Header fields of a message (the types the bus uses: s, o, g, u, h)."""
    data = msg.data
    u32 = U32[data[0]]
    fields: dict[int, Any] = {}
    pos = 16
    while pos < msg.fields_end:
        pos = align(pos, 8)
        code, siglen = data[pos], data[pos + 1]
        sig = data[pos + 2 : pos + 2 + siglen]
        pos += 3 + siglen
        if sig in (b"s", b"o"):
            pos = align(pos, 4)
            (n,) = u32.unpack_from(data, pos)
            fields[code] = data[pos + 4 : pos + 4 + n].decode()
            pos += 5 + n
        elif sig == b"g":
            n = data[pos]
            fields[code] = data[pos + 1 : pos + 1 + n].decode()
            pos += 2 + n
        elif sig in (b"u", b"h"):
            pos = align(pos, 4)
            fields[code] = u32.unpack_from(data, pos)[0]
            pos += 4
        else:
            raise ValueError(f"unexpected header field signature {sig!r}")
    return fields


def value_offset(msg: RawMessage) -> tuple[str, int, int] | None:
    """For PropertiesChanged(s, {"Value": <ay>, ...}, as): the interface and the
    offset (from the body start) and length of the Value bytes."""
    body = msg.data[msg.body_start :]
    u32 = U32[msg.data[0]]
    (n,) = u32.unpack_from(body, 0)
    iface = body[4 : 4 + n].decode()
    r = align(5 + n, 4)
    (array_len,) = u32.unpack_from(body, r)
    r = align(r + 4, 8)
    end = r + array_len
    while r < end:
        r = align(r, 8)
        (klen,) = u32.unpack_from(body, r)
        key = body[r + 4 : r + 4 + klen].decode()
        r += 5 + klen
        slen = body[r]
        sig = body[r + 1 : r + 1 + slen]
        r += 2 + slen
        if sig != b"ay":
            return None
        r = align(r, 4)
        (alen,) = u32.unpack_from(body, r)
        r += 4
        if key == "Value":
            return iface, r, alen
        r += alen
    return None

