"""``mushpi-ble``: serve, demo, bench, check, pair, bonds and the install files from the
command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from mushpi_ble import __version__

Run = Callable[[argparse.Namespace], int]


def _commands() -> list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Run]]:
    """Every command once: its name, help, arguments and what runs it."""
    from mushpi_ble.cli import bench, check, demo, manage, serve, unit

    return [
        ("serve", "serve the MushPi service on bluetoothd with a simulated controller",
         serve.add_arguments, serve.run),
        ("demo", "everything simulated on a private bus: fake bluetoothd, peripheral, "
                 "phone app", demo.add_arguments, demo.run),
        ("check", "diagnose whether the peripheral can work on this machine",
         check.add_arguments, check.run),
        ("bench", "benchmarks: the peripheral's figures and a peer library side by side",
         bench.add_arguments, bench.run),
        ("systemd-unit", "print the systemd unit for this install", unit.add_arguments,
         unit.run),
        ("pair", "open a pairing window on the running peripheral",
         manage.add_pair_arguments, manage.run_pair),
        ("bonds", "list the bonded phones, or forget one", manage.add_bonds_arguments,
         manage.run_bonds),
        ("dbus-policy", "print the system bus policy of `pair` and `bonds`",
         manage.add_policy_arguments, manage.run_policy),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mushpi-ble", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mushpi-ble {__version__}")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, run in _commands():
        command = sub.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Run = args.run
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
