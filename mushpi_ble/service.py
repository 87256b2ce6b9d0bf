"""The MushPi GATT service: protocol codecs and controller callbacks bound
to characteristics, with one notification mailbox per notifying one.

Reads of published values (env, status, actuator) answer from the last
published payload. Reads backed by the controller ask its getter in a
worker thread under the handler deadline and fall back to the last good
value. Writes are decoded and validated first; an invalid write is refused
(or, in ``ignore`` mode, acknowledged) and never reaches the controller.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .config import Settings
from .controller import (
    ControllerCallbacks,
    ControllerFailure,
    ControllerTimeout,
    call_in_thread,
)
from .gatt import (
    Characteristic,
    CharacteristicState,
    GattApplication,
    GattError,
    ReadRequest,
    Service,
    WriteRequest,
    failed,
)
from .notify import Mailbox, Outcome, run_notifier
from .protocol import (
    ACTUATOR_STATUS,
    CHARACTERISTIC_UUIDS,
    CONTROL_TARGETS,
    DEFAULT_QUERY,
    ENV_MEASUREMENTS,
    MAX_THRESHOLDS_PAYLOAD,
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
    encode_env,
    encode_thresholds_answer,
)

log = logging.getLogger(__name__)

FIXED_SIZES = {
    ENV_MEASUREMENTS: EnvMeasurement.SIZE,
    STATUS_FLAGS: StatusFlags.SIZE,
    ACTUATOR_STATUS: ActuatorStatus.SIZE,
}
READ_SNAPSHOT_TTL_S = 5.0
MAX_REMEMBERED = 64


@attrs.frozen
class WriteEvent:
    """One write as the service saw it, for status pages and live views."""

    at: float
    characteristic: str
    accepted: bool
    detail: str
    device: str = ""


@attrs.define
class ThresholdsCursor:
    """The pair the next stage_thresholds read answers (the last query)."""

    species: str
    stage: str


class MushPiService:
    """Owns the MushPi characteristics' state; thread-safe publishing API."""

    def __init__(
        self,
        settings: Settings,
        callbacks: Callable[[], ControllerCallbacks],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._callbacks = callbacks
        self._clock = clock
        self._started = time.monotonic()
        self._handler_timeout = settings.handler_timeout_s
        self.mailboxes: dict[str, Mailbox] = {
            name: Mailbox(
                name,
                capacity=settings.ble_queue_max_size,
                policy=settings.policy_for(name),
                put_timeout=settings.queue_put_timeout_s,
            )
            for name in self.notifying_names
        }
        self._env_box = self.mailboxes[ENV_MEASUREMENTS]
        self._status_flags = 0
        self._connected = False
        self._status_lock = threading.Lock()
        self._defaults: dict[str, bytes] = {
            CONTROL_TARGETS: ControlTargets.DEFAULT.pack(),
            STAGE_STATE: StageState.from_controller(None).pack(),
        }
        self._last_good: dict[str, bytes] = {}
        self._snapshots: dict[tuple[str, str], tuple[bytes, float]] = {}
        self.thresholds_cursor = ThresholdsCursor(DEFAULT_QUERY.species, DEFAULT_QUERY.stage)
        self.recent_writes: deque[WriteEvent] = deque(maxlen=50)
        self.app: GattApplication | None = None
        self._nursery: trio.Nursery | None = None

    # -- description -----------------------------------------------------------
    @property
    def notifying_names(self) -> tuple[str, ...]:
        names = [ENV_MEASUREMENTS, STATUS_FLAGS]
        if self.settings.ble_actuator_status_enable:
            names.append(ACTUATOR_STATUS)
        return tuple(names)

    def definition(self) -> Service:
        """The service as data, in the characteristic order of the protocol table."""
        uuid = CHARACTERISTIC_UUIDS
        chars = [
            Characteristic(uuid[ENV_MEASUREMENTS], ("read", "notify"), name=ENV_MEASUREMENTS,
                           read=self._published_reader(ENV_MEASUREMENTS),
                           on_subscribe=self._push_current(ENV_MEASUREMENTS)),
            Characteristic(uuid[CONTROL_TARGETS], ("read", "write"), name=CONTROL_TARGETS,
                           read=self._read_control_targets, write=self._write_control_targets),
            Characteristic(uuid[STAGE_STATE], ("read", "write"), name=STAGE_STATE,
                           read=self._read_stage_state, write=self._write_stage_state),
            Characteristic(uuid[OVERRIDE_BITS], ("write",), name=OVERRIDE_BITS,
                           write=self._write_overrides),
            Characteristic(uuid[STATUS_FLAGS], ("read", "notify"), name=STATUS_FLAGS,
                           read=self._read_status,
                           on_subscribe=self._push_status_on_subscribe),
        ]
        if self.settings.ble_actuator_status_enable:
            chars.append(
                Characteristic(uuid[ACTUATOR_STATUS], ("read", "notify"), name=ACTUATOR_STATUS,
                               read=self._published_reader(ACTUATOR_STATUS),
                               on_subscribe=self._push_actuator_on_subscribe)
            )
        chars.append(
            Characteristic(uuid[STAGE_THRESHOLDS], ("read", "write"), name=STAGE_THRESHOLDS,
                           read=self._read_thresholds, write=self._write_thresholds,
                           max_write_length=MAX_THRESHOLDS_PAYLOAD)
        )
        return Service(self.settings.ble_service_uuid, tuple(chars), name="mushpi")

    # -- wiring to a running application ------------------------------------------
    def attach(self, app: GattApplication, nursery: trio.Nursery) -> None:
        """Start one notifier task per notifying characteristic and open the mailboxes."""
        self.app = app
        self._nursery = nursery
        self._started = time.monotonic()  # env uptime counts from the service's start
        token = trio.lowlevel.current_trio_token()
        for name, mailbox in self.mailboxes.items():
            state = app.state(name)
            if name == STATUS_FLAGS:  # flags the controller set before the start count
                state.value = StatusFlags(self._status_flags).pack()
            elif not state.value:
                state.value = bytes(FIXED_SIZES[name])
            nursery.start_soon(self._notifier, mailbox, state)
            mailbox.attach(token)

    def detach(self) -> None:
        for mailbox in self.mailboxes.values():
            mailbox.detach()

    async def _notifier(self, mailbox: Mailbox, state: CharacteristicState) -> None:
        app = self.app
        assert app is not None
        await run_notifier(mailbox, lambda payload: app.notify(state, payload),
                           slow_publish_s=self.settings.log_slow_publish_s)

    # -- publishing (any thread; never waits for the loop) ----------------------
    @property
    def uptime_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    def publish_env(self, temperature: object, humidity: object, co2: object,
                    light: object) -> Outcome:
        uptime_ms = int((time.monotonic() - self._started) * 1000)
        return self._env_box.offer(encode_env(temperature, humidity, co2, light, uptime_ms))

    def publish_status(self, flags: object) -> Outcome:
        """Controller status bits; the CONNECTIVITY bit is the BLE layer's."""
        self._status_flags = StatusFlags.from_controller(flags).flags
        return self._offer_status()

    def set_connected(self, connected: bool) -> Outcome:
        if connected == self._connected:
            return Outcome.QUEUED if self.app else Outcome.NOT_RUNNING
        self._connected = connected
        return self._offer_status()

    @property
    def connected(self) -> bool:
        return self._connected

    def _offer_status(self) -> Outcome:
        # the controller's thread sets the flags, the loop the connectivity bit:
        # build and queue under one lock so the last packet queued is the newest
        with self._status_lock:
            packet = StatusFlags(self._status_flags).with_connectivity(self._connected)
            return self.mailboxes[STATUS_FLAGS].offer(packet.pack())

    def publish_actuator(self, control_data: object) -> Outcome:
        mailbox = self.mailboxes.get(ACTUATOR_STATUS)
        if mailbox is None:
            return Outcome.DROPPED
        data = control_data if isinstance(control_data, dict) else None
        return mailbox.offer(ActuatorStatus.from_controller(data).pack())

    def publish_raw(self, name: str, payload: bytes) -> Outcome:
        """A ready payload for a notifying characteristic; sizes are checked."""
        mailbox = self.mailboxes.get(name)
        if mailbox is None:
            raise KeyError(f"{name!r} is not a notifying characteristic here")
        size = FIXED_SIZES[name]
        if len(payload) != size:
            raise ValueError(f"{name} payloads are {size} bytes, not {len(payload)}")
        if name == STATUS_FLAGS:
            return self.publish_status(StatusFlags.unpack(payload).flags)
        return mailbox.offer(bytes(payload))

    # -- reads ---------------------------------------------------------------------
    def _published_reader(self, name: str) -> Callable[[ReadRequest], Any]:
        async def read(_request: ReadRequest) -> bytes:
            assert self.app is not None
            return self.app.state(name).value

        return read

    async def _read_status(self, request: ReadRequest) -> bytes:
        """The controller's last flags with the live CONNECTIVITY bit (the reader
        itself is connected, even before bluetoothd's Device1 signal arrives)."""
        connected = self._connected or bool(request.device)
        return StatusFlags(self._status_flags).with_connectivity(connected).pack()

    async def _controller_read(self, name: str, request: ReadRequest,
                               fetch: Callable[[], bytes | None]) -> bytes:
        """Ask the controller (worker thread, deadline); fall back to the last good value.

        A read at a non-zero offset continues the snapshot its device read at
        offset 0, so a long value is never stitched from two versions.
        """
        key = (name, request.device)
        if request.offset > 0:
            snapshot = self._snapshots.get(key)
            if snapshot is not None and time.monotonic() - snapshot[1] < READ_SNAPSHOT_TTL_S:
                return snapshot[0]
        value: bytes | None
        try:
            value = await call_in_thread(fetch, timeout=self._handler_timeout, what=name)
        except (ControllerTimeout, ControllerFailure) as exc:
            log.warning("controller read failed characteristic=%s fallback=last_good error=%s",
                        name, exc)
            value = None
        if value is None:
            value = self._last_good.get(name) or self._defaults.get(name, b"")
        else:
            self._remember(self._last_good, name, value)
        now = time.monotonic()
        for stale in [k for k, (_v, at) in self._snapshots.items()
                      if now - at > READ_SNAPSHOT_TTL_S]:
            del self._snapshots[stale]
        self._remember(self._snapshots, key, (value, now))
        return value

    @staticmethod
    def _remember(store: dict[Any, Any], key: Any, value: Any) -> None:
        """Insert, evicting the oldest entries past a fixed size: the keys come
        from phones (species/stage queries, device paths), so bound them."""
        store.pop(key, None)
        store[key] = value
        while len(store) > MAX_REMEMBERED:
            del store[next(iter(store))]

    async def _read_control_targets(self, request: ReadRequest) -> bytes:
        getter = self._callbacks().get_control_targets

        def fetch() -> bytes | None:
            if getter is None:
                return None
            return ControlTargets.from_controller(getter()).pack()

        return await self._controller_read(CONTROL_TARGETS, request, fetch)

    async def _read_stage_state(self, request: ReadRequest) -> bytes:
        getter = self._callbacks().get_stage_data

        def fetch() -> bytes | None:
            if getter is None:
                return None
            return StageState.from_controller(getter()).pack()

        return await self._controller_read(STAGE_STATE, request, fetch)

    async def _read_thresholds(self, request: ReadRequest) -> bytes:
        getter = self._callbacks().get_stage_thresholds
        species, stage = self.thresholds_cursor.species, self.thresholds_cursor.stage
        key = f"{STAGE_THRESHOLDS}:{species}:{stage}"

        def fetch() -> bytes | None:
            if getter is None:
                return encode_thresholds_answer(species, stage, None)
            return encode_thresholds_answer(species, stage, getter(species, stage))

        value = await self._controller_read(key, request, fetch)
        if not value:
            value = json.dumps({"error": "controller did not answer", "species": species,
                                "stage": stage}, separators=(",", ":")).encode()
        return value

    # -- writes ----------------------------------------------------------------------
    def _decode(self, name: str, request: WriteRequest) -> Any:
        """Decode and validate; None means "acknowledge and drop" (ignore mode)."""
        try:
            return decode_write(name, request.value, now=self._clock)
        except InvalidPayload as exc:
            # every write is whole: bluetoothd joins the pieces of a prepared (long)
            # write before calling WriteValue, so unfinished JSON is simply bad JSON
            self._record(name, False, f"rejected {exc.detail}", request.device)
            log.warning("invalid write characteristic=%s field=%s reason=%s device=%s mode=%s",
                        name, exc.field, exc.reason, request.device or "-",
                        self.settings.ble_invalid_write)
            if self.settings.ble_invalid_write == "ignore":
                return None
            raise GattError(exc.bluez_error, exc.dbus_message) from exc

    async def _apply(self, name: str, setter: Callable[..., Any] | None, *args: Any,
                     device: str) -> Any:
        if setter is None:
            self._record(name, False, "no controller callback", device)
            log.warning("write refused characteristic=%s reason=no_callback", name)
            raise failed(AppError.CONTROLLER_FAILED)
        try:
            result = await call_in_thread(setter, *args, timeout=self._handler_timeout,
                                          what=name)
        except ControllerTimeout as exc:
            self._record(name, False, "controller timeout", device)
            log.warning("write failed characteristic=%s error=%s", name, exc)
            raise failed(AppError.CONTROLLER_TIMEOUT) from exc
        except ControllerFailure as exc:
            self._record(name, False, "controller failed", device)
            log.warning("write failed characteristic=%s error=%s", name, exc)
            raise failed(AppError.CONTROLLER_FAILED) from exc
        return result

    async def _write_control_targets(self, request: WriteRequest) -> None:
        value = self._decode(CONTROL_TARGETS, request)
        if value is None:
            return
        assert isinstance(value, ControlTargets)
        await self._apply(CONTROL_TARGETS, self._callbacks().set_control_targets,
                          dict(value.to_controller()), device=request.device)
        self._last_good[CONTROL_TARGETS] = value.pack()
        self._record(CONTROL_TARGETS, True, _describe_targets(value), request.device)

    async def _write_stage_state(self, request: WriteRequest) -> None:
        value = self._decode(STAGE_STATE, request)
        if value is None:
            return
        assert isinstance(value, StageState)
        await self._apply(STAGE_STATE, self._callbacks().set_stage_state,
                          dict(value.to_controller()), device=request.device)
        self._last_good[STAGE_STATE] = value.pack()
        self._record(STAGE_STATE, True, f"{value.species} {value.stage} mode={value.mode}",
                     request.device)

    async def _write_overrides(self, request: WriteRequest) -> None:
        value = self._decode(OVERRIDE_BITS, request)
        if value is None:
            return
        assert isinstance(value, OverrideBits)
        await self._apply(OVERRIDE_BITS, self._callbacks().apply_overrides,
                          dict(value.to_controller()), device=request.device)
        self._record(OVERRIDE_BITS, True, f"bits=0x{value.bits:04x}", request.device)
        if self._nursery is not None and ACTUATOR_STATUS in self.mailboxes:
            self._nursery.start_soon(self.refresh_actuator)

    async def refresh_actuator(self) -> Outcome:
        """Read relay state from the controller and publish it (after overrides)."""
        getter = self._callbacks().get_control_data
        if getter is None:
            return Outcome.DROPPED
        try:
            data = await call_in_thread(getter, timeout=self._handler_timeout,
                                        what="get_control_data")
        except (ControllerTimeout, ControllerFailure) as exc:
            log.warning("actuator refresh failed error=%s", exc)
            return Outcome.DROPPED
        return self.publish_actuator(data)

    async def _write_thresholds(self, request: WriteRequest) -> None:
        value = self._decode(STAGE_THRESHOLDS, request)
        if value is None:
            return
        if isinstance(value, ThresholdsQuery):
            self.thresholds_cursor = ThresholdsCursor(value.species, value.stage)
            self._record(STAGE_THRESHOLDS, True, f"query {value.species}/{value.stage}",
                         request.device)
            return
        assert isinstance(value, ThresholdsUpdate)
        species, stage, thresholds = value.to_controller()
        ok = await self._apply(STAGE_THRESHOLDS, self._callbacks().set_stage_thresholds,
                               species, stage, dict(thresholds), device=request.device)
        self.thresholds_cursor = ThresholdsCursor(species, stage)
        log.info("thresholds update species=%s stage=%s saved=%s", species, stage, bool(ok))
        self._record(STAGE_THRESHOLDS, True, f"update {species}/{stage} saved={bool(ok)}",
                     request.device)

    def _record(self, name: str, accepted: bool, detail: str, device: str) -> None:
        self.recent_writes.append(WriteEvent(self._clock(), name, accepted, detail, device))

    # -- subscription pushes -----------------------------------------------------------
    def _push_current(self, name: str) -> Callable[[], Any]:
        async def push() -> None:
            assert self.app is not None
            state = self.app.state(name)
            await self.app.notify(state, state.value)

        return push

    async def _push_status_on_subscribe(self) -> None:
        """A subscriber is by definition connected: push with CONNECTIVITY set,
        even if bluetoothd's Device1 signal has not been processed yet."""
        assert self.app is not None
        state = self.app.state(STATUS_FLAGS)
        state.value = StatusFlags(self._status_flags).with_connectivity(True).pack()
        await self.app.notify(state, state.value)

    async def _push_actuator_on_subscribe(self) -> None:
        """Fresh relay state for the new subscriber, through the mailbox like every
        other publish, so a newer notify_actuator_status() is never overwritten."""
        assert self.app is not None
        getter = self._callbacks().get_control_data
        if getter is not None:
            try:
                data = await call_in_thread(getter, timeout=self._handler_timeout,
                                            what="get_control_data")
            except (ControllerTimeout, ControllerFailure) as exc:
                log.warning("actuator read on subscribe failed error=%s", exc)
            else:
                if self.publish_actuator(data) in (Outcome.QUEUED, Outcome.COALESCED):
                    return
        state = self.app.state(ACTUATOR_STATUS)
        await self.app.notify(state, state.value)

    # -- status --------------------------------------------------------------------------
    def counters(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, mailbox in self.mailboxes.items():
            entry: dict[str, Any] = mailbox.counters().as_dict()
            entry["queue_depth"] = mailbox.depth
            entry["policy"] = mailbox.policy
            entry["latency"] = mailbox.latency.snapshot()
            out[name] = entry
        return out


def _describe_targets(value: ControlTargets) -> str:
    d = value.to_controller()
    return (f"temp {d['temp_min']}..{d['temp_max']} rh>={d['rh_min']} co2<={d['co2_max']} "
            f"light={d['light']['mode']}")
