"""``org.bluez.Adapter1`` at ``/org/bluez/hciN``, with its devices.

An adapter owns its GATT database (:class:`GattManager`), its advertising
manager and the simulated centrals connected to it. Property changes made
here (not through ``Properties.Set``) emit ``PropertiesChanged`` themselves.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

import attrs
import trio

from mushpi_ble.dbus import CallContext, DBusError, Interface, Method, Property

from .advertising import Advertisement, AdvertisingManager
from .gatt_db import Characteristic
from .gatt_manager import Application, GattManager
from .names import (
    ADAPTER,
    BLOCKED,
    DEVICE,
    DOES_NOT_EXIST,
    GATT_CHARACTERISTIC,
    INVALID_ARGUMENTS,
    TEXT_BLOCKED,
    TEXT_DOES_NOT_EXIST,
    TEXT_INVALID_ARGUMENTS,
)
from .runtime import Link, Runtime

if TYPE_CHECKING:
    from .central import FakeCentral

log = logging.getLogger(__name__)

BASE_UUIDS = (
    "00001800-0000-1000-8000-00805f9b34fb",
    "00001801-0000-1000-8000-00805f9b34fb",
    "0000180a-0000-1000-8000-00805f9b34fb",
)
DEFAULT_DISCOVERABLE_TIMEOUT = 180


def adapter_index(adapter_id: str, fallback: int) -> int:
    """N of "hciN", or ``fallback`` for other names."""
    digits = adapter_id[3:] if adapter_id.startswith("hci") else ""
    return int(digits) if digits.isdigit() else fallback


@attrs.define(eq=False)
class _Device:
    address: str
    path: str
    address_type: str
    connected: bool = True
    removal: trio.CancelScope | None = None
    paired: bool = False
    bonded: bool = False
    trusted: bool = False
    name: str = ""


class FakeAdapter:
    """One simulated controller, as bluetoothd presents it on D-Bus."""

    def __init__(self, runtime: Runtime, adapter_id: str, index: int) -> None:
        self._runtime = runtime
        self.id = adapter_id
        self.index = index
        self.path = f"/org/bluez/{adapter_id}"
        self.address = f"00:AA:01:00:00:{index & 0xFF:02X}"
        self.kept_ccc: dict[str, dict[Any, int]] = {}
        """CCC values bluetoothd keeps for bonded devices that left (``keep_bonded_ccc``)."""
        system = runtime.config.system_name
        self.name = system if index == 0 else f"{system} #{index + 1}"
        self._alias: str | None = None
        self.powered = True
        self.soft_blocked = False
        self.hard_blocked = False
        self._powered_before_block = True
        self.discoverable = False
        self.pairable = True
        self.discoverable_timeout = DEFAULT_DISCOVERABLE_TIMEOUT
        self.pairable_timeout = 0
        self.gatt = GattManager(runtime, self)
        self.advertising = AdvertisingManager(runtime, self)
        self.centrals: dict[str, FakeCentral] = {}
        self._devices: dict[str, _Device] = {}
        self._discoverable_scope: trio.CancelScope | None = None

    # -- public view ---------------------------------------------------------
    @property
    def alias(self) -> str:
        """The alias, or the system name when none is set (Alias "" resets it)."""
        return self._alias if self._alias else self.name

    @property
    def applications(self) -> list[Application]:
        return self.gatt.registered()

    @property
    def advertisements(self) -> list[Advertisement]:
        return self.advertising.registered()

    def device_path(self, address: str) -> str:
        return f"{self.path}/dev_{address.upper().replace(':', '_')}"

    # -- D-Bus -----------------------------------------------------------
    def _interface(self) -> Interface:
        return Interface(ADAPTER, methods=[
            Method("RemoveDevice", "o", "", handler=self._remove_device_call,
                   arg_names=["device"]),
        ], properties=[
            Property("Address", "s", get=lambda: self.address),
            Property("AddressType", "s", get=lambda: "public"),
            Property("Name", "s", get=lambda: self.name),
            Property("Alias", "s", get=lambda: self.alias, set=self._set_alias),
            Property("Class", "u", get=lambda: 0),
            Property("Powered", "b", get=lambda: self.powered, set=self._set_powered_bus),
            Property("PowerState", "s", get=lambda: self.power_state),
            Property("Discoverable", "b", get=lambda: self.discoverable,
                     set=self._set_discoverable),
            Property("DiscoverableTimeout", "u", get=lambda: self.discoverable_timeout,
                     set=self._set_discoverable_timeout),
            Property("Pairable", "b", get=lambda: self.pairable, set=self._set_pairable),
            Property("PairableTimeout", "u", get=lambda: self.pairable_timeout,
                     set=self._set_pairable_timeout),
            Property("Discovering", "b", get=lambda: False),
            Property("UUIDs", "as", get=self._uuids),
            Property("Modalias", "s", get=lambda: "usb:v1D6Bp0246d0542"),
            Property("Roles", "as", get=lambda: ["central", "peripheral"]),
        ])

    def _uuids(self) -> list[str]:
        extra = {s.uuid for app in self.gatt.registered() for s in app.services}
        return sorted(set(BASE_UUIDS) | extra)

    def attach(self, link: Link) -> None:
        """Export the adapter on a (new) connection; InterfacesAdded announces it."""
        link.conn.export(self.path, [self._interface(), self.gatt.interface(),
                                     self.advertising.interface()])
        for device in self._devices.values():  # bonds kept across a restart
            link.conn.export(device.path, [self._device_interface(device)])
        log.info("adapter added adapter=%s address=%s powered=%s", self.id, self.address,
                 self.powered)

    def _emit(self, interface: str, changed: dict[str, Any], path: str | None = None) -> None:
        link = self._runtime.link
        if link is not None:
            link.conn.emit_properties_changed_nowait(path or self.path, interface, changed)
        self._runtime.changed()

    # -- property setters (Properties.Set emits the change itself) -----------
    def _set_alias(self, value: str) -> None:
        self._alias = value or None
        log.info("adapter alias set adapter=%s alias=%r", self.id, self.alias)
        self._runtime.changed()

    @property
    def blocked(self) -> bool:
        return self.soft_blocked or self.hard_blocked

    @property
    def power_state(self) -> str:
        """PowerState as bluetoothd 5.66+ has it ("off-blocked" while rfkill blocks)."""
        if self.powered:
            return "on"
        return "off-blocked" if self.blocked else "off"

    def _set_powered_bus(self, value: bool) -> None:
        if value and self.blocked:
            # src/adapter.c: MGMT_STATUS_RFKILLED answers Blocked, mgmt_errstr's text
            log.info("power on refused adapter=%s reason=rfkill", self.id)
            raise DBusError(BLOCKED, TEXT_BLOCKED)
        self._apply_powered(bool(value))
        self._emit(ADAPTER, {"PowerState": self.power_state})

    async def set_blocked(self, *, soft: bool | None = None, hard: bool | None = None) -> None:
        """rfkill changed: a block powers the adapter off (PowerState "off-blocked");
        lifting the last one restores the power it had, as bluetoothd does."""
        was = self.blocked
        if soft is not None:
            self.soft_blocked = soft
        if hard is not None:
            self.hard_blocked = hard
        log.info("adapter rfkill adapter=%s soft=%s hard=%s", self.id, self.soft_blocked,
                 self.hard_blocked)
        if self.blocked and not was:
            self._powered_before_block = self.powered
            self._apply_powered(False)
            self._emit(ADAPTER, {"Powered": False, "PowerState": self.power_state})
        elif was and not self.blocked:
            self._emit(ADAPTER, {"PowerState": self.power_state})
            if self._powered_before_block:
                await self.set_powered(True)
        self._runtime.changed()
        await trio.lowlevel.checkpoint()

    def _apply_powered(self, value: bool) -> bool:
        if value == self.powered:
            return False
        self.powered = value
        log.info("adapter powered adapter=%s powered=%s", self.id, value)
        if not value and self._runtime.config.lose_adverts_on_power_off:
            self.advertising.lost = True
        if not value:
            self._stop_discoverable_timer()
            if self.discoverable:
                self.discoverable = False
                self._emit(ADAPTER, {"Discoverable": False})
            if self.centrals and self._runtime.link is not None:
                self._runtime.spawn(self.disconnect_all, "power-off")
        return True

    async def set_powered(self, value: bool) -> None:
        """Power the adapter on or off (off drops every connection)."""
        if value and self.blocked:
            raise RuntimeError(f"{self.id} is rfkill-blocked: it cannot power on")
        if self._apply_powered(bool(value)):
            self._emit(ADAPTER, {"Powered": self.powered, "PowerState": self.power_state})
        await trio.lowlevel.checkpoint()

    def _set_discoverable(self, value: bool) -> None:
        if value and not self.powered:
            raise DBusError("org.bluez.Error.NotReady", "Resource Not Ready")
        self.discoverable = bool(value)
        self._stop_discoverable_timer()
        if self.discoverable and self.discoverable_timeout:
            self._start_discoverable_timer()
        self._runtime.changed()

    def _set_discoverable_timeout(self, value: int) -> None:
        self.discoverable_timeout = int(value)
        if self.discoverable:
            self._stop_discoverable_timer()
            if self.discoverable_timeout:
                self._start_discoverable_timer()

    def _set_pairable(self, value: bool) -> None:
        self.pairable = bool(value)

    def _set_pairable_timeout(self, value: int) -> None:
        self.pairable_timeout = int(value)

    def _start_discoverable_timer(self) -> None:
        if self._runtime.link is None:
            return
        scope = trio.CancelScope()
        self._discoverable_scope = scope
        self._runtime.spawn(self._discoverable_expiry, scope, self.discoverable_timeout)

    def _stop_discoverable_timer(self) -> None:
        if self._discoverable_scope is not None:
            self._discoverable_scope.cancel()
            self._discoverable_scope = None

    async def _discoverable_expiry(self, scope: trio.CancelScope, seconds: int) -> None:
        with scope:
            await trio.sleep(seconds)
            self._discoverable_scope = None
            self.discoverable = False
            log.info("adapter discoverable expired adapter=%s timeout_s=%d", self.id, seconds)
            self._emit(ADAPTER, {"Discoverable": False})

    # -- the GATT database -------------------------------------------------
    def database_changed(self) -> None:
        self._emit(ADAPTER, {"UUIDs": self._uuids()})

    def forget_characteristics(self, chars: list[Characteristic]) -> None:
        """Characteristics left the database: subscriptions and sockets go with them."""
        for central in self.centrals.values():
            central.forget(chars)
        for chrc in chars:
            if chrc.write_socket is not None:
                chrc.write_socket.close()
                chrc.write_socket = None
            if chrc.shared_notify is not None:
                chrc.shared_notify.scope.cancel()
                chrc.shared_notify.sock.close()
                chrc.shared_notify = None

    def notify(self, app: Application, chrc: Characteristic, value: bytes,
               only: FakeCentral | None = None, via: socket.socket | None = None) -> None:
        """Send a value to every subscribed central (or to ``only``), cut to its MTU - 3.

        On a characteristic that can indicate, bluetoothd sends to devices
        that enabled indications only, and tells the application of each
        confirmation: ``Confirm()``, or (5.80+) a byte 0x01 into the notify
        socket ``via`` the value came from.
        """
        targets = [only] if only is not None else list(self.centrals.values())
        indication = chrc.can_indicate
        for central in targets:
            ccc = central.ccc_value(chrc)
            if not ccc or (indication and not ccc & 0x0002):
                continue
            if via is None:
                central.over_the_air(chrc, value[: central.mtu - 3], indication=indication)
            else:
                central.receive(chrc, value[: central.mtu - 3], indication=indication)
            if not indication:
                continue
            if via is not None and self._runtime.config.notify_confirm_on_socket:
                try:
                    via.send(b"\x01", socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
                except OSError as exc:
                    log.info("confirmation not written path=%s error=%s", chrc.path, exc)
            else:
                self._runtime.spawn(self._confirm, app.sender, chrc.path)

    async def _confirm(self, sender: str, path: str) -> None:
        try:
            await self._runtime.call(sender, path, GATT_CHARACTERISTIC, "Confirm",
                                     no_reply=True)
        except DBusError as exc:
            log.debug("confirm not sent path=%s error=%s", path, exc)

    # -- devices -------------------------------------------------------------
    def _device_interface(self, device: _Device) -> Interface:
        return Interface(DEVICE, methods=[
            Method("Disconnect", "", "", handler=self._disconnect_call),
        ], properties=[
            Property("Address", "s", get=lambda: device.address),
            Property("AddressType", "s", get=lambda: device.address_type),
            Property("Name", "s", get=lambda: device.name),
            Property("Alias", "s", get=lambda: device.name or device.address.replace(":", "-")),
            Property("Paired", "b", get=lambda: device.paired),
            Property("Bonded", "b", get=lambda: device.bonded),
            Property("Trusted", "b", get=lambda: device.trusted,
                     set=lambda value: self._set_trusted(device, bool(value))),
            Property("Blocked", "b", get=lambda: False),
            Property("LegacyPairing", "b", get=lambda: False),
            Property("Connected", "b", get=lambda: device.connected),
            Property("ServicesResolved", "b", get=lambda: False),
            Property("UUIDs", "as", get=lambda: []),
            Property("Adapter", "o", get=lambda: self.path),
        ])

    def _set_trusted(self, device: _Device, value: bool) -> None:
        device.trusted = value
        log.info("device trusted adapter=%s address=%s trusted=%s", self.id, device.address,
                 value)
        self._runtime.changed()

    def set_name(self, address: str, name: str) -> None:
        """The phone's name arrived (its GAP Device Name, or an inquiry response): any
        bytes the phone chose, control characters included."""
        device = self._devices[address.upper()]
        device.name = name
        self._emit(DEVICE, {"Name": name, "Alias": name}, device.path)

    def is_paired(self, address: str) -> bool:
        device = self._devices.get(address.upper())
        return device is not None and device.paired

    def set_paired(self, address: str, *, bonded: bool) -> None:
        """Pairing completed: Bonded (keys stored) then Paired, each a PropertiesChanged
        (after ``Config.paired_signal_delay``)."""
        device = self._devices[address.upper()]
        changes: list[dict[str, Any]] = []
        if bonded and not device.bonded:
            device.bonded = True
            changes.append({"Bonded": True})
        if not device.paired:
            device.paired = True
            changes.append({"Paired": True})
        delay = self._runtime.config.paired_signal_delay
        if delay > 0 and self._runtime.link is not None:
            self._runtime.spawn(self._emit_later, delay, changes, device.path)
            return
        for change in changes:
            self._emit(DEVICE, change, device.path)

    async def _emit_later(self, delay: float, changes: list[dict[str, Any]], path: str) -> None:
        await trio.sleep(delay)
        for change in changes:
            self._emit(DEVICE, change, path)

    @property
    def bonded_devices(self) -> list[str]:
        """Addresses of the devices whose keys bluetoothd keeps."""
        return [a for a, d in self._devices.items() if d.bonded]

    def add_device(self, central: FakeCentral, address_type: str, *,
                   announce: bool = True) -> str:
        """The device object of a connecting central: new (InterfacesAdded) or reused.

        ``announce=False`` leaves out the signal (InterfacesAdded, or
        PropertiesChanged ``Connected``): the object is there for
        GetManagedObjects and Properties.Get, as if an application missed it.
        """
        link = self._runtime.require_link()
        device = self._devices.get(central.address)
        if device is not None:
            if device.removal is not None:
                device.removal.cancel()
                device.removal = None
            device.connected = True
            if announce:
                self._emit(DEVICE, {"Connected": True}, device.path)
        else:
            device = _Device(central.address, self.device_path(central.address), address_type)
            self._devices[central.address] = device
            if announce:
                link.conn.export(device.path, [self._device_interface(device)])
            else:
                link.conn.tree.add(device.path, [self._device_interface(device)])
        return device.path

    def device_disconnected(self, address: str) -> None:
        device = self._devices.get(address)
        if device is None:
            return
        device.connected = False
        self._emit(DEVICE, {"Connected": False, "ServicesResolved": False}, device.path)
        if device.bonded:
            return  # bonded devices stay until RemoveDevice
        if device.paired:  # paired without bonding: the keys go with the link
            device.paired = False
            self._emit(DEVICE, {"Paired": False}, device.path)
        self._remove_device_after(address, self._runtime.config.device_remove_delay)

    def _remove_device_after(self, address: str, delay: float) -> None:
        """Remove the device object now, or after ``delay`` (cancelled if it comes back)."""
        if delay <= 0:
            self._remove_device(address)
            return
        scope = trio.CancelScope()
        self._devices[address].removal = scope
        self._runtime.spawn(self._remove_later, address, delay, scope)

    async def _remove_later(self, address: str, delay: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(delay)
            self._remove_device(address)

    def _remove_device(self, address: str) -> None:
        device = self._devices.pop(address, None)
        link = self._runtime.link
        if device is not None and link is not None:
            link.conn.unexport(device.path)
            log.info("device removed adapter=%s address=%s bond_removed=%s", self.id, address,
                     device.bonded)
        self._runtime.changed()

    async def _disconnect_call(self, ctx: CallContext) -> None:
        address = next((a for a, d in self._devices.items() if d.path == ctx.path), None)
        central = self.centrals.get(address) if address else None
        if central is None:
            raise DBusError("org.bluez.Error.NotConnected", "Not Connected")
        log.info("device disconnect requested adapter=%s address=%s sender=%s", self.id,
                 central.address, ctx.sender)
        await central.disconnect(reason="local-host")

    async def _remove_device_call(self, ctx: CallContext, path: str) -> None:
        address = next((a for a, d in self._devices.items() if d.path == path), None)
        if address is None:
            if not path.startswith(self.path + "/dev_"):
                raise DBusError(INVALID_ARGUMENTS, TEXT_INVALID_ARGUMENTS)
            raise DBusError(DOES_NOT_EXIST, TEXT_DOES_NOT_EXIST)
        central = self.centrals.get(address)
        if central is not None:
            await central.disconnect(reason="local-host")
        # with a delay, the reply leaves now and the object (its InterfacesRemoved) later
        self._remove_device_after(address, self._runtime.config.removed_signal_delay)

    async def disconnect_all(self, reason: str) -> None:
        for central in list(self.centrals.values()):
            await central.disconnect(reason=reason)

    # -- lifetime ---------------------------------------------------------------
    async def remove(self) -> None:
        """The controller goes away: adverts released, apps and devices dropped."""
        await self.advertising.release_all()
        for central in list(self.centrals.values()):
            central.drop_link("adapter-removed")
        self.gatt.forget_all()
        link = self._runtime.link
        for address, device in list(self._devices.items()):
            if device.bonded and link is not None:  # off the bus; the keys stay on disk
                link.conn.unexport(device.path)
            elif not device.bonded:
                self._remove_device(address)
        self._stop_discoverable_timer()
        if link is not None:
            link.conn.unexport(self.path)
        log.info("adapter removed adapter=%s", self.id)
        self._runtime.changed()

    def reset(self, *, powered: bool) -> None:
        """State after bluetoothd restarted: nothing registered, alias and power reset."""
        self.advertising.forget_all()
        for central in list(self.centrals.values()):
            central.drop_link("bluetoothd-restart")
        self.gatt.forget_all()
        # bonds are stored on disk and come back with bluetoothd; nothing else does
        self._devices = {a: attrs.evolve(d, connected=False, removal=None, paired=True)
                         for a, d in self._devices.items() if d.bonded}
        self._stop_discoverable_timer()
        self._alias = None
        self.powered = powered and not self.blocked
        self.discoverable = False
        self.pairable = True
        self.discoverable_timeout = DEFAULT_DISCOVERABLE_TIMEOUT
        self.pairable_timeout = 0
        self._runtime.changed()
