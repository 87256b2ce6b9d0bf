"""Who may steer the room: access rules, the pairing window, bonds, for one peripheral.

Built once from the settings and kept across runs and bluetoothd restarts
(a window opened before a restart stays open; refusal counts keep
growing). The peripheral attaches what each run has: its connection, the
pairing agent and the adapter. Controller threads, the management
interface and the CLI all come here, so each rule lives in one place.

Where access is bonded, a bond counts only once approved (:mod:`.approvals`):
admitted by our agent in a window, or approved by the grower. Any other bond
is reported once at WARNING, counted and listed, never adopted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .approvals import ApprovedBonds
from .config import Settings
from .dbus import Connection, DBusError
from .gatt import (
    ADAPTER_IFACE,
    BLUEZ,
    DOES_NOT_EXIST,
    AccessGate,
    AccessRules,
    BondedDevice,
    Pairing,
    PairingWindow,
    address_of,
)
from .text import printable

log = logging.getLogger(__name__)

_ADDRESS_RE = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
BOND_CHECK_TIMEOUT_S = 1.0
"""The longest a write waits for bluetoothd to say whether its device is bonded."""


def rules_for(settings: Settings) -> AccessRules:
    """The access rules of the settings; a passkey makes bonds authenticated."""
    return AccessRules(read=settings.ble_read_access, write=settings.ble_write_access,
                       authenticated=settings.pairing_mode == "passkey")


def device_path(adapter_path: str, address: str) -> str:
    return f"{adapter_path}/dev_{address.upper().replace(':', '_')}"


Spawn = Callable[[Callable[[], Awaitable[object]]], None]

_NEW_ELSEWHERE = ("it paired without our agent (another program holds the default agent "
                  "slot, or the kernel accepted a BR/EDR pairing by itself)")
_FOUND = "it was bonded before access was bonded, or while the service was not running"


class RoomAccess:
    """The access gate, the pairing window and bond management of one peripheral."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.window = PairingWindow(bonds=settings.ble_pairing_window_bonds)
        self.approvals: ApprovedBonds | None = None
        """Where access is bonded: the phones the grower approved (None: open access)."""
        if settings.access_bonded:
            self.approvals = ApprovedBonds(settings.ble_state_dir)
            self.approvals.load()
        self.gate = AccessGate(rules_for(settings), self._is_bonded,
                               approved=self._is_approved if self.approvals is not None else None,
                               on_bond_seen=self._bond_seen)
        self.pairing: Pairing | None = None
        self._conn: Connection | None = None
        self._adapter: str | None = None
        self._spawn: Spawn | None = None
        self._warned: set[str] = set()

    # -- wiring, per run --------------------------------------------------------------
    def attach(self, conn: Connection, pairing: Pairing, spawn: Spawn | None = None) -> None:
        """``spawn`` runs the list's saves off the loop's own path (a task per save)."""
        self._conn, self.pairing, self._spawn = conn, pairing, spawn
        self.gate.attach(conn, timeout=min(self.settings.bus_timeout_s, BOND_CHECK_TIMEOUT_S))

    def adapter_ready(self, adapter_path: str | None) -> None:
        self._adapter = adapter_path

    def detach(self) -> None:
        self._conn, self.pairing, self._adapter, self._spawn = None, None, None, None

    def _is_bonded(self, path: str) -> bool:
        return self.pairing is not None and self.pairing.log.is_bonded(path)

    def _address(self, path: str) -> str:
        device = self.pairing.log.devices.get(path) if self.pairing is not None else None
        return (device.address if device is not None and device.address
                else address_of(path)).upper()

    def _is_approved(self, path: str) -> bool:
        return self.approvals is not None and self._address(path) in self.approvals

    # -- bonds as they are made or found (from the pairing log, in the loop) -------------
    def bond_made(self, device: BondedDevice, new: bool, ours: bool) -> None:
        """A device is paired: approve it when our agent admitted it; otherwise say so
        once, and withdraw an approval its address had (someone else paired it anew)."""
        approvals = self.approvals
        if approvals is None:
            return
        address = (device.address or address_of(device.path)).upper()
        name = device.name or "-"
        if ours:
            approvals.add(address, self.settings.pairing_mode, device.name)
            self._warned.discard(address)
            log.warning("new bond approved address=%s name=%s how=%s window_bonds=%d/%s",
                        address, name, self.settings.pairing_mode, self.window.new_bonds,
                        self.window.bonds or "any")
            self._persist()
            return
        if new and approvals.remove(address):
            log.warning("bond approval withdrawn address=%s name=%s: it paired again "
                        "without our agent", address, name)
            self._warned.discard(address)
            self._persist()
        if address in approvals or address in self._warned:
            return
        self._warned.add(address)
        log.warning("bond not approved address=%s name=%s: %s; it may not read or write "
                    "where access is bonded until the grower approves it (mushpi-ble bonds "
                    "--approve %s) or removes it (mushpi-ble bonds --remove %s)", address,
                    name, _NEW_ELSEWHERE if new else _FOUND, address, address)

    def _persist(self) -> None:
        """Write the list off the loop; without a run to spawn in, now."""
        if self._spawn is not None:
            self._spawn(self._save)
        else:
            self._save_now()

    async def _save(self) -> None:
        # shielded: a stop right after an approval must not lose it (one small file)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._save_now)

    def _save_now(self) -> None:
        assert self.approvals is not None
        try:
            self.approvals.save()
        except (OSError, ValueError) as exc:
            log.error("approved bonds not saved file=%s error=%s", self.approvals.path, exc)

    def _bond_seen(self, path: str, props: dict[str, Any]) -> None:
        """bluetoothd's answer to the gate. A device the log has not seen yet (its bonds
        not read yet, after a start) is *found* paired, not seen pairing: only a change
        we saw may withdraw an approval."""
        if self.pairing is not None:
            log_ = self.pairing.log
            log_.update_device(path, props, found=path not in log_.devices)

    # -- the pairing window (any thread) --------------------------------------------------
    def open_pairing_window(self, seconds: float) -> float:
        """Accept new bonds for ``seconds``; returns the wall time the window closes.

        With ``MUSHPI_BLE_PAIRING`` just-works (anyone may pair anyway) or off
        (nobody may) a window changes nothing: that is refused, not ignored.
        """
        mode = self.settings.pairing_mode
        if mode not in ("window", "passkey"):
            raise ValueError(f"MUSHPI_BLE_PAIRING={mode}: a pairing window only applies to "
                             "the window and passkey modes")
        return self.window.open(seconds)

    def close_pairing_window(self) -> None:
        self.window.close()

    # -- bonds ---------------------------------------------------------------------------
    def bonds(self) -> list[dict[str, Any]]:
        """Bonded phones as bluetoothd reports them (address, name, last seen), and
        whether each is approved (always, where access is open)."""
        if self.pairing is None:
            return []
        return [{**d.as_dict(), "approved": self.approvals is None
                 or (d.address or address_of(d.path)).upper() in self.approvals}
                for d in self.pairing.log.bonded]

    def _unapproved(self) -> list[str]:
        approvals = self.approvals
        if approvals is None or self.pairing is None:
            return []
        return sorted(a for a in ((d.address or address_of(d.path)).upper()
                                  for d in self.pairing.log.bonded) if a not in approvals)

    async def approve_bond(self, address: str) -> None:
        """The grower approves a phone bluetoothd has a bond for (made before bonded
        access, or through another agent): it may then read and write."""
        if not _ADDRESS_RE.fullmatch(address):
            raise ValueError(f"{printable(address)!r} is not a Bluetooth address "
                             "AA:BB:CC:DD:EE:FF")
        if self.approvals is None:
            raise ValueError("access is open (MUSHPI_BLE_WRITE_ACCESS and _READ_ACCESS): "
                             "there is nothing to approve")
        adapter = self._adapter
        if adapter is None or not self._is_bonded(device_path(adapter, address)):
            raise ValueError(f"no bonded phone {address.upper()}"
                             + (f" on {adapter}" if adapter else ""))
        device = self.pairing.log.devices.get(device_path(adapter, address)) \
            if self.pairing is not None else None
        self.approvals.add(address, "grower", device.name if device is not None else "")
        self._warned.discard(address.upper())
        await trio.to_thread.run_sync(self.approvals.save)
        log.warning("bond approved by the grower address=%s name=%s", address.upper(),
                    (device.name if device is not None else "") or "-")

    async def remove_bond(self, address: str) -> None:
        """Forget a bonded phone (``Adapter1.RemoveDevice``) and its approval: it must
        pair again, in a window, before it may write; a connected one is disconnected
        by bluetoothd."""
        if not _ADDRESS_RE.fullmatch(address):
            raise ValueError(f"{printable(address)!r} is not a Bluetooth address "
                             "AA:BB:CC:DD:EE:FF")
        conn, adapter = self._conn, self._adapter
        if conn is None or adapter is None:
            raise ValueError("the peripheral has no adapter right now")
        path = device_path(adapter, address)
        if not self._is_bonded(path):
            raise ValueError(f"no bonded phone {address.upper()} on {adapter}")
        try:
            await conn.call(BLUEZ, adapter, ADAPTER_IFACE, "RemoveDevice", "o", (path,),
                            timeout=self.settings.bus_timeout_s)
        except DBusError as exc:
            if exc.name == DOES_NOT_EXIST:
                raise ValueError(f"bluetoothd knows no device {address.upper()}") from None
            raise
        # bluetoothd has forgotten it; its InterfacesRemoved may come later (gdbus sends
        # object-manager signals from its idle loop), so the list says so now
        if self.pairing is not None:
            self.pairing.log.remove_device(path)
        self._warned.discard(address.upper())
        if self.approvals is not None and self.approvals.remove(address):
            await trio.to_thread.run_sync(self.approvals.save)
        log.info("bond removed address=%s adapter=%s", address.upper(), adapter)

    # -- status --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """``get_status()["access"]``."""
        bonded = self.pairing.log.bonded if self.pairing is not None else []
        window = self.window.snapshot()
        approvals = self.approvals
        unapproved = self._unapproved()
        return {**self.gate.snapshot(), "pairing": self.settings.pairing_mode,
                "window_open": window["open"], "window_until": window["until"],
                "window_bonds": window["bonds"], "bonded_count": len(bonded),
                "approved": approvals.addresses() if approvals is not None else [],
                "unapproved": unapproved, "unapproved_bonds": len(unapproved),
                "approvals": approvals.snapshot() if approvals is not None else None}
