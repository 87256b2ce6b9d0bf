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

from .flags import (
    CHARACTERISTIC_FLAGS,
    EXTENDED_FLAGS,
    NOTIFY_FLAGS,
    READ_FLAGS,
    WRITE_FLAGS,
)
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

    ``handle`` asks bluetoothd for the characteristic's value handle (its declaration
    is the handle before, its CCC the one after); 0 lets bluetoothd choose.

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
    handle: int = 0

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

    @property
    def span(self) -> int:
        """Handles bluetoothd gives it: declaration, value, a CCC when it notifies or
        indicates, an extended-properties descriptor when a flag needs one."""
        return 2 + self.notifies + bool(EXTENDED_FLAGS.intersection(self.flags))


@attrs.frozen
class Service:
    """A service; ``handle`` fixes its declaration's handle (0: bluetoothd chooses), and
    then every characteristic's handle must follow bluetoothd's layout (see
    :func:`fixed_handles`)."""

    uuid: str = attrs.field(converter=normalise_uuid)
    characteristics: tuple[Characteristic, ...]
    primary: bool = True
    name: str = ""
    handle: int = 0

    @property
    def span(self) -> int:
        return 1 + sum(char.span for char in self.characteristics)

    @property
    def end_handle(self) -> int:
        return self.handle + self.span - 1 if self.handle else 0


def fixed_handles(service_handle: int, spans: Sequence[int]) -> tuple[int, ...]:
    """The value handle of each characteristic as bluetoothd lays a service out: the
    service declaration, then per characteristic its declaration, its value and its
    descriptors, with no gap (bluetoothd sizes the service by counting attributes, and
    places a requested handle without checking the service's end)."""
    handles = []
    cursor = service_handle + 1
    for span in spans:
        handles.append(cursor + 1)
        cursor += span
    return tuple(handles)


def validate_services(services: Sequence[Service]) -> None:
    """Raise :class:`GattDefinitionError` naming the first problem found."""
    seen_services: set[str] = set()
    _validate_handles(services)
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


def _validate_handles(services: Sequence[Service]) -> None:
    """Fixed handles laid out as bluetoothd will, services apart: a clash names the handle."""
    taken: list[tuple[int, int, str]] = []
    for service in services:
        label = service.name or service.uuid
        if not service.handle:
            for char in service.characteristics:
                if char.handle:
                    raise GattDefinitionError(
                        f"characteristic {char.label}: handle 0x{char.handle:04x} needs a "
                        f"fixed handle for its service {label} too")
            continue
        if service.end_handle > 0xFFFF:
            raise GattDefinitionError(f"service {label}: handles 0x{service.handle:04x}.."
                                      f"0x{service.end_handle:04x} do not fit in 0x0001..0xffff")
        expected = fixed_handles(service.handle, [c.span for c in service.characteristics])
        for char, want in zip(service.characteristics, expected, strict=True):
            if char.handle != want:
                raise GattDefinitionError(
                    f"characteristic {char.label}: handle 0x{char.handle:04x} clashes with "
                    f"bluetoothd's layout of service {label} at 0x{service.handle:04x}: "
                    f"its value handle must be 0x{want:04x} (each characteristic takes its "
                    "declaration, its value and its descriptors, in order, without gaps)")
        for start, end, other in taken:
            if service.handle <= end and start <= service.end_handle:
                raise GattDefinitionError(
                    f"service {label}: handles 0x{service.handle:04x}..0x{service.end_handle:04x}"
                    f" clash with service {other} at 0x{start:04x}..0x{end:04x}")
        taken.append((service.handle, service.end_handle, label))


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
