"""The one place that turns messages into bytes and bytes into messages.

Everything above asks a :class:`Wire` to serialise or parse and never
chooses a codec itself. The wire tries the fast path first (the compiled
codec of :mod:`.codec` and the templates of :mod:`.templates`) and falls
back to jeepney's own codec for anything the fast path does not take, so
bytes, decoded values and error texts are always exactly jeepney's: a
value jeepney refuses raises jeepney's own error from here.

Each wire keeps its compiled types, templates and call shapes to itself,
so two connections never share a codec cache.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from typing import Any, TypeAlias, cast

from jeepney.low_level import Message, MessageFlag
from jeepney.wrappers import DBusAddress, new_error, new_method_call, new_method_return, new_signal

from .codec import Compiler, MessageDecoder, WireParser
from .templates import PROPERTIES, Templates

__all__ = ["Fds", "Wire"]

Fds: TypeAlias = "array.array[int] | None"  # descriptors to send with a message, if any


class Wire:
    """Serialises and parses messages for one connection."""

    __slots__ = ("_decoder", "_enable_fds", "_templates")

    def __init__(self, *, enable_fds: bool) -> None:
        compiler = Compiler()
        self._templates = Templates(compiler)
        self._decoder = MessageDecoder(compiler)
        self._enable_fds = enable_fds

    # -- parsing --------------------------------------------------------------------
    def parser(self) -> WireParser:
        """A parser for one byte stream, decoding with this wire's caches."""
        return WireParser(self._decoder.decode)

    def decode(self, raw: bytes, fds: Sequence[Any] = ()) -> Message:
        """``Message.from_buffer(raw, fds=fds)``."""
        return self._decoder.decode(raw, fds)

    # -- serialising ----------------------------------------------------------------
    def _jeepney(self, msg: Message, serial: int) -> tuple[bytes, Fds]:
        """``msg`` serialised by jeepney, with its descriptors when they are enabled."""
        if self._enable_fds:
            fds: array.array[int] = array.array("i")
            data = cast(bytes, msg.serialise(serial, fds=fds))
            return data, (fds if len(fds) else None)
        return cast(bytes, msg.serialise(serial)), None

    def method_call(self, destination: str, path: str, interface: str, member: str,
                    signature: str, body: tuple[Any, ...], serial: int, *,
                    no_reply: bool = False) -> tuple[bytes, Fds]:
        """A method call, flagged NO_REPLY_EXPECTED when ``no_reply``."""
        flags = MessageFlag.no_reply_expected if no_reply else 0
        try:
            return self._templates.method_call(destination, path, interface, member, signature,
                                               body, serial, flags), None
        except Exception:
            pass  # not for the fast path: jeepney builds it, or raises its own error
        msg = new_method_call(DBusAddress(path, bus_name=destination, interface=interface),
                              member, signature or None, body)
        msg.header.flags |= flags
        return self._jeepney(msg, serial)

    def method_return(self, call: Message, signature: str, body: tuple[Any, ...],
                      serial: int) -> tuple[bytes, Fds]:
        """The reply to ``call`` carrying ``body``."""
        try:
            return self._templates.method_return(call, signature, body, serial), None
        except Exception:
            pass  # not for the fast path: jeepney builds it, or raises its own error
        return self._jeepney(new_method_return(call, signature or None, body), serial)

    def error(self, call: Message, name: str, text: str, serial: int) -> tuple[bytes, Fds]:
        """The error ``name`` with message ``text`` answering ``call``."""
        return self._jeepney(new_error(call, name, "s", (text,)), serial)

    def signal(self, path: str, interface: str, member: str, signature: str,
               body: tuple[Any, ...], serial: int) -> bytes:
        """A signal (descriptors in a signal are not sent)."""
        try:
            return self._templates.signal(path, interface, member, signature, body, serial)
        except Exception:
            pass  # not for the fast path: jeepney builds it, or raises its own error
        msg = new_signal(DBusAddress(path, interface=interface), member, signature or None, body)
        return self._jeepney(msg, serial)[0]

    def property_changed(self, path: str, interface: str, name: str, signature: str,
                         value: Any, serial: int) -> bytes:
        """``PropertiesChanged(interface, {name: (signature, value)}, [])`` from ``path``."""
        try:
            return self._templates.properties_changed(path, interface, name, signature, value,
                                                      serial)
        except Exception:
            pass  # not for the fast path: jeepney builds it, or raises its own error
        msg = new_signal(DBusAddress(path, interface=PROPERTIES), "PropertiesChanged",
                         "sa{sv}as", (interface, {name: (signature, value)}, []))
        return self._jeepney(msg, serial)[0]
