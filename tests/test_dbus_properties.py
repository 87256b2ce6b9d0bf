"""Properties, PropertiesChanged and ObjectManager against a real bus."""

from __future__ import annotations

import pytest
import trio

from mushpi_ble.dbus import Connection, DBusError, Interface, MatchRule, Property
from mushpi_ble.dbus.errors import (
    INVALID_ARGS,
    PROPERTY_READ_ONLY,
    UNKNOWN_INTERFACE,
    UNKNOWN_OBJECT,
    UNKNOWN_PROPERTY,
)

IFACE = "com.example.Props1"
PROPS = "org.freedesktop.DBus.Properties"
OM = "org.freedesktop.DBus.ObjectManager"


class Thing:
    def __init__(self) -> None:
        self.level = 3

    def interface(self) -> Interface:
        return Interface(IFACE, properties=[
            Property("Level", "u", get=lambda: self.level, set=self.set_level),
            Property("Name", "s", get=lambda: "thing"),
            Property("Data", "ay", get=lambda: b"\x01\x02"),
        ])

    def set_level(self, value: int) -> None:
        self.level = value


@pytest.fixture
def thing(server: Connection) -> Thing:
    obj = Thing()
    server.add_object_manager("/app")
    server.export("/app/thing", [obj.interface()])
    return obj


async def test_get_getall_set(server: Connection, client: Connection, thing: Thing) -> None:
    dest = server.unique_name
    assert await client.call(dest, "/app/thing", PROPS, "Get", "ss", (IFACE, "Level")) == (
        ("u", 3),
    )
    (all_props,) = await client.call(dest, "/app/thing", PROPS, "GetAll", "s", (IFACE,))
    assert all_props == {"Level": ("u", 3), "Name": ("s", "thing"), "Data": ("ay", b"\x01\x02")}
    await client.call(dest, "/app/thing", PROPS, "Set", "ssv", (IFACE, "Level", ("u", 9)))
    assert thing.level == 9


@pytest.mark.parametrize(
    ("path", "member", "signature", "body", "error"),
    [
        ("/app/thing", "Set", "ssv", (IFACE, "Name", ("s", "x")), PROPERTY_READ_ONLY),
        ("/app/thing", "Set", "ssv", (IFACE, "Level", ("s", "x")), INVALID_ARGS),
        ("/app/thing", "Get", "ss", (IFACE, "Missing"), UNKNOWN_PROPERTY),
        ("/app/thing", "Get", "ss", ("com.example.None", "Level"), UNKNOWN_INTERFACE),
        ("/app/thing", "GetAll", "s", ("com.example.None",), UNKNOWN_INTERFACE),
        ("/app/thing", "Get", "s", (IFACE,), INVALID_ARGS),
        ("/app/ghost", "Get", "ss", (IFACE, "Level"), UNKNOWN_OBJECT),
    ],
)
async def test_property_errors(server: Connection, client: Connection, thing: Thing, path: str,
                               member: str, signature: str, body: tuple[object, ...],
                               error: str) -> None:
    with pytest.raises(DBusError) as info:
        await client.call(server.unique_name, path, PROPS, member, signature, body)
    assert info.value.name == error
    assert thing.level == 3



def thing_changes(server: Connection) -> MatchRule:
    """The rule for the thing's PropertiesChanged signals."""
    return MatchRule(sender=server.unique_name, path="/app/thing", interface=PROPS,
                     member="PropertiesChanged")

async def test_properties_changed_reaches_subscriber(
    server: Connection, client: Connection, thing: Thing
) -> None:
    rule = thing_changes(server)
    async with client.subscribe(rule) as signals:
        await server.emit_properties_changed("/app/thing", IFACE, {"Level": 5}, ["Name"])
        with trio.fail_after(2):
            sig = await signals.receive()
        assert sig.body == (IFACE, {"Level": ("u", 5)}, ["Name"])
        # a Set from a client announces the new value too
        await client.call(server.unique_name, "/app/thing", PROPS, "Set", "ssv",
                          (IFACE, "Level", ("u", 11)))
        with trio.fail_after(2):
            sig = await signals.receive()
        assert sig.body == (IFACE, {"Level": ("u", 11)}, [])


async def test_object_manager_contents_and_changes(
    server: Connection, client: Connection, thing: Thing
) -> None:
    dest = server.unique_name
    (objects,) = await client.call(dest, "/app", OM, "GetManagedObjects")
    assert set(objects) == {"/app/thing"}
    assert objects["/app/thing"][IFACE]["Level"] == ("u", 3)
    assert PROPS in objects["/app/thing"]
    rule = MatchRule(sender=dest, path="/app", interface=OM)
    async with client.subscribe(rule) as signals:
        other = Thing()
        server.export("/app/thing/child", [other.interface()])
        with trio.fail_after(2):
            added = await signals.receive()
        assert added.member == "InterfacesAdded"
        assert added.body[0] == "/app/thing/child"
        assert added.body[1][IFACE]["Name"] == ("s", "thing")
        server.unexport("/app/thing/child")
        with trio.fail_after(2):
            removed = await signals.receive()
        assert (removed.member, removed.body) == ("InterfacesRemoved",
                                                  ("/app/thing/child", [IFACE]))
    (objects,) = await client.call(dest, "/app", OM, "GetManagedObjects")
    assert set(objects) == {"/app/thing"}
    with pytest.raises(DBusError) as info:
        await client.call(dest, "/app/thing", OM, "GetManagedObjects")
    assert info.value.name == UNKNOWN_INTERFACE


async def test_a_property_exported_anew_is_announced_with_its_new_type(
    server: Connection, client: Connection, thing: Thing
) -> None:
    rule = thing_changes(server)
    async with client.subscribe(rule) as signals:
        await server.emit_properties_changed("/app/thing", IFACE, {"Level": 5})
        with trio.fail_after(2):
            assert (await signals.receive()).body == (IFACE, {"Level": ("u", 5)}, [])
        server.unexport("/app/thing")
        server.export("/app/thing", [Interface(IFACE, properties=[
            Property("Level", "s", get=lambda: "high")])])
        await server.emit_properties_changed("/app/thing", IFACE, {"Level": "low"})
        with trio.fail_after(2):
            assert (await signals.receive()).body == (IFACE, {"Level": ("s", "low")}, [])
        server.unexport("/app/thing")
        with pytest.raises(DBusError) as gone:
            await server.emit_properties_changed("/app/thing", IFACE, {"Level": "low"})
        assert gone.value.name == UNKNOWN_OBJECT
