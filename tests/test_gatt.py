"""The generic GATT layer: descriptions, bluetoothd's options, offsets, long writes,
error mapping — a small service of its own served to the fake bluetoothd."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from rig import eventually

from mushpi_ble.dbus import Connection, open_connection
from mushpi_ble.gatt import (
    Characteristic,
    GattApplication,
    GattDefinitionError,
    GattError,
    IncompleteValue,
    ReadRequest,
    Service,
    WriteRequest,
    failed,
    validate_services,
)
from mushpi_ble.testing.fakebluez import AttError, FakeBluez

SVC = "0000aaaa-0000-1000-8000-00805f9b34fb"
C1 = "0000aaa1-0000-1000-8000-00805f9b34fb"
C2 = "0000aaa2-0000-1000-8000-00805f9b34fb"


async def _read(_r: ReadRequest) -> bytes:
    return b"x"


async def _write(_r: WriteRequest) -> None:
    return None


@pytest.mark.parametrize(
    ("chars", "message"),
    [
        ((Characteristic(C1, ("read", "sparkle"), read=_read),), "unknown flags"),
        ((Characteristic(C1, ("write-without-response",), write=_write),),
         "drops our errors"),
        ((Characteristic(C1, ("read",), read=_read), Characteristic(C1, ("read",), read=_read)),
         "appears twice"),
        ((Characteristic(C1, ("read",)),), "no read handler"),
        ((Characteristic(C1, ("write",)),), "no write handler"),
    ],
)
def test_definitions_bluetoothd_would_refuse_or_break(chars: tuple[Characteristic, ...],
                                                      message: str) -> None:
    with pytest.raises(GattDefinitionError, match=message):
        validate_services([Service(SVC, chars)])


def test_unacknowledged_writes_are_allowed_when_they_cannot_fail() -> None:
    validate_services([Service(SVC, (Characteristic(C1, ("write-without-response",),
                                                    write=_write, rejects_writes=False),))])


def test_bad_uuid_is_refused() -> None:
    with pytest.raises(GattDefinitionError, match="not a UUID"):
        Characteristic("not-a-uuid", ("read",), read=_read)


def test_options_are_parsed_into_typed_requests() -> None:
    read = ReadRequest.from_options({"device": ("o", "/org/bluez/hci0/dev_1"),
                                     "mtu": ("q", 185), "offset": ("q", 22),
                                     "link": ("s", "LE"), "future-key": ("s", "ignored")})
    assert read == ReadRequest("/org/bluez/hci0/dev_1", 185, 22, "LE")
    assert ReadRequest.from_options({}) == ReadRequest("", 23, 0, "")
    write = WriteRequest.from_options(b"ab", {"prepare-authorize": ("b", True)})
    assert write.prepare_authorize and write.piece == b"ab"
    with pytest.raises(GattError, match="must have type 'q'"):
        ReadRequest.from_options({"offset": ("s", "3")})


def test_failed_carries_only_the_code() -> None:
    assert failed(0x83).text == "0x83"
    with pytest.raises(ValueError):
        failed(0x7F)


class Recorder:
    """A service whose handlers record what they were given."""

    def __init__(self) -> None:
        self.value = bytes(range(200))
        self.writes: list[bytes] = []
        self.requests: list[ReadRequest] = []

    async def read(self, request: ReadRequest) -> bytes:
        self.requests.append(request)
        return self.value

    async def write(self, request: WriteRequest) -> None:
        if request.value.endswith(b"..."):
            raise IncompleteValue
        if request.value == b"bad":
            raise failed(0x91)
        if request.value == b"boom":
            raise RuntimeError("handler bug")
        self.writes.append(request.value)

    def service(self) -> Service:
        return Service(SVC, (
            Characteristic(C1, ("read", "write"), read=self.read, write=self.write,
                           max_write_length=100),
            Characteristic(C2, ("read", "notify"), read=self.read),
        ))


@pytest.fixture
async def app_conn(bus_address: str) -> AsyncIterator[Connection]:
    async with open_connection(bus_address) as conn:
        yield conn


async def serve_recorder(conn: Connection, bluez: FakeBluez,
                         nursery: trio.Nursery) -> tuple[Recorder, GattApplication]:
    recorder = Recorder()
    app = GattApplication(conn, "/test/app", [recorder.service()], nursery=nursery,
                          handler_timeout=1.0)
    await conn.watch_name_owner("org.bluez")
    await app.register("/org/bluez/hci0", timeout=2.0)
    return recorder, app


async def test_offset_reads_and_options(app_conn: Connection, bluez: FakeBluez) -> None:
    async with trio.open_nursery() as nursery:
        recorder, app = await serve_recorder(app_conn, bluez, nursery)
        central = await bluez.connect_central(mtu=50)
        assert await central.read_long(C1) == recorder.value
        offsets = [r.offset for r in recorder.requests]
        assert offsets == [0, 49, 98, 147, 196]
        assert {r.mtu for r in recorder.requests} == {50}
        assert recorder.requests[0].device == central.device_path
        with pytest.raises(AttError) as info:
            await central.read(C1, offset=201)
        assert info.value.code == 0x07
        assert await central.read(C1, offset=200) == b""
        await app.unregister(timeout=2.0)
        nursery.cancel_scope.cancel()


async def test_long_writes_reassemble_and_errors_map(app_conn: Connection,
                                                     bluez: FakeBluez) -> None:
    async with trio.open_nursery() as nursery:
        recorder, app = await serve_recorder(app_conn, bluez, nursery)
        central = await bluez.connect_central(mtu=23)
        payload = bytes(range(65, 65 + 60))
        await central.write(C1, payload)  # 18-byte prepared pieces, reassembled
        assert recorder.writes == [payload]
        with pytest.raises(AttError) as info:
            await central.write(C1, b"bad")
        assert info.value.code == 0x91
        with pytest.raises(AttError) as info:
            await central.write(C1, b"boom")
        assert info.value.code == 0x0E  # org.freedesktop.DBus.Error.Failed: unlikely
        with pytest.raises(AttError) as info:
            await central.write(C1, b"z" * 101)
        assert info.value.code == 0x0D
        await central.write(C1, b"first...")  # held: the handler wants more
        assert recorder.writes == [payload]
        with pytest.raises(AttError) as info:
            await central.write(C2, b"nope")
        assert info.value.code == 0x03
        await app.unregister(timeout=2.0)
        nursery.cancel_scope.cancel()


async def test_start_stop_notify_maintain_notifying(app_conn: Connection,
                                                   bluez: FakeBluez) -> None:
    async with trio.open_nursery() as nursery:
        _recorder, app = await serve_recorder(app_conn, bluez, nursery)
        state = app.state(C2)
        one = await bluez.connect_central(address="11:22:33:44:55:01")
        two = await bluez.connect_central(address="11:22:33:44:55:02")
        await one.subscribe(C2)
        await two.subscribe(C2)  # StartNotify goes out without waiting for a reply
        await eventually(lambda: state.start_notify_calls == 2)
        assert state.notifying
        assert await app.notify(state, b"hello") is True
        assert (await one.next_notification(C2)).value == b"hello"
        assert (await two.next_notification(C2)).value == b"hello"
        await one.unsubscribe(C2)
        await trio.sleep(0.05)
        assert state.notifying  # StopNotify only when the last subscriber goes
        await two.disconnect()  # a disconnect counts as a disable
        await eventually(lambda: not state.notifying)
        assert await app.notify(state, b"quiet") is False
        assert state.value == b"quiet"  # stored for reads all the same
        await app.unregister(timeout=2.0)
        nursery.cancel_scope.cancel()
