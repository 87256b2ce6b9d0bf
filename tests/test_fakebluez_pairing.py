"""The fake's AgentManager1 and pairing, against agents exported by hand.

bluetoothd's behaviour is from ``src/agent.c`` (errors, the default agent,
Release), ``src/device.c`` (which Agent1 method an incoming request calls,
"No agent available for request type 2", Just Works repairing) and the
kernel's ``smp.c`` (the association model).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from hand_apps import HCI0

from mushpi_ble.dbus import CallContext, Connection, DBusError, Interface, MatchRule, Method
from mushpi_ble.dbus import open_connection as open_conn
from mushpi_ble.testing.fakebluez import FakeBluez
from mushpi_ble.testing.fakebluez.pairing import (
    CFM_PASSKEY,
    DSP_PASSKEY,
    JUST_WORKS,
    STATUS_AUTH_FAILED,
    association_model,
)

AGENT = "org.bluez.Agent1"
AGENT_MANAGER = "org.bluez.AgentManager1"
DEVICE = "org.bluez.Device1"
PROPS = "org.freedesktop.DBus.Properties"
OM = "org.freedesktop.DBus.ObjectManager"
PATH = "/test/agent"


class HandAgent:
    """An Agent1 exported by hand: records every call, answers as told."""

    def __init__(self, conn: Connection, path: str = PATH, *, refuse: bool = False,
                 stall: bool = False, passkey: int = 123456) -> None:
        self.conn = conn
        self.path = path
        self.refuse = refuse
        self.stall = stall
        self.passkey = passkey
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

        def method(name: str, sig: str, out: str = "") -> Method:
            return Method(name, sig, out, handler=lambda ctx, *args: self._answer(ctx, args))

        conn.export(path, [Interface(AGENT, methods=[
            method("RequestAuthorization", "o"), method("RequestConfirmation", "ou"),
            method("AuthorizeService", "os"), method("DisplayPasskey", "ouq"),
            method("RequestPasskey", "o", "u"), method("RequestPinCode", "o", "s"),
            method("Cancel", ""), method("Release", ""),
        ])])

    async def _answer(self, ctx: CallContext, args: tuple[Any, ...]) -> Any:
        self.calls.append((ctx.member, args))
        if ctx.member in ("Cancel", "Release", "DisplayPasskey"):
            return None
        if self.stall:
            await trio.sleep_forever()
        if self.refuse:
            raise DBusError("org.bluez.Error.Rejected", "no")
        return self.passkey if ctx.member == "RequestPasskey" else None

    def members(self) -> list[str]:
        return [member for member, _args in self.calls]

    async def wait_for(self, member: str, timeout: float = 3.0) -> None:
        """Calls sent without a reply expected arrive after the pairing returns."""
        with trio.fail_after(timeout):
            while member not in self.members():
                await trio.sleep(0.01)

    async def register(self, capability: str = "NoInputNoOutput", *,
                       default: bool = True) -> None:
        await self.conn.call("org.bluez", "/org/bluez", AGENT_MANAGER, "RegisterAgent", "os",
                             (self.path, capability))
        if default:
            await self.conn.call("org.bluez", "/org/bluez", AGENT_MANAGER,
                                 "RequestDefaultAgent", "o", (self.path,))


async def manager(conn: Connection, member: str, signature: str, *args: Any) -> None:
    await conn.call("org.bluez", "/org/bluez", AGENT_MANAGER, member, signature, args)


@pytest.fixture
async def bluez(bus_address: str) -> AsyncIterator[FakeBluez]:
    """bluetoothd that waits 1 s (not 60) for an agent's answer."""
    async with FakeBluez.serve(bus_address, agent_timeout=1.0) as fake:
        yield fake


@pytest.fixture
async def other_conn(bus_address: str) -> AsyncIterator[Connection]:
    async with open_conn(bus_address, call_timeout=3.0) as conn:
        yield conn


# --- AgentManager1 --------------------------------------------------------------------


async def test_register_and_request_default(bluez: FakeBluez, app_conn: Connection) -> None:
    agent = HandAgent(app_conn)
    await agent.register()
    default = bluez.default_agent
    assert default is not None
    assert (default.owner, default.path, default.capability) == (
        app_conn.unique_name, PATH, "NoInputNoOutput")
    assert bluez.agent_manager.io_capability == "NoInputNoOutput"


async def test_first_agent_is_the_default_until_another_asks(
        bluez: FakeBluez, app_conn: Connection, other_conn: Connection) -> None:
    first, second = HandAgent(app_conn), HandAgent(other_conn, "/other")
    await first.register("DisplayOnly", default=False)
    await second.register("KeyboardDisplay", default=False)
    assert bluez.default_agent is not None and bluez.default_agent.path == PATH
    await manager(other_conn, "RequestDefaultAgent", "o", "/other")
    assert bluez.default_agent.path == "/other"
    await manager(other_conn, "UnregisterAgent", "o", "/other")
    assert bluez.default_agent.path == PATH


async def test_one_agent_per_connection(bluez: FakeBluez, app_conn: Connection) -> None:
    await HandAgent(app_conn).register()
    with pytest.raises(DBusError) as err:
        await HandAgent(app_conn, "/another").register()
    assert err.value.name == "org.bluez.Error.AlreadyExists"
    assert len(bluez.agents) == 1


@pytest.mark.parametrize(("given", "parsed"), [
    ("", "KeyboardDisplay"), ("NoInput", "NoInputNoOutput"), ("Display", "DisplayOnly"),
    ("KeyboardOnly", "KeyboardOnly"),
])
async def test_capability_parsed_like_bluetoothd(bluez: FakeBluez, app_conn: Connection,
                                                 given: str, parsed: str) -> None:
    await HandAgent(app_conn).register(given)
    assert bluez.default_agent is not None and bluez.default_agent.capability == parsed


@pytest.mark.parametrize("capability", ["NoInputNoOutputX", "YesNo", "keyboarddisplay"])
async def test_bad_capability_is_invalid_arguments(bluez: FakeBluez, app_conn: Connection,
                                                   capability: str) -> None:
    with pytest.raises(DBusError) as err:
        await HandAgent(app_conn).register(capability)
    assert err.value.name == "org.bluez.Error.InvalidArguments"
    assert bluez.agents == []


async def test_unknown_agent_does_not_exist(bluez: FakeBluez, app_conn: Connection,
                                            other_conn: Connection) -> None:
    for member in ("UnregisterAgent", "RequestDefaultAgent"):
        with pytest.raises(DBusError) as err:
            await manager(app_conn, member, "o", PATH)
        assert err.value.name == "org.bluez.Error.DoesNotExist"
    await HandAgent(app_conn).register()
    for conn, path in ((app_conn, "/not/mine"), (other_conn, PATH)):
        with pytest.raises(DBusError) as err:
            await manager(conn, "UnregisterAgent", "o", path)
        assert err.value.name == "org.bluez.Error.DoesNotExist"
    assert bluez.default_agent is not None


async def test_unregister_then_register_again(bluez: FakeBluez, app_conn: Connection) -> None:
    agent = HandAgent(app_conn)
    await agent.register()
    await manager(app_conn, "UnregisterAgent", "o", PATH)
    assert bluez.agents == [] and bluez.default_agent is None
    await agent.register()
    assert bluez.default_agent is not None
    assert agent.members() == []  # unregistering sends no Release


async def test_agent_leaving_the_bus_is_dropped(bluez: FakeBluez, bus_address: str) -> None:
    async with open_conn(bus_address) as conn:
        await HandAgent(conn).register()
        assert bluez.default_agent is not None
    await bluez.wait_until(lambda: bluez.default_agent is None)


async def test_release_on_clean_shutdown_not_on_crash(bluez: FakeBluez,
                                                      app_conn: Connection) -> None:
    agent = HandAgent(app_conn)
    await agent.register()
    await bluez.restart(graceful=False)
    assert bluez.default_agent is None
    await trio.sleep(0.05)
    assert agent.members() == []
    await agent.register()
    await bluez.restart(graceful=True)
    await agent.wait_for("Release")
    assert agent.members() == ["Release"]
    assert bluez.agents == []


# --- pairing ---------------------------------------------------------------------------


async def test_just_works_with_an_agent(bluez: FakeBluez, app_conn: Connection) -> None:
    agent = HandAgent(app_conn)
    await agent.register()
    phone = await bluez.connect_central(address="aa:bb:cc:dd:ee:01")
    rule = MatchRule(path=phone.device_path, interface=PROPS, member="PropertiesChanged")
    async with app_conn.subscribe(rule) as signals:
        result = await phone.pair()
        with trio.fail_after(2):
            changes = [(await signals.receive()).body[1] for _ in range(2)]
    assert result.success and result.method == JUST_WORKS
    assert result.agent_call == "RequestAuthorization"
    assert agent.calls == [("RequestAuthorization", (phone.device_path,))]
    assert changes == [{"Bonded": ("b", True)}, {"Paired": ("b", True)}]
    assert phone.connected and phone.paired and phone.security == "medium"
    (props,) = await app_conn.call("org.bluez", phone.device_path, PROPS, "GetAll", "s",
                                   (DEVICE,))
    assert (props["Paired"], props["Bonded"], props["Trusted"]) == (
        ("b", True), ("b", True), ("b", False))


async def test_no_agent_fails_and_drops_the_link(bluez: FakeBluez, app_conn: Connection,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mushpi_ble.testing.fakebluez")
    phone = await bluez.connect_central()
    result = await phone.pair()
    assert not result.success
    assert (result.error, result.status, result.disconnected) == (
        "no-agent", STATUS_AUTH_FAILED, True)
    assert "No agent available for request type 2" in caplog.text
    assert not phone.connected and not phone.paired
    assert HCI0 + "/dev_11_22_33_44_55_66" not in (
        await app_conn.call("org.bluez", "/", OM, "GetManagedObjects"))[0]


async def test_refusing_agent(bluez: FakeBluez, app_conn: Connection) -> None:
    agent = HandAgent(app_conn, refuse=True)
    await agent.register()
    phone = await bluez.connect_central()
    result = await phone.pair()
    assert not result.success and result.error == "org.bluez.Error.Rejected"
    assert result.agent_call == "RequestAuthorization" and result.disconnected
    assert not phone.connected and not phone.paired


async def test_silent_agent_gets_cancel(bluez: FakeBluez, app_conn: Connection) -> None:
    agent = HandAgent(app_conn, stall=True)
    await agent.register()
    phone = await bluez.connect_central()
    result = await phone.pair()
    assert not result.success and result.error == "org.freedesktop.DBus.Error.NoReply"
    await agent.wait_for("Cancel")
    assert agent.members() == ["RequestAuthorization", "Cancel"]


async def test_bond_outlives_the_link_and_the_daemon(bluez: FakeBluez,
                                                     app_conn: Connection) -> None:
    agent = HandAgent(app_conn)
    await agent.register()
    phone = await bluez.connect_central(address="aa:bb:cc:dd:ee:02")
    assert (await phone.pair()).success
    path = phone.device_path
    await phone.disconnect()
    assert bluez.adapter().bonded_devices == ["AA:BB:CC:DD:EE:02"]
    await bluez.restart()
    (objects,) = await app_conn.call("org.bluez", "/", OM, "GetManagedObjects")
    device = objects[path][DEVICE]
    assert (device["Paired"], device["Bonded"], device["Connected"]) == (
        ("b", True), ("b", True), ("b", False))
    back = await bluez.connect_central(address="aa:bb:cc:dd:ee:02")
    assert back.device_path == path and back.paired


async def test_just_works_repairing_refused_without_asking(bluez: FakeBluez,
                                                           app_conn: Connection) -> None:
    agent = HandAgent(app_conn)
    await agent.register()
    phone = await bluez.connect_central()
    assert (await phone.pair()).success
    result = await phone.pair()
    assert not result.success and result.error == "repairing-refused"
    assert agent.members() == ["RequestAuthorization"]


async def test_remove_device_forgets_the_bond(bluez: FakeBluez, app_conn: Connection) -> None:
    agent = HandAgent(app_conn)
    await agent.register()
    phone = await bluez.connect_central()
    assert (await phone.pair()).success
    path = phone.device_path
    rule = MatchRule(path="/", interface=OM, member="InterfacesRemoved")
    async with app_conn.subscribe(rule) as signals:
        await app_conn.call("org.bluez", HCI0, "org.bluez.Adapter1", "RemoveDevice", "o",
                            (path,))
        with trio.fail_after(2):
            removed = await signals.receive()
    assert removed.body[0] == path
    assert bluez.adapter().bonded_devices == [] and not phone.connected
    again = await bluez.connect_central()
    assert not again.paired
    assert (await again.pair()).success
    assert agent.members() == ["RequestAuthorization", "RequestAuthorization"]


async def test_trusted_is_writable_and_announced(bluez: FakeBluez, app_conn: Connection) -> None:
    phone = await bluez.connect_central()
    rule = MatchRule(path=phone.device_path, interface=PROPS, member="PropertiesChanged")
    async with app_conn.subscribe(rule) as signals:
        await app_conn.call("org.bluez", phone.device_path, PROPS, "Set", "ssv",
                            (DEVICE, "Trusted", ("b", True)))
        with trio.fail_after(2):
            changed = await signals.receive()
    assert changed.body[1] == {"Trusted": ("b", True)}


async def test_not_pairable_refuses_bonding(bluez: FakeBluez, app_conn: Connection) -> None:
    agent = HandAgent(app_conn)
    await agent.register()
    await app_conn.call("org.bluez", HCI0, PROPS, "Set", "ssv",
                        ("org.bluez.Adapter1", "Pairable", ("b", False)))
    result = await (await bluez.connect_central()).pair()
    assert not result.success and result.error == "pairing-not-supported"
    assert agent.members() == []


async def test_numeric_comparison_asks_for_confirmation(bluez: FakeBluez,
                                                        app_conn: Connection) -> None:
    agent = HandAgent(app_conn)
    await agent.register("DisplayYesNo")
    phone = await bluez.connect_central()
    result = await phone.pair(io_capability="DisplayYesNo", mitm=True)
    assert result.success and result.method == CFM_PASSKEY
    ((member, (device, passkey)),) = agent.calls
    assert (member, device) == ("RequestConfirmation", phone.device_path)
    assert 0 <= passkey < 1_000_000
    assert phone.security == "high"


async def test_displayed_passkey_typed_by_the_phone(bluez: FakeBluez,
                                                    app_conn: Connection) -> None:
    agent = HandAgent(app_conn)
    await agent.register("DisplayOnly")
    phone = await bluez.connect_central()
    result = await phone.pair(io_capability="KeyboardOnly", mitm=True)
    assert result.success and result.method == DSP_PASSKEY
    await agent.wait_for("DisplayPasskey")
    ((member, (device, _passkey, entered)),) = agent.calls
    assert (member, device, entered) == ("DisplayPasskey", phone.device_path, 0)
    wrong = await bluez.connect_central(address="aa:bb:cc:dd:ee:03")
    result = await wrong.pair(io_capability="KeyboardOnly", mitm=True, passkey=1_000_000)
    assert not result.success and result.error == "passkey-mismatch"


def test_association_models() -> None:
    # a phone's Just Works request never reaches user space as anything but Just Works
    for local in ("NoInputNoOutput", "DisplayOnly", "KeyboardOnly"):
        assert association_model(local, "NoInputNoOutput", mitm=True, secure=True) == JUST_WORKS
    assert association_model("NoInputNoOutput", "KeyboardDisplay", mitm=False,
                             secure=True) == JUST_WORKS
    assert association_model("DisplayYesNo", "KeyboardDisplay", mitm=False,
                             secure=True) == "just-confirm"
    assert association_model("KeyboardDisplay", "NoInputNoOutput", mitm=True,
                             secure=True) == "just-confirm"
    assert association_model("KeyboardDisplay", "KeyboardDisplay", mitm=True,
                             secure=False) == "passkey-entry"


async def test_legacy_just_works_needs_no_agent(bluez: FakeBluez) -> None:
    phone = await bluez.connect_central()
    result = await phone.pair(secure_connections=False)
    assert result.success and result.agent_call is None and phone.paired
