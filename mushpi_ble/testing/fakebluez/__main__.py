"""Run the fake bluetoothd as a process.

    python -m mushpi_ble.testing.fakebluez --address unix:path=/tmp/bus \\
        --adapters hci0,hci1 --log-level INFO

It logs what it does and stops cleanly on SIGTERM or SIGINT (adverts get
``Release()``, ``org.bluez`` is released).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from .daemon import FakeBluez

log = logging.getLogger("mushpi_ble.testing.fakebluez")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mushpi_ble.testing.fakebluez",
        description="A fake bluetoothd for tests and demos, on the given D-Bus bus.")
    parser.add_argument("--address", default="SYSTEM",
                        help="bus address, or SYSTEM / SESSION (default: SYSTEM)")
    parser.add_argument("--adapters", default="hci0",
                        help="comma-separated adapter names (default: hci0)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--can-set-tx-power", action="store_true",
                        help="advertise the CanSetTxPower feature")
    return parser


async def _serve(address: str, adapters: Sequence[str], can_set_tx_power: bool) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with FakeBluez.serve(address, adapters,
                                   can_set_tx_power=can_set_tx_power) as bluez:
            log.info("ready unique_name=%s", bluez.unique_name)
            async for signum in signals:
                log.info("stopping signal=%s", signal.Signals(signum).name)
                break


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    adapters = [a.strip() for a in args.adapters.split(",") if a.strip()]
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_serve, args.address, adapters, args.can_set_tx_power)
    return 0


if __name__ == "__main__":
    sys.exit(main())
