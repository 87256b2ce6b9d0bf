"""The GATT database bluetoothd builds from an application's objects.

Pure: takes a ``GetManagedObjects`` answer, validates it the way
``src/gatt-database.c`` does and lays out an attribute table with handles.
Two stages fail differently, as in bluetoothd: a structural fault (unknown
flag, a characteristic pointing at no service of the app, a descriptor at
no characteristic) gives "No valid service object found"; a bad property
found while inserting (UUID missing or unparsable, GAP/GATT UUID, Primary
missing, wrong Handle type, handle clash) gives "Failed to create entry in
database".
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from typing import Any, Final

import attrs

from . import att
from .names import (
    DATABASE_ENTRY_FAILED,
    GATT_CHARACTERISTIC,
    GATT_DESCRIPTOR,
    GATT_SERVICE,
    NO_OBJECT_RECEIVED,
    NO_VALID_SERVICE,
)
from .uuids import GAP_SERVICE, parse_uuid
from .uuids import GATT_SERVICE as GATT_SERVICE_UUID

Variant = tuple[str, Any]
ObjectProperties = Mapping[str, Variant]
ManagedObjects = Mapping[str, Mapping[str, ObjectProperties]]

FIRST_APP_HANDLE: Final = 0x0010  # after GAP (0x0001-0x0005) and GATT (0x0006-0x000f)
MAX_HANDLE: Final = 0xFFFF

# BT_GATT_CHRC_PROP_* and BT_GATT_CHRC_EXT_PROP_*
PROP_BROADCAST = 0x01
PROP_READ = 0x02
PROP_WRITE_WITHOUT_RESP = 0x04
PROP_WRITE = 0x08
PROP_NOTIFY = 0x10
PROP_INDICATE = 0x20
PROP_AUTH = 0x40
PROP_EXT = 0x80
EXT_RELIABLE_WRITE = 0x01
EXT_WRITABLE_AUX = 0x02
EXT_ENC_READ = 0x04
EXT_ENC_WRITE = 0x08
EXT_AUTH_READ = 0x10
EXT_AUTH_WRITE = 0x20


@attrs.frozen
class _Flag:
    props: int = 0
    ext: int = 0
    perm: int = 0
    ccc_perm: int = 0
    authorize: bool = False


CHARACTERISTIC_FLAGS: Final[dict[str, _Flag]] = {
    "broadcast": _Flag(props=PROP_BROADCAST),
    "read": _Flag(props=PROP_READ, perm=att.PERM_READ),
    "write-without-response": _Flag(props=PROP_WRITE_WITHOUT_RESP, perm=att.PERM_WRITE),
    "write": _Flag(props=PROP_WRITE, perm=att.PERM_WRITE),
    "notify": _Flag(props=PROP_NOTIFY),
    "indicate": _Flag(props=PROP_INDICATE),
    "authenticated-signed-writes": _Flag(props=PROP_AUTH, perm=att.PERM_WRITE),
    "extended-properties": _Flag(props=PROP_EXT),
    "reliable-write": _Flag(ext=EXT_RELIABLE_WRITE, perm=att.PERM_WRITE),
    "writable-auxiliaries": _Flag(ext=EXT_WRITABLE_AUX),
    # since 5.62 ("gatt: remove superfluous extended properties") the security flags add
    # no extended properties, so no Characteristic Extended Properties descriptor
    "encrypt-read": _Flag(PROP_READ, perm=att.PERM_READ | att.PERM_READ_ENCRYPT),
    "encrypt-write": _Flag(PROP_WRITE, perm=att.PERM_WRITE | att.PERM_WRITE_ENCRYPT),
    "encrypt-authenticated-read": _Flag(PROP_READ, perm=att.PERM_READ | att.PERM_READ_AUTHEN),
    "encrypt-authenticated-write": _Flag(
        PROP_WRITE, perm=att.PERM_WRITE | att.PERM_WRITE_AUTHEN),
    "secure-read": _Flag(PROP_READ, perm=att.PERM_READ | att.PERM_READ_SECURE),
    "secure-write": _Flag(PROP_WRITE, perm=att.PERM_WRITE | att.PERM_WRITE_SECURE),
    "authorize": _Flag(authorize=True),
    "encrypt-notify": _Flag(props=PROP_NOTIFY, ccc_perm=att.PERM_WRITE_ENCRYPT),
    "encrypt-authenticated-notify": _Flag(props=PROP_NOTIFY, ccc_perm=att.PERM_WRITE_AUTHEN),
    "secure-notify": _Flag(props=PROP_NOTIFY, ccc_perm=att.PERM_WRITE_SECURE),
    "encrypt-indicate": _Flag(props=PROP_INDICATE, ccc_perm=att.PERM_WRITE_ENCRYPT),
    "encrypt-authenticated-indicate": _Flag(props=PROP_INDICATE, ccc_perm=att.PERM_WRITE_AUTHEN),
    "secure-indicate": _Flag(props=PROP_INDICATE, ccc_perm=att.PERM_WRITE_SECURE),
}

DESCRIPTOR_FLAGS: Final[dict[str, _Flag]] = {
    "read": _Flag(perm=att.PERM_READ),
    "write": _Flag(perm=att.PERM_WRITE),
    "encrypt-read": _Flag(perm=att.PERM_READ | att.PERM_READ_ENCRYPT),
    "encrypt-write": _Flag(perm=att.PERM_WRITE | att.PERM_WRITE_ENCRYPT),
    "encrypt-authenticated-read": _Flag(perm=att.PERM_READ | att.PERM_READ_AUTHEN),
    "encrypt-authenticated-write": _Flag(perm=att.PERM_WRITE | att.PERM_WRITE_AUTHEN),
    "secure-read": _Flag(perm=att.PERM_READ | att.PERM_READ_SECURE),
    "secure-write": _Flag(perm=att.PERM_WRITE | att.PERM_WRITE_SECURE),
    "authorize": _Flag(authorize=True),
}

CCC_UUID: Final = "00002902-0000-1000-8000-00805f9b34fb"
CEP_UUID: Final = "00002900-0000-1000-8000-00805f9b34fb"
PRIMARY_UUID: Final = "00002800-0000-1000-8000-00805f9b34fb"
SECONDARY_UUID: Final = "00002801-0000-1000-8000-00805f9b34fb"
INCLUDE_UUID: Final = "00002802-0000-1000-8000-00805f9b34fb"
DECLARATION_UUID: Final = "00002803-0000-1000-8000-00805f9b34fb"


class RegistrationError(Exception):
    """RegisterApplication fails with ``org.bluez.Error.Failed`` and this text."""

    def __init__(self, text: str, detail: str) -> None:
        super().__init__(f"{text}: {detail}")
        self.text = text
        self.detail = detail


@attrs.frozen
class Attribute:
    """One row of the attribute table."""

    handle: int
    type: str
    uuid: str
    path: str


@attrs.define(eq=False)
class Descriptor:
    path: str
    uuid: str
    characteristic_path: str
    flags: tuple[str, ...]
    perm: int
    authorize: bool
    handle: int = 0


@attrs.define(eq=False)
class Characteristic:
    """A characteristic and the state bluetoothd keeps for it (``external_chrc``)."""

    path: str
    uuid: str
    service_path: str
    flags: tuple[str, ...]
    props: int
    ext_props: int
    perm: int
    ccc_perm: int
    authorize: bool
    notify_acquired: bool
    write_acquired: bool
    handle: int = 0
    declaration_handle: int = 0
    ccc_handle: int | None = None
    cep_handle: int | None = None
    descriptors: list[Descriptor] = attrs.Factory(list)
    # runtime state
    notify_count: int = 0
    prep_authorized: bool = False
    removed: bool = False
    write_socket: socket.socket | None = None  # from AcquireWrite, shared by all devices
    shared_notify: Any = None  # before 5.69: the one notify socket of every subscriber
    socket_reads: int = 0  # values read from notify sockets (delivered or not), for tests

    @property
    def can_notify(self) -> bool:
        return bool(self.props & PROP_NOTIFY)

    @property
    def can_indicate(self) -> bool:
        return bool(self.props & PROP_INDICATE)

    @property
    def write_without_response(self) -> bool:
        """bluetoothd acks every write at once and ignores the app's reply."""
        return bool(self.props & PROP_WRITE_WITHOUT_RESP)


@attrs.define(eq=False)
class Service:
    path: str
    uuid: str
    primary: bool
    handle: int
    end_handle: int
    includes: list[str] = attrs.Factory(list)
    characteristics: list[Characteristic] = attrs.Factory(list)


@attrs.define(eq=False)
class Database:
    """What a successful registration produced."""

    services: list[Service]
    attributes: list[Attribute]
    handle_writes: list[tuple[str, str, int]]  # (path, interface, handle) for Handle=0 objects

    def characteristics(self) -> Iterator[Characteristic]:
        for service in self.services:
            yield from service.characteristics


@attrs.define
class HandleSpace:
    """Which handle ranges an adapter's database uses (``gatt_db``)."""

    next_handle: int = FIRST_APP_HANDLE
    ranges: list[tuple[int, int]] = attrs.Factory(list)

    def reserve(self, start: int, count: int) -> int | None:
        if start == 0:
            start = self.next_handle
        end = start + count - 1
        if start < 1 or end > MAX_HANDLE or start < FIRST_APP_HANDLE:
            return None
        if any(not (end < lo or start > hi) for lo, hi in self.ranges):
            return None
        self.ranges.append((start, end))
        self.next_handle = max(self.next_handle, end + 1)
        return start

    def release(self, start: int, end: int) -> None:
        if (start, end) in self.ranges:
            self.ranges.remove((start, end))


def _prop(props: ObjectProperties, name: str, signature: str) -> Any | None:
    variant = props.get(name)
    if variant is None or variant[0] != signature:
        return None
    return variant[1]


def _parse_flags(props: ObjectProperties, table: Mapping[str, _Flag]) -> _Flag | None:
    """Combine Flags the way bluetoothd does; None for a missing/empty/unknown one."""
    flags = _prop(props, "Flags", "as")
    if not flags:
        return None
    result = _Flag()
    for flag in flags:
        spec = table.get(flag)
        if spec is None:
            return None
        result = _Flag(result.props | spec.props, result.ext | spec.ext, result.perm | spec.perm,
                       result.ccc_perm | spec.ccc_perm, result.authorize or spec.authorize)
    if result.ext:
        result = attrs.evolve(result, props=result.props | PROP_EXT)
    return result


def _uuid(props: ObjectProperties) -> str | None:
    text = _prop(props, "UUID", "s")
    parsed = parse_uuid(text) if text is not None else None
    if parsed is None or parsed.canonical in (GAP_SERVICE, GATT_SERVICE_UUID):
        return None
    return parsed.canonical


def _handle(props: ObjectProperties) -> int | None:
    """The requested handle (0 = let bluetoothd choose); None for a wrong type."""
    if "Handle" not in props:
        return 0
    value = _prop(props, "Handle", "q")
    return None if value is None else int(value)


@attrs.define
class _Pending:
    path: str
    props: ObjectProperties
    count: int = 1
    chars: list[tuple[str, ObjectProperties, _Flag]] = attrs.Factory(list)
    descs: list[tuple[str, ObjectProperties, _Flag, str]] = attrs.Factory(list)


def build_database(objects: ManagedObjects, space: HandleSpace) -> Database:
    """Validate ``objects`` and lay out their attributes in ``space``.

    ``space`` is changed only when the whole application fits.
    """
    proxies = [
        (path, iface, props)
        for path, ifaces in objects.items()
        for iface, props in ifaces.items()
        if not iface.startswith("org.freedesktop.DBus.")
    ]
    if not proxies:
        raise RegistrationError(NO_OBJECT_RECEIVED, "the application listed no objects")
    services: dict[str, _Pending] = {}
    for path, iface, props in proxies:
        if iface == GATT_SERVICE:
            services[path] = _Pending(path, props)
    char_owner: dict[str, _Pending] = {}
    for path, iface, props in proxies:
        if iface != GATT_CHARACTERISTIC:
            continue
        service_path = _prop(props, "Service", "o")
        owner = services.get(service_path) if service_path is not None else None
        if owner is None:
            raise RegistrationError(NO_VALID_SERVICE, f"{path}: Service {service_path!r} "
                                    "is not a service of this application")
        flags = _parse_flags(props, CHARACTERISTIC_FLAGS)
        if flags is None:
            raise RegistrationError(NO_VALID_SERVICE, f"{path}: invalid characteristic Flags "
                                    f"{props.get('Flags')!r}")
        owner.count += 2 + bool(flags.props & (PROP_NOTIFY | PROP_INDICATE)) + bool(flags.ext)
        owner.chars.append((path, props, flags))
        char_owner[path] = owner
    for path, iface, props in proxies:
        if iface != GATT_DESCRIPTOR:
            continue
        char_path = _prop(props, "Characteristic", "o")
        owner = char_owner.get(char_path) if char_path is not None else None
        if owner is None or char_path is None:
            raise RegistrationError(NO_VALID_SERVICE, f"{path}: Characteristic {char_path!r} "
                                    "is not a characteristic of this application")
        flags = _parse_flags(props, DESCRIPTOR_FLAGS)
        if flags is None:
            raise RegistrationError(NO_VALID_SERVICE, f"{path}: invalid descriptor Flags "
                                    f"{props.get('Flags')!r}")
        owner.count += 1
        owner.descs.append((path, props, flags, char_path))
    if not services:
        raise RegistrationError(NO_VALID_SERVICE, "the application has no GattService1 object")
    trial = HandleSpace(space.next_handle, list(space.ranges))
    database = Database([], [], [])
    for pending in services.values():
        _add_service(pending, database, trial)
    space.next_handle = trial.next_handle
    space.ranges = trial.ranges
    return database


def _fail(detail: str) -> RegistrationError:
    return RegistrationError(DATABASE_ENTRY_FAILED, detail)


def _add_service(pending: _Pending, database: Database, space: HandleSpace) -> None:
    props = pending.props
    uuid = _uuid(props)
    if uuid is None:
        raise _fail(f"{pending.path}: UUID {props.get('UUID')!r} is missing, unparsable or "
                    "reserved for bluetoothd")
    primary = _prop(props, "Primary", "b")
    if primary is None:
        raise _fail(f"{pending.path}: Primary is missing or not a boolean")
    includes: list[str] = []
    if "Includes" in props:
        value = _prop(props, "Includes", "ao")
        if value is None:
            raise _fail(f"{pending.path}: Includes is not an array of object paths")
        includes = [str(p) for p in value]
    requested = _handle(props)
    if requested is None:
        raise _fail(f"{pending.path}: Handle is not a uint16")
    count = pending.count + len(includes)
    start = space.reserve(requested, count)
    if start is None:
        raise _fail(f"{pending.path}: no room for {count} handles at 0x{requested:04x}")
    end = start + count - 1
    service = Service(pending.path, uuid, bool(primary), start, end, includes)
    database.services.append(service)
    database.attributes.append(Attribute(start, PRIMARY_UUID if primary else SECONDARY_UUID,
                                         uuid, pending.path))
    if requested == 0 and "Handle" in props:
        database.handle_writes.append((pending.path, GATT_SERVICE, start))
    cursor = start + 1
    for include in includes:
        included = next((s for s in database.services if s.path == include), None)
        if included is not None:
            database.attributes.append(Attribute(cursor, INCLUDE_UUID, included.uuid, include))
            cursor += 1
    for path, cprops, flags in pending.chars:
        cursor = _add_characteristic(service, path, cprops, flags, pending, database, cursor)


def _next(cursor: int, requested: int, end: int, path: str, extra: int = 0) -> int:
    """The handle to use: ``requested`` if it fits after ``cursor``, else the cursor."""
    handle = requested if requested else cursor + extra
    if handle - extra < cursor or handle > end:
        raise _fail(f"{path}: handle 0x{handle:04x} does not fit in the service")
    return handle


def _add_characteristic(service: Service, path: str, props: ObjectProperties, flags: _Flag,
                        pending: _Pending, database: Database, cursor: int) -> int:
    requested = _handle(props)
    if requested is None:
        raise _fail(f"{path}: Handle is not a uint16")
    uuid = _uuid(props)
    if uuid is None:
        raise _fail(f"{path}: UUID {props.get('UUID')!r} is missing, unparsable or reserved")
    value_handle = _next(cursor, requested, service.end_handle, path, extra=1)
    chrc = Characteristic(
        path=path, uuid=uuid, service_path=service.path,
        flags=tuple(str(f) for f in props["Flags"][1]),
        props=flags.props, ext_props=flags.ext, perm=flags.perm, ccc_perm=flags.ccc_perm,
        authorize=flags.authorize, notify_acquired="NotifyAcquired" in props,
        write_acquired="WriteAcquired" in props,
        handle=value_handle, declaration_handle=value_handle - 1,
    )
    database.attributes.append(Attribute(value_handle - 1, DECLARATION_UUID, uuid, path))
    database.attributes.append(Attribute(value_handle, "value", uuid, path))
    cursor = value_handle + 1
    if chrc.can_notify or chrc.can_indicate:
        chrc.ccc_handle = cursor
        database.attributes.append(Attribute(cursor, CCC_UUID, CCC_UUID, path))
        cursor += 1
    if chrc.ext_props:
        chrc.cep_handle = cursor
        database.attributes.append(Attribute(cursor, CEP_UUID, CEP_UUID, path))
        cursor += 1
    if cursor - 1 > service.end_handle:
        raise _fail(f"{path}: handle 0x{value_handle:04x} leaves no room for its descriptors")
    if requested == 0 and "Handle" in props:
        database.handle_writes.append((path, GATT_CHARACTERISTIC, value_handle))
    for dpath, dprops, dflags, char_path in pending.descs:
        if char_path != path:
            continue
        drequested = _handle(dprops)
        if drequested is None:
            raise _fail(f"{dpath}: Handle is not a uint16")
        duuid = _uuid(dprops)
        if duuid is None:
            raise _fail(f"{dpath}: UUID {dprops.get('UUID')!r} is missing, unparsable or "
                        "reserved")
        handle = _next(cursor, drequested, service.end_handle, dpath)
        chrc.descriptors.append(Descriptor(dpath, duuid, path,
                                           tuple(str(f) for f in dprops["Flags"][1]),
                                           dflags.perm, dflags.authorize, handle))
        database.attributes.append(Attribute(handle, "descriptor", duuid, dpath))
        if drequested == 0 and "Handle" in dprops:
            database.handle_writes.append((dpath, GATT_DESCRIPTOR, handle))
        cursor = handle + 1
    service.characteristics.append(chrc)
    return cursor
