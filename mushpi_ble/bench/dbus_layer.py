"""Benchmark the project's D-Bus layer against dbus-fast, side by side.

One private dbus-daemon, GATT-characteristic-like servers each in its own
process (:mod:`~mushpi_ble.bench.dbus_servers`, exporting what
:mod:`~mushpi_ble.bench.dbus_objects` names), and one client that measures
them all (:mod:`~mushpi_ble.bench.dbus_measure`):

* ``ours``: ``mushpi_ble.dbus`` (jeepney codec, trio I/O);
* ``dbus-fast``: ``dbus_fast.aio.MessageBus`` with a ``ServiceInterface``.

The client (:mod:`~mushpi_ble.bench.raw_client`) is a small blocking client
on a plain socket (jeepney does the authentication and encodes the call
templates): its own cost is a few microseconds per message, so it neither
dilutes the latency ratio nor caps the notification rate, and it is the same
code for every server.

Two more servers, ``trio-floor`` and ``asyncio-floor``
(:mod:`mushpi_ble.bench.loop_floor`), answer ReadValue with a canned reply on
each event loop: what is left of a server's CPU per call above its loop's
floor is what its D-Bus layer costs. And dbus-daemon's CPU per notification
gives the rate the bus itself can carry, beside the rate each server reached
(:mod:`~mushpi_ble.bench.dbus_report`).

Server CPU comes from ``/proc/<pid>/stat`` (utime + stime, clock-tick
resolution) read before and after each phase, peak RSS from ``VmHWM``.

Usage::

    python -m mushpi_ble.bench.dbus_layer               # 5000 calls, 20000 signals
    python -m mushpi_ble.bench.dbus_layer --runs 3      # medians of 3 runs
    python -m mushpi_ble.bench.dbus_layer --quick       # smoke test
    python -m mushpi_ble.bench.dbus_layer --profile-dir bench-results/prof

This module is the program: its arguments, the runs, the JSON report.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mushpi_ble.bench import results
from mushpi_ble.bench.dbus_measure import bench_server, measure_round_trips
from mushpi_ble.bench.dbus_objects import BUS_NAME, BUS_PATH, PACE_EVERY, PEER, SERVERS, VALUE_LEN
from mushpi_ble.bench.dbus_report import print_report, ratios, summarise
from mushpi_ble.bench.raw_client import BusClient

BENCHMARK = "dbus_layer"


@contextlib.contextmanager
def _interrupt_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so cleanup code runs."""
    def handler(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mushpi_ble.testing.bus import private_bus

    servers = [s for s in SERVERS if s in args.servers]
    runs: list[dict[str, Any]] = []
    profile_dir: Path | None = Path(args.profile_dir) if args.profile_dir else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    with _interrupt_as_exit(), private_bus() as address:
        client = BusClient(address)
        try:
            try:
                daemon_pid: int | None = int(client.call_bus(
                    "GetConnectionUnixProcessID", "s", (BUS_NAME,)))
            except RuntimeError:
                daemon_pid = None
            for index in range(args.runs):
                order = servers if index % 2 == 0 else servers[::-1]
                result: dict[str, Any] = {"run": index + 1, "order": order}
                ping = client.template(BUS_NAME, BUS_PATH, PEER, "Ping")
                result["floor"] = measure_round_trips(client, ping, args.warmup, args.calls,
                                                      None, None)
                for kind in order:
                    profile = (profile_dir / f"{kind}-run{index + 1}.prof"
                               if profile_dir is not None else None)
                    print(f"run {index + 1}/{args.runs}: {kind} ...", file=sys.stderr,
                          flush=True)
                    result[kind] = bench_server(kind, address, client, daemon_pid, args,
                                                profile)
                runs.append(result)
        finally:
            client.close()
    rows = summarise(runs)
    ratio_info = ratios(rows)
    print_report(rows, ratio_info, len(runs), args)
    return results.report(
        BENCHMARK,
        config={
            "calls": args.calls, "signals": args.signals, "runs": args.runs,
            "warmup_calls": args.warmup, "warmup_signals": args.warmup_signals,
            "pace_every": PACE_EVERY, "value_len": VALUE_LEN,
            "client": "blocking raw socket (jeepney auth + encoding)",
            "ours_emit": "await conn.emit_properties_changed per signal, unpaced",
            "dbus_fast_emit": "emit_properties_changed in a loop; paced: Peer.Ping "
                              f"to the bus after every {PACE_EVERY} signals",
        },
        results={"summary": rows, "ratios": ratio_info, "runs": runs},
        packages=["jeepney", "trio", "trio-util", "dbus-fast", "attrs"],
        dbus_daemon_pid=daemon_pid,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=5000, help="round trips per server")
    parser.add_argument("--signals", type=int, default=20000, help="notifications per burst")
    parser.add_argument("--runs", type=int, default=1, help="repeat and report medians")
    parser.add_argument("--json", type=Path, default=results.default_path(BENCHMARK),
                        help="where to write JSON")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up round trips")
    parser.add_argument("--warmup-signals", type=int, default=None,
                        help="warm-up notifications")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--start-timeout", type=float, default=15.0,
                        help="seconds to wait for the first notification of a burst")
    parser.add_argument("--idle-timeout", type=float, default=1.0,
                        help="seconds of silence that end a burst")
    parser.add_argument("--profile-dir", default=None,
                        help="run each server under cProfile, writing .prof files here")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls = min(args.calls, 300)
        args.signals = min(args.signals, 2000)
    if args.warmup is None:
        args.warmup = max(50, min(500, args.calls // 10))
    if args.warmup_signals is None:
        args.warmup_signals = max(64, min(2000, args.signals // 10))
    if min(args.calls, args.signals, args.runs) < 1:
        parser.error("--calls, --signals and --runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = run(args)
    results.write_report(args.json, data)
    print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

