"""The synchronous object the controller owns: trio runs in a thread of its own.

``start()`` launches trio in a named daemon thread and returns once the
application is registered (or raises a :class:`~.errors.StartError` that
says why). Publishing methods encode in the caller's thread and hand the
payload over without waiting for the loop; they return an
:class:`~.notify.Outcome` and never raise into the controller. ``stop()``
is idempotent, callable from any thread, and bounded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar, Unpack, cast

import trio

from .api_types import CallbackArgs, Status
from .config import Settings, env_file_in_use, load_settings
from .controller import ControllerCallbacks
from .dbus import unwrap_group
from .errors import StartError, StartTimeout
from .notify import Outcome
from .peripheral import Peripheral
from .protocol import CHARACTERISTICS, Characteristic
from .service import MushPiService
from .systemd import SystemdNotifier, run_notifier

log = logging.getLogger(__name__)

T = TypeVar("T")
THREAD_NAME = "mushpi-ble-trio"
START_MARGIN_S = 1.0


class LoopNotRunning(RuntimeError):
    """A control operation was asked of a portal whose loop is not running."""


class BlePortal:
    """The MushPi BLE peripheral, driven from ordinary threads."""

    def __init__(
        self,
        settings: Settings | None = None,
        callbacks: ControllerCallbacks | None = None,
        *,
        bus: str = "SYSTEM",
        clock: Callable[[], float] = time.time,
        characteristics: Iterable[Characteristic] = CHARACTERISTICS,
        systemd: SystemdNotifier | None = None,
    ) -> None:
        """``characteristics`` is the MushPi table (``mushpi_ble.protocol.CHARACTERISTICS``);
        a controller with an extra characteristic passes the table with its row added.
        ``systemd``: tell systemd when the service is ready, how it is, and ping its
        watchdog from the loop (for a standalone service, or a controller whose unit
        lets the BLE layer report readiness); ``MUSHPI_BLE_SYSTEMD_NOTIFY=true`` does the
        same when none is passed and systemd asked for notifications."""
        self.settings = settings if settings is not None else load_settings()
        if systemd is None and self.settings.ble_systemd_notify:
            notifier = SystemdNotifier()  # MUSHPI_BLE_SYSTEMD_NOTIFY: the facade's way in
            systemd = notifier if notifier.enabled else None
        self._systemd = systemd
        self._callbacks = callbacks or ControllerCallbacks()
        self.service = MushPiService(self.settings, lambda: self._callbacks, clock=clock,
                                     table=characteristics)
        self.peripheral = Peripheral(self.settings, self.service, bus=bus)
        self.peripheral.stage_getter = lambda: self._callbacks.get_stage_data
        self.peripheral.status_source = self.view_status
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._started = False
        self._stop_requested = False
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stopped = threading.Event()

    # -- callbacks ------------------------------------------------------------------
    def set_callbacks(self, callbacks: Mapping[str, Any] | None = None,
                      **kwargs: Unpack[CallbackArgs]) -> None:
        """Register controller callbacks; None never clears an earlier one. Each keyword
        is typed (:mod:`mushpi_ble.api_types`): mypy checks a controller's signatures."""
        updates = {**(callbacks or {}), **kwargs}
        self._callbacks = self._callbacks.merged(updates)

    @property
    def callbacks(self) -> ControllerCallbacks:
        return self._callbacks

    # -- lifetime ---------------------------------------------------------------------
    def start(self) -> None:
        """Run the peripheral; returns once registered, else raises a StartError.

        Concurrent calls are serialised (the second returns once the first is
        done); a stop() that arrives during start makes start raise.
        """
        with self._start_lock:
            with self._lock:
                if self.is_running():
                    return
                self._log_start()
                self._ready.clear()
                self._stopped.clear()
                self._started = False
                self._stop_requested = False
                self._start_error = None
                self._thread = threading.Thread(target=self._thread_main, name=THREAD_NAME,
                                                daemon=True)
                self._thread.start()
            wait = self.settings.bus_timeout_s + START_MARGIN_S
            if not self._ready.wait(wait):
                self.stop()
                raise StartTimeout(f"the peripheral did not start within {wait:.3g} s")
            if self._start_error is not None:
                error = self._start_error
                self.stop()
                if isinstance(error, StartError):
                    raise error
                raise StartError(f"start-up failed: {type(error).__name__}: {error}") from error
            if not self._started:
                self.stop()
                raise StartError("stopped while starting")

    def stop(self) -> None:
        """Unregister and stop, within MUSHPI_BLE_SHUTDOWN_TIMEOUT_MS; idempotent."""
        with self._lock:
            thread, token, scope = self._thread, self._token, self._cancel
            if thread is None:
                return
            self._stop_requested = True  # seen by a loop that has no cancel scope yet
            if token is not None and scope is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(scope.cancel)
            self._thread = None
        if thread is not threading.current_thread():
            thread.join(self.settings.shutdown_timeout_s)
            if thread.is_alive():
                log.warning("trio thread still running after shutdown bound_ms=%d",
                            self.settings.ble_shutdown_timeout_ms)

    def is_running(self) -> bool:
        thread = self._thread
        return (thread is not None and thread.is_alive() and self._started
                and not self._stopped.is_set())

    def __enter__(self) -> BlePortal:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            trio.run(self._trio_main)
        except BaseException as exc:  # report, never kill the interpreter's thread silently
            error = unwrap_group(exc) if isinstance(exc, BaseExceptionGroup) else exc
            if not self._started:
                self._start_error = error
            else:
                self.peripheral.host.note_error(f"{type(error).__name__}: {error}")
                log.error("peripheral stopped with an error: %s", error)
        finally:
            self._token = None
            self._cancel = None
            self._stopped.set()
            self._ready.set()

    def _log_start(self) -> None:
        """Who may steer the room and from which file that was read: the first thing
        to know when a phone is refused, or is not."""
        settings = self.settings
        source = env_file_in_use()
        log.info("starting adapter=%s write_access=%s read_access=%s pairing=%s "
                 "settings_file=%s systemd=%s", settings.ble_adapter, settings.ble_write_access,
                 settings.ble_read_access, settings.pairing_mode,
                 source if source is not None else "none (environment only)",
                 "notify" if self._systemd is not None else "off")

    async def _trio_main(self) -> None:
        token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            with self._lock:
                self._token, self._cancel = token, scope
                if self._stop_requested:
                    scope.cancel()
            async with trio.open_nursery() as nursery:
                await nursery.start(self._run_peripheral)
                if self._systemd is not None:
                    await nursery.start(partial(
                        run_notifier, self._systemd, self.get_status,
                        advertising_wanted=self.settings.ble_adv_enable,
                        ready_timeout=self.settings.bus_timeout_s))
                self._started = True
                self._ready.set()

    async def _run_peripheral(self, task_status: trio.TaskStatus[None]) -> None:
        await self.peripheral.run(task_status=task_status)

    # -- publishing (any thread; never blocks past the put timeout) ----------------
    # No guard of its own: the codecs take any value the controller passes (a
    # reading that is not a usable number is sent as 0) and a mailbox that is
    # not attached answers NOT_RUNNING, so these never raise for any input.
    # The one catch-all is the drop-in facade's (compat.ble_gatt), the outer edge.
    def publish_env(self, temperature: object = None, humidity: object = None,
                    co2: object = None, light: object = None) -> Outcome:
        """°C, %RH, ppm, raw light (any may be None); encoded here, queued without waiting."""
        return self.service.publish_env(temperature, humidity, co2, light)

    def publish_status(self, flags: object) -> Outcome:
        """The controller's status bits; kept even while not running (they are
        served from the start), notified while running."""
        return self.service.publish_status(flags)

    def publish_actuator(self, control_data: Mapping[str, Any] | None = None) -> Outcome:
        """Publish relay state.

        Without an argument the state is read through ``get_control_data`` — in a
        worker thread of the loop under the handler deadline, never in the caller's
        thread — and the call returns QUEUED once that is handed over.
        """
        if control_data is not None:
            return self.service.publish_actuator(control_data)
        return self._to_loop(self.peripheral.host.spawn, self.service.refresh_actuator)

    def _to_loop(self, fn: Callable[..., object], *args: Any) -> Outcome:
        token = self._token
        if token is None:
            return Outcome.NOT_RUNNING
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return Outcome.NOT_RUNNING
        return Outcome.QUEUED

    def notify(self, name: str, payload: bytes) -> Outcome:
        """Publish a ready payload for a notifying characteristic by name; a name
        that does not notify, or a payload of the wrong size, raises KeyError or
        ValueError (a programming error, not a reading)."""
        return self.service.publish_raw(name, payload)

    # -- control operations (wait for the loop, with a timeout) ------------------------
    def call_in_loop(self, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        """Run ``fn`` on the trio thread and return its result within ``timeout``.

        ``trio.from_thread.run_sync`` cannot time out; this hands ``fn`` over
        with ``TrioToken.run_sync_soon`` and waits on a future that can.
        """
        token = self._token
        if token is None:
            raise LoopNotRunning("the peripheral is not running")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        token.run_sync_soon(run)
        return future.result(self.settings.bus_timeout_s if timeout is None else timeout)

    def run_in_loop(self, fn: Callable[[], Awaitable[T]], *, timeout: float | None = None) -> T:
        """Run the coroutine function ``fn`` in the loop and return its result; it is
        cancelled after ``timeout`` (the bus timeout when None: ``trio.TooSlowError``)."""
        token = self._token
        if token is None:
            raise LoopNotRunning("the peripheral is not running")
        wait = self.settings.bus_timeout_s if timeout is None else timeout

        async def bounded() -> T:
            with trio.fail_after(wait):
                return await fn()

        return trio.from_thread.run(bounded, trio_token=token)

    # -- who may steer the room ------------------------------------------------------------
    def open_pairing_window(self, seconds: float = 120.0) -> float:
        """Accept new bonds for ``seconds`` (e.g. from a button); the wall time it closes.

        Only with ``MUSHPI_BLE_PAIRING`` window or passkey (ValueError otherwise). Any
        thread; works before start too (the window is a deadline).
        """
        return self.peripheral.access.open_pairing_window(seconds)

    def close_pairing_window(self) -> None:
        self.peripheral.access.close_pairing_window()

    def bonds(self) -> list[dict[str, Any]]:
        """The bonded phones bluetoothd reports: address, name, paired, bonded, trusted,
        connected, last_seen (wall time of the last connect/disconnect seen, or None)."""
        if not self.is_running():
            return []
        return self.call_in_loop(self.peripheral.access.bonds)

    def remove_bond(self, address: str) -> None:
        """Forget a bonded phone (bluetoothd's ``RemoveDevice``): it has to pair again,
        inside a window, before it may write. ValueError when there is no such bond."""
        self.run_in_loop(lambda: self.peripheral.access.remove_bond(address))

    def approve_bond(self, address: str) -> None:
        """Approve a phone bluetoothd has a bond for but our agent did not admit (one
        bonded before access was bonded): it may then read and write where access is
        bonded. ValueError when there is no such bond or access is open."""
        self.run_in_loop(lambda: self.peripheral.access.approve_bond(address))

    def connection_count(self) -> int:
        return sum(1 for c in self.peripheral.steps.centrals if c.connected)

    def update_advertising_name(self, name: str | None = None) -> None:
        """Recompute the name from ``get_stage_data`` (or pin ``name``) and apply it live.

        Never blocks the caller: the stage getter runs in a worker thread of the
        loop under the handler deadline. Before start, the name is computed when
        the peripheral starts.
        """
        self.peripheral.steps.naming.fixed = name
        if self.is_running():
            self._to_loop(self.peripheral.request_name_refresh, name)

    def get_status(self) -> Status:
        """A snapshot for dashboards and logs (documented in the README): the
        peripheral's parts each report their own facts, the service its counters."""
        status = {
            "backend": "bluez-dbus",
            "running": self.is_running(),
            **self.peripheral.snapshot(),
            "characteristics": self.service.counters(),
            "notify": self.service.notify_status(),
            "callbacks": self.service.runner.status(),
            "adapter_recovery": self.settings.ble_adapter_recovery,
        }
        return cast(Status, status)  # the parts' keys and types: tests/test_api_types.py

    def view_status(self) -> dict[str, Any]:
        """:meth:`get_status` plus what a live view shows: each characteristic's last value
        (hex) and the recent writes (what ``mushpi-ble status`` receives)."""
        app = self.peripheral.steps.application.app
        values = ({state.spec.name: state.value.hex() for state in app.characteristics}
                  if app is not None else {})
        writes = [{"at": w.at, "characteristic": w.characteristic, "accepted": w.accepted,
                   "detail": w.detail, "device": w.device}
                  for w in list(self.service.recent_writes)[-8:]]
        return {**dict(self.get_status()), "values": values, "recent_writes": writes}

    def wait_for_status(self, predicate: Callable[[Status], object],
                        timeout: float) -> Status:
        """Block until ``predicate(get_status())`` holds; the status that made it true.

        Woken by every change the peripheral reports, never by polling; raises
        TimeoutError after ``timeout`` seconds. Any thread but the loop's.
        """
        deadline = time.monotonic() + timeout
        peripheral = self.peripheral
        while True:
            seen = peripheral.host.changes
            status = self.get_status()
            if predicate(status):
                return status
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"status condition not met within {timeout:.3g} s")
            with peripheral.host.state_changes:
                if peripheral.host.changes == seen:
                    peripheral.host.state_changes.wait(left)
