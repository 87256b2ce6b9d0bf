"""Which handler answers an incoming call, and the standard interfaces.

Resolves (path, interface, member, signature) against the exported
:class:`~.objects.ObjectTree` — or raises the standard D-Bus error — and
implements Properties, ObjectManager, Introspectable and Peer once for
every exported object. Checks callers against an interface's
``allowed_caller``. No I/O: the connection sends what this decides.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mushpi_ble.lograte import LogRate, RateLimitedLog

from .errors import (
    ACCESS_DENIED,
    INVALID_ARGS,
    PROPERTY_READ_ONLY,
    UNKNOWN_INTERFACE,
    UNKNOWN_METHOD,
    UNKNOWN_OBJECT,
    DBusError,
)
from .interface import CallContext, Interface, Method
from .objects import INTROSPECTABLE, OBJECT_MANAGER, PEER, PROPERTIES, ObjectTree

log = logging.getLogger(__name__)


def _machine_id() -> str:
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            text = Path(candidate).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return uuid.uuid4().hex


_MACHINE_ID = _machine_id()
_STANDARD_INTERFACES = frozenset((PEER, INTROSPECTABLE, PROPERTIES, OBJECT_MANAGER))
_PING = Method("Ping", handler=lambda _ctx: None)
_GET_MACHINE_ID = Method("GetMachineId", "", "s", handler=lambda _ctx: _MACHINE_ID)

OwnerLookup = Callable[[str], "str | None"]
ChangeAnnouncer = Callable[[str, str, Mapping[str, Any]], None]


class Dispatcher:
    """Resolves calls on one connection's exported objects."""

    def __init__(self, tree: ObjectTree, current_owner: OwnerLookup,
                 announce: ChangeAnnouncer) -> None:
        self.tree = tree
        self._current_owner = current_owner
        self._announce = announce
        self._denials = RateLimitedLog(log, "access denials", LogRate(burst=1))

    def _check_caller(self, ctx: CallContext, iface: Interface) -> None:
        allowed = iface.allowed_caller
        if allowed is None:
            return
        owner = self._current_owner(allowed)
        if owner is None or ctx.sender != owner:
            self._denials.log(
                ctx.sender, logging.WARNING,
                "access denied sender=%s path=%s member=%s allowed=%s owner=%s",
                ctx.sender, ctx.path, ctx.member, allowed, owner or "-",
            )
            raise DBusError(ACCESS_DENIED, f"only the owner of {allowed} may call {ctx.member}")

    def resolve(self, ctx: CallContext, signature: str) -> Method:
        """Find the method a call names, or raise the standard D-Bus error."""
        builtin = self._builtin(ctx)
        if builtin is not None:
            method = builtin
            iface = None
        else:
            ifaces = self.tree.interfaces(ctx.path)
            if ifaces is None:
                if self.tree.node_exists(ctx.path):
                    raise DBusError(UNKNOWN_INTERFACE if ctx.interface else UNKNOWN_METHOD,
                                    f"{ctx.path} has no {ctx.interface or ctx.member}")
                raise DBusError(UNKNOWN_OBJECT, f"no object at {ctx.path}")
            found: tuple[Method, Interface] | None = None
            if ctx.interface:
                iface_found = ifaces.get(ctx.interface)
                if iface_found is None:
                    raise DBusError(UNKNOWN_INTERFACE,
                                    f"no interface {ctx.interface} at {ctx.path}")
                m = iface_found.method(ctx.member)
                if m is not None:
                    found = (m, iface_found)
            else:
                for candidate in ifaces.values():
                    m = candidate.method(ctx.member)
                    if m is not None:
                        found = (m, candidate)
                        break
            if found is None:
                raise DBusError(UNKNOWN_METHOD,
                                f"no method {ctx.member} on {ctx.interface or 'any interface'}"
                                f" at {ctx.path}")
            method, iface = found
        if signature != method.in_signature:
            raise DBusError(INVALID_ARGS, f"{ctx.member} takes signature "
                            f"{method.in_signature!r}, got {signature!r}")
        if iface is not None and method.restricted:
            self._check_caller(ctx, iface)
        return method

    # -- the standard interfaces ------------------------------------------
    @functools.cached_property
    def _builtin_methods(self) -> dict[str, Method]:
        return {
            "Introspect": Method("Introspect", "", "s", handler=self._introspect),
            "Get": Method("Get", "ss", "v", handler=self._prop_get),
            "GetAll": Method("GetAll", "s", "a{sv}", handler=self._prop_get_all),
            "Set": Method("Set", "ssv", "", handler=self._prop_set),
            "GetManagedObjects": Method("GetManagedObjects", "", "a{oa{sa{sv}}}",
                                        handler=self._get_managed_objects),
        }

    def _introspect(self, ctx: CallContext) -> str:
        return self.tree.introspect(ctx.path)

    def _builtin(self, ctx: CallContext) -> Method | None:
        iface, member = ctx.interface, ctx.member
        if iface and iface not in _STANDARD_INTERFACES:
            return None  # the usual case: a call on an exported interface
        exported = self.tree.is_exported(ctx.path)
        builtins = self._builtin_methods
        if iface in ("", PEER) and member == "Ping":
            return _PING
        if iface in ("", PEER) and member == "GetMachineId":
            return _GET_MACHINE_ID
        if iface in ("", INTROSPECTABLE) and member == "Introspect":
            if not self.tree.node_exists(ctx.path) and ctx.path != "/":
                raise DBusError(UNKNOWN_OBJECT, f"no object at {ctx.path}")
            return builtins["Introspect"]
        if iface == PROPERTIES or (not iface and member in ("Get", "GetAll", "Set") and exported
                                   and not self._user_has_member(ctx)):
            if not exported:
                raise DBusError(UNKNOWN_OBJECT, f"no object at {ctx.path}")
            if member in ("Get", "GetAll", "Set"):
                return builtins[member]
            raise DBusError(UNKNOWN_METHOD, f"no method {member} on {PROPERTIES}")
        if iface == OBJECT_MANAGER or (not iface and member == "GetManagedObjects"):
            if not self.tree.is_manager(ctx.path):
                if self.tree.node_exists(ctx.path):
                    raise DBusError(UNKNOWN_INTERFACE, f"no {OBJECT_MANAGER} at {ctx.path}")
                raise DBusError(UNKNOWN_OBJECT, f"no object at {ctx.path}")
            if member == "GetManagedObjects":
                return builtins["GetManagedObjects"]
            raise DBusError(UNKNOWN_METHOD, f"no method {member} on {OBJECT_MANAGER}")
        if iface in (PEER, INTROSPECTABLE):
            raise DBusError(UNKNOWN_METHOD, f"no method {member} on {iface}")
        return None

    def _user_has_member(self, ctx: CallContext) -> bool:
        ifaces = self.tree.interfaces(ctx.path) or {}
        return any(i.method(ctx.member) is not None for i in ifaces.values())

    def _may_read_restricted(self, ctx: CallContext, iface: Interface) -> bool:
        if iface.allowed_caller is None:
            return True
        return ctx.sender == self._current_owner(iface.allowed_caller)

    def _prop_get(self, ctx: CallContext, interface: str, name: str) -> tuple[str, Any]:
        iface = self.tree.lookup_interface(ctx.path, interface)
        prop = self.tree.lookup_property(ctx.path, interface, name)
        if prop.restricted:
            self._check_caller(ctx, iface)
        return (prop.signature, prop.get())

    def _prop_get_all(self, ctx: CallContext, interface: str) -> dict[str, tuple[str, Any]]:
        if interface in (PROPERTIES, INTROSPECTABLE, PEER):
            return {}
        iface = self.tree.lookup_interface(ctx.path, interface)
        return iface.property_values(include_restricted=self._may_read_restricted(ctx, iface))

    def _prop_set(self, ctx: CallContext, interface: str, name: str,
                  variant: tuple[str, Any]) -> None:
        iface = self.tree.lookup_interface(ctx.path, interface)
        prop = self.tree.lookup_property(ctx.path, interface, name)
        if prop.set is None:
            raise DBusError(PROPERTY_READ_ONLY, f"{interface}.{name} is read-only")
        if prop.restricted:
            self._check_caller(ctx, iface)
        signature, value = variant
        if signature != prop.signature:
            raise DBusError(INVALID_ARGS, f"{interface}.{name} has type {prop.signature!r}, "
                            f"got {signature!r}")
        prop.set(value)
        self._announce(ctx.path, interface, {name: prop.get()})

    def _get_managed_objects(self, ctx: CallContext) -> dict[str, Any]:
        allowed_all = all(
            self._may_read_restricted(ctx, iface)
            for path in self.tree.managed_objects(ctx.path)
            for iface in (self.tree.interfaces(path) or {}).values()
        )
        return self.tree.managed_objects(ctx.path, include_restricted=allowed_all)
