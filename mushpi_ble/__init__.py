"""mushpi_ble: the BLE peripheral layer of the MushPi controller.

BlueZ is driven directly over D-Bus (jeepney on trio); the MushPi controller
talks to it through a synchronous portal that never blocks its threads.
"""

import logging

__version__ = "0.1.0"

# A library logs, the application decides where to: without a handler of its own,
# Python's last-resort handler would print our warnings to stderr.
logging.getLogger(__name__).addHandler(logging.NullHandler())
