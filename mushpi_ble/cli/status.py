"""``mushpi-ble status``: the running peripheral, as ``serve``'s live view shows it.

Works for ``serve`` and for a controller that embeds the portal alike: it
asks the management interface (``GetStatus``), which root and the service's
own user may call. ``--watch`` redraws every second until Ctrl-C, waiting
through a restart of the service; ``--json`` prints the status itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import Any

from mushpi_ble.cli import exits, view
from mushpi_ble.cli.management_client import ManagementUnavailable, call


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bus", default="SYSTEM",
                        help="the bus the peripheral serves on: SYSTEM (honours "
                             "DBUS_SYSTEM_BUS_ADDRESS), SESSION or an address")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.add_argument("--watch", nargs="?", type=float, const=1.0, default=None,
                        metavar="SECONDS", help="redraw every SECONDS (default 1) until Ctrl-C")
    parser.add_argument("--details", dest="verbose", action="store_true",
                        help="also D-Bus paths and notify sockets")


def fetch(bus: str) -> dict[str, Any]:
    return dict(json.loads(call(bus, "GetStatus")))


def frame(bus: str, *, verbose: bool, width: int, height: int) -> tuple[list[str], bool]:
    """The lines to show, and whether the peripheral answered."""
    try:
        status = fetch(bus)
    except ManagementUnavailable as exc:
        return [f"MushPi BLE · not reachable: {exc}"[:width]], False
    return view.render(status, width=width, height=height, verbose=verbose), True


def run(args: argparse.Namespace) -> int:
    if args.watch is not None and args.watch < 0.2:
        print("--watch: at least 0.2 seconds between frames", file=sys.stderr)
        return exits.USAGE
    if args.json:
        return _print_json(args.bus)
    if args.watch is None:
        size = shutil.get_terminal_size((80, 24))
        lines, answered = frame(args.bus, verbose=args.verbose, width=size.columns,
                                height=max(size.lines - 1, 5))
        print("\n".join(lines))
        return exits.OK if answered else exits.FAILED
    try:
        while True:
            size = shutil.get_terminal_size((80, 24))
            lines, _ = frame(args.bus, verbose=args.verbose, width=size.columns,
                             height=max(size.lines - 1, 5))
            sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return exits.OK


def _print_json(bus: str) -> int:
    try:
        status = fetch(bus)
    except ManagementUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return exits.FAILED
    print(json.dumps(status, indent=2, sort_keys=True))
    return exits.OK
