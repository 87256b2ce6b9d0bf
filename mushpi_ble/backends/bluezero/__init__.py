"""The legacy backend: the MushPi service on BlueZero, dbus-python and GLib.

Kept for rollback and for A/B comparison with ``bluez-dbus``, so it keeps
the legacy mechanics where they shape behaviour and performance:

* BlueZero's GLib main loop runs in a thread of its own
  (``mushpi-ble-glib``); every D-Bus call and every controller callback of
  a read or write runs on it, synchronously, with no deadline;
* producers (the controller's threads) encode the payload and put it on one
  bounded queue shared by the notifying characteristics, waiting at most
  ``MUSHPI_BLE_QUEUE_PUT_TIMEOUT_MS``; a full queue applies the
  back-pressure policy;
* one worker thread takes the queue in order and has each notification
  performed on the GLib loop with ``GLib.idle_add`` (BlueZero's
  ``set_value``: a PropertiesChanged on ``Value``), waiting for it.

It serves the same seven characteristics byte for byte through the
project's protocol codecs, and refuses invalid writes like ``bluez-dbus``
(``MUSHPI_BLE_INVALID_WRITE``). What it does not do — deadlines for
controller callbacks, re-registration after a bluetoothd restart, sender
checks — is listed in tests/test_compat_backends.py (KNOWN_DIFFERENCES).

BlueZero only talks to the system bus; ``bus`` other than ``"SYSTEM"`` (an
address, or ``"SESSION"``) is installed as this process's shared system bus
connection for the backend's lifetime. BlueZero's object paths are fixed
(``/ukBaz/bluezero/...``), so one BluezeroBackend runs per process at a time.

The modules: deps.py (the optional extra, or an ImportError naming
``pip install 'mushpi-ble[bluezero]'``), bus.py (the shared system bus connection),
loop.py (the GLib loop thread), session.py (registration with bluetoothd),
gatt.py (the characteristics and their callbacks), devices.py (connected centrals),
publisher.py (the bounded queue and its worker), backend.py (the contract).
"""

from __future__ import annotations

from .backend import BluezeroBackend
from .deps import INSTALL_HINT, require_extra

__all__ = ["INSTALL_HINT", "BluezeroBackend", "require_extra"]
