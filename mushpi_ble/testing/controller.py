"""The simulated controller, kept importable here for code written before it moved.

It lives in :mod:`mushpi_ble.sim` (product code: ``mushpi-ble serve`` runs it).
"""

from mushpi_ble.sim import DEFAULT_THRESHOLDS, SimulatedController

__all__ = ["DEFAULT_THRESHOLDS", "SimulatedController"]
