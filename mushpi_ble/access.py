"""Who may steer the room: access rules, the pairing window, bonds, for one peripheral.

Built once from the settings and kept across runs and bluetoothd restarts
(a window opened before a restart stays open; refusal counts keep
growing). The peripheral attaches what each run has: its connection, the
pairing agent and the adapter. Controller threads, the management
interface and the CLI all come here, so each rule lives in one place.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from .config import Settings
from .dbus import Connection, DBusError
from .gatt import (
    ADAPTER_IFACE,
    BLUEZ,
    DOES_NOT_EXIST,
    AccessGate,
    AccessRules,
    Pairing,
    PairingWindow,
)

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


class RoomAccess:
    """The access gate, the pairing window and bond management of one peripheral."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.window = PairingWindow()
        self.gate = AccessGate(rules_for(settings), self._is_bonded,
                               on_bond_seen=self._bond_seen)
        self.pairing: Pairing | None = None
        self._conn: Connection | None = None
        self._adapter: str | None = None

    # -- wiring, per run --------------------------------------------------------------
    def attach(self, conn: Connection, pairing: Pairing) -> None:
        self._conn, self.pairing = conn, pairing
        self.gate.attach(conn, timeout=min(self.settings.bus_timeout_s, BOND_CHECK_TIMEOUT_S))

    def adapter_ready(self, adapter_path: str | None) -> None:
        self._adapter = adapter_path

    def detach(self) -> None:
        self._conn, self.pairing, self._adapter = None, None, None

    def _is_bonded(self, path: str) -> bool:
        return self.pairing is not None and self.pairing.log.is_bonded(path)

    def _bond_seen(self, path: str, props: dict[str, Any]) -> None:
        if self.pairing is not None:
            self.pairing.log.update_device(path, props)

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
        """Bonded phones as bluetoothd reports them (address, name, last seen)."""
        if self.pairing is None:
            return []
        return [d.as_dict() for d in self.pairing.log.bonded]

    async def remove_bond(self, address: str) -> None:
        """Forget a bonded phone (``Adapter1.RemoveDevice``): it must pair again, in a
        window, before it may write; a connected one is disconnected by bluetoothd."""
        if not _ADDRESS_RE.fullmatch(address):
            raise ValueError(f"{address!r} is not a Bluetooth address AA:BB:CC:DD:EE:FF")
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
        log.info("bond removed address=%s adapter=%s", address.upper(), adapter)

    # -- status --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """``get_status()["access"]``."""
        bonded = self.pairing.log.bonded if self.pairing is not None else []
        window = self.window.snapshot()
        return {**self.gate.snapshot(), "pairing": self.settings.pairing_mode,
                "window_open": window["open"], "window_until": window["until"],
                "bonded_count": len(bonded)}
