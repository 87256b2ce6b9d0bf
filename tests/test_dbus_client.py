"""Outgoing calls, subscriptions, caller policy and the writer under load."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from mushpi_ble.dbus import (
    CallContext,
    CallTimeout,
    Connection,
    ConnectionLost,
    DBusError,
    Interface,
    MatchRule,
    Method,
    Property,
    open_connection,
)
from mushpi_ble.dbus.errors import ACCESS_DENIED, NO_REPLY
from mushpi_ble.dbus.transport import MessageWriter

IFACE = "com.example.Client1"


def sleeper(release: trio.Event) -> Interface:
    async def wait(_ctx: CallContext, seconds: float) -> str:
        with trio.move_on_after(seconds):
            await release.wait()
        return "late"

    return Interface(IFACE, methods=[Method("Wait", "d", "s", handler=wait)])


async def test_call_deadline_and_late_reply_discarded(
    server: Connection, client: Connection
) -> None:
    release = trio.Event()
    server.export("/sleepy", [sleeper(release)])
    with pytest.raises(CallTimeout) as info:
        await client.call(server.unique_name, "/sleepy", IFACE, "Wait", "d", (3.0,), timeout=0.2)
    assert "no reply within" in info.value.text
    release.set()
    # the late reply arrives and is dropped quietly; the connection carries on
    with trio.fail_after(2):
        while client.stats.late_replies == 0:
            await trio.sleep(0.01)
    assert await client.call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                             "org.freedesktop.DBus", "GetId")


async def test_peer_disconnecting_mid_call_fails_the_call(
    bus_address: str, client: Connection
) -> None:
    """The peer vanishes (its socket dies) while our call is in its hands."""
    called = trio.Event()

    async def hang(_ctx: CallContext, _seconds: float) -> str:
        called.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def doomed_peer(task_status: trio.TaskStatus[str]) -> None:
        with pytest.raises(ConnectionLost):
            async with open_connection(bus_address) as peer:
                peer.export("/sleepy", [Interface(IFACE, methods=[
                    Method("Wait", "d", "s", handler=hang)])])
                task_status.started(peer.unique_name)
                await called.wait()
                peer.writer._sock.shutdown(socket.SHUT_RDWR)
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        name = await nursery.start(doomed_peer)
        with pytest.raises(DBusError) as info:
            await client.call(name, "/sleepy", IFACE, "Wait", "d", (10.0,), timeout=5)
    assert info.value.name == NO_REPLY
    assert "disconnected" in info.value.text.lower()


async def test_bus_loss_fails_pending_calls() -> None:
    from mushpi_ble.testing import private_bus

    release = trio.Event()
    with private_bus() as address:
        async with open_connection(address) as other:
            other.export("/sleepy", [sleeper(release)])
            with pytest.raises(ConnectionLost):
                async with open_connection(address) as conn, trio.open_nursery() as nursery:
                    async def cut_the_wire() -> None:
                        await trio.sleep(0.2)
                        conn.writer._sock.shutdown(socket.SHUT_RDWR)

                    nursery.start_soon(cut_the_wire)
                    await conn.call(other.unique_name, "/sleepy", IFACE, "Wait", "d", (5.0,),
                                    timeout=5)
            assert conn.closed.is_set()


async def test_twenty_thousand_properties_changed_none_lost(
    server: Connection, client: Connection
) -> None:
    seq = 0
    server.export("/burst", [Interface(IFACE, properties=[Property("Seq", "u", get=lambda: seq)])])
    rule = MatchRule(sender=server.unique_name, path="/burst",
                     interface="org.freedesktop.DBus.Properties", member="PropertiesChanged")
    total = 20_000
    received: list[int] = []
    async with client.subscribe(rule, capacity=256) as signals:
        async def consume() -> None:
            async for sig in signals:
                received.append(sig.body[1]["Seq"][1])
                if len(received) == total:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            for seq in range(total):
                await server.emit_properties_changed("/burst", IFACE, {"Seq": seq})
    assert received == list(range(total))
    assert client.stats.signals_dropped == 0
    # the connection survived
    assert await client.call(server.unique_name, "/", "org.freedesktop.DBus.Peer", "Ping") == ()


async def test_subscription_overflow_is_counted_and_logged(
    server: Connection, client: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    server.export("/over", [Interface(IFACE, properties=[Property("N", "u", get=lambda: 0)])])
    rule = MatchRule(sender=server.unique_name, path="/over")
    async with client.subscribe(rule, capacity=2, overflow_timeout=0.05) as signals:
        for n in range(5):
            await server.emit_properties_changed("/over", IFACE, {"N": n})
        with trio.fail_after(3):
            while client.stats.signals_dropped < 3:
                await trio.sleep(0.02)
        got = [signals.receive_nowait().body[1]["N"][1] for _ in range(2)]
    assert got == [("u", 0)[1], 1]
    assert "subscription overflow" in caplog.text


async def test_caller_policy_follows_name_owner(bus_address: str, server: Connection) -> None:
    name = "com.example.Trusted"
    hits: list[str] = []
    server.export("/guarded", [Interface(
        IFACE, allowed_caller=name,
        methods=[Method("Touch", "", "", handler=lambda c: hits.append(c.sender)),
                 Method("Open", "", "s", handler=lambda _c: "open", restricted=False)],
    )])
    await server.watch_name_owner(name)
    async with open_connection(bus_address) as first, open_connection(bus_address) as second:
        assert await first.request_name(name) == 1
        owner = await server.watch_name_owner(name)
        with trio.fail_after(2):
            await owner.wait_value(first.unique_name)
        await first.call(server.unique_name, "/guarded", IFACE, "Touch")
        with pytest.raises(DBusError) as info:
            await second.call(server.unique_name, "/guarded", IFACE, "Touch")
        assert info.value.name == ACCESS_DENIED
        assert await second.call(server.unique_name, "/guarded", IFACE, "Open") == ("open",)
        # the name moves to the second connection
        await first.release_name(name)
        assert await second.request_name(name) == 1
        with trio.fail_after(2):
            await owner.wait_value(second.unique_name)
        await second.call(server.unique_name, "/guarded", IFACE, "Touch")
        with pytest.raises(DBusError) as info:
            await first.call(server.unique_name, "/guarded", IFACE, "Touch")
        assert info.value.name == ACCESS_DENIED
    assert hits == [first.unique_name, second.unique_name]


async def test_fd_passing(server: Connection, client: Connection) -> None:
    left, right = socket.socketpair()
    received: list[bytes] = []

    def take(ctx: CallContext, fd: object) -> None:
        with socket.socket(fileno=fd.to_raw_fd()) as sock:  # type: ignore[attr-defined]
            sock.sendall(b"via fd")

    server.export("/fd", [Interface(IFACE, methods=[Method("Take", "h", "", handler=take)])])
    await client.call(server.unique_name, "/fd", IFACE, "Take", "h", (right,))
    right.close()
    received.append(left.recv(16))
    left.close()
    assert received == [b"via fd"]


async def test_writer_waits_on_eagain_and_applies_back_pressure() -> None:
    """A peer that stops reading: writes queue, emitters wait, nothing is lost."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer = MessageWriter(ours, max_buffer=64 * 1024)
    frame = 1000
    count = 2000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)

        async def produce() -> None:
            for i in range(count):
                await writer.write(struct.pack("<I", i) + b"x" * (frame - 4))

        nursery.start_soon(produce)
        await trio.sleep(0.2)
        assert writer.eagain_count > 0
        assert writer.backpressure_waits > 0
        assert writer.queued_bytes <= 64 * 1024 + frame
        data = bytearray()
        peer.setblocking(False)
        with trio.fail_after(10):
            while len(data) < frame * count:
                try:
                    data += peer.recv(65536)
                except BlockingIOError:
                    await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    seqs = [struct.unpack_from("<I", data, i * frame)[0] for i in range(count)]
    assert seqs == list(range(count))
    ours.close()
    peer.close()


async def test_a_message_cut_short_inline_finishes_before_any_other() -> None:
    """What the kernel does not take of an inline send leaves next, ahead even of an
    urgent message, and nothing is lost or reordered."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer = MessageWriter(ours, max_buffer=1 << 20)
    big = b"a" * 200_000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        writer.write_nowait(big)
        assert 0 < writer.queued_bytes < len(big)  # partly sent at once, the rest queued
        writer.write_nowait(b"n" * 10)
        writer.write_nowait(b"u" * 10, urgent=True)
        data = bytearray()
        peer.setblocking(False)
        with trio.fail_after(10):
            while len(data) < len(big) + 20:
                try:
                    data += peer.recv(65536)
                except BlockingIOError:
                    await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert bytes(data) == big + b"u" * 10 + b"n" * 10
    ours.close()
    peer.close()
