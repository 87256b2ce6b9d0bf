"""What the steps share within a run: the connection, the session's tasks, the wake-up.

:class:`SessionHost` is the supervisor's side of :class:`~.step.StepHost`:
it starts session tasks in scopes that end with the bluetoothd session,
passes events from one step to all, wakes the supervisor when a step must be
registered again, and tells status readers in any thread that something
changed.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio

from ..dbus import Connection, single_errors
from .step import SessionEvent, SessionTask, Step, in_scope


class SessionHost:
    """One per peripheral; :meth:`open_run` / :meth:`close_run` bracket each run."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = steps
        self.changes = 0
        """Counts what :meth:`changed` reported, so a waiter knows whether it missed one."""
        self.state_changes = threading.Condition()
        self.last_error: str | None = None
        self.error_step: str | None = None
        """The step whose failure ``last_error`` tells of (None: not a step's)."""
        self.errors_noted = 0
        self.wake = trio.Event()
        """Set when a step must be registered again; the supervisor renews it."""
        self.reason = ""
        self._conn: Connection | None = None
        self._nursery: trio.Nursery | None = None
        self.scopes: list[trio.CancelScope] = []

    def open_run(self, conn: Connection, nursery: trio.Nursery) -> None:
        self._conn, self._nursery = conn, nursery
        self.last_error = None
        self.wake = trio.Event()
        self.end_session()

    def close_run(self) -> None:
        self._conn = self._nursery = None

    def end_session(self) -> None:
        """Cancel every task of the session that ended; nothing is done any more."""
        for scope in self.scopes:
            scope.cancel()
        self.scopes = []
        for step in self.steps:
            step.done = False

    @property
    def conn(self) -> Connection:
        assert self._conn is not None, "the peripheral is not running"
        return self._conn

    @property
    def running(self) -> bool:
        return self._conn is not None

    def redo(self, step: Step, reason: str) -> None:
        if step.done:
            step.done = False
            self.reason = reason
            self.wake.set()

    def announce(self, event: SessionEvent) -> None:
        for step in self.steps:
            step.on_event(event)

    async def start_in_session(self, fn: SessionTask) -> None:
        assert self._nursery is not None
        with single_errors():  # a failure before started() is the step's own error
            await self._nursery.start(partial(in_scope, self.scopes, fn))

    def spawn_in_session(self, fn: SessionTask) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(partial(in_scope, self.scopes, fn))

    def spawn(self, fn: Callable[[], Awaitable[object]]) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn)

    def note_error(self, text: str | None, step: str | None = None) -> None:
        self.last_error, self.error_step = text, step
        self.errors_noted += 1

    def step_succeeded(self, step: Step, errors_before: int) -> None:
        """``step`` registered without a new error: an error it left earlier is over."""
        if self.error_step == step.name and self.errors_noted == errors_before:
            self.note_error(None)

    def changed(self) -> None:
        with self.state_changes:
            self.changes += 1
            self.state_changes.notify_all()
