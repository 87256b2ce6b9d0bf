"""The backend contract the MushPi controller's BLE facade drives.

Kept from the original BlueZero-based design so either implementation can
be selected with ``MUSHPI_BLE_BACKEND`` and rolled back without code changes.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from mushpi_ble.controller import ControllerCallbacks
from mushpi_ble.protocol import ACTUATOR_STATUS, ENV_MEASUREMENTS, STATUS_FLAGS

log = logging.getLogger(__name__)


class BLEBackend(abc.ABC):
    """What every backend provides. No method raises into the controller."""

    name: str = "abstract"

    @abc.abstractmethod
    def initialize(self) -> bool:
        """Prepare without blocking; False if the backend cannot work here."""

    @abc.abstractmethod
    def start(self) -> bool:
        """Register and advertise; False (not an exception) on failure."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Bounded shutdown; idempotent."""

    @abc.abstractmethod
    def set_callbacks(self, callbacks: dict[str, Any]) -> None:
        """Register controller callbacks; a None value keeps the earlier one."""

    def notify(self, characteristic_name: str, devices: Iterable[str] | None = None) -> None:
        """Re-publish the characteristic's current value from its controller source.

        ``devices`` is accepted for compatibility; bluetoothd notifies every
        subscribed device, so it cannot be honoured over PropertiesChanged.
        """
        if devices:
            log.debug("per-device notify is not available over PropertiesChanged; "
                      "notifying every subscriber characteristic=%s", characteristic_name)
        if characteristic_name == ENV_MEASUREMENTS:
            getter = self.callbacks.get_sensor_data
            data = getter() if getter is not None else None
            d: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
            self.publish_env(d.get("temperature"), d.get("humidity"), d.get("co2"),
                             d.get("light"))
        elif characteristic_name == STATUS_FLAGS:
            self.republish_status()
        elif characteristic_name == ACTUATOR_STATUS:
            self.publish_actuator()
        else:
            log.warning("notify: %r is not a notifying characteristic", characteristic_name)

    # -- what notify() and the facade publish through -------------------------------------
    @property
    @abc.abstractmethod
    def callbacks(self) -> ControllerCallbacks:
        """The controller callbacks in force."""

    @abc.abstractmethod
    def publish_env(self, temperature: object, humidity: object, co2: object,
                    light: object) -> object:
        """Encode and queue one env packet."""

    @abc.abstractmethod
    def republish_status(self) -> object:
        """Queue the status flags again (the controller's last bits, our connectivity)."""

    @abc.abstractmethod
    def publish_actuator(self) -> object:
        """Re-read relays through ``get_control_data`` and queue them."""

    @abc.abstractmethod
    def update_advertising_name(self, name: str | None = None) -> None:
        """Recompute (or set) the advertised name and apply it live."""

    @abc.abstractmethod
    def get_status(self) -> dict[str, Any]:
        """A documented snapshot (see README, "get_status()")."""
