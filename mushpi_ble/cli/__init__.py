"""``mushpi-ble``: serve, demo, bench, check, setup, pair, bonds and the install files from
the command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from mushpi_ble import __version__

Run = Callable[[argparse.Namespace], int]

# name, help, module of mushpi_ble.cli, its add-arguments function, its runner
COMMANDS: tuple[tuple[str, str, str, str, str], ...] = (
    ("serve", "serve the MushPi service on bluetoothd with a simulated controller",
     "serve", "add_arguments", "run"),
    ("demo", "everything simulated on a private bus: fake bluetoothd, peripheral, phone app",
     "demo", "add_arguments", "run"),
    ("check", "diagnose whether the peripheral can work on this machine",
     "check", "add_arguments", "run"),
    ("bench", "benchmarks: the peripheral's figures and a peer library side by side",
     "bench", "add_arguments", "run"),
    ("setup", "install the system pieces BLE needs (run once as root): user, groups, udev "
     "rule, D-Bus policy, a drop-in for the controller's unit or the serve unit",
     "system_setup", "add_arguments", "run"),
    ("systemd-unit", "print the serve unit `setup --standalone` installs", "unit",
     "add_arguments", "run"),
    ("pair", "open a pairing window on the running peripheral",
     "manage", "add_pair_arguments", "run_pair"),
    ("bonds", "list the bonded phones, or forget one",
     "manage", "add_bonds_arguments", "run_bonds"),
    ("dbus-policy", "print the system bus policy of `pair` and `bonds`",
     "manage", "add_policy_arguments", "run_policy"),
)
"""Every command once. Only the chosen command's module is imported: on a Pi, importing
the benchmarks to open a pairing window would cost seconds."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that command's arguments are loaded."""
    parser = argparse.ArgumentParser(prog="mushpi-ble", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mushpi-ble {__version__}")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, module_name, add_name, run_name in COMMANDS:
        command = sub.add_parser(name, help=help_text)
        if only is not None and name != only:
            continue
        module = importlib.import_module(f"mushpi_ble.cli.{module_name}")
        getattr(module, add_name)(command)
        command.set_defaults(run=getattr(module, run_name))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    names = {name for name, *_ in COMMANDS}
    chosen = next((word for word in words if word in names), None)
    args = build_parser(chosen).parse_args(words)
    run: Run = args.run
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
