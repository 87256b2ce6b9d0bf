"""A GATT service described as data, and the checks bluetoothd would make.

A characteristic is a UUID, flags and handlers; :mod:`.application` turns
the description into BlueZ objects. Checking here, before registering,
turns bluetoothd's one opaque "No valid service object found" into an
error that says which characteristic and why, and refuses shapes that
bluetoothd accepts but silently breaks (a write handler that can reject,
behind ``write-without-response``, whose errors bluetoothd throws away).
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Awaitable, Callable, Sequence

import attrs

from .flags import CHARACTERISTIC_FLAGS, NOTIFY_FLAGS, READ_FLAGS, WRITE_FLAGS
from .queue_policy import POLICIES
from .requests import ReadRequest, WriteRequest

ReadHandler = Callable[[ReadRequest], "bytes | Awaitable[bytes]"]
"""The value at once when the handler has it (the read is answered inline, with no task
started), else an awaitable of it (run under the method's deadline)."""
WriteHandler = Callable[[WriteRequest], Awaitable[None]]
SubscribeHandler = Callable[[], Awaitable[None]]


class GattDefinitionError(ValueError):
    """The description would be refused or silently broken by bluetoothd."""


class IncompleteValue(Exception):
    """Raised by a write handler: this piece of a long write is not the last.

    The piece is acknowledged and kept; the next piece continues it by offset.
    """


def normalise_uuid(value: str) -> str:
    """Canonical lower-case 128-bit form; 16/32-bit short forms expand on the base."""
    text = value.strip().lower()
    if len(text) in (4, 8) and all(c in "0123456789abcdef" for c in text):
        text = f"{int(text, 16):08x}-0000-1000-8000-00805f9b34fb"
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        raise GattDefinitionError(f"{value!r} is not a UUID") from None


@attrs.frozen
class Characteristic:
    """One characteristic: UUID, BlueZ flags and the handlers behind them.

    ``on_subscribe`` runs after each StartNotify (bluetoothd calls it once per
    subscribing device) — the place to push the current value at once.
    ``rejects_writes`` says the write handler may refuse a value; such a
    characteristic must not carry ``write-without-response``.

    ``acquire_notify`` exposes ``NotifyAcquired``, so bluetoothd hands us one
    notify socket per subscribing phone (``AcquireNotify``) instead of calling
    StartNotify; each socket queues at most ``notify_queue`` values, by
    ``notify_policy``. ``signal_fallback``: when a socket closes while its
    phone is still connected (bluez/bluez#1452), serve the characteristic by
    ``PropertiesChanged`` until that phone leaves or acquires again.
    """

    uuid: str = attrs.field(converter=normalise_uuid)
    flags: tuple[str, ...]
    read: ReadHandler | None = None
    write: WriteHandler | None = None
    on_subscribe: SubscribeHandler | None = None
    rejects_writes: bool = True
    name: str = ""
    max_write_length: int = 512
    acquire_notify: bool = False
    notify_queue: int = 8
    notify_policy: str = "drop_oldest"
    signal_fallback: bool = True

    @property
    def label(self) -> str:
        return self.name or self.uuid

    @property
    def notifies(self) -> bool:
        return bool(NOTIFY_FLAGS.intersection(self.flags))

    @property
    def readable(self) -> bool:
        return bool(READ_FLAGS.intersection(self.flags))

    @property
    def writable(self) -> bool:
        return bool(WRITE_FLAGS.intersection(self.flags))


@attrs.frozen
class Service:
    uuid: str = attrs.field(converter=normalise_uuid)
    characteristics: tuple[Characteristic, ...]
    primary: bool = True
    name: str = ""


def validate_services(services: Sequence[Service]) -> None:
    """Raise :class:`GattDefinitionError` naming the first problem found."""
    seen_services: set[str] = set()
    for service in services:
        if service.uuid in seen_services:
            raise GattDefinitionError(f"service {service.uuid} is declared twice")
        seen_services.add(service.uuid)
        seen_chars: set[str] = set()
        for char in service.characteristics:
            _validate_characteristic(char)
            if char.uuid in seen_chars:
                raise GattDefinitionError(
                    f"characteristic {char.uuid} appears twice in service {service.uuid}"
                )
            seen_chars.add(char.uuid)


def _validate_characteristic(char: Characteristic) -> None:
    unknown = sorted(set(char.flags) - CHARACTERISTIC_FLAGS)
    if unknown:
        raise GattDefinitionError(f"characteristic {char.label}: unknown flags {unknown}")
    if not char.flags:
        raise GattDefinitionError(f"characteristic {char.label}: no flags")
    if char.readable and char.read is None:
        raise GattDefinitionError(f"characteristic {char.label}: readable but no read handler")
    if char.writable and char.write is None:
        raise GattDefinitionError(f"characteristic {char.label}: writable but no write handler")
    if char.acquire_notify and not char.notifies:
        raise GattDefinitionError(f"characteristic {char.label}: acquire_notify needs a "
                                  "notify or indicate flag")
    if char.notify_policy not in POLICIES or char.notify_queue < 1:
        raise GattDefinitionError(f"characteristic {char.label}: notify_policy must be one of "
                                  f"{', '.join(POLICIES)} and notify_queue at least 1")
    if "write-without-response" in char.flags and char.rejects_writes:
        raise GattDefinitionError(
            f"characteristic {char.label}: its write handler can reject values, but "
            "bluetoothd acknowledges write-without-response at once and drops our errors"
        )


def slice_for_offset(value: bytes, offset: int) -> bytes:
    """What a read at ``offset`` answers; beyond the end is InvalidOffset."""
    from .errors import invalid_offset

    if offset > len(value):
        raise invalid_offset(offset, len(value))
    return value[offset:]
