"""``org.bluez.GattManager1``: registering applications, and following them.

Registration calls ``GetManagedObjects`` on the caller's unique name at the
application root and builds the database (:mod:`.gatt_db`). Afterwards the
application is followed the way bluetoothd's GDBusClient follows it:

* ``InterfacesRemoved`` of a service object removes that service from the
  database; of a characteristic, leaves it unreachable (ATT 0x0E). The
  application itself stays registered (registering the same root again
  gives AlreadyExists until UnregisterApplication);
* ``InterfacesAdded`` after registration is ignored (logged);
* the application's connection leaving the bus unregisters it;
* ``PropertiesChanged`` with ``Value`` on a notifying characteristic, from
  the registering unique name only, becomes a notification.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from mushpi_ble.dbus import CallContext, DBusError, Interface, Method

from .gatt_db import (
    Attribute,
    Characteristic,
    Database,
    HandleSpace,
    ManagedObjects,
    RegistrationError,
    Service,
    build_database,
)
from .names import (
    ALREADY_EXISTS,
    DOES_NOT_EXIST,
    FAILED,
    GATT_CHARACTERISTIC,
    GATT_MANAGER,
    GATT_SERVICE,
    OBJECT_MANAGER,
    PROPERTIES,
    TEXT_ALREADY_EXISTS,
    TEXT_DOES_NOT_EXIST,
)
from .runtime import Runtime
from .uuids import normalize_uuid

if TYPE_CHECKING:
    from .adapter import FakeAdapter

log = logging.getLogger(__name__)

MAX_VALUE_LEN = 512


@attrs.define(eq=False)
class Application:
    """A registered (or registering) GATT application."""

    sender: str
    root: str
    registered: bool = False
    database: Database | None = None
    ignored_paths: list[str] = attrs.Factory(list)  # objects added after registration

    @property
    def services(self) -> list[Service]:
        return self.database.services if self.database else []

    @property
    def attributes(self) -> list[Attribute]:
        return self.database.attributes if self.database else []

    def characteristics(self) -> Iterator[Characteristic]:
        for service in self.services:
            yield from service.characteristics

    def characteristic(self, uuid: str) -> Characteristic:
        """The first characteristic with ``uuid`` (any accepted form)."""
        wanted = normalize_uuid(uuid)
        for chrc in self.characteristics():
            if chrc.uuid == wanted:
                return chrc
        raise KeyError(uuid)


class GattManager:
    """One adapter's GATT manager and database."""

    def __init__(self, runtime: Runtime, adapter: FakeAdapter) -> None:
        self._runtime = runtime
        self._adapter = adapter
        self.apps: list[Application] = []
        self.space = HandleSpace()

    def interface(self) -> Interface:
        return Interface(GATT_MANAGER, methods=[
            Method("RegisterApplication", "oa{sv}", "", handler=self._register,
                   arg_names=["application", "options"], timeout=math.inf),
            Method("UnregisterApplication", "o", "", handler=self._unregister,
                   arg_names=["application"], timeout=math.inf),
        ])

    def registered(self) -> list[Application]:
        return [app for app in self.apps if app.registered]

    def _find(self, sender: str, root: str) -> Application | None:
        return next((a for a in self.apps if a.sender == sender and a.root == root), None)

    # -- registration -----------------------------------------------------
    async def _register(self, ctx: CallContext, root: str, _options: dict[str, Any]) -> None:
        runtime = self._runtime
        await runtime.faults.delay("RegisterApplication")
        refusal = runtime.faults.take_refusal("RegisterApplication")
        if refusal is not None:
            raise DBusError(*refusal)
        if self._find(ctx.sender, root) is not None:
            raise DBusError(ALREADY_EXISTS, TEXT_ALREADY_EXISTS)
        app = Application(ctx.sender, root)
        self.apps.append(app)
        try:
            objects = await self._fetch(app)
            database = build_database(objects, self.space)
        except RegistrationError as exc:
            log.info("application refused adapter=%s sender=%s root=%s error=%r detail=%r",
                     self._adapter.id, ctx.sender, root, exc.text, exc.detail)
            self._discard(app)
            raise DBusError(FAILED, exc.text) from None
        except BaseException:
            self._discard(app)
            raise
        app.database = database
        if app not in self.apps:
            self._release_handles(app)
            raise DBusError(FAILED, "application left during registration")
        app.registered = True
        for path, iface, handle in database.handle_writes:
            await runtime.call(ctx.sender, path, PROPERTIES, "Set", "ssv",
                               (iface, "Handle", ("q", handle)), no_reply=True)
        first = min((s.handle for s in database.services), default=0)
        last = max((s.end_handle for s in database.services), default=0)
        log.info("application registered adapter=%s sender=%s root=%s services=%d "
                 "handles=0x%04x-0x%04x", self._adapter.id, ctx.sender, root,
                 len(database.services), first, last)
        self._adapter.database_changed()

    async def _fetch(self, app: Application) -> ManagedObjects:
        try:
            (objects,) = await self._runtime.call(app.sender, app.root, OBJECT_MANAGER,
                                                  "GetManagedObjects")
        except DBusError as exc:
            log.info("application objects unreadable sender=%s root=%s error=%s", app.sender,
                     app.root, exc.name)
            return {}
        return dict(objects)

    async def _unregister(self, ctx: CallContext, root: str) -> None:
        await self._runtime.faults.delay("UnregisterApplication")
        refusal = self._runtime.faults.take_refusal("UnregisterApplication")
        if refusal is not None:
            raise DBusError(*refusal)
        app = self._find(ctx.sender, root)
        if app is None:
            raise DBusError(DOES_NOT_EXIST, TEXT_DOES_NOT_EXIST)
        self._discard(app)
        log.info("application unregistered adapter=%s sender=%s root=%s", self._adapter.id,
                 ctx.sender, root)

    def _discard(self, app: Application) -> None:
        if app in self.apps:
            self.apps.remove(app)
        was_registered = app.registered
        app.registered = False
        if app.database is not None:
            self._adapter.forget_characteristics(list(app.characteristics()))
            self._release_handles(app)
        if was_registered:
            self._adapter.database_changed()
        else:
            self._runtime.changed()

    def _release_handles(self, app: Application) -> None:
        for service in app.services:
            self.space.release(service.handle, service.end_handle)

    def forget_all(self) -> None:
        """Drop every application silently (adapter gone or bluetoothd stopped)."""
        for app in list(self.apps):
            self._discard(app)
        self.space = HandleSpace()

    # -- following the applications -----------------------------------------
    def drop_sender(self, sender: str) -> None:
        for app in [a for a in self.apps if a.sender == sender]:
            log.info("application dropped adapter=%s sender=%s root=%s reason=owner-left",
                     self._adapter.id, sender, app.root)
            self._discard(app)

    def lookup(self, sender: str, path: str) -> tuple[Application, Characteristic] | None:
        for app in self.apps:
            if app.registered and app.sender == sender:
                for chrc in app.characteristics():
                    if chrc.path == path:
                        return app, chrc
        return None

    def owners_of(self, path: str) -> list[str]:
        return [app.sender for app in self.registered()
                if any(c.path == path for c in app.characteristics())]

    def on_interfaces_removed(self, sender: str, path: str, interfaces: Sequence[str]) -> None:
        for app in [a for a in self.apps if a.registered and a.sender == sender]:
            assert app.database is not None
            if GATT_SERVICE in interfaces:
                service = next((s for s in app.services if s.path == path), None)
                if service is not None:
                    app.database.services.remove(service)
                    owned = {service.path, *(c.path for c in service.characteristics),
                             *(d.path for c in service.characteristics for d in c.descriptors)}
                    app.database.attributes[:] = [a for a in app.database.attributes
                                                  if a.path not in owned]
                    self._adapter.forget_characteristics(service.characteristics)
                    self.space.release(service.handle, service.end_handle)
                    log.info("service removed adapter=%s sender=%s path=%s reason=interfaces-"
                             "removed app_root=%s", self._adapter.id, sender, path, app.root)
                    self._adapter.database_changed()
            if GATT_CHARACTERISTIC in interfaces:
                for chrc in app.characteristics():
                    if chrc.path == path and not chrc.removed:
                        chrc.removed = True
                        log.info("characteristic unreachable adapter=%s sender=%s path=%s "
                                 "reason=interfaces-removed", self._adapter.id, sender, path)
                        self._runtime.changed()

    def on_interfaces_added(self, sender: str, path: str) -> None:
        for app in self.registered():
            if app.sender == sender and (path == app.root or path.startswith(
                    app.root.rstrip("/") + "/")):
                if any(attr.path == path for attr in app.attributes):
                    # the announcement of an object the database already holds: sent
                    # before RegisterApplication, handled here after it (bluetoothd
                    # reads its socket in order; our signal pump runs beside the call)
                    continue
                app.ignored_paths.append(path)
                log.info("interfaces added ignored adapter=%s sender=%s path=%s "
                         "reason=after-registration", self._adapter.id, sender, path)
                self._runtime.changed()

    def on_properties_changed(self, sender: str, path: str,
                              changed: Mapping[str, tuple[str, Any]]) -> bool:
        """Turn a ``Value`` change into a notification; True when it was ours."""
        found = self.lookup(sender, path)
        if found is None:
            return False
        app, chrc = found
        if "Value" not in changed:
            return True
        if chrc.removed or not (chrc.can_notify or chrc.can_indicate):
            log.debug("value change not notified path=%s reason=not-notifying", path)
            return True
        signature, value = changed["Value"]
        if signature != "ay":
            log.warning("malformed notification sender=%s path=%s signature=%s", sender, path,
                        signature)
            return True
        self._adapter.notify(app, chrc, bytes(value)[:MAX_VALUE_LEN])
        return True
