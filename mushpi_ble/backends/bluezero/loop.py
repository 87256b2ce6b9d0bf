"""BlueZero's GLib main loop, on a thread of its own (``mushpi-ble-glib``), one per process.

Every D-Bus call and every controller callback of a read or write runs on this
thread. BlueZero's object paths are fixed (``/ukBaz/bluezero/...``) and it uses the
shared system bus and GLib's default main context, so one backend at a time may have
its loop thread alive in a process: ``claim`` and ``release`` keep that.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from mushpi_ble.errors import StartError

from .deps import GLib

log = logging.getLogger(__name__)

THREAD_NAME = "mushpi-ble-glib"
_ACTIVE_LOCK = threading.Lock()
_active: list[object] = []
"""The backend whose GLib loop thread is alive: BlueZero's fixed object paths, the
shared system bus and GLib's default main context allow one per process."""


def claim(owner: object) -> None:
    with _ACTIVE_LOCK:
        if _active:
            raise StartError("another BluezeroBackend is running in this process (BlueZero "
                             "allows one: fixed object paths, one GLib default context)")
        _active.append(owner)


def release(owner: object) -> None:
    with _ACTIVE_LOCK:
        if owner in _active:
            _active.remove(owner)


class LoopThread:
    """The current GLib.MainLoop and the thread running it."""

    def __init__(self) -> None:
        self.loop: Any = None
        self.thread: threading.Thread | None = None

    def is_alive(self) -> bool:
        thread = self.thread
        return thread is not None and thread.is_alive()

    def start(self, owner: object, setup: Callable[[], None],
              ready: concurrent.futures.Future[None], *,
              on_error: Callable[[BaseException], None], on_exit: Callable[[], None]) -> None:
        """Run ``setup`` then the loop on a new thread.

        An exception before ``ready`` is settled goes to ``ready``, a later one to
        ``on_error`` (called while it is being handled); ``on_exit`` runs when the thread
        ends, then the process slot ``owner`` claimed is released."""
        self.loop = GLib.MainLoop()
        self.thread = threading.Thread(target=self._main,
                                       args=(owner, setup, ready, on_error, on_exit),
                                       name=THREAD_NAME, daemon=True)
        self.thread.start()

    def _main(self, owner: object, setup: Callable[[], None],
              ready: concurrent.futures.Future[None],
              on_error: Callable[[BaseException], None], on_exit: Callable[[], None]) -> None:
        """Set up with blocking calls (each within the start deadline), then run the loop."""
        try:
            setup()
            self.loop.run()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                on_error(exc)
        finally:
            on_exit()
            if not ready.done():
                ready.set_exception(StartError("the GLib loop stopped during start-up"))
            release(owner)

    def stop(self, teardown: Callable[[float], bool], deadline: float, *,
             bound_ms: int) -> bool:
        """Have ``teardown(budget)`` run on the loop and wait for the thread until
        ``deadline``. False when called from the loop thread itself (from inside a
        callback): the teardown then runs once the callback returns."""
        thread = self.thread
        if thread is None:
            return True
        if thread.is_alive():
            budget = max(0.05, deadline - time.monotonic() - 0.1)
            GLib.idle_add(teardown, budget)
            if thread is threading.current_thread():  # stop() from inside a callback
                return False
            thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("GLib loop thread still running after shutdown bound_ms=%d", bound_ms)
        else:
            self.thread = None
        return True
