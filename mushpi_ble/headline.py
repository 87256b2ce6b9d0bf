"""The peripheral's state in one plain phrase: systemd's STATUS line and the live view's
headline say the same thing, and nothing here runs an event loop (``mushpi-ble status``
imports it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def adapter_name(status: Mapping[str, Any]) -> str:
    return str(status.get("adapter") or "?").rsplit("/", 1)[-1]


def status_text(status: Mapping[str, Any]) -> str:
    """What ``systemctl status`` and the live view show, from ``get_status()``. bluetoothd
    stopping is said as such, not as a removed adapter (its adapter goes with it)."""
    if not status.get("registered"):
        state = status.get("state")
        if state == "waiting-for-bluetoothd":
            return "bluetoothd is not running; waiting for it"
        if status.get("adapter_state") == "removed":
            return f"the adapter {adapter_name(status)} is gone; waiting for it to return"
        if state == "stopped":
            return "stopped"
        error = status.get("last_error")
        return "waiting for bluetoothd" + (f" ({error})" if error else "")
    count = int(status.get("connection_count") or 0)
    phones = "1 phone connected" if count == 1 else f"{count} phones connected"
    if status.get("advertising"):
        advertising = ""
    elif status.get("advert_state") == "alias-only":
        advertising = f", alias-only: {status.get('advert_problem')}"
    else:
        advertising = ", not advertising"
    return f"serving as {status.get('advertised_name') or '?'}, {phones}{advertising}"


def serving(status: Mapping[str, Any], *, advertising_wanted: bool) -> bool:
    """Ready means a phone can find us: registered, and advertising when asked to
    (or serving alias-only because bluetoothd refused the advertisement)."""
    return bool(status.get("registered")) and (
        bool(status.get("advertising")) or not advertising_wanted
        or status.get("advert_state") == "alias-only")
