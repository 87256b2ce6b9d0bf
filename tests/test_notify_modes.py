"""MUSHPI_BLE_NOTIFY_MODE on the whole peripheral: notify sockets per phone (auto,
socket), signals (signal, and auto's fallbacks), and the per-phone state in
get_status(), the live view and the Prometheus export."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from rig import Rig, eventually, make_settings, start_rig

from mushpi_ble.cli.view import notify_lines
from mushpi_ble.prometheus import StatusCollector
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.fakebluez import FakeBluez

ENV = CHARACTERISTIC_UUIDS["env_measurements"]
A = "11:22:33:44:55:0A"
B = "11:22:33:44:55:0B"


@asynccontextmanager
async def rig_with(bus_address: str, bluez: FakeBluez, **env: str) -> AsyncIterator[Rig]:
    running = await start_rig(bus_address, bluez, make_settings(**env))
    try:
        yield running
    finally:
        await trio.to_thread.run_sync(running.portal.stop)


def co2s(phone: object) -> list[int]:
    return [struct.unpack_from("<H", n.value)[0]
            for n in phone.notifications(ENV)]  # type: ignore[attr-defined]


def env_path(rig: Rig) -> str:
    return str(rig.portal.get_status()["notify"]["characteristics"]["env_measurements"]["path"])


@pytest.fixture
async def auto_rig(bus_address: str, bluez: FakeBluez) -> AsyncIterator[Rig]:
    # drop_oldest: these tests follow every value of a burst along its path
    async with rig_with(bus_address, bluez, MUSHPI_BLE_NOTIFY_MODE="auto",
                        MUSHPI_BLE_BACKPRESSURE_POLICY="drop_oldest") as running:
        yield running


async def test_auto_serves_each_phone_its_own_socket(auto_rig: Rig) -> None:
    rig = auto_rig
    one = await rig.bluez.connect_central(address=A, mtu=64)
    two = await rig.bluez.connect_central(address=B, mtu=128)
    await one.subscribe(ENV)
    await two.subscribe(ENV)
    await one.next_notification(ENV)  # the current value, pushed on subscribing
    await eventually(lambda: len(rig.portal.get_status()["notify"]["phones"]) == 2)
    assert env_path(rig) == "socket"
    for co2 in range(1001, 1011):
        rig.portal.publish_env(20.0, 80.0, co2, 10)
    await eventually(lambda: co2s(one)[-1:] == [1010] and co2s(two)[-1:] == [1010])
    assert co2s(one)[-10:] == list(range(1001, 1011))
    status = rig.portal.get_status()
    phones = status["notify"]["phones"]
    assert phones[one.device_path]["mtu"] == 64 and phones[two.device_path]["mtu"] == 128
    assert phones[one.device_path]["characteristics"] == ["env_measurements"]
    assert phones[one.device_path]["sent"] >= 10 and phones[one.device_path]["dropped"] == 0
    assert status["notify"]["mode"] == "auto"
    totals = status["notify"]["characteristics"]["env_measurements"]
    assert totals["sent"] == sum(p["sent"] for p in phones.values()) and totals["dropped"] == 0
    assert status["subscriptions"]["env_measurements"] is True  # subscribed through sockets
    assert any("mtu=64" in line for line in notify_lines(status["notify"]))
    registry = CollectorRegistry()
    registry.register(StatusCollector(rig.portal.get_status, dict))
    text = generate_latest(registry).decode()
    # two phones, neither bonded: one series, not one per (rotating) address
    assert 'mushpi_ble_phone_notifications_sent_total{phone="anonymous"}' in text
    assert one.device_path not in text and 'mushpi_ble_phone_mtu_bytes{phone="anonymous"} 128.0' \
        in text
    assert 'mushpi_ble_notify_socket_losses_total{characteristic="env_measurements"} 0.0' \
        in text


async def test_signal_mode_uses_properties_changed(bus_address: str, bluez: FakeBluez) -> None:
    async with rig_with(bus_address, bluez, MUSHPI_BLE_NOTIFY_MODE="signal") as rig:
        phone = await rig.bluez.connect_central(address=A)
        await phone.subscribe(ENV)
        await phone.next_notification(ENV)
        rig.portal.publish_env(20.0, 80.0, 1234, 10)
        await eventually(lambda: co2s(phone)[-1:] == [1234])
        status = rig.portal.get_status()
        assert status["subscriptions"]["env_measurements"] is True
        assert status["notify"]["phones"] == {} and env_path(rig) == "signal"


async def test_auto_falls_back_to_signals_when_no_socket_can_be_made(
        bus_address: str, bluez: FakeBluez, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(*_args: object) -> tuple[socket.socket, socket.socket]:
        raise OSError(24, "Too many open files")

    async with rig_with(bus_address, bluez) as rig:
        monkeypatch.setattr(socket, "socketpair", no_socket)
        phone = await rig.bluez.connect_central(address=A)
        await phone.subscribe(ENV)  # AcquireNotify answered NotSupported: StartNotify
        await phone.next_notification(ENV)
        monkeypatch.undo()
        rig.portal.publish_env(20.0, 80.0, 1500, 10)
        await eventually(lambda: co2s(phone)[-1:] == [1500])
        assert env_path(rig) == "signal"


@pytest.mark.parametrize(("mode", "fallback"), [("auto", True), ("socket", False)])
async def test_a_lost_socket_under_a_connected_phone(bus_address: str, mode: str,
                                                     fallback: bool) -> None:
    async with FakeBluez.serve(bus_address, close_wrong_notify_socket=True) as bluez, \
            rig_with(bus_address, bluez, MUSHPI_BLE_NOTIFY_MODE=mode) as rig:
        stays = await rig.bluez.connect_central(address=A)
        leaves = await rig.bluez.connect_central(address=B)
        await stays.subscribe(ENV)
        await leaves.subscribe(ENV)
        await eventually(lambda: len(rig.portal.get_status()["notify"]["phones"]) == 2)
        await leaves.disconnect()  # bluez#1452: stays's socket is closed too
        chars = rig.portal.get_status
        await eventually(
            lambda: chars()["notify"]["characteristics"]["env_measurements"][
                "socket_losses"] == 1, timeout=5.0)
        rig.portal.publish_env(20.0, 80.0, 1777, 10)
        if fallback:
            assert env_path(rig) == "signal"
            await eventually(lambda: co2s(stays)[-1:] == [1777])
        else:
            assert env_path(rig) == "idle"
            await trio.sleep(0.2)
            assert 1777 not in co2s(stays)


async def test_the_value_pushed_on_subscribing_goes_to_the_new_phone_only(
        auto_rig: Rig) -> None:
    rig = auto_rig
    rig.portal.publish_env(20.0, 80.0, 1111, 10)
    await eventually(lambda: rig.portal.get_status()["characteristics"]["env_measurements"][
        "pending"] == 0)  # published before anyone subscribes
    one = await rig.bluez.connect_central(address=A)
    await one.subscribe(ENV)
    await eventually(lambda: co2s(one)[-1:] == [1111])
    two = await rig.bluez.connect_central(address=B)
    await two.subscribe(ENV)
    await eventually(lambda: co2s(two) == [1111])
    rig.portal.publish_env(20.0, 80.0, 1112, 10)
    await eventually(lambda: co2s(one)[-1:] == [1112] and co2s(two)[-1:] == [1112])
    assert co2s(one) == [1111, 1112]  # no second copy of 1111 when the other subscribed


async def test_a_phone_that_reconnects_at_once_has_not_lost_its_socket(auto_rig: Rig) -> None:
    rig = auto_rig
    phone = await rig.bluez.connect_central(address=A)
    await phone.subscribe(ENV)
    await eventually(lambda: rig.portal.get_status()["notify"]["phones"])
    await phone.disconnect()  # its socket ends with its link ...
    again = await rig.bluez.connect_central(address=A)  # ... and it is back at once
    await eventually(lambda: rig.portal.get_status()["connection_count"] == 1)
    await trio.sleep(1.5)  # past the grace after which a lost socket is suspected
    chars = rig.portal.get_status()["notify"]["characteristics"]
    assert chars["env_measurements"]["socket_losses"] == 0
    assert env_path(rig) == "idle"
    await again.subscribe(ENV)
    await eventually(lambda: env_path(rig) == "socket")


def test_notify_sockets_are_the_default() -> None:
    """README "Notify sockets": auto, now that the 5.82 unregistration crash is avoided
    (GattApplication.unregister)."""
    assert make_settings().ble_notify_mode == "auto"


def test_phones_are_labelled_by_identity_address_when_bonded_else_anonymous() -> None:
    from mushpi_ble.prometheus import _by_phone, phone_labels

    bonded = "/org/bluez/hci0/dev_AA_BB_CC_DD_EE_01"
    status = {"pairing": {"bonded_devices": [{"path": bonded, "address": "AA:BB:CC:DD:EE:01"}]}}
    entry = {"sent": 1, "dropped": 0, "coalesced": 0, "refused": 0, "confirmations": 0,
             "queue_depth": 2, "mtu": 100}
    notify = {"phones": {bonded: entry, "/org/bluez/hci0/dev_4A_00_00_00_00_01": entry,
                         "/org/bluez/hci0/dev_4A_00_00_00_00_02": {**entry, "mtu": 185}}}
    rows = dict(_by_phone(notify, phone_labels(status)))
    assert set(rows) == {"AA:BB:CC:DD:EE:01", "anonymous"}
    assert rows["anonymous"]["sent"] == 2 and rows["anonymous"]["queue_depth"] == 4
    assert rows["anonymous"]["mtu"] == 185
