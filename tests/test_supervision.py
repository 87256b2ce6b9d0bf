"""Advertising, the adapter, connected centrals, bluetoothd restarts, caller checks."""

from __future__ import annotations

import logging
import time

import pytest
import trio
from rig import Rig, eventually, make_settings, phone, start_rig, status_until

from mushpi_ble.dbus import DBusError, open_connection
from mushpi_ble.notify import Outcome
from mushpi_ble.peripheral import State
from mushpi_ble.portal import BlePortal
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS, ControlTargets
from mushpi_ble.session import Step
from mushpi_ble.testing.controller import SimulatedController
from mushpi_ble.testing.fakebluez import FakeBluez

UUID = CHARACTERISTIC_UUIDS
SERVICE = "12345678-1234-5678-1234-56789abcdef0"


async def serve(bus_address: str, bluez: FakeBluez, stopper: list[BlePortal],
                **env: str) -> Rig:
    rig = await start_rig(bus_address, bluez, make_settings(**env))
    stopper.append(rig.portal)
    return rig


async def test_advert_registered_with_expected_properties(rig: Rig) -> None:
    advert = await rig.bluez.wait_for_advertisement()
    props = advert.properties
    assert props["Type"] == "peripheral"
    assert props["ServiceUUIDs"] == [SERVICE]
    assert props["Discoverable"] is True
    assert advert.payload_size <= 31
    await status_until(rig.portal, lambda s: s["advertising"])


async def test_long_name_is_left_out_of_the_advert_with_a_log_line(
    bus_address: str, stopper: list[BlePortal], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with FakeBluez.serve(bus_address, supported_includes=("local-name",)) as bluez:
        rig = await serve(bus_address, bluez, stopper, MUSHPI_BLE_NAME_PREFIX="MushPiRoom12")
        advert = await bluez.wait_for_advertisement()
        # from get_stage_data at start: 2 + 29 bytes, exactly the 31 of a scan response
        assert advert.local_name == "MushPiRoom12-OysterIncubation"
        # a stage name that makes it 2 + 32 > 31 bytes: left out, with the log line
        long_name = "MushPiRoom12-LionsManeIncubation"
        await trio.to_thread.run_sync(rig.portal.update_advertising_name, long_name)
        await bluez.wait_until(lambda: bluez.adapter("hci0").alias == long_name)
        await bluez.wait_until(lambda: bluez.advertisements()[0].local_name is None)
        assert "LocalName" not in bluez.advertisements()[0].properties
        assert "advertisement leaves out:" in caplog.text
        assert f"local name '{long_name}' (34 > 31 bytes of scan response" in caplog.text
        left_out = rig.portal.get_status()["advert_left_out"]
        assert any("local name" in item for item in left_out)
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_short_name_fits_the_advert(bus_address: str, stopper: list[BlePortal]) -> None:
    async with FakeBluez.serve(bus_address, supported_includes=("local-name",)) as bluez:
        rig = await serve(bus_address, bluez, stopper, MUSHPI_BLE_NAME_PREFIX="Mu")
        await bluez.wait_for_advertisement()
        rig.controller.stage.clear()  # no stage data: {prefix}-Init
        await trio.to_thread.run_sync(rig.portal.update_advertising_name)
        await bluez.wait_until(lambda: [a.local_name for a in bluez.advertisements()]
                               == ["Mu-Init"])
        advert = bluez.advertisements()[0]
        assert advert.payload_size == 21  # flags 3 + 128-bit UUID list 18
        assert advert.scan_response_size == 9  # the name: 2 + 7
        await trio.to_thread.run_sync(stopper.pop().stop)


@pytest.mark.parametrize(
    ("can_set", "includes", "level", "tx_power", "tx_include"),
    [
        (True, ("tx-power", "local-name"), "low", -20, False),
        (True, ("tx-power", "local-name"), "high", 4, False),
        (False, ("tx-power", "local-name"), "med", None, True),
        (False, ("local-name",), "med", None, False),
    ],
)
async def test_tx_power_mapping(bus_address: str, stopper: list[BlePortal], can_set: bool,
                                includes: tuple[str, ...], level: str, tx_power: int | None,
                                tx_include: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with FakeBluez.serve(bus_address, can_set_tx_power=can_set,
                               supported_includes=includes) as bluez:
        rig = await serve(bus_address, bluez, stopper, MUSHPI_BLE_ADV_TX_POWER=level)
        advert = await bluez.wait_for_advertisement()
        assert advert.properties.get("TxPower") == tx_power
        assert ("tx-power" in advert.properties.get("Includes", [])) == tx_include
        if tx_power is None and not tx_include:
            assert "tx-power (the adapter can neither set nor report it)" in caplog.text
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_release_leads_to_reregistration(rig: Rig) -> None:
    await rig.bluez.wait_for_advertisement()
    await rig.bluez.adapter("hci0").advertising.release_all()
    assert not rig.bluez.advertisements()
    advert = await rig.bluez.wait_for_advertisement(timeout=3.0)
    assert advert.properties["ServiceUUIDs"] == [SERVICE]
    assert rig.portal.peripheral.steps.advertiser.advert is not None
    assert rig.portal.peripheral.steps.advertiser.advert.releases == 1


async def test_live_rename_reaches_alias_and_advert(bus_address: str,
                                                   stopper: list[BlePortal]) -> None:
    async with FakeBluez.serve(bus_address, supported_includes=("local-name",)) as bluez:
        rig = await serve(bus_address, bluez, stopper, MUSHPI_BLE_NAME_PREFIX="Mu")
        await bluez.wait_for_advertisement()
        app_before = bluez.applications()[0]
        # at start the name already came from get_stage_data
        assert bluez.adapter("hci0").alias == "Mu-OysterIncubation"
        rig.controller.stage["stage"] = "Fruiting"
        await trio.to_thread.run_sync(rig.portal.update_advertising_name)
        await bluez.wait_until(lambda: bluez.adapter("hci0").alias == "Mu-OysterFruiting")
        # re-read live from PropertiesChanged; the application is untouched
        await bluez.wait_until(
            lambda: bluez.advertisements()[0].local_name == "Mu-OysterFruiting")
        await trio.to_thread.run_sync(rig.portal.update_advertising_name, "Mu-Ab")
        await bluez.wait_until(lambda: (bluez.advertisements()[0].local_name == "Mu-Ab"))
        assert bluez.adapter("hci0").alias == "Mu-Ab"
        assert bluez.applications() == [app_before]
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_alias_only_mode(bus_address: str, bluez: FakeBluez,
                               stopper: list[BlePortal]) -> None:
    rig = await serve(bus_address, bluez, stopper, MUSHPI_BLE_ADV_ENABLE="false")
    await bluez.wait_until(lambda: bluez.adapter("hci0").alias == "MushPi-OysterIncubation")
    await trio.sleep(0.2)
    assert bluez.advertisements() == []
    assert rig.portal.get_status()["advertising"] is False


async def test_adapter_off_is_powered_on(bus_address: str, bluez: FakeBluez,
                                         stopper: list[BlePortal]) -> None:
    await bluez.adapter("hci0").set_powered(False)
    await serve(bus_address, bluez, stopper)
    assert bluez.adapter("hci0").powered is True


async def test_adapter_by_address_and_unknown_adapter(bus_address: str, bluez: FakeBluez,
                                                      stopper: list[BlePortal]) -> None:
    address = bluez.adapter("hci0").address
    rig = await serve(bus_address, bluez, stopper, MUSHPI_BLE_ADAPTER=address)
    assert rig.portal.get_status()["adapter"] == "/org/bluez/hci0"
    await trio.to_thread.run_sync(stopper.pop().stop)
    from mushpi_ble.errors import AdapterNotFound

    with pytest.raises(AdapterNotFound, match=r"'hci7' not found .*bluetoothd has: hci0"):
        await serve(bus_address, bluez, stopper, MUSHPI_BLE_ADAPTER="hci7")


async def test_two_centrals_drive_the_connectivity_bit(rig: Rig) -> None:
    first = await phone(rig, address="11:22:33:44:55:01")
    await first.subscribe(UUID["status_flags"])
    pushed = await first.next_notification(UUID["status_flags"])
    assert pushed.value == bytes.fromhex("1000 0000")
    second = await phone(rig, address="11:22:33:44:55:02")
    await status_until(rig.portal, lambda s: s["connection_count"] == 2)
    await second.disconnect()
    await status_until(rig.portal, lambda s: s["connection_count"] == 1)
    assert (await first.read(UUID["status_flags"])) == bytes.fromhex("1000 0000")
    await first.disconnect()
    await status_until(rig.portal, lambda s: s["connection_count"] == 0)
    third = await phone(rig, address="11:22:33:44:55:03")
    await status_until(rig.portal, lambda s: s["connection_count"] == 1)
    await third.subscribe(UUID["status_flags"])
    assert (await third.next_notification(UUID["status_flags"])).value == bytes.fromhex(
        "1000 0000")
    await third.disconnect()
    await status_until(rig.portal, lambda s: s["connection_count"] == 0)
    status = rig.portal.get_status()
    assert status["connects"] == 3
    assert status["disconnects"] == 3
    # with nobody connected the bit is clear again
    fourth = await phone(rig, address="11:22:33:44:55:04")
    # the read reflects the published value; the notification on connect went out with bit 4
    assert (await fourth.read(UUID["status_flags"]))[0] & 0x10


def _count_tasks(portal: BlePortal) -> int:
    def count() -> int:
        def walk(task: trio.lowlevel.Task) -> int:
            return 1 + sum(walk(child) for nursery in task.child_nurseries
                           for child in nursery.child_tasks)

        return walk(trio.lowlevel.current_root_task())  # type: ignore[arg-type]

    return portal.call_in_loop(count)


async def test_twenty_restarts_reregister_without_blocking_or_leaking(
    rig: Rig,
) -> None:
    await rig.bluez.wait_for_advertisement()
    # counted once the advert step is done (its fast period's slow-down task started)
    await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
    baseline = await trio.to_thread.run_sync(_count_tasks, rig.portal)
    worst = 0.0
    for n in range(20):
        old = rig.bluez.unique_name
        await rig.bluez.restart()
        assert rig.bluez.unique_name != old
        started = time.perf_counter()
        outcome = rig.portal.publish_env(20.0, 80.0, 1000 + n, 1)
        worst = max(worst, time.perf_counter() - started)
        assert outcome in (Outcome.QUEUED, Outcome.COALESCED)
        await rig.bluez.wait_for_application(timeout=3.0)
        await rig.bluez.wait_for_advertisement(timeout=3.0)
        await status_until(rig.portal, lambda s: s["registered"], timeout=3.0)
    await status_until(rig.portal, lambda s: s["advert_state"] == "advertising")
    status = rig.portal.get_status()
    assert status["restarts"] == 20
    assert status["last_recovery_s"] is not None
    assert worst < rig.portal.settings.queue_put_timeout_s
    assert await trio.to_thread.run_sync(_count_tasks, rig.portal) == baseline
    # the values published during restarts were kept: a new central reads the last one
    central = await phone(rig)
    env = await central.read(UUID["env_measurements"])
    assert int.from_bytes(env[:2], "little") == 1019


async def test_adapter_removed_and_returned(rig: Rig) -> None:
    await rig.bluez.wait_for_advertisement()
    await rig.bluez.remove_adapter("hci0")
    await status_until(rig.portal, lambda s: not s["registered"])
    await rig.bluez.add_adapter("hci0")
    await rig.bluez.wait_for_application(timeout=5.0)
    await rig.bluez.wait_for_advertisement(timeout=5.0)
    await status_until(rig.portal, lambda s: s["registered"], timeout=3.0)
    central = await phone(rig)
    assert len(await central.read(UUID["control_targets"])) == 15


async def test_other_callers_get_access_denied(rig: Rig, bus_address: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    app = await rig.bluez.wait_for_application()
    central = await phone(rig)
    path = central.characteristic(UUID["control_targets"]).path
    valid = ControlTargets(180, 240, 850, 1200, 0, 0, 0).pack()
    async with open_connection(bus_address) as intruder:
        with pytest.raises(DBusError) as info:
            await intruder.call(app.sender, path, "org.bluez.GattCharacteristic1",
                                "WriteValue", "aya{sv}", (valid, {}))
        assert info.value.name == "org.freedesktop.DBus.Error.AccessDenied"
        with pytest.raises(DBusError) as info:
            await intruder.call(app.sender, path, "org.bluez.GattCharacteristic1",
                                "ReadValue", "a{sv}", ({},))
        assert info.value.name == "org.freedesktop.DBus.Error.AccessDenied"
        # introspection and plain properties stay open
        (uuid,) = await intruder.call(app.sender, path, "org.freedesktop.DBus.Properties",
                                      "Get", "ss", ("org.bluez.GattCharacteristic1", "UUID"))
        assert uuid == ("s", UUID["control_targets"])
        (xml,) = await intruder.call(app.sender, path,
                                     "org.freedesktop.DBus.Introspectable", "Introspect")
        assert "WriteValue" in xml
    assert rig.controller.writes == []
    assert "access denied" in caplog.text


async def test_supervisor_states_and_their_transition_log(
    bus_address: str, bluez: FakeBluez, stopper: list[BlePortal],
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mushpi_ble.peripheral")
    rig = await serve(bus_address, bluez, stopper)
    await bluez.wait_for_advertisement()
    peripheral = rig.portal.peripheral
    await status_until(rig.portal, lambda s: s["state"] == "serving")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("supervisor")]
    assert lines == [
        "supervisor stopped -> waiting-for-bluetoothd",
        "supervisor waiting-for-bluetoothd -> finding-adapter",
        "supervisor finding-adapter -> registering",
        "supervisor registering -> serving",
    ]
    await bluez.restart(graceful=False)
    await bluez.wait_for_advertisement(timeout=3.0)
    await status_until(rig.portal, lambda s: s["state"] == "serving" and s["registered"])
    assert "supervisor serving -> waiting-for-bluetoothd" in caplog.text
    await trio.to_thread.run_sync(stopper.pop().stop)
    assert peripheral.state is State.STOPPED


async def test_a_new_session_step_is_one_list_entry(
    bus_address: str, bluez: FakeBluez, stopper: list[BlePortal]
) -> None:
    """What a pairing agent needs: done per bluetoothd, retried on failure, undone at stop."""
    calls: list[str] = []
    failures = [DBusError("org.bluez.Error.Failed", "not yet")]

    class Probe(Step):
        name = "probe"

        async def register(self, adapter: str) -> None:
            calls.append(f"register {adapter}")
            if failures:
                raise failures.pop()

        async def unregister(self, timeout: float) -> None:
            calls.append("unregister")

        def forget(self) -> None:
            calls.append("forget")

    portal = BlePortal(make_settings(), bus=bus_address)
    portal.set_callbacks(SimulatedController(seed=1).callbacks())
    portal.peripheral.steps.ordered.append(Probe())
    await trio.to_thread.run_sync(portal.start)
    stopper.append(portal)
    # the first attempt failed; the application stayed registered and the step was retried
    await eventually(lambda: calls.count("register /org/bluez/hci0") == 2)
    status = await status_until(portal, lambda s: s["state"] == "serving")
    assert status["registered"]
    assert status["last_error"] is None  # the step's failure is over once it went through
    assert len(bluez.applications()) == 1
    await bluez.restart()
    await eventually(lambda: calls.count("register /org/bluez/hci0") == 3, timeout=3.0)
    assert "forget" in calls
    await trio.to_thread.run_sync(stopper.pop().stop)
    assert calls[-1] == "unregister"
