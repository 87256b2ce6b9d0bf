"""What a session step is, and what the supervisor offers it.

A *session* is one bluetoothd lifetime on one adapter: everything registered
in it is gone when bluetoothd leaves the bus or the adapter is removed. Each
thing the peripheral needs in a session (the GATT application, device
tracking, the alias, bonds, the pairing agent, the advertisement) is one
:class:`Step` that owns its own state and its status snapshot. Steps never
import each other: what one must tell the others travels as a
:class:`SessionEvent` through the supervisor (:class:`StepHost.announce`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Protocol

import attrs
import trio

from ..dbus import Connection
from ..gatt import AdapterCondition, Central

SessionTask = Callable[..., Awaitable[None]]
"""A ``nursery.start``-style task function: takes ``task_status`` as a keyword."""


# -- events the supervisor sends to every step ------------------------------------------------
@attrs.frozen
class CentralConnected:
    central: Central


@attrs.frozen
class CentralLeft:
    central: Central
    any_connected: bool
    """Whether another central is still connected."""
    session_ended: bool = False
    """Counted gone because bluetoothd went (a restart, a crash), not its own link."""


@attrs.frozen
class PowerChanged:
    was: str
    """The adapter's previous state ("unknown" at the session's first look)."""
    condition: AdapterCondition


@attrs.frozen
class Stopping:
    """The peripheral is stopping: whatever bluetoothd lets go of now stays gone."""


SessionEvent = CentralConnected | CentralLeft | PowerChanged | Stopping


class StepHost(Protocol):
    """What the supervisor offers its steps."""

    @property
    def conn(self) -> Connection:
        """The run's bus connection."""

    def redo(self, step: Step, reason: str) -> None:
        """bluetoothd let go of ``step`` (an advert's Release): register it again."""

    def announce(self, event: SessionEvent) -> None:
        """Tell every step of something one of them saw."""

    async def start_in_session(self, fn: SessionTask) -> None:
        """Start ``fn`` as a task that ends with this bluetoothd session."""

    def spawn_in_session(self, fn: SessionTask) -> None:
        """Like :meth:`start_in_session`, not waited for."""

    def spawn(self, fn: Callable[[], Awaitable[object]]) -> None:
        """Run ``fn`` as a task of the peripheral's nursery (outlives sessions)."""

    def note_error(self, text: str | None, step: str | None = None) -> None:
        """The last error ``get_status()`` reports, and the step it is about (cleared when
        that step registers again)."""

    def changed(self) -> None:
        """Something a status reader may wait for has changed."""


class Step:
    """One thing every bluetoothd session needs on the adapter, done in list order.

    ``register(adapter)`` raises ``DBusError`` (or a ``StartError``) when it
    fails, and is then retried after a back-off. ``unregister(timeout)``
    undoes it at stop, best effort. ``forget()`` drops what is held locally
    when bluetoothd or the adapter took the registration away with it.
    ``required`` steps must succeed before ``start()`` returns. ``done`` is
    kept by the supervisor: true from the register call on (a Release that
    overtakes the reply undoes it) until the step is lost or forgotten.
    """

    name: ClassVar[str] = "step"
    required: ClassVar[bool] = False

    def __init__(self) -> None:
        self.done = False
        self._host: StepHost | None = None

    @property
    def host(self) -> StepHost:
        assert self._host is not None, f"step {self.name} used outside a run"
        return self._host

    def attach(self, host: StepHost) -> None:
        """A run begins (a connection to the bus): the step may export objects now."""
        self._host = host

    def detach(self) -> None:
        """The run ended; nothing of it carries over to the next."""
        self.done = False
        self._host = None

    async def register(self, adapter: str) -> None:
        """Do this step's work in the current session."""

    async def unregister(self, timeout: float) -> None:
        """Undo :meth:`register` at stop; bluetoothd may already be gone."""

    def forget(self) -> None:
        """bluetoothd or the adapter took the registration away: drop ours too."""

    def on_event(self, event: SessionEvent) -> None:
        """Something another step saw (a central came or left, the power changed)."""

    def snapshot(self) -> dict[str, Any]:
        """This step's facts for ``get_status()``, each reported by one step only."""
        return {}


async def in_scope(scopes: list[trio.CancelScope], fn: SessionTask, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run ``fn`` inside a scope of ``scopes`` (cancelled when the session ends)."""
    with trio.CancelScope() as scope:
        scopes.append(scope)
        await fn(task_status=task_status)
