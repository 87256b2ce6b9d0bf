"""Declarative D-Bus interfaces: methods, properties and signals as data.

An exported object is a path plus a list of :class:`Interface` values. The
connection dispatches incoming calls from these declarations, answers
``Properties``/``Introspectable`` from them, and checks argument
signatures before any handler runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs

from .signature import is_valid_signature, split_signature


@attrs.frozen
class CallContext:
    """What a handler may want to know about the call it is answering."""

    sender: str
    path: str
    interface: str
    member: str
    fds: tuple[Any, ...] = ()


SyncHandler = Callable[..., Any]
AsyncHandler = Callable[..., Awaitable[Any]]


def _check_signature(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not is_valid_signature(value):
        raise ValueError(f"{attribute.name}={value!r} is not a valid D-Bus signature")


@attrs.frozen
class Method:
    """A method: ``handler(ctx, *args)`` returns the out-arguments.

    A handler that returns an awaitable (a coroutine function, or a lambda
    calling one) runs in the handler nursery under a deadline (``timeout``
    seconds, or the connection's default); a plain function answers inline
    on the receive loop and must not block.
    ``restricted`` methods may only be called by the interface's
    ``allowed_caller`` (see :class:`Interface`).
    """

    name: str
    in_signature: str = attrs.field(default="", validator=_check_signature)
    out_signature: str = attrs.field(default="", validator=_check_signature)
    handler: SyncHandler | AsyncHandler | None = None
    arg_names: Sequence[str] = ()
    out_names: Sequence[str] = ()
    timeout: float | None = None
    restricted: bool = True


@attrs.frozen
class Property:
    """A property read by ``get()`` and, when writable, set by ``set(value)``."""

    name: str
    signature: str = attrs.field(validator=_check_signature)
    get: Callable[[], Any]
    set: Callable[[Any], None] | None = None
    restricted: bool = False

    def __attrs_post_init__(self) -> None:
        if len(split_signature(self.signature)) != 1:
            raise ValueError(f"property {self.name}: signature must be one complete type")

    @property
    def access(self) -> str:
        return "readwrite" if self.set is not None else "read"


@attrs.frozen
class Signal:
    """A signal, declared for introspection."""

    name: str
    signature: str = attrs.field(default="", validator=_check_signature)
    arg_names: Sequence[str] = ()


@attrs.frozen
class Interface:
    """One D-Bus interface of an exported object.

    ``allowed_caller`` names a bus name (well-known or unique) whose current
    owner alone may call the ``restricted`` methods and read the
    ``restricted`` properties; everyone else gets ``AccessDenied``.
    """

    name: str
    methods: Sequence[Method] = ()
    properties: Sequence[Property] = ()
    signals: Sequence[Signal] = ()
    allowed_caller: str | None = None

    def method(self, member: str) -> Method | None:
        for method in self.methods:
            if method.name == member:
                return method
        return None

    def property(self, name: str) -> Property | None:
        for prop in self.properties:
            if prop.name == name:
                return prop
        return None

    def property_values(self, *, include_restricted: bool = True) -> dict[str, tuple[str, Any]]:
        """All readable property values as variants, as GetAll answers them."""
        return {
            prop.name: (prop.signature, prop.get())
            for prop in self.properties
            if include_restricted or not prop.restricted
        }
