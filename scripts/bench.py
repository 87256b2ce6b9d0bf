#!/usr/bin/env python3
"""Benchmark the MushPi peripheral against the fake bluetoothd on a private bus.

Measures, in one run: read latency per characteristic as a central sees it,
offer-to-central notification latency, sustained notifications per second,
producer publish call time (loop saturated, and bus stalled), start-to-
registered and stop times, idle CPU and peak RSS. Prints a table and writes
JSON (default ``bench-results/bench.json``).

The fake bluetoothd and its centrals run in this process's trio loop; the
peripheral runs exactly as embedded, in BlePortal's own thread. CPU and RSS
are this process's, so they include the fake (which idles when nothing
happens).
"""

from __future__ import annotations

import argparse
import array
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from mushpi_ble.benchkit import environment, fmt, percentile, write_json
from mushpi_ble.config import load_settings
from mushpi_ble.portal import BlePortal
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.bus import private_bus
from mushpi_ble.testing.controller import SimulatedController
from mushpi_ble.testing.fakebluez import FakeBluez

UUID = CHARACTERISTIC_UUIDS
READABLE = ("env_measurements", "control_targets", "stage_state", "status_flags",
            "actuator_status", "stage_thresholds")
TARGETS = {"publish_p99_us": 5.0, "stop_ms": 200.0, "idle_cpu_percent": 0.5}


def summary_us(samples_s: Sequence[float]) -> dict[str, float]:
    values = sorted(s * 1e6 for s in samples_s)
    return {"p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": values[-1] if values else 0.0,
            "n": float(len(values))}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def measure(address: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(environ={"MUSHPI_BLE_QUEUE_MAX_SIZE": "64"}, env_file=None)
    controller = SimulatedController(seed=3)
    portal = BlePortal(settings, bus=address)
    portal.set_callbacks(controller.callbacks())
    results: dict[str, Any] = {}
    async with FakeBluez.serve(address) as bluez:
        started = time.perf_counter()
        await trio.to_thread.run_sync(portal.start)
        results["start_to_registered_ms"] = (time.perf_counter() - started) * 1000
        try:
            central = await bluez.connect_central(mtu=512)
            portal.publish_env(21.0, 85.0, 900, 500)
            portal.publish_actuator({"fan": True})
            await trio.sleep(0.05)

            # reads, per characteristic
            reads: dict[str, dict[str, float]] = {}
            for name in READABLE:
                samples = []
                for _ in range(args.reads):
                    t0 = time.perf_counter()
                    await central.read(UUID[name])
                    samples.append(time.perf_counter() - t0)
                reads[name] = summary_us(samples)
            results["read_us"] = reads

            # offer-to-central latency, one notification at a time
            uuid = UUID["env_measurements"]
            await central.subscribe(uuid)
            await central.next_notification(uuid)
            latencies = []
            for n in range(args.latency_samples):
                offered = time.monotonic()
                portal.publish_env(21.0, 85.0, 1000 + n % 1000, 500)
                packet = await central.next_notification(uuid, timeout=2.0)
                latencies.append(packet.timestamp - offered)
            results["notify_latency_us"] = summary_us(latencies)

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
            await trio.sleep(args.seconds)
            stop.set()
            await trio.to_thread.run_sync(thread.join)
            elapsed = time.monotonic() - t_start
            await trio.sleep(0.2)
            received = len(central.notifications(uuid)) - received_before
            counters = portal.get_status()["characteristics"]["env_measurements"]
            results["sustained"] = {
                "notifications_per_s": received / elapsed,
                "offered": counters["offered"], "sent": counters["sent"],
                "dropped": counters["dropped"], "coalesced": counters["coalesced"],
                "pending": counters["pending"],
            }
            results["publish_saturated_us"] = summary_us(publish_times)

            # producer cost with the bus stalled
            bluez.stop_reading()

            def stalled_producer() -> list[float]:
                times = []
                for n in range(args.stalled_publishes):
                    t0 = time.perf_counter()
                    portal.publish_env(21.0, 85.0, n % 60000, 500)
                    times.append(time.perf_counter() - t0)
                return times

            results["publish_stalled_us"] = summary_us(
                await trio.to_thread.run_sync(stalled_producer))
            bluez.resume_reading()
            await central.disconnect()

            # idle CPU: nothing to do, nobody connected
            await trio.sleep(0.5)
            cpu0, wall0 = process_cpu_s(), time.monotonic()
            await trio.sleep(args.idle_seconds)
            cpu = process_cpu_s() - cpu0
            results["idle_cpu_percent"] = 100 * cpu / (time.monotonic() - wall0)
        finally:
            t0 = time.perf_counter()
            await trio.to_thread.run_sync(portal.stop)
            results["stop_ms"] = (time.perf_counter() - t0) * 1000
    results["peak_rss_mib"] = peak_rss_mib()
    return results


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
    checks = {
        "publish p99 ≤ 5 µs (saturated)": r["publish_saturated_us"]["p99"] <= 5.0,
        "publish p99 ≤ 5 µs (stalled)": r["publish_stalled_us"]["p99"] <= 5.0,
        "publish max < put timeout (10 ms)": max(r["publish_saturated_us"]["max"],
                                                 r["publish_stalled_us"]["max"]) < 10_000,
        "stop ≤ 200 ms": r["stop_ms"] <= 200,
        "idle CPU ≈ 0 (< 0.5 %)": r["idle_cpu_percent"] < 0.5,
    }
    r["targets"] = checks
    for label, ok in checks.items():
        print(f"target {label:36} {'met' if ok else 'missed'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--stalled-publishes", type=int, default=20_000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--json", type=Path, default=Path("bench-results/bench.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.reads, args.latency_samples, args.seconds = 20, 20, 0.5
        args.stalled_publishes, args.idle_seconds = 1000, 1.0
    with private_bus() as address:
        results = trio.run(measure, address, args)
    print_table(results)
    results["environment"] = environment(["trio", "jeepney"])
    write_json(args.json, results)
    print(f"wrote {args.json}")
    json.dumps(results, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
