"""Pre-serialised message headers and a PropertiesChanged template.

A message's header differs between two sends of the same kind only in the
serial, the body length and (for replies) the reply serial. Each builder
here serialises the constant part once with jeepney, which also validates
names and paths the first time, keeps it, and per message copies it,
appends the body with the compiled writers of :mod:`.codec` and patches
the numbers in. The bytes are exactly what jeepney's ``Message.serialise``
produces.

Every method of :class:`Templates` raises (:class:`~.codec.Unsupported` or
what the writers raise) when it cannot produce the message; the
:class:`~.wire.Wire` then builds the message with jeepney, which either
succeeds identically or raises jeepney's own error.
"""

from __future__ import annotations

import struct
from typing import Any

from jeepney.low_level import (
    Endianness,
    Header,
    HeaderFields,
    Message,
    MessageType,
    serialise_header_fields,
)
from jeepney.wrappers import DBusAddress, new_error, new_method_call, new_signal

from .codec import ARRAY_LIMIT, Compiler, Unsupported, Writer

__all__ = ["PropertiesChangedTemplate", "Templates"]

PROPERTIES = "org.freedesktop.DBus.Properties"
_LENGTH_SERIAL = struct.Struct("<II")
_U32 = struct.Struct("<I")
_CACHE_LIMIT = 512
_METHOD_CALL, _METHOD_RETURN, _SIGNAL = 1, 2, 4
_SENDER = HeaderFields.sender
# Up to and including the reply serial, the first header field of a return.
_RETURN_HEAD = struct.Struct("<4sIII4sI")
_RETURN_START = b"l\x02\x00\x01"
_REPLY_SERIAL_FIELD = b"\x05\x01u\x00"

_Template = tuple[bytes, Writer | None]  # header padded to 8, body writer (None: no body)
_ReturnTemplate = tuple[int, bytes, Writer | None]  # fields length, fields after the first


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


class Templates:
    """Builds messages from kept headers; one set of templates per owner.

    The templates are kept here, not in the module, each kind bounded at
    ``_CACHE_LIMIT`` entries.
    """

    __slots__ = ("_calls", "_compiler", "_errors", "_properties_changed", "_returns",
                 "_signals")

    def __init__(self, compiler: Compiler) -> None:
        self._compiler = compiler
        self._returns: dict[tuple[str | None, str], _ReturnTemplate] = {}
        self._signals: dict[tuple[str, str, str, str], _Template] = {}
        self._calls: dict[tuple[str, str, str, str, str], _Template] = {}
        self._errors: dict[tuple[str | None, str, str], tuple[bytes, int]] = {}
        self._properties_changed: dict[tuple[str, str, str, str],
                                       PropertiesChangedTemplate] = {}

    def _body_writer(self, signature: str) -> Writer | None:
        return self._compiler.body_writer(signature) if signature else None

    # -- method returns -----------------------------------------------------------
    def _return_template(self, destination: str | None, signature: str) -> _ReturnTemplate:
        fields: dict[HeaderFields, Any] = {HeaderFields.reply_serial: 0}
        if destination is not None:
            fields[HeaderFields.destination] = destination
        if signature:
            fields[HeaderFields.signature] = signature
        header = _header_bytes(_METHOD_RETURN, fields)
        if header[16:20] != _REPLY_SERIAL_FIELD:
            raise Unsupported("unexpected method-return header layout")
        template = (_U32.unpack_from(header, 12)[0], header[24:], self._body_writer(signature))
        _remember(self._returns, (destination, signature), template)
        return template

    def method_return(self, call: Message, signature: str, body: tuple[Any, ...],
                      serial: int) -> bytes:
        """``new_method_return(call, signature or None, body).serialise(serial)``."""
        call_header = call.header
        destination = call_header.fields.get(_SENDER)
        template = self._returns.get((destination, signature))
        if template is None:
            template = self._return_template(destination, signature)
        fields_length, rest, writer = template
        out = bytearray()
        if writer is not None:
            writer(out, body)  # the header is padded to 8: alignment is the same
        return b"".join((
            _RETURN_HEAD.pack(_RETURN_START, len(out), serial, fields_length,
                              _REPLY_SERIAL_FIELD, call_header.serial),
            rest,
            out,
        ))

    # -- errors -------------------------------------------------------------------
    def _error_template(self, destination: str | None, name: str,
                        text: str) -> tuple[bytes, int]:
        fields = {HeaderFields.sender: destination} if destination is not None else {}

        def serialised(reply_serial: int) -> bytes:
            parent = Message(Header(Endianness.little, MessageType.method_call, 0, 1, 0,
                                    reply_serial, fields), ())
            return bytes(new_error(parent, name, "s", (text,)).serialise(0))

        # jeepney orders header fields by code, so where the reply serial sits depends
        # on the error name before it: found as the only bytes two serials change.
        template, other = serialised(0), serialised(0xFFFFFFFF)
        changed = [i for i, (a, b) in enumerate(zip(template, other, strict=True)) if a != b]
        at = changed[0] if changed else -1
        if len(changed) != 4 or changed[-1] != at + 3 or template[at - 4 : at] != \
                _REPLY_SERIAL_FIELD:
            raise Unsupported("unexpected error header layout")
        entry = (template, at)
        _remember(self._errors, (destination, name, text), entry)
        return entry

    def error(self, call: Message, name: str, text: str, serial: int) -> bytes:
        """``new_error(call, name, "s", (text,)).serialise(serial)``: refusals repeat,
        so each (destination, name, text) is serialised once."""
        call_header = call.header
        destination = call_header.fields.get(_SENDER)
        entry = self._errors.get((destination, name, text))
        if entry is None:
            entry = self._error_template(destination, name, text)
        template, reply_serial_at = entry
        out = bytearray(template)
        _U32.pack_into(out, 8, serial)
        _U32.pack_into(out, reply_serial_at, call_header.serial)
        return bytes(out)

    # -- signals and method calls ---------------------------------------------------
    def _signal_template(self, path: str, interface: str, member: str,
                         signature: str) -> _Template:
        msg = new_signal(DBusAddress(path, interface=interface), member, signature or None)
        template = (_header_bytes(_SIGNAL, msg.header.fields), self._body_writer(signature))
        _remember(self._signals, (path, interface, member, signature), template)
        return template

    def signal(self, path: str, interface: str, member: str, signature: str,
               body: tuple[Any, ...], serial: int) -> bytes:
        """``new_signal(DBusAddress(path, interface=interface), member,
        signature or None, body).serialise(serial)``."""
        template = self._signals.get((path, interface, member, signature))
        if template is None:
            template = self._signal_template(path, interface, member, signature)
        header, writer = template
        out = bytearray(header)
        if writer is not None:
            writer(out, body)
        return _finish(out, len(header), serial)

    def _call_template(self, destination: str, path: str, interface: str, member: str,
                       signature: str) -> _Template:
        msg = new_method_call(DBusAddress(path, bus_name=destination, interface=interface),
                              member, signature or None)
        template = (_header_bytes(_METHOD_CALL, msg.header.fields), self._body_writer(signature))
        _remember(self._calls, (destination, path, interface, member, signature), template)
        return template

    def method_call(self, destination: str, path: str, interface: str, member: str,
                    signature: str, body: tuple[Any, ...], serial: int,
                    flags: int = 0) -> bytes:
        """``new_method_call(DBusAddress(path, bus_name=destination,
        interface=interface), member, signature or None, body)`` with header
        ``flags``, serialised with ``serial``."""
        key = (destination, path, interface, member, signature)
        template = self._calls.get(key)
        if template is None:
            template = self._call_template(*key)
        header, writer = template
        out = bytearray(header)
        out[2] = flags
        if writer is not None:
            writer(out, body)
        return _finish(out, len(header), serial)

    # -- PropertiesChanged with one changed property ------------------------------
    def properties_changed(self, path: str, interface: str, name: str, signature: str,
                           value: Any, serial: int) -> bytes:
        """``PropertiesChanged(interface, {name: (signature, value)}, [])`` from ``path``."""
        key = (path, interface, name, signature)
        template = self._properties_changed.get(key)
        if template is None:
            header = self._signals.get((path, PROPERTIES, "PropertiesChanged", "sa{sv}as"))
            if header is None:
                header = self._signal_template(path, PROPERTIES, "PropertiesChanged",
                                               "sa{sv}as")
            template = PropertiesChangedTemplate(header[0], interface, name, signature,
                                                 self._compiler)
            _remember(self._properties_changed, key, template)
        return template.encode(value, serial)


class PropertiesChangedTemplate:
    """``PropertiesChanged(interface, {name: <value>}, [])`` after a signal ``header``.

    Everything up to the value is fixed once the path, interface, property
    name and signature are; per message only the value is written and the
    serial, body length and dict-array length are patched.
    """

    __slots__ = ("_array_at", "_entries_at", "_header_length", "_prefix", "_write")

    def __init__(self, header: bytes, interface: str, name: str, signature: str,
                 compiler: Compiler) -> None:
        self._write: Writer = compiler.type_writer(signature)
        out = bytearray(header)
        base = len(out)
        compiler.type_writer("s")(out, interface)
        out += b"\0" * (-len(out) & 3)
        self._array_at = len(out)
        out += b"\0\0\0\0"
        out += b"\0" * (-len(out) & 7)
        self._entries_at = len(out)
        compiler.type_writer("s")(out, name)
        compiler.type_writer("g")(out, signature)
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
