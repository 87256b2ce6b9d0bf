"""Backends behind the controller facade, chosen by ``MUSHPI_BLE_BACKEND``.

``bluez-dbus`` is this package's trio/jeepney peripheral; ``bluezero`` is
the legacy BlueZero implementation (optional extra). A backend that cannot
be imported falls back to the other one with a warning — the rollback plan.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from mushpi_ble.config import Settings, load_settings

from .base import BLEBackend

log = logging.getLogger(__name__)

BACKEND_MODULES = {
    "bluez-dbus": ("mushpi_ble.backends.bluez_dbus", "BluezDbusBackend"),
    "bluezero": ("mushpi_ble.backends.bluezero_backend", "BluezeroBackend"),
}
FALLBACK = {"bluez-dbus": "bluezero", "bluezero": "bluez-dbus"}


class BackendUnavailable(RuntimeError):
    """Neither the chosen backend nor its fallback could be imported."""


def _load(name: str) -> Callable[..., BLEBackend]:
    module_name, class_name = BACKEND_MODULES[name]
    module = importlib.import_module(module_name)
    factory: Callable[..., BLEBackend] = getattr(module, class_name)
    return factory


def select_backend(settings: Settings | None = None, *, bus: str = "SYSTEM") -> BLEBackend:
    """Instantiate the backend ``MUSHPI_BLE_BACKEND`` names (or its fallback)."""
    settings = settings if settings is not None else load_settings()
    wanted: str = settings.ble_backend
    if wanted not in BACKEND_MODULES:
        raise ValueError(f"unknown backend {wanted!r}; allowed: {', '.join(BACKEND_MODULES)}")
    try:
        factory = _load(wanted)
        chosen = wanted
    except ImportError as exc:
        fallback = FALLBACK[wanted]
        log.warning("backend %s cannot be imported (%s); falling back to %s",
                    wanted, exc, fallback)
        try:
            factory = _load(fallback)
        except ImportError as exc2:
            raise BackendUnavailable(
                f"neither {wanted} ({exc}) nor {fallback} ({exc2}) can be imported"
            ) from exc2
        chosen = fallback
    log.info("BLE backend selected backend=%s", chosen)
    return factory(settings, bus=bus)


__all__ = ["BLEBackend", "BackendUnavailable", "select_backend"]
