"""The tree of exported objects and the standard interfaces answered from it.

Pure bookkeeping, no I/O: which interfaces live at which path, which paths
are ObjectManager roots, what GetManagedObjects and Introspect say. The
connection asks this tree and does the sending.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import UNKNOWN_INTERFACE, UNKNOWN_OBJECT, UNKNOWN_PROPERTY, DBusError
from .interface import Interface, Property
from .introspect import node_xml

PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
STANDARD = (PROPERTIES, INTROSPECTABLE, PEER)

ManagedObjects = dict[str, dict[str, dict[str, tuple[str, Any]]]]


def _is_below(path: str, root: str) -> bool:
    if root == "/":
        return path != "/"
    return path.startswith(root + "/")


def validate_object_path(path: str) -> None:
    """Raise ValueError unless ``path`` is a valid D-Bus object path."""
    if path == "/":
        return
    if not path.startswith("/") or path.endswith("/"):
        raise ValueError(f"invalid object path {path!r}")
    for element in path[1:].split("/"):
        if not element or not all(c.isascii() and (c.isalnum() or c == "_") for c in element):
            raise ValueError(f"invalid object path {path!r}")


class ObjectTree:
    """Exported objects by path, and the ObjectManager roots among them."""

    def __init__(self) -> None:
        self._objects: dict[str, dict[str, Interface]] = {}
        self._managers: set[str] = set()
        # Properties found, kept until the next add or remove: every notification
        # looks its property up, and an exported declaration does not change.
        self._properties: dict[tuple[str, str, str], Property] = {}

    # -- changes ---------------------------------------------------------
    def add(self, path: str, interfaces: Sequence[Interface]) -> list[Interface]:
        """Add interfaces at ``path``; returns the ones that are new."""
        validate_object_path(path)
        self._properties.clear()
        current = self._objects.setdefault(path, {})
        added = []
        for iface in interfaces:
            if iface.name in STANDARD or iface.name == OBJECT_MANAGER:
                raise ValueError(f"{iface.name} is provided by the connection itself")
            if iface.name in current:
                raise ValueError(f"{path} already exports {iface.name}")
            current[iface.name] = iface
            added.append(iface)
        return added

    def remove(self, path: str, names: Iterable[str] | None = None) -> list[str]:
        """Remove some or all interfaces at ``path``; returns the removed names."""
        current = self._objects.get(path)
        if current is None:
            return []
        self._properties.clear()
        wanted = list(current) if names is None else [n for n in names if n in current]
        for name in wanted:
            del current[name]
        if not current:
            del self._objects[path]
        return wanted

    def add_manager(self, root: str) -> None:
        validate_object_path(root)
        self._managers.add(root)

    def remove_manager(self, root: str) -> None:
        self._managers.discard(root)

    # -- queries ---------------------------------------------------------
    def interfaces(self, path: str) -> Mapping[str, Interface] | None:
        return self._objects.get(path)

    def is_exported(self, path: str) -> bool:
        return path in self._objects

    def is_manager(self, path: str) -> bool:
        return path in self._managers

    def managers_of(self, path: str) -> list[str]:
        """The ObjectManager roots whose subtree holds ``path``."""
        return [root for root in self._managers if _is_below(path, root)]

    def node_exists(self, path: str) -> bool:
        """True for exported objects, manager roots and their ancestors."""
        if path in self._objects or path in self._managers:
            return True
        return any(_is_below(p, path) for p in (*self._objects, *self._managers))

    def children(self, path: str) -> set[str]:
        names = set()
        prefix = "/" if path == "/" else path + "/"
        for p in (*self._objects, *self._managers):
            if p != path and p.startswith(prefix):
                names.add(p[len(prefix) :].split("/", 1)[0])
        return names

    def lookup_property(self, path: str, interface: str, name: str) -> Property:
        key = (path, interface, name)
        prop = self._properties.get(key)
        if prop is not None:
            return prop
        iface = self.lookup_interface(path, interface)
        prop = iface.property(name)
        if prop is None:
            raise DBusError(UNKNOWN_PROPERTY, f"no property {name} on {interface} at {path}")
        self._properties[key] = prop
        return prop

    def lookup_interface(self, path: str, interface: str) -> Interface:
        ifaces = self._objects.get(path)
        if ifaces is None:
            raise DBusError(UNKNOWN_OBJECT, f"no object at {path}")
        iface = ifaces.get(interface)
        if iface is None:
            raise DBusError(UNKNOWN_INTERFACE, f"no interface {interface} at {path}")
        return iface

    def object_properties(
        self, path: str, *, include_restricted: bool = True
    ) -> dict[str, dict[str, tuple[str, Any]]]:
        """Interfaces and property values of one object, as ObjectManager lists them."""
        result: dict[str, dict[str, tuple[str, Any]]] = {
            iface.name: iface.property_values(include_restricted=include_restricted)
            for iface in self._objects.get(path, {}).values()
        }
        result[PROPERTIES] = {}
        result[INTROSPECTABLE] = {}
        return result

    def managed_objects(self, root: str, *, include_restricted: bool = True) -> ManagedObjects:
        return {
            path: self.object_properties(path, include_restricted=include_restricted)
            for path in sorted(self._objects)
            if _is_below(path, root)
        }

    def introspect(self, path: str) -> str:
        ifaces = self._objects.get(path, {})
        return node_xml(
            list(ifaces.values()),
            self.children(path),
            exported=bool(ifaces),
            object_manager=path in self._managers,
        )
