"""The parent side of the child-process protocol (:mod:`mushpi_ble.bench.wire`).

:class:`Child` drives a server from a trio program; :class:`BlockingChild`
from a blocking one (the D-Bus benchmark's client must not share a loop with
anything). Both start the server the same way, tied to this process by a
:class:`~mushpi_ble.bench.lifeline.Lifeline` (the server ends when this process
does), decode its lines with the same :class:`~mushpi_ble.bench.wire.LineBuffer`,
leave its stderr in a temporary file for the error message, and stop it the same
way.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import tempfile
import time
from typing import IO, Any

import trio

from mushpi_ble.bench import wire
from mushpi_ble.bench.lifeline import Lifeline

QUIT_GRACE_S = 5.0


class ChildFailed(RuntimeError):
    """A server ended, or said it cannot serve; ``kind`` is the protocol's error kind."""

    def __init__(self, kind: str, error: str) -> None:
        super().__init__(error)
        self.kind = kind
        self.error = error


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def stderr_tail(stderr: IO[bytes]) -> str:
    """The last line the server wrote to stderr (usually the exception)."""
    with contextlib.suppress(OSError, ValueError):
        stderr.flush()
        stderr.seek(0)
        return last_line(stderr.read().decode(errors="replace"))
    return ""


def failure(ready: wire.Event) -> ChildFailed:
    """The error a first line other than ``ready`` stands for."""
    return ChildFailed(str(ready.get("kind", "failed")), str(ready.get("error", ready)))


class Child:
    """A server driven from trio: ``async with Child(argv) as child: await child.ready()``."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self._lines = wire.LineBuffer()
        self._events: list[wire.Event] = []
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed when it stops)
        self._lifeline = Lifeline()
        self.proc: trio.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def __aenter__(self) -> Child:
        try:
            self.proc = await trio.lowlevel.open_process(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                env=self._lifeline.env(), pass_fds=self._lifeline.pass_fds)
        except BaseException:
            self._lifeline.cut()
            self._stderr.close()
            raise
        self._lifeline.spawned()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        try:
            await self.stop()
        finally:
            self._lifeline.cut()
            self._stderr.close()

    async def next_event(self) -> wire.Event:
        """The next protocol line; ChildFailed when the server's output ends."""
        assert self.proc is not None and self.proc.stdout is not None
        while not self._events:
            chunk = await self.proc.stdout.receive_some(1 << 20)
            if not chunk:
                raise ChildFailed("failed", stderr_tail(self._stderr)
                                  or "the server process closed its output")
            self._events.extend(self._lines.feed(chunk))
        return self._events.pop(0)

    async def ready(self, timeout: float) -> wire.Event:
        """The ready event; ChildFailed if the server says it cannot serve."""
        with trio.fail_after(timeout):
            event = await self.next_event()
        if event.get("event") != "ready":
            raise failure(event)
        return event

    async def tell(self, cmd: str, **fields: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        await self.proc.stdin.send_all(wire.command_line(cmd, **fields))

    async def ask(self, cmd: str, **fields: Any) -> wire.Event:
        """Send a command and return its ``done`` answer (other events are skipped)."""
        await self.tell(cmd, **fields)
        while (answer := await self.next_event()).get("event") != "done":
            pass
        return answer

    async def stop(self) -> None:
        """Quit, then kill what does not exit within the grace period."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await self.tell(wire.QUIT)
        with trio.move_on_after(QUIT_GRACE_S):
            await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            with trio.move_on_after(2.0):
                await self.proc.wait()


class BlockingChild:
    """A server driven from blocking code, with no commands on stdin: it is told
    what to do some other way (over D-Bus), and stopped with SIGINT so a profiled
    server can write its profile."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self._lines = wire.LineBuffer()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed when it stops)
        self.events: list[wire.Event] = []
        self.ready_event: wire.Event = {}
        self._lifeline = Lifeline()
        try:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
                bufsize=0, env=self._lifeline.env(), pass_fds=self._lifeline.pass_fds)
        except BaseException:
            self._lifeline.cut()
            self._stderr.close()
            raise
        self._lifeline.spawned()
        self.pid = self.proc.pid

    def poll_events(self, timeout: float = 0.0) -> list[wire.Event]:
        """Events printed so far (waiting up to ``timeout`` for the first)."""
        stdout = self.proc.stdout
        assert stdout is not None
        events: list[wire.Event] = []
        wait = timeout
        while select.select([stdout], [], [], wait)[0]:
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                break
            events.extend(self._lines.feed(chunk))
            wait = 0.0
        self.events.extend(events)
        return events

    def ready(self, timeout: float) -> wire.Event:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.poll_events(0.1):
                if event.get("event") == "ready":
                    self.ready_event = event
                    return event
                raise failure(event)
            if self.proc.poll() is not None:
                break
        raise ChildFailed("failed", stderr_tail(self._stderr) or "the server did not start")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = QUIT_GRACE_S) -> int | None:
        """SIGINT (lets a server finish a profile), then SIGTERM, then SIGKILL."""
        proc = self.proc
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 2.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            if proc.stdout is not None:
                proc.stdout.close()
        self._lifeline.cut()
        self._stderr.close()
        return proc.returncode

    def __enter__(self) -> BlockingChild:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
