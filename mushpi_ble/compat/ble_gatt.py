"""The controller's BLE facade (``app/core/ble_gatt.py``), on this package's backends.

Module-level functions with the names, arguments and return values the
MushPi controller already calls; none of them raises into the controller.
The backend is the one ``select_backend()`` picks from ``MUSHPI_BLE_BACKEND``
(``bluez-dbus`` by default, ``bluezero`` for the legacy implementation), on
the system bus — which honours ``DBUS_SYSTEM_BUS_ADDRESS``, so tests and
demos point it at a private bus (or call :func:`configure`).

Threads: the controller calls in from its main loop and from inside its own
callbacks (``apply_overrides`` calls :func:`notify_actuator_status`). Only
start, stop and initialisation take the lifecycle lock; publishing and
queries read the current backend without any lock of ours, so a call made
from inside a callback can never deadlock with a start or stop in progress.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, runtime_checkable

import attrs

from mushpi_ble.backends import select_backend
from mushpi_ble.backends.base import BLEBackend
from mushpi_ble.config import Settings, load_settings
from mushpi_ble.controller import CALLBACK_NAMES
from mushpi_ble.portal import BlePortal

log = logging.getLogger(__name__)

__all__ = [
    "configure",
    "get_connection_count",
    "get_service_instance",
    "initialize_ble_service",
    "is_service_running",
    "notify_actuator_status",
    "notify_env_packet",
    "set_callbacks",
    "start_ble_service",
    "stop_ble_service",
    "update_advertising_name",
    "update_status_flags",
]

Callback = Callable[..., Any]
P = ParamSpec("P")
T = TypeVar("T")


def _never_raises(default: T) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """The facade's promise, kept in one place: whatever goes wrong below is logged
    and answered with ``default``, never raised into the controller. The layers
    below (backend, portal, service) carry no catch-all of their own."""
    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                log.error("%s failed: %s: %s", fn.__name__, type(exc).__name__, exc,
                          exc_info=True)
                return default

        return guarded

    return wrap


@runtime_checkable
class PublishingBackend(Protocol):
    """What both backends offer beyond the seed contract; the facade needs it."""

    def publish_env(self, temperature: object, humidity: object, co2: object,
                    light: object) -> object: ...

    def publish_status(self, flags: object) -> object: ...

    def publish_actuator(self) -> object: ...

    def connection_count(self) -> int: ...

    def is_running(self) -> bool: ...


@attrs.define
class _State:
    """Everything the module remembers between calls."""

    callbacks: dict[str, Callback] = attrs.Factory(dict)
    backend: BLEBackend | None = None
    settings: Settings | None = None
    bus: str = "SYSTEM"
    status_flags: int | None = None


_state = _State()
_lifecycle = threading.RLock()
"""Serialises initialise/start/stop; re-entrant so a nested call on the same thread passes."""
_callbacks_lock = threading.Lock()


def configure(*, settings: Settings | None = None, bus: str | None = None) -> None:
    """Use these settings (instead of the environment) and this bus for the next start.

    Not part of the controller's API: for tests, demos and benchmarks.
    """
    with _lifecycle:
        if settings is not None:
            _state.settings = settings
        if bus is not None:
            _state.bus = bus


def _reset_for_tests() -> None:
    """Stop any backend and forget callbacks, settings and bus (test isolation)."""
    with _lifecycle:
        backend = _state.backend
        if backend is not None:
            try:
                backend.stop()
            except Exception:
                log.exception("stop during reset failed")
        with _callbacks_lock:
            _state.callbacks = {}
        _state.backend = None
        _state.settings = None
        _state.status_flags = None
        _state.bus = "SYSTEM"


def _running_backend() -> PublishingBackend | None:
    backend = _state.backend
    if isinstance(backend, PublishingBackend) and backend.is_running():
        return backend
    return None


# -- callbacks ---------------------------------------------------------------------
@_never_raises(None)
def set_callbacks(
    get_sensor_data: Callback | None = None,
    get_control_data: Callback | None = None,
    get_control_targets: Callback | None = None,
    get_stage_data: Callback | None = None,
    set_control_targets: Callback | None = None,
    set_stage_state: Callback | None = None,
    apply_overrides: Callback | None = None,
    get_stage_thresholds: Callback | None = None,
    set_stage_thresholds: Callback | None = None,
    on_pairing_passkey: Callback | None = None,
) -> None:
    """Register the controller's callbacks; a None argument keeps an earlier one."""
    given = dict(zip(CALLBACK_NAMES, (
        get_sensor_data, get_control_data, get_control_targets, get_stage_data,
        set_control_targets, set_stage_state, apply_overrides, get_stage_thresholds,
        set_stage_thresholds, on_pairing_passkey,
    ), strict=True))
    updates: dict[str, Callback] = {}
    for name, fn in given.items():
        if fn is None:
            continue
        if not callable(fn):
            log.error("set_callbacks: %s is not callable (got %s); ignored", name,
                      type(fn).__name__)
            continue
        updates[name] = fn
    with _callbacks_lock:
        _state.callbacks.update(updates)
        merged = dict(_state.callbacks)
    backend = _state.backend
    if backend is not None:
        backend.set_callbacks(merged)


# -- lifetime --------------------------------------------------------------------------
@_never_raises(False)
def initialize_ble_service() -> bool:
    """Choose and build the backend (no bus traffic); False if that is impossible."""
    with _lifecycle:
        if _state.backend is None:
            settings = _state.settings if _state.settings is not None else load_settings()
            backend = select_backend(settings, bus=_state.bus)
            with _callbacks_lock:
                callbacks = dict(_state.callbacks)
            backend.set_callbacks(callbacks)
            _state.backend = backend
        return _state.backend.initialize()


@_never_raises(False)
def start_ble_service() -> bool:
    """Initialise if needed, register and advertise; False (never an exception) on failure."""
    with _lifecycle:
        if _state.backend is None and not initialize_ble_service():
            return False
        backend = _state.backend
        assert backend is not None
        if isinstance(backend, PublishingBackend) and backend.is_running():
            return True
        backend.update_advertising_name()
        started = bool(backend.start())
        flags = _state.status_flags
        if started and flags is not None and isinstance(backend, PublishingBackend):
            backend.publish_status(flags)  # set before the start: serve them now
        return started


@_never_raises(None)
def stop_ble_service() -> None:
    """Bounded shutdown (MUSHPI_BLE_SHUTDOWN_TIMEOUT_MS); the next start builds afresh.

    Does not wait for a start in progress: it stops the backend (which cancels
    that start), then forgets it — even when stopping it failed.
    """
    backend = _state.backend
    if backend is None:
        return
    try:
        backend.stop()
    finally:
        _forget(backend)


def _forget(backend: BLEBackend) -> None:
    with _lifecycle:
        if _state.backend is backend:
            _state.backend = None


# -- publishing (never raises; no-op unless running) ---------------------------------
@_never_raises(None)
def notify_env_packet(temp: float | None, rh: float | None, co2: float | None,
                      light: float | None) -> None:
    """Publish one env packet (°C, %RH, ppm, raw light; any may be None)."""
    backend = _running_backend()
    if backend is not None:
        backend.publish_env(temp, rh, co2, light)


@_never_raises(None)
def update_status_flags(flags: int) -> None:
    """The controller's status bits; the CONNECTIVITY bit (4) is the BLE layer's.

    Flags set before the service runs are kept and served once it starts.
    """
    _state.status_flags = flags
    backend = _running_backend()
    if backend is not None:
        backend.publish_status(flags)


@_never_raises(None)
def notify_actuator_status() -> None:
    """Re-read relay state through ``get_control_data`` and notify it."""
    backend = _running_backend()
    if backend is not None:
        backend.publish_actuator()


@_never_raises(None)
def update_advertising_name() -> None:
    """Recompute ``{prefix}-{Species}{Stage}`` from ``get_stage_data`` and apply it live."""
    backend = _state.backend
    if backend is not None:
        backend.update_advertising_name()


# -- who may steer the room (bluez-dbus backend) -----------------------------------------
def _portal() -> BlePortal | None:
    backend = _state.backend
    portal = getattr(backend, "portal", None)
    if not isinstance(portal, BlePortal):
        log.warning("pairing windows and bonds need the bluez-dbus backend (initialise it first)")
        return None
    return portal


_NO_TIME: float | None = None


@_never_raises(_NO_TIME)
def open_pairing_window(seconds: float = 120.0) -> float | None:
    """Accept new bonds for ``seconds`` (a button on the controller): the wall time it
    closes, or None when it cannot open (wrong backend, or MUSHPI_BLE_PAIRING has no
    window: logged)."""
    portal = _portal()
    return None if portal is None else portal.open_pairing_window(seconds)


@_never_raises(None)
def close_pairing_window() -> None:
    portal = _portal()
    if portal is not None:
        portal.close_pairing_window()


@_never_raises(False)
def approve_bond(address: str) -> bool:
    """Approve a phone bonded without our agent (e.g. before access was bonded): True
    when approved; False when it cannot be (no such bond, open access: logged)."""
    portal = _portal()
    if portal is None:
        return False
    portal.approve_bond(address)
    return True


# -- queries -----------------------------------------------------------------------------
@_never_raises(False)
def is_service_running() -> bool:
    return _running_backend() is not None


@_never_raises(0)
def get_connection_count() -> int:
    """Connected centrals, as bluetoothd reports them (0 when not running)."""
    backend = _running_backend()
    return 0 if backend is None else int(backend.connection_count())


_NO_BACKEND: BLEBackend | None = None


@_never_raises(_NO_BACKEND)
def get_service_instance() -> BLEBackend | None:
    """The running backend (its ``get_status()`` is the status/metrics snapshot), or None."""
    backend = _state.backend
    return backend if _running_backend() is not None else None
