"""The trio + jeepney backend: BlueZ over D-Bus through :class:`~mushpi_ble.portal.BlePortal`."""

from __future__ import annotations

import logging
from typing import Any

from mushpi_ble.config import Settings
from mushpi_ble.controller import ControllerCallbacks
from mushpi_ble.errors import StartError
from mushpi_ble.notify import Outcome
from mushpi_ble.portal import BlePortal

from .base import BLEBackend

log = logging.getLogger(__name__)


class BluezDbusBackend(BLEBackend):
    """Implements the backend contract on the structured-concurrency portal."""

    name = "bluez-dbus"

    def __init__(self, settings: Settings, *, bus: str = "SYSTEM") -> None:
        self.settings = settings
        self.portal = BlePortal(settings, bus=bus)
        self.last_error: str | None = None

    def initialize(self) -> bool:
        return True

    def start(self) -> bool:
        try:
            self.portal.start()
        except StartError as exc:
            self.last_error = str(exc)
            log.error("BLE start failed: %s", exc)
            return False
        except Exception as exc:  # the contract: False, never an exception
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("BLE start failed unexpectedly")
            return False
        self.last_error = None
        return True

    def stop(self) -> None:
        try:
            self.portal.stop()
        except Exception:
            log.exception("BLE stop failed")

    def set_callbacks(self, callbacks: dict[str, Any]) -> None:
        self.portal.set_callbacks(callbacks)

    # -- publishing --------------------------------------------------------------------
    def publish_env(self, temperature: object, humidity: object, co2: object,
                    light: object) -> Outcome:
        return self.portal.publish_env(temperature, humidity, co2, light)

    def publish_status(self, flags: object) -> Outcome:
        return self.portal.publish_status(flags)

    def publish_actuator(self) -> Outcome:
        return self.portal.publish_actuator()

    def republish_status(self) -> Outcome:
        return self.portal.service.republish_status()

    @property
    def callbacks(self) -> ControllerCallbacks:
        return self.portal.callbacks

    def update_advertising_name(self, name: str | None = None) -> None:
        try:
            self.portal.update_advertising_name(name)
        except Exception:
            log.exception("advertising name update failed")

    # -- queries ------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.portal.is_running()

    def connection_count(self) -> int:
        return self.portal.connection_count()

    def get_status(self) -> dict[str, Any]:
        status: dict[str, Any] = dict(self.portal.get_status())
        status["start_error"] = self.last_error
        return status
