"""A small, lossless D-Bus object server and client on jeepney and trio.

Generic: nothing here knows about Bluetooth. See :func:`open_connection`.
"""

from .connection import Connection, SignalMessage, Subscription, open_connection
from .errors import CallTimeout, ConnectionLost, DBusError
from .interface import CallContext, Interface, Method, Property, Signal
from .match import MatchRule
from .transport import BusUnreachable

__all__ = [
    "BusUnreachable",
    "CallContext",
    "CallTimeout",
    "Connection",
    "ConnectionLost",
    "DBusError",
    "Interface",
    "MatchRule",
    "Method",
    "Property",
    "Signal",
    "SignalMessage",
    "Subscription",
    "open_connection",
]
