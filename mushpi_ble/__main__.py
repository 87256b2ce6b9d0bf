"""``python -m mushpi_ble``: the ``mushpi-ble`` command."""

import sys

from mushpi_ble.cli import main

sys.exit(main())
