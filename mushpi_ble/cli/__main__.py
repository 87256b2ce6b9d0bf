"""``python -m mushpi_ble.cli`` — the same as the ``mushpi-ble`` command."""

import sys

from mushpi_ble.cli import main

sys.exit(main())
