"""The top-level fake bluetoothd: owns ``org.bluez`` on its own connection.

It runs in-process, in a nursery of its own, and can be restarted: the old
connection goes away (``org.bluez`` and its unique name are released) and a
new one takes the name again, so applications see exactly the
``NameOwnerChanged`` sequence a real ``systemctl restart bluetooth`` gives.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from mushpi_ble.dbus import DBusError, MatchRule, SignalMessage, open_connection

from .adapter import FakeAdapter, adapter_index
from .advertising import Advertisement
from .agents import AGENT_MANAGER_PATH, Agent, AgentManager
from .central import FakeCentral
from .gatt_manager import Application
from .names import (
    ADVERT_REGISTER_FAILED,
    ADVERTISEMENT,
    BLUEZ,
    BUS_NAME,
    FAILED,
    GATT_CHARACTERISTIC,
    NAME_FLAG_DO_NOT_QUEUE,
    NAME_PRIMARY_OWNER,
    OBJECT_MANAGER,
    PROPERTIES,
)
from .rfkill import FakeRfkill
from .runtime import DEFAULT_INCLUDES, Config, Link, Runtime

log = logging.getLogger(__name__)


class NotDiscoverable(RuntimeError):
    """A scanning phone found no advert of the adapter."""

T = TypeVar("T")
SHUTDOWN_TIMEOUT = 3.0
NAME_RELEASE_TIMEOUT = 5.0


class FakeBluez:
    """A stand-in for bluetoothd on a (private) bus. Start it with :meth:`serve`."""

    def __init__(self, bus_address: str, adapters: Iterable[str], config: Config) -> None:
        self.bus_address = bus_address
        self.runtime = Runtime(config)
        self._adapters: dict[str, FakeAdapter] = {}
        for position, adapter_id in enumerate(adapters):
            self._new_adapter(adapter_id, position)
        self._nursery: trio.Nursery | None = None
        self._link_done: trio.Event | None = None
        self.rfkill: FakeRfkill | None = None

    @classmethod
    @asynccontextmanager
    async def serve(
        cls,
        bus_address: str,
        adapters: Iterable[str] = ("hci0",),
        *,
        power_on_restart: bool = True,
        system_name: str = "raspberrypi",
        supported_includes: Iterable[str] = DEFAULT_INCLUDES,
        supported_instances: int = 5,
        secondary_channels: Iterable[str] = (),
        can_set_tx_power: bool = False,
        server_mtu: int = 517,
        call_timeout: float = 25.0,
        device_remove_delay: float = 0.0,
        removed_signal_delay: float = 0.0,
        paired_signal_delay: float = 0.0,
        merge_prepared_writes: bool = True,
        drop_adverts_on_connect: bool = False,
        halt_advertising_on_connect: bool = False,
        lose_adverts_on_power_off: bool = False,
        rfkill_dir: Path | None = None,
        agent_timeout: float = 60.0,
        just_works_repairing: str = "never",
        notify_confirm_on_socket: bool = True,
        close_wrong_notify_socket: bool = False,
        notify_socket_per_device: bool = True,
        advert_intervals: str = "honoured",
        keep_bonded_ccc: bool = False,
    ) -> AsyncIterator[FakeBluez]:
        """Own ``org.bluez`` on ``bus_address`` for the duration of the block.

        ``rfkill_dir`` makes a fake ``/sys/class/rfkill`` there whose switch files
        block and unblock the adapters (see :class:`FakeRfkill`).
        """
        config = Config(
            power_on_restart=power_on_restart, system_name=system_name,
            supported_includes=tuple(supported_includes),
            supported_instances=supported_instances,
            secondary_channels=tuple(secondary_channels), can_set_tx_power=can_set_tx_power,
            server_mtu=server_mtu, call_timeout=call_timeout,
            device_remove_delay=device_remove_delay,
            removed_signal_delay=removed_signal_delay,
            paired_signal_delay=paired_signal_delay,
            merge_prepared_writes=merge_prepared_writes,
            drop_adverts_on_connect=drop_adverts_on_connect,
            halt_advertising_on_connect=halt_advertising_on_connect,
            lose_adverts_on_power_off=lose_adverts_on_power_off,
            agent_timeout=agent_timeout, just_works_repairing=just_works_repairing,
            notify_confirm_on_socket=notify_confirm_on_socket,
            close_wrong_notify_socket=close_wrong_notify_socket,
            notify_socket_per_device=notify_socket_per_device,
            advert_intervals=advert_intervals, keep_bonded_ccc=keep_bonded_ccc,
        )
        bluez = cls(bus_address, adapters, config)
        async with trio.open_nursery() as nursery:
            bluez._nursery = nursery
            if rfkill_dir is not None:
                bluez.rfkill = FakeRfkill(rfkill_dir)
                for adapter_id in bluez._adapters:
                    bluez.rfkill.add(adapter_id)
                await nursery.start(bluez.rfkill.follow, lambda: dict(bluez._adapters))
            await bluez._start_link()
            try:
                yield bluez
            finally:
                with trio.move_on_after(SHUTDOWN_TIMEOUT) as cleanup:
                    cleanup.shield = True
                    await bluez._stop_link(graceful=True)
                nursery.cancel_scope.cancel()

    # -- views ---------------------------------------------------------------
    @property
    def unique_name(self) -> str:
        """The unique name of the current connection (changes on restart)."""
        return self.runtime.require_link().unique_name

    @property
    def adapters(self) -> Mapping[str, FakeAdapter]:
        return dict(self._adapters)

    def adapter(self, adapter_id: str = "hci0") -> FakeAdapter:
        return self._adapters[adapter_id]

    def applications(self) -> list[Application]:
        return [app for a in self._adapters.values() for app in a.applications]

    def advertisements(self) -> list[Advertisement]:
        return [ad for a in self._adapters.values() for ad in a.advertising.registered()]

    async def wait_until(self, predicate: Callable[[], T | None], timeout: float = 2.0) -> T:
        """Wait until ``predicate()`` is truthy (re-checked on every state change)."""
        return await self.runtime.wait_until(predicate, timeout)

    @property
    def agent_manager(self) -> AgentManager:
        return self.runtime.agents

    @property
    def agents(self) -> list[Agent]:
        """Registered pairing agents, in registration order."""
        return self.runtime.agents.agents

    @property
    def default_agent(self) -> Agent | None:
        """The agent incoming pairing requests go to."""
        return self.runtime.agents.default

    async def wait_for_default_agent(self, timeout: float = 2.0, *,
                                     owner: str | None = None) -> Agent:
        """The default agent (of ``owner`` when given), waiting for one to register."""
        def find() -> Agent | None:
            agent = self.runtime.agents.default
            return agent if agent is not None and owner in (None, agent.owner) else None
        return await self.wait_until(find, timeout)

    async def wait_for_application(self, timeout: float = 2.0, *,
                                   adapter: str | None = None) -> Application:
        """The first registered application (waits for one to register)."""
        def find() -> Application | None:
            apps = (self._adapters[adapter].applications if adapter in self._adapters
                    else [] if adapter else self.applications())
            return apps[0] if apps else None
        return await self.wait_until(find, timeout)

    async def wait_for_advertisement(self, timeout: float = 2.0, *,
                                     adapter: str | None = None) -> Advertisement:
        """The first registered advertisement (waits for one to register)."""
        def find() -> Advertisement | None:
            ads = (self._adapters[adapter].advertising.registered() if adapter in self._adapters
                   else [] if adapter else self.advertisements())
            return ads[0] if ads else None
        return await self.wait_until(find, timeout)

    # -- centrals ------------------------------------------------------------
    async def connect_central(self, adapter: str = "hci0", address: str = "11:22:33:44:55:66",
                              mtu: int = 517, *, security: str = "low", trusted: bool = False,
                              address_type: str = "random", announce: bool = True,
                              discover: bool = False, transport: str = "LE") -> FakeCentral:
        """A phone connects; its Device1 appears (Connected=true) via InterfacesAdded.

        ``announce=False`` plays a connect signal the application missed: the
        Device1 object exists (Properties.Get, GetManagedObjects) but nothing
        announced it. ``discover=True`` is a phone that must first find the
        device by scanning: it fails unless an advert is on the air.
        ``transport="BR/EDR"`` connects over BR/EDR (the link option says so).
        """
        target = self._adapters[adapter]
        if not target.powered:
            raise RuntimeError(f"{adapter} is powered off: nothing can connect")
        if discover and not self.on_air(adapter):
            raise NotDiscoverable(f"{adapter} advertises nothing: a scanning phone "
                                  "cannot find it")
        if address.upper() in target.centrals:
            raise ValueError(f"{address} is already connected to {adapter}")
        central = FakeCentral(self.runtime, target, address, mtu, security=security,
                              trusted=trusted, transport=transport)
        target.centrals[central.address] = central
        central.device_path = target.add_device(central, address_type, announce=announce)
        central.restore_ccc()
        log.info("central connected adapter=%s address=%s mtu=%d security=%s", adapter,
                 central.address, central.mtu, security)
        if self.runtime.config.drop_adverts_on_connect:
            target.advertising.drop_silently(announce=False)
        if self.runtime.config.halt_advertising_on_connect:
            target.advertising.halted = True
        await trio.lowlevel.checkpoint()
        return central

    def on_air(self, adapter: str = "hci0") -> bool:
        """A connectable advert is registered on the adapter, it is powered, and the
        controller has not stopped advertising for a connected central."""
        target = self._adapters[adapter]
        if (target.advertising.halted and target.centrals) or target.advertising.lost:
            return False
        return target.powered and any(a.type == "peripheral"
                                      for a in target.advertising.registered())

    # -- faults --------------------------------------------------------------
    def refuse_advertisements(self, error: str = FAILED,
                              text: str = ADVERT_REGISTER_FAILED) -> None:
        """Refuse every RegisterAdvertisement until :meth:`accept_advertisements`: by
        default as bluetoothd < 5.87 on Raspberry Pi kernels 6.12.93 / 6.18.34 does
        (MGMT Invalid Parameters 0x0d in its log, "Failed to register advertisement")."""
        self.runtime.faults.refuse_always("RegisterAdvertisement", error, text)

    def accept_advertisements(self) -> None:
        self.runtime.faults.stop_refusing("RegisterAdvertisement")

    async def block(self, adapter: str = "hci0", *, soft: bool | None = None,
                    hard: bool | None = None) -> None:
        """rfkill: through the fake switch files when there are some, else directly."""
        if self.rfkill is not None:
            self.rfkill.block(adapter, soft=soft, hard=hard)
            target = self._adapters[adapter]
            await self.wait_until(lambda: (soft is None or target.soft_blocked == soft)
                                  and (hard is None or target.hard_blocked == hard))
        else:
            await self._adapters[adapter].set_blocked(soft=soft, hard=hard)

    def delay_next_call(self, member: str, seconds: float) -> None:
        """Delay the next call named ``member``, either direction (e.g. ReadValue)."""
        self.runtime.faults.delay_next_call(member, seconds)

    def refuse_next_registration(self, error: str = FAILED,
                                 text: str = "Failed to register application", *,
                                 member: str = "RegisterApplication") -> None:
        """Answer the next ``member`` call with this error.

        ``member`` is RegisterApplication (default), UnregisterApplication or
        RegisterAdvertisement — e.g. AccessDenied to play a strict bus policy.
        """
        self.runtime.faults.refuse_next(member, error, text)

    def stop_reading(self) -> None:
        """Stall: stop reading the bus socket, so everything sent to us backs up."""
        self.runtime.require_link().conn.pause_receiving()
        log.info("stalled unique_name=%s", self.unique_name)

    def resume_reading(self) -> None:
        self.runtime.require_link().conn.resume_receiving()
        log.info("resumed unique_name=%s", self.unique_name)

    async def restart(self, *, graceful: bool = True) -> None:
        """Restart: drop everything, come back on a new connection re-owning org.bluez.

        ``graceful`` sends what a clean shutdown sends (Release to adverts,
        InterfacesRemoved); otherwise the connection just drops, like a crash.
        """
        old = self.unique_name
        await self._stop_link(graceful=graceful)
        self.runtime.agents.forget_all()
        for adapter in self._adapters.values():
            adapter.reset(powered=self.runtime.config.power_on_restart)
        await self._start_link()
        log.info("restarted old_unique_name=%s unique_name=%s graceful=%s", old,
                 self.unique_name, graceful)

    async def stop(self, *, graceful: bool = True) -> None:
        """bluetoothd stops (``systemctl stop bluetooth``) and stays away until
        :meth:`start`: what the peripheral shows meanwhile."""
        await self._stop_link(graceful=graceful)
        self.runtime.agents.forget_all()
        for adapter in self._adapters.values():
            adapter.reset(powered=self.runtime.config.power_on_restart)
        log.info("stopped graceful=%s", graceful)

    async def start(self) -> None:
        """bluetoothd is back after :meth:`stop`, on a new connection."""
        await self._start_link()
        log.info("started unique_name=%s", self.unique_name)

    async def remove_adapter(self, adapter_id: str) -> None:
        """The controller is unplugged: InterfacesRemoved, adverts released."""
        adapter = self._adapters.pop(adapter_id)
        await adapter.remove()

    async def add_adapter(self, adapter_id: str) -> FakeAdapter:
        """A controller is plugged in: InterfacesAdded, powered per AutoEnable."""
        if adapter_id in self._adapters:
            raise ValueError(f"{adapter_id} already exists")
        adapter = self._new_adapter(adapter_id, len(self._adapters))
        adapter.attach(self.runtime.require_link())
        self.runtime.changed()
        await trio.lowlevel.checkpoint()
        return adapter

    def _new_adapter(self, adapter_id: str, position: int) -> FakeAdapter:
        used = {a.index for a in self._adapters.values()}
        index = adapter_index(adapter_id, position)
        while index in used:
            index += 1
        adapter = FakeAdapter(self.runtime, adapter_id, index)
        self._adapters[adapter_id] = adapter
        return adapter

    # -- the link ------------------------------------------------------------
    async def _start_link(self) -> None:
        assert self._nursery is not None
        self._link_done = trio.Event()
        await self._nursery.start(self._run_link, self._link_done)

    async def _stop_link(self, *, graceful: bool) -> None:
        link, done = self.runtime.link, self._link_done
        if link is None or done is None:
            return
        link.graceful = graceful
        link.stop_requested.set()
        await done.wait()

    async def _run_link(self, done: trio.Event, task_status: trio.TaskStatus[Link]) -> None:
        try:
            async with open_connection(self.bus_address,
                                       call_timeout=self.runtime.config.call_timeout,
                                       timeout_error=(FAILED, "timeout")) as conn, \
                    trio.open_nursery() as nursery:
                link = Link(conn, nursery)
                for rule, handler in self._signal_routes():
                    await nursery.start(self._pump, link, rule, handler)
                conn.add_object_manager("/")
                conn.export(AGENT_MANAGER_PATH, [self.runtime.agents.interface()])
                await self._acquire_name(link)
                self.runtime.link = link
                for adapter in self._adapters.values():
                    adapter.attach(link)
                log.info("serving bus_name=%s unique_name=%s adapters=%s", BLUEZ,
                         conn.unique_name, ",".join(self._adapters))
                self.runtime.changed()
                task_status.started(link)
                await link.stop_requested.wait()
                if link.graceful:
                    await self._shutdown(link)
                nursery.cancel_scope.cancel()
        finally:
            self.runtime.link = None
            done.set()

    async def _acquire_name(self, link: Link) -> None:
        owner = await link.conn.watch_name_owner(BLUEZ)
        with trio.move_on_after(NAME_RELEASE_TIMEOUT):
            await owner.wait_value("")
        result = await link.conn.request_name(BLUEZ, NAME_FLAG_DO_NOT_QUEUE)
        if result != NAME_PRIMARY_OWNER:
            raise RuntimeError(f"{BLUEZ} is owned by {owner.value or 'someone else'} "
                               f"(RequestName answered {result})")

    async def _shutdown(self, link: Link) -> None:
        await self.runtime.agents.release_all()
        for adapter in list(self._adapters.values()):
            await adapter.remove()
        try:
            await link.conn.release_name(BLUEZ)  # also flushes everything queued before it
        except DBusError as exc:
            log.debug("release name failed error=%s", exc)
        log.info("stopped unique_name=%s", link.unique_name)

    # -- signals from applications ---------------------------------------------
    def _signal_routes(self) -> list[tuple[MatchRule, Callable[[Link, SignalMessage], None]]]:
        return [
            (MatchRule(sender=BUS_NAME, interface=BUS_NAME, member="NameOwnerChanged"),
             self._on_name_owner_changed),
            (MatchRule(interface=PROPERTIES, member="PropertiesChanged"),
             self._on_properties_changed),
            (MatchRule(interface=OBJECT_MANAGER, member="InterfacesRemoved"),
             self._on_interfaces_removed),
            (MatchRule(interface=OBJECT_MANAGER, member="InterfacesAdded"),
             self._on_interfaces_added),
        ]

    async def _pump(self, link: Link, rule: MatchRule,
                    handler: Callable[[Link, SignalMessage], None],
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with link.conn.subscribe(rule, capacity=8192, overflow_timeout=5.0) as signals:
            task_status.started()
            async for signal in signals:
                if signal.sender == link.unique_name:
                    continue
                try:
                    handler(link, signal)
                except Exception:
                    log.exception("signal handling failed member=%s path=%s", signal.member,
                                  signal.path)

    def _on_name_owner_changed(self, _link: Link, signal: SignalMessage) -> None:
        name, _old, new = signal.body
        if name.startswith(":") and not new:
            self.runtime.agents.drop_sender(name)
            for adapter in self._adapters.values():
                adapter.gatt.drop_sender(name)
                adapter.advertising.drop_sender(name)

    def _on_properties_changed(self, _link: Link, signal: SignalMessage) -> None:
        interface, changed, invalidated = signal.body
        if interface == GATT_CHARACTERISTIC:
            taken = any(a.gatt.on_properties_changed(signal.sender, signal.path, changed)
                        for a in list(self._adapters.values()))
            if not taken and "Value" in changed:
                owners = [o for a in self._adapters.values() for o in a.gatt.owners_of(
                    signal.path)]
                if owners:
                    log.warning("notification ignored sender=%s path=%s registered_by=%s",
                                signal.sender, signal.path, ",".join(owners))
        elif interface == ADVERTISEMENT:
            for adapter in self._adapters.values():
                adapter.advertising.on_properties_changed(signal.sender, signal.path, changed,
                                                          invalidated)

    def _on_interfaces_removed(self, _link: Link, signal: SignalMessage) -> None:
        path, interfaces = signal.body
        for adapter in list(self._adapters.values()):
            adapter.gatt.on_interfaces_removed(signal.sender, path, interfaces)

    def _on_interfaces_added(self, _link: Link, signal: SignalMessage) -> None:
        path: Any = signal.body[0]
        for adapter in self._adapters.values():
            adapter.gatt.on_interfaces_added(signal.sender, str(path))
