"""Fast-then-slow advertising: the pure rule as a table, then the advert on the fake
bluetoothd honouring, ignoring (before 5.77 without -E) and refusing the intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from rig import Rig, make_settings, status_until

from mushpi_ble.cli.check import advert_interval_finding, bluetoothd_experimental
from mushpi_ble.portal import BlePortal
from mushpi_ble.session.advert_interval import (
    APPLE_SLOW_MS,
    Began,
    CentralWent,
    Interval,
    IntervalSettings,
    WindowOpened,
    fallback_reason,
    fast_until,
    in_force,
    interval_at,
)
from mushpi_ble.testing.controller import SimulatedController
from mushpi_ble.testing.fakebluez import FakeBluez

ON = IntervalSettings(enabled=True, fast_ms=20, fast_s=30, slow_ms=418)
OFF = IntervalSettings(enabled=False)
NO_FAST = IntervalSettings(enabled=True, fast_ms=20, fast_s=0, slow_ms=418)


@pytest.mark.parametrize(
    ("why", "settings", "current", "event", "expected"),
    [
        ("a start begins the fast period", ON, None, Began(100.0), 130.0),
        ("a disconnect begins one anew", ON, 50.0, CentralWent(100.0), 130.0),
        ("a pairing window too", ON, None, WindowOpened(7.0), 37.0),
        ("an event never shortens a running period", ON, 200.0, CentralWent(100.0), 200.0),
        ("switched off: no fast period", OFF, None, Began(100.0), None),
        ("a fast period of 0 s: always slow", NO_FAST, None, Began(100.0), None),
    ],
)
def test_fast_until(why: str, settings: IntervalSettings, current: float | None,
                    event: Began | CentralWent | WindowOpened, expected: float | None) -> None:
    assert fast_until(settings, current, event) == expected, why


@pytest.mark.parametrize(
    ("why", "settings", "until", "now", "fallback", "expected"),
    [
        ("inside the fast period", ON, 130.0, 129.9, None, Interval("fast", 20)),
        ("at its end", ON, 130.0, 130.0, None, Interval("slow", 418)),
        ("no fast period", ON, None, 5.0, None, Interval("slow", 418)),
        ("switched off", OFF, 130.0, 5.0, None, Interval("default")),
        ("refused once: bluetoothd's default from then on", ON, 130.0, 5.0, "refused",
         Interval("fallback")),
    ],
)
def test_interval_at(why: str, settings: IntervalSettings, until: float | None, now: float,
                     fallback: str | None, expected: Interval) -> None:
    assert interval_at(settings, until, now, fallback) == expected, why


@pytest.mark.parametrize(
    ("why", "settings", "until", "expected"),
    [
        ("a bluetoothd that would drop them: none asked for", ON, 130.0, Interval("ignored")),
        ("after the fast period too", ON, None, Interval("ignored")),
        ("switched off says switched off", OFF, 130.0, Interval("default")),
    ],
)
def test_interval_at_on_a_bluetoothd_that_ignores_them(
    why: str, settings: IntervalSettings, until: float | None, expected: Interval
) -> None:
    assert interval_at(settings, until, 5.0, None, honoured=False) == expected, why


def test_a_refusal_is_about_the_interval_only_when_one_was_asked_for() -> None:
    reason = fallback_reason(Interval("fast", 20), "org.bluez.Error.Failed", "nope")
    assert reason is not None and "20 ms" in reason and "default" in reason
    assert fallback_reason(Interval("fallback"), "org.bluez.Error.Failed", "nope") is None
    assert fallback_reason(Interval("default"), "org.bluez.Error.Failed", "nope") is None
    assert fallback_reason(Interval("slow", 418), "org.bluez.Error.InvalidArguments") is not None
    # seen on a loaded 5.66: a registration past its deadline, retried: not the interval
    assert fallback_reason(Interval("fast", 20), "org.bluez.Error.AlreadyExists",
                           "Already Exists") is None
    assert fallback_reason(Interval("fast", 20), "org.bluez.Error.NotPermitted",
                           "Maximum advertisements reached") is None


def test_the_default_slow_interval_is_apples_417_5_ms_on_the_air() -> None:
    assert Interval("slow", 418).on_air_ms == 417.5 and 417.5 in APPLE_SLOW_MS
    assert Interval("fast", 20).on_air_ms == 20.0
    assert in_force(Interval("slow", 418)) == "slow 417.5 ms"
    assert "default" in in_force(Interval("fallback"))


# -- on the fake bluetoothd -------------------------------------------------------------------

async def serve(bus_address: str, bluez: FakeBluez, stopper: list[BlePortal],
                **env: str) -> Rig:
    portal = BlePortal(make_settings(**env), bus=bus_address)
    portal.set_callbacks(SimulatedController(seed=1).callbacks())
    await trio.to_thread.run_sync(portal.start)
    stopper.append(portal)
    return Rig(portal, SimulatedController(seed=1), bluez)


def on_air(bluez: FakeBluez) -> tuple[float, float] | str | None:
    """The registered advert's interval on the air; "none" between two registrations."""
    adverts = bluez.adapter().advertising.registered()
    return adverts[0].interval_ms if len(adverts) == 1 else "none"


def interval(status: Any) -> dict[str, Any]:
    return dict(status["advert_interval"])


async def test_fast_after_the_start_then_slow_then_fast_after_a_disconnect(
    bus_address: str, bluez: FakeBluez, stopper: list[BlePortal]
) -> None:
    rig = await serve(bus_address, bluez, stopper, MUSHPI_BLE_ADVERT_FAST_S="1")
    await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
    assert on_air(bluez) == (20.0, 20.0)
    assert interval(rig.portal.get_status())["in_force"] == "fast 20 ms"
    # the fast period ends: registered again with the slow interval
    await status_until(rig.portal, lambda s: s["advert_interval"]["phase"] == "slow"
                       and s["advert_state"] == "advertising", timeout=10)
    await bluez.wait_until(lambda: on_air(bluez) == (417.5, 417.5))
    central = await bluez.connect_central(address="11:22:33:44:55:01")
    await status_until(rig.portal, lambda s: s["connection_count"] == 1)
    await central.disconnect()
    await status_until(rig.portal, lambda s: s["advert_interval"]["phase"] == "fast"
                       and s["advert_state"] == "advertising")
    await bluez.wait_until(lambda: on_air(bluez) == (20.0, 20.0))
    await status_until(rig.portal, lambda s: s["advert_interval"]["phase"] == "slow",
                       timeout=10)
    await bluez.wait_until(lambda: on_air(bluez) == (417.5, 417.5))
    # each switch is a new registration, never a change to an advert bluetoothd holds
    # just before it is unregistered (that crashed bluetoothd 5.66 in the VM lab)
    assert not [u for u in bluez.adapter().advertising.live_updates
                if "MinInterval" in u or "MaxInterval" in u]


async def test_a_pairing_window_opening_advertises_fast_again(
    bus_address: str, bluez: FakeBluez, stopper: list[BlePortal]
) -> None:
    rig = await serve(bus_address, bluez, stopper, MUSHPI_BLE_ADVERT_FAST_S="1",
                      MUSHPI_BLE_PAIRING="window")
    await status_until(rig.portal, lambda s: s["advert_interval"]["phase"] == "slow"
                       and s["advert_state"] == "advertising", timeout=10)
    await trio.to_thread.run_sync(rig.portal.open_pairing_window, 60)
    await status_until(rig.portal, lambda s: s["advert_interval"]["phase"] == "fast"
                       and s["advert_state"] == "advertising")
    await bluez.wait_until(lambda: on_air(bluez) == (20.0, 20.0))


async def test_switched_off_leaves_bluetoothds_default(
    bus_address: str, bluez: FakeBluez, stopper: list[BlePortal]
) -> None:
    rig = await serve(bus_address, bluez, stopper, MUSHPI_BLE_ADVERT_INTERVALS="false")
    await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
    assert on_air(bluez) is None
    advert = bluez.adapter().advertising.registered()[0]
    assert "MinInterval" not in advert.properties and "MaxInterval" not in advert.properties
    state = interval(rig.portal.get_status())
    assert state["phase"] == "default" and state["asked_ms"] is None
    assert "switched off" in state["in_force"]


async def test_a_bluetoothd_that_refuses_the_intervals_gets_its_default_once_and_says_why(
    bus_address: str, stopper: list[BlePortal], caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeBluez.serve(bus_address, advert_intervals="refused") as bluez:
        rig = await serve(bus_address, bluez, stopper)
        status = await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
        state = interval(status)
        assert state["phase"] == "fallback" and "refused" in state["fallback"]
        assert "20 ms" in state["fallback"] and "default" in state["in_force"]
        assert on_air(bluez) is None
        assert bluez.adapter().advertising.registrations == 1
        assert [r for r in caplog.records if "advertising interval refused" in r.getMessage()]
        # later registrations (a phone connects) go without intervals straight away
        await bluez.connect_central(address="11:22:33:44:55:01")
        await bluez.wait_until(lambda: bluez.adapter().advertising.registrations == 2)
        assert status["advert_refusals"] == 0
        assert rig.portal.get_status()["advert_refusals"] == 0
        await trio.to_thread.run_sync(stopper.pop().stop)


async def test_a_bluetoothd_that_ignores_them_is_asked_for_none_and_says_so(
    bus_address: str, stopper: list[BlePortal]
) -> None:
    """Before 5.77 without -E bluetoothd parses the properties as absent, and hides
    SupportedCapabilities with them: the advertiser asks for nothing, says why, and
    does not re-register when a fast period would end or begin."""
    async with FakeBluez.serve(bus_address, advert_intervals="ignored") as bluez:
        rig = await serve(bus_address, bluez, stopper, MUSHPI_BLE_ADVERT_FAST_S="1")
        status = await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
        state = interval(status)
        assert state["phase"] == "ignored" and state["asked_ms"] is None
        assert "before 5.77" in state["in_force"] and "-E" in state["in_force"]
        advert = bluez.adapter().advertising.registered()[0]
        assert "MinInterval" not in advert.properties and on_air(bluez) is None
        central = await bluez.connect_central(address="11:22:33:44:55:01")
        await status_until(rig.portal, lambda s: s["connection_count"] == 1)
        await central.disconnect()
        await status_until(rig.portal, lambda s: s["connection_count"] == 0
                           and s["advert_state"] == "advertising")
        await trio.sleep(1.5)  # past where a fast period would have ended
        assert interval(rig.portal.get_status())["phase"] == "ignored"
        assert bluez.adapter().advertising.registrations <= 2
        await trio.to_thread.run_sync(stopper.pop().stop)


# -- mushpi-ble check: the interval in force ---------------------------------------------------

@pytest.mark.parametrize(
    ("env", "version", "experimental", "level", "words"),
    [
        ({}, "5.82", False, "ok", "20 ms for 30 s"),
        ({}, "5.82", None, "ok", "then 417.5 ms"),
        ({}, "5.66", True, "ok", "-E"),
        ({}, "5.66", False, "warn", "ignores MinInterval/MaxInterval without -E"),
        ({}, None, None, "warn", "version is unknown"),
        ({"MUSHPI_BLE_ADVERT_INTERVALS": "false"}, "5.82", False, "info", "default"),
        ({"MUSHPI_BLE_ADV_ENABLE": "false"}, "5.82", False, "info", "advertising is off"),
    ],
)
def test_check_reports_the_interval_in_force(env: dict[str, str], version: str | None,
                                             experimental: bool | None, level: str,
                                             words: str) -> None:
    finding = advert_interval_finding(make_settings(**env), version, experimental)
    assert finding.level == level and words in finding.message


def test_check_sees_bluetoothds_experimental_flag(tmp_path: Path) -> None:
    def process(pid: str, *argv: str) -> None:
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")

    process("1", "/sbin/init")
    assert bluetoothd_experimental(tmp_path) is None
    process("42", "/usr/libexec/bluetooth/bluetoothd", "-n")
    assert bluetoothd_experimental(tmp_path) is False
    (tmp_path / "42" / "cmdline").write_bytes(b"/usr/libexec/bluetooth/bluetoothd\0-E\0")
    assert bluetoothd_experimental(tmp_path) is True
