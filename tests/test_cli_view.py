"""The live view fits 80×24, speaks plain words and never shows what is no longer true."""

from __future__ import annotations

import time
from typing import Any

from rig import Rig, phone, status_until

from mushpi_ble.cli.view import render
from mushpi_ble.headline import status_text as headline
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS

UUID = CHARACTERISTIC_UUIDS
NOW = 1_700_000_000.0


def busy_status() -> dict[str, Any]:
    """A room with everything going on at once: the frame must still fit."""
    phones = [{"path": f"/org/bluez/hci0/dev_AA_BB_CC_DD_EE_{n:02X}",
               "address": f"AA:BB:CC:DD:EE:{n:02X}", "mtu": 247, "connected": True,
               "connected_at": NOW} for n in range(7)]
    return {
        "state": "serving", "registered": True, "advertising": False,
        "advertised_name": "MushPi-LionsManeFruiting", "adapter": "/org/bluez/hci0",
        "adapter_state": "on", "rfkill": "unblocked", "advert_state": "alias-only",
        "advert_instances": {"active": 0, "available": 3}, "restarts": 2,
        "advert_problem": "the kernel and BlueZ disagree about the advertising data length; "
                          "update the kernel (Raspberry Pi: sudo apt full-upgrade) " * 3,
        "connected_devices": phones, "connection_count": len(phones),
        "last_error": "advertisement: org.bluez.Error.Failed: Failed to register " * 2,
        "access": {"write": "bonded", "read": "open", "window_open": True,
                   "window_until": NOW + 60, "bonded_count": 3},
        "pairing": {"mode": "passkey", "agent_registered": True,
                    "passkey": {"passkey": "004242", "address": "AA:BB:CC:DD:EE:01"}},
        "characteristics": {name: {"sent": 10**9, "dropped": 10**6, "invalid": 12}
                            for name in ("env_measurements", "status_flags",
                                         "actuator_status")},
        "values": {"env_measurements": "b603d7007003580200000000",
                   "status_flags": "10000000", "actuator_status": "020000000000"},
        "notify": {"mode": "auto", "characteristics": {}, "phones": {
            phones[0]["path"]: {"characteristics": ["env_measurements", "status_flags"],
                                "mtu": 247, "queue_depth": 0, "sent": 1, "dropped": 0,
                                "coalesced": 0, "refused": 0, "last_error": None}}},
        "recent_writes": [{"at": NOW, "characteristic": "control_targets", "accepted": False,
                           "detail": "rejected length: expected 15 bytes, got 1" * 3,
                           "device": phones[1]["path"]}] * 8,
    }


def test_a_busy_room_fits_80_by_24_most_important_first() -> None:
    lines = render(busy_status(), now=NOW)
    assert len(lines) <= 24 and max(map(len, lines)) <= 80
    assert lines[0].startswith("MushPi BLE · serving as MushPi-LionsManeFruiting")
    assert any("PASSKEY 004242 for AA:BB:CC:DD:EE:01" in line for line in lines[:5])
    assert lines[-1].startswith("… ") and "more lines" in lines[-1]


def test_a_tall_terminal_shows_it_all_and_no_python_or_dbus_words() -> None:
    lines = render(busy_status(), height=200, now=NOW)
    text = "\n".join(lines)
    assert "Problems" in text and "alias only:" in text
    assert "gets env, status" in text  # subscribed through its notify socket
    for word in ("True", "False", "None", "/org/bluez", "dev_"):
        assert word not in text, word
    detailed = "\n".join(render(busy_status(), width=200, height=200, verbose=True,
                                 now=NOW))
    assert "/org/bluez/hci0/dev_AA_BB_CC_DD_EE_00" in detailed


def test_bluetoothd_stopping_is_said_as_such_and_nothing_stale_stays() -> None:
    status = {**busy_status(), "state": "waiting-for-bluetoothd", "registered": False,
              "adapter_state": "removed", "connected_devices": [], "connection_count": 0}
    lines = render(status, now=NOW)
    assert lines[0].startswith("MushPi BLE · bluetoothd is not running")
    text = "\n".join(lines)
    assert "Phones" not in text and "advert" not in text.lower().split("problems")[0][40:]
    assert headline({**status, "state": "finding-adapter"}).startswith("the adapter hci0 is gone")


async def test_the_view_of_a_running_peripheral_counts_socket_subscribers(rig: Rig) -> None:
    central = await phone(rig, mtu=185)
    await central.subscribe(UUID["env_measurements"])
    status = await status_until(rig.portal, lambda s: s["subscriptions"]["env_measurements"])
    await status_until(rig.portal, lambda s: s["connection_count"] == 1)
    lines = render(rig.portal.view_status(), now=time.time())
    assert any("MTU 185" in line and "gets env" in line for line in lines), lines
    assert status["notify"]["phones"]  # through a socket, the default


async def test_after_bluetoothd_stops_the_view_says_so(rig: Rig) -> None:
    await phone(rig)
    await status_until(rig.portal, lambda s: s["connection_count"] == 1)
    await rig.bluez.stop()
    status = await status_until(rig.portal, lambda s: s["state"] == "waiting-for-bluetoothd")
    lines = render({**status, **rig.portal.view_status()}, now=time.time())
    assert "bluetoothd is not running" in lines[0]
    assert not any(line.startswith("Phones") or "MTU" in line for line in lines), lines
