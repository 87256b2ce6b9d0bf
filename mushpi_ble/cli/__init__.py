"""``mushpi-ble``: serve, demo, bench, check, setup, pair, bonds and the install files from
the command line."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from mushpi_ble import __version__
from mushpi_ble.errors import ConfigError

from . import exits

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
    ("setup", "install what BLE needs on this system (once, as root); --remove undoes it",
     "system_setup", "add_arguments", "run"),
    ("systemd-unit", "print the serve unit `setup --standalone` installs", "unit",
     "add_arguments", "run"),
    ("config", "list every setting in effect and where it came from",
     "settings", "add_arguments", "run"),
    ("status", "show the running peripheral as serve's live view does (or as JSON)",
     "status", "add_arguments", "run"),
    ("pair", "open a pairing window on the running peripheral",
     "manage", "add_pair_arguments", "run_pair"),
    ("bonds", "list the bonded phones, approve or forget one",
     "manage", "add_bonds_arguments", "run_bonds"),
    ("dbus-policy", "print the system bus policy of `pair` and `bonds`",
     "manage", "add_policy_arguments", "run_policy"),
)
"""Every command once. Only the chosen command's module is imported: on a Pi, importing
the benchmarks to open a pairing window would cost seconds."""


EPILOG = ("exit codes: 0 ok, 1 a check or run failed, 2 usage, 3 configuration "
          "(the message names the variable)")


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Options every command takes, before or after its name. On the commands they
    default to SUPPRESS, so one given before the command is not overwritten."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--log-format", choices=("text", "json"), default=default("text"),
                        help="log lines as text or as one JSON object each")
    parser.add_argument("--log-level", default=default("INFO"), type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("-v", "--verbose", dest="log_level", action="store_const",
                        const="DEBUG", default=default("INFO"), help="--log-level DEBUG")
    parser.add_argument("-q", "--quiet", dest="log_level", action="store_const",
                        const="WARNING", default=default("INFO"), help="--log-level WARNING")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that command's arguments are loaded."""
    parser = argparse.ArgumentParser(prog="mushpi-ble", description=__doc__, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"mushpi-ble {__version__}")
    _global_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, module_name, add_name, run_name in COMMANDS:
        command = sub.add_parser(name, help=help_text, description=help_text[0].upper()
                                 + help_text[1:] + ".", epilog=EPILOG)
        if only is not None and name != only:
            continue
        _global_options(command, defaults=False)
        module = importlib.import_module(f"mushpi_ble.cli.{module_name}")
        getattr(module, add_name)(command)
        command.set_defaults(run=getattr(module, run_name))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a bad setting is exit 3 with the message, a closed pipe (``| head``)
    ends quietly with 0."""
    words = list(sys.argv[1:] if argv is None else argv)
    names = {name for name, *_ in COMMANDS}
    chosen = next((word for word in words if word in names), None)
    args = build_parser(chosen).parse_args(words)
    run: Run = args.run
    try:
        return run(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return exits.CONFIG
    except BrokenPipeError:
        return _reader_left()
    except BaseExceptionGroup as group:
        if group.split(BrokenPipeError)[1] is None:
            return _reader_left()
        raise


def _reader_left() -> int:
    """The reader of our output went away: that ends the command, without a traceback
    (Python would print one flushing stdout at exit, so point it at /dev/null)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return exits.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
