"""``mushpi-ble bench --hostile``: bluetoothd's reads while others misbehave.

The peripheral (server ``peer mushpi_ble:defaults``: its own process, every
setting at its default) serves the
fake bluetoothd, which runs here with a measuring central. For each
situation the central reads env_measurements back to back, from the moment
the trouble starts until the peripheral has caught up with it (the flooder
pings it from a second connection) and a little after, and the report gives
those reads' latency (stats.summary) and the peripheral's RSS before and
after:

* ``quiet``: nothing else happens (the baseline);
* ``pipeline``: another client pipelines calls and never reads the replies;
* ``huge``: another client sends multi-megabyte calls;
* ``signals``: another client sends unicast junk signals;
* ``storm``: the controller publishes flat out from four threads while the
  central is subscribed;

then the three floods once more, to tell memory a flood leaves behind (it
grows again) from the allocator's high-water mark (it does not).

Each flooder is a server of kind ``flood`` (:mod:`mushpi_ble.bench.flood`)
in its own process.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from mushpi_ble.bench import procfs, results, wire
from mushpi_ble.bench.children import Child, ChildFailed
from mushpi_ble.bench.peer import OURS_AS_SHIPPED
from mushpi_ble.bench.stats import fmt, summary
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.bus import DBusDaemonMissing, private_bus
from mushpi_ble.testing.fakebluez import AttError, FakeBluez, FakeCentral

BENCHMARK = "hostile"
ENV = CHARACTERISTIC_UUIDS["env_measurements"]
STARTUP_TIMEOUT = 20.0
SITUATION_TIMEOUT = 300.0
US = 1e6
MIB = 1 << 20


@attrs.frozen
class Counts:
    pipeline_calls: int = 10_000
    huge_calls: int = 12
    huge_bytes: int = 5 * MIB
    junk_signals: int = 30_000
    junk_bytes: int = 1200
    storm_threads: int = 4
    storm_seconds: float = 3.0
    quiet_reads: int = 300
    tail_s: float = 0.3  # reads go on this long after the peripheral caught up
    settle_s: float = 1.0  # before RSS is taken again


FULL = Counts()
QUICK = Counts(pipeline_calls=1000, huge_calls=2, huge_bytes=1 * MIB, junk_signals=2000,
               storm_seconds=0.5, quiet_reads=30, tail_s=0.1, settle_s=0.2)
SITUATIONS = ("quiet", "pipeline", "huge", "signals", "storm")
REPEATED = ("pipeline", "huge", "signals")
"""Run a second time at the end: RSS that grew in the first run and not in the second
is the allocator's high-water mark, not memory the flood left behind."""
AGAIN = " again"
LABELS = {
    "quiet": "nothing else happens",
    "pipeline": "{pipeline_calls:,} pipelined calls, replies never read",
    "huge": "{huge_calls} calls of {huge_mib} MiB",
    "signals": "{junk_signals:,} unicast junk signals",
    "storm": "controller publishes from {storm_threads} threads",
}


async def reads_until(central: FakeCentral, done: trio.Event, tail_s: float, failed: list[float],
                      minimum: int = 0) -> list[float]:
    """Back-to-back env reads until ``done`` is set and ``tail_s`` more seconds pass
    (and at least ``minimum`` reads); each answered read's seconds (the seconds of
    reads answered with an error go to ``failed``)."""
    samples: list[float] = []
    stop_at: float | None = None
    while True:
        if done.is_set() and stop_at is None:
            stop_at = time.monotonic() + tail_s
        if stop_at is not None and time.monotonic() >= stop_at and len(samples) >= minimum:
            return samples
        t0 = time.perf_counter()
        try:
            await central.read(ENV)
        except AttError:
            failed.append(time.perf_counter() - t0)
            continue
        samples.append(time.perf_counter() - t0)


async def situation(name: str, address: str, central: FakeCentral, peripheral: Child,
                    destination: str, path: str, counts: Counts) -> dict[str, Any]:
    """Measure reads while ``name`` happens; RSS before and after."""
    pid = peripheral.pid
    out: dict[str, Any] = {"rss_before_mib": procfs.rss_mib(pid)}
    done = trio.Event()
    answer: dict[str, Any] = {}
    failed: list[float] = []
    cpu0 = procfs.cpu_seconds(pid)
    t0 = time.monotonic()

    async def trouble() -> None:
        try:
            answer.update(await make_trouble(name, address, peripheral, destination, path,
                                             counts))
        except ChildFailed as exc:
            answer["error"] = f"{exc.kind}: {exc.error}"
        finally:
            done.set()

    with trio.fail_after(SITUATION_TIMEOUT):
        async with trio.open_nursery() as nursery:
            if name == "quiet":
                done.set()
            else:
                nursery.start_soon(trouble)
            samples = await reads_until(central, done, counts.tail_s, failed,
                                        counts.quiet_reads if name == "quiet" else 0)
    out["seconds"] = time.monotonic() - t0
    out["cpu_s"] = procfs.cpu_seconds(pid) - cpu0
    out["read_us"] = summary(samples, US)
    out["reads_failed"] = len(failed)
    out["trouble"] = answer
    await trio.sleep(counts.settle_s)
    out["rss_after_mib"] = procfs.rss_mib(pid)
    out["peak_rss_mib"] = procfs.peak_rss_mib(pid)
    return out


async def make_trouble(name: str, address: str, peripheral: Child, destination: str,
                       path: str, counts: Counts) -> dict[str, Any]:
    if name == "storm":
        answer = await peripheral.ask("storm", threads=counts.storm_threads,
                                      seconds=counts.storm_seconds)
        return {k: v for k, v in answer.items() if k != "event"}
    count, size = {
        "pipeline": (counts.pipeline_calls, 0),
        "huge": (counts.huge_calls, counts.huge_bytes),
        "signals": (counts.junk_signals, counts.junk_bytes),
    }[name]
    async with Child(wire.server_argv("flood", name, address)) as flooder:
        await flooder.ready(STARTUP_TIMEOUT)
        answer = await flooder.ask("flood", destination=destination, path=path, count=count,
                                   size=size)
    return {k: v for k, v in answer.items() if k != "event"}


async def measure(address: str, counts: Counts) -> dict[str, Any]:
    async with FakeBluez.serve(address) as bluez:
        try:
            async with Child(wire.server_argv("peer", OURS_AS_SHIPPED, address)) as peripheral:
                await peripheral.ready(STARTUP_TIMEOUT)
                app = await bluez.wait_for_application(timeout=5.0)
                central = await bluez.connect_central(mtu=512)
                await trio.sleep(0.1)
                path = central.characteristic(ENV).path
                out: dict[str, Any] = {"status": "ok"}
                for name in SITUATIONS:
                    if name == "storm":
                        await central.subscribe(ENV)
                    out[name] = await situation(name, address, central, peripheral,
                                                app.sender, path, counts)
                for name in REPEATED:
                    out[name + AGAIN] = await situation(name, address, central, peripheral,
                                                        app.sender, path, counts)
                await central.disconnect()
                return out
        except ChildFailed as exc:
            return {"status": exc.kind, "error": exc.error}


HEADER = (f"{'situation':44} {'p50 µs':>8} {'p95':>8} {'p99':>8} {'max':>9} {'reads':>6} "
          f"{'RSS MiB before→after':>21}  drained s")


def row(name: str, figures: Mapping[str, Any], counts: Mapping[str, Any]) -> str:
    base = name.removesuffix(AGAIN)
    label = (f"  the same again ({base})" if base != name
             else LABELS[name].format(huge_mib=counts["huge_bytes"] // MIB, **counts))
    if "read_us" not in figures:
        return f"{label:44} {figures.get('error', 'not measured')}"
    r = figures["read_us"]
    trouble = figures.get("trouble") or {}
    drained = trouble.get("drained_s")
    note = fmt(drained, 2) if drained is not None else "-"
    if figures.get("reads_failed"):
        note += f" ({figures['reads_failed']} reads failed)"
    if trouble.get("error"):
        note += f" ({trouble['error']})"
    if trouble.get("errors"):
        note += " " + ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in trouble["errors"].items())
    rss = f"{fmt(figures['rss_before_mib'], 1)}→{fmt(figures['rss_after_mib'], 1)}"
    return (f"{label:44} {fmt(r['p50']):>8} {fmt(r['p95']):>8} {fmt(r['p99']):>8} "
            f"{fmt(r['max']):>9} {int(r['n']):>6} {rss:>21}  {note}")


def rss_growth(figures: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Per repeated flood: how much RSS grew across its first run and across its second."""
    def grew(f: Mapping[str, Any]) -> float:
        return float(f["rss_after_mib"]) - float(f["rss_before_mib"])

    return {name: (grew(figures[name]), grew(figures[name + AGAIN])) for name in REPEATED
            if "read_us" in figures.get(name, {}) and "read_us" in figures.get(name + AGAIN, {})}


def render(report: Mapping[str, Any]) -> str:
    env = report["environment"]
    figures = report["results"]
    counts = report["config"]["counts"]
    out = [f"mushpi-ble bench --hostile{' --quick' if report['config'].get('quick') else ''}: "
           f"Python {env['python']}, {env['cpus']} CPUs",
           "bluetoothd's env reads (fake bluetoothd, peripheral in its own process)", HEADER]
    if figures.get("status") != "ok":
        out.append(f"  {figures.get('status')}: {figures.get('error')}")
        return "\n".join(out)
    order = (*SITUATIONS, *(name + AGAIN for name in REPEATED))
    out.extend(row(name, figures[name], counts) for name in order if name in figures)
    growth = rss_growth(figures)
    if growth:
        out.append("  RSS growth, first run → second run of each flood (MiB): " + ", ".join(
            f"{name} {fmt(first, 1)} → {fmt(second, 1)}" for name, (first, second)
            in growth.items()))
    out.append("  reads from the start of the trouble until the peripheral answered the "
               "flooder's ping, plus a short tail; drained s = that ping's answer")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    counts = QUICK if args.quick else FULL
    try:
        with private_bus() as address:
            figures = trio.run(measure, address, counts)
    except DBusDaemonMissing as exc:
        print(str(exc), file=sys.stderr)
        return 2
    report = results.report(BENCHMARK, config={"quick": bool(args.quick),
                                               "counts": attrs.asdict(counts)},
                            results=figures, packages=("trio", "jeepney"))
    results.publish(report, render(report), output=args.output, as_json=args.json)
    return 0 if figures.get("status") == "ok" else 1
