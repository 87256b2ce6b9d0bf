"""Drop-in replacements for the MushPi controller's existing BLE modules.

``from mushpi_ble.compat import ble_gatt`` offers the functions of the
controller's ``app/core/ble_gatt.py`` with the same names and meaning, so
switching the controller over is a one-line import change.
"""

from . import ble_gatt

__all__ = ["ble_gatt"]
