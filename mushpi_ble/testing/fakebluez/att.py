"""ATT error codes, the permission check and the D-Bus error → ATT mapping.

These reproduce ``src/shared/gatt-server.c`` (``check_permissions``) and
``src/gatt-database.c`` (``dbus_error_to_att_ecode``): what a phone sees
when an application's handler answers with a D-Bus error.
"""

from __future__ import annotations

from typing import Final

from .uuids import strtol

ATT_ERRORS: Final[dict[int, str]] = {
    0x01: "Invalid Handle",
    0x02: "Read Not Permitted",
    0x03: "Write Not Permitted",
    0x04: "Invalid PDU",
    0x05: "Insufficient Authentication",
    0x06: "Request Not Supported",
    0x07: "Invalid Offset",
    0x08: "Insufficient Authorization",
    0x09: "Prepare Queue Full",
    0x0A: "Attribute Not Found",
    0x0B: "Attribute Not Long",
    0x0C: "Insufficient Encryption Key Size",
    0x0D: "Invalid Attribute Value Length",
    0x0E: "Unlikely Error",
    0x0F: "Insufficient Encryption",
    0x10: "Unsupported Group Type",
    0x11: "Insufficient Resources",
    0x12: "Database Out Of Sync",
    0x13: "Value Not Allowed",
    **{code: "Application Error" for code in range(0x80, 0xA0)},
    0xFC: "Write Request Rejected",
    0xFD: "Client Characteristic Configuration Descriptor Improperly Configured",
    0xFE: "Procedure Already in Progress",
    0xFF: "Out of Range",
}

INVALID_HANDLE = 0x01
READ_NOT_PERMITTED = 0x02
WRITE_NOT_PERMITTED = 0x03
AUTHENTICATION = 0x05
REQUEST_NOT_SUPPORTED = 0x06
INVALID_OFFSET = 0x07
ATTRIBUTE_NOT_LONG = 0x0B
UNLIKELY = 0x0E
INSUFFICIENT_ENCRYPTION = 0x0F
CCC_IMPROPERLY_CONFIGURED = 0xFD

# BT_ATT_PERM_* from src/shared/att-types.h
PERM_READ = 0x01
PERM_WRITE = 0x02
PERM_READ_ENCRYPT = 0x04
PERM_WRITE_ENCRYPT = 0x08
PERM_READ_AUTHEN = 0x10
PERM_WRITE_AUTHEN = 0x20
PERM_READ_SECURE = 0x100
PERM_WRITE_SECURE = 0x200
PERM_ENCRYPT = PERM_READ_ENCRYPT | PERM_WRITE_ENCRYPT
PERM_AUTHEN = PERM_READ_AUTHEN | PERM_WRITE_AUTHEN
PERM_SECURE = PERM_READ_SECURE | PERM_WRITE_SECURE
READ_MASK = PERM_READ | PERM_READ_ENCRYPT | PERM_READ_AUTHEN | PERM_READ_SECURE
WRITE_MASK = PERM_WRITE | PERM_WRITE_ENCRYPT | PERM_WRITE_AUTHEN | PERM_WRITE_SECURE

SECURITY_LEVELS: Final[dict[str, int]] = {"low": 1, "medium": 2, "high": 3, "fips": 4}


class AttError(Exception):
    """An ATT error response, as the central sees it.

    ``dbus_error``/``dbus_message`` carry the application's D-Bus error when
    the code came from one ("" when bluetoothd answered by itself).
    """

    def __init__(self, code: int, name: str | None = None, dbus_error: str = "",
                 dbus_message: str = "") -> None:
        self.code = code
        self.name = name if name is not None else ATT_ERRORS.get(code, "Reserved")
        self.dbus_error = dbus_error
        self.dbus_message = dbus_message
        detail = f" from {dbus_error}: {dbus_message!r}" if dbus_error else ""
        super().__init__(f"ATT error 0x{code:02X} {self.name}{detail}")


def att_code_for_dbus_error(name: str, message: str, *, write: bool) -> int:
    """The ATT error bluetoothd answers for an application's D-Bus error.

    ``org.bluez.Error.Failed`` carries an application error only when the
    whole message is a number (``strtol(msg, &end, 0)`` with ``*end == 0``):
    "0x83" → 0x83, "0x83 low battery" → 0x80, "" → 0x0E, "0x10" → 0x0E.
    """
    if name == "org.bluez.Error.Failed":
        value, end = strtol(message, 0)
        if end != len(message):
            return 0x80
        if not 0x80 <= value <= 0x9F:
            return UNLIKELY
        return value
    simple = {
        "org.bluez.Error.NotSupported": REQUEST_NOT_SUPPORTED,
        "org.bluez.Error.NotAuthorized": 0x08,
        "org.bluez.Error.InvalidValueLength": 0x0D,
        "org.bluez.Error.InvalidOffset": INVALID_OFFSET,
        "org.bluez.Error.InProgress": 0xFE,
        "org.bluez.Error.ImproperlyConfigured": CCC_IMPROPERLY_CONFIGURED,
    }
    if name in simple:
        return simple[name]
    if name == "org.bluez.Error.NotPermitted":
        return WRITE_NOT_PERMITTED if write else READ_NOT_PERMITTED
    return UNLIKELY


def check_permissions(perm: int, *, write: bool, security: int) -> int:
    """0 when the access is allowed, else the ATT error (gatt-server.c).

    An attribute with no permission bits at all passes: bluetoothd then
    forwards the request to the application.
    """
    if perm and not write and not perm & PERM_READ:
        return READ_NOT_PERMITTED
    if perm and write and not perm & PERM_WRITE:
        return WRITE_NOT_PERMITTED
    perm &= WRITE_MASK if write else READ_MASK
    if not perm:
        return 0
    if perm & PERM_SECURE and security < SECURITY_LEVELS["fips"]:
        return AUTHENTICATION
    if perm & PERM_AUTHEN and security < SECURITY_LEVELS["high"]:
        return AUTHENTICATION
    if perm & PERM_ENCRYPT and security < SECURITY_LEVELS["medium"]:
        return INSUFFICIENT_ENCRYPTION
    return 0
