"""Benchmark the MushPi peripheral against the fake bluetoothd on a private bus.

Measures, in one run: read latency per characteristic as a central sees it,
offer-to-central notification latency, sustained notifications per second,
producer publish call time (loop saturated, and bus stalled), start-to-
registered and stop times, idle CPU and peak RSS. Prints a table and writes
a report (default ``bench-results/peripheral.json``).

The fake bluetoothd and its centrals run in this process's trio loop; the
peripheral runs exactly as embedded, in BlePortal's own thread. CPU and RSS
are this process's, so they include the fake (which idles when nothing
happens). ``mushpi-ble bench`` runs the same measurement as a server
(``serve``) so that its process is its own.
"""

from __future__ import annotations

import argparse
import array
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from mushpi_ble.bench import UNPACED, procfs, results, wire
from mushpi_ble.bench.central import timed_reads
from mushpi_ble.bench.stats import fmt, summary
from mushpi_ble.config import load_settings
from mushpi_ble.portal import BlePortal
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.sim import SimulatedController
from mushpi_ble.testing.bus import private_bus
from mushpi_ble.testing.fakebluez import FakeBluez

BENCHMARK = "peripheral"
UUID = CHARACTERISTIC_UUIDS
US = 1e6  # seconds to µs


@attrs.frozen
class Counts:
    reads: int = 300
    latency_samples: int = 300
    seconds: float = 3.0
    stalled_publishes: int = 20_000
    idle_seconds: float = 10.0


FULL = Counts()
QUICK = Counts(reads=20, latency_samples=20, seconds=0.5, stalled_publishes=1000,
               idle_seconds=1.0)


async def measure(address: str, counts: Counts) -> dict[str, Any]:
    settings = load_settings(environ={"MUSHPI_BLE_QUEUE_MAX_SIZE": "64",
                                     # the figures kept over time are of the signal path
                                     "MUSHPI_BLE_NOTIFY_MODE": "signal", **UNPACED},
                             env_file=None)
    controller = SimulatedController(seed=3)
    portal = BlePortal(settings, bus=address)
    portal.set_callbacks(controller.callbacks())
    out: dict[str, Any] = {}
    async with FakeBluez.serve(address) as bluez:
        started = time.perf_counter()
        await trio.to_thread.run_sync(portal.start)
        out["start_to_registered_ms"] = (time.perf_counter() - started) * 1000
        try:
            central = await bluez.connect_central(mtu=512)
            portal.publish_env(21.0, 85.0, 900, 500)
            portal.publish_actuator({"fan": True})
            await trio.sleep(0.05)

            # reads, per characteristic
            reads = await timed_reads(central, counts.reads, round_robin=False)
            out["read_us"] = {name: summary(s, US) for name, s in reads.items()}

            # offer-to-central latency, one notification at a time
            uuid = UUID["env_measurements"]
            await central.subscribe(uuid)
            await central.next_notification(uuid)
            latencies = []
            for n in range(counts.latency_samples):
                offered = time.monotonic()
                portal.publish_env(21.0, 85.0, 1000 + n % 1000, 500)
                packet = await central.next_notification(uuid, timeout=2.0)
                latencies.append(packet.timestamp - offered)
            out["notify_latency_us"] = summary(latencies, US)

            # sustained rate and producer cost with the loop saturated
            received_before = len(central.notifications(uuid))
            publish_times = array.array("d")  # compact: hundreds of thousands of samples
            stop = threading.Event()

            def producer() -> None:
                n = 0
                while not stop.is_set():
                    t0 = time.perf_counter()
                    portal.publish_env(21.0, 85.0, n % 60000, 500)
                    publish_times.append(time.perf_counter() - t0)
                    n += 1

            thread = threading.Thread(target=producer, name="bench-producer")
            t_start = time.monotonic()
            thread.start()
            await trio.sleep(counts.seconds)
            stop.set()
            await trio.to_thread.run_sync(thread.join)
            elapsed = time.monotonic() - t_start
            await trio.sleep(0.2)
            received = len(central.notifications(uuid)) - received_before
            counters = portal.get_status()["characteristics"]["env_measurements"]
            out["sustained"] = {
                "notifications_per_s": received / elapsed,
                "offered": counters["offered"], "sent": counters["sent"],
                "dropped": counters["dropped"], "coalesced": counters["coalesced"],
                "pending": counters["pending"],
            }
            out["publish_saturated_us"] = summary(publish_times, US)

            # producer cost with the bus stalled
            bluez.stop_reading()

            def stalled_producer() -> list[float]:
                times = []
                for n in range(counts.stalled_publishes):
                    t0 = time.perf_counter()
                    portal.publish_env(21.0, 85.0, n % 60000, 500)
                    times.append(time.perf_counter() - t0)
                return times

            out["publish_stalled_us"] = summary(
                await trio.to_thread.run_sync(stalled_producer), US)
            bluez.resume_reading()
            await central.disconnect()

            # idle CPU: nothing to do, nobody connected
            await trio.sleep(0.5)
            cpu0, wall0 = procfs.cpu_seconds(), time.monotonic()
            await trio.sleep(counts.idle_seconds)
            cpu = procfs.cpu_seconds() - cpu0
            out["idle_cpu_percent"] = 100 * cpu / (time.monotonic() - wall0)
        finally:
            t0 = time.perf_counter()
            await trio.to_thread.run_sync(portal.stop)
            out["stop_ms"] = (time.perf_counter() - t0) * 1000
    out["peak_rss_mib"] = procfs.peak_rss_mib()
    out["targets"] = targets(out)
    return out


def targets(r: dict[str, Any]) -> dict[str, bool]:
    """The peripheral's design targets, met or not."""
    return {
        "publish p99 ≤ 5 µs (saturated)": r["publish_saturated_us"]["p99"] <= 5.0,
        "publish p99 ≤ 5 µs (stalled)": r["publish_stalled_us"]["p99"] <= 5.0,
        "publish max < put timeout (10 ms)": max(r["publish_saturated_us"]["max"],
                                                 r["publish_stalled_us"]["max"]) < 10_000,
        "stop ≤ 200 ms": r["stop_ms"] <= 200,
        "idle CPU ≈ 0 (< 0.5 %)": r["idle_cpu_percent"] < 0.5,
    }


def print_table(r: dict[str, Any]) -> None:
    print(f"{'read (µs)':22} {'p50':>8} {'p95':>8} {'p99':>8}")
    for name, s in r["read_us"].items():
        print(f"  {name:20} {fmt(s['p50']):>8} {fmt(s['p95']):>8} {fmt(s['p99']):>8}")
    n = r["notify_latency_us"]
    print(f"offer→central notify  p50 {fmt(n['p50'])} µs  p99 {fmt(n['p99'])} µs")
    s = r["sustained"]
    print(f"sustained             {fmt(s['notifications_per_s'])} notifications/s "
          f"(offered {s['offered']}, sent {s['sent']}, dropped {s['dropped']}, "
          f"pending {s['pending']})")
    for key, label in (("publish_saturated_us", "publish, loop saturated"),
                       ("publish_stalled_us", "publish, bus stalled")):
        p = r[key]
        print(f"{label:22} p50 {fmt(p['p50'], 2)} µs  p99 {fmt(p['p99'], 2)} µs  "
              f"max {fmt(p['max'], 1)} µs  (n={int(p['n'])})")
    print(f"start→registered      {fmt(r['start_to_registered_ms'], 1)} ms")
    print(f"stop                  {fmt(r['stop_ms'], 1)} ms")
    print(f"idle CPU              {fmt(r['idle_cpu_percent'], 3)} %")
    print(f"peak RSS              {fmt(r['peak_rss_mib'], 1)} MiB (incl. the in-process fake)")
    for label, ok in r["targets"].items():
        print(f"target {label:36} {'met' if ok else 'missed'}")


def serve(_variant: str, address: str) -> int:
    """The benchmark as a server: ``{"cmd": "run", "quick": bool}`` answers with the
    figures, measured on ``address`` with this process's own CPU and RSS."""

    def run(command: wire.Event) -> dict[str, Any]:
        counts = QUICK if command.get("quick") else FULL
        return {"results": trio.run(measure, address, counts)}

    wire.emit("ready", benchmark=BENCHMARK)
    wire.serve_commands({"run": run})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reads", type=int, default=FULL.reads)
    parser.add_argument("--latency-samples", type=int, default=FULL.latency_samples)
    parser.add_argument("--seconds", type=float, default=FULL.seconds)
    parser.add_argument("--stalled-publishes", type=int, default=FULL.stalled_publishes)
    parser.add_argument("--idle-seconds", type=float, default=FULL.idle_seconds)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--json", type=Path, default=results.default_path(BENCHMARK))
    args = parser.parse_args(argv)
    counts = QUICK if args.quick else Counts(
        reads=args.reads, latency_samples=args.latency_samples, seconds=args.seconds,
        stalled_publishes=args.stalled_publishes, idle_seconds=args.idle_seconds)
    with private_bus() as address:
        figures = trio.run(measure, address, counts)
    print_table(figures)
    results.write_report(args.json, results.report(
        BENCHMARK, config=attrs.asdict(counts), results=figures, packages=["trio", "jeepney"]))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
