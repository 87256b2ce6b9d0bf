"""The MushPi GATT service as BlueZero objects, and its read, write and subscribe callbacks.

The callbacks run on the GLib loop thread, synchronously and with no deadline: the
controller's getters and setters are called right there, as in the legacy server.
Payloads go through the project's protocol codecs, so the seven characteristics are
byte for byte those of ``bluez-dbus``, and invalid writes are refused with the same
BlueZ errors (``MUSHPI_BLE_INVALID_WRITE``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from mushpi_ble.config import Settings
from mushpi_ble.controller import ControllerCallbacks
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

from .deps import GLib, bz_constants, dbus, localGATT

log = logging.getLogger(__name__)

INVALID_OFFSET = "org.bluez.Error.InvalidOffset"
READ_SNAPSHOT_TTL_S = 5.0
SERVICE_ID = 1
FIXED_SIZES = {
    ENV_MEASUREMENTS: EnvMeasurement.SIZE,
    STATUS_FLAGS: StatusFlags.SIZE,
    ACTUATOR_STATUS: ActuatorStatus.SIZE,
}

WriteRecord = tuple[float, str, bool, str]


class _QuietProxyIntrospection(logging.Filter):
    """BlueZero gives each characteristic a proxy of its service path on org.bluez, whose
    introspection fails (harmlessly) on every start; keep that out of the error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "/ukBaz/bluezero" not in record.getMessage()


logging.getLogger("dbus.proxies").addFilter(_QuietProxyIntrospection())


def dbus_error(name: str, message: str) -> Exception:
    """A D-Bus error reply: dbus-python answers a method with it when raised."""
    error: Exception = dbus.exceptions.DBusException(message, name=name)
    return error


class GattService:
    """The application, its service and characteristics, and what they answer.

    ``callbacks()`` gives the controller callbacks in force, ``status_flags()`` the
    controller's status bits; ``refresh_actuator()`` publishes actuator_status (after an
    override write); accepted and refused writes are appended to ``recent_writes``."""

    def __init__(self, settings: Settings, *, callbacks: Callable[[], ControllerCallbacks],
                 clock: Callable[[], float], recent_writes: deque[WriteRecord],
                 status_flags: Callable[[], int],
                 refresh_actuator: Callable[[], object]) -> None:
        self.settings = settings
        self._callbacks = callbacks
        self._clock = clock
        self._recent_writes = recent_writes
        self._status_flags = status_flags
        self._publish_actuator = refresh_actuator
        self.app: Any = None
        self.chars: dict[str, Any] = {}
        self._last_good: dict[str, bytes] = {
            CONTROL_TARGETS: ControlTargets.DEFAULT.pack(),
            STAGE_STATE: StageState.from_controller(None).pack(),
        }
        self._snapshots: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._cursor = (DEFAULT_QUERY.species, DEFAULT_QUERY.stage)

    def build(self) -> list[Any]:
        """Make the BlueZero objects (they export themselves on the shared system bus);
        returns all of them, the application first."""
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
        self.chars = {}
        for chr_id, (name, flags, read, write) in enumerate(specs, start=1):
            initial = list(bytes(FIXED_SIZES.get(name, 0)))
            notify = self._on_notify(name) if "notify" in flags else None
            chrc = localGATT.Characteristic(SERVICE_ID, chr_id, uuid[name], initial, False,
                                            flags, read_callback=read, write_callback=write,
                                            notify_callback=notify)
            self.chars[name] = chrc
            objects.append(chrc)
        for obj in objects:
            app.add_managed_object(obj)
        self.app = app
        return [app, *objects]

    def value(self, name: str) -> bytes:
        chrc = self.chars.get(name)
        if chrc is None:
            return b""
        return bytes(chrc.props[bz_constants.GATT_CHRC_IFACE]["Value"])

    def set_value(self, name: str, payload: bytes) -> bool:
        """On the loop: BlueZero's set_value stores the value and emits PropertiesChanged.
        False when there is no such characteristic."""
        chrc = self.chars.get(name)
        if chrc is None:
            return False
        chrc.set_value(list(payload))
        return True

    def subscriptions(self, names: Iterable[str]) -> dict[str, bool]:
        subscriptions: dict[str, bool] = {}
        for name in names:
            chrc = self.chars.get(name)
            if chrc is not None:
                notifying = chrc.props[bz_constants.GATT_CHRC_IFACE]["Notifying"]
                subscriptions[name] = bool(notifying)
        return subscriptions

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
                raise dbus_error(INVALID_OFFSET, f"offset {offset} is past {len(value)} bytes")
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
        getter = self._callbacks().get_control_targets
        return None if getter is None else ControlTargets.from_controller(getter()).pack()

    def _fetch_stage(self) -> bytes | None:
        getter = self._callbacks().get_stage_data
        return None if getter is None else StageState.from_controller(getter()).pack()

    def _fetch_thresholds(self) -> bytes | None:
        species, stage = self._cursor
        getter = self._callbacks().get_stage_thresholds
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
            raise dbus_error(exc.bluez_error, exc.dbus_message) from exc
        callbacks = self._callbacks()
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
            if ACTUATOR_STATUS in self.chars:
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
            raise dbus_error(BLUEZ_FAILED, f"0x{AppError.CONTROLLER_FAILED:02x}")
        try:
            return setter(*args)
        except Exception as exc:
            self._record(name, False, "controller failed", device)
            log.warning("write failed characteristic=%s error=%s: %s", name,
                        type(exc).__name__, exc)
            raise dbus_error(BLUEZ_FAILED, f"0x{AppError.CONTROLLER_FAILED:02x}") from exc

    def _refresh_actuator(self) -> bool:
        self._publish_actuator()
        return False

    def _record(self, name: str, accepted: bool, detail: str, device: str) -> None:
        self._recent_writes.append((self._clock(), name, accepted, detail + (
            f" device={device}" if device else "")))

    # subscriptions -------------------------------------------------------------------
    def _on_notify(self, name: str) -> Callable[[bool, Any], None]:
        """BlueZero calls this on every StartNotify (its "already notifying" check never
        matches a dbus.Boolean), so each subscriber gets the current value at once."""
        def changed(notifying: bool, chrc: Any) -> None:
            if not notifying:
                return
            if name == STATUS_FLAGS:
                value = StatusFlags(self._status_flags()).with_connectivity(True).pack()
            elif name == ACTUATOR_STATUS:
                value = self.value(name)
                getter = self._callbacks().get_control_data
                if getter is not None:
                    try:
                        value = ActuatorStatus.from_controller(getter()).pack()
                    except Exception as exc:
                        log.warning("actuator read on subscribe failed error=%s", exc)
            else:
                value = self.value(name)
            chrc.set_value(list(value))

        return changed
