"""The seven MushPi characteristics as one declarative table.

Each row says what a characteristic can do, and the capabilities imply its
GATT flags, so "readable without a read source" or "writable without a
decoder" cannot be written down (the spirit of bluer's ``gatt/local.rs``).
Everything that lists characteristics — the trio service, the legacy
BlueZero build, the benchmark peer, fixed payload sizes, write decoding —
derives from :data:`CHARACTERISTICS`; adding one is a row plus its value
class.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from ._coerce import BytesLike
from .actuator import ActuatorStatus
from .env import EnvMeasurement
from .overrides import OverrideBits
from .stage import StageState
from .status import StatusFlags
from .targets import ControlTargets
from .thresholds import (
    MAX_THRESHOLDS_PAYLOAD,
    ThresholdsQuery,
    ThresholdsUpdate,
    decode_thresholds_write,
)
from .uuids import (
    ACTUATOR_STATUS,
    CHARACTERISTIC_UUIDS,
    CONTROL_TARGETS,
    ENV_MEASUREMENTS,
    OVERRIDE_BITS,
    STAGE_STATE,
    STAGE_THRESHOLDS,
    STATUS_FLAGS,
)

__all__ = [
    "CHARACTERISTICS",
    "DEFAULT_POLICIES",
    "FIXED_SIZES",
    "NOTIFYING",
    "POLICIES",
    "REQUIRED_BY_APP",
    "SERVICE_HANDLE",
    "WRITABLE",
    "Characteristic",
    "Notify",
    "Read",
    "ReadSource",
    "Write",
    "by_name",
    "decode_write",
]

Decoder = Callable[[BytesLike, Callable[[], float]], Any]
"""``decode(data, now)``: the write's value object, or raises InvalidPayload."""
Encoder = Callable[[Any], bytes]
"""Controller data (whatever the getter returned) to the wire payload."""


class ReadSource(enum.Enum):
    """Where a read's answer comes from."""

    PUBLISHED = "published"
    """The last value the Pi published (notifying characteristics)."""
    STATUS = "status"
    """The controller's status flags with the live connectivity bit."""
    GETTER = "getter"
    """A controller getter in a worker, the last good value as fallback."""
    THRESHOLDS = "thresholds"
    """``get_stage_thresholds`` at the thresholds cursor (the last query)."""


@attrs.frozen
class Read:
    """The characteristic is readable. A GETTER read names the controller getter
    and the encoder of its answer; a THRESHOLDS read names the getter that takes
    ``(species, stage)`` (its answer is the protocol's thresholds JSON)."""

    source: ReadSource
    getter: str | None = None
    encode: Encoder | None = None
    default: bytes = b""
    """Answered while neither the controller nor an earlier read gave a value."""

    def __attrs_post_init__(self) -> None:
        needs_getter = self.source in (ReadSource.GETTER, ReadSource.THRESHOLDS)
        if needs_getter != (self.getter is not None):
            raise ValueError(f"a {self.source.value} read {'needs' if needs_getter else 'takes no'}"
                             " controller getter")
        if (self.source is ReadSource.GETTER) != (self.encode is not None):
            raise ValueError("a getter read, and only a getter read, has an encoder")


@attrs.frozen
class Write:
    """The characteristic is writable: decoded and validated, then handed to ``setter``.

    ``queries`` are value types that only move the thresholds cursor (no setter
    call); ``refreshes`` names a notifying characteristic to re-read from the
    controller after an applied write (relays after overrides); ``remembered``
    makes an applied value the read's last good value.
    """

    decode: Decoder
    setter: str
    max_length: int = 512
    queries: tuple[type, ...] = ()
    refreshes: str | None = None
    remembered: bool = False


POLICIES: tuple[str, ...] = ("drop_oldest", "drop_newest", "coalesce")
"""What a full publish queue may do with a new value (the generic layer's queue policies)."""


@attrs.frozen
class Notify:
    """The characteristic notifies; ``refresh`` is the getter a new subscriber's
    value is re-read with (else the last published value is pushed)."""

    refresh: str | None = None
    refresh_encode: Encoder | None = None
    optional: bool = False
    """Left out when the settings disable it (actuator_status)."""
    policy: str = "coalesce"
    """What a burst keeps when the phone cannot take every value: ``coalesce`` (the
    last value wins) for a state snapshot, where only the newest value means anything;
    ``drop_oldest`` / ``drop_newest`` for an event stream whose values all matter.
    The settings may override it (MUSHPI_BLE_BACKPRESSURE_POLICY, MUSHPI_BLE_POLICY_*)."""

    def __attrs_post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; allowed: {', '.join(POLICIES)}")


@attrs.frozen
class Characteristic:
    """One row: name, UUID, value class, fixed size and capabilities."""

    name: str
    uuid: str
    value_class: type
    size: int | None
    read: Read | None = None
    write: Write | None = None
    notify: Notify | None = None
    handle: int = 0
    """The value handle asked of bluetoothd (declaration one before, CCC one after):
    fixed, so a bonded phone's cached database stays true across restarts. A new row
    goes last and takes the next free handles; no existing row's handle ever changes."""

    def __attrs_post_init__(self) -> None:
        if self.read is None and self.write is None and self.notify is None:
            raise ValueError(f"{self.name}: no capability")
        if self.notify is not None and self.size is None:
            raise ValueError(f"{self.name}: notifying characteristics have a fixed size")
        published = (ReadSource.PUBLISHED, ReadSource.STATUS)
        if self.read is not None and self.read.source in published and self.notify is None:
            raise ValueError(f"{self.name}: a published read needs notify")

    @property
    def flags(self) -> tuple[str, ...]:
        """The GATT flags the capabilities imply, in BlueZ's order."""
        flags: list[str] = []
        if self.read is not None:
            flags.append("read")
        if self.write is not None:
            flags.append("write")
        if self.notify is not None:
            flags.append("notify")
        return tuple(flags)

    @property
    def initial(self) -> bytes:
        """The value served before anything was published: zeros of the fixed size."""
        return bytes(self.size or 0)


def _packer(cls: Any) -> Encoder:
    def encode(data: Any) -> bytes:
        payload: bytes = cls.from_controller(data if isinstance(data, Mapping) else None).pack()
        return payload

    return encode


def _fixed(cls: Any) -> Decoder:
    def decode(data: BytesLike, _now: Callable[[], float]) -> Any:
        return cls.unpack(data)

    return decode


def _stage_decode(data: BytesLike, now: Callable[[], float]) -> StageState:
    return StageState.unpack(data, now=now)


def _thresholds_decode(data: BytesLike, _now: Callable[[], float]) -> Any:
    return decode_thresholds_write(data)


SERVICE_HANDLE = 0x1000
"""The MushPi service declaration's handle: far above bluetoothd's own services (GAP,
GATT, its PnP-only Device Information, the LE audio plugins on 5.82), with room after
the last row for rows to come."""

CHARACTERISTICS: tuple[Characteristic, ...] = (
    Characteristic(
        ENV_MEASUREMENTS, CHARACTERISTIC_UUIDS[ENV_MEASUREMENTS], EnvMeasurement,
        EnvMeasurement.SIZE,
        read=Read(ReadSource.PUBLISHED),
        notify=Notify(policy="coalesce"),  # a snapshot of the room: the newest wins
        handle=0x1002,
    ),
    Characteristic(
        CONTROL_TARGETS, CHARACTERISTIC_UUIDS[CONTROL_TARGETS], ControlTargets,
        ControlTargets.SIZE,
        read=Read(ReadSource.GETTER, "get_control_targets", _packer(ControlTargets),
                  default=ControlTargets.DEFAULT.pack()),
        write=Write(_fixed(ControlTargets), "set_control_targets", remembered=True),
        handle=0x1005,
    ),
    Characteristic(
        STAGE_STATE, CHARACTERISTIC_UUIDS[STAGE_STATE], StageState, StageState.SIZE,
        read=Read(ReadSource.GETTER, "get_stage_data", _packer(StageState),
                  default=StageState.from_controller(None).pack()),
        write=Write(_stage_decode, "set_stage_state", remembered=True),
        handle=0x1007,
    ),
    Characteristic(
        OVERRIDE_BITS, CHARACTERISTIC_UUIDS[OVERRIDE_BITS], OverrideBits, OverrideBits.SIZE,
        write=Write(_fixed(OverrideBits), "apply_overrides", refreshes=ACTUATOR_STATUS),
        handle=0x1009,
    ),
    Characteristic(
        STATUS_FLAGS, CHARACTERISTIC_UUIDS[STATUS_FLAGS], StatusFlags, StatusFlags.SIZE,
        read=Read(ReadSource.STATUS),
        notify=Notify(policy="coalesce"),  # the flags now, not their history
        handle=0x100B,
    ),
    Characteristic(
        STAGE_THRESHOLDS, CHARACTERISTIC_UUIDS[STAGE_THRESHOLDS], ThresholdsUpdate, None,
        read=Read(ReadSource.THRESHOLDS, "get_stage_thresholds"),
        write=Write(_thresholds_decode, "set_stage_thresholds",
                    max_length=MAX_THRESHOLDS_PAYLOAD, queries=(ThresholdsQuery,)),
        handle=0x100E,
    ),
    Characteristic(
        ACTUATOR_STATUS, CHARACTERISTIC_UUIDS[ACTUATOR_STATUS], ActuatorStatus,
        ActuatorStatus.SIZE,
        read=Read(ReadSource.GETTER, "get_control_data", _packer(ActuatorStatus),
                  default=bytes(ActuatorStatus.SIZE)),
        notify=Notify("get_control_data", _packer(ActuatorStatus), optional=True,
                      policy="coalesce"),  # the relays now
        handle=0x1010,
    ),
)
"""The MushPi service's characteristics, in the order the service declares them (and of
their handles); optional rows last, so leaving one out moves no other."""

_BY_NAME: Mapping[str, Characteristic] = MappingProxyType({c.name: c for c in CHARACTERISTICS})

FIXED_SIZES: Mapping[str, int] = MappingProxyType(
    {c.name: c.size for c in CHARACTERISTICS if c.size is not None and c.notify is not None}
)
"""Payload size of each notifying characteristic."""


NOTIFYING: tuple[str, ...] = tuple(c.name for c in CHARACTERISTICS if c.notify is not None)
"""Characteristics the Pi publishes with notifications."""

DEFAULT_POLICIES: Mapping[str, str] = MappingProxyType(
    {c.name: c.notify.policy for c in CHARACTERISTICS if c.notify is not None}
)
"""Each notifying characteristic's own back-pressure policy, unless the settings override it."""

WRITABLE: tuple[str, ...] = tuple(c.name for c in CHARACTERISTICS if c.write is not None)
"""Characteristics the phone writes; their decoders validate and may refuse."""

REQUIRED_BY_APP: tuple[str, ...] = tuple(
    c.name for c in CHARACTERISTICS if c.notify is None or not c.notify.optional
)
"""The app refuses a device unless all of these are discovered."""


def by_name(name: str) -> Characteristic:
    """The row of ``name``; KeyError for an unknown characteristic."""
    return _BY_NAME[name]


def decode_write(
    characteristic: str, data: BytesLike, *, now: Callable[[], float] = time.time
) -> Any:
    """Decode and validate a write to ``characteristic`` through its row.

    Raises :class:`~.errors.InvalidPayload` for a bad payload and :class:`KeyError`
    for a characteristic that is not writable.
    """
    write = _BY_NAME[characteristic].write if characteristic in _BY_NAME else None
    if write is None:
        raise KeyError(f"{characteristic!r} is not a writable characteristic")
    return write.decode(data, now)
