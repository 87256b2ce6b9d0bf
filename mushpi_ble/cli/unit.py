"""``mushpi-ble systemd-unit``: the ``serve`` unit for this install, printed.

The same unit ``mushpi-ble setup --standalone`` installs (with the user, groups, udev
rule and D-Bus policy it needs); the paths are those of the interpreter running this
command, so a wheel install needs nothing from the repository.
"""

from __future__ import annotations

import argparse
import sys

from . import system_files as files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", default="mushpi", help="the service's user (default mushpi)")
    parser.add_argument("--watchdog-s", type=int, default=files.DEFAULT_WATCHDOG_S,
                        help="WatchdogSec: systemd restarts a loop silent this long")


def render(*, user: str = "mushpi", watchdog_s: int = files.DEFAULT_WATCHDOG_S) -> str:
    return files.standalone_text(files.Service(user=user, watchdog_s=watchdog_s))


def run(args: argparse.Namespace) -> int:
    if args.watchdog_s < 2:
        print("--watchdog-s must be at least 2", file=sys.stderr)
        return 2
    sys.stdout.write(render(user=args.user, watchdog_s=args.watchdog_s))
    return 0
