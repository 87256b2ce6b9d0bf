"""A bonded phone's second visit: bluetoothd kept its subscriptions and answers its CCC
write itself, so the peripheral gives it the current value as on a first subscribe,
once, and never twice to a phone that subscribes anew."""

from __future__ import annotations

import struct

import pytest
import trio
from rig import Rig, eventually, make_settings, start_rig, status_until

from mushpi_ble.gatt import GattApplication, replay_on_reconnect
from mushpi_ble.portal import BlePortal
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.fakebluez import FakeBluez, FakeCentral
from mushpi_ble.testing.fakebluez.gatt_db import Characteristic
from mushpi_ble.testing.fakebluez.uuids import normalize_uuid

ENV = CHARACTERISTIC_UUIDS["env_measurements"]
PHONE = "11:22:33:44:55:66"


@pytest.mark.parametrize(
    ("why", "bonded", "notifying", "subscribed_since", "sent_since", "replay"),
    [
        ("bluetoothd kept a bonded phone's subscription: the push once", True, True, False,
         False, True),
        ("the phone subscribed anew (StartNotify): pushed already", True, True, True, False,
         False),
        ("a value went out since it came back: it has the current one", True, True, False,
         True, False),
        ("an unbonded phone's CCC goes with the link: it subscribes anew", False, True, False,
         False, False),
        ("nobody subscribed, as far as bluetoothd tells us", True, False, False, False,
         False),
    ],
)
def test_replay_on_reconnect(why: str, bonded: bool, notifying: bool, subscribed_since: bool,
                             sent_since: bool, replay: bool) -> None:
    assert replay_on_reconnect(bonded=bonded, notifying=notifying,
                               subscribed_since=subscribed_since,
                               sent_since=sent_since) is replay, why


def co2(packet: bytes) -> int:
    return int(struct.unpack_from("<H", packet)[0])


def fake_chrc(bluez: FakeBluez, uuid: str) -> Characteristic:
    """The fake bluetoothd's own record of a registered characteristic."""
    wanted = normalize_uuid(uuid)
    return next(chrc for app in bluez.adapter().gatt.registered()
                for chrc in app.characteristics() if chrc.uuid == wanted)


def app_of(portal: BlePortal) -> GattApplication:
    app = portal.peripheral.steps.application.app
    assert app is not None
    return app


async def bonded_visit(bluez: FakeBluez) -> FakeCentral:
    central = await bluez.connect_central(address=PHONE)
    bluez.adapter().set_paired(PHONE, bonded=True)
    return central


async def first_visit(rig: Rig, bluez: FakeBluez) -> int:
    """The bonded phone's first visit: it connects, subscribes, gets the current value
    and leaves; that value's CO2."""
    central = await bonded_visit(bluez)
    await status_until(rig.portal, lambda s: s["connection_count"] == 1)
    await central.subscribe(ENV)
    first = co2((await central.next_notification(ENV)).value)
    await central.disconnect()
    await status_until(rig.portal, lambda s: s["connection_count"] == 0)
    return first


async def test_a_bonded_phone_back_gets_the_current_value_once(bus_address: str) -> None:
    async with FakeBluez.serve(bus_address, keep_bonded_ccc=True) as bluez:
        rig = await start_rig(bus_address, bluez, make_settings(MUSHPI_BLE_NOTIFY_MODE="signal"))
        # every step done (devices followed): the first visit is seen as it happens
        await status_until(rig.portal, lambda s: s["state"] == "serving")
        try:
            rig.portal.publish_env(20.0, 80.0, 900, 1)
            assert await first_visit(rig, bluez) == 900
            assert rig.portal.get_status()["subscriptions"]["env_measurements"]  # kept
            rig.portal.publish_env(20.0, 80.0, 950, 1)  # while the phone is away
            await eventually(lambda: rig.portal.get_status()["characteristics"][
                "env_measurements"]["pending"] == 0)
            # second visit: enabling the same CCC again reaches bluetoothd only
            back = await bluez.connect_central(address=PHONE)
            await back.subscribe(ENV)
            packet = await back.next_notification(ENV, timeout=5.0)
            assert co2(packet.value) == 950  # the value published while it was away
            await eventually(lambda: app_of(rig.portal).replay_looks >= 1)
            rig.portal.publish_env(20.0, 80.0, 960, 1)
            assert co2((await back.next_notification(ENV)).value) == 960  # no second copy
            assert [co2(n.value) for n in back.notifications(ENV)] == [950, 960]
        finally:
            await trio.to_thread.run_sync(rig.portal.stop)


@pytest.mark.parametrize(
    ("shared_socket", "why"),
    [
        (True, "bluetoothd 5.66: its one socket per characteristic stays open while the "
               "bonded phone is away (its CCC is kept); the push goes into that socket"),
        (False, "bluetoothd 5.82: the phone's own socket closes with its link, its CCC "
                "stays; the push and what follows go out as signals, which bluetoothd "
                "sends to every phone whose CCC is on"),
    ],
)
async def test_a_bonded_phone_back_with_notify_sockets_gets_the_current_value(
        bus_address: str, shared_socket: bool, why: str) -> None:
    """With notify sockets (the default) enabling the kept CCC again brings no
    AcquireNotify, and the value published meanwhile went nowhere (both seen in the VM
    lab); the current value arrives once, then each new one."""
    async with FakeBluez.serve(bus_address, keep_bonded_ccc=True,
                               notify_socket_per_device=not shared_socket) as bluez:
        rig = await start_rig(bus_address, bluez, make_settings())
        await status_until(rig.portal, lambda s: s["state"] == "serving")
        try:
            rig.portal.publish_env(20.0, 80.0, 900, 1)
            assert await first_visit(rig, bluez) == 900
            app = app_of(rig.portal)
            acquired = app.state("env_measurements").sockets_acquired  # leaving acquires none
            await eventually(lambda: bool(app.state("env_measurements").sockets)
                             is shared_socket)
            reads = fake_chrc(bluez, ENV).socket_reads
            rig.portal.publish_env(20.0, 80.0, 950, 1)  # while the phone is away
            await eventually(lambda: rig.portal.get_status()["characteristics"][
                "env_measurements"]["pending"] == 0)
            if shared_socket:  # bluetoothd has read it from the kept socket, for no one
                await eventually(lambda: fake_chrc(bluez, ENV).socket_reads > reads)
            back = await bluez.connect_central(address=PHONE)
            await back.subscribe(ENV)
            packet = await back.next_notification(ENV, timeout=5.0)
            assert co2(packet.value) == 950, why
            assert app.state("env_measurements").sockets_acquired == acquired
            await eventually(lambda: app.replay_looks >= 1)
            rig.portal.publish_env(20.0, 80.0, 960, 1)
            assert co2((await back.next_notification(ENV)).value) == 960  # no second copy
            assert [co2(n.value) for n in back.notifications(ENV)] == [950, 960]
        finally:
            await trio.to_thread.run_sync(rig.portal.stop)


async def test_in_notify_mode_socket_a_bonded_phone_without_a_socket_is_named(
        bus_address: str, caplog: pytest.LogCaptureFixture) -> None:
    """MUSHPI_BLE_NOTIFY_MODE=socket allows no signals: the phone bluetoothd left without
    a socket is named in a warning (it gets values once it subscribes anew)."""
    async with FakeBluez.serve(bus_address, keep_bonded_ccc=True) as bluez:
        rig = await start_rig(bus_address, bluez, make_settings(MUSHPI_BLE_NOTIFY_MODE="socket"))
        await status_until(rig.portal, lambda s: s["state"] == "serving")
        try:
            await first_visit(rig, bluez)
            back = await bluez.connect_central(address=PHONE)
            await back.subscribe(ENV)
            await eventually(lambda: app_of(rig.portal).replay_looks >= 1)
            assert [r for r in caplog.records
                    if "bonded phone back without a notify socket" in r.getMessage()
                    and "notify mode socket" in r.getMessage()]
            assert not back.notifications(ENV)
        finally:
            await trio.to_thread.run_sync(rig.portal.stop)


async def test_a_phone_that_subscribes_anew_gets_it_once(bus_address: str) -> None:
    """Without kept CCC values the bonded phone subscribes anew: StartNotify pushes the
    value, the reconnect look finds that and pushes nothing more."""
    async with FakeBluez.serve(bus_address, keep_bonded_ccc=False) as bluez:
        rig = await start_rig(bus_address, bluez, make_settings(MUSHPI_BLE_NOTIFY_MODE="signal"))
        # every step done (devices followed): the first visit is seen as it happens
        await status_until(rig.portal, lambda s: s["state"] == "serving")
        try:
            rig.portal.publish_env(20.0, 80.0, 900, 1)
            await first_visit(rig, bluez)
            back = await bluez.connect_central(address=PHONE)
            await back.subscribe(ENV)
            assert co2((await back.next_notification(ENV)).value) == 900
            await eventually(lambda: app_of(rig.portal).replay_looks >= 1)
            rig.portal.publish_env(20.0, 80.0, 960, 1)
            assert co2((await back.next_notification(ENV)).value) == 960
            assert [co2(n.value) for n in back.notifications(ENV)] == [900, 960]
        finally:
            await trio.to_thread.run_sync(rig.portal.stop)
