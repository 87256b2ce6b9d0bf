"""A/B benchmark of the two backends behind the controller's facade.

One private dbus-daemon and one fake bluetoothd (in this process, with the
simulated phones); each backend runs in a child process of its own, driven
through ``mushpi_ble.compat.ble_gatt`` exactly as the controller drives it,
so its RSS and CPU are its own. Per backend:

* start time (``start_ble_service()`` until it returns True);
* read latency per characteristic, p50/p95/p99 (phone → bluetoothd → backend
  → phone), with the backend otherwise idle;
* notify latency, publish → phone receives, at 100 packets/s (paced);
* busy bus: the producer publishes flat out while a second phone reads
  control_targets in a loop: producer call time p50/p99/max, notifications/s,
  the age of what the phone sees (publish to receipt of each value it gets),
  how many newer values had been published by the time it arrived, and the
  reads, all of them and split into those while the producer publishes and
  those after, until the phone has the last value (the split compares policies
  like with like: see :func:`split_reads`)
  (each backend as shipped: bluez-dbus paces a characteristic's notifications,
  ``MUSHPI_BLE_NOTIFY_INTERVAL_MS``, and thins a flat-out burst by its policy;
  the legacy backend hands every value to bluetoothd, which queues what the air
  cannot carry);
* stalled bus: bluetoothd stops reading its socket while the producer
  publishes flat out: producer call time p50/p99/max;
* stop time with a subscribed phone, and again with bluetoothd stalled;
* peak RSS and CPU seconds of the backend's process.

The clock is CLOCK_MONOTONIC, shared by the processes, so a publish stamped
in the child and a notification stamped here compare directly.

Seed acceptance (checked and printed): reads p50 <= 100 ms and p95 <= 500 ms
on every characteristic, shutdown < 2 s, no producer stall (no producer
call longer than 50 ms, busy or stalled).

Usage::

    python -m mushpi_ble.bench.facade_ab            # both backends, 3 runs, medians + JSON
    python -m mushpi_ble.bench.facade_ab --quick    # smoke test
    python -m mushpi_ble.bench.facade_ab --policy drop_oldest   # every queue drop_oldest

The bluezero backend needs the extra: scripts/install-bluezero-deps. Each
backend runs as server kind ``facade`` (:mod:`mushpi_ble.bench.wire`).
"""

from __future__ import annotations

import argparse
import bisect
import os
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mushpi_ble.bench import procfs, results, wire
from mushpi_ble.bench.peer import READABLE
from mushpi_ble.bench.stats import fmt, median, ratio, summary

BENCHMARK = "facade_ab"
BACKENDS = ("bluez-dbus", "bluezero")
ENV = "env_measurements"
if TYPE_CHECKING:
    from mushpi_ble.bench.children import Child

MS = 1e-6  # ns to ms
STARTUP_TIMEOUT = 30.0
PHASE_SEQ = {"paced": 1000, "busy": 10000, "stalled": 30000}
STALL_LIMIT_MS = 50.0
READ_P50_LIMIT_MS = 100.0
READ_P95_LIMIT_MS = 500.0
SHUTDOWN_LIMIT_S = 2.0
POLICY_VARIABLE = "MUSHPI_BLE_BACKPRESSURE_POLICY"


# ======================================================================
# the child: one backend behind the facade
# ======================================================================
def serve(backend: str, address: str) -> int:
    """Run the facade on ``backend``; answer the parent's commands."""
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address
    from mushpi_ble.compat import ble_gatt
    from mushpi_ble.config import load_settings
    from mushpi_ble.sim import SimulatedController

    environ = {"MUSHPI_BLE_BACKEND": backend}
    if os.environ.get(POLICY_VARIABLE):  # --policy: one policy for every queue
        environ[POLICY_VARIABLE] = os.environ[POLICY_VARIABLE]
    settings = load_settings(environ=environ, env_file=None)
    ble_gatt.configure(settings=settings)
    controller = SimulatedController(seed=1)
    ble_gatt.set_callbacks(**controller.callbacks())

    def timed(call: Any) -> dict[str, Any]:
        began = time.monotonic()
        ok = call()
        return {"ok": ok, "seconds": time.monotonic() - began}

    def publish(command: wire.Event) -> dict[str, Any]:
        count, interval, first = command["count"], command["interval"], command["first"]
        call_ns: list[int] = []
        stamps: list[float] = []
        due = time.monotonic()
        for seq in range(first, first + count):
            stamp = time.monotonic()
            began = time.perf_counter_ns()
            ble_gatt.notify_env_packet(20.0, 80.0, seq, 1)
            call_ns.append(time.perf_counter_ns() - began)
            stamps.append(stamp)
            if interval:
                due += interval
                time.sleep(max(0.0, due - time.monotonic()))
        return {"call_ns": call_ns, "stamps": stamps}

    def status(_command: wire.Event) -> dict[str, Any]:
        instance = ble_gatt.get_service_instance()
        return {
            "connections": ble_gatt.get_connection_count(),
            "characteristics": (
                instance.get_status()["characteristics"] if instance is not None else {}
            ),
        }

    wire.emit("ready", backend=backend)
    wire.serve_commands(
        {
            "init": lambda _c: timed(ble_gatt.initialize_ble_service),
            "start": lambda _c: timed(ble_gatt.start_ble_service),
            "stop": lambda _c: timed(ble_gatt.stop_ble_service),
            "publish": publish,
            "status": status,
        }
    )
    return 0


# ======================================================================
# the parent: bus, fake bluetoothd, phones, measurements
# ======================================================================
async def bench_backend(
    backend: str, address: str, bluez: Any, args: argparse.Namespace
) -> dict[str, Any]:
    """One backend in its own server process, measured from here."""
    from mushpi_ble.bench.children import Child

    async with Child(wire.server_argv("facade", backend, address)) as child:
        await child.ready(STARTUP_TIMEOUT)
        return await measure_backend(child, backend, bluez, args)


async def measure_backend(
    child: Child, backend: str, bluez: Any, args: argparse.Namespace
) -> dict[str, Any]:
    import trio

    from mushpi_ble.bench.central import timed_reads
    from mushpi_ble.protocol import CHARACTERISTIC_UUIDS as UUID

    result: dict[str, Any] = {"backend": backend}
    cpu: dict[str, float] = {}

    def cpu_now() -> float:
        return procfs.cpu_seconds(child.pid)

    mark = cpu_now()
    result["init_s"] = (await child.ask("init"))["seconds"]  # imports the backend
    started = await child.ask("start")
    if not started["ok"]:
        raise RuntimeError(f"{backend} did not start")
    result["start_s"] = started["seconds"]
    cpu["start"] = cpu_now() - mark
    await bluez.wait_for_application()
    phone = await bluez.connect_central(address="11:22:33:44:55:01", mtu=512)
    reader = await bluez.connect_central(address="11:22:33:44:55:02", mtu=512)
    with trio.fail_after(5):
        while (await child.ask("status"))["connections"] != 2:
            await trio.sleep(0.01)
    for name in (ENV, "status_flags", "actuator_status"):
        await phone.subscribe(UUID[name])
        await phone.next_notification(UUID[name])

    # reads, backend otherwise idle
    mark = cpu_now()
    reads = await timed_reads(phone, args.reads, round_robin=False)
    result["reads_ms"] = {name: summary(s, 1e3) for name, s in reads.items()}
    cpu["reads"] = cpu_now() - mark

    def phone_seen(first: int) -> dict[int, float]:
        """Each sequence number the phone received from ``first`` on: when."""
        seen: dict[int, float] = {}
        for note in phone.notifications(UUID[ENV]):
            seq = struct.unpack_from("<H", note.value)[0]
            if seq >= first and seq not in seen:
                seen[seq] = note.timestamp
        return seen

    def latencies(answer: dict[str, Any], first: int) -> tuple[list[float], list[float]]:
        stamps = answer["stamps"]
        seen = {seq: at for seq, at in phone_seen(first).items() if seq < first + len(stamps)}
        lat = [(seen[s] - stamps[s - first]) * 1000 for s in sorted(seen)]
        return lat, sorted(seen.values())

    async def drain(first: int, count: int) -> None:
        last = min(first + count - 1, 0xFFFF)
        with trio.move_on_after(10):
            while not any(
                struct.unpack_from("<H", n.value)[0] == last
                for n in phone.notifications(UUID[ENV])[-64:]
            ):
                await trio.sleep(0.02)

    # paced: notify latency while nothing else happens
    first = PHASE_SEQ["paced"]
    mark = cpu_now()
    paced = await child.ask("publish", count=args.paced, interval=0.01, first=first)
    await drain(first, args.paced)
    cpu["paced"] = cpu_now() - mark
    lat, _ = latencies(paced, first)
    result["notify_paced"] = {
        "latency_ms": summary(lat),
        "received": len(lat),
        "sent": args.paced,
        "producer_ms": summary(paced["call_ns"], MS),
    }

    # busy: flat out, with a second phone reading in a loop
    first = PHASE_SEQ["busy"]
    mark = cpu_now()
    stop_reading = trio.Event()
    busy_reads: list[tuple[float, float]] = []  # (began, ended), CLOCK_MONOTONIC s

    async def read_loop() -> None:
        while not stop_reading.is_set():
            began = time.monotonic()
            await reader.read(UUID["control_targets"])
            busy_reads.append((began, time.monotonic()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_loop)
        busy = await child.ask("publish", count=args.burst, interval=0.0, first=first)
        await drain(first, args.burst)
        stop_reading.set()
    cpu["busy"] = cpu_now() - mark
    lat, received_at = latencies(busy, first)
    span = (received_at[-1] - busy["stamps"][0]) if received_at else 0.0
    result["busy"] = {
        "producer_ms": summary(busy["call_ns"], MS),
        "notify_latency_ms": summary(lat),
        "behind_newest": summary(behind_newest(busy["stamps"], first, phone_seen(first))),
        "received": len(lat),
        "sent": args.burst,
        "notifications_per_s": len(lat) / span if span > 0 else None,
        "reads_during_ms": summary([e - b for b, e in busy_reads], 1e3),
        **split_reads(busy_reads, busy["stamps"]),
    }

    # stalled: bluetoothd stops reading its socket
    first = PHASE_SEQ["stalled"]
    mark = cpu_now()
    bluez.stop_reading()
    try:
        stalled = await child.ask("publish", count=args.burst, interval=0.0, first=first)
    finally:
        bluez.resume_reading()
    await drain(first, args.burst)
    cpu["stalled"] = cpu_now() - mark
    lat, _ = latencies(stalled, first)
    result["stalled"] = {
        "producer_ms": summary(stalled["call_ns"], MS),
        "received_after_resume": len(lat),
        "sent": args.burst,
    }
    result["counters"] = (await child.ask("status"))["characteristics"].get(ENV)

    # stop with a subscribed phone, then start again and stop with bluetoothd stalled
    mark = cpu_now()
    result["stop_s"] = (await child.ask("stop"))["seconds"]
    cpu["stop"] = cpu_now() - mark
    await bluez.wait_until(lambda: not bluez.applications(), timeout=5)
    result["restart_s"] = (await child.ask("start"))["seconds"]
    await bluez.wait_for_application()
    bluez.stop_reading()
    try:
        result["stop_stalled_s"] = (await child.ask("stop"))["seconds"]
    finally:
        bluez.resume_reading()
    result["peak_rss_mib"] = procfs.peak_rss_mib(child.pid)
    result["cpu_s"] = cpu
    result["cpu_total_s"] = cpu_now()
    await child.stop()
    for central in (phone, reader):
        await central.disconnect()
    await bluez.wait_until(lambda: not bluez.adapter("hci0").centrals, timeout=5)
    return result


def behind_newest(stamps: Sequence[float], first: int, seen: dict[int, float]) -> list[float]:
    """For each value the phone received: how many newer values had been published by
    the time it arrived. 0 when the phone is shown the newest; a queue of stale snapshots
    draining at the pacing rate shows as its length."""
    out = []
    for seq, at in sorted(seen.items()):
        index = seq - first
        if not 0 <= index < len(stamps):
            continue
        newest = bisect.bisect_right(stamps, at) - 1
        out.append(float(max(0, newest - index)))
    return out


def split_reads(reads: Sequence[tuple[float, float]], stamps: Sequence[float]) -> dict[str, Any]:
    """The busy phase's reads (each one's start and end) split at the producer's
    publishing: those that overlap it and those begun after its last publish, while
    the queue drains.

    The busy phase lasts until the phone has the last value, so its length, and with
    it the share of reads that overlap the publishing, depends on the policy: a
    coalescing queue has the last value out within one pacing interval, a queue of
    stale values drains for hundreds of ms with the producer idle. All reads together
    are mostly the quiet ones after a burst under drop_oldest and mostly the ones
    during it under coalesce; each half alone compares like with like."""
    if not stamps:
        return {}
    first, last = stamps[0], stamps[-1]
    during = [(e - b) * 1e3 for b, e in reads if b <= last and e >= first]
    after = [(e - b) * 1e3 for b, e in reads if b > last]
    return {
        "publishing_ms": (last - first) * 1e3,
        "reads_while_publishing_ms": summary(during),
        "reads_after_publishing_ms": summary(after),
    }


def acceptance(result: dict[str, Any]) -> dict[str, bool]:
    reads = result["reads_ms"].values()
    worst_producer = max(
        result["busy"]["producer_ms"]["max"], result["stalled"]["producer_ms"]["max"]
    )
    return {
        "reads_p50_le_100ms": all(r["p50"] <= READ_P50_LIMIT_MS for r in reads),
        "reads_p95_le_500ms": all(r["p95"] <= READ_P95_LIMIT_MS for r in reads),
        "shutdown_lt_2s": max(result["stop_s"], result["stop_stalled_s"]) < SHUTDOWN_LIMIT_S,
        "no_producer_stall": worst_producer < STALL_LIMIT_MS,
    }


def print_table(results: dict[str, dict[str, Any]], policy: str | None = None) -> None:
    f = fmt
    names = list(results)
    width = 16

    def row(label: str, cells: Sequence[str], ratio: str = "") -> None:
        print(f"{label:<38}" + "".join(f"{c:>{width}}" for c in cells) + f"{ratio:>10}")

    def value_row(label: str, get: Any, digits: int = 2) -> None:
        values = [get(results[n]) for n in names]
        r = ratio(values[1], values[0]) if len(values) == 2 else None
        row(label, [f(v, digits) for v in values], f(r, 2) + "x" if r is not None else "-")

    print()
    row("", names, "B/A")
    print("-" * (38 + width * len(names) + 10))
    value_row("initialise, imports included (s)", lambda r: r["init_s"], 3)
    value_row("start (s)", lambda r: r["start_s"], 3)
    for name in READABLE:
        for q in ("p50", "p95", "p99"):
            value_row(f"read {name} {q} (ms)", lambda r, n=name, q=q: r["reads_ms"][n][q])
    for q in ("p50", "p95", "p99", "max"):
        value_row(
            f"notify latency paced {q} (ms)", lambda r, q=q: r["notify_paced"]["latency_ms"][q]
        )
    for phase in ("busy", "stalled"):
        for q in ("p50", "p99", "max"):
            value_row(
                f"producer call {phase} {q} (ms)", lambda r, p=phase, q=q: r[p]["producer_ms"][q], 3
            )
    value_row("notify latency busy p50 (ms)", lambda r: r["busy"]["notify_latency_ms"]["p50"])
    value_row("notify latency busy p99 (ms)", lambda r: r["busy"]["notify_latency_ms"]["p99"])
    value_row(
        "age of the shown value busy p50 (ms)", lambda r: r["busy"]["notify_latency_ms"]["p50"]
    )
    value_row(
        "shown value, newer ones published busy p50", lambda r: r["busy"]["behind_newest"]["p50"], 0
    )
    value_row(
        "shown value, newer ones published busy p99", lambda r: r["busy"]["behind_newest"]["p99"], 0
    )
    value_row("notifications/s (busy)", lambda r: r["busy"]["notifications_per_s"], 0)
    value_row("received/sent busy", lambda r: r["busy"]["received"] / r["busy"]["sent"])
    value_row("read during busy p50 (ms)", lambda r: r["busy"]["reads_during_ms"]["p50"])
    value_row("read during busy p99 (ms)", lambda r: r["busy"]["reads_during_ms"]["p99"])
    value_row("producer publishing, busy (ms)", lambda r: r["busy"].get("publishing_ms"), 1)
    for when in ("while", "after"):
        for q in ("p50", "p99"):
            value_row(
                f"read {when} publishing busy {q} (ms)",
                lambda r, w=when, q=q: r["busy"].get(f"reads_{w}_publishing_ms", {}).get(q),
            )
        value_row(
            f"reads {when} publishing busy (count)",
            lambda r, w=when: r["busy"].get(f"reads_{w}_publishing_ms", {}).get("n"),
            0,
        )
    value_row("stop (s)", lambda r: r["stop_s"], 3)
    value_row("stop, bluetoothd stalled (s)", lambda r: r["stop_stalled_s"], 3)
    value_row("peak RSS (MiB)", lambda r: r["peak_rss_mib"], 1)
    value_row("CPU busy phase (s)", lambda r: r["cpu_s"]["busy"], 2)
    value_row(
        "CPU per notification busy (us)",
        lambda r: ratio(r["cpu_s"]["busy"] * 1e6, r["busy"]["received"]),
        0,
    )
    value_row("CPU total (s)", lambda r: r["cpu_total_s"], 2)
    print(
        "busy: bluez-dbus paces each characteristic's notifications (MUSHPI_BLE_NOTIFY_"
        "INTERVAL_MS, default 5 ms) and thins a flat-out burst by its queue policy "
        f"({policy or 'each characteristic its own'}); bluezero hands bluetoothd every value;"
        " the notify latency is the age of what the phone is shown"
    )
    print()
    for name in names:
        checks = acceptance(results[name])
        verdict = ", ".join(f"{k}={'ok' if v else 'FAIL'}" for k, v in checks.items())
        print(f"acceptance {name}: {verdict}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from mushpi_ble.testing import private_bus
    from mushpi_ble.testing.fakebluez import FakeBluez

    runs: dict[str, list[dict[str, Any]]] = {backend: [] for backend in args.backends}
    with private_bus() as address:
        async with FakeBluez.serve(address) as bluez:
            for index in range(args.runs):
                for backend in args.backends:
                    print(
                        f"run {index + 1}/{args.runs}: {backend} ...", file=sys.stderr, flush=True
                    )
                    runs[backend].append(await bench_backend(backend, address, bluez, args))
    return runs


def median_of(runs: Sequence[Any]) -> Any:
    """Field by field: the median of numbers, the first of anything else."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: median_of([r[k] for r in runs if isinstance(r, dict) and k in r]) for k in first}
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first
    return median(runs)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reads", type=int, default=300, help="reads per characteristic")
    parser.add_argument("--paced", type=int, default=300, help="paced notifications (100/s)")
    parser.add_argument("--burst", type=int, default=3000, help="flat-out publishes per phase")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--runs", type=int, default=3, help="runs per backend (medians)")
    parser.add_argument("--quick", action="store_true", help="small counts, one run (smoke)")
    parser.add_argument("--json", type=Path, default=results.default_path(BENCHMARK))
    parser.add_argument(
        "--policy",
        choices=("drop_oldest", "drop_newest", "coalesce"),
        help="MUSHPI_BLE_BACKPRESSURE_POLICY for every queue (default: each "
        "characteristic's own, as shipped)",
    )
    args = parser.parse_args(argv)
    if args.policy:
        os.environ[POLICY_VARIABLE] = args.policy
    if args.quick:
        args.reads, args.paced, args.burst, args.runs = 30, 50, 300, 1
    return args


def ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Backend B over backend A for the headline figures."""
    return {
        "read_p50": {n: ratio(b["reads_ms"][n]["p50"], a["reads_ms"][n]["p50"]) for n in READABLE},
        "notify_paced_p50": ratio(
            b["notify_paced"]["latency_ms"]["p50"], a["notify_paced"]["latency_ms"]["p50"]
        ),
        "notifications_per_s": ratio(
            b["busy"]["notifications_per_s"], a["busy"]["notifications_per_s"]
        ),
        "producer_busy_p99": ratio(
            b["busy"]["producer_ms"]["p99"], a["busy"]["producer_ms"]["p99"]
        ),
        "peak_rss": ratio(b["peak_rss_mib"], a["peak_rss_mib"]),
        "cpu_total": ratio(b["cpu_total_s"], a["cpu_total_s"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import trio

    runs = trio.run(run, args)
    backends = {name: median_of(each) for name, each in runs.items()}
    if args.runs > 1:
        print(f"\nmedians of {args.runs} runs", end="")
    print_table(backends, args.policy)
    figures: dict[str, Any] = {
        "backends": backends,
        "runs": runs,
        "acceptance": {name: acceptance(r) for name, r in backends.items()},
    }
    if len(backends) == 2:
        figures["ratios_bluezero_over_bluez_dbus"] = ratios(*(backends[n] for n in BACKENDS))
    results.write_report(
        args.json,
        results.report(
            BENCHMARK,
            config={
                "reads": args.reads,
                "paced": args.paced,
                "burst": args.burst,
                "runs": args.runs,
                "backends": list(args.backends),
                "policy": args.policy,
            },
            results=figures,
            packages=["trio", "jeepney", "bluezero", "dbus-python", "PyGObject"],
        ),
    )
    print(f"\nJSON written to {args.json}")
    # the seed acceptance binds the new backend; the legacy one is measured against it
    return 0 if all(figures["acceptance"].get("bluez-dbus", {"-": True}).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
