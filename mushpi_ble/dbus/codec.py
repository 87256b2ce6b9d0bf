"""A faster D-Bus wire codec for the hot paths, byte-compatible with jeepney.

jeepney's codec walks a tree of type objects and concatenates small byte
strings for every value; this module compiles each signature once into
closures that append to one ``bytearray`` (writing) or read straight from
the message bytes (reading). It covers little-endian messages and every
type except file descriptors (``h``). It mirrors jeepney's type checks, and
anything it does not handle, or any value it refuses, raises
(:class:`Unsupported` or any other exception) so that the
:class:`~.wire.Wire` passes it to jeepney: messages, decoded values and
error texts stay exactly jeepney's. What it compiles is kept in a
:class:`Compiler` and a :class:`MessageDecoder`, one of each per wire.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from typing import Any

from jeepney.low_level import (
    Endianness,
    Header,
    HeaderFields,
    Message,
    MessageFlag,
    MessageType,
    calc_msg_size,
)

__all__ = [
    "Compiler",
    "MessageDecoder",
    "Unsupported",
    "WireParser",
]


class Unsupported(Exception):
    """The fast codec does not handle this signature or message; use jeepney."""


Writer = Callable[[bytearray, Any], None]
Reader = Callable[[bytes, int], tuple[Any, int]]

ARRAY_LIMIT = 2**26  # jeepney's (and the spec's) 64 MiB array limit
_ZEROS = tuple(b"\0" * n for n in range(8))
_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_LENGTHS = struct.Struct("<III")  # body length, serial, header-fields length
_BASIC_CODES = frozenset("ybnqiuxtdsog")
_FIXED = {  # code: (size, struct code); D-Bus booleans are 32-bit
    "y": (1, "B"), "n": (2, "h"), "q": (2, "H"), "b": (4, "I"), "i": (4, "i"),
    "u": (4, "I"), "x": (8, "q"), "t": (8, "Q"), "d": (8, "d"),
}
_OBJECT_PATH = re.compile(r"/|(?:/[A-Za-z0-9_]+)+")


class _Type:
    """One compiled complete type."""

    __slots__ = ("align", "read", "sig", "write")

    def __init__(self, sig: str, align: int, write: Writer, read: Reader) -> None:
        self.sig = sig
        self.align = align
        self.write = write
        self.read = read


# ----------------------------------------------------------------------
# compiling
# ----------------------------------------------------------------------
def _fixed(code: str) -> _Type:
    size, struct_code = _FIXED[code]
    packer = struct.Struct("<" + struct_code)
    pack, unpack_from = packer.pack, packer.unpack_from
    mask = size - 1
    zeros = _ZEROS

    if size == 1:
        def write(out: bytearray, data: Any) -> None:
            out += pack(data)

        def read(buf: bytes, pos: int) -> tuple[Any, int]:
            return buf[pos], pos + 1
    else:
        def write(out: bytearray, data: Any) -> None:
            pad = -len(out) & mask
            if pad:
                out += zeros[pad]
            out += pack(data)

        if code == "b":
            def read(buf: bytes, pos: int) -> tuple[Any, int]:
                pos += -pos & 3
                return bool(unpack_from(buf, pos)[0]), pos + 4
        else:
            def read(buf: bytes, pos: int) -> tuple[Any, int]:
                pos += -pos & mask
                return unpack_from(buf, pos)[0], pos + size

    return _Type(code, size, write, read)


def _string(code: str) -> _Type:
    pack_u32, u32_from = _U32.pack, _U32.unpack_from
    pack_u8 = _U8.pack
    zeros = _ZEROS
    path_match = _OBJECT_PATH.fullmatch

    if code == "g":
        def write(out: bytearray, data: Any) -> None:
            if not isinstance(data, str):
                raise TypeError(f"Expected str, not {data!r}")
            encoded = data.encode("utf-8")
            out += pack_u8(len(encoded))
            out += encoded
            out += b"\0"

        def read(buf: bytes, pos: int) -> tuple[Any, int]:
            end = pos + 1 + buf[pos]
            if buf[end] != 0:
                raise ValueError("string not NUL-terminated")
            return buf[pos + 1 : end].decode("utf-8"), end + 1

        return _Type(code, 1, write, read)

    check_path = code == "o"

    def write_str(out: bytearray, data: Any) -> None:
        if not isinstance(data, str):
            raise TypeError(f"Expected str, not {data!r}")
        if check_path and path_match(data) is None:
            raise ValueError(f"invalid object path {data!r}")
        encoded = data.encode("utf-8")
        pad = -len(out) & 3
        if pad:
            out += zeros[pad]
        out += pack_u32(len(encoded))
        out += encoded
        out += b"\0"

    def read_str(buf: bytes, pos: int) -> tuple[Any, int]:
        pos += -pos & 3
        end = pos + 4 + u32_from(buf, pos)[0]
        if buf[end] != 0:
            raise ValueError("string not NUL-terminated")
        return buf[pos + 4 : end].decode("utf-8"), end + 1

    return _Type(code, 4, write_str, read_str)


def _array(elt: _Type, dict_entry: tuple[_Type, _Type] | None,
           options_read: Reader) -> _Type:
    """An array of ``elt``; ``options_read`` is the compiler's one-pass ``a{sv}`` reader."""
    pack_u32, u32_from, pack_u32_into = _U32.pack, _U32.unpack_from, _U32.pack_into
    zeros = _ZEROS
    elt_mask = elt.align - 1
    elt_write, elt_read = elt.write, elt.read
    fixed_size = _FIXED[elt.sig][0] if elt.sig in _FIXED else 0
    is_bytes = elt.sig == "y"

    def write(out: bytearray, data: Any) -> None:
        items: Any = data
        if dict_entry is not None and isinstance(data, dict):
            items = None
        elif is_bytes and isinstance(data, bytes):
            if len(data) > ARRAY_LIMIT:
                raise Unsupported("array too large")
            pad = -len(out) & 3
            if pad:
                out += zeros[pad]
            out += pack_u32(len(data))
            out += data
            return
        elif not isinstance(data, list):
            raise TypeError(f"Not suitable for array: {data!r}")
        if fixed_size and fixed_size * len(data) > ARRAY_LIMIT:
            raise Unsupported("array too large")
        pad = -len(out) & 3
        if pad:
            out += zeros[pad]
        at = len(out)
        out += b"\0\0\0\0"
        pad = -len(out) & elt_mask
        if pad:
            out += zeros[pad]
        start = len(out)
        if items is None:
            assert dict_entry is not None
            key_write, value_write = dict_entry[0].write, dict_entry[1].write
            for key, value in data.items():
                pad = -len(out) & 7
                if pad:
                    out += zeros[pad]
                key_write(out, key)
                value_write(out, value)
        else:
            for item in items:
                elt_write(out, item)
        length = len(out) - start
        if length > ARRAY_LIMIT:
            raise Unsupported("array too large")
        pack_u32_into(out, at, length)

    if is_bytes:
        def read(buf: bytes, pos: int) -> tuple[Any, int]:
            pos += -pos & 3
            start = pos + 4
            end = start + u32_from(buf, pos)[0]
            return buf[start:end], end
    elif dict_entry is not None and dict_entry[0].sig == "s" and dict_entry[1].sig == "v":
        return _Type("a" + elt.sig, 4, write, options_read)
    elif dict_entry is not None:
        key_read, value_read = dict_entry[0].read, dict_entry[1].read

        def read(buf: bytes, pos: int) -> tuple[Any, int]:
            pos += -pos & 3
            length = u32_from(buf, pos)[0]
            pos += 4
            pos += -pos & 7
            end = pos + length
            result = {}
            while pos < end:
                pos += -pos & 7
                key, pos = key_read(buf, pos)
                result[key], pos = value_read(buf, pos)
            return result, pos
    else:
        def read(buf: bytes, pos: int) -> tuple[Any, int]:
            pos += -pos & 3
            length = u32_from(buf, pos)[0]
            pos += 4
            pos += -pos & elt_mask
            end = pos + length
            result = []
            while pos < end:
                value, pos = elt_read(buf, pos)
                result.append(value)
            return result, pos

    return _Type("a" + elt.sig, 4, write, read)


def _struct(fields: Sequence[_Type], sig: str) -> _Type:
    zeros = _ZEROS
    count = len(fields)
    writers = tuple(f.write for f in fields)
    readers = tuple(f.read for f in fields)

    def write(out: bytearray, data: Any) -> None:
        if not isinstance(data, tuple):
            raise TypeError(f"Expected tuple, not {data!r}")
        if len(data) != count:
            raise ValueError(f"{len(data)} entries for {count} fields")
        pad = -len(out) & 7
        if pad:
            out += zeros[pad]
        for field_write, item in zip(writers, data, strict=False):
            field_write(out, item)

    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        pos += -pos & 7
        values = []
        for field_read in readers:
            value, pos = field_read(buf, pos)
            values.append(value)
        return tuple(values), pos

    return _Type(sig, 8, write, read)


_CACHE_LIMIT = 1024


class Compiler:
    """Compiles signatures into readers and writers, and keeps what it compiled.

    The caches live here, not in the module, so each owner (one per
    connection) has its own, bounded at ``_CACHE_LIMIT`` entries each.
    """

    __slots__ = ("_bodies", "_body_writers", "_options_read", "_types", "_variant",
                 "_variant_readers", "_variant_sigs")

    def __init__(self) -> None:
        self._types: dict[str, _Type] = {}
        self._variant_sigs: dict[str, bytes] = {}
        self._variant_readers: dict[bytes, tuple[str, Reader]] = {}
        self._bodies: dict[str, _Type] = {}
        self._body_writers: dict[str, Writer] = {}
        self._variant = self._make_variant()
        self._options_read = self._make_options_reader()

    def _make_variant(self) -> _Type:
        types, variant_sigs = self._types, self._variant_sigs
        variants = self._variant_readers
        compile_one, variant_reader = self.compile_one, self._variant_reader

        def write(out: bytearray, data: Any) -> None:
            sig, value = data
            if type(sig) is not str:
                raise Unsupported("variant signature is not a str")
            compiled = types.get(sig) or compile_one(sig)
            out += variant_sigs[sig]
            compiled.write(out, value)

        def read(buf: bytes, pos: int) -> tuple[Any, int]:
            end = pos + 1 + buf[pos]
            if buf[end] != 0:
                raise ValueError("string not NUL-terminated")
            sig_bytes = buf[pos + 1 : end]
            entry = variants.get(sig_bytes) or variant_reader(sig_bytes)
            value, pos = entry[1](buf, end + 1)
            return (entry[0], value), pos

        return _Type("v", 1, write, read)

    def _make_options_reader(self) -> Reader:
        """``a{sv}``, the options argument of most calls, read in one go."""
        u32_from = _U32.unpack_from
        variants = self._variant_readers
        variant_reader = self._variant_reader

        def read(buf: bytes, pos: int) -> tuple[Any, int]:
            pos += -pos & 3
            length = u32_from(buf, pos)[0]
            pos += 4
            pos += -pos & 7
            end = pos + length
            result = {}
            while pos < end:
                pos += -pos & 7
                stop = pos + 4 + u32_from(buf, pos)[0]
                if buf[stop] != 0:
                    raise ValueError("string not NUL-terminated")
                key = buf[pos + 4 : stop].decode("utf-8")
                sig_at = stop + 1
                sig_end = sig_at + 1 + buf[sig_at]
                if buf[sig_end] != 0:
                    raise ValueError("string not NUL-terminated")
                sig_bytes = buf[sig_at + 1 : sig_end]
                entry = variants.get(sig_bytes) or variant_reader(sig_bytes)
                value, pos = entry[1](buf, sig_end + 1)
                result[key] = (entry[0], value)
            return result, pos

        return read

    def _parse(self, sig: str, pos: int) -> tuple[_Type, int]:
        """Compile the complete type starting at ``sig[pos]``; Unsupported if invalid."""
        if pos >= len(sig):
            raise Unsupported(f"signature {sig!r} ends inside a type")
        code = sig[pos]
        if code in _FIXED:
            return _fixed(code), pos + 1
        if code in "sog":
            return _string(code), pos + 1
        if code == "v":
            return self._variant, pos + 1
        if code == "a":
            if sig[pos + 1 : pos + 2] == "{":
                if sig[pos + 2 : pos + 3] not in _BASIC_CODES:
                    raise Unsupported(f"signature {sig!r}: dict key must be a basic type")
                key, after = self._parse(sig, pos + 2)
                value, after = self._parse(sig, after)
                if sig[after : after + 1] != "}":
                    raise Unsupported(f"signature {sig!r}: bad dict entry")
                entry = _struct((key, value), sig[pos + 1 : after + 1])
                return _array(entry, (key, value), self._options_read), after + 1
            elt, after = self._parse(sig, pos + 1)
            return _array(elt, None, self._options_read), after
        if code == "(":
            fields = []
            after = pos + 1
            while sig[after : after + 1] not in (")", ""):
                field, after = self._parse(sig, after)
                fields.append(field)
            if sig[after : after + 1] != ")" or not fields:
                raise Unsupported(f"signature {sig!r}: bad struct")
            return _struct(fields, sig[pos : after + 1]), after + 1
        raise Unsupported(f"signature {sig!r}: type code {code!r} not handled")

    def compile_one(self, sig: str) -> _Type:
        """The compiled single complete type ``sig`` (cached)."""
        compiled = self._types.get(sig)
        if compiled is not None:
            return compiled
        if not isinstance(sig, str) or len(sig) > 255:
            raise Unsupported("not a signature")
        compiled, end = self._parse(sig, 0)
        if end != len(sig):
            raise Unsupported(f"{sig!r} is not one complete type")
        if len(self._types) >= _CACHE_LIMIT:
            self._types.clear()
            self._variant_sigs.clear()
            self._variant_readers.clear()
        self._variant_sigs[sig] = _U8.pack(len(sig)) + sig.encode("ascii") + b"\0"
        self._types[sig] = compiled
        return compiled

    def _variant_reader(self, sig_bytes: bytes) -> tuple[str, Reader]:
        """The signature and reader of a variant's value, from its signature bytes."""
        sig = sig_bytes.decode("utf-8")
        entry = (sig, self.compile_one(sig).read)
        self._variant_readers[sig_bytes] = entry
        return entry

    def type_writer(self, sig: str) -> Writer:
        """The writer for one complete type; raises :class:`Unsupported`."""
        return self.compile_one(sig).write

    def body(self, sig: str) -> _Type:
        """The compiled body (all complete types of ``sig`` as one struct), cached."""
        compiled = self._bodies.get(sig)
        if compiled is None:
            if not isinstance(sig, str) or len(sig) > 255:
                raise Unsupported("not a signature")
            fields = []
            pos = 0
            while pos < len(sig):
                field, pos = self._parse(sig, pos)
                fields.append(field)
            compiled = _struct(fields, f"({sig})")
            if len(self._bodies) >= _CACHE_LIMIT:
                self._bodies.clear()
            self._bodies[sig] = compiled
        return compiled

    def body_writer(self, sig: str) -> Writer:
        """Writer for a whole message body (a tuple) of signature ``sig``.

        The body must start 8-aligned in the output ``bytearray``, as it does
        after a padded header. Raises :class:`Unsupported` for ``h`` and for
        signatures jeepney would treat differently.
        """
        writer = self._body_writers.get(sig)
        if writer is not None:
            return writer
        whole = self.body(sig)
        writer = whole.write
        if len(sig) == 1 or (sig and self._parse(sig, 0)[1] == len(sig)):
            # One complete type: skip the loop over fields.
            inner = self.compile_one(sig).write

            def write_single(out: bytearray, data: Any) -> None:
                if type(data) is not tuple or len(data) != 1:
                    whole.write(out, data)  # raises jeepney's error, or handles a subclass
                    return
                pad = -len(out) & 7
                if pad:
                    out += _ZEROS[pad]
                inner(out, data[0])

            writer = write_single
        if len(self._body_writers) >= _CACHE_LIMIT:
            self._body_writers.clear()
        self._body_writers[sig] = writer
        return writer

# ----------------------------------------------------------------------
# decoding messages
# ----------------------------------------------------------------------
_MESSAGE_TYPES = {t.value: t for t in MessageType}
_HEADER_FIELDS = {f.value: f for f in HeaderFields}
_FLAGS = tuple(MessageFlag(i) for i in range(256))
_LITTLE = Endianness.little
_SIG_FIELD = HeaderFields.signature
_FDS_FIELD = HeaderFields.unix_fds


def _decode_fields(raw: bytes, end: int) -> tuple[dict[HeaderFields, Any], int]:
    """The header fields of a little-endian message, and where they end."""
    u32_from = _U32.unpack_from
    fields: dict[HeaderFields, Any] = {}
    pos = 16
    while pos < end:
        pos += -pos & 7
        field = _HEADER_FIELDS[raw[pos]]
        if raw[pos + 1] != 1 or raw[pos + 3] != 0:
            raise Unsupported("unusual header field")
        code = raw[pos + 2]
        pos += 4
        if code == 0x73 or code == 0x6F:  # "s", "o"
            stop = pos + 4 + u32_from(raw, pos)[0]
            if raw[stop] != 0:
                raise ValueError("string not NUL-terminated")
            fields[field] = raw[pos + 4 : stop].decode("utf-8")
            pos = stop + 1
        elif code == 0x67:  # "g"
            stop = pos + 1 + raw[pos]
            if raw[stop] != 0:
                raise ValueError("string not NUL-terminated")
            fields[field] = raw[pos + 1 : stop].decode("utf-8")
            pos = stop + 1
        elif code == 0x75:  # "u"
            fields[field] = u32_from(raw, pos)[0]
            pos += 4
        else:
            raise Unsupported("unusual header field type")
    if fields.get(_FDS_FIELD):
        raise Unsupported("message carries file descriptors")
    return fields, pos


class _CallShape:
    """What the header-field bytes of a method call decode to, kept for reuse.

    A client calling the same method again sends the same header fields
    (the serial lives outside them), and often the same arguments: bodies
    made only of immutable values are kept too, by their bytes, and handed
    out as fresh containers holding the same immutable values.
    """

    __slots__ = ("bodies", "copy_body", "fields", "pos", "read")

    def __init__(self, fields: dict[HeaderFields, Any], pos: int, compiler: Compiler) -> None:
        self.fields = fields
        self.pos = pos
        sig = fields.get(_SIG_FIELD)
        self.read: Reader | None = None if sig is None else compiler.body(sig).read
        self.copy_body: Callable[[Any], Any] | None = None
        if sig is not None and all(code in _BASIC_CODES for code in sig):
            self.copy_body = _same
        elif sig == "a{sv}":
            self.copy_body = _copy_options
        self.bodies: dict[bytes, Any] = {}

    def body(self, raw: bytes) -> Any:
        read = self.read
        if read is None:
            return ()
        copy_body = self.copy_body
        if copy_body is None or len(raw) - self.pos > _BODY_CACHE_MAX:
            return read(raw, self.pos)[0]
        key = raw[self.pos :]
        body = self.bodies.get(key)
        if body is not None:
            return copy_body(body)
        body = read(raw, self.pos)[0]
        if copy_body is _same or all(v[0] in _BASIC_CODES for v in body[0].values()):
            if len(self.bodies) >= 16:
                self.bodies.clear()
            self.bodies[key] = copy_body(body)
        return body


def _same(body: Any) -> Any:
    return body


def _copy_options(body: Any) -> Any:
    return (dict(body[0]),)


_BODY_CACHE_MAX = 512  # bytes; larger bodies are decoded every time


class MessageDecoder:
    """Decodes whole messages, keeping the header shapes of calls it has seen."""

    __slots__ = ("_compiler", "_shapes")

    def __init__(self, compiler: Compiler) -> None:
        self._compiler = compiler
        self._shapes: dict[bytes, _CallShape] = {}

    def _fast_decode(self, raw: bytes) -> Message:
        if raw[0] != 0x6C:  # "l"
            raise Unsupported("big-endian message")
        message_type = _MESSAGE_TYPES[raw[1]]
        flags = _FLAGS[raw[2]]
        body_length, serial, fields_length = _LENGTHS.unpack_from(raw, 4)
        end = 16 + fields_length
        body: Any
        if raw[1] == 1:  # method call
            key = raw[16:end]
            shapes = self._shapes
            shape = shapes.get(key)
            if shape is None:
                fields, pos = _decode_fields(raw, end)
                shape = _CallShape(fields, pos, self._compiler)
                if pos == end:  # a field running past the array depends on more bytes
                    if len(shapes) >= _CACHE_LIMIT:
                        shapes.clear()
                    shapes[key] = shape
            fields = shape.fields.copy()
            body = shape.body(raw)
        else:
            fields, pos = _decode_fields(raw, end)
            sig = fields.get(_SIG_FIELD)
            body = () if sig is None else self._compiler.body(sig).read(raw, pos)[0]
        header = Header.__new__(Header)
        header.endianness = _LITTLE
        header.message_type = message_type
        header.flags = flags
        header.protocol_version = raw[3]
        header.body_length = body_length
        header.serial = serial
        header.fields = fields
        return Message(header, body)

    def decode(self, raw: bytes, fds: Sequence[Any] = ()) -> Message:
        """``Message.from_buffer(raw, fds)``, decoded faster where possible."""
        try:
            return self._fast_decode(raw)
        except Exception:
            return Message.from_buffer(raw, fds=fds)


class WireParser:
    """Splits a byte stream into messages; a drop-in for jeepney's ``Parser``.

    Chunks that hold whole messages are sliced without copying the rest;
    a partial message is joined only once all its bytes are there.
    """

    def __init__(self, decode: Callable[[bytes, Sequence[Any]], Message]) -> None:
        self._decode = decode
        self._buf = b""
        self._pos = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._need = 0  # size of the next message once known
        self.fds: list[Any] = []

    def add_data(self, data: bytes, fds: Sequence[Any] = ()) -> None:
        if self._pos >= len(self._buf) and not self._pending:
            self._buf = data
            self._pos = 0
        else:
            self._pending.append(data)
            self._pending_bytes += len(data)
        if fds:
            self.fds.extend(fds)

    def _join(self) -> None:
        self._buf = b"".join([self._buf[self._pos :], *self._pending])
        self._pos = 0
        self._pending.clear()
        self._pending_bytes = 0

    def get_next_message(self) -> Message | None:
        """The next complete message, or None until more data arrives."""
        buf, pos = self._buf, self._pos
        have = len(buf) - pos
        need = self._need
        if not need:
            if have < 16:
                if have + self._pending_bytes < 16:
                    return None
                self._join()
                buf, pos = self._buf, 0
                have = len(buf)
            if buf[pos] == 0x6C:
                body_length, _serial, fields_length = _LENGTHS.unpack_from(buf, pos + 4)
                header_length = 16 + fields_length
                need = header_length + (-header_length & 7) + body_length
            else:
                need = calc_msg_size(buf[pos : pos + 16])
            self._need = need
        if have < need:
            if have + self._pending_bytes < need:
                return None
            self._join()
            buf, pos = self._buf, 0
        raw = buf[pos : pos + need]
        self._pos = pos + need
        self._need = 0
        fds = self.fds
        msg = self._decode(raw, fds)
        if fds:
            consumed = msg.header.fields.get(_FDS_FIELD, 0)
            if consumed:
                self.fds = fds[consumed:]
        return msg
