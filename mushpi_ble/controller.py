"""The controller's callbacks, and running them safely from the trio loop.

Callbacks are synchronous and may be slow (database, GPIO) or hang (a stuck
sensor bus, a deadlocked controller lock): each runs in a worker thread and
every caller waits under its own deadline, so a hung callback costs its own
requests and nothing else. :class:`CallbackRunner` keeps at most one call of
each callback running: a thread that overruns is not waited for, but no
second thread is started for that callback until it returns, so any number
of hung calls holds at most one thread per callback and never the threads
the other callbacks need.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import outcome
import trio

log = logging.getLogger(__name__)

CALLBACK_NAMES = (
    "get_sensor_data",
    "get_control_data",
    "get_control_targets",
    "get_stage_data",
    "set_control_targets",
    "set_stage_state",
    "apply_overrides",
    "get_stage_thresholds",
    "set_stage_thresholds",
    "on_pairing_passkey",
)

Callback = Callable[..., Any]

FOREIGN_POLL_S = 0.05
"""How often a caller checks a call started by an earlier run of the loop."""
GETTERS = frozenset(name for name in CALLBACK_NAMES if name.startswith("get_"))
"""Callbacks without side effects: a caller may share a running call's answer."""


class ControllerTimeout(Exception):
    """A callback did not return within its deadline (it was abandoned)."""


class ControllerFailure(Exception):
    """A callback raised; the original exception is chained."""


@attrs.frozen
class ControllerCallbacks:
    """The callbacks the controller registered (any may be missing)."""

    get_sensor_data: Callback | None = None
    get_control_data: Callback | None = None
    get_control_targets: Callback | None = None
    get_stage_data: Callback | None = None
    set_control_targets: Callback | None = None
    set_stage_state: Callback | None = None
    apply_overrides: Callback | None = None
    get_stage_thresholds: Callback | None = None
    set_stage_thresholds: Callback | None = None
    on_pairing_passkey: Callback | None = None
    """``(address, passkey)``: show the 6-digit passkey to the grower (an LCD), in
    ``MUSHPI_BLE_PAIRING=passkey`` mode; its return value is ignored."""

    def merged(self, updates: Mapping[str, Callback | None]) -> ControllerCallbacks:
        """A copy with ``updates`` applied; None never clears an earlier callback."""
        unknown = sorted(set(updates) - set(CALLBACK_NAMES))
        if unknown:
            raise TypeError(f"unknown callbacks: {', '.join(unknown)}")
        for name, fn in updates.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"callback {name} is not callable")
        return attrs.evolve(self, **{k: v for k, v in updates.items() if v is not None})


@attrs.define(eq=False)
class _Flight:
    """One running call of a callback, shared by every caller that joins it."""

    fn: Callback
    args: tuple[Any, ...]
    started: float
    generation: int
    token: trio.lowlevel.TrioToken = attrs.Factory(trio.lowlevel.current_trio_token)
    done: trio.Event = attrs.Factory(trio.Event)
    result: outcome.Outcome[Any] | None = None

    async def wait(self) -> outcome.Outcome[Any]:
        """The call's outcome once it returned (shared: never unwrapped here)."""
        if self.token is trio.lowlevel.current_trio_token():
            await self.done.wait()
        else:  # started by an earlier run of the loop, whose wake-up cannot reach us
            while self.result is None:
                await trio.sleep(FOREIGN_POLL_S)
        assert self.result is not None
        return self.result


@attrs.define
class _Track:
    """One callback's running call and counters (guarded by the runner's lock)."""

    flight: _Flight | None = None
    hung_since: float | None = None
    hangs: int = 0
    calls: int = 0
    joined: int = 0
    timeouts: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {"in_flight": self.flight is not None, "hung_since": self.hung_since,
                "hangs": self.hangs, "calls": self.calls, "joined": self.joined,
                "timeouts": self.timeouts}


class CallbackRunner:
    """Runs controller callbacks in worker threads, one call of each at a time.

    - A getter called with the same arguments while it runs is joined: the
      caller waits for the running call's answer instead of starting a thread
      (unless a setter returned since that call started: then the caller
      waits for it and asks again, so a read after a write sees the write).
    - Any other call of a running callback (a setter, a getter with other
      arguments) waits for it to return, then takes its turn.
    - Every caller waits only until its own deadline (:class:`ControllerTimeout`);
      the running call keeps its thread until it returns, and that is the only
      thread the callback can hold: its worker budget is one thread.
    - A call still running past the deadline is *hung*: logged once, shown by
      :meth:`status`, and cleared (logged once more) when it returns.

    Threads come from trio's thread cache directly, outside trio's default
    limiter, so hung callbacks never take the threads of ``to_thread`` users.
    The loop thread calls :meth:`call`; :meth:`status` is for any thread.
    """

    def __init__(self, timeout: float, *, clock: Callable[[], float] = time.time) -> None:
        """``timeout``: the handler deadline; ``clock`` dates ``hung_since``."""
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._tracks: dict[str, _Track] = {name: _Track() for name in CALLBACK_NAMES}
        self._generation = 0
        """Setter calls returned so far: a getter started before the last one
        may answer an old value, so a read that arrives after it is not joined."""

    async def call(self, name: str, fn: Callback, args: tuple[Any, ...] = (), *,
                   timeout: float | None = None) -> Any:
        """``fn(*args)`` as callback ``name``, answered within ``timeout`` (default: the
        runner's). Raises :class:`ControllerTimeout` or :class:`ControllerFailure`."""
        limit = self.timeout if timeout is None else timeout
        with trio.move_on_after(limit):
            flight = await self._board(name, fn, args)
            result = await flight.wait()
            if isinstance(result, outcome.Value):
                return result.value
            assert isinstance(result, outcome.Error)
            exc = result.error
            raise ControllerFailure(f"{name} raised {type(exc).__name__}: {exc}") from exc
        with self._lock:
            self._track(name).timeouts += 1
        raise ControllerTimeout(f"{name} did not return within {limit:.3g} s")

    async def _board(self, name: str, fn: Callback, args: tuple[Any, ...]) -> _Flight:
        """The flight this caller waits for: the running one if it may join it, else
        a new one once the callback is free."""
        while True:
            with self._lock:
                track = self._track(name)
                running = track.flight
                if running is None:
                    track.flight = flight = _Flight(fn, args, time.monotonic(),
                                                    self._generation)
                    track.calls += 1
                    break
                if (name in GETTERS and running.fn is fn and running.args == args
                        and running.generation == self._generation):
                    track.joined += 1
                    return running
            await running.wait()
        self._launch(name, flight)
        return flight

    def _launch(self, name: str, flight: _Flight) -> None:
        def deliver(result: outcome.Outcome[Any]) -> None:
            """In the worker thread once the callback returned: free the callback."""
            flight.result = result
            with self._lock:
                track = self._track(name)
                track.flight = None
                if name not in GETTERS:
                    self._generation += 1
                hung_since, track.hung_since = track.hung_since, None
            if hung_since is not None:
                log.warning("controller callback returned after hanging callback=%s "
                            "running_s=%.1f", name, time.monotonic() - flight.started)
            with contextlib.suppress(trio.RunFinishedError):  # the loop is gone, and its waiters
                flight.token.run_sync_soon(flight.done.set)

        trio.lowlevel.start_thread_soon(functools.partial(flight.fn, *flight.args), deliver,
                                        name=f"mushpi-ble {name}")
        trio.lowlevel.spawn_system_task(self._watch, name, flight)

    async def _watch(self, name: str, flight: _Flight) -> None:
        """Marks the call hung when it outlives the deadline (whoever still waits)."""
        with trio.move_on_after(self.timeout):
            await flight.done.wait()
            return
        with self._lock:
            track = self._track(name)
            if track.flight is not flight or track.hung_since is not None:
                return
            track.hung_since = self._clock()
            track.hangs += 1
        log.warning("controller callback hung callback=%s running_s=%.1f (no other call of it "
                    "starts until it returns)", name, time.monotonic() - flight.started)

    def _track(self, name: str) -> _Track:
        track = self._tracks.get(name)
        if track is None:
            track = self._tracks[name] = _Track()
        return track

    def status(self) -> dict[str, dict[str, Any]]:
        """Per callback: ``in_flight``, ``hung_since`` (time the deadline passed, or
        None), ``hangs``, ``calls`` (threads started), ``joined``, ``timeouts``."""
        with self._lock:
            return {name: track.snapshot() for name, track in self._tracks.items()}
