"""The D-Bus benchmark's measurements of one server: round trips with the CPU they
cost the server and dbus-daemon, and notification bursts counted by sequence number."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mushpi_ble.bench import procfs, wire
from mushpi_ble.bench.children import BlockingChild
from mushpi_ble.bench.dbus_objects import (
    BENCH_IFACE,
    BENCH_PATH,
    CHAR_IFACE,
    CHAR_PATH,
    FLOOR_OF,
    PACE_EVERY,
    PROPERTIES,
    READ_OPTIONS,
    VALUE_LEN,
)
from mushpi_ble.bench.raw_client import BusClient
from mushpi_ble.bench.raw_message import SEQ, U32, RawMessage
from mushpi_ble.bench.stats import summary

STARTUP_TIMEOUT = 20.0
NS_TO_US = 1e-3


class Probe:
    """CPU seconds of the server and of the bus daemon around one phase."""

    def __init__(self, server_pid: int, daemon_pid: int | None) -> None:
        self.server_pid = server_pid
        self.daemon_pid = daemon_pid
        self.server0 = procfs.cpu_seconds(server_pid)
        self.daemon0 = procfs.cpu_seconds(daemon_pid) if daemon_pid else math.nan

    def per_op_us(self, ops: int) -> tuple[float, float]:
        server = procfs.cpu_seconds(self.server_pid) - self.server0
        daemon = (procfs.cpu_seconds(self.daemon_pid) - self.daemon0
                  if self.daemon_pid else math.nan)
        ops = max(ops, 1)
        return server * 1e6 / ops, daemon * 1e6 / ops


def check_read_value(reply: RawMessage) -> None:
    body = reply.data[reply.body_start :]
    if len(body) != 4 + VALUE_LEN or U32[reply.data[0]].unpack_from(body, 0)[0] != VALUE_LEN:
        raise RuntimeError(f"unexpected ReadValue reply body {body!r}")


def measure_round_trips(client: BusClient, template: bytearray, warmup: int, calls: int,
                        probe_pids: tuple[int, int | None] | None,
                        check: Callable[[RawMessage], None] | None) -> dict[str, Any]:
    client.round_trips(template, warmup, check)
    probe = Probe(*probe_pids) if probe_pids else None
    samples = client.round_trips(template, calls, check)
    result: dict[str, Any] = {"calls": calls, **summary(samples, NS_TO_US)}
    if probe is not None:
        result["server_cpu_us_per_call"], result["daemon_cpu_us_per_call"] = (
            probe.per_op_us(calls))
    return result


def measure_burst(client: BusClient, server: BlockingChild, daemon_pid: int | None,
                  count: int, pace_every: int, burst_template: bytearray,
                  start_timeout: float, idle_timeout: float) -> dict[str, Any]:
    probe = Probe(server.pid, daemon_pid)
    SEQ.pack_into(burst_template, len(burst_template) - 8, count)
    SEQ.pack_into(burst_template, len(burst_template) - 4, pace_every)
    start = time.perf_counter_ns()
    serial = client.send_template(burst_template)
    burst = client.receive_burst(serial, count, start_timeout=start_timeout,
                                 idle_timeout=idle_timeout)
    cpu_server, cpu_daemon = probe.per_op_us(burst.received)
    elapsed = (burst.last_ns - start) / 1e9 if burst.last_ns is not None else math.nan
    rate = burst.received / elapsed if burst.received and elapsed > 0 else 0.0
    events = server.poll_events(0.05)
    connected = bool(client.call_bus("NameHasOwner", "s", (server.ready_event["name"],)))
    survived = connected and server.alive()
    return {
        "signals": count,
        "pace_every": pace_every,
        "received": burst.received,
        "lost": count - burst.received,
        "duplicates": burst.duplicates,
        "gaps": burst.gaps,
        "burst_call_answered": burst.acked,
        "notif_per_s": rate,
        "first_notif_ms": ((burst.first_ns - start) / 1e6
                           if burst.first_ns is not None else None),
        "elapsed_s": elapsed,
        "server_cpu_us_per_notif": cpu_server if burst.received else None,
        "daemon_cpu_us_per_notif": cpu_daemon if burst.received else None,
        "survived": survived,
        "connection_dropped": not connected,
        "server_events": events,
        "peak_rss_mib": procfs.peak_rss_mib(server.pid),
    }


def bench_server(kind: str, address: str, client: BusClient, daemon_pid: int | None,
                 args: argparse.Namespace, profile: Path | None) -> dict[str, Any]:
    extra = ("--profile", str(profile)) if profile is not None else ()
    with BlockingChild(wire.server_argv("dbus", kind, address, *extra)) as server:
        name = str(server.ready(STARTUP_TIMEOUT)["name"])
        result: dict[str, Any] = {"server": kind, "pid": server.pid}
        read = client.template(name, CHAR_PATH, CHAR_IFACE, "ReadValue", "a{sv}",
                               (READ_OPTIONS,))
        result["rt"] = measure_round_trips(client, read, args.warmup, args.calls,
                                           (server.pid, daemon_pid), check_read_value)
        result["rss_after_rt_mib"] = procfs.peak_rss_mib(server.pid)
        if kind not in FLOOR_OF:  # a floor server only answers ReadValue
            return result

        rule = (f"type='signal',sender='{name}',path='{CHAR_PATH}',"
                f"interface='{PROPERTIES}',member='PropertiesChanged'")
        client.call_bus("AddMatch", "s", (rule,))
        burst = client.template(name, BENCH_PATH, BENCH_IFACE, "Burst", "uu", (0, 0))
        timeouts = {"start_timeout": args.start_timeout, "idle_timeout": args.idle_timeout}
        if kind == "ours":
            measure_burst(client, server, daemon_pid, args.warmup_signals, 0, burst, **timeouts)
            result["notify"] = measure_burst(client, server, daemon_pid, args.signals, 0,
                                             burst, **timeouts)
        else:
            measure_burst(client, server, daemon_pid, args.warmup_signals, PACE_EVERY, burst,
                          **timeouts)
            result["notify_paced"] = measure_burst(client, server, daemon_pid, args.signals,
                                                   PACE_EVERY, burst, **timeouts)
            # Last: an unpaced burst may knock dbus-fast off the bus.
            result["notify"] = measure_burst(client, server, daemon_pid, args.signals, 0,
                                             burst, **timeouts)
        if result["notify"]["survived"]:
            stats = client.call(name, BENCH_PATH, BENCH_IFACE, "Stats")
            result["server_stats"] = json.loads(stats[0])
        with contextlib.suppress(RuntimeError):
            client.call_bus("RemoveMatch", "s", (rule,))
        result["peak_rss_mib"] = procfs.peak_rss_mib(server.pid)
        result["events"] = list(server.events)
        return result

