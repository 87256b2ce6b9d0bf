"""``mushpi-ble bench``: the benchmark suite, with a peer library side by side.

Two parts, one report (``bench-results/suite.json`` unless ``--output``):

* the peripheral's own figures (:mod:`mushpi_ble.bench.peripheral`, run as a
  server in a child process so its CPU and RSS are its own): reads per
  characteristic, offer-to-central latency, sustained notifications, publish
  cost, start/stop, idle CPU, RSS;
* side by side, the same MushPi service served by this project and by each
  peer library (``bluez_peripheral``), each in its own server process
  (:mod:`mushpi_ble.bench.peer`), against the same fake bluetoothd on one
  private bus. The fake and the measuring central run here; the child's CPU
  and peak RSS (``/proc``) are its own. Both get the same reads (all readable
  characteristics, round robin) and the same burst of env notifications
  paced at the library's own back-pressure point; losses are counted from a
  sequence number carried in each packet.

A peer that is not installed or fails still gets its row, saying why.
Everything runs from the installed package; no source checkout is needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from mushpi_ble.bench import cli_start, hostile, notify_paths, procfs, results, wire
from mushpi_ble.bench.central import timed_reads
from mushpi_ble.bench.children import Child, ChildFailed
from mushpi_ble.bench.peer import MARK_TEMPERATURE, OURS, READABLE
from mushpi_ble.bench.stats import fmt, ratio, summary
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.bus import DBusDaemonMissing, private_bus
from mushpi_ble.testing.fakebluez import FakeBluez, FakeCentral

BENCHMARK = "suite"
PEERS = ("bluez_peripheral",)
INSTALL_HINTS = {"bluez_peripheral": "pip install 'mushpi-ble[bench]'"}
DISTRIBUTIONS = {"mushpi_ble": "mushpi-ble", "bluez_peripheral": "bluez-peripheral"}
MARK_TEMPERATURE_RAW = round(MARK_TEMPERATURE * 10)  # on the wire: tenths of a degree
CENTRAL_MTU = 512
STARTUP_TIMEOUT = 20.0
NOTIFY_TIMEOUT = 120.0
QUIET_S = 1.0
INCLUDE_TYPE = "00002802-0000-1000-8000-00805f9b34fb"  # GATT Include declaration
MIN_CPU_S = 0.05  # /proc CPU times tick every 10 ms: shorter deltas are noise
PERIPHERAL_TIMEOUT = 600.0
US = 1e6  # seconds to µs
PACKAGES = ("trio", "jeepney", "bluez-peripheral", "dbus-next", "dbus-fast")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_SETUP = 2


@attrs.frozen
class Counts:
    reads: int
    notifications: int
    batch: int = 64


FULL = Counts(reads=300, notifications=20_000)
QUICK = Counts(reads=25, notifications=500)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=None, metavar="PATH",
                        help="where to write the report (default: bench-results/NAME.json)")
    parser.add_argument("--json", action="store_true",
                        help="print the report as JSON on stdout instead of the tables")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--no-peer", action="store_true",
                        help="skip the peer libraries (their rows say so)")
    parser.add_argument("--hostile", action="store_true",
                        help="instead: bluetoothd's reads while other clients flood the "
                             "peripheral and the controller publishes flat out "
                             "(bench-results/hostile.json unless --output)")
    parser.add_argument("--cli-start", action="store_true",
                        help="instead: the management commands' cold start beside the "
                             "interpreter's (bench-results/cli-start.json unless --output)")
    parser.add_argument("--notify-paths", action="store_true",
                        help="instead: notify sockets against signals side by side, with a "
                             "phone ten times slower than the publisher "
                             "(bench-results/notify-paths.json unless --output)")


# ----------------------------------------------------------------------
# the peripheral's own benchmark (mushpi_ble.bench.peripheral, as a server)
# ----------------------------------------------------------------------
async def run_peripheral_bench(address: str, quick: bool) -> dict[str, Any]:
    """The peripheral benchmark's figures from its own process (or the error)."""
    try:
        async with Child(wire.server_argv("peripheral", "-", address)) as child:
            await child.ready(STARTUP_TIMEOUT)
            with trio.fail_after(PERIPHERAL_TIMEOUT):
                answer = await child.ask("run", quick=quick)
    except ChildFailed as exc:
        return {"status": exc.kind, "error": exc.error}
    except trio.TooSlowError:
        return {"status": "failed", "error": f"timed out after {PERIPHERAL_TIMEOUT:.0f} s"}
    figures: dict[str, Any] = answer["results"]
    return {"status": "ok", **figures}


# ----------------------------------------------------------------------
# side by side: one child process per library
# ----------------------------------------------------------------------
def skipped(library: str, status: str, error: str) -> dict[str, Any]:
    return {"library": library, "status": status, "error": error,
            "version": results.package_version(DISTRIBUTIONS.get(library, library))}


def decode_seq(value: bytes) -> int | None:
    """The sequence number of a benchmark env packet, None for any other packet."""
    if len(value) != 12:
        return None
    co2, temperature, _rh, light, _uptime = (
        int.from_bytes(value[0:2], "little"), int.from_bytes(value[2:4], "little", signed=True),
        int.from_bytes(value[4:6], "little"), int.from_bytes(value[6:8], "little"),
        int.from_bytes(value[8:12], "little"))
    if temperature != MARK_TEMPERATURE_RAW:
        return None
    return co2 | (light << 16)


async def measure_library(address: str, library: str, counts: Counts) -> dict[str, Any]:
    """Start ``library``'s server as a child, measure it, stop it."""
    if library != OURS and importlib.util.find_spec(library) is None:
        hint = INSTALL_HINTS.get(library, f"pip install {library}")
        return skipped(library, "not installed", f"not installed ({hint})")
    async with FakeBluez.serve(address) as bluez:
        try:
            async with Child(wire.server_argv("peer", library, address)) as child:
                return await drive(bluez, child, library, counts)
        except ChildFailed as exc:
            error = exc.error
            if exc.kind == "not installed":
                error += f" ({INSTALL_HINTS.get(library, f'pip install {library}')})"
            return skipped(library, exc.kind, error)
        except Exception as exc:
            return skipped(library, "failed", f"{type(exc).__name__}: {exc}")


async def drive(bluez: FakeBluez, child: Child, library: str,
                counts: Counts) -> dict[str, Any]:
    ready = await child.ready(STARTUP_TIMEOUT)
    pid = child.pid
    result: dict[str, Any] = {
        "library": library, "status": "ok", "error": None, "version": ready.get("version"),
        "dbus_library": ready.get("dbus_library", "jeepney (own I/O on trio)"),
        "registration_ms": ready.get("registration_ms"),
        "rss_after_start_mib": procfs.rss_mib(pid),
    }
    app = await bluez.wait_for_application(timeout=5.0)
    result["gatt_attributes"] = len(app.attributes)
    result["include_declarations"] = sum(1 for a in app.attributes if a.type == INCLUDE_TYPE)
    central = await bluez.connect_central(mtu=CENTRAL_MTU)
    await trio.sleep(0.1)

    # reads: every readable characteristic, round robin
    for name in READABLE:
        await central.read(CHARACTERISTIC_UUIDS[name])
    cpu0 = procfs.cpu_seconds(pid)
    per_char = await timed_reads(central, counts.reads, round_robin=True)
    cpu_reads = procfs.cpu_seconds(pid) - cpu0
    everything = [s for samples in per_char.values() for s in samples]
    result["read_us"] = summary(everything, US)
    result["read_us_by_characteristic"] = {n: summary(s, US) for n, s in per_char.items()}
    result["cpu_us_per_read"] = (cpu_reads * 1e6 / len(everything)
                                 if everything and cpu_reads >= MIN_CPU_S else math.nan)

    # env notifications: a paced burst, then an unpaced one (last: a library may drop off)
    uuid = CHARACTERISTIC_UUIDS["env_measurements"]
    await central.subscribe(uuid)
    await trio.sleep(0.2)
    result["value_pushed_on_subscribe"] = len(central.notifications(uuid)) > 0
    cpu0 = procfs.cpu_seconds(pid)
    result["notifications"] = await burst(central, child, counts.notifications, counts.batch)
    cpu_notify = procfs.cpu_seconds(pid) - cpu0
    received = result["notifications"]["received"]
    result["cpu_us_per_notification"] = (
        cpu_notify * 1e6 / received if received and cpu_notify >= MIN_CPU_S else math.nan)
    result["peak_rss_mib"] = procfs.peak_rss_mib(pid)
    result["unpaced"] = await burst(central, child, counts.notifications, 0)
    result["peak_rss_after_unpaced_mib"] = procfs.peak_rss_mib(pid)
    result["cpu_s_total"] = procfs.cpu_seconds(pid)
    adverts = [ad for ad in bluez.advertisements() if ad.sender == app.sender]
    result["advertisement"] = ("registered" if adverts else
                               f"not registered: {ready.get('advertising') or 'none'}")
    await central.disconnect()
    return result


async def burst(central: FakeCentral, child: Child, count: int, batch: int) -> dict[str, Any]:
    """Ask the server for ``count`` env notifications; count what the central receives."""
    uuid = CHARACTERISTIC_UUIDS["env_measurements"]
    base = len(central.notifications(uuid))
    t0 = time.monotonic()
    done: dict[str, Any]
    try:
        with trio.fail_after(NOTIFY_TIMEOUT):
            done = await child.ask("notify", count=count, batch=batch)
    except (ChildFailed, trio.TooSlowError) as exc:
        done = {"on_bus": False, "error": f"the server stopped answering ({exc})"}
    arrived = len(central.notifications(uuid))
    quiet_since = time.monotonic()
    while arrived - base < count and time.monotonic() - quiet_since < QUIET_S:
        await trio.sleep(0.02)
        now = len(central.notifications(uuid))
        if now != arrived:
            arrived, quiet_since = now, time.monotonic()
    packets = central.notifications(uuid)[base:]
    seqs = [s for p in packets if (s := decode_seq(p.value)) is not None]
    received = len(set(seqs))
    last = max((p.timestamp for p in packets), default=t0)
    elapsed = last - t0
    return {
        "requested": count, "batch": batch, "emitted": done.get("emitted"),
        "received": received, "lost": count - received,
        "loss_percent": 100.0 * (count - received) / count if count else math.nan,
        "per_s": received / elapsed if elapsed > 0 else math.nan,
        "emit_s": done.get("elapsed_s"), "receive_s": elapsed,
        "on_bus": done.get("on_bus"), "error": done.get("error"),
        "sent": done.get("sent"), "dropped": done.get("dropped"),
        "duplicates": len(seqs) - received, "other_packets": len(packets) - len(seqs),
    }


async def measure_all(address: str, libraries: Sequence[str], counts: Counts,
                      quick: bool) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The peripheral's figures, then each library's row, one process at a time."""
    peripheral = await run_peripheral_bench(address, quick)
    rows = {library: await measure_library(address, library, counts) for library in libraries}
    return peripheral, rows


RATIO_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("read_p50", ("read_us", "p50")),
    ("read_p95", ("read_us", "p95")),
    ("read_p99", ("read_us", "p99")),
    ("notifications_per_s", ("notifications", "per_s")),
    ("cpu_us_per_read", ("cpu_us_per_read",)),
    ("cpu_us_per_notification", ("cpu_us_per_notification",)),
    ("peak_rss_mib", ("peak_rss_mib",)),
)


def dig(data: Mapping[str, Any], path: Sequence[str]) -> float | None:
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def ratios(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Peer ÷ mushpi_ble for each figure (latency, CPU, RSS: > 1 means the peer costs more;
    notifications/s: > 1 means the peer is faster)."""
    ours = rows.get(OURS, {})
    out: dict[str, dict[str, float | None]] = {}
    for library, row in rows.items():
        if library == OURS or row.get("status") != "ok" or ours.get("status") != "ok":
            continue
        out[library] = {key: ratio(dig(row, path), dig(ours, path)) for key, path in RATIO_KEYS}
    return out


# ----------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------
SHORT_NAMES = {"env_measurements": "env", "control_targets": "targets", "stage_state": "stage",
               "status_flags": "status", "actuator_status": "actuator",
               "stage_thresholds": "thresholds"}
HEADER = (f"{'':16} {'version':>7} {'reg ms':>6} {'read µs':>7} {'p95':>6} {'p99':>6} "
          f"{'notif/s':>7} {'loss %':>6} {'CPU µs':>6} {'/notif':>6} {'RSS MiB':>7}  unpaced burst")


def library_row(row: Mapping[str, Any]) -> str:
    name = str(row["library"])
    status = str(row.get("status"))
    if status != "ok":
        error = str(row.get("error") or "")
        return f"{name}: {error if error.startswith(status) else f'{status}: {error}'}"
    reads, paced, unpaced = row["read_us"], row["notifications"], row["unpaced"]
    survived = "on bus" if unpaced.get("on_bus") else "OFF THE BUS"
    return (f"{name:16} {row.get('version') or '-':>7} {fmt(row.get('registration_ms'), 1):>6} "
            f"{fmt(reads['p50']):>7} {fmt(reads['p95']):>6} {fmt(reads['p99']):>6} "
            f"{fmt(paced['per_s']):>7} {fmt(paced['loss_percent'], 1):>6} "
            f"{fmt(row.get('cpu_us_per_read')):>6} {fmt(row.get('cpu_us_per_notification')):>6} "
            f"{fmt(row.get('peak_rss_mib'), 1):>7}  "
            f"{unpaced['received']}/{unpaced['requested']} recv, {survived}")


def ratio_row(label: str, r: Mapping[str, float | None]) -> str:
    def x(key: str, width: int) -> str:
        value = r.get(key)
        return f"{'-' if value is None else f'{value:.2f}x':>{width}}"

    return (f"{label[:16]:16} {'':>7} {'':>6} {x('read_p50', 7)} {x('read_p95', 6)} "
            f"{x('read_p99', 6)} {x('notifications_per_s', 7)} {'':>6} "
            f"{x('cpu_us_per_read', 6)} {x('cpu_us_per_notification', 6)} "
            f"{x('peak_rss_mib', 7)}")


def notes_for(row: Mapping[str, Any]) -> list[str]:
    if row.get("status") != "ok":
        return []
    notes: list[str] = []
    if row.get("advertisement") != "registered":
        notes.append(f"advertisement {row.get('advertisement')}")
    if row.get("include_declarations"):
        notes.append(f"GATT database has {row['include_declarations']} Include declaration(s) "
                     "the protocol does not have")
    if not row.get("value_pushed_on_subscribe"):
        notes.append("no value pushed on subscribe")
    for key in ("notifications", "unpaced"):
        burst_result = row[key]
        if burst_result.get("error"):
            notes.append(f"{'paced' if key == 'notifications' else 'unpaced'} burst: "
                         f"{burst_result['error']}")
    return notes


def peripheral_lines(p: Mapping[str, Any]) -> list[str]:
    if p.get("status") != "ok":
        return [f"  peripheral: {p.get('status')}: {p.get('error')}"]
    reads = p["read_us"]
    lines = ["  read µs p50/p99: " + ", ".join(
        f"{SHORT_NAMES.get(name, name)} {fmt(s['p50'])}/{fmt(s['p99'])}"
        for name, s in reads.items())]
    n, s = p["notify_latency_us"], p["sustained"]
    lines.append(f"  offer→central p50 {fmt(n['p50'])} µs, p99 {fmt(n['p99'])} µs; sustained "
                 f"{fmt(s['notifications_per_s'])}/s (offered {s['offered']}, "
                 f"dropped {s['dropped']})")
    lines.append(f"  publish p99 {fmt(p['publish_saturated_us']['p99'], 2)} µs saturated, "
                 f"{fmt(p['publish_stalled_us']['p99'], 2)} µs stalled; start→registered "
                 f"{fmt(p['start_to_registered_ms'], 1)} ms; stop {fmt(p['stop_ms'], 1)} ms")
    lines.append(f"  idle CPU {fmt(p['idle_cpu_percent'], 3)} %; peak RSS "
                 f"{fmt(p['peak_rss_mib'], 1)} MiB (with the in-process fake)")
    targets = p.get("targets") or {}
    missed = [label for label, ok in targets.items() if not ok]
    if targets:
        lines.append("  targets: " + ("all met" if not missed else "missed: " + "; ".join(missed)))
    return lines


def render(report: Mapping[str, Any]) -> str:
    counts = report["config"]["counts"]
    env = report["environment"]
    figures = report["results"]
    out = [f"mushpi-ble bench{' --quick' if report['config'].get('quick') else ''}: "
           f"Python {env['python']}, {env['cpus']} CPUs",
           "",
           "peripheral (its own process, with the fake bluetoothd in it)"]
    out.extend(peripheral_lines(figures["peripheral"]))
    out.append("")
    out.append(f"side by side (own process each, same fake bluetoothd): {counts['reads']}×"
               f"{len(READABLE)} reads; {counts['notifications']} notifications paced every "
               f"{counts['batch']}, then unpaced")
    out.append(HEADER)
    rows = figures["side_by_side"]
    for row in rows.values():
        out.append(library_row(row))
    ratio_rows = figures["ratios"]
    for library, r in ratio_rows.items():
        out.append(ratio_row("ratio" if len(ratio_rows) == 1 else f"÷ {library}", r))
    for library, row in rows.items():
        out.extend(f"  {library}: {note}" for note in notes_for(row))
    out.append("  read µs over all readable characteristics; CPU µs per read / notification "
               "and peak RSS of the server process; ratio = peer ÷ mushpi_ble")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "hostile", False):
        return hostile.run(args)
    if getattr(args, "notify_paths", False):
        return notify_paths.run(args)
    if getattr(args, "cli_start", False):
        return cli_start.run(args)
    counts = QUICK if args.quick else FULL
    libraries = (OURS,) if args.no_peer else (OURS, *PEERS)
    try:
        with private_bus() as address:
            peripheral, rows = trio.run(measure_all, address, libraries, counts, args.quick)
    except DBusDaemonMissing as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_SETUP
    if args.no_peer:
        for peer in PEERS:
            rows[peer] = skipped(peer, "skipped", "skipped (--no-peer)")
    report = results.report(
        BENCHMARK, config={"quick": bool(args.quick), "counts": attrs.asdict(counts)},
        results={"peripheral": peripheral, "side_by_side": rows, "ratios": ratios(rows)},
        packages=PACKAGES)
    results.publish(report, render(report), output=args.output, as_json=args.json)
    ok = peripheral.get("status") == "ok" and rows[OURS].get("status") == "ok"
    return EXIT_OK if ok else EXIT_FAILED
