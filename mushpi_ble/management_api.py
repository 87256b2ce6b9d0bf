"""The management interface's names and its D-Bus policy: what a client needs, no trio.

``mushpi-ble pair``, ``bonds`` and ``status`` import this, not the server
side (:mod:`.management`), so they start in a fraction of the time.
"""

from __future__ import annotations

import re

BUS_NAME = "org.mushpi.Ble"
PATH = "/org/mushpi/Ble"
INTERFACE = "org.mushpi.Ble1"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"

USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}\$?")
"""Debian's (and shadow's) portable user name: what useradd accepts by default."""


def policy_file(user: str) -> str:
    """The system bus policy that lets ``user`` own the name and root or ``user`` call it.

    ``user`` is checked first (ValueError): it lands in XML that the bus reads as root.
    """
    if not USER_NAME.fullmatch(user):
        raise ValueError(f"{user!r} is not a user name (lower-case letters, digits, _ and -, "
                         "up to 32, starting with a letter or _)")
    users = ["root"] if user == "root" else ["root", user]
    blocks = "\n".join(
        f'  <policy user="{u}">\n'
        f'    <allow own="{BUS_NAME}"/>\n'
        f'    <allow send_destination="{BUS_NAME}" send_interface="{INTERFACE}"/>\n'
        f'    <allow send_destination="{BUS_NAME}"\n'
        '           send_interface="org.freedesktop.DBus.Introspectable"/>\n'
        '  </policy>'
        for u in users)
    return ("<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\"\n"
            " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
            "<!-- mushpi-ble: the management interface (mushpi-ble pair / bonds).\n"
            f"     Install as /etc/dbus-1/system.d/{BUS_NAME}.conf -->\n"
            f"<busconfig>\n{blocks}\n</busconfig>\n")
