"""mushpi_ble: the BLE peripheral layer of the MushPi controller.

BlueZ is driven directly over D-Bus (jeepney on trio); the MushPi controller
talks to it through a synchronous portal that never blocks its threads.
"""

__version__ = "0.1.0"
