"""Per-process CPU time and memory from ``/proc`` (Linux only).

The parent reads a child server's figures here, so each server's CPU and
peak RSS are its own. No trio or D-Bus imports.
"""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 2**20


def cpu_seconds(pid: int | None = None) -> float:
    """utime + stime of a process (all its threads; this one when ``pid`` is None);
    NaN when it is gone. Resolution is one clock tick (usually 10 ms): measure long
    enough."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


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


def peak_rss_mib(pid: int | None = None) -> float:
    """Peak resident set size (VmHWM) of a live process in MiB (this one when ``pid``
    is None); NaN when it is gone."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kib = status_kib(pid, "VmHWM")
    return math.nan if kib is None else kib * 1024 / MIB


def rss_mib(pid: int) -> float:
    """Current resident set size (VmRSS) of a live process in MiB; NaN when it is gone."""
    kib = status_kib(pid, "VmRSS")
    return math.nan if kib is None else kib * 1024 / MIB
