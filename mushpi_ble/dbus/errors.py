"""D-Bus error names and the one exception type that carries them.

Handlers raise :class:`DBusError` to answer a call with a specific error
name; outgoing calls raise it when the peer answers with an error.
"""

from __future__ import annotations

FAILED = "org.freedesktop.DBus.Error.Failed"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
UNKNOWN_INTERFACE = "org.freedesktop.DBus.Error.UnknownInterface"
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
UNKNOWN_PROPERTY = "org.freedesktop.DBus.Error.UnknownProperty"
PROPERTY_READ_ONLY = "org.freedesktop.DBus.Error.PropertyReadOnly"
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
NO_REPLY = "org.freedesktop.DBus.Error.NoReply"
TIMEOUT = "org.freedesktop.DBus.Error.Timeout"
DISCONNECTED = "org.freedesktop.DBus.Error.Disconnected"
NAME_HAS_NO_OWNER = "org.freedesktop.DBus.Error.NameHasNoOwner"
SERVICE_UNKNOWN = "org.freedesktop.DBus.Error.ServiceUnknown"


class DBusError(Exception):
    """A D-Bus error: a name such as ``org.freedesktop.DBus.Error.Failed`` and a text."""

    def __init__(self, name: str, text: str = "") -> None:
        super().__init__(f"{name}: {text}" if text else name)
        self.name = name
        self.text = text


class ConnectionLost(DBusError):
    """The bus connection closed; every pending call fails with this."""

    def __init__(self, text: str = "connection to the bus was lost") -> None:
        super().__init__(DISCONNECTED, text)


class CallTimeout(DBusError):
    """An outgoing call got no reply before its deadline."""

    def __init__(self, text: str) -> None:
        super().__init__(TIMEOUT, text)
