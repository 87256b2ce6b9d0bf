"""The ``bluezero`` extra (BlueZero, dbus-python, PyGObject), imported in one place.

Every other module of this package takes these names from here, so a missing
extra always surfaces as one ImportError naming ``pip install 'mushpi-ble[bluezero]'``,
which select_backend() turns into a fallback with a warning. ``log`` is the backend's
one logger, under the name it has always logged as.
"""

from __future__ import annotations

import importlib
import logging

DEBIAN_BUILD_PACKAGES = (
    "libdbus-1-dev libglib2.0-dev libgirepository1.0-dev libcairo2-dev pkg-config gcc "
    "python3-dev"
)
INSTALL_HINT = (
    "the bluezero backend needs BlueZero, dbus-python and PyGObject: "
    "pip install 'mushpi-ble[bluezero]' (building them needs the Debian packages "
    f"{DEBIAN_BUILD_PACKAGES}; scripts/install-bluezero-deps installs all of it)"
)
REQUIRED_MODULES = (
    "dbus", "dbus.bus", "dbus.exceptions", "dbus.mainloop.glib", "dbus.service",
    "bluezero.advertisement", "bluezero.constants", "bluezero.localGATT", "gi.repository.GLib",
)

try:
    import dbus
    import dbus.bus
    import dbus.exceptions
    import dbus.mainloop.glib
    import dbus.service
    from bluezero import advertisement as bz_advertisement
    from bluezero import constants as bz_constants
    from bluezero import localGATT
    from gi.repository import GLib
except ImportError as _exc:  # select_backend() turns this into a fallback with a warning
    raise ImportError(f"{INSTALL_HINT}; import failed: {_exc}") from _exc

log = logging.getLogger(__name__)


def require_extra() -> None:
    """Import the extra again, raising the same ImportError if any of it is missing.

    For modules that re-export this package: the package may already be imported,
    and importing such a module is how callers ask whether the extra is there."""
    try:
        for name in REQUIRED_MODULES:
            importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT}; import failed: {exc}") from exc


__all__ = [
    "DEBIAN_BUILD_PACKAGES",
    "INSTALL_HINT",
    "GLib",
    "bz_advertisement",
    "bz_constants",
    "dbus",
    "localGATT",
    "log",
    "require_extra",
]
