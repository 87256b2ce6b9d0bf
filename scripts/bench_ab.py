#!/usr/bin/env python3
"""Same as ``python -m mushpi_ble.bench.facade_ab``: kept so older instructions still work."""

import sys

from mushpi_ble.bench.facade_ab import main

if __name__ == "__main__":
    sys.exit(main())
