"""One call to the running peripheral's management interface, blocking, without trio.

``pair``, ``bonds`` and ``status`` make one or a few calls and exit: jeepney's
blocking connection does that in a fraction of the start-up time of the
event loop the peripheral itself runs on (see ``bench_cli_start`` in the
benchmarks). Every failure becomes a :class:`ManagementUnavailable` whose
message says what to do.
"""

from __future__ import annotations

from typing import Any

from jeepney import DBusAddress, new_method_call
from jeepney.io.blocking import open_dbus_connection
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

from mushpi_ble.management_api import BUS_NAME, INTERFACE, PATH

NOT_RUNNING = ("org.freedesktop.DBus.Error.ServiceUnknown",
               "org.freedesktop.DBus.Error.NameHasNoOwner")
TIMEOUT_S = 5.0
ADDRESS = DBusAddress(PATH, bus_name=BUS_NAME, interface=INTERFACE)


class ManagementUnavailable(Exception):
    """The call could not be made or was refused; the message says why and what to do."""


def call(bus: str, member: str, signature: str | None = None,
         body: tuple[Any, ...] = ()) -> Any:
    """``member``'s first return value (None when it returns nothing)."""
    try:
        conn = open_dbus_connection(bus=bus)
    except (OSError, ValueError, KeyError) as exc:
        raise ManagementUnavailable(f"cannot reach the D-Bus bus {bus}: {exc}") from None
    try:
        reply = conn.send_and_get_reply(new_method_call(ADDRESS, member, signature, body),
                                        timeout=TIMEOUT_S)
        result = unwrap_msg(reply)
    except DBusErrorResponse as exc:
        if exc.name in NOT_RUNNING:
            raise ManagementUnavailable(
                f"no running mushpi-ble peripheral owns {BUS_NAME} on the {bus} bus (is the "
                "service running? on the system bus it needs the policy of "
                "`mushpi-ble dbus-policy`)") from None
        text = exc.data[0] if exc.data else ""
        raise ManagementUnavailable(f"{member} refused: {exc.name}: {text}") from None
    except TimeoutError:
        raise ManagementUnavailable(f"{member}: no answer within {TIMEOUT_S:.0f} s") from None
    finally:
        conn.close()
    return result[0] if result else None
