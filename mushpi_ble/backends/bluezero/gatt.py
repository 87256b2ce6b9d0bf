"""The MushPi GATT service as BlueZero objects, and its read, write and subscribe callbacks.

The callbacks run on the GLib loop thread, synchronously and with no deadline: the
controller's getters and setters are called right there, as in the legacy server.
Every rule is the MushPi core's (:mod:`mushpi_ble.core`, the same object the trio
service runs), so the seven characteristics are byte for byte those of
``bluez-dbus`` and invalid writes are refused with the same BlueZ errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from mushpi_ble.controller import ControllerCallbacks
from mushpi_ble.core import (
    Ack,
    Answer,
    CallSetter,
    Failure,
    MushPiCore,
    NeedGetter,
    Push,
    Refresh,
    Reject,
)
from mushpi_ble.gatt import GattError, refusal, slice_for_offset

from .deps import GLib, bz_constants, dbus, localGATT

log = logging.getLogger(__name__)

SERVICE_ID = 1


class _QuietProxyIntrospection(logging.Filter):
    """BlueZero gives each characteristic a proxy of its service path on org.bluez, whose
    introspection fails (harmlessly) on every start; keep that out of the error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "/ukBaz/bluezero" not in record.getMessage()


logging.getLogger("dbus.proxies").addFilter(_QuietProxyIntrospection())


def dbus_error(error: GattError) -> Exception:
    """A D-Bus error reply: dbus-python answers a method with it when raised."""
    raised: Exception = dbus.exceptions.DBusException(error.text, name=error.name)
    return raised


class GattService:
    """The GLib binding of the MushPi core: BlueZero objects built from the core's
    table, whose callbacks execute the core's decisions on the GLib thread.

    ``callbacks()`` gives the controller callbacks in force; ``refresh_actuator()``
    publishes actuator_status through the backend (after an override write)."""

    def __init__(self, core: MushPiCore, *, callbacks: Callable[[], ControllerCallbacks],
                 service_uuid: str, refresh_actuator: Callable[[], object]) -> None:
        self.core = core
        self._callbacks = callbacks
        self._service_uuid = service_uuid
        self._publish_actuator = refresh_actuator
        self.app: Any = None
        self.chars: dict[str, Any] = {}

    def build(self) -> list[Any]:
        """Make the BlueZero objects (they export themselves on the shared system bus);
        returns all of them, the application first."""
        app = localGATT.Application()
        service = localGATT.Service(SERVICE_ID, self._service_uuid, True)
        objects: list[Any] = [service]
        self.chars = {}
        for chr_id, row in enumerate(self.core.characteristics, start=1):
            name = row.name
            initial = list(self.core.published(name) if row.notify is not None else b"")
            chrc = localGATT.Characteristic(
                SERVICE_ID, chr_id, row.uuid, initial, False, list(row.flags),
                read_callback=self._reader(name) if row.read is not None else None,
                write_callback=self._writer(name) if row.write is not None else None,
                notify_callback=self._on_notify(name) if row.notify is not None else None)
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
        self.core.set_published(name, payload)
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

    def _call(self, callback: str, args: tuple[Any, ...]) -> tuple[object, Failure | None]:
        """A controller callback right here on the GLib thread, as in the legacy server
        (no deadline: a slow getter blocks the loop)."""
        fn = getattr(self._callbacks(), callback)
        if fn is None:
            return None, Failure.MISSING
        try:
            return fn(*args), None
        except Exception as exc:
            self.core.callback_raised(callback, f"{callback} raised {type(exc).__name__}: {exc}")
            return None, Failure.FAILED

    # reads ---------------------------------------------------------------------------
    def _reader(self, name: str) -> Callable[[dict[str, Any]], bytes]:
        def read(options: dict[str, Any]) -> bytes:
            offset = int(options.get("offset", 0))
            decision = self.core.read(name, str(options.get("device", "")), offset)
            if isinstance(decision, NeedGetter):
                result, failure = self._call(decision.callback, decision.args)
                decision = self.core.read_done(decision, result, failure)
            assert isinstance(decision, Answer)
            try:
                return slice_for_offset(decision.value, offset)
            except GattError as exc:
                raise dbus_error(exc) from None

        return read

    # writes --------------------------------------------------------------------------
    def _writer(self, name: str) -> Callable[[bytearray, dict[str, Any]], None]:
        def write(value: bytearray, options: dict[str, Any]) -> None:
            decision: Ack | Reject | CallSetter = self.core.write(
                name, bytes(value), str(options.get("device", "")),
                authorize_only=bool(options.get("prepare-authorize", False)))
            if isinstance(decision, CallSetter):
                result, failure = self._call(decision.callback, decision.args)
                decision = self.core.write_done(decision, result, failure)
            if isinstance(decision, Reject):
                raise dbus_error(refusal(decision.app_code, decision.reason))
            if decision.refresh is not None:
                GLib.idle_add(self._refresh_actuator)

        return write

    def _refresh_actuator(self) -> bool:
        self._publish_actuator()
        return False

    # subscriptions -------------------------------------------------------------------
    def _on_notify(self, name: str) -> Callable[[bool, Any], None]:
        """BlueZero calls this on every StartNotify (its "already notifying" check never
        matches a dbus.Boolean), so each subscriber gets the current value at once."""
        def changed(notifying: bool, chrc: Any) -> None:
            if not notifying:
                return
            decision = self.core.subscribed(name)
            if isinstance(decision, Refresh):
                result, failure = self._call(decision.callback, ())
                payload = self.core.refresh_done(decision, result, failure)
                decision = Push(name, payload if payload is not None
                                else self.core.published(name))
            self.core.set_published(name, decision.payload)
            chrc.set_value(list(decision.payload))

        return changed
