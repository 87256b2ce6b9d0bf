"""``mushpi-ble bench --cli-start``: how long the management commands take to start.

A grower types ``mushpi-ble pair`` on a Pi Zero: each command here is run as a
whole process several times (``--help``, so no bus is needed), beside
``python -c pass`` (the interpreter alone) and ``import trio`` (what the
commands avoid): the figure that matters is each command's time above the
interpreter's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import results, stats

BENCHMARK = "cli-start"
COMMANDS: dict[str, Sequence[str]] = {
    "python -c pass": ("-c", "pass"),
    "python -c 'import trio'": ("-c", "import trio"),
    **{f"mushpi-ble {name} --help": ("-m", "mushpi_ble", name, "--help")
       for name in ("pair", "bonds", "status", "config")},
}
RUNS, QUICK_RUNS = 15, 3


def time_command(argv: Sequence[str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` cold starts of ``python argv``."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, *argv], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def measure(runs: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, argv in COMMANDS.items():
        times = time_command(argv, runs)
        middle = stats.median(times)
        assert middle is not None  # runs >= 1 timings, all present
        rows[name] = {"runs": runs, "min_ms": min(times) * 1000, "median_ms": middle * 1000}
    floor = rows["python -c pass"]["median_ms"]
    for row in rows.values():
        row["above_python_ms"] = row["median_ms"] - floor
    return rows


def render(rows: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [f"{'command':32} {'min ms':>8} {'median ms':>10} {'above python':>13}"]
    for name, row in rows.items():
        lines.append(f"{name:32} {row['min_ms']:8.1f} {row['median_ms']:10.1f} "
                     f"{row['above_python_ms']:13.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    runs = QUICK_RUNS if args.quick else RUNS
    rows = measure(runs)
    report = results.report(BENCHMARK, config={"quick": bool(args.quick), "runs": runs},
                            results={"commands": rows}, packages=("trio", "jeepney"))
    results.publish(report, render(rows), output=args.output, as_json=args.json)
    return 0
