"""``BluezeroBackend``: the backend contract, put together from this package's parts.

It owns the lifetime (start, stop, the one-per-process rule) and the publishing API,
and hands the rest to the parts: the bus (bus.py), the GLib loop thread (loop.py),
the registration with bluetoothd (session.py), the GATT objects (gatt.py), the
connected centrals (devices.py) and the notification queue (publisher.py).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from mushpi_ble.config import Settings
from mushpi_ble.controller import ControllerCallbacks
from mushpi_ble.core import WriteEvent, core_for
from mushpi_ble.errors import StartError, StartTimeout
from mushpi_ble.naming import advertised_name
from mushpi_ble.notify import Outcome
from mushpi_ble.protocol import ACTUATOR_STATUS, ENV_MEASUREMENTS, STATUS_FLAGS

from ..base import BLEBackend
from .bus import SharedSystemBus
from .deps import GLib
from .devices import Centrals
from .gatt import GattService
from .loop import LoopThread, claim
from .publisher import Publisher
from .session import BluezSession

log = logging.getLogger(__name__)

START_MARGIN_S = 1.0


class BluezeroBackend(BLEBackend):
    """The backend contract on BlueZero (see the package docstring)."""

    name = "bluezero"

    def __init__(self, settings: Settings, *, bus: str = "SYSTEM",
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._bus_spec = bus
        self._clock = clock
        self._callbacks = ControllerCallbacks()
        self._lifecycle = threading.Lock()
        self._status_lock = threading.Lock()
        self._running = False
        self.core = core_for(settings, wall_clock=clock)
        self.advertised_name = ""
        self.last_error: str | None = None
        self.started_at: float | None = None
        self._publisher = Publisher(settings, self.notifying_names, deliver=self._deliver,
                                    active=lambda: self._running)
        self._centrals = Centrals(on_connectivity_change=lambda: self._offer_status())
        self._gatt = GattService(self.core, callbacks=lambda: self._callbacks,
                                 service_uuid=settings.ble_service_uuid,
                                 refresh_actuator=lambda: self.publish_actuator())
        self._bus = SharedSystemBus(bus)
        self._session = BluezSession(settings, self._bus, self._gatt, self._centrals)
        self._glib = LoopThread()

    @property
    def notifying_names(self) -> tuple[str, ...]:
        return self.core.notifying

    @property
    def recent_writes(self) -> deque[WriteEvent]:
        return self.core.recent_writes

    @property
    def registered(self) -> bool:
        return self._session.registered

    @property
    def advertising(self) -> bool:
        return self._session.advertising

    @property
    def connects(self) -> int:
        return self._centrals.connects

    @property
    def disconnects(self) -> int:
        return self._centrals.disconnects

    # -- contract: lifetime ------------------------------------------------------------
    def initialize(self) -> bool:
        """Nothing to prepare: the imports already proved the extra is installed."""
        return True

    def set_callbacks(self, callbacks: Mapping[str, Any]) -> None:
        self._callbacks = self._callbacks.merged(dict(callbacks))

    @property
    def callbacks(self) -> ControllerCallbacks:
        return self._callbacks

    def start(self) -> bool:
        """Register and advertise; False with ``last_error`` set on any failure."""
        with self._lifecycle:
            if self.is_running():
                return True
            try:
                self._start()
            except StartError as exc:
                self.last_error = str(exc)
                log.error("BLE start failed backend=bluezero: %s", exc)
                self._stop_locked()
                return False
            except Exception as exc:  # the contract: False, never an exception
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("BLE start failed unexpectedly backend=bluezero")
                self._stop_locked()
                return False
            self.last_error = None
            return True

    def stop(self) -> None:
        """Unregister, stop the worker and the loop within MUSHPI_BLE_SHUTDOWN_TIMEOUT_MS."""
        with self._lifecycle:
            try:
                self._stop_locked()
            except Exception:
                log.exception("BLE stop failed backend=bluezero")

    def is_running(self) -> bool:
        return self._running and self._glib.is_alive()

    def _start(self) -> None:
        claim(self)
        self._publisher.reset()
        self._centrals.reset()
        self.core.started()
        self._session.registered = self._session.advertising = False
        if not self.advertised_name:
            self.advertised_name = self._compute_name()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        deadline = time.monotonic() + self.settings.bus_timeout_s

        def setup() -> None:
            self._session.setup(ready, deadline, self._glib.loop,
                                alias=lambda: self.advertised_name)

        self._glib.start(self, setup, ready, on_error=self._on_loop_error,
                         on_exit=self._on_loop_exit)
        try:
            ready.result(self.settings.bus_timeout_s + START_MARGIN_S)
        except concurrent.futures.TimeoutError:
            raise StartTimeout(
                f"bluezero backend did not start within {self.settings.bus_timeout_s:.3g} s"
            ) from None
        self._running = True
        self.started_at = self._clock()
        self._publisher.start_worker()
        log.info("BLE service started backend=bluezero adapter=%s name=%s",
                 self._session.adapter_path, self.advertised_name)

    def _on_loop_error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.exception("GLib loop failed backend=bluezero")

    def _on_loop_exit(self) -> None:
        self._running = False
        self._bus.close()

    def _stop_locked(self) -> None:
        if self._glib.thread is None:
            return
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        self._running = False
        self._publisher.stop_worker(deadline)
        if not self._glib.stop(self._teardown, deadline,
                               bound_ms=self.settings.ble_shutdown_timeout_ms):
            return
        self._publisher.forget_worker()
        log.info("BLE service stopped backend=bluezero")

    def _teardown(self, budget: float) -> bool:
        return self._session.teardown(budget, self._glib.loop)

    def connection_count(self) -> int:
        return self._centrals.count()

    # -- publishing (any thread) ---------------------------------------------------------
    @property
    def uptime_ms(self) -> int:
        return self.core.uptime_ms

    def publish_env(self, temperature: object, humidity: object, co2: object,
                    light: object) -> Outcome:
        def offer() -> Outcome:
            packet = self.core.env_packet(temperature, humidity, co2, light)
            return (Outcome.INVALID if packet is None
                    else self._publisher.offer(ENV_MEASUREMENTS, packet))

        return self._guard(offer)

    def publish_status(self, flags: object) -> Outcome:
        """Controller bits; the CONNECTIVITY bit is this layer's."""
        def offer() -> Outcome:
            self.core.set_status_flags(flags)
            return self._offer_status()

        return self._guard(offer)

    def _offer_status(self) -> Outcome:
        with self._status_lock:
            self.core.set_connected(self.connection_count() > 0)
            return self._publisher.offer(STATUS_FLAGS, self.core.status_packet())

    def publish_actuator(self, control_data: Mapping[str, Any] | None = None) -> Outcome:
        """Relay state; without an argument it is read through ``get_control_data``."""
        def offer() -> Outcome:
            if not self._publisher.handles(ACTUATOR_STATUS):
                return Outcome.DROPPED
            data: object = control_data
            if data is None:
                getter = self._callbacks.get_control_data
                data = getter() if getter is not None else None
            return self._publisher.offer(ACTUATOR_STATUS, self.core.actuator_packet(data))

        return self._guard(offer)

    def _guard(self, publish: Callable[[], Outcome]) -> Outcome:
        if not self.is_running():
            return Outcome.NOT_RUNNING
        try:
            return publish()
        except Exception:
            log.exception("publish failed backend=bluezero")
            return Outcome.DROPPED

    def _deliver(self, name: str, payload: bytes) -> bool:
        """On the loop, for the publisher's worker: notify while the bus is open."""
        if self._bus.conn is None:
            return False
        return self._gatt.set_value(name, payload)

    # -- contract: the rest ------------------------------------------------------------
    def republish_status(self) -> Outcome:
        return self._guard(self._offer_status)

    def _compute_name(self) -> str:
        getter = self._callbacks.get_stage_data
        try:
            data = getter() if getter is not None else None
        except Exception as exc:
            log.warning("get_stage_data failed for the advertised name error=%s", exc)
            data = None
        return advertised_name(self.settings.ble_name_prefix, data)

    def update_advertising_name(self, name: str | None = None) -> None:
        """Set the adapter alias (the legacy advert carries no name of its own)."""
        try:
            self.advertised_name = name if name is not None else self._compute_name()
            if self.is_running():
                GLib.idle_add(self._session.apply_alias, self.advertised_name)
        except Exception:
            log.exception("advertising name update failed backend=bluezero")

    def get_status(self) -> dict[str, Any]:
        """The README's get_status() keys, as far as the legacy design knows them."""
        characteristics = self._publisher.stats()
        subscriptions = self._gatt.subscriptions(self.notifying_names)
        devices = self._centrals.listing()
        return {
            "backend": self.name,
            "running": self.is_running(),
            "registered": self.registered,
            "advertising": self.advertising,
            "advertised_name": self.advertised_name,
            "advert_left_out": [],
            "adapter": self._session.adapter_path or None,
            "bluez_owner": "",
            "connected_devices": devices,
            "connection_count": self.connection_count(),
            "subscriptions": subscriptions,
            "characteristics": characteristics,
            "queue_depth": self._publisher.depth(),
            "connects": self.connects,
            "disconnects": self.disconnects,
            "restarts": 0,
            "last_recovery_s": None,
            "last_error": self.last_error,
            "start_error": self.last_error,
            "started_at": self.started_at,
            "recent_writes": [
                {"at": w.at, "characteristic": w.characteristic, "accepted": w.accepted,
                 "detail": w.detail + (f" device={w.device}" if w.device else "")}
                for w in list(self.recent_writes)
            ],
        }
