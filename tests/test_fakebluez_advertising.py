"""LEAdvertisingManager1 of the fake: registration, sizes, releases, live changes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
from hand_apps import ADV_MANAGER, ADVERT, HCI0

from mushpi_ble.dbus import (
    CallTimeout,
    Connection,
    DBusError,
    Interface,
    Method,
    Property,
    open_connection,
)
from mushpi_ble.testing.fakebluez import FakeBluez, parse_advertisement

PROPS = "org.freedesktop.DBus.Properties"
UUID128 = "12345678-1234-5678-1234-56789abcdef0"
Variant = tuple[str, Any]


class HandAdvert:
    """An LEAdvertisement1 exported by hand; records Release and property writes."""

    def __init__(self, conn: Connection, path: str, props: dict[str, Variant]) -> None:
        self.conn = conn
        self.path = path
        self.props = dict(props)
        self.released = 0
        self.tx_power: int | None = None
        conn.export(path, [Interface(ADVERT, methods=[
            Method("Release", "", "", handler=self._release),
        ], properties=[
            *(Property(name, sig, get=self._getter(name))
              for name, (sig, _v) in props.items() if name != "TxPower"),
            *([Property("TxPower", "n", get=lambda: self.props["TxPower"][1],
                        set=self._set_tx_power)] if "TxPower" in props else []),
        ])])

    def _getter(self, name: str) -> Callable[[], Any]:
        return lambda: self.props[name][1]

    def _release(self, _ctx: Any) -> None:
        self.released += 1

    def _set_tx_power(self, value: int) -> None:
        self.tx_power = value

    async def register(self, adapter: str = HCI0) -> None:
        await self.conn.call("org.bluez", adapter, ADV_MANAGER, "RegisterAdvertisement",
                             "oa{sv}", (self.path, {}))

    async def unregister(self, adapter: str = HCI0) -> None:
        await self.conn.call("org.bluez", adapter, ADV_MANAGER, "UnregisterAdvertisement", "o",
                             (self.path,))

    async def change(self, name: str, variant: Variant) -> None:
        self.props[name] = variant
        await self.conn.emit_signal(self.path, PROPS, "PropertiesChanged", "sa{sv}as",
                                    (ADVERT, {name: variant}, []))


def peripheral(**props: Variant) -> dict[str, Variant]:
    return {"Type": ("s", "peripheral"), **props}


@pytest.fixture
async def bluez(bus_address: str) -> AsyncIterator[FakeBluez]:
    """bluetoothd that gives up on an application after 2 s (tests of its timeout)."""
    async with FakeBluez.serve(bus_address, call_timeout=2.0) as fake:
        yield fake


async def manager_props(conn: Connection, adapter: str = HCI0) -> dict[str, Any]:
    (props,) = await conn.call("org.bluez", adapter, PROPS, "GetAll", "s", (ADV_MANAGER,))
    return {k: v for k, (_s, v) in props.items()}


async def test_register_and_manager_properties(bluez: FakeBluez, app_conn: Connection) -> None:
    before = await manager_props(app_conn)
    assert before["ActiveInstances"] == 0 and before["SupportedInstances"] == 5
    assert before["SupportedIncludes"] == ["tx-power", "appearance", "local-name"]
    assert before["SupportedFeatures"] == []
    assert before["SupportedCapabilities"] == {
        "MinTxPower": ("n", -21), "MaxTxPower": ("n", 10), "MaxAdvLen": ("y", 31),
        "MaxScnRspLen": ("y", 31)}
    advert = HandAdvert(app_conn, "/adv0", peripheral(
        ServiceUUIDs=("as", [UUID128]), LocalName=("s", "MushPi")))
    await advert.register()
    registered = await bluez.wait_for_advertisement()
    assert (registered.sender, registered.path) == (app_conn.unique_name, "/adv0")
    assert registered.properties["LocalName"] == "MushPi"
    assert registered.local_name == "MushPi"
    assert registered.payload_size == 3 + 18
    assert registered.scan_response_size == 2 + 6
    after = await manager_props(app_conn)
    assert (after["ActiveInstances"], after["SupportedInstances"]) == (1, 4)


@pytest.mark.parametrize(("data_len", "accepted"), [(6, True), (7, False)])
async def test_size_limit_at_31_bytes(bluez: FakeBluez, app_conn: Connection, data_len: int,
                                      accepted: bool) -> None:
    # flags 3 + 128-bit UUID list 18 + manufacturer data 4 + data_len
    advert = HandAdvert(app_conn, "/adv0", peripheral(
        ServiceUUIDs=("as", [UUID128]),
        ManufacturerData=("a{qv}", {0xFFFF: ("ay", bytes(data_len))})))
    if accepted:
        await advert.register()
        assert (await bluez.wait_for_advertisement()).payload_size == 31
    else:
        with pytest.raises(DBusError) as info:
            await advert.register()
        assert (info.value.name, info.value.text) == ("org.bluez.Error.Failed",
                                                      "Failed to register advertisement")
        assert bluez.adapter().advertisements == []


@pytest.mark.parametrize(("props", "size"), [
    ({}, 3),
    ({"ServiceUUIDs": ("as", ["180d", "180f"])}, 3 + 2 + 4),
    ({"ServiceUUIDs": ("as", ["0000180d"])}, 3 + 2 + 4),
    ({"ServiceUUIDs": ("as", ["180d", "0000180d-0000-1000-8000-00805f9b34fb"])}, 3 + 4),
    ({"ServiceUUIDs": ("as", ["180d", UUID128])}, 3 + 4 + 18),
    ({"SolicitUUIDs": ("as", ["180d"])}, 3 + 4),
    ({"ServiceData": ("a{sv}", {"180d": ("ay", b"\x01\x02")})}, 3 + 2 + 2 + 2),
    ({"Appearance": ("q", 0x0540)}, 3 + 4),
    ({"Includes": ("as", ["appearance"])}, 3 + 4),
    ({"Includes": ("as", ["tx-power"])}, 3 + 3),
    ({"Includes": ("as", ["rsi", "no-such-thing"])}, 3),
    ({"TxPower": ("n", 4)}, 3),
    ({"Data": ("a{yv}", {0x26: ("ay", b"\x01\x02\x03")})}, 3 + 5),
    ({"LocalName": ("s", "a much longer name than fits anywhere at all")}, 3),
])
def test_payload_sizes(props: dict[str, Variant], size: int) -> None:
    payload = parse_advertisement(peripheral(**props), alias="pi",
                                  supported_includes=("tx-power", "appearance", "local-name"))
    assert payload.adv_size == size


def test_local_name_goes_to_the_scan_response() -> None:
    long_name = "x" * 40
    payload = parse_advertisement(peripheral(LocalName=("s", long_name)), alias="pi",
                                  supported_includes=())
    assert (payload.local_name, payload.advertised_name) == (long_name, "x" * 29)
    assert payload.scan_response_size == 31
    via_alias = parse_advertisement(peripheral(Includes=("as", ["local-name"])), alias="pi",
                                    supported_includes=("local-name",))
    assert (via_alias.local_name, via_alias.scan_response_size) == ("pi", 4)
    unsupported = parse_advertisement(peripheral(Includes=("as", ["local-name"])), alias="pi",
                                      supported_includes=())
    assert unsupported.local_name is None


@pytest.mark.parametrize("props", [
    {"Type": ("s", "central")},
    {"ServiceUUIDs": ("as", ["not-a-uuid"])},
    {"LocalName": ("s", "x"), "Includes": ("as", ["local-name"])},
    {"Appearance": ("q", 1), "Includes": ("as", ["appearance"])},
    {"TxPower": ("n", 30)},
    {"ManufacturerData": ("a{qv}", {1: ("ay", bytes(28))})},
    {"MinInterval": ("u", 100), "MaxInterval": ("u", 50)},
    {"SecondaryChannel": ("s", "2M")},
    {"Type": ("s", "broadcast"), "Discoverable": ("b", True)},
])
async def test_unparsable_advert(bluez: FakeBluez, app_conn: Connection,
                                 props: dict[str, Variant]) -> None:
    advert = HandAdvert(app_conn, "/adv0", peripheral(**props))
    with pytest.raises(DBusError) as info:
        await advert.register()
    assert (info.value.name, info.value.text) == ("org.bluez.Error.Failed",
                                                  "Failed to parse advertisement.")


async def test_instances_full(bus_address: str, app_conn: Connection) -> None:
    async with FakeBluez.serve(bus_address, supported_instances=1) as bluez:
        await HandAdvert(app_conn, "/adv0", peripheral()).register()
        with pytest.raises(DBusError) as info:
            await HandAdvert(app_conn, "/adv1", peripheral()).register()
        assert (info.value.name, info.value.text) == ("org.bluez.Error.NotPermitted",
                                                      "Maximum advertisements reached")
        assert len(bluez.adapter().advertisements) == 1


async def test_already_exists_and_does_not_exist(bluez: FakeBluez,
                                                 app_conn: Connection) -> None:
    advert = HandAdvert(app_conn, "/adv0", peripheral())
    await advert.register()
    with pytest.raises(DBusError) as info:
        await advert.register()
    assert info.value.name == "org.bluez.Error.AlreadyExists"
    await advert.unregister()
    assert bluez.adapter().advertisements == []
    assert advert.released == 0  # unregistering is not a release
    with pytest.raises(DBusError) as info:
        await advert.unregister()
    assert (info.value.name, info.value.text) == ("org.bluez.Error.DoesNotExist",
                                                  "Does Not Exist")


async def test_release_on_adapter_removal(bluez: FakeBluez, app_conn: Connection) -> None:
    advert = HandAdvert(app_conn, "/adv0", peripheral())
    await advert.register()
    await bluez.remove_adapter("hci0")
    with trio.fail_after(2):
        while not advert.released:
            await trio.sleep(0.01)
    assert advert.released == 1


async def test_release_on_timeout(bluez: FakeBluez, app_conn: Connection) -> None:
    advert = HandAdvert(app_conn, "/adv0", peripheral(Timeout=("q", 1)))
    await advert.register()
    await bluez.wait_until(lambda: not bluez.adapter().advertisements, timeout=3)
    with trio.fail_after(2):
        while not advert.released:
            await trio.sleep(0.01)
    assert (await manager_props(app_conn))["ActiveInstances"] == 0


async def test_release_on_graceful_restart_only(bluez: FakeBluez, app_conn: Connection) -> None:
    advert = HandAdvert(app_conn, "/adv0", peripheral())
    await advert.register()
    await bluez.restart(graceful=False)
    await advert.register()
    await bluez.restart()
    with trio.fail_after(2):
        while not advert.released:
            await trio.sleep(0.01)
    assert advert.released == 1 and bluez.adapter().advertisements == []


async def test_local_name_changes_live(bluez: FakeBluez, app_conn: Connection) -> None:
    advert = HandAdvert(app_conn, "/adv0", peripheral(LocalName=("s", "MushPi-1")))
    await advert.register()
    registered = await bluez.wait_for_advertisement()
    await advert.change("LocalName", ("s", "MushPi-2"))
    await bluez.wait_until(lambda: registered.local_name == "MushPi-2")
    assert registered.properties["LocalName"] == "MushPi-2"
    # a change that would not fit is refused and the old data stays
    await advert.change("ServiceUUIDs", ("as", [UUID128, "12345678-1234-5678-1234-"
                                                 "56789abcdef1"]))
    await advert.change("LocalName", ("s", "MushPi-3"))
    await bluez.wait_until(lambda: registered.local_name == "MushPi-3")
    assert "ServiceUUIDs" not in registered.properties


async def test_local_name_include_follows_alias(bluez: FakeBluez,
                                                app_conn: Connection) -> None:
    await app_conn.call("org.bluez", HCI0, PROPS, "Set", "ssv",
                        ("org.bluez.Adapter1", "Alias", ("s", "Shroom")))
    await HandAdvert(app_conn, "/adv0", peripheral(Includes=("as", ["local-name"]))).register()
    assert (await bluez.wait_for_advertisement()).local_name == "Shroom"


async def test_tx_power_only_with_can_set_tx_power(bus_address: str,
                                                   app_conn: Connection) -> None:
    async with FakeBluez.serve(bus_address) as bluez:
        plain = HandAdvert(app_conn, "/adv0", peripheral(TxPower=("n", -40)))
        await plain.register()
        assert (await bluez.wait_for_advertisement()).payload
        assert bluez.adapter().advertisements[0].tx_power is None
        assert plain.tx_power is None
    async with FakeBluez.serve(bus_address, can_set_tx_power=True) as bluez:
        assert (await manager_props(app_conn))["SupportedFeatures"] == ["CanSetTxPower"]
        able = HandAdvert(app_conn, "/adv1", peripheral(TxPower=("n", -40)))
        await able.register()
        assert bluez.adapter().advertisements[0].tx_power == -40
        with trio.fail_after(2):
            while able.tx_power is None:
                await trio.sleep(0.01)
        assert able.tx_power == -21  # clamped to what the controller can do


async def test_owner_leaving_drops_adverts(bluez: FakeBluez, bus_address: str) -> None:
    async with open_connection(bus_address) as conn:
        await HandAdvert(conn, "/adv0", peripheral()).register()
        assert len(bluez.adapter().advertisements) == 1
    await bluez.wait_until(lambda: not bluez.adapter().advertisements)


async def test_unreadable_advert_is_never_answered(bluez: FakeBluez,
                                                   app_conn: Connection) -> None:
    with pytest.raises(CallTimeout):
        await app_conn.call("org.bluez", HCI0, ADV_MANAGER, "RegisterAdvertisement", "oa{sv}",
                            ("/nowhere", {}), timeout=0.3)
    assert bluez.adapter().advertisements == []


async def test_refuse_next_advertisement(bluez: FakeBluez, app_conn: Connection) -> None:
    bluez.refuse_next_registration("org.bluez.Error.Failed", "busy",
                                   member="RegisterAdvertisement")
    advert = HandAdvert(app_conn, "/adv0", peripheral())
    with pytest.raises(DBusError) as info:
        await advert.register()
    assert info.value.text == "busy"
    await advert.register()
