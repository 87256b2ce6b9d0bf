"""The MushPi rules as decisions, written once and run by every binding.

Sans-I/O in the spirit of h11's ``Connection``: the core holds the service's
state — published values, last good controller values, read snapshots for
long reads, the thresholds cursor, status flags and the connectivity bit,
bounded per-phone caches, recent writes — and answers each event with a
decision the binding executes: a read gives :class:`Answer` or
:class:`NeedGetter`, a write :class:`Reject`, :class:`CallSetter` or
:class:`Ack`, a subscription :class:`Push` or :class:`Refresh`. No trio, no
threads, no D-Bus: the trio service (``service.py``) and the legacy GLib
backend (``backends/bluezero/gatt.py``) run the same rules, and the unit
tests run them without a bus.

Thread use: reads, writes and subscriptions come from one thread (the
binding's loop); the packet builders used by publishing (``env_packet``,
``status_packet``, ``actuator_packet``) only read immutable state and may be
called from controller threads.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .lograte import LogRate, RateLimitedLog
from .protocol import (
    CHARACTERISTICS,
    DEFAULT_QUERY,
    ENV_MEASUREMENTS,
    READINGS,
    STATUS_FLAGS,
    ActuatorStatus,
    AppError,
    Characteristic,
    ControlTargets,
    InvalidPayload,
    OverrideBits,
    ReadSource,
    StageState,
    StatusFlags,
    ThresholdsQuery,
    ThresholdsUpdate,
    encode_env,
    encode_thresholds_answer,
    unusable_readings,
)

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)

READ_SNAPSHOT_TTL_S = 5.0
"""How long a long read (offset > 0) continues the snapshot its device read at 0."""
MAX_REMEMBERED = 64
"""Bound of every cache keyed by what phones send (device paths, species/stage)."""
RECENT_WRITES = 50
LOG_BURST = 5
"""Refusals logged per device (failures per characteristic) per window; the rest counted."""
LOG_WINDOW_S = 60.0


class Failure(enum.Enum):
    """Why a controller callback gave no result."""

    MISSING = "no controller callback"
    FAILED = "controller failed"
    TIMEOUT = "controller timeout"


# -- decisions ------------------------------------------------------------------------------
@attrs.frozen
class Answer:
    """Reply to the read with this whole value (the binding applies the offset)."""

    value: bytes


@attrs.frozen
class NeedGetter:
    """Call the controller's ``callback(*args)`` under the handler deadline, then hand
    the result or the :class:`Failure` to :meth:`MushPiCore.read_done`."""

    characteristic: str
    callback: str
    args: tuple[Any, ...]
    device: str
    key: str


@attrs.frozen
class Reject:
    """Refuse the write: ``app_code`` None is a wrong length, else the ATT
    application code (the GATT layer maps both to BlueZ errors)."""

    app_code: AppError | None
    reason: str


@attrs.frozen
class Ack:
    """Acknowledge; ``refresh`` names a notifying characteristic to re-read from the
    controller and publish afterwards (relays after an override)."""

    refresh: str | None = None


@attrs.frozen
class CallSetter:
    """Hand a valid value to the controller's ``callback(*args)``, then report to
    :meth:`MushPiCore.write_done`."""

    characteristic: str
    callback: str
    args: tuple[Any, ...]
    value: Any
    device: str


@attrs.frozen
class Push:
    """Notify the new subscriber of ``payload`` at once."""

    characteristic: str
    payload: bytes


@attrs.frozen
class Refresh:
    """Re-read the value through ``callback`` (no arguments) and publish it; hand the
    result to :meth:`MushPiCore.refresh_done`. If that publishes nothing, push the
    current value."""

    characteristic: str
    callback: str


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
    """The pair the next stage_thresholds read answers (the last query or update)."""

    species: str
    stage: str


class RefusedPublishes:
    """Publishes refused because a reading was no number: counted per characteristic and
    logged within a budget. Controller threads publish, hence the lock."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._log = RateLimitedLog(log, "refused publishes", LogRate(
            burst=LOG_BURST, window=LOG_WINDOW_S, max_keys=MAX_REMEMBERED, clock=monotonic))
        self.counts: dict[str, int] = {}

    def refuse(self, characteristic: str, detail: str) -> None:
        with self._lock:
            self.counts[characteristic] = self.counts.get(characteristic, 0) + 1
            self._log.log(characteristic, logging.WARNING,
                          "publish refused: a reading is no number %s", detail)


class MushPiCore:
    """All MushPi rules; see the module docstring for the decision types."""

    def __init__(
        self,
        *,
        actuator_enabled: bool = True,
        ignore_invalid_writes: bool = False,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        table: Iterable[Characteristic] = CHARACTERISTICS,
        read_cache_s: float = 0.0,
    ) -> None:
        """``read_cache_s``: how long a controller getter's answer serves further reads
        (0: every read asks the controller); any write the controller took ends it."""
        self.characteristics: tuple[Characteristic, ...] = tuple(
            row for row in table
            if actuator_enabled or row.notify is None or not row.notify.optional
        )
        self._rows = {row.name: row for row in self.characteristics}
        self.notifying: tuple[str, ...] = tuple(
            row.name for row in self.characteristics if row.notify is not None
        )
        self.ignore_invalid_writes = ignore_invalid_writes
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._started = monotonic()
        self._published: dict[str, bytes] = {name: self._rows[name].initial
                                             for name in self.notifying}
        self.status_flags = 0
        self.connected = False
        self._last_good: dict[str, bytes] = {}
        self._snapshots: dict[tuple[str, str], tuple[bytes, float]] = {}
        self.read_cache_s = read_cache_s
        self._fresh: dict[str, tuple[bytes, float]] = {}
        self.cache_hits = 0
        self.cursor = ThresholdsCursor(DEFAULT_QUERY.species, DEFAULT_QUERY.stage)
        self.recent_writes: deque[WriteEvent] = deque(maxlen=RECENT_WRITES)
        # anyone in radio range can provoke these lines: limited, then counted
        self._refusal_log = RateLimitedLog(log, "invalid writes", LogRate(
            burst=LOG_BURST, window=LOG_WINDOW_S, max_keys=MAX_REMEMBERED, clock=monotonic))
        self._failure_log = RateLimitedLog(log, "controller failures", LogRate(
            burst=LOG_BURST, window=LOG_WINDOW_S, max_keys=MAX_REMEMBERED, clock=monotonic))
        self.refused_publishes = RefusedPublishes(monotonic)

    # -- the table -----------------------------------------------------------------------
    def row(self, name: str) -> Characteristic:
        """The row of a characteristic this service serves (KeyError otherwise)."""
        return self._rows[name]

    # -- publishing ----------------------------------------------------------------------
    def started(self) -> None:
        """The service started: env uptime counts from here."""
        self._started = self._monotonic()

    @property
    def uptime_ms(self) -> int:
        return int((self._monotonic() - self._started) * 1000)

    def env_packet(self, temperature: object, humidity: object, co2: object,
                   light: object) -> bytes | None:
        """The packet to publish, or None (counted, logged within a budget) when a reading
        is given but is no number: a phone must not show "hot" or NaN as a plausible 0.
        None means "no reading" and is sent as 0, as the protocol says."""
        readings = (temperature, humidity, co2, light)
        bad = unusable_readings(*readings)
        if bad:
            self.refused_publishes.refuse(ENV_MEASUREMENTS, " ".join(
                f"{name}={value!r}" for name, value in zip(READINGS, readings, strict=True)
                if name in bad))
            return None
        return encode_env(temperature, humidity, co2, light, self.uptime_ms)

    def set_status_flags(self, flags: object) -> None:
        """The controller's status bits (the CONNECTIVITY bit stays the BLE layer's)."""
        self.status_flags = StatusFlags.from_controller(flags).flags

    def status_packet(self, connected: bool | None = None) -> bytes:
        """The controller's flags with the connectivity bit (ours unless given)."""
        live = self.connected if connected is None else connected
        return StatusFlags(self.status_flags).with_connectivity(live).pack()

    def set_connected(self, connected: bool) -> bytes | None:
        """A central came or the last one left: the status packet to publish, or
        None when nothing changed."""
        if connected == self.connected:
            return None
        self.connected = connected
        return self.status_packet()

    @staticmethod
    def actuator_packet(control_data: object) -> bytes:
        return ActuatorStatus.from_controller(
            control_data if isinstance(control_data, dict) else None).pack()

    def check_payload(self, name: str, payload: bytes) -> None:
        """A ready payload for a notifying characteristic: KeyError or ValueError if
        it is not one of ours or has the wrong size."""
        if name not in self.notifying:
            raise KeyError(f"{name!r} is not a notifying characteristic here")
        size = self._rows[name].size
        if len(payload) != size:
            raise ValueError(f"{name} payloads are {size} bytes, not {len(payload)}")

    def published(self, name: str) -> bytes:
        """What a read of a notifying characteristic answers: the last value sent."""
        return self._published[name]

    def set_published(self, name: str, payload: bytes) -> None:
        self._published[name] = payload

    # -- reads -----------------------------------------------------------------------------
    def read(self, name: str, device: str = "", offset: int = 0) -> Answer | NeedGetter:
        read = self._rows[name].read
        if read is None:
            raise KeyError(f"{name!r} is not readable")
        if read.source is ReadSource.PUBLISHED:
            return Answer(self._published[name])
        if read.source is ReadSource.STATUS:
            # the reader itself is connected, even before bluetoothd's Device1 signal
            return Answer(self.status_packet(self.connected or bool(device)))
        assert read.getter is not None
        args: tuple[Any, ...] = ()
        key = name
        if read.source is ReadSource.THRESHOLDS:
            args = (self.cursor.species, self.cursor.stage)
            key = f"{name}:{self.cursor.species}:{self.cursor.stage}"
        now = self._monotonic()
        if offset > 0:
            snapshot = self._snapshots.get((key, device))
            if snapshot is not None and now - snapshot[1] < READ_SNAPSHOT_TTL_S:
                return Answer(snapshot[0])
        fresh = self._fresh.get(key)
        if fresh is not None and now - fresh[1] < self.read_cache_s:
            self.cache_hits += 1
            self._snapshot(key, device, fresh[0], now)  # a long read continues this value
            return Answer(fresh[0])
        return NeedGetter(name, read.getter, args, device, key)

    def read_done(self, need: NeedGetter, result: object = None,
                  failure: Failure | None = None) -> Answer:
        """The getter's answer (or why there is none): the value to reply with.

        A failure answers the last good value; a long read at a non-zero offset
        continues the snapshot taken here, so a long value is never stitched
        from two versions.
        """
        row = self._rows[need.characteristic]
        read = row.read
        assert read is not None
        value: bytes | None = None
        if failure is None:
            try:
                value = self._encode(row, need, result)
            except Exception as exc:  # a getter's odd answer is a failed read, not a crash
                log.warning("controller answer unusable characteristic=%s error=%s: %s",
                            need.characteristic, type(exc).__name__, exc)
                failure = Failure.FAILED
        elif failure is Failure.MISSING and read.source is ReadSource.THRESHOLDS:
            value = encode_thresholds_answer(need.args[0], need.args[1], None)
        else:
            if failure is not Failure.MISSING:
                self._failure_log.log(need.characteristic, logging.WARNING,
                                      "controller read failed characteristic=%s "
                                      "fallback=last_good error=%s", need.characteristic,
                                      failure.value)
        now = self._monotonic()
        if value is not None and failure is None:
            if row.notify is None:
                _remember(self._last_good, need.key, value)
            if self.read_cache_s > 0:
                _remember(self._fresh, need.key, (value, now))
        if value is None:
            value = self._fallback(row, need)
        self._snapshot(need.key, need.device, value, now)
        return Answer(value)

    def _snapshot(self, key: str, device: str, value: bytes, now: float) -> None:
        # each entry is (re)inserted at the end with the time then, so the oldest
        # come first: expiry stops at the first one still young (a read's hot path)
        snapshots = self._snapshots
        while snapshots:
            oldest = next(iter(snapshots))
            if now - snapshots[oldest][1] <= READ_SNAPSHOT_TTL_S:
                break
            del snapshots[oldest]
        _remember(snapshots, (key, device), (value, now))

    @staticmethod
    def _encode(row: Characteristic, need: NeedGetter, result: object) -> bytes:
        read = row.read
        assert read is not None
        if read.source is ReadSource.THRESHOLDS:
            found = result if isinstance(result, Mapping) else None
            return encode_thresholds_answer(need.args[0], need.args[1], found)
        assert read.encode is not None
        return read.encode(result)

    def _fallback(self, row: Characteristic, need: NeedGetter) -> bytes:
        read = row.read
        assert read is not None
        if row.notify is not None:
            return self._published[row.name]
        remembered = self._last_good.get(need.key)
        if remembered:
            return remembered
        if read.source is ReadSource.THRESHOLDS:
            return json.dumps({"error": "controller did not answer", "species": need.args[0],
                               "stage": need.args[1]}, separators=(",", ":")).encode()
        return read.default

    # -- logs ------------------------------------------------------------------------------
    def callback_raised(self, callback: str, error: str) -> None:
        """A binding saw a controller callback raise: say what it raised, within the
        same per-minute budget as the other controller failures (a broken getter is
        asked on every read)."""
        self._failure_log.log(callback, logging.WARNING,
                              "controller call failed callback=%s error=%s", callback, error)

    def flush_logs(self) -> None:
        """Log the counts of refusals and failures whose window has ended (the binding
        calls this on a timer; the next such line logs them too)."""
        self._refusal_log.flush()
        self._failure_log.flush()

    # -- writes ----------------------------------------------------------------------------
    def write(self, name: str, data: bytes, device: str = "", *,
              authorize_only: bool = False) -> Reject | Ack | CallSetter:
        """Decode and validate a whole written value.

        ``authorize_only`` is bluetoothd's ``prepare-authorize`` question: a valid
        value is acknowledged and an invalid one refused, but nothing is applied
        (only the execute that follows applies it).
        """
        write = self._rows[name].write
        if write is None:
            raise KeyError(f"{name!r} is not writable")
        try:
            value: Any = write.decode(data, self._wall_clock)
        except InvalidPayload as exc:
            # every write is whole: bluetoothd joins the pieces of a prepared (long)
            # write before calling WriteValue, so unfinished JSON is simply bad JSON
            mode = "ignore" if self.ignore_invalid_writes else "reject"
            self._refusal_log.log(device or "-", logging.WARNING,
                                  "invalid write characteristic=%s field=%s reason=%s "
                                  "device=%s mode=%s", name, exc.field, exc.reason,
                                  device or "-", mode)
            self._record(name, False, f"rejected {exc.detail}", device)
            if self.ignore_invalid_writes:
                return Ack()
            return Reject(exc.app_code, f"{name}: {exc.detail}")
        if authorize_only:
            log.debug("write authorized characteristic=%s device=%s", name, device or "-")
            return Ack()
        if any(isinstance(value, query) for query in write.queries):
            self.cursor = ThresholdsCursor(value.species, value.stage)
            self._record(name, True, f"query {value.species}/{value.stage}", device)
            return Ack()
        out = value.to_controller()
        args = out if isinstance(out, tuple) else (dict(out),)
        return CallSetter(name, write.setter, args, value, device)

    def write_done(self, call: CallSetter, result: object = None,
                   failure: Failure | None = None) -> Ack | Reject:
        """What the controller's setter did: refuse with 0x8A/0x8B, or acknowledge."""
        name = call.characteristic
        self._fresh.clear()  # the controller may answer differently now, even after a failure
        if failure is not None:
            self._failure_log.log(name, logging.WARNING, "write failed characteristic=%s "
                                  "error=%s", name, failure.value)
            self._record(name, False, failure.value, call.device)
            code = (AppError.CONTROLLER_TIMEOUT if failure is Failure.TIMEOUT
                    else AppError.CONTROLLER_FAILED)
            return Reject(code, failure.value)
        row = self._rows[name]
        write = row.write
        assert write is not None
        value = call.value
        if write.remembered:
            _remember(self._last_good, name, value.pack())
        if isinstance(value, ThresholdsUpdate):
            self.cursor = ThresholdsCursor(value.species, value.stage)
            log.info("thresholds update species=%s stage=%s saved=%s", value.species,
                     value.stage, bool(result))
        self._record(name, True, describe(value, result), call.device)
        refresh = write.refreshes if write.refreshes in self.notifying else None
        return Ack(refresh)

    def _record(self, name: str, accepted: bool, detail: str, device: str) -> None:
        self.recent_writes.append(WriteEvent(self._wall_clock(), name, accepted, detail,
                                             device))

    # -- subscriptions -----------------------------------------------------------------------
    def subscribed(self, name: str) -> Push | Refresh:
        """A phone subscribed: what it gets at once."""
        notify = self._rows[name].notify
        if notify is None:
            raise KeyError(f"{name!r} does not notify")
        if notify.refresh is not None:
            return self.refresh(name)
        if name == STATUS_FLAGS:
            # a subscriber is by definition connected, even before its Device1 signal
            self._published[name] = self.status_packet(True)
        return Push(name, self._published[name])

    def refresh(self, name: str) -> Refresh:
        """Re-read a notifying characteristic from the controller (on subscribe, and
        after a write that ``refreshes`` it)."""
        notify = self._rows[name].notify
        if notify is None or notify.refresh is None:
            raise KeyError(f"{name!r} is not re-read from the controller")
        return Refresh(name, notify.refresh)

    def refresh_done(self, refresh: Refresh, result: object = None,
                     failure: Failure | None = None) -> bytes | None:
        """The payload to publish after a refresh, or None when the controller gave
        nothing (the binding then pushes the current value)."""
        if failure is not None:
            if failure is not Failure.MISSING:
                self._failure_log.log(refresh.characteristic, logging.WARNING,
                                      "refresh failed characteristic=%s error=%s",
                                      refresh.characteristic, failure.value)
            return None
        notify = self._rows[refresh.characteristic].notify
        assert notify is not None and notify.refresh_encode is not None
        try:
            return notify.refresh_encode(result)
        except Exception as exc:
            log.warning("refresh answer unusable characteristic=%s error=%s: %s",
                        refresh.characteristic, type(exc).__name__, exc)
            return None


def core_for(settings: Settings, *, wall_clock: Callable[[], float] = time.time,
             table: Iterable[Characteristic] = CHARACTERISTICS) -> MushPiCore:
    """The core as the settings configure it (both backends build it this way)."""
    return MushPiCore(
        actuator_enabled=settings.ble_actuator_status_enable,
        ignore_invalid_writes=settings.ble_invalid_write == "ignore",
        wall_clock=wall_clock,
        table=table,
        read_cache_s=settings.ble_read_cache_ms / 1000,
    )


def describe(value: object, result: object = None) -> str:
    """One line saying what an applied write set, for logs and live views."""
    if isinstance(value, ControlTargets):
        d = value.to_controller()
        return (f"temp {d['temp_min']}..{d['temp_max']} rh>={d['rh_min']} "
                f"co2<={d['co2_max']} light={d['light']['mode']}")
    if isinstance(value, StageState):
        return f"{value.species} {value.stage} mode={value.mode}"
    if isinstance(value, OverrideBits):
        return f"bits=0x{value.bits:04x}"
    if isinstance(value, ThresholdsUpdate):
        return f"update {value.species}/{value.stage} saved={bool(result)}"
    if isinstance(value, ThresholdsQuery):
        return f"query {value.species}/{value.stage}"
    return "applied"


def _remember(store: dict[Any, Any], key: Any, value: Any) -> None:
    """Insert, evicting the oldest entries past :data:`MAX_REMEMBERED`: the keys come
    from phones (species/stage queries, device paths), so they are bounded."""
    store.pop(key, None)
    store[key] = value
    while len(store) > MAX_REMEMBERED:
        del store[next(iter(store))]
