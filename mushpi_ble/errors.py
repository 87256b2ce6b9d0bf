"""Why the peripheral could not start: one exception type per cause.

``start()`` raises these with a message a grower's installer can act on.
"""

from __future__ import annotations


class StartError(RuntimeError):
    """The peripheral could not start; the message says why and what to do."""


class BusUnavailable(StartError):
    """The D-Bus system bus (or the configured bus) could not be reached."""


class BluezUnavailable(StartError):
    """No process owns ``org.bluez`` on the bus: bluetoothd is not running."""


class AdapterNotFound(StartError):
    """The configured adapter does not exist (or never appeared)."""


class RegistrationRefused(StartError):
    """bluetoothd refused the GATT application (its error is in the message)."""


class StartTimeout(StartError):
    """Start-up did not finish within the bus timeout."""


class AlreadyServing(StartError):
    """Another peripheral already serves this adapter (it owns ``org.mushpi.Ble``)."""
