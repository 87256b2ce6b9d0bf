"""The backend contract the MushPi controller's BLE facade drives.

Kept from the original BlueZero-based design so either implementation can
be selected with ``MUSHPI_BLE_BACKEND`` and rolled back without code changes.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any


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

    @abc.abstractmethod
    def notify(self, characteristic_name: str, devices: Iterable[str] | None = None) -> None:
        """Re-publish the characteristic's current value from its controller source.

        ``devices`` is accepted for compatibility; bluetoothd notifies every
        subscribed device, so it cannot be honoured over PropertiesChanged.
        """

    @abc.abstractmethod
    def update_advertising_name(self, name: str | None = None) -> None:
        """Recompute (or set) the advertised name and apply it live."""

    @abc.abstractmethod
    def get_status(self) -> dict[str, Any]:
        """A documented snapshot (see README, "get_status()")."""
