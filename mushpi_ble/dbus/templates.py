"""Pre-serialised message headers and a PropertiesChanged template.

A message's header differs between two sends of the same kind only in the
serial, the body length and (for replies) the reply serial. Each builder
here serialises the constant part once with jeepney, which also validates
names and paths the first time, keeps it, and per message copies it,
appends the body with the compiled writers of :mod:`.codec` and patches
the numbers in. The bytes are exactly what jeepney's ``Message.serialise``
produces.

Every ``encode_*`` function raises (:class:`~.codec.Unsupported` or what
the writers raise) when it cannot produce the message; callers then build
the message with jeepney, which either succeeds identically or raises
jeepney's own error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from jeepney.low_level import Endianness, HeaderFields, Message, serialise_header_fields
from jeepney.wrappers import DBusAddress, new_method_call, new_signal

from .codec import ARRAY_LIMIT, Unsupported, Writer, body_writer, type_writer

__all__ = [
    "PropertiesChangedTemplate",
    "encode_method_call",
    "encode_method_return",
    "encode_properties_changed",
    "encode_signal",
]

PROPERTIES = "org.freedesktop.DBus.Properties"
_LENGTH_SERIAL = struct.Struct("<II")
_U32 = struct.Struct("<I")
_CACHE_LIMIT = 512
_METHOD_CALL, _METHOD_RETURN, _SIGNAL = 1, 2, 4


def _header_bytes(message_type: int, fields: dict[HeaderFields, Any]) -> bytes:
    """The header (body length and serial zero), padded to 8 bytes."""
    encoded: bytes = serialise_header_fields(fields, Endianness.little)
    head = bytes((0x6C, message_type, 0, 1)) + b"\0" * 8 + encoded
    return head + b"\0" * (-len(head) & 7)


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def _finish(out: bytearray, header_length: int, serial: int) -> bytes:
    _LENGTH_SERIAL.pack_into(out, 4, len(out) - header_length, serial)
    return bytes(out)


# ----------------------------------------------------------------------
# method returns
# ----------------------------------------------------------------------
_RETURNS: dict[tuple[str | None, str], tuple[int, bytes, Writer | None]] = {}
_SENDER = HeaderFields.sender
# Up to and including the reply serial, the first header field of a return.
_RETURN_HEAD = struct.Struct("<4sIII4sI")
_RETURN_START = b"l\x02\x00\x01"
_REPLY_SERIAL_FIELD = b"\x05\x01u\x00"


def _return_template(destination: str | None,
                     signature: str) -> tuple[int, bytes, Writer | None]:
    fields: dict[HeaderFields, Any] = {HeaderFields.reply_serial: 0}
    if destination is not None:
        fields[HeaderFields.destination] = destination
    if signature:
        fields[HeaderFields.signature] = signature
    header = _header_bytes(_METHOD_RETURN, fields)
    if header[16:20] != _REPLY_SERIAL_FIELD:
        raise Unsupported("unexpected method-return header layout")
    writer = body_writer(signature) if signature else None
    template = (_U32.unpack_from(header, 12)[0], header[24:], writer)
    _remember(_RETURNS, (destination, signature), template)
    return template


def encode_method_return(call: Message, signature: str, body: tuple[Any, ...],
                         serial: int) -> bytes:
    """``new_method_return(call, signature or None, body).serialise(serial)``."""
    call_header = call.header
    destination = call_header.fields.get(_SENDER)
    template = _RETURNS.get((destination, signature))
    if template is None:
        template = _return_template(destination, signature)
    fields_length, rest, writer = template
    out = bytearray()
    if writer is not None:
        writer(out, body)  # the header is padded to 8: alignment is the same
    return b"".join((
        _RETURN_HEAD.pack(_RETURN_START, len(out), serial, fields_length, _REPLY_SERIAL_FIELD,
                          call_header.serial),
        rest,
        out,
    ))


# ----------------------------------------------------------------------
# signals and method calls
# ----------------------------------------------------------------------
_SIGNALS: dict[tuple[str, str, str, str], tuple[bytes, Writer | None]] = {}
_CALLS: dict[tuple[str, str, str, str, str], tuple[bytes, Writer | None]] = {}


def _signal_template(path: str, interface: str, member: str,
                     signature: str) -> tuple[bytes, Writer | None]:
    msg = new_signal(DBusAddress(path, interface=interface), member, signature or None)
    template = (_header_bytes(_SIGNAL, msg.header.fields),
                body_writer(signature) if signature else None)
    _remember(_SIGNALS, (path, interface, member, signature), template)
    return template


def encode_signal(path: str, interface: str, member: str, signature: str,
                  body: tuple[Any, ...], serial: int) -> bytes:
    """``new_signal(DBusAddress(path, interface=interface), member,
    signature or None, body).serialise(serial)``."""
    template = _SIGNALS.get((path, interface, member, signature))
    if template is None:
        template = _signal_template(path, interface, member, signature)
    header, writer = template
    out = bytearray(header)
    if writer is not None:
        writer(out, body)
    return _finish(out, len(header), serial)


def _call_template(destination: str, path: str, interface: str, member: str,
                   signature: str) -> tuple[bytes, Writer | None]:
    msg = new_method_call(DBusAddress(path, bus_name=destination, interface=interface),
                          member, signature or None)
    template = (_header_bytes(_METHOD_CALL, msg.header.fields),
                body_writer(signature) if signature else None)
    _remember(_CALLS, (destination, path, interface, member, signature), template)
    return template


def encode_method_call(destination: str, path: str, interface: str, member: str,
                       signature: str, body: tuple[Any, ...], serial: int,
                       flags: int = 0) -> bytes:
    """``new_method_call(DBusAddress(path, bus_name=destination,
    interface=interface), member, signature or None, body)`` with header
    ``flags``, serialised with ``serial``."""
    key = (destination, path, interface, member, signature)
    template = _CALLS.get(key)
    if template is None:
        template = _call_template(*key)
    header, writer = template
    out = bytearray(header)
    out[2] = flags
    if writer is not None:
        writer(out, body)
    return _finish(out, len(header), serial)


# ----------------------------------------------------------------------
# PropertiesChanged with one changed property
# ----------------------------------------------------------------------
class PropertiesChangedTemplate:
    """``PropertiesChanged(interface, {name: <value>}, [])`` from ``path``.

    Everything up to the value is fixed once the path, interface, property
    name and signature are; per message only the value is written and the
    serial, body length and dict-array length are patched.
    """

    __slots__ = ("_array_at", "_entries_at", "_header_length", "_prefix", "_write")

    def __init__(self, path: str, interface: str, name: str, signature: str) -> None:
        header, _writer = _signal_template(path, PROPERTIES, "PropertiesChanged", "sa{sv}as")
        self._write: Callable[[bytearray, Any], None] = type_writer(signature)
        out = bytearray(header)
        base = len(out)
        type_writer("s")(out, interface)
        out += b"\0" * (-len(out) & 3)
        self._array_at = len(out)
        out += b"\0\0\0\0"
        out += b"\0" * (-len(out) & 7)
        self._entries_at = len(out)
        type_writer("s")(out, name)
        type_writer("g")(out, signature)
        self._prefix = bytes(out)
        self._header_length = base

    def encode(self, value: Any, serial: int) -> bytes:
        out = bytearray(self._prefix)
        self._write(out, value)
        entries_length = len(out) - self._entries_at
        if entries_length > ARRAY_LIMIT:
            raise Unsupported("array too large")
        _U32.pack_into(out, self._array_at, entries_length)
        pad = -len(out) & 3
        out += b"\0\0\0\0\0\0\0"[: pad + 4]  # padding, then the empty "as"
        return _finish(out, self._header_length, serial)


_PROPERTIES_CHANGED: dict[tuple[str, str, str, str], PropertiesChangedTemplate] = {}


def encode_properties_changed(path: str, interface: str, name: str, signature: str,
                              value: Any, serial: int) -> bytes:
    """``PropertiesChanged(interface, {name: (signature, value)}, [])`` from ``path``."""
    key = (path, interface, name, signature)
    template = _PROPERTIES_CHANGED.get(key)
    if template is None:
        template = PropertiesChangedTemplate(*key)
        _remember(_PROPERTIES_CHANGED, key, template)
    return template.encode(value, serial)

