"""Running unattended: an advert that checks itself, a second phone, adapter recovery."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from rig import Rig, eventually, make_settings, phone, status_until

from mushpi_ble.cli.serve import render_view
from mushpi_ble.dbus import Connection
from mushpi_ble.gatt.advertising import AdvertisingCapabilities, AdvertMonitor
from mushpi_ble.gatt.rfkill import Rfkill
from mushpi_ble.portal import BlePortal
from mushpi_ble.prometheus import StatusCollector
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.controller import SimulatedController
from mushpi_ble.testing.fakebluez import FakeBluez, NotDiscoverable

UUID = CHARACTERISTIC_UUIDS


async def serve(bus_address: str, bluez: FakeBluez, stopper: list[BlePortal], *,
                rfkill: Rfkill | None = None, **env: str) -> Rig:
    controller = SimulatedController(seed=1)
    portal = BlePortal(make_settings(**env), bus=bus_address)
    portal.set_callbacks(controller.callbacks())
    if rfkill is not None:
        portal.peripheral.steps.adapter.rfkill = rfkill
    await trio.to_thread.run_sync(portal.start)
    stopper.append(portal)
    return Rig(portal, controller, bluez)


def status(rig: Rig) -> dict[str, Any]:
    return dict(rig.portal.get_status())


def steps(status: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(s["action"], s["result"]) for s in status["recoveries"]]


# -- advertising that checks itself ------------------------------------------------------

async def test_advert_dropped_without_release_is_registered_again(rig: Rig) -> None:
    await rig.bluez.wait_for_advertisement()
    await status_until(rig.portal, lambda s: s["advert_instances"]["active"] == 1)
    assert rig.bluez.adapter().advertising.drop_silently() == 1
    assert not rig.bluez.on_air()
    await rig.bluez.wait_for_advertisement(timeout=5.0)
    await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
    assert status(rig)["advert_drops"] == 1
    assert rig.portal.peripheral.steps.advertiser.advert is not None
    assert rig.portal.peripheral.steps.advertiser.advert.releases == 0


async def test_unannounced_drop_is_noticed_after_a_disconnect(rig: Rig) -> None:
    """bluez #1015: nothing is signalled; the look after a disconnect finds it gone."""
    await rig.bluez.wait_for_advertisement()
    await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
    central = await phone(rig)
    await status_until(rig.portal, lambda s: s["connection_count"] == 1)
    # the connect has it registered again (see the next tests); drop that one
    advertising = rig.bluez.adapter().advertising
    await rig.bluez.wait_until(lambda: advertising.registrations == 2 and rig.bluez.on_air())
    advertising.drop_silently(announce=False)
    await central.disconnect()
    await rig.bluez.wait_for_advertisement(timeout=5.0)
    await status_until(rig.portal, lambda s: s["advert_drops"] == 1)


async def test_a_second_phone_finds_and_joins_while_the_first_is_connected(
    bus_address: str, stopper: list[BlePortal]
) -> None:
    async with FakeBluez.serve(bus_address, drop_adverts_on_connect=True) as bluez:
        rig = await serve(bus_address, bluez, stopper)
        await bluez.wait_until(lambda: bluez.on_air())
        first = await bluez.connect_central(address="11:22:33:44:55:01", discover=True)
        assert not bluez.on_air()  # this controller stopped advertising on the connect
        await bluez.wait_until(lambda: bluez.on_air(), timeout=5.0)
        second = await bluez.connect_central(address="11:22:33:44:55:02", discover=True)
        await status_until(rig.portal, lambda s: s["connection_count"] == 2)
        assert len(await second.read(UUID["control_targets"])) == 15
        assert len(await first.read(UUID["control_targets"])) == 15
        # the second connect stopped it too; it is back for a third phone, connectable
        await bluez.wait_until(lambda: bluez.on_air(), timeout=5.0)
        assert bluez.advertisements()[0].type == "peripheral"
        # registered again on each connect (the drop may be seen first, or not at all)
        assert bluez.adapter().advertising.registrations >= 3
        await trio.to_thread.run_sync(stopper.pop().stop)


async def test_a_connect_puts_an_advert_bluetoothd_still_counts_back_on_the_air(
    bus_address: str, stopper: list[BlePortal]
) -> None:
    """The real kernel's way: the controller stops advertising on a connection, the
    kernel does not restart it while the link lasts, bluetoothd still says
    ActiveInstances 1. Only a new registration brings it back for a second phone."""
    async with FakeBluez.serve(bus_address, halt_advertising_on_connect=True) as bluez:
        rig = await serve(bus_address, bluez, stopper)
        advertising = bluez.adapter().advertising
        await bluez.wait_until(lambda: bluez.on_air())
        await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
        assert advertising.registrations == 1
        first = await bluez.connect_central(address="11:22:33:44:55:01", discover=True)
        assert not bluez.on_air() and len(advertising.adverts) == 1
        await bluez.wait_until(lambda: bluez.on_air(), timeout=5.0)
        assert advertising.registrations == 2
        second = await bluez.connect_central(address="11:22:33:44:55:02", discover=True)
        await status_until(rig.portal, lambda s: s["connection_count"] == 2)
        assert len(await second.read(UUID["control_targets"])) == 15
        assert len(await first.read(UUID["control_targets"])) == 15
        await bluez.wait_until(lambda: bluez.on_air(), timeout=5.0)
        await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
        assert status(rig)["advert_drops"] == 0
        assert advertising.registrations == 3
        await trio.to_thread.run_sync(stopper.pop().stop)


async def test_an_advert_refused_while_a_phone_is_connected_is_explained_as_such(
    bus_address: str, stopper: list[BlePortal]
) -> None:
    """A controller that cannot advertise while connected: not the kernel mismatch."""
    async with FakeBluez.serve(bus_address, halt_advertising_on_connect=True) as bluez:
        rig = await serve(bus_address, bluez, stopper)
        await bluez.wait_until(lambda: bluez.on_air())
        await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
        bluez.refuse_advertisements()
        central = await bluez.connect_central(discover=True)
        await status_until(rig.portal, lambda s: s["advert_refusals"] >= 2, timeout=5.0)
        now = status(rig)
        assert now["advert_state"] == "alias-only"
        assert "while a phone is connected" in now["advert_problem"]
        assert "5.87" not in now["advert_problem"]
        assert now["last_error"].startswith("advertisement: ")
        assert len(await central.read(UUID["control_targets"])) == 15
        bluez.accept_advertisements()
        await central.disconnect()
        await bluez.wait_for_advertisement(timeout=10.0)
        await status_until(rig.portal, lambda s: s["advert_state"] == "advertising", timeout=10.0)
        assert status(rig)["last_error"] is None  # the refusal is over
        await trio.to_thread.run_sync(stopper.pop().stop)


async def test_without_the_check_a_second_phone_could_not_find_it(
    bus_address: str, stopper: list[BlePortal]
) -> None:
    """The fake's side of the test above: with advertising off nobody is found."""
    async with FakeBluez.serve(bus_address) as bluez:
        await serve(bus_address, bluez, stopper, MUSHPI_BLE_ADV_ENABLE="false")
        with pytest.raises(NotDiscoverable):
            await bluez.connect_central(discover=True)
        await trio.to_thread.run_sync(stopper.pop().stop)


async def test_refused_advert_serves_alias_only_retries_and_says_why(
    bus_address: str, bluez: FakeBluez, stopper: list[BlePortal],
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bluez.refuse_advertisements()
    rig = await serve(bus_address, bluez, stopper)
    await status_until(rig.portal, lambda s: s["advert_refusals"] >= 3, timeout=10.0)
    now = status(rig)
    assert now["registered"] and not now["advertising"]
    assert now["advert_state"] == "alias-only"
    assert "update the kernel" in now["advert_problem"].replace("Update", "update")
    assert "6.12.93" in now["advert_problem"]
    assert "Failed to register advertisement" in now["last_error"]
    assert "serving alias-only" in caplog.text and "5.87 or later" in caplog.text
    assert bluez.adapter().alias == now["advertised_name"]
    assert bluez.runtime.faults.refused["RegisterAdvertisement"] >= 3
    # the GATT service is reachable meanwhile (a phone that knows the Pi connects)
    central = await phone(rig)
    assert len(await central.read(UUID["control_targets"])) == 15
    view = render_view(rig.portal, rig.controller)
    assert "alias only:" in view and "5.87" in view
    bluez.accept_advertisements()
    await bluez.wait_for_advertisement(timeout=10.0)
    await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
    assert status(rig)["advert_problem"] is None


# -- adapter recovery --------------------------------------------------------------------

async def test_powered_off_adapter_is_powered_on_again(rig: Rig) -> None:
    await rig.bluez.wait_for_advertisement()
    await rig.bluez.adapter().set_powered(False)
    await rig.bluez.wait_until(lambda: rig.bluez.adapter().powered, timeout=5.0)
    await status_until(rig.portal, lambda s: ("power-on", "ok") in steps(s))
    await status_until(rig.portal, lambda s: s["adapter_state"] == "on")
    central = await phone(rig)
    assert len(await central.read(UUID["control_targets"])) == 15


async def test_an_adapter_on_again_advertises_again(
    bus_address: str, stopper: list[BlePortal]
) -> None:
    """After a power cycle the controller may have lost its advertising sets while
    bluetoothd still counts ours (kernel 6.1): registered again, on the air again."""
    async with FakeBluez.serve(bus_address, lose_adverts_on_power_off=True) as bluez:
        rig = await serve(bus_address, bluez, stopper)
        advertising = bluez.adapter().advertising
        await bluez.wait_until(lambda: bluez.on_air())
        await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
        await bluez.adapter().set_powered(False)
        await bluez.wait_until(lambda: bluez.adapter().powered, timeout=5.0)
        await bluez.wait_until(lambda: bluez.on_air(), timeout=5.0)
        assert advertising.registrations == 2 and len(advertising.adverts) == 1
        assert status(rig)["advert_drops"] == 0
        await bluez.connect_central(discover=True)
        await trio.to_thread.run_sync(stopper.pop().stop)


async def test_with_recovery_off_a_powered_off_adapter_is_reported_not_touched(
    bus_address: str, bluez: FakeBluez, stopper: list[BlePortal]
) -> None:
    rig = await serve(bus_address, bluez, stopper, MUSHPI_BLE_ADAPTER_RECOVERY="false")
    await bluez.adapter().set_powered(False)
    await status_until(rig.portal, lambda s: ("report", "not-allowed") in steps(s))
    assert status(rig)["adapter_state"] == "off"
    assert "MUSHPI_BLE_ADAPTER_RECOVERY=false" in status(rig)["recoveries"][-1]["detail"]
    await trio.sleep(0.3)
    assert not bluez.adapter().powered
    assert ("power-on", "ok") not in steps(status(rig))


async def test_soft_block_is_lifted_through_the_rfkill_switch(
    bus_address: str, stopper: list[BlePortal], tmp_path: Path
) -> None:
    root = tmp_path / "rfkill"
    async with FakeBluez.serve(bus_address, rfkill_dir=root) as bluez:
        rig = await serve(bus_address, bluez, stopper, rfkill=Rfkill(root, device=None))
        assert status(rig)["rfkill"] == "unblocked"
        await bluez.block(soft=True)
        await status_until(rig.portal, lambda s: ("rfkill-unblock", "ok") in steps(s), timeout=5.0)
        assert bluez.rfkill is not None
        assert bluez.rfkill.read("hci0") == (False, False)
        await bluez.wait_until(lambda: bluez.adapter().powered, timeout=5.0)
        await status_until(rig.portal, lambda s: s["adapter_state"] == "on"
                           and s["rfkill"] == "unblocked")
        await bluez.wait_until(lambda: bluez.on_air(), timeout=5.0)
        await trio.to_thread.run_sync(stopper.pop().stop)


async def test_hard_block_is_reported_only(
    bus_address: str, stopper: list[BlePortal], tmp_path: Path
) -> None:
    root = tmp_path / "rfkill"
    async with FakeBluez.serve(bus_address, rfkill_dir=root) as bluez:
        rig = await serve(bus_address, bluez, stopper, rfkill=Rfkill(root, device=None))
        await bluez.block(hard=True)
        await status_until(rig.portal, lambda s: ("report", "impossible") in steps(s), timeout=5.0)
        now = status(rig)
        assert now["adapter_state"] == "off-blocked"
        assert now["rfkill"] == "hard-blocked"
        assert "software cannot lift" in now["recoveries"][-1]["detail"]
        assert bluez.rfkill is not None and bluez.rfkill.read("hci0") == (False, True)
        assert not bluez.adapter().powered
        assert ("rfkill-unblock", "ok") not in steps(status(rig))
        # the switch is released by hand: bluetoothd restores power, we report it
        await bluez.block(hard=False)
        await status_until(rig.portal, lambda s: s["adapter_state"] == "on", timeout=15.0)
        await trio.to_thread.run_sync(stopper.pop().stop)


async def test_blocked_fake_refuses_power_on_like_bluetoothd(
    bus_address: str, bluez: FakeBluez
) -> None:
    from mushpi_ble.dbus import DBusError, open_connection
    from mushpi_ble.gatt.adapter import get_property, set_property

    await bluez.block(soft=True)
    async with open_connection(bus_address, call_timeout=2.0) as conn:
        path = "/org/bluez/hci0"
        assert await get_property(conn, path, "org.bluez.Adapter1", "PowerState",
                                  timeout=2.0) == "off-blocked"
        with pytest.raises(DBusError) as info:
            await set_property(conn, path, "org.bluez.Adapter1", "Powered", "b", True,
                               timeout=2.0)
        assert (info.value.name, info.value.text) == ("org.bluez.Error.Blocked",
                                                      "Blocked through rfkill")


async def test_adapter_removed_and_returned_is_reported_and_served_again(rig: Rig) -> None:
    await rig.bluez.wait_for_advertisement()
    await rig.bluez.remove_adapter("hci0")
    await status_until(rig.portal, lambda s: s["adapter_state"] == "removed")
    assert ("wait", "waiting") in steps(status(rig))
    await rig.bluez.add_adapter("hci0")
    await rig.bluez.wait_for_application(timeout=5.0)
    await rig.bluez.wait_for_advertisement(timeout=5.0)
    await status_until(rig.portal, lambda s: ("wait", "ok") in steps(s) and s["registered"])
    assert status(rig)["adapter_state"] == "on"
    central = await phone(rig)
    assert len(await central.read(UUID["control_targets"])) == 15


async def test_recovery_is_exported_to_prometheus(rig: Rig) -> None:
    await rig.bluez.wait_for_advertisement()
    await rig.bluez.adapter().set_powered(False)
    await status_until(rig.portal, lambda s: ("power-on", "ok") in steps(s))
    await status_until(rig.portal, lambda s: s["adapter_state"] == "on")
    collector = StatusCollector(rig.portal.get_status, dict)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in collector.collect() for s in family.samples}
    assert samples[("mushpi_ble_adapter_state", (("state", "on"),))] == 1
    assert samples[("mushpi_ble_adapter_state", (("state", "off-blocked"),))] == 0
    assert samples[("mushpi_ble_adapter_recoveries_total",
                    (("action", "power-on"), ("result", "ok")))] >= 1
    assert samples[("mushpi_ble_advert_alias_only", ())] == 0
    assert ("mushpi_ble_advert_drops_total", ()) in samples


async def test_bluetoothd_leaving_mid_registration_is_not_a_refusal(
    bus_address: str, bluez: FakeBluez, stopper: list[BlePortal]
) -> None:
    """No answer because bluetoothd went away (NoReply) says nothing about the advert:
    no alias-only diagnosis, and it is back on the air once bluetoothd is."""
    rig = await serve(bus_address, bluez, stopper)
    await bluez.wait_for_advertisement(timeout=10.0)
    bluez.delay_next_call("RegisterAdvertisement", 2.0)
    bluez.adapter().advertising.drop_silently()  # gone: registered again; that call hangs
    await status_until(rig.portal, lambda s: s["advert_drops"] >= 1, timeout=5.0)
    await trio.sleep(0.5)
    await bluez.restart(graceful=False)  # ... until bluetoothd dies under it: NoReply
    await bluez.wait_for_advertisement(timeout=10.0)
    await status_until(rig.portal, lambda s: s["advert_state"] == "advertising", timeout=10.0)
    assert status(rig)["advert_refusals"] == 0
    assert status(rig)["advert_problem"] is None


async def test_while_registering_again_after_a_connect_the_state_says_so(
    bus_address: str, stopper: list[BlePortal]
) -> None:
    """After a connect the controller has stopped advertising; until bluetoothd takes
    the advert again the status says "not-advertising", and the monitor's looks in
    that window count no drop."""
    async with FakeBluez.serve(bus_address, halt_advertising_on_connect=True) as bluez:
        rig = await serve(bus_address, bluez, stopper)
        await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
        bluez.delay_next_call("RegisterAdvertisement", 1.5)
        await bluez.connect_central(address="11:22:33:44:55:01", discover=True)
        await status_until(rig.portal, lambda s: s["advert_state"] == "not-advertising")
        monitor = rig.portal.peripheral.steps.advertiser.monitor
        assert monitor is not None
        looks = monitor.looks
        await eventually(lambda: monitor.looks > looks, timeout=3.0)  # a look in the window
        await status_until(rig.portal, lambda s: s["advert_state"] == "advertising", timeout=5.0)
        assert status(rig)["advert_drops"] == 0
        await trio.to_thread.run_sync(stopper.pop().stop)


@pytest.mark.parametrize(("before", "after", "gone"), [(1, 1, True), (None, 2, False),
                                                      (1, 2, False), (1, None, False)])
async def test_a_look_counts_a_drop_only_for_the_registration_it_began_with(
    bluez: FakeBluez, client: Connection, before: int | None, after: int | None, gone: bool
) -> None:
    """An ActiveInstances answer read while we registered again is about the advert we
    had just unregistered: not a drop."""
    answers = iter([before, after])
    dropped: list[AdvertisingCapabilities] = []
    monitor = AdvertMonitor(client, "/org/bluez/hci0", registration=lambda: next(answers),
                            on_gone=dropped.append, on_instances=lambda _caps: None,
                            timeout=2.0)
    assert await monitor.check() is not gone  # nothing is on the air in the fake
    assert bool(dropped) is gone
