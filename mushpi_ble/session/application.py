"""The application step: our GATT application registered with bluetoothd."""

from __future__ import annotations

from functools import partial
from typing import Any

from ..dbus import ConnectionLost, DBusError
from ..errors import RegistrationRefused
from ..gatt import GattApplication, InFlight
from .step import CentralConnected, CentralLeft, SessionEvent, Step

DATABASE_FAILED = "Failed to create entry in database"
"""bluetoothd's refusal when a service does not fit its database (src/gatt-database.c)."""


class Application(Step):
    """Registers the exported application; it is required before ``start()`` returns."""

    name = "application"
    required = True

    def __init__(self, *, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout
        self.app: GattApplication | None = None
        self.registered = False

    def serve(self, app: GattApplication) -> None:
        """The run's application, exported by the supervisor."""
        self.app = app

    def detach(self) -> None:
        super().detach()
        self.app = None
        self.registered = False

    async def register(self, adapter: str) -> None:
        assert self.app is not None
        try:
            await self.app.register(adapter, timeout=self._timeout)
        except ConnectionLost:
            raise
        except DBusError as exc:
            fixed = self.app.fixed_handles()
            clash = (f"; the fixed handles ({fixed}) may clash with a service bluetoothd "
                     "already holds there (another application's, or a plugin's)"
                     if fixed and DATABASE_FAILED in exc.text else "")
            raise RegistrationRefused(
                f"bluetoothd refused the GATT application: {exc.name}: {exc.text}{clash}"
            ) from exc
        self.registered = True
        self.host.changed()

    async def unregister(self, timeout: float) -> None:
        assert self.app is not None
        await self.app.unregister(timeout=timeout)
        self.registered = False

    def forget(self) -> None:
        assert self.app is not None
        self.app.registered_on = None
        self.app.reset_subscriptions()
        self.registered = False
        self.host.changed()

    def on_event(self, event: SessionEvent) -> None:
        if isinstance(event, CentralLeft) and self.app is not None:
            # no longer a reason to stay on signals; requests it left open count only
            # when its own link ended (not when bluetoothd went away)
            self.app.device_left(event.central.path, link_ended=not event.session_ended)
        elif (isinstance(event, CentralConnected) and event.central.bonded
              and self.app is not None and self.registered):
            # bluetoothd kept its subscriptions and will answer its CCC writes itself
            self.host.spawn(partial(self.app.replay_subscriptions, event.central))

    def snapshot(self) -> dict[str, Any]:
        app = self.app
        return {
            "registered": self.registered,
            "subscriptions": ({s.spec.name: s.subscribed for s in app.characteristics
                               if s.spec.notifies} if app is not None else {}),
            "left_waiting": (app.in_flight if app is not None else InFlight()).counts(),
        }
