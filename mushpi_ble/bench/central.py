"""What a measuring central does in every benchmark: timed reads of the readable
characteristics, so read latency means the same thing in every report."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from mushpi_ble.bench.peer import READABLE
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS

if TYPE_CHECKING:
    from mushpi_ble.testing.fakebluez import FakeCentral


async def timed_reads(central: FakeCentral, count: int, *,
                      round_robin: bool) -> dict[str, list[float]]:
    """``count`` reads of each readable characteristic, each one's seconds.

    ``round_robin`` interleaves the characteristics (one of each, ``count``
    times); otherwise each characteristic gets its ``count`` reads in a row.
    """
    samples: dict[str, list[float]] = {name: [] for name in READABLE}
    order = ([name for _ in range(count) for name in READABLE] if round_robin
             else [name for name in READABLE for _ in range(count)])
    for name in order:
        t0 = time.perf_counter()
        await central.read(CHARACTERISTIC_UUIDS[name])
        samples[name].append(time.perf_counter() - t0)
    return samples
