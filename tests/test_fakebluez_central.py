"""Simulated centrals against hand-made applications: ATT as bluetoothd does it."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from hand_apps import CHRC, HandApp, HandChar, heart_rate_app

from mushpi_ble.dbus import CallContext, Connection, Interface, Method, Property, open_connection
from mushpi_ble.testing.fakebluez import ATT_ERRORS, AttError, FakeBluez, att_code_for_dbus_error

HR = "2a37"
RW = "2a39"
PLAIN = "2a38"


@pytest.fixture
async def bluez(bus_address: str) -> AsyncIterator[FakeBluez]:
    """bluetoothd that gives up on an application after 2 s (tests of its timeout)."""
    async with FakeBluez.serve(bus_address, call_timeout=2.0) as fake:
        yield fake


@pytest.fixture
async def app(bluez: FakeBluez, app_conn: Connection) -> AsyncIterator[HandApp]:
    hand = heart_rate_app(app_conn)
    await hand.register()
    yield hand
    hand.close()


def make_app(conn: Connection, flags: list[str], value: bytes = b"", **kwargs: Any) -> HandChar:
    hand = HandApp(conn, "/custom")
    service = hand.service()
    return hand.characteristic(service, "c0", "fff1", flags, value, **kwargs)


async def register(chrc: HandChar) -> None:
    await chrc.conn.call("org.bluez", "/org/bluez/hci0", "org.bluez.GattManager1",
                         "RegisterApplication", "oa{sv}", ("/custom", {}))


# -- reads ------------------------------------------------------------------------
async def test_read_options_exactly_as_bluetoothd(bluez: FakeBluez, app: HandApp) -> None:
    phone = await bluez.connect_central(mtu=185)
    info = phone.characteristic(HR)
    assert (info.handle, info.flags, info.path) == (0x12, ("read", "notify"), "/app/s0/c0")
    assert await phone.read(HR) == b"\x00\x48"
    assert await phone.read(HR, offset=1) == b"\x48"
    first, second = app.chars[HR].reads
    device = ("o", "/org/bluez/hci0/dev_11_22_33_44_55_66")
    assert list(first.items()) == [("device", device), ("link", ("s", "LE")), ("mtu", ("q", 185))]
    assert list(second.items()) == [("device", device), ("offset", ("q", 1)),
                                    ("link", ("s", "LE")), ("mtu", ("q", 185))]


async def test_read_cut_to_mtu_and_long_read(bluez: FakeBluez, app_conn: Connection) -> None:
    value = bytes(range(100))
    chrc = make_app(app_conn, ["read"], value)
    await register(chrc)
    phone = await bluez.connect_central(mtu=23)
    assert await phone.read("fff1") == value[:22]
    assert await phone.read_long("fff1") == value
    offsets = [r["offset"][1] if "offset" in r else 0 for r in chrc.reads[1:]]
    assert offsets == [0, 22, 44, 66, 88]


async def test_long_read_of_an_exact_multiple(bluez: FakeBluez, app_conn: Connection) -> None:
    chrc = make_app(app_conn, ["read"], bytes(44))
    await register(chrc)
    phone = await bluez.connect_central(mtu=23)
    assert await phone.read_long("fff1") == bytes(44)
    assert [r.get("offset", ("q", 0))[1] for r in chrc.reads] == [0, 22, 44]


async def test_read_cut_to_512(bluez: FakeBluez, app_conn: Connection) -> None:
    chrc = make_app(app_conn, ["read"], bytes(600))
    await register(chrc)
    phone = await bluez.connect_central(mtu=517)
    assert len(await phone.read("fff1")) == 512


async def test_permissions_checked_before_the_app(bluez: FakeBluez, app: HandApp) -> None:
    phone = await bluez.connect_central()
    with pytest.raises(AttError) as info:
        await phone.write(PLAIN, b"x")
    assert (info.value.code, info.value.name, info.value.dbus_error) == (
        0x03, "Write Not Permitted", "")
    assert app.chars[PLAIN].writes == []


async def test_read_without_read_flag(bluez: FakeBluez, app_conn: Connection) -> None:
    chrc = make_app(app_conn, ["write"])
    await register(chrc)
    phone = await bluez.connect_central()
    with pytest.raises(AttError) as info:
        await phone.read("fff1")
    assert info.value.code == 0x02
    assert chrc.calls == []


async def test_no_permission_bits_reach_the_app(bluez: FakeBluez, app_conn: Connection) -> None:
    """gatt-server only refuses when some permission is set: notify-only reads go through."""
    chrc = make_app(app_conn, ["notify"], b"raw")
    await register(chrc)
    phone = await bluez.connect_central()
    assert await phone.read("fff1") == b"raw"
    assert chrc.calls == ["ReadValue"]


@pytest.mark.parametrize(("flag", "security", "code"), [
    ("encrypt-read", "low", 0x0F),
    ("encrypt-read", "medium", None),
    ("encrypt-authenticated-read", "medium", 0x05),
    ("encrypt-authenticated-read", "high", None),
    ("secure-read", "high", 0x05),
    ("secure-read", "fips", None),
])
async def test_security_levels(bluez: FakeBluez, app_conn: Connection, flag: str,
                               security: str, code: int | None) -> None:
    chrc = make_app(app_conn, [flag], b"s")
    await register(chrc)
    phone = await bluez.connect_central(security=security)
    if code is None:
        assert await phone.read("fff1") == b"s"
    else:
        with pytest.raises(AttError) as info:
            await phone.read("fff1")
        assert info.value.code == code


async def test_malformed_read_reply_is_request_not_supported(
    bluez: FakeBluez, app_conn: Connection
) -> None:
    hand = HandApp(app_conn, "/custom")
    service = hand.service()
    app_conn.export(f"{service}/c0", [Interface(CHRC, methods=[
        Method("ReadValue", "a{sv}", "s", handler=lambda _c, _o: "text"),
    ], properties=[
        Property("UUID", "s", get=lambda: "fff1"), Property("Service", "o", get=lambda: service),
        Property("Flags", "as", get=lambda: ["read"]),
    ])])
    await hand.register()
    phone = await bluez.connect_central()
    with pytest.raises(AttError) as info:
        await phone.read("fff1")
    assert info.value.code == 0x06


async def test_slow_handler_becomes_unlikely_error(bus_address: str,
                                                  app_conn: Connection) -> None:
    async def slow(_ctx: CallContext, _options: dict[str, Any]) -> bytes:
        await trio.sleep(2)
        return b"late"

    async with FakeBluez.serve(bus_address, call_timeout=0.2) as bluez:
        hand = HandApp(app_conn, "/custom")
        service = hand.service()
        app_conn.export(f"{service}/c0", [Interface(CHRC, methods=[
            Method("ReadValue", "a{sv}", "ay", handler=slow, timeout=5),
        ], properties=[
            Property("UUID", "s", get=lambda: "fff1"),
            Property("Service", "o", get=lambda: service),
            Property("Flags", "as", get=lambda: ["read"]),
        ])])
        await hand.register()
        phone = await bluez.connect_central()
        with pytest.raises(AttError) as info:
            await phone.read("fff1")
        assert info.value.code == 0x0E


# -- the D-Bus error → ATT error table ------------------------------------------------
ERROR_TABLE = [
    ("org.bluez.Error.InvalidValueLength", "", 0x0D, 0x0D),
    ("org.bluez.Error.InvalidOffset", "", 0x07, 0x07),
    ("org.bluez.Error.NotPermitted", "", 0x02, 0x03),
    ("org.bluez.Error.NotAuthorized", "", 0x08, 0x08),
    ("org.bluez.Error.NotSupported", "", 0x06, 0x06),
    ("org.bluez.Error.InProgress", "", 0xFE, 0xFE),
    ("org.bluez.Error.ImproperlyConfigured", "", 0xFD, 0xFD),
    ("org.bluez.Error.Failed", "0x83", 0x83, 0x83),
    ("org.bluez.Error.Failed", "0x9f", 0x9F, 0x9F),
    ("org.bluez.Error.Failed", "0x80", 0x80, 0x80),
    ("org.bluez.Error.Failed", "144", 0x90, 0x90),
    ("org.bluez.Error.Failed", "0x83 battery low", 0x80, 0x80),
    ("org.bluez.Error.Failed", "something broke", 0x80, 0x80),
    ("org.bluez.Error.Failed", "0x7f", 0x0E, 0x0E),
    ("org.bluez.Error.Failed", "0xa0", 0x0E, 0x0E),
    ("org.bluez.Error.Failed", "", 0x0E, 0x0E),
    ("org.bluez.Error.InvalidArguments", "", 0x0E, 0x0E),
    ("org.freedesktop.DBus.Error.AccessDenied", "no", 0x0E, 0x0E),
    ("org.freedesktop.DBus.Error.UnknownMethod", "no", 0x0E, 0x0E),
    ("org.freedesktop.DBus.Error.Failed", "boom", 0x0E, 0x0E),
    ("com.example.Error.Whatever", "", 0x0E, 0x0E),
]


@pytest.mark.parametrize(("name", "message", "read_code", "write_code"), ERROR_TABLE)
async def test_dbus_error_to_att_error(bluez: FakeBluez, app: HandApp, name: str,
                                       message: str, read_code: int, write_code: int) -> None:
    chrc = app.chars[RW]
    chrc.read_error = chrc.write_error = (name, message)
    phone = await bluez.connect_central()
    with pytest.raises(AttError) as info:
        await phone.read(RW)
    assert (info.value.code, info.value.dbus_error, info.value.dbus_message) == (
        read_code, name, message)
    assert info.value.name == ATT_ERRORS[read_code]
    with pytest.raises(AttError) as info:
        await phone.write(RW, b"\x01")
    assert info.value.code == write_code
    assert att_code_for_dbus_error(name, message, write=True) == write_code


# -- writes -------------------------------------------------------------------
async def test_write_options_exactly_as_bluetoothd(bluez: FakeBluez, app: HandApp) -> None:
    phone = await bluez.connect_central(mtu=64)
    await phone.write(RW, b"\x01\x02")
    ((value, options),) = app.chars[RW].writes
    assert value == b"\x01\x02"
    assert list(options.items()) == [("device", ("o", phone.device_path)),
                                     ("link", ("s", "LE")), ("mtu", ("q", 64))]


async def test_long_write_merged_like_gatt_server(bluez: FakeBluez, app: HandApp) -> None:
    phone = await bluez.connect_central(mtu=23)
    value = bytes(range(50))
    await phone.write(RW, value)
    ((written, options),) = app.chars[RW].writes
    assert written == value
    assert "offset" not in options and "prepare-authorize" not in options


async def test_long_write_in_pieces(bus_address: str, app_conn: Connection) -> None:
    async with FakeBluez.serve(bus_address, merge_prepared_writes=False) as bluez:
        hand = heart_rate_app(app_conn)
        await hand.register()
        phone = await bluez.connect_central(mtu=23)
        value = bytes(range(50))
        await phone.write(RW, value)
        writes = hand.chars[RW].writes
        assert [w for w, _o in writes] == [value[0:18], value[18:36], value[36:50]]
        assert [o.get("offset", ("q", 0)) for _w, o in writes] == [("q", 0), ("q", 18),
                                                                    ("q", 36)]
        hand.close()


async def test_write_at_an_offset(bluez: FakeBluez, app: HandApp) -> None:
    phone = await bluez.connect_central()
    await phone.write(RW, b"xy", offset=5)
    ((value, options),) = app.chars[RW].writes
    assert (value, options["offset"]) == (b"xy", ("q", 5))


async def test_prepared_write_authorization(bluez: FakeBluez, app_conn: Connection) -> None:
    chrc = make_app(app_conn, ["write", "authorize"])
    await register(chrc)
    phone = await bluez.connect_central(mtu=23)
    value = bytes(range(40))
    await phone.write("fff1", value)
    (piece, authorize), (whole, execute) = chrc.writes
    assert piece == value[:18] and authorize["prepare-authorize"] == ("b", True)
    assert list(authorize) == ["device", "link", "prepare-authorize", "mtu"]
    assert whole == value and "prepare-authorize" not in execute
    # a refused authorization cancels the whole write
    chrc.writes.clear()
    chrc.write_error = ("org.bluez.Error.NotAuthorized", "")
    with pytest.raises(AttError) as info:
        await phone.write("fff1", value)
    assert info.value.code == 0x08
    assert len(chrc.writes) == 1


async def test_trusted_device_skips_authorization(bluez: FakeBluez,
                                                  app_conn: Connection) -> None:
    chrc = make_app(app_conn, ["write", "authorize"])
    await register(chrc)
    phone = await bluez.connect_central(mtu=23, trusted=True)
    await phone.write("fff1", bytes(40))
    assert [("prepare-authorize" in o) for _v, o in chrc.writes] == [False]


async def test_write_without_response_flag_ignores_errors(bluez: FakeBluez,
                                                          app_conn: Connection) -> None:
    chrc = make_app(app_conn, ["write-without-response"])
    chrc.write_error = ("org.bluez.Error.InvalidValueLength", "")
    await register(chrc)
    phone = await bluez.connect_central()
    await phone.write("fff1", b"\x01")
    await phone.write("fff1", b"\x02", with_response=False)
    with trio.fail_after(2):
        while len(chrc.writes) < 2:
            await trio.sleep(0.01)
    assert [v for v, _o in chrc.writes] == [b"\x01", b"\x02"]


async def test_write_command_on_a_write_characteristic(bluez: FakeBluez, app: HandApp) -> None:
    chrc = app.chars[RW]
    chrc.write_error = ("org.bluez.Error.Failed", "0x90")
    phone = await bluez.connect_central(mtu=23)
    await phone.write(RW, b"\x05", with_response=False)
    with trio.fail_after(2):
        while not chrc.writes:
            await trio.sleep(0.01)
    with pytest.raises(ValueError):
        await phone.write(RW, bytes(30), with_response=False)


# -- notifications ----------------------------------------------------------------
async def test_start_notify_per_device_stop_with_the_last(bluez: FakeBluez, app: HandApp) -> None:
    chrc = app.chars[HR]
    one = await bluez.connect_central(address="11:11:11:11:11:11", mtu=23)
    two = await bluez.connect_central(address="22:22:22:22:22:22", mtu=185)
    await one.subscribe(HR)
    await one.subscribe(HR)  # same CCC value again: nothing happens
    await two.subscribe(HR)

    with trio.fail_after(2):
        while chrc.calls.count("StartNotify") < 2:
            await trio.sleep(0.01)
    value = bytes(range(200))
    await chrc.notify(value)
    first = await one.next_notification(HR)
    second = await two.next_notification(HR)
    assert first.value == value[:20] and second.value == value[:182]
    assert first.timestamp > 0 and not first.indication
    await one.unsubscribe(HR)
    await trio.sleep(0.05)
    assert chrc.calls.count("StopNotify") == 0
    await chrc.notify(b"\x07")
    assert (await two.next_notification(HR)).value == b"\x07"
    assert [n.value for n in one.notifications(HR)] == [value[:20]]
    await two.disconnect()  # a disconnect counts as a disable
    with trio.fail_after(2):
        while "StopNotify" not in chrc.calls:
            await trio.sleep(0.01)
    assert chrc.calls.count("StartNotify") == 2


async def test_notification_cut_to_512(bluez: FakeBluez, app: HandApp) -> None:
    phone = await bluez.connect_central(mtu=517)
    await phone.subscribe(HR)
    await app.chars[HR].notify(bytes(600))
    assert len((await phone.next_notification(HR)).value) == 512


async def test_notifications_only_from_the_registering_connection(
    bluez: FakeBluez, app: HandApp, bus_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    phone = await bluez.connect_central()
    await phone.subscribe(HR)
    async with open_connection(bus_address) as intruder:
        await app.chars[HR].notify(b"forged", conn=intruder)
        await app.chars[HR].notify(b"real")
        assert (await phone.next_notification(HR)).value == b"real"
        # the two connections' signals reach the fake in either order
        with trio.fail_after(2):
            while "notification ignored" not in caplog.text:
                await trio.sleep(0.01)
    assert [n.value for n in phone.notifications(HR)] == [b"real"]


async def test_indications_are_confirmed(bluez: FakeBluez, app_conn: Connection) -> None:
    chrc = make_app(app_conn, ["indicate"])
    await register(chrc)
    phone = await bluez.connect_central()
    await phone.subscribe("fff1")
    with trio.fail_after(2):
        while "StartNotify" not in chrc.calls:
            await trio.sleep(0.01)
    await chrc.notify(b"\x01")
    note = await phone.next_notification("fff1")
    assert note.indication
    with trio.fail_after(2):
        while "Confirm" not in chrc.calls:
            await trio.sleep(0.01)


async def test_notify_and_indicate_needs_indications(bluez: FakeBluez,
                                                     app_conn: Connection) -> None:
    """bluetoothd sends a notify+indicate value only to devices that enabled indications."""
    chrc = make_app(app_conn, ["notify", "indicate"])
    await register(chrc)
    notifier = await bluez.connect_central(address="11:11:11:11:11:11")
    indicated = await bluez.connect_central(address="22:22:22:22:22:22")
    await notifier.subscribe("fff1")
    await indicated.subscribe("fff1", indicate=True)
    await chrc.notify(b"\x01")
    assert (await indicated.next_notification("fff1")).indication
    assert notifier.notifications("fff1") == []


async def test_subscribe_refused_without_encryption(bluez: FakeBluez,
                                                    app_conn: Connection) -> None:
    chrc = make_app(app_conn, ["read", "encrypt-notify"])
    await register(chrc)
    phone = await bluez.connect_central()
    with pytest.raises(AttError) as info:
        await phone.subscribe("fff1")
    assert info.value.code == 0x0F
    assert chrc.calls == []


async def test_acquire_notify(bluez: FakeBluez, app_conn: Connection) -> None:
    chrc = make_app(app_conn, ["notify"], notify_acquired=True)
    await register(chrc)
    one = await bluez.connect_central(address="11:11:11:11:11:11", mtu=23)
    two = await bluez.connect_central(address="22:22:22:22:22:22", mtu=100)
    await one.subscribe("fff1")
    await two.subscribe("fff1")
    assert chrc.calls == ["AcquireNotify", "AcquireNotify"]
    chrc.close_sent_ends()
    first, second = chrc.reads
    assert list(first.items()) == [("device", ("o", one.device_path)), ("link", ("s", "LE")),
                                   ("mtu", ("q", 23))]
    assert second["mtu"] == ("q", 100)
    sock_one, sock_two = chrc.sockets
    assert sock_one.type == socket.SOCK_SEQPACKET
    sock_one.send(bytes(range(40)))
    assert (await one.next_notification("fff1")).value == bytes(range(20))
    sock_two.send(b"\x02")
    assert (await two.next_notification("fff1")).value == b"\x02"
    assert len(one.notifications("fff1")) == 1  # each socket feeds its own device
    await one.unsubscribe("fff1")
    sock_one.setblocking(False)
    with trio.fail_after(2):
        await trio.lowlevel.wait_readable(sock_one)
    assert sock_one.recv(16) == b""  # bluetoothd closed its end
    assert "StopNotify" not in chrc.calls and "StartNotify" not in chrc.calls


async def test_descriptor_read(bluez: FakeBluez, app_conn: Connection) -> None:
    hand = HandApp(app_conn, "/custom")
    service = hand.service()
    hand.characteristic(service, "c0", "fff1", ["read"])
    hand.descriptor(f"{service}/c0", "d0", "2901", ["read"], b"Temperature")
    await hand.register()
    phone = await bluez.connect_central()
    assert phone.characteristic("fff1").descriptors == ("00002901-0000-1000-8000-00805f9b34fb",)
    assert await phone.read_descriptor("fff1", "2901") == b"Temperature"
    hand.close()


async def test_logs_one_line_per_event(bluez: FakeBluez, app: HandApp,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mushpi_ble.testing.fakebluez")
    phone = await bluez.connect_central()
    await phone.subscribe(HR)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("StartNotify central=11:22:33:44:55:66 path=/app/s0/c0")
               for line in lines)
    assert all("\n" not in line for line in lines)


async def test_acquire_write(bluez: FakeBluez, app_conn: Connection) -> None:
    chrc = make_app(app_conn, ["write-without-response"], write_acquired=True)
    await register(chrc)
    phone = await bluez.connect_central(mtu=64)
    await phone.write("fff1", b"abc", with_response=False)
    await phone.write("fff1", b"defg")
    assert chrc.calls == ["AcquireWrite"]
    assert list(chrc.reads[0]) == ["device", "link", "mtu"]
    (ours,) = chrc.sockets
    assert ours.recv(64) == b"abc" and ours.recv(64) == b"defg"
    assert chrc.writes == []


async def test_acquire_write_refused_falls_back(bluez: FakeBluez, app_conn: Connection) -> None:
    chrc = make_app(app_conn, ["write"], write_acquired=True)
    chrc.write_error = ("org.bluez.Error.NotSupported", "")
    await register(chrc)
    phone = await bluez.connect_central()
    with pytest.raises(AttError) as info:
        await phone.write("fff1", b"x")
    assert info.value.code == 0x06  # a mapped error is the answer
    chrc.write_error = ("org.bluez.Error.Failed", "")  # maps to 0x0E: retried as WriteValue
    await phone.write("fff1", b"y")
    with trio.fail_after(2):
        while not chrc.writes:
            await trio.sleep(0.01)
    assert chrc.writes[0][0] == b"y"


async def test_delayed_read(bluez: FakeBluez, app: HandApp) -> None:
    bluez.delay_next_call("ReadValue", 0.3)
    phone = await bluez.connect_central()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(phone.read, HR)
        await trio.sleep(0.1)
        assert app.chars[HR].reads == []  # bluetoothd has not asked the app yet
    assert len(app.chars[HR].reads) == 1
    await phone.read(HR)  # only the next call was delayed
