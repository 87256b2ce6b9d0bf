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

import trio

from mushpi_ble.dbus import BusUnreachable, DBusError, open_connection
from mushpi_ble.gatt import printable
from mushpi_ble.management import BUS_NAME, INTERFACE, PATH, policy_file

NOT_RUNNING = ("org.freedesktop.DBus.Error.ServiceUnknown",
               "org.freedesktop.DBus.Error.NameHasNoOwner")
TIMEOUT_S = 5.0


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


async def _call(bus: str, member: str, signature: str = "", body: tuple[Any, ...] = ()) -> Any:
    async with open_connection(bus, call_timeout=TIMEOUT_S) as conn:
        reply = await conn.call(BUS_NAME, PATH, INTERFACE, member, signature, body,
                                timeout=TIMEOUT_S)
    return reply[0] if reply else None


def _run(bus: str, member: str, signature: str = "", body: tuple[Any, ...] = ()) -> Any:
    """The reply, or SystemExit with a message that says what to do."""
    try:
        return trio.run(_call, bus, member, signature, body)
    except BusUnreachable as exc:
        raise SystemExit(f"cannot reach the D-Bus bus {bus}: {exc}") from None
    except DBusError as exc:
        if exc.name in NOT_RUNNING:
            raise SystemExit(f"no running mushpi-ble peripheral owns {BUS_NAME} on the {bus} "
                             "bus (is the service running? on the system bus it needs the "
                             "policy of `mushpi-ble dbus-policy`)") from None
        raise SystemExit(f"{member} refused: {exc.name}: {exc.text}") from None


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
          f"{time.strftime('%H:%M:%S', time.localtime(until))}: pair the phone now")
    return 0


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
    sys.stdout.write(policy_file(args.user))
    return 0
