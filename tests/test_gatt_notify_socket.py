"""Notify sockets in the generic GATT layer (AcquireNotify), against the fake bluetoothd:
one socket per phone, per-phone queues with the policy, isolation of a stalled phone,
MTU refusal, indication confirmations (0x01 vs Confirm), the end of a socket and the
bluez/bluez#1452 defence."""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from rig import eventually

from mushpi_ble.dbus import Connection
from mushpi_ble.gatt import (
    Characteristic,
    CharacteristicState,
    GattApplication,
    GattDefinitionError,
    Service,
    validate_services,
)
from mushpi_ble.gatt.notify_socket import PEER_CLOSED, NotifySocket
from mushpi_ble.gatt.queue_policy import Admission, admit
from mushpi_ble.testing.fakebluez import FakeBluez, FakeCentral

SVC = "0000bbbb-0000-1000-8000-00805f9b34fb"
NOTE = "0000bbb1-0000-1000-8000-00805f9b34fb"
IND = "0000bbb2-0000-1000-8000-00805f9b34fb"
A = "11:22:33:44:55:0A"
B = "11:22:33:44:55:0B"


def service(*, policy: str = "drop_oldest", queue: int = 4, fallback: bool = True) -> Service:
    return Service(SVC, (
        Characteristic(NOTE, ("notify",), acquire_notify=True, notify_queue=queue,
                       notify_policy=policy, signal_fallback=fallback, name="note"),
        Characteristic(IND, ("indicate",), acquire_notify=True, name="ind"),
    ))


@asynccontextmanager
async def served(conn: Connection, svc: Service) -> AsyncIterator[GattApplication]:
    async with trio.open_nursery() as nursery:
        app = GattApplication(conn, "/sock/app", [svc], nursery=nursery, handler_timeout=1.0,
                              close_grace=0.05)
        await conn.watch_name_owner("org.bluez")
        await app.register("/org/bluez/hci0", timeout=2.0)
        try:
            yield app
        finally:
            await app.unregister(timeout=2.0)
            nursery.cancel_scope.cancel()


async def notify_acquired(bluez: FakeBluez, conn: Connection, path: str) -> bool:
    """The NotifyAcquired property, as bluetoothd would read it."""
    (variant,) = await bluez.runtime.call(
        conn.unique_name, path, "org.freedesktop.DBus.Properties", "Get", "ss",
        ("org.bluez.GattCharacteristic1", "NotifyAcquired"))
    return bool(variant[1])


def values(phone: object, uuid: str) -> list[bytes]:
    return [n.value for n in phone.notifications(uuid)]  # type: ignore[attr-defined]


def test_the_policy_rule() -> None:
    queue: deque[int] = deque()
    assert [admit(queue, i, 2, "drop_oldest") for i in range(3)] == [
        Admission.QUEUED, Admission.QUEUED, Admission.QUEUED_DROPPING_OLDEST]
    assert list(queue) == [1, 2]
    assert admit(queue, 3, 2, "drop_newest") is Admission.REFUSED and list(queue) == [1, 2]
    assert admit(queue, 4, 2, "coalesce") is Admission.COALESCED and list(queue) == [1, 4]


def test_acquire_notify_needs_a_notifying_characteristic() -> None:
    with pytest.raises(GattDefinitionError, match="acquire_notify"):
        validate_services([Service(SVC, (Characteristic(NOTE, ("read",), read=_never,
                                                        acquire_notify=True),))])
    with pytest.raises(GattDefinitionError, match="notify_policy"):
        validate_services([Service(SVC, (Characteristic(NOTE, ("notify",),
                                                        notify_policy="newest"),))])


async def _never(_request: object) -> bytes:
    return b""



async def one_phone_on_a_socket(bluez: FakeBluez, state: CharacteristicState,
                                uuid: str = NOTE) -> FakeCentral:
    """Phone A subscribed to ``uuid``, its socket held."""
    phone = await bluez.connect_central(address=A)
    await phone.subscribe(uuid)
    await eventually(lambda: len(state.sockets) == 1)
    return phone

async def two_phones_on_sockets(bluez: FakeBluez, state: CharacteristicState
                                ) -> tuple[FakeCentral, FakeCentral]:
    """Phones A and B subscribed to NOTE, each with its own socket (bluetoothd 5.69+)."""
    first = await bluez.connect_central(address=A)
    second = await bluez.connect_central(address=B)
    await first.subscribe(NOTE)
    await second.subscribe(NOTE)
    await eventually(lambda: len(state.sockets) == 2)
    return first, second

async def test_one_socket_per_phone_each_gets_its_own(app_conn: Connection,
                                                       bluez: FakeBluez) -> None:
    async with served(app_conn, service()) as app:
        state = app.state("note")
        one = await bluez.connect_central(address=A, mtu=23)
        two = await bluez.connect_central(address=B, mtu=100)
        await one.subscribe(NOTE)
        await two.subscribe(NOTE)
        await eventually(lambda: len(state.sockets) == 2)
        assert not state.notifying and state.start_notify_calls == 0
        assert await notify_acquired(bluez, app_conn, state.path) is True
        assert await app.notify(state, b"v1") is True
        assert (await one.next_notification(NOTE)).value == b"v1"
        assert (await two.next_notification(NOTE)).value == b"v1"
        phones = app.phones()
        assert phones[one.device_path]["mtu"] == 23 and phones[two.device_path]["mtu"] == 100
        assert phones[one.device_path]["characteristics"] == ["note"]
        assert phones[one.device_path]["sent"] == 1
        await one.unsubscribe(NOTE)  # bluetoothd closes that phone's socket: EOF
        await eventually(lambda: one.device_path not in state.sockets)
        await app.notify(state, b"v2")
        assert (await two.next_notification(NOTE)).value == b"v2"
        assert values(one, NOTE) == [b"v1"]
        assert state.sockets_acquired == 2 and state.sockets_closed == 1
        await two.unsubscribe(NOTE)
        await eventually(lambda: not state.sockets)
        assert await notify_acquired(bluez, app_conn, state.path) is False


async def test_a_stalled_phone_never_delays_another_and_its_queue_stays_bounded(
        app_conn: Connection, bluez: FakeBluez) -> None:
    async with served(app_conn, service(queue=4)) as app:
        state = app.state("note")
        slow, fast = await two_phones_on_sockets(bluez, state)
        slow.pause_notifications()
        pipe = state.sockets[slow.device_path]
        sent = [b"%04d" % i for i in range(200)]
        for count, value in enumerate(sent, 1):
            await app.notify(state, value)
            assert pipe.depth <= 4  # memory does not grow with the stalled phone
            # the other phone has it while the stalled one holds a full queue
            await eventually(lambda n=count: len(values(fast, NOTE)) == n)  # type: ignore[misc]
        assert values(fast, NOTE) == sent  # every one, in order
        stats = pipe.stats
        assert stats.dropped > 0
        assert stats.offered == stats.sent + stats.dropped + stats.coalesced + stats.refused \
            + pipe.depth
        assert state.sockets[fast.device_path].stats.dropped == 0
        slow.resume_notifications()
        await eventually(lambda: pipe.depth == 0 and values(slow, NOTE)[-1:] == [sent[-1]])
        got = values(slow, NOTE)
        assert got == sorted(got)  # what arrives is in order; the oldest were dropped
        assert app.phones()[slow.device_path]["dropped"] == stats.dropped


async def test_coalesce_keeps_only_the_newest_for_a_stalled_phone(app_conn: Connection,
                                                                  bluez: FakeBluez) -> None:
    async with served(app_conn, service(policy="coalesce")) as app:
        state = app.state("note")
        slow = await one_phone_on_a_socket(bluez, state)
        slow.pause_notifications()
        pipe = state.sockets[slow.device_path]
        for i in range(300):
            await app.notify(state, b"%04d" % i)
            assert pipe.depth <= 1
        assert pipe.stats.coalesced > 0
        slow.resume_notifications()
        await eventually(lambda: values(slow, NOTE)[-1:] == [b"0299"])


async def test_a_value_longer_than_mtu_minus_3_is_refused_and_logged(
        app_conn: Connection, bluez: FakeBluez, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mushpi_ble.gatt")
    async with served(app_conn, service()) as app:
        state = app.state("note")
        phone = await bluez.connect_central(address=A, mtu=23)
        await phone.subscribe(NOTE)
        await eventually(lambda: len(state.sockets) == 1)
        await app.notify(state, bytes(21))
        await app.notify(state, bytes(20))
        assert (await phone.next_notification(NOTE)).value == bytes(20)
        assert values(phone, NOTE) == [bytes(20)]  # never cut, never sent
        entry = app.phones()[phone.device_path]
        assert entry["refused"] == 1 and "exceeds MTU - 3 = 20" in entry["last_error"]
        assert any("notification refused" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("on_socket", [True, False])
async def test_indication_confirmations_are_not_a_close(app_conn: Connection, bus_address: str,
                                                        on_socket: bool) -> None:
    async with FakeBluez.serve(bus_address, notify_confirm_on_socket=on_socket) as bluez, \
            served(app_conn, service()) as app:
        state = app.state("ind")
        phone = await one_phone_on_a_socket(bluez, state, IND)
        pipe = state.sockets[phone.device_path]
        for i in range(3):
            await app.notify(state, b"i%d" % i)
        await eventually(lambda: state.confirmations + pipe.stats.confirmations == 3)
        assert [n.indication for n in phone.notifications(IND)] == [True] * 3
        assert not pipe.closed and state.sockets_closed == 0
        assert pipe.stats.confirmations == (3 if on_socket else 0)  # 0x01 bytes (5.80+)
        assert state.confirmations == (0 if on_socket else 3)  # Confirm() calls before
        await phone.disconnect()  # the real end: EOF
        await eventually(lambda: pipe.closed and not state.sockets)
        assert pipe.close_reason == "closed by bluetoothd"
        await trio.sleep(0.2)
        assert state.socket_losses == 0 and not state.suspects  # the phone left


async def test_a_socket_lost_under_a_connected_phone_falls_back_to_signals(
        app_conn: Connection, bus_address: str) -> None:
    async with FakeBluez.serve(bus_address, close_wrong_notify_socket=True) as bluez, \
            served(app_conn, service()) as app:
        state = app.state("note")
        stays, leaves = await two_phones_on_sockets(bluez, state)
        await leaves.disconnect()  # bluetoothd also closes the first socket: stays's
        await eventually(lambda: state.socket_losses == 1)
        assert state.suspects == {stays.device_path} and state.on_signals
        await app.notify(state, b"by-signal")
        assert (await stays.next_notification(NOTE)).value == b"by-signal"
        await stays.unsubscribe(NOTE)  # the phone subscribes again: AcquireNotify again
        await stays.subscribe(NOTE)
        await eventually(lambda: stays.device_path in state.sockets)
        assert not state.suspects and not state.on_signals
        await app.notify(state, b"by-socket")
        assert (await stays.next_notification(NOTE)).value == b"by-socket"
        assert state.sockets[stays.device_path].stats.sent == 1


async def test_without_fallback_a_lost_socket_is_only_counted(app_conn: Connection,
                                                              bus_address: str) -> None:
    async with FakeBluez.serve(bus_address, close_wrong_notify_socket=True) as bluez, \
            served(app_conn, service(fallback=False)) as app:
        state = app.state("note")
        _stays, leaves = await two_phones_on_sockets(bluez, state)
        await leaves.disconnect()
        await eventually(lambda: state.socket_losses == 1)
        assert not state.suspects and not state.on_signals
        assert await app.notify(state, b"lost") is False


@pytest.mark.parametrize("unread", [False, True])
async def test_bluetoothds_close_shows_as_eof_epipe_or_reset_alike(unread: bool) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ends: list[str] = []
    pipe = NotifySocket(ours, device="/dev_1", characteristic="c", mtu=23, link="LE",
                        capacity=2, policy="drop_oldest",
                        on_closed=lambda _s, why: ends.append(why))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe.run)
        if unread:
            pipe.offer(b"never read")  # dropped by the close: ECONNRESET on our side
        theirs.close()
        await eventually(lambda: pipe.closed)
        assert pipe.offer(b"late") is Admission.REFUSED  # and no exception
    assert ends == [PEER_CLOSED] and pipe.last_error == ""


async def test_a_phone_ten_times_slower_than_the_publisher(app_conn: Connection,
                                                           bluez: FakeBluez) -> None:
    interval = 0.002
    async with served(app_conn, service(queue=4)) as app:
        state = app.state("note")
        slow, fast = await two_phones_on_sockets(bluez, state)
        slow.notify_read_delay = interval * 10
        pipe = state.sockets[slow.device_path]
        sent = [b"%04d" % i for i in range(150)]
        for value in sent:
            await app.notify(state, value)
            assert pipe.depth <= 4
            await trio.sleep(interval)
        await eventually(lambda: len(values(fast, NOTE)) == len(sent))
        assert values(fast, NOTE) == sent
        assert state.sockets[fast.device_path].stats.dropped == 0
        assert pipe.stats.peak_depth <= 4 and pipe.stats.dropped > 0
        got = values(slow, NOTE)
        assert got == sorted(got)


async def test_before_5_69_one_socket_feeds_every_subscriber(app_conn: Connection,
                                                              bus_address: str) -> None:
    async with FakeBluez.serve(bus_address, notify_socket_per_device=False) as bluez, \
            served(app_conn, service()) as app:
        state = app.state("note")
        one = await bluez.connect_central(address=A)
        two = await bluez.connect_central(address=B)
        await one.subscribe(NOTE)
        await two.subscribe(NOTE)
        await eventually(lambda: len(state.sockets) == 1)
        assert list(app.phones()) == [one.device_path]  # known by the first phone only
        await app.notify(state, b"both")
        assert (await one.next_notification(NOTE)).value == b"both"
        assert (await two.next_notification(NOTE)).value == b"both"
        await one.unsubscribe(NOTE)  # the socket stays while anyone subscribes
        await app.notify(state, b"two")
        assert (await two.next_notification(NOTE)).value == b"two"
        assert values(one, NOTE) == [b"both"] and state.sockets_closed == 0
        await two.unsubscribe(NOTE)
        await eventually(lambda: not state.sockets)


async def test_counters_add_up_when_a_send_finds_the_socket_closed(app_conn: Connection,
                                                                  bluez: FakeBluez) -> None:
    async with served(app_conn, service()) as app:
        state = app.state("note")
        phone = await one_phone_on_a_socket(bluez, state)
        await app.notify(state, b"one")
        pipe = state.sockets[phone.device_path]
        phone.pause_notifications()
        await phone.unsubscribe(NOTE)  # closed on bluetoothd's side, not yet seen by us
        await app.notify(state, b"two")  # EPIPE (or sent, were our copy of the far end
        await eventually(lambda: pipe.closed)  # still open; or the reader saw EOF first)
        d = state.departed
        assert d.offered >= 1 and d.offered == d.sent + d.dropped + d.coalesced + d.refused


async def test_after_a_socket_phone_left_unregister_sends_the_value_first(
        app_conn: Connection, bluez: FakeBluez, caplog: pytest.LogCaptureFixture) -> None:
    """bluetoothd 5.82 clears a gone bonded phone's subscriptions on the next notification,
    or else inside UnregisterApplication on freed characteristics (and dies): so after a
    phone with a socket left, unregister sends each socket characteristic's value as a
    signal first. It must reach bluetoothd before the application is gone: the fake
    turns it into a notification only for a registered application (and reads signals
    beside calls, so its UnregisterApplication waits a moment to let the signal land)."""
    caplog.set_level(logging.INFO, logger="mushpi_ble.gatt")
    async with served(app_conn, service()) as app:
        state = app.state("note")
        stays, leaves = await two_phones_on_sockets(bluez, state)
        await app.notify(state, b"last")
        assert (await stays.next_notification(NOTE)).value == b"last"
        await leaves.disconnect()
        app.device_left(leaves.device_path)
        await eventually(lambda: leaves.device_path not in state.sockets)
        bluez.runtime.faults.delay_next_call("UnregisterApplication", 0.2)
        await app.unregister(timeout=2.0)
        assert (await stays.next_notification(NOTE)).value == b"last"  # by the signal
        assert not bluez.adapter().gatt.registered()
        assert "value sent before unregistering characteristic=note" in caplog.text
        assert "characteristic=ind" not in caplog.text  # no socket there


async def test_unregister_sends_nothing_when_no_socket_phone_left(
        app_conn: Connection, bluez: FakeBluez) -> None:
    async with served(app_conn, service()) as app:
        state = app.state("note")
        phone = await one_phone_on_a_socket(bluez, state)
        await app.notify(state, b"only")
        assert (await phone.next_notification(NOTE)).value == b"only"
        bluez.runtime.faults.delay_next_call("UnregisterApplication", 0.2)
        await app.unregister(timeout=2.0)
        await trio.sleep(0.1)
        assert values(phone, NOTE) == [b"only"]
