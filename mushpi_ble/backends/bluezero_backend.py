"""The legacy backend: the MushPi service on BlueZero, dbus-python and GLib.

Kept for rollback and for A/B comparison with ``bluez-dbus``, so it keeps
the legacy mechanics where they shape behaviour and performance:

* BlueZero's GLib main loop runs in a thread of its own
  (``mushpi-ble-glib``); every D-Bus call and every controller callback of
  a read or write runs on it, synchronously, with no deadline;
* producers (the controller's threads) encode the payload and put it on one
  bounded queue shared by the notifying characteristics, waiting at most
  ``MUSHPI_BLE_QUEUE_PUT_TIMEOUT_MS``; a full queue applies the
  back-pressure policy;
* one worker thread takes the queue in order and has each notification
  performed on the GLib loop with ``GLib.idle_add`` (BlueZero's
  ``set_value``: a PropertiesChanged on ``Value``), waiting for it.

It serves the same seven characteristics byte for byte through the
project's protocol codecs, and refuses invalid writes like ``bluez-dbus``
(``MUSHPI_BLE_INVALID_WRITE``). What it does not do — deadlines for
controller callbacks, re-registration after a bluetoothd restart, sender
checks — is listed in tests/test_compat_backends.py (KNOWN_DIFFERENCES).

BlueZero only talks to the system bus; ``bus`` other than ``"SYSTEM"`` (an
address, or ``"SESSION"``) is installed as this process's shared system bus
connection for the backend's lifetime. BlueZero's object paths are fixed
(``/ukBaz/bluezero/...``), so one BluezeroBackend runs per process at a time.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mushpi_ble.config import Settings
from mushpi_ble.controller import ControllerCallbacks
from mushpi_ble.dbus.transport import resolve_bus_address
from mushpi_ble.errors import (
    AdapterNotFound,
    BluezUnavailable,
    BusUnavailable,
    RegistrationRefused,
    StartError,
    StartTimeout,
)
from mushpi_ble.metrics import LatencyHistogram
from mushpi_ble.naming import advertised_name
from mushpi_ble.notify import Outcome
from mushpi_ble.protocol import (
    ACTUATOR_STATUS,
    BLUEZ_FAILED,
    CHARACTERISTIC_UUIDS,
    CONTROL_TARGETS,
    DEFAULT_QUERY,
    ENV_MEASUREMENTS,
    OVERRIDE_BITS,
    STAGE_STATE,
    STAGE_THRESHOLDS,
    STATUS_FLAGS,
    ActuatorStatus,
    AppError,
    ControlTargets,
    EnvMeasurement,
    InvalidPayload,
    OverrideBits,
    StageState,
    StatusFlags,
    ThresholdsQuery,
    ThresholdsUpdate,
    decode_write,
    encode_thresholds_answer,
)

from .base import BLEBackend

DEBIAN_BUILD_PACKAGES = (
    "libdbus-1-dev libglib2.0-dev libgirepository1.0-dev libcairo2-dev pkg-config gcc "
    "python3-dev"
)
INSTALL_HINT = (
    "the bluezero backend needs BlueZero, dbus-python and PyGObject: "
    "pip install 'mushpi-ble[bluezero]' (building them needs the Debian packages "
    f"{DEBIAN_BUILD_PACKAGES}; scripts/install-bluezero-deps installs all of it)"
)

try:
    import dbus
    import dbus.bus
    import dbus.exceptions
    import dbus.mainloop.glib
    import dbus.service
    from bluezero import advertisement as bz_advertisement
    from bluezero import constants as bz_constants
    from bluezero import localGATT
    from gi.repository import GLib
except ImportError as _exc:  # select_backend() turns this into a fallback with a warning
    raise ImportError(f"{INSTALL_HINT}; import failed: {_exc}") from _exc

log = logging.getLogger(__name__)

THREAD_NAME = "mushpi-ble-glib"
WORKER_NAME = "mushpi-ble-publisher"
BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
GATT_MANAGER_IFACE = "org.bluez.GattManager1"
AD_MANAGER_IFACE = "org.bluez.LEAdvertisingManager1"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
INVALID_OFFSET = "org.bluez.Error.InvalidOffset"
PUBLISH_TIMEOUT_S = 2.0
"""How long the worker waits for the GLib loop to perform one notification
(the legacy ``MUSHPI_BLE_PUBLISH_TIMEOUT_MS`` default)."""
START_MARGIN_S = 1.0
READ_SNAPSHOT_TTL_S = 5.0
SERVICE_ID = 1
FIXED_SIZES = {
    ENV_MEASUREMENTS: EnvMeasurement.SIZE,
    STATUS_FLAGS: StatusFlags.SIZE,
    ACTUATOR_STATUS: ActuatorStatus.SIZE,
}
_STOP = object()
_ACTIVE_LOCK = threading.Lock()
_active: list[BluezeroBackend] = []
"""The backend whose GLib loop thread is alive: BlueZero's fixed object paths, the
shared system bus and GLib's default main context allow one per process."""


class _QuietProxyIntrospection(logging.Filter):
    """BlueZero gives each characteristic a proxy of its service path on org.bluez, whose
    introspection fails (harmlessly) on every start; keep that out of the error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "/ukBaz/bluezero" not in record.getMessage()


logging.getLogger("dbus.proxies").addFilter(_QuietProxyIntrospection())


class _Counters:
    """Per notifying characteristic; offered = sent + dropped + coalesced + pending."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.offered = 0
        self.sent = 0
        self.dropped = 0
        self.coalesced = 0
        self.latency = LatencyHistogram()

    def as_dict(self) -> dict[str, Any]:
        pending = self.offered - self.sent - self.dropped - self.coalesced
        return {"offered": self.offered, "sent": self.sent, "dropped": self.dropped,
                "coalesced": self.coalesced, "pending": pending, "notified": self.sent,
                "queue_depth": pending, "policy": self.policy,
                "latency": self.latency.snapshot()}


class _Item:
    """One queued notification: the payload as offered, and when."""

    __slots__ = ("name", "offered_at", "payload")

    def __init__(self, name: str, payload: bytes, offered_at: float) -> None:
        self.name = name
        self.payload = payload
        self.offered_at = offered_at


def _dbus_error(name: str, message: str) -> Exception:
    """A D-Bus error reply: dbus-python answers a method with it when raised."""
    error: Exception = dbus.exceptions.DBusException(message, name=name)
    return error


class BluezeroBackend(BLEBackend):
    """The backend contract on BlueZero (see the module docstring)."""

    name = "bluezero"

    def __init__(self, settings: Settings, *, bus: str = "SYSTEM",
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._bus_spec = bus
        self._clock = clock
        self._callbacks = ControllerCallbacks()
        self._lifecycle = threading.Lock()
        self._counters_lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=settings.ble_queue_max_size)
        self._counters = {name: _Counters(settings.policy_for(name))
                          for name in self.notifying_names}
        self._running = False
        self._loop: Any = None
        self._loop_thread: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._conn: Any = None
        self._previous_shared: Any = None
        self._objects: list[Any] = []
        self._app: Any = None
        self._advert: Any = None
        self._chars: dict[str, Any] = {}
        self._signal_matches: list[Any] = []
        self._adapter_path = ""
        self._started_mono = time.monotonic()
        self._status_flags = 0
        self._devices: dict[str, bool] = {}
        self._last_good: dict[str, bytes] = {
            CONTROL_TARGETS: ControlTargets.DEFAULT.pack(),
            STAGE_STATE: StageState.from_controller(None).pack(),
        }
        self._snapshots: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._cursor = (DEFAULT_QUERY.species, DEFAULT_QUERY.stage)
        self.recent_writes: deque[tuple[float, str, bool, str]] = deque(maxlen=50)
        self.advertised_name = ""
        self.registered = False
        self.advertising = False
        self.last_error: str | None = None
        self.started_at: float | None = None
        self.connects = 0
        self.disconnects = 0

    @property
    def notifying_names(self) -> tuple[str, ...]:
        names = [ENV_MEASUREMENTS, STATUS_FLAGS]
        if self.settings.ble_actuator_status_enable:
            names.append(ACTUATOR_STATUS)
        return tuple(names)

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
        thread = self._loop_thread
        return self._running and thread is not None and thread.is_alive()

    def _start(self) -> None:
        with _ACTIVE_LOCK:
            if _active:
                raise StartError("another BluezeroBackend is running in this process (BlueZero "
                                 "allows one: fixed object paths, one GLib default context)")
            _active.append(self)
        self._queue = queue.Queue(maxsize=self.settings.ble_queue_max_size)
        self._devices = {}
        self._started_mono = time.monotonic()
        self.registered = self.advertising = False
        if not self.advertised_name:
            self.advertised_name = self._compute_name()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        deadline = time.monotonic() + self.settings.bus_timeout_s
        self._loop = GLib.MainLoop()
        self._loop_thread = threading.Thread(target=self._loop_main, args=(ready, deadline),
                                             name=THREAD_NAME, daemon=True)
        self._loop_thread.start()
        try:
            ready.result(self.settings.bus_timeout_s + START_MARGIN_S)
        except concurrent.futures.TimeoutError:
            raise StartTimeout(
                f"bluezero backend did not start within {self.settings.bus_timeout_s:.3g} s"
            ) from None
        self._running = True
        self.started_at = self._clock()
        self._worker = threading.Thread(target=self._worker_main, name=WORKER_NAME, daemon=True)
        self._worker.start()
        log.info("BLE service started backend=bluezero adapter=%s name=%s",
                 self._adapter_path, self.advertised_name)

    def _stop_locked(self) -> None:
        thread = self._loop_thread
        if thread is None:
            return
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        self._running = False
        worker = self._worker
        if worker is not None:
            self._put_stop()
            worker.join(max(0.0, min(0.25, deadline - time.monotonic())))
        if thread.is_alive():
            budget = max(0.05, deadline - time.monotonic() - 0.1)
            GLib.idle_add(self._teardown, budget)
            if thread is threading.current_thread():  # stop() from inside a callback
                return
            thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("GLib loop thread still running after shutdown bound_ms=%d",
                        self.settings.ble_shutdown_timeout_ms)
        else:
            self._loop_thread = None
        self._worker = None
        log.info("BLE service stopped backend=bluezero")

    def _put_stop(self) -> None:
        """Wake the worker even when the queue is full (the sentinel may replace an item)."""
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            with self._queue.mutex:
                for item in self._queue.queue:
                    if isinstance(item, _Item):
                        with self._counters_lock:
                            self._counters[item.name].dropped += 1
                self._queue.queue.clear()
                self._queue.queue.append(_STOP)
                self._queue.not_empty.notify()

    # -- the GLib thread ----------------------------------------------------------------
    def _loop_main(self, ready: concurrent.futures.Future[None], deadline: float) -> None:
        """Set up with blocking calls (each within the start deadline), then run the loop.

        RegisterApplication must be asynchronous: bluetoothd calls back into
        GetManagedObjects, which only the running loop can answer.
        """
        try:
            self._setup(ready, deadline)
            self._loop.run()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("GLib loop failed backend=bluezero")
        finally:
            self._running = False
            self._close_bus()
            if not ready.done():
                ready.set_exception(StartError("the GLib loop stopped during start-up"))
            with _ACTIVE_LOCK:
                if self in _active:
                    _active.remove(self)

    def _remaining(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise StartTimeout(f"start-up took longer than {self.settings.bus_timeout_s:.3g} s")
        return left

    def _open_bus(self) -> Any:
        """Connect and install the connection as dbus-python's shared system bus,
        the one BlueZero's objects export themselves on."""
        try:
            address = resolve_bus_address(self._bus_spec)
        except OSError as exc:
            raise BusUnavailable(str(exc)) from exc
        try:
            conn = dbus.bus.BusConnection(address,
                                          mainloop=dbus.mainloop.glib.DBusGMainLoop())
        except dbus.exceptions.DBusException as exc:
            raise BusUnavailable(f"cannot connect to the D-Bus bus at {address}: "
                                 f"{exc.get_dbus_message()}") from exc
        shared = dbus.Bus._shared_instances
        self._previous_shared = shared.get(dbus.Bus.TYPE_SYSTEM)
        shared[dbus.Bus.TYPE_SYSTEM] = conn
        self._conn = conn
        return conn

    def _close_bus(self) -> None:
        conn = self._conn
        if conn is None:
            return
        shared = dbus.Bus._shared_instances
        if shared.get(dbus.Bus.TYPE_SYSTEM) is conn:
            previous = self._previous_shared
            if previous is not None and previous.get_is_connected():
                shared[dbus.Bus.TYPE_SYSTEM] = previous
            else:
                del shared[dbus.Bus.TYPE_SYSTEM]
        self._previous_shared = None
        for obj in self._objects:
            try:
                obj.remove_from_connection()
            except Exception:
                log.debug("object already removed path=%s", getattr(obj, "path", "?"))
        self._objects = []
        for match in self._signal_matches:
            match.remove()
        self._signal_matches = []
        try:
            conn.close()
        except Exception:
            log.debug("closing the bus connection failed", exc_info=True)
        self._conn = None

    def _call(self, path: str, iface: str, member: str, signature: str = "",
              args: tuple[Any, ...] = (), *, timeout: float) -> Any:
        """A blocking call to bluetoothd (set-up only, before the loop runs)."""
        return self._conn.call_blocking(BLUEZ, path, iface, member, signature, args,
                                        timeout=timeout)

    def _call_async(self, path: str, iface: str, member: str, signature: str,
                    args: tuple[Any, ...], reply: Callable[..., None],
                    error: Callable[[Any], None], *, timeout: float) -> None:
        """An asynchronous call to bluetoothd, answered on the loop."""
        self._conn.call_async(BLUEZ, path, iface, member, signature, args, reply, error,
                              timeout=timeout)

    def _setup(self, ready: concurrent.futures.Future[None], deadline: float) -> None:
        conn = self._open_bus()
        if not conn.name_has_owner(BLUEZ):
            raise BluezUnavailable("org.bluez is not on the bus: is bluetoothd running? "
                                   "(systemctl status bluetooth)")
        try:
            objects = self._call("/", OBJECT_MANAGER_IFACE, "GetManagedObjects",
                                 timeout=self._remaining(deadline))
        except dbus.exceptions.DBusException as exc:
            raise BluezUnavailable(f"bluetoothd did not list its objects: {exc}") from exc
        self._adapter_path = path = self._pick_adapter(objects)
        if not bool(objects[path][ADAPTER_IFACE].get("Powered", False)):
            self._call(path, PROPERTIES_IFACE, "Set", "ssv",
                       (ADAPTER_IFACE, "Powered", dbus.Boolean(True)),
                       timeout=self._remaining(deadline))
        self._call(path, PROPERTIES_IFACE, "Set", "ssv",
                   (ADAPTER_IFACE, "Alias", dbus.String(self.advertised_name)),
                   timeout=self._remaining(deadline))
        self._watch_devices(conn, objects)
        self._build_application()

        def registered() -> None:
            self.registered = True
            log.info("GATT application registered backend=bluezero path=%s",
                     self._app.get_path())
            if self.settings.ble_adv_enable:
                self._register_advert(ready, deadline)
            elif not ready.done():
                ready.set_result(None)

        def refused(error: Any) -> None:
            if not ready.done():
                ready.set_exception(RegistrationRefused(
                    f"bluetoothd refused the GATT application: {error.get_dbus_name()}: "
                    f"{error.get_dbus_message()}"))
            self._loop.quit()

        self._call_async(path, GATT_MANAGER_IFACE, "RegisterApplication", "oa{sv}",
                         (self._app.get_path(), {}), registered, refused,
                         timeout=self._remaining(deadline))

    def _register_advert(self, ready: concurrent.futures.Future[None], deadline: float) -> None:
        """Legacy advert: the service UUID only, the name travels in the adapter alias.
        A refusal is logged, not fatal (the GATT service still works)."""
        advert = bz_advertisement.Advertisement(1, "peripheral")
        advert.service_UUIDs = [self.settings.ble_service_uuid]
        self._advert = advert
        self._objects.append(advert)

        def done() -> None:
            self.advertising = True
            if not ready.done():
                ready.set_result(None)

        def failed(error: Any) -> None:
            log.warning("advertisement not registered backend=bluezero error=%s",
                        error.get_dbus_name())
            if not ready.done():
                ready.set_result(None)

        self._call_async(self._adapter_path, AD_MANAGER_IFACE, "RegisterAdvertisement",
                         "oa{sv}", (advert.get_path(), {}), done, failed,
                         timeout=max(0.1, deadline - time.monotonic()))

    def _pick_adapter(self, objects: Mapping[str, Any]) -> str:
        wanted = self.settings.ble_adapter
        adapters = {str(path): ifaces[ADAPTER_IFACE] for path, ifaces in objects.items()
                    if ADAPTER_IFACE in ifaces}
        for path, props in sorted(adapters.items()):
            if path.rsplit("/", 1)[-1] == wanted or str(props.get("Address", "")) == wanted:
                return path
        names = ", ".join(p.rsplit("/", 1)[-1] for p in sorted(adapters)) or "none"
        raise AdapterNotFound(f"adapter {wanted} not found; bluetoothd has: {names}")

    def _teardown(self, budget: float) -> bool:
        """On the loop: unregister (bounded), drop our objects, close the bus, quit.

        Whatever fails on the way, the loop quits: at the latest when ``budget`` is up."""
        loop = self._loop
        finished = False
        outstanding = 0

        def finish() -> bool:
            nonlocal finished
            if not finished:
                finished = True
                try:
                    self._close_bus()
                finally:
                    loop.quit()
            return False

        def answered(*_args: Any) -> None:
            nonlocal outstanding
            outstanding -= 1
            if outstanding == 0:
                finish()

        GLib.timeout_add(max(1, int(budget * 1000)), finish)
        calls: list[tuple[str, str, Any]] = []
        if self.advertising and self._advert is not None:
            calls.append((AD_MANAGER_IFACE, "UnregisterAdvertisement", self._advert.get_path()))
        if self.registered and self._app is not None:
            calls.append((GATT_MANAGER_IFACE, "UnregisterApplication", self._app.get_path()))
        self.registered = self.advertising = False
        try:
            if self._conn is None or not self._adapter_path:
                calls = []
            outstanding = len(calls)
            for iface, member, path in calls:
                self._call_async(self._adapter_path, iface, member, "o", (path,), answered,
                                 answered, timeout=budget)
        except Exception:
            log.exception("unregistering failed backend=bluezero")
            outstanding = 0
        if outstanding == 0:
            finish()
        return False

    # -- the GATT application (BlueZero objects) ----------------------------------------
    def _build_application(self) -> None:
        app = localGATT.Application()
        service = localGATT.Service(SERVICE_ID, self.settings.ble_service_uuid, True)
        uuid = CHARACTERISTIC_UUIDS
        specs: list[tuple[str, list[str], Any, Any]] = [
            (ENV_MEASUREMENTS, ["read", "notify"], None, None),
            (CONTROL_TARGETS, ["read", "write"], self._reader(CONTROL_TARGETS),
             self._writer(CONTROL_TARGETS)),
            (STAGE_STATE, ["read", "write"], self._reader(STAGE_STATE),
             self._writer(STAGE_STATE)),
            (OVERRIDE_BITS, ["write"], None, self._writer(OVERRIDE_BITS)),
            (STATUS_FLAGS, ["read", "notify"], None, None),
        ]
        if self.settings.ble_actuator_status_enable:
            specs.append((ACTUATOR_STATUS, ["read", "notify"], None, None))
        specs.append((STAGE_THRESHOLDS, ["read", "write"], self._reader(STAGE_THRESHOLDS),
                      self._writer(STAGE_THRESHOLDS)))
        objects: list[Any] = [service]
        self._chars = {}
        for chr_id, (name, flags, read, write) in enumerate(specs, start=1):
            initial = list(bytes(FIXED_SIZES.get(name, 0)))
            notify = self._on_notify(name) if "notify" in flags else None
            chrc = localGATT.Characteristic(SERVICE_ID, chr_id, uuid[name], initial, False,
                                            flags, read_callback=read, write_callback=write,
                                            notify_callback=notify)
            self._chars[name] = chrc
            objects.append(chrc)
        for obj in objects:
            app.add_managed_object(obj)
        self._app = app
        self._objects = [app, *objects]

    def _value(self, name: str) -> bytes:
        chrc = self._chars.get(name)
        if chrc is None:
            return b""
        return bytes(chrc.props[bz_constants.GATT_CHRC_IFACE]["Value"])

    # reads ---------------------------------------------------------------------------
    def _reader(self, name: str) -> Callable[[dict[str, Any]], bytes]:
        """A BlueZero read callback honouring ``offset`` (long reads continue the snapshot
        their device read at offset 0). The controller getter runs right here, on the
        GLib thread, as in the legacy server."""
        fetch = {CONTROL_TARGETS: self._fetch_targets, STAGE_STATE: self._fetch_stage,
                 STAGE_THRESHOLDS: self._fetch_thresholds}[name]

        def read(options: dict[str, Any]) -> bytes:
            offset = int(options.get("offset", 0))
            key = (name, str(options.get("device", "")))
            snapshot = self._snapshots.get(key)
            if (offset > 0 and snapshot is not None
                    and time.monotonic() - snapshot[1] < READ_SNAPSHOT_TTL_S):
                value = snapshot[0]
            else:
                value = self._controller_read(name, fetch)
                self._snapshots[key] = (value, time.monotonic())
            if offset > len(value):
                raise _dbus_error(INVALID_OFFSET, f"offset {offset} is past {len(value)} bytes")
            return value[offset:]

        return read

    def _controller_read(self, name: str, fetch: Callable[[], bytes | None]) -> bytes:
        cache_key = (name if name != STAGE_THRESHOLDS
                     else f"{name}:{self._cursor[0]}:{self._cursor[1]}")
        try:
            value = fetch()
        except Exception as exc:
            log.warning("controller read failed characteristic=%s fallback=last_good error=%s",
                        name, exc)
            value = None
        if value is None:
            return self._last_good.get(cache_key, b"")
        self._last_good[cache_key] = value
        return value

    def _fetch_targets(self) -> bytes | None:
        getter = self._callbacks.get_control_targets
        return None if getter is None else ControlTargets.from_controller(getter()).pack()

    def _fetch_stage(self) -> bytes | None:
        getter = self._callbacks.get_stage_data
        return None if getter is None else StageState.from_controller(getter()).pack()

    def _fetch_thresholds(self) -> bytes | None:
        species, stage = self._cursor
        getter = self._callbacks.get_stage_thresholds
        found = getter(species, stage) if getter is not None else None
        return encode_thresholds_answer(species, stage, found)

    # writes --------------------------------------------------------------------------
    def _writer(self, name: str) -> Callable[[bytearray, dict[str, Any]], None]:
        def write(value: bytearray, options: dict[str, Any]) -> None:
            self._write(name, bytes(value), str(options.get("device", "")))

        return write

    def _write(self, name: str, data: bytes, device: str) -> None:
        """Decode and validate, then call the controller's setter on this (GLib) thread.

        A raised DBusException becomes the error reply, so invalid writes are
        refused with the same BlueZ errors (hence ATT codes) as bluez-dbus."""
        try:
            value = decode_write(name, data, now=self._clock)
        except InvalidPayload as exc:
            self._record(name, False, f"rejected {exc.detail}", device)
            log.warning("invalid write characteristic=%s field=%s reason=%s device=%s mode=%s",
                        name, exc.field, exc.reason, device or "-",
                        self.settings.ble_invalid_write)
            if self.settings.ble_invalid_write == "ignore":
                return
            raise _dbus_error(exc.bluez_error, exc.dbus_message) from exc
        callbacks = self._callbacks
        if isinstance(value, ControlTargets):
            self._apply(name, callbacks.set_control_targets, dict(value.to_controller()),
                        device=device)
            self._last_good[CONTROL_TARGETS] = value.pack()
        elif isinstance(value, StageState):
            self._apply(name, callbacks.set_stage_state, dict(value.to_controller()),
                        device=device)
            self._last_good[STAGE_STATE] = value.pack()
        elif isinstance(value, OverrideBits):
            self._apply(name, callbacks.apply_overrides, dict(value.to_controller()),
                        device=device)
            if ACTUATOR_STATUS in self._chars:
                GLib.idle_add(self._refresh_actuator)
        elif isinstance(value, ThresholdsQuery):
            self._cursor = (value.species, value.stage)
        elif isinstance(value, ThresholdsUpdate):
            species, stage, thresholds = value.to_controller()
            ok = self._apply(name, callbacks.set_stage_thresholds, species, stage,
                             dict(thresholds), device=device)
            self._cursor = (species, stage)
            log.info("thresholds update species=%s stage=%s saved=%s", species, stage, bool(ok))
        self._record(name, True, "applied", device)

    def _apply(self, name: str, setter: Callable[..., Any] | None, *args: Any,
               device: str) -> Any:
        if setter is None:
            self._record(name, False, "no controller callback", device)
            raise _dbus_error(BLUEZ_FAILED, f"0x{AppError.CONTROLLER_FAILED:02x}")
        try:
            return setter(*args)
        except Exception as exc:
            self._record(name, False, "controller failed", device)
            log.warning("write failed characteristic=%s error=%s: %s", name,
                        type(exc).__name__, exc)
            raise _dbus_error(BLUEZ_FAILED, f"0x{AppError.CONTROLLER_FAILED:02x}") from exc

    def _refresh_actuator(self) -> bool:
        self.publish_actuator()
        return False

    def _record(self, name: str, accepted: bool, detail: str, device: str) -> None:
        self.recent_writes.append((self._clock(), name, accepted, detail + (
            f" device={device}" if device else "")))

    # subscriptions -------------------------------------------------------------------
    def _on_notify(self, name: str) -> Callable[[bool, Any], None]:
        """BlueZero calls this on every StartNotify (its "already notifying" check never
        matches a dbus.Boolean), so each subscriber gets the current value at once."""
        def changed(notifying: bool, chrc: Any) -> None:
            if not notifying:
                return
            if name == STATUS_FLAGS:
                value = StatusFlags(self._status_flags).with_connectivity(True).pack()
            elif name == ACTUATOR_STATUS:
                value = self._value(name)
                getter = self._callbacks.get_control_data
                if getter is not None:
                    try:
                        value = ActuatorStatus.from_controller(getter()).pack()
                    except Exception as exc:
                        log.warning("actuator read on subscribe failed error=%s", exc)
            else:
                value = self._value(name)
            chrc.set_value(list(value))

        return changed

    # centrals --------------------------------------------------------------------------
    def _watch_devices(self, conn: Any, objects: Mapping[str, Any]) -> None:
        prefix = self._adapter_path + "/"
        for path, ifaces in objects.items():
            if str(path).startswith(prefix) and DEVICE_IFACE in ifaces:
                self._devices[str(path)] = bool(ifaces[DEVICE_IFACE].get("Connected", False))

        def added(path: Any, ifaces: Any) -> None:
            if str(path).startswith(prefix) and DEVICE_IFACE in ifaces:
                self._set_device(str(path), bool(ifaces[DEVICE_IFACE].get("Connected", False)))

        def removed(path: Any, ifaces: Any) -> None:
            if DEVICE_IFACE in ifaces:
                self._set_device(str(path), None)

        def changed(iface: Any, props: Any, _invalidated: Any, path: Any = None) -> None:
            if iface == DEVICE_IFACE and "Connected" in props and str(path).startswith(prefix):
                self._set_device(str(path), bool(props["Connected"]))

        self._signal_matches = [
            conn.add_signal_receiver(added, "InterfacesAdded", OBJECT_MANAGER_IFACE, BLUEZ),
            conn.add_signal_receiver(removed, "InterfacesRemoved", OBJECT_MANAGER_IFACE, BLUEZ),
            conn.add_signal_receiver(changed, "PropertiesChanged", PROPERTIES_IFACE, BLUEZ,
                                     path_keyword="path", arg0=DEVICE_IFACE),
        ]

    def _set_device(self, path: str, connected: bool | None) -> None:
        before = self.connection_count()
        was = self._devices.get(path, False)
        if connected is None:
            self._devices.pop(path, None)
        else:
            self._devices[path] = connected
        now = bool(connected)
        if now and not was:
            self.connects += 1
            log.info("central connected backend=bluezero path=%s", path)
        elif was and not now:
            self.disconnects += 1
            log.info("central disconnected backend=bluezero path=%s", path)
        if (before > 0) != (self.connection_count() > 0):
            self._offer_status()

    def connection_count(self) -> int:
        return sum(1 for connected in list(self._devices.values()) if connected)

    # -- publishing (any thread) ---------------------------------------------------------
    @property
    def uptime_ms(self) -> int:
        return int((time.monotonic() - self._started_mono) * 1000)

    def publish_env(self, temperature: object, humidity: object, co2: object,
                    light: object) -> Outcome:
        return self._guard(lambda: self._offer(ENV_MEASUREMENTS, EnvMeasurement.from_readings(
            temperature, humidity, co2, light, self.uptime_ms).pack()))

    def publish_status(self, flags: object) -> Outcome:
        """Controller bits; the CONNECTIVITY bit is this layer's."""
        def offer() -> Outcome:
            self._status_flags = StatusFlags.from_controller(flags).flags
            return self._offer_status()

        return self._guard(offer)

    def _offer_status(self) -> Outcome:
        packet = StatusFlags(self._status_flags).with_connectivity(self.connection_count() > 0)
        return self._offer(STATUS_FLAGS, packet.pack())

    def publish_actuator(self, control_data: Mapping[str, Any] | None = None) -> Outcome:
        """Relay state; without an argument it is read through ``get_control_data``."""
        def offer() -> Outcome:
            if ACTUATOR_STATUS not in self._counters:
                return Outcome.DROPPED
            data: object = control_data
            if data is None:
                getter = self._callbacks.get_control_data
                data = getter() if getter is not None else None
            packet = ActuatorStatus.from_controller(data if isinstance(data, Mapping) else None)
            return self._offer(ACTUATOR_STATUS, packet.pack())

        return self._guard(offer)

    def _guard(self, publish: Callable[[], Outcome]) -> Outcome:
        if not self.is_running():
            return Outcome.NOT_RUNNING
        try:
            return publish()
        except Exception:
            log.exception("publish failed backend=bluezero")
            return Outcome.DROPPED

    def _offer(self, name: str, payload: bytes) -> Outcome:
        """The legacy hand-over: a bounded put with a timeout, then the policy."""
        counters = self._counters[name]
        item = _Item(name, payload, time.monotonic())
        with self._counters_lock:
            counters.offered += 1
        try:
            self._queue.put(item, timeout=self.settings.queue_put_timeout_s)
            return Outcome.QUEUED
        except queue.Full:
            pass
        policy = counters.policy
        if policy == "coalesce":
            with self._queue.mutex:
                for queued in reversed(self._queue.queue):
                    if isinstance(queued, _Item) and queued.name == name:
                        queued.payload = payload
                        with self._counters_lock:
                            counters.coalesced += 1
                        return Outcome.COALESCED
        elif policy == "drop_oldest":
            try:
                oldest = self._queue.get_nowait()
            except queue.Empty:
                oldest = None
            if isinstance(oldest, _Item):
                with self._counters_lock:
                    self._counters[oldest.name].dropped += 1
            elif oldest is _STOP:
                self._put_stop()
            try:
                self._queue.put_nowait(item)
                return Outcome.QUEUED
            except queue.Full:
                pass
        with self._counters_lock:
            counters.dropped += 1
        return Outcome.DROPPED

    def _worker_main(self) -> None:
        """One notification at a time, each performed on the GLib loop."""
        while True:
            item = self._queue.get()
            if item is _STOP or not self._running:
                return
            done = threading.Event()
            GLib.idle_add(self._emit, item, done)
            if not done.wait(PUBLISH_TIMEOUT_S):
                log.warning("slow BLE publish characteristic=%s waited_s=%.3g", item.name,
                            PUBLISH_TIMEOUT_S)
            elapsed = time.monotonic() - item.offered_at
            if elapsed > self.settings.log_slow_publish_s:
                log.warning("slow BLE publish characteristic=%s ms=%d", item.name,
                            int(elapsed * 1000))

    def _emit(self, item: _Item, done: threading.Event) -> bool:
        """On the loop: BlueZero's set_value stores the value and emits PropertiesChanged."""
        counters = self._counters[item.name]
        sent = False
        try:
            chrc = self._chars.get(item.name)
            if chrc is not None and self._conn is not None:
                chrc.set_value(list(item.payload))
                sent = True
        except Exception:
            log.exception("notification failed characteristic=%s", item.name)
        finally:
            with self._counters_lock:
                if sent:
                    counters.sent += 1
                else:
                    counters.dropped += 1
            if sent:
                counters.latency.observe(time.monotonic() - item.offered_at)
            done.set()
        return False

    # -- contract: the rest ------------------------------------------------------------
    def notify(self, characteristic_name: str, devices: Iterable[str] | None = None) -> None:
        if devices:
            log.debug("per-device notify is not available over PropertiesChanged; "
                      "notifying every subscriber characteristic=%s", characteristic_name)
        if characteristic_name == ENV_MEASUREMENTS:
            getter = self._callbacks.get_sensor_data
            data = getter() if getter is not None else None
            d = data if isinstance(data, Mapping) else {}
            self.publish_env(d.get("temperature"), d.get("humidity"), d.get("co2"),
                             d.get("light"))
        elif characteristic_name == STATUS_FLAGS:
            self._guard(self._offer_status)
        elif characteristic_name == ACTUATOR_STATUS:
            self.publish_actuator()
        else:
            log.warning("notify: %r is not a notifying characteristic", characteristic_name)

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
                GLib.idle_add(self._apply_alias, self.advertised_name)
        except Exception:
            log.exception("advertising name update failed backend=bluezero")

    def _apply_alias(self, name: str) -> bool:
        if self._conn is not None and self._adapter_path:
            self._call_async(self._adapter_path, PROPERTIES_IFACE, "Set", "ssv",
                             (ADAPTER_IFACE, "Alias", dbus.String(name)),
                             lambda: log.info("advertised name set name=%s", name),
                             lambda e: log.warning("alias not set error=%s", e),
                             timeout=self.settings.bus_timeout_s)
        return False

    def get_status(self) -> dict[str, Any]:
        """The README's get_status() keys, as far as the legacy design knows them."""
        with self._counters_lock:
            characteristics = {name: c.as_dict() for name, c in self._counters.items()}
        subscriptions: dict[str, bool] = {}
        for name in self.notifying_names:
            chrc = self._chars.get(name)
            if chrc is not None:
                notifying = chrc.props[bz_constants.GATT_CHRC_IFACE]["Notifying"]
                subscriptions[name] = bool(notifying)
        devices = [{"path": p, "connected": c} for p, c in list(self._devices.items())]
        return {
            "backend": self.name,
            "running": self.is_running(),
            "registered": self.registered,
            "advertising": self.advertising,
            "advertised_name": self.advertised_name,
            "advert_left_out": [],
            "adapter": self._adapter_path or None,
            "bluez_owner": "",
            "connected_devices": devices,
            "connection_count": self.connection_count(),
            "subscriptions": subscriptions,
            "characteristics": characteristics,
            "queue_depth": self._queue.qsize(),
            "connects": self.connects,
            "disconnects": self.disconnects,
            "restarts": 0,
            "last_recovery_s": None,
            "last_error": self.last_error,
            "start_error": self.last_error,
            "started_at": self.started_at,
            "recent_writes": [
                {"at": at, "characteristic": name, "accepted": ok, "detail": detail}
                for at, name, ok, detail in list(self.recent_writes)
            ],
        }

