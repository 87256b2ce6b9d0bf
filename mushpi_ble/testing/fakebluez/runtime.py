"""What every part of the fake shares: settings, the current bus link, faults.

A restart replaces the :class:`Link` (a new connection, a new unique name)
while adapters, settings and pending faults stay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import trio

from mushpi_ble.dbus import Connection

from .agents import AgentManager
from .faults import Faults

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_INCLUDES = ("tx-power", "appearance", "local-name")


@attrs.frozen
class Config:
    """Knobs of the fake; defaults follow a Raspberry Pi with stock main.conf."""

    power_on_restart: bool = True
    system_name: str = "raspberrypi"
    supported_includes: tuple[str, ...] = DEFAULT_INCLUDES
    supported_instances: int = 5
    secondary_channels: tuple[str, ...] = ()
    can_set_tx_power: bool = False
    keep_bonded_ccc: bool = False
    """bluetoothd's way with a bonded device (seen on 5.82): its CCC values outlive the
    link (no StopNotify when it leaves) and are its again when it comes back, so enabling
    the same CCC again is answered without StartNotify. Signal-path characteristics only
    here (a notify socket of the device is closed and forgotten as before)."""
    advert_intervals: str = "honoured"
    """``MinInterval``/``MaxInterval``: "honoured" (5.77+, or -E before), "ignored" (before
    5.77 without -E: parsed as absent) or "refused" (a kernel that refuses advertising
    parameters with intervals: "Failed to register advertisement")."""
    min_tx_power: int = -21
    max_tx_power: int = 10
    server_mtu: int = 517
    call_timeout: float = 25.0
    device_remove_delay: float = 0.0
    removed_signal_delay: float = 0.0
    """How long after its reply to ``RemoveDevice`` the device's InterfacesRemoved leaves:
    bluetoothd's gdbus emits object-manager signals from its idle loop, after the reply."""
    paired_signal_delay: float = 0.0
    """How long after a pairing completes its ``Bonded``/``Paired`` PropertiesChanged
    leaves (the state itself changes at once): a phone's retried write may overtake it."""
    merge_prepared_writes: bool = True
    drop_adverts_on_connect: bool = False
    """A controller that stops advertising when a central connects (and bluetoothd forgets)."""
    halt_advertising_on_connect: bool = False
    """The kernel's way (seen on 6.1 and 6.12): the controller stops advertising when a
    central connects and it is not restarted while one is connected, yet bluetoothd keeps
    the advert registered (ActiveInstances unchanged); a new registration restarts it."""
    lose_adverts_on_power_off: bool = False
    """The kernel's way on power-on after a power-off or rfkill block (6.1 with an
    extended-advertising controller): the reset controller has lost its advertising
    sets and the kernel does not set them up again, yet bluetoothd keeps the advert."""
    agent_timeout: float = 60.0
    just_works_repairing: str = "never"
    notify_confirm_on_socket: bool = True
    """bluetoothd 5.80+: an indication sent from a notify socket is confirmed by one byte
    0x01 written back into that socket; before, by ``Confirm()`` over D-Bus."""
    notify_socket_per_device: bool = True
    """bluetoothd 5.69+: AcquireNotify per subscribing phone, each socket feeding that phone;
    before, one AcquireNotify (for the first phone) whose socket feeds every subscriber
    and closes when the last one goes."""
    close_wrong_notify_socket: bool = False
    """bluez/bluez#1452 (up to 5.87): when a phone disconnects, bluetoothd closes the
    first notify socket in its list, which may be another, still-connected phone's."""


@attrs.define(eq=False)
class Link:
    """One connection of the fake to the bus, and the tasks that live with it."""

    conn: Connection
    nursery: trio.Nursery
    stop_requested: trio.Event = attrs.Factory(trio.Event)
    graceful: bool = True

    @property
    def unique_name(self) -> str:
        return self.conn.unique_name


class Runtime:
    """Shared state: config, faults, the current link, and change notification."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.faults = Faults()
        self.agents = AgentManager(self)
        self.link: Link | None = None
        self._changed = trio.Event()

    def require_link(self) -> Link:
        if self.link is None:
            raise RuntimeError("the fake bluetoothd is not on the bus right now")
        return self.link

    def changed(self) -> None:
        """Wake everyone waiting in :meth:`wait_until`."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], T | None], timeout: float) -> T:
        """Wait until ``predicate()`` is truthy and return it; TooSlowError on timeout."""
        with trio.fail_after(timeout):
            while True:
                result = predicate()
                if result:
                    return result
                await self._changed.wait()

    async def call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        no_reply: bool = False,
    ) -> tuple[Any, ...]:
        """Call into an application, honouring injected delays for ``member``."""
        link = self.require_link()
        await self.faults.delay(member)
        return await link.conn.call(destination, path, interface, member, signature, body,
                                    timeout=self.config.call_timeout, no_reply=no_reply)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` as a task of the current link (gone on restart)."""
        self.require_link().nursery.start_soon(fn, *args)
