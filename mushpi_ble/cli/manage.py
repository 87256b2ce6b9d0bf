"""``mushpi-ble pair``, ``bonds`` and ``dbus-policy``: manage a running peripheral.

``pair`` and ``bonds`` call the management interface the peripheral exports
(:mod:`mushpi_ble.management`) on the bus it serves on; ``dbus-policy``
prints the system bus policy that lets it own the interface's name.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from mushpi_ble.cli import exits
from mushpi_ble.cli.management_client import ManagementUnavailable, call
from mushpi_ble.management_api import policy_file
from mushpi_ble.text import printable


def _bus_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bus", default="SYSTEM",
                        help="the bus the peripheral serves on: SYSTEM (honours "
                             "DBUS_SYSTEM_BUS_ADDRESS), SESSION or an address")


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    _bus_argument(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seconds", type=int, default=120,
                       help="how long new phones may pair (default 120, at most 3600)")
    group.add_argument("--close", action="store_true", help="close the window now")
    parser.add_argument("--wait", action="store_true",
                        help="wait for the next phone: show its passkey (passkey mode) and "
                             "the outcome, and close the window once it has bonded")


def add_bonds_arguments(parser: argparse.ArgumentParser) -> None:
    _bus_argument(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--remove", metavar="ADDRESS",
                       help="forget this phone (it must pair again, in a window)")
    group.add_argument("--approve", metavar="ADDRESS",
                       help="approve a phone bonded without our agent (e.g. before access "
                            "was bonded): only if it is yours")
    parser.add_argument("--json", action="store_true", help="print the list as JSON")


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", default="mushpi",
                        help="the user the service runs as (default mushpi, as the unit)")


def _run(bus: str, member: str, signature: str | None = None,
         body: tuple[Any, ...] = ()) -> Any:
    """The reply, or SystemExit with a message that says what to do."""
    try:
        return call(bus, member, signature, body)
    except ManagementUnavailable as exc:
        raise SystemExit(str(exc)) from None


def run_pair(args: argparse.Namespace) -> int:
    if args.close:
        _run(args.bus, "ClosePairingWindow")
        print("pairing window closed")
        return 0
    if not 1 <= args.seconds <= 3600:
        print("--seconds must be 1..3600", file=sys.stderr)
        return 2
    until = float(_run(args.bus, "OpenPairingWindow", "u", (args.seconds,)))
    print(f"pairing window open for {args.seconds} s, until "
          f"{time.strftime('%H:%M:%S', time.localtime(until))}: pair the phone now",
          flush=True)
    if not args.wait:
        return exits.OK
    try:
        return _wait_for_a_bond(args.bus, opened=time.time() - 1.0)
    except KeyboardInterrupt:
        _run(args.bus, "ClosePairingWindow")
        print("stopped; pairing window closed")
        return exits.FAILED


WAIT_POLL_S = 0.25


def _wait_for_a_bond(bus: str, *, opened: float) -> int:
    """Follow the attempts made since the window opened until one bonds or the window
    closes; the passkey the phone must show is printed as soon as the agent shows it."""
    told: dict[tuple[str, float], str] = {}
    passkeys: set[tuple[str, int]] = set()
    while True:
        status = json.loads(_run(bus, "GetStatus"))
        pairing, access = status.get("pairing") or {}, status.get("access") or {}
        shown = pairing.get("passkey")
        if shown and (shown["address"], shown["passkey"]) not in passkeys \
                and shown.get("at", 0) >= opened:
            passkeys.add((shown["address"], shown["passkey"]))
            print(f"{shown['address']}: type {shown['passkey']} on the phone "
                  "if it shows the same number", flush=True)
        for attempt in pairing.get("recent") or []:
            key = (attempt["address"], attempt["at"])
            if attempt["at"] < opened or told.get(key) == attempt["outcome"]:
                continue
            told[key] = attempt["outcome"]
            reason = f" ({attempt['reason']})" if attempt.get("reason") else ""
            print(f"{attempt['address']}: {attempt['outcome']}{reason}", flush=True)
            if attempt["outcome"] == "paired":
                _run(bus, "ClosePairingWindow")
                print(f"bonded: {attempt['address']}; pairing window closed")
                return exits.OK
        if not access.get("window_open"):
            print("the pairing window closed before a phone bonded")
            return exits.FAILED
        time.sleep(WAIT_POLL_S)


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def run_bonds(args: argparse.Namespace) -> int:
    if args.remove:
        _run(args.bus, "RemoveBond", "s", (args.remove,))
        print(f"bond removed: {printable(args.remove.upper())}")
        return 0
    if args.approve:
        _run(args.bus, "ApproveBond", "s", (args.approve,))
        print(f"approved: {printable(args.approve.upper())}")
        return 0
    bonds = json.loads(_run(args.bus, "ListBonds"))
    if args.json:
        print(json.dumps(bonds, indent=2))
        return 0
    if not bonds:
        print("no bonded phones")
        return 0
    print(f"{'address':<18} {'name':<24} {'last seen':<20} state,approved")
    for bond in bonds:
        state = "connected" if bond["connected"] else ("bonded" if bond["bonded"] else "paired")
        if not bond.get("approved", True):
            state += ",NOT-APPROVED"
        # the peripheral sends names made printable; a phone's name is still never
        # trusted to reach a terminal as it came
        name = printable(str(bond["name"] or "-"), 24)
        print(f"{printable(str(bond['address'])):<18} {name:<24} "
              f"{_when(bond['last_seen']):<20} {state}")
    return 0


def run_policy(args: argparse.Namespace) -> int:
    try:
        text = policy_file(args.user)
    except ValueError as exc:
        print(f"--user: {exc}", file=sys.stderr)
        return exits.USAGE
    sys.stdout.write(text)
    return exits.OK
