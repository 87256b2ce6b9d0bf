"""``mushpi-ble bench --notify-paths``: notify sockets against signals, side by side.

Each path runs in its own child process (so each peak RSS is its own) on one
private bus, with the fake bluetoothd in the child: the peripheral with
``MUSHPI_BLE_NOTIFY_MODE=signal`` or ``socket`` and two phones.

* **latency** — publish one value, wait until the phone has it; publish → central
  p50/p99 over the samples;
* **CPU per notification** — over the same one-at-a-time loop, the CPU time of the
  child (peripheral and fake bluetoothd) and of dbus-daemon, divided by the count;
* **slow phone** — the controller publishes every ``interval`` while one phone's
  link takes ten intervals per notification: does the other phone get every value,
  how many values wait for the slow phone at most (on the signal path in
  bluetoothd's queue, which has no bound; on the socket path in our per-phone
  queue), and the child's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from mushpi_ble.bench import UNPACED, procfs, results
from mushpi_ble.bench.stats import summary
from mushpi_ble.config import load_settings
from mushpi_ble.portal import BlePortal
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.bus import DBusDaemonMissing, private_bus
from mushpi_ble.testing.controller import SimulatedController
from mushpi_ble.testing.fakebluez import FakeBluez

BENCHMARK = "notify-paths"
PATHS = ("signal", "socket")
ENV = CHARACTERISTIC_UUIDS["env_measurements"]
US = 1e6
SLOWER = 10


@attrs.frozen
class Counts:
    latency_samples: int = 2000
    interval_s: float = 0.001
    slow_seconds: float = 5.0


FULL = Counts()
QUICK = Counts(latency_samples=200, slow_seconds=1.0)


def bus_daemon_pid(address: str) -> int | None:
    """The private dbus-daemon serving ``address``: its command line names the
    directory of the bus socket (Linux /proc)."""
    socket_path = next((part.split("=", 1)[1] for part in address.split(",")
                        if part.startswith("unix:path=") or part.startswith("path=")), "")
    directory = os.path.dirname(socket_path.removeprefix("unix:path="))
    if not directory:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "dbus-daemon" in cmdline and directory in cmdline:
            return int(proc.name)
    return None


async def _next_with(phone: Any, co2: int) -> Any:
    """The notification carrying ``co2`` (older ones, such as the subscribe push, skipped)."""
    while True:
        packet = await phone.next_notification(ENV, timeout=5.0)
        if struct.unpack_from("<H", packet.value)[0] == co2:
            return packet


async def measure_path(address: str, path: str, counts: Counts) -> dict[str, Any]:
    """Runs in the child: every figure of one notify path."""
    settings = load_settings(environ={"MUSHPI_BLE_NOTIFY_MODE": path, **UNPACED},
                             env_file=None)
    portal = BlePortal(settings, bus=address)
    portal.set_callbacks(SimulatedController(seed=5).callbacks())
    daemon = bus_daemon_pid(address)
    out: dict[str, Any] = {"path": path}
    async with FakeBluez.serve(address) as bluez:
        await trio.to_thread.run_sync(portal.start)
        try:
            phone = await bluez.connect_central(address="11:22:33:44:55:01", mtu=247)
            other = await bluez.connect_central(address="11:22:33:44:55:02", mtu=247)
            for central in (phone, other):
                await central.subscribe(ENV)
                await central.next_notification(ENV)
            out["path_taken"] = portal.get_status()["notify"]["characteristics"][
                "env_measurements"]["path"]

            # one at a time: latency and CPU per notification
            latencies = []
            cpu0, bus0 = procfs.cpu_seconds(), _cpu(daemon)
            for n in range(counts.latency_samples):
                co2 = 1000 + n % 4000
                offered = time.monotonic()
                portal.publish_env(21.0, 85.0, co2, 500)
                packet = await _next_with(phone, co2)
                await _next_with(other, co2)
                latencies.append(packet.timestamp - offered)
            cpu, bus = procfs.cpu_seconds() - cpu0, _cpu(daemon) - bus0
            out["latency_us"] = summary(latencies, US)
            out["cpu_us_per_notification"] = {
                "process": cpu / counts.latency_samples * US,
                "dbus_daemon": bus / counts.latency_samples * US,
                "total": (cpu + (0.0 if math.isnan(bus) else bus))
                / counts.latency_samples * US,
            }

            # a phone ten times slower than the publisher
            out["slow_phone"] = await _slow_phone(portal, phone, other, counts)
            out["peak_rss_mib"] = procfs.peak_rss_mib()
        finally:
            await trio.to_thread.run_sync(portal.stop)
    return out


async def _slow_phone(portal: BlePortal, slow: Any, fast: Any,
                      counts: Counts) -> dict[str, Any]:
    slow.notify_read_delay = counts.interval_s * SLOWER
    fast_before = len(fast.notifications(ENV))
    slow_before = len(slow.notifications(ENV))
    rss_before = procfs.rss_mib(os.getpid())
    published = 0
    peak_ours = 0
    deadline = time.monotonic() + counts.slow_seconds
    while time.monotonic() < deadline:
        portal.publish_env(21.0, 85.0, published % 60000, 500)
        published += 1
        await trio.sleep(counts.interval_s)
        if published % 50 == 0:
            phones = portal.get_status()["notify"]["phones"]
            peak_ours = max([peak_ours, *(p["queue_depth"] for p in phones.values())])
    with trio.move_on_after(5.0):
        while len(fast.notifications(ENV)) - fast_before < published:
            await trio.sleep(0.01)
    phones = portal.get_status()["notify"]["phones"]
    slow_entry = phones.get(slow.device_path, {})
    return {
        "published": published,
        "fast_phone_received": len(fast.notifications(ENV)) - fast_before,
        "slow_phone_received_meanwhile": len(slow.notifications(ENV)) - slow_before,
        "slow_phone_peak_waiting_in_bluetoothd": slow.air_peak,
        "slow_phone_peak_waiting_in_our_queue": peak_ours,
        "slow_phone_dropped_by_policy": slow_entry.get("dropped", 0),
        "rss_growth_mib": procfs.rss_mib(os.getpid()) - rss_before,
    }


def _cpu(pid: int | None) -> float:
    return math.nan if pid is None else procfs.cpu_seconds(pid)


# ---------------------------------------------------------------------------
# the parent: one child per path, then the table
# ---------------------------------------------------------------------------

def run_child(address: str, path: str, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mushpi_ble.bench.notify_paths", "--child", path,
           "--address", address, *(["--quick"] if quick else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"path": path, "status": "failed", "error": tail}
    return {"status": "ok", **json.loads(lines[-1])}


def render(rows: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["notify path   latency p50/p99 us   CPU us/notification (process+bus)   "
             "slow phone: fast got/published, peak waiting, RSS growth MiB, peak RSS MiB"]
    for path, row in rows.items():
        if row.get("status") != "ok":
            lines.append(f"{path:12}  {row.get('error')}")
            continue
        lat, cpu, slow = row["latency_us"], row["cpu_us_per_notification"], row["slow_phone"]
        waiting = max(slow["slow_phone_peak_waiting_in_bluetoothd"],
                      slow["slow_phone_peak_waiting_in_our_queue"])
        where = ("bluetoothd" if slow["slow_phone_peak_waiting_in_bluetoothd"]
                 else "our queue")
        lines.append(
            f"{path:12}  {lat['p50']:8.0f} / {lat['p99']:<8.0f}   "
            f"{cpu['total']:8.0f} ({cpu['process']:.0f}+{cpu['dbus_daemon']:.0f})"
            f"                  {slow['fast_phone_received']}/{slow['published']}, "
            f"{waiting} in {where}, {slow['rss_growth_mib']:.2f}, {row['peak_rss_mib']:.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    counts = QUICK if args.quick else FULL
    try:
        with private_bus() as address:
            rows = {path: run_child(address, path, bool(args.quick)) for path in PATHS}
    except DBusDaemonMissing as exc:
        print(str(exc), file=sys.stderr)
        return 3
    report = results.report(BENCHMARK, config={"quick": bool(args.quick),
                                               "counts": attrs.asdict(counts)},
                            results={"paths": rows}, packages=("trio", "jeepney"))
    results.publish(report, render(rows), output=args.output, as_json=args.json)
    return 0 if all(r.get("status") == "ok" for r in rows.values()) else 1


def main(argv: list[str] | None = None) -> int:
    """The child: measure one path, print its figures as one JSON line."""
    parser = argparse.ArgumentParser(prog="mushpi_ble.bench.notify_paths")
    parser.add_argument("--child", choices=PATHS, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    figures = trio.run(measure_path, args.address, args.child,
                       QUICK if args.quick else FULL)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
