"""The D-Bus layer's fast paths: byte-identical to jeepney, and right on a real bus.

The compiled codec, the pre-serialised headers and the PropertiesChanged
template must produce exactly jeepney's bytes, decode exactly as jeepney
decodes, refuse what jeepney refuses (so the wire falls back to jeepney
and reports jeepney's own error), and behave on a real dbus-daemon with
real clients. The wire, fast path and fallback together, must give
jeepney's bytes or jeepney's error for every message.
"""

from __future__ import annotations

import array
import random
import re
import subprocess
from typing import Any

import pytest
import trio
from jeepney.low_level import (
    Endianness,
    Header,
    HeaderFields,
    Message,
    MessageType,
    Parser,
    parse_signature,
)
from jeepney.wrappers import (
    DBusAddress,
    new_error,
    new_method_call,
    new_method_return,
    new_signal,
)

from mushpi_ble.dbus import (
    CallContext,
    Connection,
    DBusError,
    Interface,
    MatchRule,
    Method,
    Property,
)
from mushpi_ble.dbus.codec import Compiler, MessageDecoder, WireParser
from mushpi_ble.dbus.errors import FAILED
from mushpi_ble.dbus.signature import body_from_result
from mushpi_ble.dbus.templates import Templates
from mushpi_ble.dbus.wire import Wire

PROPS = "org.freedesktop.DBus.Properties"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
CHAR_PATH = "/org/bluez/mushpi/service0/char0"
READ_OPTIONS: dict[str, tuple[str, Any]] = {
    "device": ("o", "/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF"),
    "mtu": ("q", 247),
    "link": ("s", "LE"),
}
SERIALS = (1, 2, 255, 65536, 2**32 - 1)
# The fast path on its own, without the wire's fallback to jeepney.
COMPILER = Compiler()
TEMPLATES = Templates(COMPILER)
DECODER = MessageDecoder(Compiler())
encode_signal = TEMPLATES.signal
encode_method_call = TEMPLATES.method_call
encode_method_return = TEMPLATES.method_return
encode_properties_changed = TEMPLATES.properties_changed
decode_message = DECODER.decode

BODIES: list[tuple[str, tuple[Any, ...]]] = [
    ("", ()),
    ("y", (0,)),
    ("y", (255,)),
    ("b", (True,)),
    ("b", (False,)),
    ("n", (-32768,)),
    ("q", (65535,)),
    ("i", (-1,)),
    ("u", (2**32 - 1,)),
    ("x", (-(2**63),)),
    ("t", (2**64 - 1,)),
    ("d", (3.25,)),
    ("s", ("",)),
    ("s", ("héllo wörld ✓",)),
    ("o", ("/",)),
    ("o", ("/org/bluez/hci0",)),
    ("g", ("a{sv}",)),
    ("ay", (b"",)),
    ("ay", (bytes(range(256)) * 3,)),
    ("ay", ([1, 2, 3],)),
    ("as", ([],)),
    ("as", (["a", "bc", ""],)),
    ("ao", (["/a", "/b/c"],)),
    ("at", ([1, 2],)),
    ("ad", ([0.5],)),
    ("ax", ([],)),
    ("aay", ([b"", b"a", b"abcde"],)),
    ("a{sv}", ({},)),
    ("a{sv}", (READ_OPTIONS,)),
    ("a{sv}", ({
        "v": ("v", ("i", 1)),
        "arr": ("aay", [b"x", b""]),
        "st": ("(ybq)", (1, True, 2)),
        "dict": ("a{sv}", {"in": ("s", "x"), "t": ("t", 9)}),
        "d": ("d", -0.0),
    },)),
    ("a{oa{sa{sv}}}", ({
        "/org/bluez/mushpi": {CHAR_IFACE: {"Value": ("ay", b"12"), "Flags": ("as", ["read"])},
                              PROPS: {}},
        "/org/bluez/mushpi/s0": {},
    },)),
    ("yt", (1, 2)),
    ("yv", (1, ("t", 5))),
    ("(yd)ay", ((1, 2.5), b"ab")),
    ("a(yx)", ([(1, -1), (2, 2)],)),
    ("a{yv}", ([(1, ("s", "x")), (2, ("y", 3))],)),
    ("a{qay}", ({1: b"x", 2: b"yz"},)),
    ("a(say)", ([("x", b"1"), ("", b"")],)),
    ("sa{sv}as", (CHAR_IFACE, {"Value": ("ay", b"x" * 13)}, ["Notifying"])),
    ("aya{sv}", (b"\x01\x02", {"offset": ("q", 3), "type": ("s", "request")})),
]

# Values jeepney refuses: the fast encoders must refuse them too.
REFUSED: list[tuple[str, Any]] = [
    ("s", (b"bytes",)),
    ("s", (1,)),
    ("o", ("no/slash",)),
    ("o", ("/trailing/",)),
    ("o", ("/a//b",)),
    ("o", ("/bad-char",)),
    ("g", ("x" * 256,)),
    ("y", (256,)),
    ("y", (-1,)),
    ("u", (-1,)),
    ("ay", (bytearray(b"x"),)),
    ("ay", ((1, 2),)),
    ("as", (("a",),)),
    ("as", ([1],)),
    ("(yy)", ([1, 2],)),
    ("(yy)", ((1,),)),
    ("a{sv}", ({"k": "not a variant"},)),
    ("a{sv}", ({1: ("s", "x")},)),
    ("a{sv}", ({"k": ("s", 5)},)),
    ("ss", ("a",)),
    ("s", ["a"]),
]


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def same_message(a: Message, b: Message) -> bool:
    return repr(a.header) == repr(b.header) and same(a.body, b.body)


def jeepney_call(signature: str, body: tuple[Any, ...], sender: str | None = ":1.42") -> Message:
    msg = new_method_call(DBusAddress(CHAR_PATH, bus_name=":1.7", interface=CHAR_IFACE),
                          "ReadValue", signature or None, body)
    if sender is not None:
        msg.header.fields[HeaderFields.sender] = sender
    return msg


def received(msg: Message, serial: int) -> Message:
    """``msg`` as the receiving side sees it (serial set, parsed by jeepney)."""
    return Message.from_buffer(msg.serialise(serial))


# ----------------------------------------------------------------------
# byte-identical encoding
# ----------------------------------------------------------------------
@pytest.mark.parametrize(("signature", "body"), BODIES)
def test_body_writer_matches_jeepney(signature: str, body: tuple[Any, ...]) -> None:
    expected = parse_signature(list(f"({signature})")).serialise(body, 0, Endianness.little)
    out = bytearray()
    COMPILER.body_writer(signature)(out, body)
    assert bytes(out) == expected


@pytest.mark.parametrize(("signature", "body"), BODIES)
def test_messages_match_jeepney(signature: str, body: tuple[Any, ...]) -> None:
    for serial in SERIALS:
        expected = new_signal(DBusAddress("/org/x_1", interface="org.example.If1"), "Changed",
                              signature or None, body).serialise(serial)
        assert encode_signal("/org/x_1", "org.example.If1", "Changed", signature, body,
                             serial) == expected

        call = new_method_call(DBusAddress(CHAR_PATH, bus_name=":1.7", interface=CHAR_IFACE),
                               "WriteValue", signature or None, body)
        assert encode_method_call(":1.7", CHAR_PATH, CHAR_IFACE, "WriteValue", signature,
                                  body, serial) == call.serialise(serial)
        call.header.flags |= 1
        assert encode_method_call(":1.7", CHAR_PATH, CHAR_IFACE, "WriteValue", signature,
                                  body, serial, 1) == call.serialise(serial)

        for sender in (":1.42", "org.example.Peer", None):
            parent = received(jeepney_call("a{sv}", (READ_OPTIONS,), sender), serial ^ 0x5A5A)
            expected = new_method_return(parent, signature or None, body).serialise(serial)
            assert encode_method_return(parent, signature, body, serial) == expected


@pytest.mark.parametrize(("signature", "body"), REFUSED)
def test_fast_encoders_refuse_what_jeepney_refuses(signature: str, body: Any) -> None:
    with pytest.raises(Exception):  # noqa: B017 - jeepney's own types vary
        new_signal(DBusAddress("/a", interface="org.example.If1"), "S", signature,
                   body).serialise(1)
    with pytest.raises(Exception):  # noqa: B017
        encode_signal("/a", "org.example.If1", "S", signature, body, 1)
    parent = received(jeepney_call("", ()), 9)
    with pytest.raises(Exception):  # noqa: B017
        encode_method_return(parent, signature, body, 1)


def test_invalid_names_are_refused_like_jeepney() -> None:
    for path, interface, member in [("bad", "org.example.If1", "S"),
                                    ("/a", "noDots", "S"),
                                    ("/a", "org.example.If1", "bad-member")]:
        with pytest.raises(ValueError):
            new_signal(DBusAddress(path, interface=interface), member)
        with pytest.raises(ValueError):
            encode_signal(path, interface, member, "", (), 1)
        with pytest.raises(ValueError):
            encode_method_call(":1.7", path, interface, member, "", (), 1)
    with pytest.raises(ValueError):
        encode_method_call("not a bus name", "/a", "org.example.If1", "M", "", (), 1)


# ----------------------------------------------------------------------
# the PropertiesChanged template
# ----------------------------------------------------------------------
def jeepney_properties_changed(path: str, interface: str, name: str, signature: str,
                               value: Any, serial: int) -> bytes:
    msg = new_signal(DBusAddress(path, interface=PROPS), "PropertiesChanged", "sa{sv}as",
                     (interface, {name: (signature, value)}, []))
    return bytes(msg.serialise(serial))


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 5, 7, 8, 12, 13, 511, 512, 513, 4096])
def test_properties_changed_template_matches_jeepney(length: int) -> None:
    rng = random.Random(length)
    shapes = [
        (CHAR_PATH, CHAR_IFACE, "Value"),
        ("/a", "a.b", "V"),
        ("/org/x/y_z", "org.example.Interface12", "LongerPropertyName"),
        ("/p", "org.ex.I", "Valu"),
    ]
    for path, interface, name in shapes:
        for serial in SERIALS:
            value = rng.randbytes(length)
            data = encode_properties_changed(path, interface, name, "ay", value, serial)
            assert data == jeepney_properties_changed(path, interface, name, "ay", value,
                                                      serial)
            parser = Parser()
            parser.add_data(data)
            msg = parser.get_next_message()
            assert msg is not None and parser.get_next_message() is None
            assert msg.header.serial == serial
            assert msg.header.fields[HeaderFields.path] == path
            assert msg.header.fields[HeaderFields.member] == "PropertiesChanged"
            assert msg.body == (interface, {name: ("ay", value)}, [])


@pytest.mark.parametrize(("signature", "value"), [
    ("s", "héllo"), ("s", ""), ("b", True), ("q", 247), ("y", 3), ("t", 2**60), ("d", 1.5),
    ("o", "/org/bluez/hci0"), ("as", ["read", "notify"]), ("as", []), ("ao", ["/x"]),
    ("a{sv}", {"k": ("u", 1)}), ("(yq)", (1, 2)), ("v", ("s", "x")), ("aay", [b"a", b""]),
])
def test_properties_changed_template_other_types(signature: str, value: Any) -> None:
    for serial in SERIALS:
        for interface in ("a.b", "org.bluez.GattCharacteristic1", "org.ex.I"):
            assert encode_properties_changed(CHAR_PATH, interface, "Prop", signature, value,
                                             serial) == jeepney_properties_changed(
                CHAR_PATH, interface, "Prop", signature, value, serial)


def test_properties_changed_template_refuses_wrong_values() -> None:
    for signature, value in [("ay", "text"), ("ay", bytearray(b"x")), ("s", b"x"),
                             ("q", -1), ("as", "abc")]:
        with pytest.raises(Exception):  # noqa: B017 - jeepney's own types vary
            jeepney_properties_changed(CHAR_PATH, CHAR_IFACE, "P", signature, value, 1)
        with pytest.raises(Exception):  # noqa: B017
            encode_properties_changed(CHAR_PATH, CHAR_IFACE, "P", signature, value, 1)


# ----------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------
def sample_messages() -> list[bytes]:
    raws: list[bytes] = []
    for serial, (signature, body) in enumerate(BODIES, start=3):
        raws.append(jeepney_call(signature, body).serialise(serial))
        raws.append(new_signal(DBusAddress("/s", interface="org.example.If1"), "S",
                               signature or None, body).serialise(serial))
        parent = received(jeepney_call("", ()), serial)
        raws.append(new_method_return(parent, signature or None, body).serialise(serial))
    parent = received(jeepney_call("", ()), 77)
    raws.append(new_error(parent, "org.bluez.Error.Failed", "s", ("nope",)).serialise(78))
    # big-endian: decoded by jeepney itself
    header = Header(Endianness.big, MessageType.signal, 0, 1, 0, 5,
                    {HeaderFields.path: "/b", HeaderFields.interface: "org.example.If1",
                     HeaderFields.member: "Big", HeaderFields.signature: "sa{sv}"})
    raws.append(Message(header, ("x", READ_OPTIONS)).serialise(79))
    # no-reply and other flags
    flagged = jeepney_call("a{sv}", (READ_OPTIONS,))
    flagged.header.flags |= 3
    raws.append(flagged.serialise(80))
    return [bytes(raw) for raw in raws]


def test_decoder_matches_jeepney() -> None:
    for raw in sample_messages():
        for _ in range(2):  # the second pass decodes from the cached call shapes
            assert same_message(decode_message(raw), Message.from_buffer(raw))


def test_decoder_matches_jeepney_on_corrupt_messages() -> None:
    rng = random.Random(1234)
    raws = sample_messages()
    for _ in range(3000):
        raw = bytearray(rng.choice(raws))
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] = rng.choice((0, 1, 0x6C, 0xFF, rng.randrange(256)))
        corrupt = bytes(raw)
        try:
            expected: Message | None = Message.from_buffer(corrupt)
            error: type[BaseException] | None = None
        except Exception as exc:
            expected, error = None, type(exc)
        for _ in range(2):
            if expected is None:
                assert error is not None
                with pytest.raises(error):
                    decode_message(corrupt)
            else:
                assert same_message(decode_message(corrupt), expected)


def test_header_field_running_past_its_array_is_not_cached() -> None:
    # The last field (the signature) runs past the declared array length, so
    # its value depends on bytes outside the part a cache could key on.
    raws: list[bytes] = []
    for signature, body in (("s", ("/abc",)), ("o", ("/abc",))):
        edited = bytearray(jeepney_call(signature, body).serialise(5))
        fields_length = int.from_bytes(edited[12:16], "little")
        edited[12:16] = (fields_length - 2).to_bytes(4, "little")
        raws.append(bytes(edited))
    assert raws[0][16 : 16 + fields_length - 2] == raws[1][16 : 16 + fields_length - 2]
    for raw in raws * 2:
        assert same_message(decode_message(raw), Message.from_buffer(raw))


def test_cached_call_bodies_are_fresh_each_time() -> None:
    raw = bytes(jeepney_call("a{sv}", (READ_OPTIONS,)).serialise(5))
    first = decode_message(raw)
    first.body[0]["mtu"] = ("q", 1)
    first.body[0]["extra"] = ("s", "x")
    first.header.fields[HeaderFields.member] = "Changed"
    second = decode_message(raw)
    assert second.body == (READ_OPTIONS,)
    assert second.body[0] is not first.body[0]
    assert second.header.fields[HeaderFields.member] == "ReadValue"
    other = bytes(jeepney_call("a{sv}", ({**READ_OPTIONS, "offset": ("q", 9)},)).serialise(6))
    assert decode_message(other).body[0]["offset"] == ("q", 9)
    # container values are never shared between calls
    nested = {"list": ("as", ["a"])}
    raw = bytes(jeepney_call("a{sv}", (nested,)).serialise(7))
    decode_message(raw).body[0]["list"][1].append("b")
    assert decode_message(raw).body == (nested,)


def test_wire_parser_matches_jeepney_parser_for_any_chunking() -> None:
    rng = random.Random(99)
    stream = b"".join(sample_messages() * 3)
    expected = Parser().feed(stream)
    for _ in range(40):
        ours = WireParser(decode_message)
        got: list[Message] = []
        pos = 0
        while pos < len(stream):
            step = rng.choice((1, 3, 16, 17, 100, 1000, 65536))
            ours.add_data(stream[pos : pos + step])
            pos += step
            while (msg := ours.get_next_message()) is not None:
                got.append(msg)
        assert len(got) == len(expected)
        assert all(same_message(a, b) for a, b in zip(got, expected, strict=True))


def test_wire_parser_hands_descriptors_to_their_message() -> None:
    class Fd:
        def __init__(self, n: int) -> None:
            self.n = n

    msg = new_method_return(received(jeepney_call("", ()), 3), "hq", (0, 23))
    raw = bytes(msg.serialise(4, fds=array.array("i")))
    assert msg.header.fields[HeaderFields.unix_fds] == 1
    plain = bytes(jeepney_call("s", ("x",)).serialise(5))
    for parser in (Parser(), WireParser(decode_message)):
        parser.add_data(raw + plain + raw, [Fd(1), Fd(2)])
        first, second, third = (parser.get_next_message() for _ in range(3))
        assert first is not None and second is not None and third is not None
        assert first.body[0].n == 1 and third.body[0].n == 2
        assert second.body == ("x",)


def test_body_from_result_reuses_split_signatures() -> None:
    assert body_from_result("", 5) == ()
    assert body_from_result("ay", b"x") == (b"x",)
    assert body_from_result("si", ("a", 1)) == ("a", 1)
    with pytest.raises(TypeError):
        body_from_result("si", "a")
    with pytest.raises(TypeError):
        body_from_result("si", ("a", 1, 2))


# ----------------------------------------------------------------------
# the wire: fast path or jeepney, never a difference
# ----------------------------------------------------------------------
def jeepney_outcome(build: Any) -> tuple[type[BaseException] | None, Any]:
    """What ``build()`` returns, or the type and text of what it raises."""
    try:
        return None, build()
    except Exception as exc:
        return type(exc), str(exc)


# What the fast path leaves to jeepney: descriptors, big-endian, odd containers.
FALLBACK_ONLY: list[tuple[str, tuple[Any, ...]]] = [
    ("h", (0,)),
    ("ah", ([0, 1],)),
    ("a{sv}", ({"fd": ("h", 0)},)),
]


@pytest.mark.parametrize("enable_fds", [False, True])
@pytest.mark.parametrize(("signature", "body"), BODIES + REFUSED + FALLBACK_ONLY)
def test_wire_gives_jeepneys_bytes_or_jeepneys_error(signature: str, body: Any,
                                                     enable_fds: bool) -> None:
    wire = Wire(enable_fds=enable_fds)
    parent = received(jeepney_call("", ()), 9)

    def serialise(msg: Message, serial: int) -> bytes:
        return bytes(msg.serialise(serial, fds=array.array("i") if enable_fds else None))

    cases = [
        (lambda: serialise(new_signal(DBusAddress("/a", interface="org.example.If1"), "S",
                                      signature or None, body), 5),
         lambda: wire.signal("/a", "org.example.If1", "S", signature, body, 5)),
        (lambda: serialise(new_method_return(parent, signature or None, body), 6),
         lambda: wire.method_return(parent, signature, body, 6)[0]),
        (lambda: serialise(new_method_call(DBusAddress(CHAR_PATH, bus_name=":1.7",
                                                       interface=CHAR_IFACE),
                                           "M", signature or None, body), 7),
         lambda: wire.method_call(":1.7", CHAR_PATH, CHAR_IFACE, "M", signature, body, 7)[0]),
    ]
    for jeepney_build, wire_build in cases:
        for _ in range(2):  # the second time from the wire's caches
            assert jeepney_outcome(wire_build) == jeepney_outcome(jeepney_build)


def test_wire_property_changed_falls_back_for_descriptors() -> None:
    wire = Wire(enable_fds=False)
    for signature, value in [("ay", b"x"), ("h", 0), ("ay", "text")]:
        assert jeepney_outcome(
            lambda s=signature, v=value: wire.property_changed(CHAR_PATH, CHAR_IFACE, "V", s,
                                                               v, 3)
        ) == jeepney_outcome(
            lambda s=signature, v=value: jeepney_properties_changed(CHAR_PATH, CHAR_IFACE, "V",
                                                                    s, v, 3))


def test_wire_sends_descriptors_only_when_enabled() -> None:
    parent = received(jeepney_call("", ()), 9)
    fds: array.array[int] = array.array("i")
    expected = bytes(new_method_return(parent, "hq", (5, 1)).serialise(4, fds=fds))
    data, sent = Wire(enable_fds=True).method_return(parent, "hq", (5, 1), 4)
    assert (data, sent) == (expected, fds)
    data, sent = Wire(enable_fds=True).method_return(parent, "q", (1,), 4)
    assert sent is None
    assert Wire(enable_fds=True).method_call(":1.7", "/a", "org.example.If1", "M", "h", (5,),
                                             4)[1] == fds
    with pytest.raises(RuntimeError):  # jeepney without descriptor support refuses "h"
        Wire(enable_fds=False).method_return(parent, "h", (5,), 4)
    error, sent = Wire(enable_fds=True).error(parent, "org.example.Error.E", "no", 8)
    assert sent is None
    assert error == bytes(new_error(parent, "org.example.Error.E", "s", ("no",)).serialise(8))


def test_wire_parser_decodes_like_jeepney() -> None:
    stream = b"".join(sample_messages())
    parser = Wire(enable_fds=False).parser()
    parser.add_data(stream)
    got = list(iter(parser.get_next_message, None))
    expected = Parser().feed(stream)
    assert len(got) == len(expected)
    assert all(same_message(a, b) for a, b in zip(got, expected, strict=True))


def test_wires_keep_their_own_caches() -> None:
    first, second = Wire(enable_fds=False), Wire(enable_fds=False)
    first.signal("/a", "org.example.If1", "S", "s", ("x",), 1)
    first.property_changed("/a", "org.example.If1", "P", "ay", b"x", 2)
    first.decode(bytes(jeepney_call("a{sv}", (READ_OPTIONS,)).serialise(3)))
    assert first._templates._signals and first._templates._properties_changed
    assert first._decoder._shapes
    assert not second._templates._signals and not second._templates._properties_changed
    assert not second._decoder._shapes


# ----------------------------------------------------------------------
# on a real bus
# ----------------------------------------------------------------------
class Characteristic:
    def __init__(self) -> None:
        self.value = b"0123456789ab"
        self.options: list[dict[str, Any]] = []
        self.contexts: list[CallContext] = []

    def read_value(self, ctx: CallContext, options: dict[str, Any]) -> bytes:
        self.contexts.append(ctx)
        self.options.append(dict(options))
        options["mangled"] = ("s", "by the handler")  # must not leak into later calls
        return self.value

    def interface(self) -> Interface:
        return Interface(
            CHAR_IFACE,
            methods=[
                Method("ReadValue", "a{sv}", "ay", handler=self.read_value),
                Method("Raw", "", "ay", handler=lambda _ctx: self.value),
                Method("Pair", "", "sq", handler=lambda _ctx: ("x", 7)),
                Method("Bad", "", "ay", handler=lambda _ctx: "not bytes"),
                Method("BadPair", "", "sq", handler=lambda _ctx: ("x", -1)),
            ],
            properties=[
                Property("Value", "ay", get=lambda: self.value),
                Property("Notifying", "b", get=lambda: True),
                Property("Flags", "as", get=lambda: ["read", "notify"]),
            ],
        )


@pytest.fixture
def chrc(server: Connection) -> Characteristic:
    char = Characteristic()
    server.export(CHAR_PATH, [char.interface()])
    return char


async def test_replies_decoded_by_second_connection(server: Connection, client: Connection,
                                                    chrc: Characteristic) -> None:
    dest = server.unique_name
    for i in range(20):
        chrc.value = bytes([i]) * i
        options = READ_OPTIONS if i % 2 else {**READ_OPTIONS, "offset": ("q", i)}
        assert await client.call(dest, CHAR_PATH, CHAR_IFACE, "ReadValue", "a{sv}",
                                 (options,)) == (chrc.value,)
        assert chrc.options[-1] == options  # the handler's mangling never leaks
    assert await client.call(dest, CHAR_PATH, CHAR_IFACE, "Pair") == ("x", 7)
    ctx = chrc.contexts[-1]
    assert (ctx.sender, ctx.path, ctx.interface, ctx.member, ctx.fds) == (
        client.unique_name, CHAR_PATH, CHAR_IFACE, "ReadValue", ())
    (value,) = await client.call(dest, CHAR_PATH, PROPS, "Get", "ss", (CHAR_IFACE, "Value"))
    assert value == ("ay", chrc.value)


async def test_contexts_name_the_right_caller(bus_address: str, server: Connection,
                                              client: Connection, chrc: Characteristic) -> None:
    from mushpi_ble.dbus import open_connection

    async with open_connection(bus_address) as other:
        for conn in (client, other, client):
            await conn.call(server.unique_name, CHAR_PATH, CHAR_IFACE, "ReadValue", "a{sv}",
                            (READ_OPTIONS,))
    assert [c.sender for c in chrc.contexts] == [client.unique_name, other.unique_name,
                                                 client.unique_name]


async def test_unserialisable_results_answer_jeepneys_error(
    server: Connection, client: Connection, chrc: Characteristic
) -> None:
    parent = received(jeepney_call("", ()), 3)
    for member, signature, result in [("Bad", "ay", ("not bytes",)),
                                      ("BadPair", "sq", ("x", -1))]:
        try:
            new_method_return(parent, signature, result).serialise(4)
        except Exception as exc:
            expected = f"{type(exc).__name__}: {exc}"
        with pytest.raises(DBusError) as info:
            await client.call(server.unique_name, CHAR_PATH, CHAR_IFACE, member)
        assert info.value.name == FAILED
        assert info.value.text == expected
    # and the connection keeps answering
    assert await client.call(server.unique_name, CHAR_PATH, CHAR_IFACE, "Raw") == (chrc.value,)


async def test_emit_errors_are_jeepneys(server: Connection, chrc: Characteristic) -> None:
    try:
        jeepney_properties_changed(CHAR_PATH, CHAR_IFACE, "Value", "ay", "text", 1)
    except Exception as exc:
        expected: BaseException = exc
    with pytest.raises(type(expected), match=re.escape(str(expected))):
        server.emit_properties_changed_nowait(CHAR_PATH, CHAR_IFACE, {"Value": "text"})
    with pytest.raises(type(expected), match=re.escape(str(expected))):
        await server.emit_properties_changed(CHAR_PATH, CHAR_IFACE, {"Value": "text"})
    with pytest.raises(DBusError):
        server.emit_properties_changed_nowait(CHAR_PATH, CHAR_IFACE, {"Missing": b""})
    with pytest.raises(ValueError):
        server.emit_signal_nowait("bad path", CHAR_IFACE, "S")


def _run(*cmd: str) -> str:
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False)
    return out.stdout + out.stderr


async def test_replies_decoded_by_standard_tools(bus_address: str, server: Connection,
                                                 chrc: Characteristic) -> None:
    dest = server.unique_name
    chrc.value = b"\x00\x01\xfe\xff"
    out = await trio.to_thread.run_sync(
        lambda: _run("dbus-send", f"--bus={bus_address}", "--print-reply", f"--dest={dest}",
                     CHAR_PATH, f"{CHAR_IFACE}.Raw"))
    assert re.search(r"array of bytes \[\s*00 01 fe ff\s*\]", out), out
    out = await trio.to_thread.run_sync(
        lambda: _run("gdbus", "call", "--address", bus_address, "--dest", dest,
                     "--object-path", CHAR_PATH, "--method", f"{CHAR_IFACE}.ReadValue",
                     "{'mtu': <uint16 247>, 'device': <objectpath '/org/bluez/hci0/dev_X'>}"))
    assert "[byte 0x00, 0x01, 0xfe, 0xff]" in out, out
    assert chrc.options[-1] == {"mtu": ("q", 247), "device": ("o", "/org/bluez/hci0/dev_X")}
    out = await trio.to_thread.run_sync(
        lambda: _run("gdbus", "call", "--address", bus_address, "--dest", dest,
                     "--object-path", CHAR_PATH, "--method", f"{CHAR_IFACE}.Pair"))
    assert "('x', uint16 7)" in out, out


async def test_notifications_reach_subscribers_in_order(server: Connection, client: Connection,
                                                        chrc: Characteristic) -> None:
    rule = MatchRule(sender=server.unique_name, path=CHAR_PATH, interface=PROPS,
                     member="PropertiesChanged")
    count = 600
    expected: list[tuple[Any, ...]] = []
    async with client.subscribe(rule, capacity=2 * count) as signals:
        for seq in range(count):
            value = seq.to_bytes(4, "little") * (seq % 7)
            kind = seq % 5
            if kind == 0:
                await server.emit_properties_changed(CHAR_PATH, CHAR_IFACE, {"Value": value})
                expected.append((CHAR_IFACE, {"Value": ("ay", value)}, []))
            elif kind in (1, 2):
                server.emit_properties_changed_nowait(CHAR_PATH, CHAR_IFACE, {"Value": value})
                expected.append((CHAR_IFACE, {"Value": ("ay", value)}, []))
            elif kind == 3:  # not the one-property case: through jeepney's shapes
                server.emit_properties_changed_nowait(
                    CHAR_PATH, CHAR_IFACE, {"Value": value, "Notifying": True}, ["Flags"])
                expected.append((CHAR_IFACE, {"Value": ("ay", value),
                                              "Notifying": ("b", True)}, ["Flags"]))
            else:
                await server.emit_properties_changed(CHAR_PATH, CHAR_IFACE,
                                                     {"Flags": ["read"]}, iter(()))
                expected.append((CHAR_IFACE, {"Flags": ("as", ["read"])}, []))
        got = []
        with trio.fail_after(10):
            for _ in range(count):
                got.append((await signals.receive()).body)
    assert got == expected


async def test_builtin_methods_are_not_rebuilt_per_call(server: Connection,
                                                  chrc: Characteristic) -> None:
    for interface, member in [(PROPS, "Get"), (PROPS, "GetAll"), ("", "Ping"),
                              ("org.freedesktop.DBus.Peer", "GetMachineId"),
                              ("org.freedesktop.DBus.Introspectable", "Introspect")]:
        ctx = CallContext(":1.9", CHAR_PATH, interface, member)
        first = server.dispatcher._builtin(ctx)
        assert first is not None and server.dispatcher._builtin(ctx) is first
    read_value = CallContext(":1.9", CHAR_PATH, CHAR_IFACE, "ReadValue")
    assert server.dispatcher._builtin(read_value) is None


def test_refusals_reuse_one_error_template_with_jeepneys_bytes() -> None:
    wire = Wire(enable_fds=False)
    for serial, sender in ((9, ":1.5"), (10, ":1.5"), (11, None), (12, ":1.6")):
        parent = received(jeepney_call("", ()), serial)
        if sender is None:
            parent.header.fields.pop(HeaderFields.sender, None)
        else:
            parent.header.fields[HeaderFields.sender] = sender
        for reply_serial in (1, 77):
            error, _fds = wire.error(parent, "org.example.Error.E", "no", reply_serial)
            assert error == bytes(new_error(parent, "org.example.Error.E", "s",
                                            ("no",)).serialise(reply_serial))
    assert len(wire._templates._errors) == 3  # one per destination, none refused
