"""GATT applications exported by hand with the D-Bus layer, for the fake's tests.

Nothing here goes through a GATT layer of the project: each object is a
plain :class:`Interface` whose handlers record exactly what bluetoothd sent.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from mushpi_ble.dbus import CallContext, Connection, DBusError, Interface, Method, Property

SERVICE = "org.bluez.GattService1"
CHRC = "org.bluez.GattCharacteristic1"
DESC = "org.bluez.GattDescriptor1"
MANAGER = "org.bluez.GattManager1"
ADV_MANAGER = "org.bluez.LEAdvertisingManager1"
ADVERT = "org.bluez.LEAdvertisement1"
HCI0 = "/org/bluez/hci0"

Variant = tuple[str, Any]


def const(value: Any) -> Callable[[], Any]:
    """A getter that always answers ``value``."""
    return lambda: value


def export_raw(conn: Connection, path: str, interface: str, props: dict[str, Variant],
               methods: list[Method] | None = None) -> None:
    """Export ``props`` exactly as given (signature, value), however broken."""
    conn.export(path, [Interface(interface, methods=methods or [], properties=[
        Property(name, sig, get=const(value)) for name, (sig, value) in props.items()
    ])])


class HandChar:
    """A characteristic that records every call and answers as configured."""

    def __init__(self, conn: Connection, path: str, uuid: str, service: str,
                 flags: list[str], value: bytes = b"", *, notify_acquired: bool = False,
                 write_acquired: bool = False,
                 extra: dict[str, Variant] | None = None) -> None:
        self.conn = conn
        self.path = path
        self.uuid = uuid
        self.value = value
        self.reads: list[dict[str, Variant]] = []
        self.writes: list[tuple[bytes, dict[str, Variant]]] = []
        self.calls: list[str] = []
        self.read_error: tuple[str, str] | None = None
        self.write_error: tuple[str, str] | None = None
        self.read_reply: Any = None
        self.sockets: list[socket.socket] = []
        self._keep: list[socket.socket] = []
        props: dict[str, Variant] = {
            "UUID": ("s", uuid), "Service": ("o", service), "Flags": ("as", flags),
        }
        if notify_acquired:
            props["NotifyAcquired"] = ("b", False)
        if write_acquired:
            props["WriteAcquired"] = ("b", False)
        props.update(extra or {})
        methods = [
            Method("ReadValue", "a{sv}", "ay", handler=self._read),
            Method("WriteValue", "aya{sv}", "", handler=self._write),
            Method("StartNotify", "", "", handler=lambda _c: self.calls.append("StartNotify")),
            Method("StopNotify", "", "", handler=lambda _c: self.calls.append("StopNotify")),
            Method("Confirm", "", "", handler=lambda _c: self.calls.append("Confirm")),
            Method("AcquireNotify", "a{sv}", "hq", handler=self._acquire),
            Method("AcquireWrite", "a{sv}", "hq", handler=self._acquire_write),
        ]
        conn.export(path, [Interface(CHRC, methods=methods, properties=[
            Property(name, sig, get=const(v)) for name, (sig, v) in props.items()
        ] + [Property("Value", "ay", get=lambda: self.value)])])

    def _read(self, _ctx: CallContext, options: dict[str, Variant]) -> Any:
        self.reads.append(options)
        self.calls.append("ReadValue")
        if self.read_error is not None:
            raise DBusError(*self.read_error)
        if self.read_reply is not None:
            return self.read_reply
        offset = options["offset"][1] if "offset" in options else 0
        return self.value[offset:]

    def _write(self, _ctx: CallContext, value: bytes, options: dict[str, Variant]) -> None:
        self.writes.append((bytes(value), options))
        self.calls.append("WriteValue")
        if self.write_error is not None:
            raise DBusError(*self.write_error)

    def _acquire(self, _ctx: CallContext, options: dict[str, Variant]) -> tuple[Any, int]:
        self.calls.append("AcquireNotify")
        self.reads.append(options)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sockets.append(ours)
        self._keep.append(theirs)
        return theirs, int(options["mtu"][1])

    def _acquire_write(self, ctx: CallContext, options: dict[str, Variant]) -> tuple[Any, int]:
        self.calls.append("AcquireWrite")
        self.reads.append(options)
        if self.write_error is not None:
            raise DBusError(*self.write_error)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sockets.append(ours)
        self._keep.append(theirs)
        return theirs, int(options["mtu"][1])

    async def notify(self, value: bytes, conn: Connection | None = None) -> None:
        """Emit PropertiesChanged(Value) — from the app's connection unless told otherwise."""
        await (conn or self.conn).emit_signal(
            self.path, "org.freedesktop.DBus.Properties", "PropertiesChanged", "sa{sv}as",
            (CHRC, {"Value": ("ay", value)}, []))

    def close_sent_ends(self) -> None:
        """Close our copies of the ends handed to bluetoothd (once it has them)."""
        for sock in self._keep:
            sock.close()
        self._keep.clear()

    def close(self) -> None:
        for sock in self.sockets + self._keep:
            sock.close()


class HandApp:
    """An application root with an ObjectManager, filled by hand."""

    def __init__(self, conn: Connection, root: str = "/app") -> None:
        self.conn = conn
        self.root = root
        self.chars: dict[str, HandChar] = {}
        conn.add_object_manager(root)

    def service(self, name: str = "s0", uuid: str = "180d", *, primary: bool = True,
                extra: dict[str, Variant] | None = None) -> str:
        path = f"{self.root}/{name}"
        export_raw(self.conn, path, SERVICE,
                   {"UUID": ("s", uuid), "Primary": ("b", primary), **(extra or {})})
        return path

    def characteristic(self, service: str, name: str, uuid: str, flags: list[str],
                       value: bytes = b"", **kwargs: Any) -> HandChar:
        chrc = HandChar(self.conn, f"{service}/{name}", uuid, service, flags, value, **kwargs)
        self.chars[uuid] = chrc
        return chrc

    def descriptor(self, chrc: str, name: str, uuid: str, flags: list[str],
                   value: bytes = b"") -> str:
        path = f"{chrc}/{name}"
        export_raw(self.conn, path, DESC,
                   {"UUID": ("s", uuid), "Characteristic": ("o", chrc), "Flags": ("as", flags)},
                   methods=[Method("ReadValue", "a{sv}", "ay", handler=lambda _c, _o: value)])
        return path

    async def register(self, adapter: str = HCI0) -> None:
        await self.conn.call("org.bluez", adapter, MANAGER, "RegisterApplication", "oa{sv}",
                             (self.root, {}))

    async def unregister(self, adapter: str = HCI0) -> None:
        await self.conn.call("org.bluez", adapter, MANAGER, "UnregisterApplication", "o",
                             (self.root,))

    def close(self) -> None:
        for chrc in self.chars.values():
            chrc.close()


def heart_rate_app(conn: Connection, value: bytes = b"\x00\x48", root: str = "/app") -> HandApp:
    """One service, a read+notify characteristic, a writable one, a plain one."""
    app = HandApp(conn, root)
    service = app.service()
    app.characteristic(service, "c0", "2a37", ["read", "notify"], value)
    app.characteristic(service, "c1", "2a39", ["read", "write"])
    app.characteristic(service, "c2", "2a38", ["read"], b"\x01")
    return app


@asynccontextmanager
async def registered(conn: Connection, app: HandApp) -> AsyncIterator[HandApp]:
    await app.register()
    try:
        yield app
    finally:
        app.close()


def unwrap(options: dict[str, Variant]) -> dict[str, Any]:
    return {key: value for key, (_sig, value) in options.items()}
