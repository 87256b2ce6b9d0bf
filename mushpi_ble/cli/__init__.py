"""``mushpi-ble``: serve, demo, bench, check, pair, bonds and the install files from the
command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mushpi_ble import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mushpi-ble", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mushpi-ble {__version__}")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", required=True)

    from mushpi_ble.cli import bench, check, demo, manage, serve, unit

    serve.add_arguments(sub.add_parser("serve", help="serve the MushPi service on bluetoothd "
                                                     "with a simulated controller"))
    demo.add_arguments(sub.add_parser("demo", help="everything simulated on a private bus: "
                                                   "fake bluetoothd, peripheral, phone app"))
    check.add_arguments(sub.add_parser("check", help="diagnose whether the peripheral can "
                                                     "work on this machine"))
    bench.add_arguments(sub.add_parser("bench", help="benchmarks: the peripheral's figures and "
                                                     "a peer library side by side"))
    unit.add_arguments(sub.add_parser("systemd-unit", help="print the systemd unit for this "
                                                           "install"))
    manage.add_pair_arguments(sub.add_parser("pair", help="open a pairing window on the "
                                                          "running peripheral"))
    manage.add_bonds_arguments(sub.add_parser("bonds", help="list the bonded phones, or "
                                                            "forget one"))
    manage.add_policy_arguments(sub.add_parser("dbus-policy", help="print the system bus "
                                                                   "policy of `pair` and "
                                                                   "`bonds`"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mushpi_ble.cli import bench, check, demo, manage, serve, unit

    if args.command == "check":
        return check.run(args)
    if args.command == "serve":
        return serve.run(args)
    if args.command == "demo":
        return demo.run(args)
    if args.command == "bench":
        return bench.run(args)
    if args.command == "systemd-unit":
        return unit.run(args)
    if args.command == "pair":
        return manage.run_pair(args)
    if args.command == "bonds":
        return manage.run_bonds(args)
    if args.command == "dbus-policy":
        return manage.run_policy(args)
    raise SystemExit(f"unknown command {args.command}")  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
