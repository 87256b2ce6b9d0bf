"""Long writes in the generic GATT layer: pieces joined per characteristic and phone until
the write handler has the whole value, against the fake bluetoothd sending each piece
(as a phone writing at offsets makes bluetoothd do)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from mushpi_ble.dbus import Connection, open_connection
from mushpi_ble.gatt import (
    Characteristic,
    GattApplication,
    GattError,
    IncompleteValue,
    Service,
    WriteRequest,
)
from mushpi_ble.gatt.long_write import LongWrites
from mushpi_ble.testing.fakebluez import AttError, FakeBluez

SVC = "0000bbbb-0000-1000-8000-00805f9b34fb"
C1 = "0000bbb1-0000-1000-8000-00805f9b34fb"
INVALID_OFFSET = 0x07
WHOLE = 50


class Collector:
    """Wants WHOLE bytes: asks for more until it has them."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.writes: list[bytes] = []

    async def write(self, request: WriteRequest) -> None:
        self.seen.append(len(request.value))
        if len(request.value) < WHOLE:
            raise IncompleteValue
        self.writes.append(request.value)

    def characteristic(self) -> Characteristic:
        return Characteristic(C1, ("write",), write=self.write, max_write_length=64)


@pytest.fixture
async def app_conn(bus_address: str) -> AsyncIterator[Connection]:
    async with open_connection(bus_address) as conn:
        yield conn


async def test_pieces_join_until_the_handler_has_the_whole_value(
        bus_address: str, app_conn: Connection, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mushpi_ble.gatt")
    collector = Collector()
    async with FakeBluez.serve(bus_address, merge_prepared_writes=False) as bluez, \
            trio.open_nursery() as nursery:
        app = GattApplication(app_conn, "/test/long", [Service(SVC, (collector.characteristic(),))],
                              nursery=nursery, handler_timeout=1.0)
        await app_conn.watch_name_owner("org.bluez")
        await app.register("/org/bluez/hci0", timeout=2.0)
        phone = await bluez.connect_central(mtu=23)  # pieces of 18 bytes
        value = bytes(range(WHOLE))
        await phone.write(C1, value)
        assert collector.seen == [18, 36, 50] and collector.writes == [value]

        with pytest.raises(AttError) as info:
            await phone.write(C1, b"xy", offset=5)  # continues nothing
        assert info.value.code == INVALID_OFFSET

        await phone.write(C1, value[:20])  # 18 + 2 bytes, held
        await phone.write(C1, value)  # offset 0 starts afresh
        assert collector.writes == [value, value]
        assert "unfinished long write discarded" in caplog.text and "bytes=20" in caplog.text
        await app.unregister(timeout=2.0)
        nursery.cancel_scope.cancel()


def _piece(value: bytes, offset: int, device: str = "/dev_1") -> WriteRequest:
    return WriteRequest(value=value, offset=offset, device=device, mtu=23, link="LE",
                        prepare_authorize=False)


async def test_an_unfinished_write_expires_and_phones_are_kept_apart(
        mock_clock: trio.testing.MockClock) -> None:
    spec = Collector().characteristic()
    writes = LongWrites(timeout=30.0)
    writes.hold(spec, "/dev_1", writes.assemble(spec, _piece(b"abc", 0)))
    writes.hold(spec, "/dev_2", writes.assemble(spec, _piece(b"xy", 0, "/dev_2")))
    assert writes.assemble(spec, _piece(b"d", 3)) == b"abcd"
    assert writes.assemble(spec, _piece(b"z", 2, "/dev_2")) == b"xyz"
    mock_clock.jump(31.0)
    with pytest.raises(GattError, match="offset 3 beyond the value's 0 bytes"):
        writes.assemble(spec, _piece(b"d", 3))
    writes.hold(spec, "/dev_1", b"abc")
    writes.done(spec, "/dev_1")
    with pytest.raises(GattError):
        writes.assemble(spec, _piece(b"d", 3))
