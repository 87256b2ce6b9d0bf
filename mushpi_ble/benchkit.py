"""Helpers shared by the benchmark scripts and ``mushpi-ble bench``.

Percentiles and medians, per-process CPU time and peak memory read from
``/proc`` (Linux only), child-process hygiene and JSON output. Nothing here
imports trio or any D-Bus library, so a server process can import it
without its memory figures growing.
"""

import contextlib
import ctypes
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


# ----------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------
def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (0-100) with linear interpolation; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * min(max(pct, 0.0), 100.0) / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    frac = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * frac)


def latency_summary_us(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p95/p99/mean/min/max in microseconds from nanosecond samples."""
    if not samples_ns:
        return {k: math.nan for k in ("p50", "p95", "p99", "mean", "min", "max")}
    us = sorted(s / 1000.0 for s in samples_ns)
    return {
        "p50": percentile(us, 50),
        "p95": percentile(us, 95),
        "p99": percentile(us, 99),
        "mean": sum(us) / len(us),
        "min": us[0],
        "max": us[-1],
    }


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are present and finite; None if there are none."""
    present = sorted(
        float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))
    )
    if not present:
        return None
    mid = len(present) // 2
    if len(present) % 2:
        return present[mid]
    return (present[mid - 1] + present[mid]) / 2.0


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


# ----------------------------------------------------------------------
# /proc readings
# ----------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from ``/proc/<pid>/stat``; NaN
    when it is gone. Resolution is one clock tick (usually 10 ms): measure long enough.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int | None:
    """A ``key: N kB`` line of ``/proc/<pid>/status`` (None when the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def peak_rss_bytes(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a live process, in bytes."""
    kib = status_kib(pid, "VmHWM")
    return None if kib is None else kib * 1024


def rss_bytes(pid: int) -> int | None:
    """Current resident set size (VmRSS) of a live process, in bytes."""
    kib = status_kib(pid, "VmRSS")
    return None if kib is None else kib * 1024


# ----------------------------------------------------------------------
# child processes
# ----------------------------------------------------------------------
def die_with_parent() -> None:
    """``preexec_fn`` for children: receive SIGTERM if the parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(proc: "subprocess.Popen[Any]", grace: float = 5.0) -> int | None:
    """SIGINT (lets a server finish a profile), then SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 2.0)):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    return proc.returncode


# ----------------------------------------------------------------------
# environment and output
# ----------------------------------------------------------------------
def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
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
        "packages": {name: package_version(name) for name in packages},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON atomically (NaN/inf become null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_jsonable(data), handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fmt(value: float | None, digits: int = 0) -> str:
    """A table cell: fixed digits, or '-' when there is no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"
