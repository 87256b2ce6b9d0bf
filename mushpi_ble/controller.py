"""The controller's callbacks, and running them safely from the trio loop.

Callbacks are synchronous and may be slow (database, GPIO): each runs in a
worker thread under a deadline, so a hung callback costs its own request
and nothing else. A thread that overruns is abandoned, not waited for.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs
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
)

Callback = Callable[..., Any]


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

    def merged(self, updates: Mapping[str, Callback | None]) -> ControllerCallbacks:
        """A copy with ``updates`` applied; None never clears an earlier callback."""
        unknown = sorted(set(updates) - set(CALLBACK_NAMES))
        if unknown:
            raise TypeError(f"unknown callbacks: {', '.join(unknown)}")
        for name, fn in updates.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"callback {name} is not callable")
        return attrs.evolve(self, **{k: v for k, v in updates.items() if v is not None})


async def call_in_thread(fn: Callback, *args: Any, timeout: float, what: str) -> Any:
    """Run ``fn(*args)`` in a worker thread under ``timeout`` seconds.

    Raises :class:`ControllerTimeout` or :class:`ControllerFailure`; never
    blocks the trio thread.
    """
    with trio.move_on_after(timeout):
        try:
            return await trio.to_thread.run_sync(
                functools.partial(fn, *args), abandon_on_cancel=True
            )
        except Exception as exc:
            raise ControllerFailure(f"{what} raised {type(exc).__name__}: {exc}") from exc
    raise ControllerTimeout(f"{what} did not return within {timeout:.3g} s")
