"""The D-Bus object server against a real dbus-daemon and real clients."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

import mushpi_ble.dbus
from mushpi_ble.dbus import (
    CallContext,
    CallTimeout,
    Connection,
    DBusError,
    Interface,
    Method,
    Property,
    Signal,
    open_connection,
)
from mushpi_ble.dbus.errors import (
    FAILED,
    INVALID_ARGS,
    UNKNOWN_INTERFACE,
    UNKNOWN_METHOD,
    UNKNOWN_OBJECT,
)

IFACE = "com.example.Test1"


class Counter:
    """A small exported object with sync, async, failing and slow methods."""

    def __init__(self) -> None:
        self.value = 7
        self.label = "seven"
        self.calls = 0
        self.no_reply_seen = trio.Event()

    def interface(self) -> Interface:
        return Interface(
            IFACE,
            methods=[
                Method("Echo", "s", "s", handler=self.echo, arg_names=["text"]),
                Method("Add", "ii", "i", handler=lambda _c, a, b: a + b),
                Method("Pair", "", "si", handler=lambda _c: ("x", 2)),
                Method("Slow", "d", "s", handler=self.slow),
                Method("Boom", "", "", handler=self.boom),
                Method("Refuse", "", "", handler=self.refuse),
                Method("Note", "s", "", handler=self.note),
                Method("ReadLike", "a{sv}", "ay", handler=lambda _c, _o: b"0123456789ab"),
            ],
            properties=[
                Property("Value", "i", get=lambda: self.value, set=self.set_value),
                Property("Label", "s", get=lambda: self.label),
            ],
            signals=[Signal("Ticked", "u", ["seq"])],
        )

    def echo(self, _ctx: CallContext, text: str) -> str:
        self.calls += 1
        return text

    async def slow(self, _ctx: CallContext, seconds: float) -> str:
        await trio.sleep(seconds)
        return f"slept {seconds}"

    def boom(self, _ctx: CallContext) -> None:
        raise RuntimeError("kaboom")

    def refuse(self, _ctx: CallContext) -> None:
        raise DBusError("org.bluez.Error.NotPermitted", "not today")

    def note(self, _ctx: CallContext, text: str) -> None:
        self.calls += 1
        self.no_reply_seen.set()

    def set_value(self, value: int) -> None:
        self.value = value


@pytest.fixture
def counter(server: Connection) -> Counter:
    obj = Counter()
    server.add_object_manager("/com/example")
    server.export("/com/example/counter", [obj.interface()])
    return obj


async def test_method_call_round_trip(server: Connection, client: Connection,
                                      counter: Counter) -> None:
    name = server.unique_name
    assert await client.call(name, "/com/example/counter", IFACE, "Echo", "s", ("hi",)) == ("hi",)
    assert await client.call(name, "/com/example/counter", IFACE, "Add", "ii", (2, 40)) == (42,)
    assert await client.call(name, "/com/example/counter", IFACE, "Pair") == ("x", 2)
    # no interface in the header: found by member name
    assert await client.call(name, "/com/example/counter", None, "Echo", "s", ("z",)) == (  # type: ignore[arg-type]
        "z",
    )


@pytest.mark.parametrize(
    ("path", "interface", "member", "signature", "body", "error"),
    [
        ("/nowhere", IFACE, "Echo", "s", ("x",), UNKNOWN_OBJECT),
        ("/com/example/counter", "com.example.Nope", "Echo", "s", ("x",), UNKNOWN_INTERFACE),
        ("/com/example/counter", IFACE, "Nope", "", (), UNKNOWN_METHOD),
        ("/com/example/counter", IFACE, "Echo", "i", (3,), INVALID_ARGS),
        ("/com/example/counter", IFACE, "Echo", "", (), INVALID_ARGS),
        ("/com/example", IFACE, "Echo", "s", ("x",), UNKNOWN_INTERFACE),
    ],
)
async def test_standard_errors(server: Connection, client: Connection, counter: Counter,
                               path: str, interface: str, member: str, signature: str,
                               body: tuple[Any, ...], error: str) -> None:
    with pytest.raises(DBusError) as info:
        await client.call(server.unique_name, path, interface, member, signature, body)
    assert info.value.name == error
    assert counter.calls == 0


async def test_handler_errors_answered_and_loop_lives(
    server: Connection, client: Connection, counter: Counter, caplog: pytest.LogCaptureFixture
) -> None:
    name = server.unique_name
    with pytest.raises(DBusError) as info:
        await client.call(name, "/com/example/counter", IFACE, "Boom")
    assert info.value.name == FAILED
    assert "kaboom" in info.value.text
    assert "kaboom" in caplog.text  # logged with its traceback
    with pytest.raises(DBusError) as info:
        await client.call(name, "/com/example/counter", IFACE, "Refuse")
    assert (info.value.name, info.value.text) == ("org.bluez.Error.NotPermitted", "not today")
    assert await client.call(name, "/com/example/counter", IFACE, "Echo", "s", ("ok",)) == ("ok",)


async def test_async_handler_deadline_answers_configured_error(
    bus_address: str, client: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    obj = Counter()
    async with open_connection(bus_address, handler_timeout=0.2,
                               timeout_error=("com.example.Error.Late", "too slow")) as srv:
        srv.export("/slow", [obj.interface()])
        with pytest.raises(DBusError) as info:
            await client.call(srv.unique_name, "/slow", IFACE, "Slow", "d", (5.0,))
        assert (info.value.name, info.value.text) == ("com.example.Error.Late", "too slow")
        assert srv.stats.handler_timeouts == 1
        assert "handler deadline expired" in caplog.text
        # a fast async call still works, and replies may overtake each other
        results: list[str] = []

        async def call(seconds: float) -> None:
            reply = await client.call(srv.unique_name, "/slow", IFACE, "Slow", "d", (seconds,))
            results.append(reply[0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, 0.15)
            await trio.sleep(0.01)
            nursery.start_soon(call, 0.0)
        assert results == ["slept 0.0", "slept 0.15"]


async def test_async_handler_deadline_answers_dbus_failed_by_default(
    bus_address: str, client: Connection
) -> None:
    async with open_connection(bus_address, handler_timeout=0.1) as srv:
        srv.export("/slow", [Counter().interface()])
        with pytest.raises(DBusError) as info:
            await client.call(srv.unique_name, "/slow", IFACE, "Slow", "d", (5.0,))
        assert (info.value.name, info.value.text) == (FAILED, "timeout")


async def test_pause_and_resume_receiving(server: Connection, client: Connection) -> None:
    """A paused connection reads nothing: calls wait, then are answered on resume."""
    seen: list[str] = []

    def echo(_ctx: CallContext, text: str) -> str:
        seen.append(text)
        return text

    server.export("/stall", [Interface(IFACE, methods=[Method("Echo", "s", "s", handler=echo)])])
    server.pause_receiving()
    with pytest.raises(CallTimeout):
        await client.call(server.unique_name, "/stall", IFACE, "Echo", "s", ("first",),
                          timeout=0.2)
    assert seen == []
    server.resume_receiving()
    reply = await client.call(server.unique_name, "/stall", IFACE, "Echo", "s", ("second",))
    assert reply == ("second",)
    assert seen == ["first", "second"]  # nothing was lost while paused
    with trio.fail_after(2):
        while client.stats.late_replies == 0:
            await trio.sleep(0.01)


def test_dbus_layer_names_no_bluez() -> None:
    """The layer is generic: BlueZ's names live in the layers above."""
    package = Path(mushpi_ble.dbus.__file__).parent
    for source in sorted(package.glob("*.py")):
        assert not re.search("bluez", source.read_text(), re.IGNORECASE), source


async def test_five_hundred_pipelined_calls_all_answered(
    server: Connection, client: Connection, counter: Counter
) -> None:
    answers: dict[int, str] = {}

    async def one(i: int) -> None:
        reply = await client.call(server.unique_name, "/com/example/counter", IFACE, "Echo",
                                  "s", (f"n{i}",), timeout=10)
        answers[i] = reply[0]

    async with trio.open_nursery() as nursery:
        for i in range(500):
            nursery.start_soon(one, i)
    assert answers == {i: f"n{i}" for i in range(500)}
    assert counter.calls == 500
    assert server.stats.calls_answered >= 500


async def test_no_reply_expected_gets_no_reply(
    server: Connection, client: Connection, counter: Counter
) -> None:
    await client.call(server.unique_name, "/com/example/counter", IFACE, "Note", "s", ("x",),
                      no_reply=True)
    await client.call(server.unique_name, "/com/example/counter", IFACE, "Nope", no_reply=True)
    with trio.fail_after(2):
        await counter.no_reply_seen.wait()
    # a round trip afterwards proves anything sent back would have arrived by now
    await client.call(server.unique_name, "/com/example/counter", IFACE, "Echo", "s", ("x",))
    assert client.stats.late_replies == 0
    assert server.stats.errors_sent == 0


async def test_peer_ping_and_machine_id(server: Connection, client: Connection,
                                        counter: Counter) -> None:
    peer = "org.freedesktop.DBus.Peer"
    assert await client.call(server.unique_name, "/com/example/counter", peer, "Ping") == ()
    (machine_id,) = await client.call(server.unique_name, "/", peer, "GetMachineId")
    assert len(machine_id) >= 32


def _dbus_send(*args: str) -> str:
    out = subprocess.run(["dbus-send", *args], capture_output=True, text=True, timeout=10,
                         check=False)
    return out.stdout + out.stderr


async def test_dbus_send_calls_method_and_reads_property(
    bus_address: str, server: Connection, counter: Counter
) -> None:
    dest = server.unique_name
    out = await trio.to_thread.run_sync(
        lambda: _dbus_send(f"--bus={bus_address}", "--print-reply", f"--dest={dest}",
                           "/com/example/counter", f"{IFACE}.Echo", "string:mushroom")
    )
    assert 'string "mushroom"' in out
    out = await trio.to_thread.run_sync(
        lambda: _dbus_send(f"--bus={bus_address}", "--print-reply", f"--dest={dest}",
                           "/com/example/counter", "org.freedesktop.DBus.Properties.Get",
                           f"string:{IFACE}", "string:Label")
    )
    assert 'string "seven"' in out
    out = await trio.to_thread.run_sync(
        lambda: _dbus_send(f"--bus={bus_address}", "--print-reply", f"--dest={dest}",
                           "/com/example/counter", f"{IFACE}.Missing")
    )
    assert "org.freedesktop.DBus.Error.UnknownMethod" in out


@pytest.mark.parametrize("tool", ["gdbus", "busctl"])
async def test_introspection_parsed_by_standard_tools(
    bus_address: str, server: Connection, counter: Counter, tool: str
) -> None:
    dest = server.unique_name
    if tool == "gdbus":
        cmd = ["gdbus", "introspect", "--address", bus_address, "--dest", dest,
               "--object-path", "/com/example/counter"]
    else:
        cmd = ["busctl", f"--address={bus_address}", "introspect", dest, "/com/example/counter"]
    env = {**os.environ, "SYSTEMD_PAGER": "", "PAGER": "cat"}
    out = await trio.to_thread.run_sync(
        lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=10, env=env,
                               check=False)
    )
    assert out.returncode == 0, out.stderr
    for word in (IFACE, "Echo", "Value", "Label", "Ticked", "org.freedesktop.DBus.Properties"):
        assert word in out.stdout
    if tool == "gdbus":
        tree = await trio.to_thread.run_sync(
            lambda: subprocess.run(["gdbus", "introspect", "--address", bus_address, "--dest",
                                    dest, "--object-path", "/", "--recurse"],
                                   capture_output=True, text=True, timeout=10, check=False)
        )
        assert tree.returncode == 0, tree.stderr
        assert "/com/example/counter" in tree.stdout


async def test_a_handler_that_outlives_its_connection_fails_nothing(bus_address: str) -> None:
    """The bus dropped us while a handler ran: its answer has nobody to go to. It is
    counted, and neither the handler's task nor the connection's nursery fails."""
    release = trio.Event()
    started = trio.Event()

    async def wait_then_fail(_ctx: CallContext) -> None:
        started.set()
        await release.wait()
        raise DBusError("com.example.Error.Late", "too late")

    async with open_connection(bus_address, call_timeout=2.0) as server, \
            open_connection(bus_address, call_timeout=2.0) as client:
        server.export("/late", [Interface(IFACE, methods=[
            Method("Wait", "", "", handler=wait_then_fail)])])
        async with trio.open_nursery() as nursery:
            async def call() -> None:
                with contextlib.suppress(DBusError):
                    await client.call(server.unique_name, "/late", IFACE, "Wait", timeout=1.0)

            nursery.start_soon(call)
            await started.wait()
            server.writer._closed = True  # what the transport does when the bus hangs up
            release.set()
            while server.stats.answers_lost == 0:
                await trio.sleep(0.01)
        server.writer._closed = False  # let the context close the socket as usual
    assert server.stats.answers_lost == 1
