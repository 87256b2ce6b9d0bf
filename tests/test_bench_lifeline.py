"""A benchmark server lives as long as the process that started it: not shorter (the
thread that spawned it may end first), not longer (it ends when that process dies)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
from trio._core import _thread_cache

from mushpi_ble.bench import lifeline
from mushpi_ble.bench.children import BlockingChild, Child

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# A child that watches its lifeline (as the server does) and prints a tick every
# 20 ms: two ticks read after an event prove it was still running after it. With
# "commands" it also reads stdin and quits as a server does.
TICKER = [sys.executable, "-c", textwrap.dedent("""
    import sys, threading, time
    from mushpi_ble.bench import lifeline, wire
    lifeline.watch()
    wire.emit("ready")

    def tick():
        while True:
            wire.emit("tick")
            time.sleep(0.02)

    if sys.argv[1:] == ["commands"]:
        threading.Thread(target=tick, daemon=True).start()
        wire.serve_commands({})
    else:
        tick()
""")]


def task_alive(thread: threading.Thread) -> bool:
    """Whether the kernel still runs ``thread`` (Thread.join returns a little earlier)."""
    return thread.is_alive() or Path(f"/proc/self/task/{thread.native_id}").exists()


def task_gone(thread: threading.Thread, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while task_alive(thread):
        assert time.monotonic() < deadline, f"{thread.name} did not end"
        time.sleep(0.01)


def ended(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_a_blocking_child_outlives_the_thread_that_started_it() -> None:
    started: list[BlockingChild] = []
    spawner = threading.Thread(target=lambda: started.append(BlockingChild(TICKER)))
    spawner.start()
    spawner.join()
    with started[0] as child:
        child.ready(30.0)
        task_gone(spawner)
        ticks = 0
        deadline = time.monotonic() + 10.0
        while ticks < 2 and time.monotonic() < deadline:
            ticks += sum(e.get("event") == "tick" for e in child.poll_events(0.5))
        assert ticks >= 2 and child.alive()


class RecordingPopen(subprocess.Popen[bytes]):
    """Popen that notes which thread started the child (trio picks a worker for it)."""

    threads: ClassVar[list[threading.Thread]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        RecordingPopen.threads.append(threading.current_thread())
        super().__init__(*args, **kwargs)


@pytest.fixture
def short_lived_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[threading.Thread]]:
    """trio's idle workers retire after 50 ms instead of 10 s; the spawning threads noted."""
    monkeypatch.setattr(_thread_cache, "IDLE_TIMEOUT", 0.05)
    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    RecordingPopen.threads = []
    yield RecordingPopen.threads


async def test_a_trio_child_outlives_the_worker_thread_that_started_it(
        short_lived_workers: list[threading.Thread]) -> None:
    async with Child([*TICKER, "commands"]) as child:
        await child.ready(30.0)
        (spawner,) = short_lived_workers
        assert spawner is not threading.current_thread()  # trio spawned it from a worker
        with trio.fail_after(10.0):
            while task_alive(spawner):  # not from a worker: trio might pick that one
                await trio.sleep(0.01)
        assert (await child.next_event())["event"] == "tick"
        assert (await child.next_event())["event"] == "tick"
        assert child.proc is not None and child.proc.returncode is None


# The parent, in its own process: starts a real benchmark server (kind dbus, the
# trio floor: it serves until the bus closes and never reads stdin) with Child or
# BlockingChild, prints its pid, and waits to be killed.
PARENT = textwrap.dedent("""
    import sys, time, trio
    from mushpi_ble.bench import wire
    from mushpi_ble.bench.children import BlockingChild, Child
    how, address = sys.argv[1:]
    argv = wire.server_argv("dbus", "trio-floor", address)

    async def with_trio():
        async with Child(argv) as child:
            await child.ready(30.0)
            print(child.pid, flush=True)
            await trio.sleep_forever()

    if how == "trio":
        trio.run(with_trio)
    else:
        child = BlockingChild(argv)
        child.ready(30.0)
        print(child.pid, flush=True)
        time.sleep(3600)
""")


@pytest.mark.parametrize("how", ["trio", "blocking"])
def test_a_server_ends_when_the_process_that_started_it_is_killed(
        bus_address: str, how: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, how, bus_address], env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        server = int(parent.stdout.readline())
        assert not ended(server)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + lifeline.EXIT_GRACE_S + 10.0
    while not ended(server):
        assert time.monotonic() < deadline, "the server outlived its parent"
        time.sleep(0.05)


def test_without_a_lifeline_a_process_watches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(lifeline.ENV, raising=False)
    assert lifeline.watch() is False
    monkeypatch.setenv(lifeline.ENV, "not a number")
    assert lifeline.watch() is False
    assert lifeline.ENV not in os.environ  # never passed on to the server's own children


def test_cutting_the_lifeline_ends_the_child() -> None:
    line = lifeline.Lifeline()
    child = subprocess.Popen(TICKER, env=line.env(ENV), pass_fds=line.pass_fds,
                             stdout=subprocess.DEVNULL)
    line.spawned()
    try:
        line.cut()
        assert child.wait(timeout=lifeline.EXIT_GRACE_S + 10.0) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()

