"""BlueZ error names a GATT handler answers with, and the ATT error each becomes.

Raise :class:`GattError` (or use the helpers) from a read/write handler;
the GATT layer turns it into the D-Bus error bluetoothd maps to ATT.
"""

from __future__ import annotations

from mushpi_ble.dbus import DBusError

from .names import ERROR_PREFIX

BLUEZ_ERROR = ERROR_PREFIX
FAILED = f"{BLUEZ_ERROR}.Failed"
IN_PROGRESS = f"{BLUEZ_ERROR}.InProgress"
NOT_PERMITTED = f"{BLUEZ_ERROR}.NotPermitted"
NOT_AUTHORIZED = f"{BLUEZ_ERROR}.NotAuthorized"
NOT_SUPPORTED = f"{BLUEZ_ERROR}.NotSupported"
INVALID_OFFSET = f"{BLUEZ_ERROR}.InvalidOffset"
INVALID_VALUE_LENGTH = f"{BLUEZ_ERROR}.InvalidValueLength"
INVALID_ARGUMENTS = f"{BLUEZ_ERROR}.InvalidArguments"
ALREADY_EXISTS = f"{BLUEZ_ERROR}.AlreadyExists"
DOES_NOT_EXIST = f"{BLUEZ_ERROR}.DoesNotExist"
# What the connection answers bluetoothd when a handler overruns its D-Bus deadline.
DEADLINE_ERROR = (FAILED, "timeout")


class GattError(DBusError):
    """An error a GATT handler returns to bluetoothd (and so to the phone)."""


def failed(code: int = 0x80) -> GattError:
    """``Failed`` carrying an ATT application error code (0x80..0x9F).

    bluetoothd (5.66+) parses the whole message with ``strtol`` and uses the
    code only when nothing follows it, so the message is the bare code; say
    the reason in the log line instead.
    """
    if not 0x80 <= code <= 0x9F:
        raise ValueError(f"application error codes are 0x80..0x9f, not {code:#x}")
    return GattError(FAILED, f"0x{code:02x}")


def refusal(app_code: int | None, reason: str) -> GattError:
    """The one mapping of a refused value to BlueZ: no code means a wrong length
    (``InvalidValueLength``, ATT 0x0D); a code is an application error (``Failed``
    with the bare code, see :func:`failed`). ``reason`` is for the length case only;
    log it for the other."""
    if app_code is None:
        return invalid_value_length(reason)
    return failed(app_code)


def invalid_offset(offset: int, length: int) -> GattError:
    return GattError(INVALID_OFFSET, f"offset {offset} beyond the value's {length} bytes")


def invalid_value_length(reason: str) -> GattError:
    return GattError(INVALID_VALUE_LENGTH, reason)
