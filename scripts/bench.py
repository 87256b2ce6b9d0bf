#!/usr/bin/env python3
"""Same as ``python -m mushpi_ble.bench.peripheral``: kept so older instructions still work."""

import sys

from mushpi_ble.bench.peripheral import main

if __name__ == "__main__":
    sys.exit(main())
