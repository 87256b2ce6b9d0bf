"""Test doubles shipped with the package: a private bus, a fake bluetoothd,
simulated centrals and controllers — usable by your own tests too."""

from .bus import DBusDaemonMissing, private_bus

__all__ = ["DBusDaemonMissing", "private_bus"]
