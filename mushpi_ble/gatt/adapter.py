"""Finding and powering the BlueZ adapter the peripheral serves on."""

from __future__ import annotations

import logging
import re
from typing import Any

from mushpi_ble.dbus import Connection

from .names import ADAPTER_IFACE, BLUEZ, OBJECT_MANAGER, PROPERTIES

log = logging.getLogger(__name__)

MAC_RE = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")

ManagedObjects = dict[str, dict[str, dict[str, tuple[str, Any]]]]


async def managed_objects(conn: Connection, *, timeout: float) -> ManagedObjects:
    (objects,) = await conn.call(BLUEZ, "/", OBJECT_MANAGER, "GetManagedObjects",
                                 timeout=timeout)
    return dict(objects)


def adapters(objects: ManagedObjects) -> dict[str, dict[str, Any]]:
    """Adapter path → plain property values."""
    return {
        path: {name: value for name, (_sig, value) in ifaces[ADAPTER_IFACE].items()}
        for path, ifaces in objects.items()
        if ADAPTER_IFACE in ifaces
    }


def pick_adapter(objects: ManagedObjects, wanted: str) -> str | None:
    """The path of the adapter named ``wanted`` (hciN) or with that address."""
    for path, props in adapters(objects).items():
        if MAC_RE.match(wanted.upper()):
            if str(props.get("Address", "")).upper() == wanted.upper():
                return path
        elif path.rsplit("/", 1)[-1] == wanted:
            return path
    return None


async def get_property(conn: Connection, path: str, iface: str, name: str, *,
                       timeout: float) -> Any:
    (variant,) = await conn.call(BLUEZ, path, PROPERTIES, "Get", "ss", (iface, name),
                                 timeout=timeout)
    return variant[1]


async def set_property(conn: Connection, path: str, iface: str, name: str, signature: str,
                       value: Any, *, timeout: float) -> None:
    await conn.call(BLUEZ, path, PROPERTIES, "Set", "ssv", (iface, name, (signature, value)),
                    timeout=timeout)


async def ensure_powered(conn: Connection, path: str, *, timeout: float) -> bool:
    """Power the adapter on when it is off; True if it had to be switched on."""
    if await get_property(conn, path, ADAPTER_IFACE, "Powered", timeout=timeout):
        return False
    log.info("adapter was off, powering on adapter=%s", path)
    await set_property(conn, path, ADAPTER_IFACE, "Powered", "b", True, timeout=timeout)
    return True
