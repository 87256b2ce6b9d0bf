"""A small, lossless D-Bus object server and client on jeepney and trio.

Generic: nothing here knows about Bluetooth. See :func:`open_connection`.
"""

from .connection import Connection, SignalMessage, Subscription, open_connection
from .errors import NO_REPLY, CallTimeout, ConnectionLost, DBusError
from .groups import single_errors, unwrap_group
from .interface import CallContext, Interface, Method, Property, Signal
from .match import MatchRule
from .transport import BusUnreachable, resolve_bus_address

__all__ = [
    "NO_REPLY",
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
    "resolve_bus_address",
    "single_errors",
    "unwrap_group",
]
