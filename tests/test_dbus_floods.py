"""Foreign traffic is cheap to refuse and cannot delay the preferred peer.

A server exports an interface whose restricted members only the owner of
``com.example.Preferred`` may use; a second connection owns that name (the
preferred peer) and others play strangers, flooding it. Real dbus-daemon
throughout; the counters in ``Connection.stats`` show what was decided from
headers alone.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from jeepney import DBusAddress, HeaderFields, MessageType, new_method_call, new_signal
from jeepney.bus_messages import MatchRule as JeepneyMatchRule
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection
from jeepney.low_level import Message

from mushpi_ble.dbus import (
    CallContext,
    Connection,
    DBusError,
    Interface,
    MatchRule,
    Method,
    Property,
    SignalMessage,
    open_connection,
)
from mushpi_ble.dbus.admission import LIMITS_EXCEEDED, AdmissionPolicy
from mushpi_ble.dbus.codec import EARLY_SCREEN, Compiler, MessageDecoder, WireParser
from mushpi_ble.dbus.errors import ACCESS_DENIED, UNKNOWN_METHOD

PREFERRED = "com.example.Preferred"
IFACE = "com.example.Guarded1"
PATH = "/com/example/guarded"
SIGNALS = "com.example.Noise1"
BURST = 200


class Guarded:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.reads = 0

    def read(self, _ctx: CallContext, _options: dict[str, Any]) -> bytes:
        self.reads += 1
        return b"value"

    def burst(self, _ctx: CallContext) -> str:
        """Queue BURST signals, then answer: the answer must not wait behind them."""
        for seq in range(BURST):
            self.conn.emit_signal_nowait(PATH, SIGNALS, "Tick", "u", (seq,))
        return "done"

    def interface(self) -> Interface:
        return Interface(
            IFACE,
            methods=[
                Method("Read", "a{sv}", "ay", handler=self.read),
                Method("Store", "ay", "u", handler=lambda _c, data: len(data)),
                Method("Burst", "", "s", handler=self.burst),
                Method("Hello", "", "s", handler=lambda _c: "hello", restricted=False),
            ],
            properties=[
                Property("Public", "s", get=lambda: "open"),
                Property("Secret", "s", get=lambda: "hidden", restricted=True),
            ],
            allowed_caller=PREFERRED,
        )


@pytest.fixture
async def guarded(server: Connection) -> Guarded:
    obj = Guarded(server)
    server.export(PATH, [obj.interface()])
    return obj


async def owner_tracked(server: Connection, unique_name: str) -> None:
    with trio.fail_after(5):
        while server.current_owner(PREFERRED) != unique_name:
            await trio.sleep(0.01)


@pytest.fixture
async def peer(bus_address: str, server: Connection,
               guarded: Guarded) -> AsyncIterator[Connection]:
    async with open_connection(bus_address, call_timeout=5.0) as conn:
        await conn.request_name(PREFERRED)
        await owner_tracked(server, conn.unique_name)
        yield conn


async def call(conn: Connection, server: Connection, member: str, signature: str = "",
               body: tuple[Any, ...] = (), interface: str = IFACE) -> tuple[Any, ...]:
    return await conn.call(server.unique_name, PATH, interface, member, signature, body)


async def test_foreign_calls_that_can_only_fail_are_refused_from_their_header(
        server: Connection, peer: Connection, client: Connection, guarded: Guarded) -> None:
    before = server.stats.foreign_refused
    for _ in range(5):
        with pytest.raises(DBusError) as denied:
            await call(client, server, "Read", "a{sv}", ({"offset": ("q", 3)},))
        assert denied.value.name == ACCESS_DENIED
    with pytest.raises(DBusError) as unknown:
        await call(client, server, "Nope", "s", ("x" * 1000,))
    assert unknown.value.name == UNKNOWN_METHOD
    assert server.stats.foreign_refused - before == 6
    assert guarded.reads == 0
    assert await call(peer, server, "Read", "a{sv}", ({},)) == (b"value",)
    assert server.stats.foreign_refused - before == 6  # the preferred peer is never screened


async def test_strangers_can_still_introspect_ping_and_read_unrestricted_properties(
        server: Connection, peer: Connection, client: Connection) -> None:
    dest = server.unique_name
    xml = (await client.call(dest, PATH, "org.freedesktop.DBus.Introspectable",
                             "Introspect"))[0]
    assert IFACE in xml
    assert await client.call(dest, PATH, "org.freedesktop.DBus.Peer", "Ping") == ()
    props = "org.freedesktop.DBus.Properties"
    assert await client.call(dest, PATH, props, "Get", "ss", (IFACE, "Public")) == (
        ("s", "open"),)
    assert await client.call(dest, PATH, props, "GetAll", "s", (IFACE,)) == (
        {"Public": ("s", "open")},)
    with pytest.raises(DBusError) as denied:
        await client.call(dest, PATH, props, "Get", "ss", (IFACE, "Secret"))
    assert denied.value.name == ACCESS_DENIED
    assert await call(client, server, "Hello") == ("hello",)
    assert await peer.call(dest, PATH, props, "Get", "ss", (IFACE, "Secret")) == (
        ("s", "hidden"),)


async def pipeline(conn: Connection, server: Connection, count: int, member: str,
                   signature: str = "", body: tuple[Any, ...] = ()) -> list[str]:
    """``count`` concurrent calls; each one's outcome ("ok" or the error name)."""
    outcomes: list[str] = []

    async def one() -> None:
        try:
            await call(conn, server, member, signature, body)
            outcomes.append("ok")
        except DBusError as exc:
            outcomes.append(exc.name)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return outcomes


async def test_a_flooding_sender_is_throttled_counted_and_logged_once(
        server: Connection, peer: Connection, client: Connection,
        caplog: pytest.LogCaptureFixture) -> None:
    server.admission.policy = AdmissionPolicy(rate=1.0, burst=20.0)
    caplog.set_level(logging.WARNING, logger="mushpi_ble.dbus")
    outcomes = await pipeline(client, server, 300, "Hello")
    assert len(outcomes) == 300  # every call answered
    assert outcomes.count(LIMITS_EXCEEDED) >= 250
    assert outcomes.count("ok") >= 20
    assert server.stats.foreign_throttled == outcomes.count(LIMITS_EXCEEDED)
    throttle_lines = [r for r in caplog.records if "throttling" in r.getMessage()]
    assert len(throttle_lines) == 1
    # the preferred peer is unaffected meanwhile
    assert await call(peer, server, "Read", "a{sv}", ({},)) == (b"value",)


async def test_throttling_is_never_applied_to_the_preferred_peer(
        server: Connection, peer: Connection) -> None:
    server.admission.policy = AdmissionPolicy(rate=1.0, burst=5.0)
    outcomes = await pipeline(peer, server, 300, "Read", "a{sv}", ({},))
    assert outcomes == ["ok"] * 300
    assert server.stats.foreign_throttled == 0


async def test_huge_foreign_messages_are_skipped_unread_and_the_stream_stays_in_sync(
        server: Connection, peer: Connection, client: Connection) -> None:
    huge = b"\xa5" * (1 << 20)
    for _ in range(3):
        with pytest.raises(DBusError) as refused:
            await call(client, server, "Store", "ay", (huge,))
        assert refused.value.name == LIMITS_EXCEEDED
        assert await call(client, server, "Hello") == ("hello",)
    assert server.stats.foreign_skipped == 3
    assert server.stats.foreign_skipped_bytes >= 3 * len(huge)
    # the preferred peer's long messages are read as usual
    assert await call(peer, server, "Store", "ay", (huge,)) == (len(huge),)
    assert server.stats.foreign_skipped == 3


async def test_signals_nobody_subscribed_to_are_dropped_from_the_header(
        bus_address: str, server: Connection, peer: Connection) -> None:
    def send_junk() -> None:
        with open_dbus_connection(bus=bus_address) as stranger:
            for seq in range(50):
                for member in ("Junk", "Wanted"):
                    msg = new_signal(DBusAddress("/junk", interface=SIGNALS), member, "uay",
                                     (seq, b"z" * (100_000 if seq % 10 == 0 else 100)))
                    msg.header.fields[HeaderFields.destination] = server.unique_name
                    stranger.send(msg)
            stranger.send_and_get_reply(new_method_call(
                DBusAddress("/", bus_name=server.unique_name,
                            interface="org.freedesktop.DBus.Peer"), "Ping"), timeout=5)

    unwanted = server.stats.signals_unwanted
    async with server.subscribe(MatchRule(interface=SIGNALS, member="Wanted")) as wanted:
        await trio.to_thread.run_sync(send_junk)
        got: list[SignalMessage] = []
        while len(got) < 45:  # the ten long ones are a stranger's, over the size limit
            with trio.fail_after(5):
                got.append(await wanted.receive())
    assert [s.body[0] for s in got] == [seq for seq in range(50) if seq % 10]
    assert server.stats.signals_unwanted - unwanted == 50
    assert server.stats.foreign_skipped == 5  # the long wanted ones (one per ten)


async def test_a_reply_to_the_preferred_peer_overtakes_the_signals_queued_before_it(
        bus_address: str, server: Connection, guarded: Guarded) -> None:
    """The handler queues BURST signals, then answers: the peer sees the answer first."""

    def burst_as_peer(token: trio.lowlevel.TrioToken) -> int:
        with open_dbus_connection(bus=bus_address) as conn:
            conn.send_and_get_reply(message_bus.RequestName(PREFERRED), timeout=5)
            conn.send_and_get_reply(message_bus.AddMatch(
                JeepneyMatchRule(type="signal", interface=SIGNALS)), timeout=5)
            trio.from_thread.run(owner_tracked, server, conn.unique_name, trio_token=token)
            serial = next(conn.outgoing_serial)
            conn.send(new_method_call(DBusAddress(PATH, bus_name=server.unique_name,
                                                  interface=IFACE), "Burst"), serial=serial)
            signals_first = 0
            while True:
                msg = conn.receive(timeout=5)
                if msg.header.message_type is MessageType.signal:
                    if msg.header.fields.get(HeaderFields.interface) == SIGNALS:
                        signals_first += 1
                elif msg.header.fields.get(HeaderFields.reply_serial) == serial:
                    assert msg.body == ("done",)
                    return signals_first

    token = trio.lowlevel.current_trio_token()
    signals_first = await trio.to_thread.run_sync(burst_as_peer, token)
    assert signals_first < BURST // 10  # at most what was already on its way, not the queue


# ----------------------------------------------------------------------
# the parser: skipping a refused long message keeps the framing
# ----------------------------------------------------------------------
def test_the_parser_skips_refused_long_messages_for_any_chunking() -> None:
    def call_bytes(serial: int, payload: bytes) -> bytes:
        msg = new_method_call(DBusAddress("/p", bus_name=":1.1", interface="a.B"), "M", "ay",
                              (payload,))
        msg.header.fields[HeaderFields.sender] = ":1.9"
        return bytes(msg.serialise(serial))

    stream_parts = [call_bytes(1, b"a"), call_bytes(2, b"b" * (EARLY_SCREEN * 3)),
                    call_bytes(3, b"c" * 10), call_bytes(4, b"d" * (EARLY_SCREEN + 1)),
                    call_bytes(5, b"e" * 5000)]
    stream = b"".join(stream_parts)
    rng = random.Random(7)
    for _ in range(30):
        screened: list[int] = []

        def screen(header: Any, size: int, screened: list[int] = screened) -> bool:
            screened.append(header.serial)
            return size <= EARLY_SCREEN

        parser = WireParser(MessageDecoder(Compiler()).decode, screen)
        got: list[Message] = []
        pos = 0
        while pos < len(stream):
            step = rng.choice((1, 7, 16, 100, 4096, 65536, 300_000))
            parser.add_data(stream[pos : pos + step])
            pos += step
            while (msg := parser.get_next_message()) is not None:
                got.append(msg)
        assert [m.header.serial for m in got] == [1, 3, 5]
        assert [m.body[0][:1] for m in got] == [b"a", b"c", b"e"]
        assert screened == [1, 2, 3, 4, 5]  # each message screened exactly once
