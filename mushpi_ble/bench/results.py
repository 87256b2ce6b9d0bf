"""The one result schema: every benchmark writes the same JSON envelope.

``{"schema", "benchmark", "environment", "config", "results"}``: the first
two say what the file is, ``environment`` where the numbers came from,
``config`` the counts that were asked for and ``results`` the figures (latency
summaries in the shape of :func:`mushpi_ble.bench.stats.summary`). Files go
under ``bench-results/`` unless a path is given. NaN and infinities become
null, so the files are strict JSON.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from mushpi_ble.files import write_atomically

SCHEMA = "mushpi-ble-bench/1"
REPORT_KEYS = ("schema", "benchmark", "environment", "config", "results")
RESULTS_DIR = Path("bench-results")


def default_path(benchmark: str) -> Path:
    """Where ``benchmark`` writes its report unless told otherwise (relative to the
    working directory, so it works from an installed wheel too)."""
    return RESULTS_DIR / f"{benchmark}.json"


def package_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment(packages: Sequence[str] = ()) -> dict[str, Any]:
    """Where the numbers came from: interpreter, machine, package versions."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "packages": {name: package_version(name) for name in ("mushpi-ble", *packages)},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def report(benchmark: str, *, config: Mapping[str, Any], results: Mapping[str, Any],
           packages: Sequence[str] = (), **environment_extra: Any) -> dict[str, Any]:
    """A report in the schema; ``packages`` are the distributions whose versions matter."""
    return {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "environment": {**environment(packages), **environment_extra},
        "config": dict(config),
        "results": dict(results),
    }


def check_report(data: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``data`` is a report in this schema."""
    missing = [key for key in REPORT_KEYS if key not in data]
    if missing or data.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} report (missing {missing}, schema "
                         f"{data.get('schema')!r})")


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf as None and every mapping key a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def write_report(path: Path, data: Mapping[str, Any]) -> None:
    """Write a checked report as indented JSON, atomically."""
    check_report(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(jsonable(data), indent=2) + "\n")


def publish(report: Mapping[str, Any], rendered: str, *, output: Path | None,
            as_json: bool) -> Path:
    """Show a report and keep it: the tables (or, with ``--json``, the report itself as
    JSON on stdout, nothing else there), and the file at ``output`` (default: the
    benchmark's own path), whose name goes to stderr when stdout carries JSON."""
    path = output if output is not None else default_path(str(report["benchmark"]))
    if as_json:
        print(json.dumps(jsonable(report), indent=2))
    else:
        print(rendered)
    write_report(path, report)
    print(f"wrote {path}", file=sys.stderr if as_json else sys.stdout)
    return path
