"""The MushPi peripheral's steps, in the order every session runs them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..access import RoomAccess
from ..config import Settings
from ..gatt import Central, PasskeyShown
from .adapter import AdapterKeeper
from .advert_interval import IntervalSettings
from .advertiser import Advertiser
from .application import Application
from .devices import Devices
from .naming import Naming, StageAsker
from .pairing import Agent, Bonds
from .step import Step


class SessionSteps:
    """Application, devices, alias, bonds, pairing agent, advertisement — and the
    adapter keeper the supervisor's finding-adapter state uses."""

    def __init__(self, settings: Settings, access: RoomAccess, *,
                 on_connectivity: Callable[[bool], object], ask_stage: StageAsker,
                 on_passkey: PasskeyShown) -> None:
        timeout = settings.bus_timeout_s
        self.adapter = AdapterKeeper(wanted=settings.ble_adapter, timeout=timeout,
                                     recovery_allowed=settings.ble_adapter_recovery)
        self.application = Application(timeout=timeout)
        self.devices = Devices(timeout=timeout, on_connectivity=on_connectivity)
        self.naming = Naming(prefix=settings.ble_name_prefix, timeout=timeout,
                             ask_stage=ask_stage)
        self.agent = Agent(access, mode=settings.pairing_mode, timeout=timeout,
                           app_root=settings.dbus_app_path, on_passkey=on_passkey)
        self.advertiser = Advertiser(
            app_root=settings.dbus_app_path, service_uuid=settings.ble_service_uuid,
            tx_power=settings.ble_adv_tx_power, enabled=settings.ble_adv_enable,
            timeout=timeout, name=lambda: self.naming.current,
            intervals=IntervalSettings(enabled=settings.ble_advert_intervals,
                                       fast_ms=settings.ble_advert_fast_ms,
                                       fast_s=settings.ble_advert_fast_s,
                                       slow_ms=settings.ble_advert_slow_ms),
            window=access.window)
        self.ordered: list[Step] = [self.application, self.devices, self.naming,
                                    Bonds(access, timeout=timeout), self.agent,
                                    self.advertiser]
        """Registered in this order, undone in reverse; a test may append its own."""

    def __iter__(self) -> Iterator[Step]:
        return iter(self.ordered)

    def all_required_done(self) -> bool:
        return all(step.done for step in self.ordered if step.required)

    async def refresh_name(self) -> None:
        """Recompute the name (or take the pinned one) and apply it live."""
        await self.rename(await self.naming.compute())

    async def rename(self, name: str) -> None:
        """Apply a new advertised name live (alias and advert), no re-registration."""
        if await self.naming.rename(name):
            await self.advertiser.replan()

    @property
    def centrals(self) -> list[Central]:
        return self.devices.centrals

    def snapshot(self) -> dict[str, Any]:
        """Each step's own facts, merged; no fact is reported by two."""
        status = self.adapter.snapshot()
        for step in self.ordered:
            status.update(step.snapshot())
        return status
