"""What a long-running Pi meets: failures mid-session, stop/start cycles, races
between callers, match rules that must not pile up, phones with many queries."""

from __future__ import annotations

import json
import threading
import time

import pytest
import trio
from rig import Rig, eventually, make_settings, phone, start_rig

from mushpi_ble.core import MAX_REMEMBERED
from mushpi_ble.dbus import (
    CallContext,
    Connection,
    DBusError,
    Interface,
    MatchRule,
    Method,
    Property,
    open_connection,
)
from mushpi_ble.errors import StartError
from mushpi_ble.gatt import adapter, devices
from mushpi_ble.portal import THREAD_NAME, BlePortal
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.fakebluez import FakeBluez

UUID = CHARACTERISTIC_UUIDS


async def test_a_failure_inside_a_session_is_survived(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await rig.bluez.wait_for_advertisement()
    real = adapter.managed_objects
    failures = [1]

    async def flaky(conn: Connection, *, timeout: float) -> object:
        if failures:
            failures.pop()
            raise DBusError("org.freedesktop.DBus.Error.NoReply",
                            "Message recipient disconnected from message bus without replying")
        return await real(conn, timeout=timeout)

    monkeypatch.setattr(devices, "managed_objects", flaky)
    await rig.bluez.restart()  # the new session's device tracker fails its first read
    await eventually(lambda: not failures and rig.portal.get_status()["registered"])
    await rig.bluez.wait_for_advertisement(timeout=3)
    assert rig.portal.is_running()
    central = await phone(rig)
    assert len(await central.read(UUID["control_targets"])) == 15


async def test_stop_then_start_again_serves_and_advertises(rig: Rig) -> None:
    await rig.bluez.wait_for_advertisement()
    central = await phone(rig)
    await eventually(lambda: rig.portal.connection_count() == 1)
    await trio.to_thread.run_sync(rig.portal.stop)
    await rig.bluez.wait_until(lambda: not rig.bluez.advertisements())
    await central.disconnect()
    await trio.to_thread.run_sync(rig.portal.start)
    await rig.bluez.wait_for_advertisement(timeout=3)
    await eventually(lambda: rig.portal.get_status()["advertising"])
    status = rig.portal.get_status()
    assert status["connection_count"] == 0 and status["last_error"] is None
    assert (await (await phone(rig, address="11:22:33:44:55:09")).read(
        UUID["status_flags"]))[0] & 0x10


async def test_stop_during_start_makes_start_raise(bus_address: str) -> None:
    portal = BlePortal(make_settings(MUSHPI_DBUS_BUS_TIMEOUT_MS="3000"), bus=bus_address)
    outcome: dict[str, BaseException | None] = {}

    def starter() -> None:
        try:
            portal.start()
            outcome["error"] = None
        except StartError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=starter)
    thread.start()  # no bluetoothd: start waits for org.bluez
    await trio.sleep(0.3)
    await trio.to_thread.run_sync(portal.stop)
    await trio.to_thread.run_sync(thread.join, 5)
    assert isinstance(outcome["error"], StartError)
    assert "stopped while starting" in str(outcome["error"])
    assert not portal.is_running()


async def test_concurrent_starts_run_one_loop(bus_address: str, bluez: FakeBluez) -> None:
    portal = BlePortal(make_settings(), bus=bus_address)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, portal.start)
        nursery.start_soon(trio.to_thread.run_sync, portal.start)
    assert [t.name for t in threading.enumerate()].count(THREAD_NAME) == 1
    assert len(bluez.applications()) == 1
    await trio.to_thread.run_sync(portal.stop)
    await eventually(lambda: THREAD_NAME not in [t.name for t in threading.enumerate()])


async def test_owner_change_during_the_first_lookup_is_not_lost(bus_address: str) -> None:
    """GetNameOwner's answer and a newer NameOwnerChanged read in one batch."""
    name = "com.example.Watched"
    for _ in range(5):
        async with open_connection(bus_address) as watcher, \
                open_connection(bus_address) as owner, trio.open_nursery() as nursery:
            lookup = DelayedLookup(watcher, owner, nursery, name)
            watcher.get_name_owner = lookup  # type: ignore[method-assign,assignment]
            value = await watcher.watch_name_owner(name)
            await trio.sleep(0.05)
            assert value.value == owner.unique_name


async def test_leaving_a_subscription_by_cancellation_removes_its_match_rule(
    server: Connection, client: Connection
) -> None:
    server.export("/ticker", [Interface("com.example.T1", properties=[
        Property("N", "u", get=lambda: 0)])])
    rule = MatchRule(sender=server.unique_name, path="/ticker")
    with trio.move_on_after(0.2):
        async with client.subscribe(rule) as signals:
            await signals.receive()  # never comes: cancelled here
    before = client.stats.signals_received
    for n in range(5):
        await server.emit_properties_changed("/ticker", "com.example.T1", {"N": n})
    await client.call(server.unique_name, "/", "org.freedesktop.DBus.Peer", "Ping")
    await server.call(client.unique_name, "/", "org.freedesktop.DBus.Peer", "Ping")
    assert client.stats.signals_received == before


async def test_a_failed_background_owner_watch_does_not_kill_the_connection(
    bus_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_connection(bus_address, call_timeout=0.3) as conn:
        conn.pause_receiving()  # AddMatch for the allowed caller will time out
        conn.export("/guarded", [Interface("com.example.G1", allowed_caller="com.example.Boss",
                                           methods=[Method("M", handler=_noop)])])
        await trio.sleep(0.5)
        conn.resume_receiving()
        assert await conn.call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "GetId")
    assert "cannot follow the owner of name=com.example.Boss" in caplog.text


class DelayedLookup:
    """GetNameOwner whose answer is read only after another connection took the name."""

    def __init__(self, watcher: Connection, owner: Connection, nursery: trio.Nursery,
                 name: str) -> None:
        self.real = watcher.get_name_owner
        self.watcher, self.owner, self.nursery, self.name = watcher, owner, nursery, name

    async def __call__(self, looked_up: str) -> str:
        self.watcher.pause_receiving()
        self.nursery.start_soon(self.take_the_name)
        return await self.real(looked_up)

    async def take_the_name(self) -> None:
        await self.owner.request_name(self.name, 4)
        await trio.sleep(0.05)  # both the answer and the change now wait unread
        self.watcher.resume_receiving()


def _noop(_ctx: CallContext) -> None:
    return None


async def test_many_distinct_threshold_queries_stay_bounded(rig: Rig) -> None:
    central = await phone(rig)
    for n in range(MAX_REMEMBERED + 40):
        query = {"species": f"Species{n}", "stage": "Pinning"}
        await central.write(UUID["stage_thresholds"], json.dumps(query).encode())
        answer = json.loads(await central.read_long(UUID["stage_thresholds"]))
        assert answer == {"error": "Stage not found", "species": f"Species{n}",
                          "stage": "Pinning"}
    core = rig.portal.service.core
    assert len(core._last_good) <= MAX_REMEMBERED
    assert len(core._snapshots) <= MAX_REMEMBERED
    # the defaults survive however many pairs were asked for
    assert len(await central.read(UUID["control_targets"])) == 15


async def test_start_stop_cycles_leave_no_thread(bus_address: str, bluez: FakeBluez) -> None:
    rig = await start_rig(bus_address, bluez, make_settings())
    for _ in range(5):
        await trio.to_thread.run_sync(rig.portal.stop)
        await trio.to_thread.run_sync(rig.portal.start)
    await trio.to_thread.run_sync(rig.portal.stop)
    deadline = time.monotonic() + 3
    while THREAD_NAME in [t.name for t in threading.enumerate()]:
        assert time.monotonic() < deadline
        await trio.sleep(0.02)
