"""The pairing agent (gatt/agent.py) against the fake bluetoothd on a private bus."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from rig import Rig as PortalRig
from rig import eventually, make_settings, start_rig

from mushpi_ble.cli import check
from mushpi_ble.config import ConfigError, load_settings
from mushpi_ble.dbus import Connection, DBusError, open_connection
from mushpi_ble.gatt.agent import (
    Decision,
    JustWorksPolicy,
    Pairing,
    PairingAgent,
    PairingLog,
    PairingRequest,
    agent_path,
    follow_bonds,
    policy_for_mode,
)
from mushpi_ble.gatt.names import AGENT_IFACE
from mushpi_ble.testing.fakebluez import FakeBluez

HCI0 = "/org/bluez/hci0"
PATH = agent_path("/com/mushpi/gatt")
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"


class Rig:
    """Our agent on its own connection, with the bond follower running."""

    def __init__(self, conn: Connection, bluez: FakeBluez) -> None:
        self.conn = conn
        self.bluez = bluez
        self.released = 0
        self.log = PairingLog(history=8)
        self.agent = PairingAgent(conn, PATH, JustWorksPolicy(), log_=self.log,
                                  on_release=self._on_release)

    def _on_release(self) -> None:
        self.released += 1

    async def call_as_bluez(self, member: str, signature: str = "",
                            *args: Any) -> tuple[Any, ...]:
        """Call our agent on the fake's own connection: as the owner of org.bluez."""
        return await self.bluez.runtime.call(self.conn.unique_name, PATH, AGENT_IFACE, member,
                                             signature, args)

    async def wait(self, predicate: Any, timeout: float = 2.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.01)


@pytest.fixture
async def rig(bus_address: str, bluez: FakeBluez) -> AsyncIterator[Rig]:
    async with open_connection(bus_address, call_timeout=2.0) as conn, \
            trio.open_nursery() as nursery:
        rig = Rig(conn, bluez)
        await rig.agent.register(timeout=2.0)
        await nursery.start(lambda task_status: follow_bonds(
            conn, HCI0, rig.log, timeout=2.0, task_status=task_status))
        yield rig
        nursery.cancel_scope.cancel()


async def test_registers_as_the_default_no_io_agent(rig: Rig, bluez: FakeBluez) -> None:
    default = bluez.default_agent
    assert default is not None
    assert (default.owner, default.path, default.capability) == (
        rig.conn.unique_name, PATH, "NoInputNoOutput")
    assert rig.agent.registered and rig.agent.registered_with == bluez.unique_name


async def test_registering_twice_is_harmless(rig: Rig, bluez: FakeBluez) -> None:
    await rig.agent.register(timeout=2.0)
    assert len(bluez.agents) == 1 and bluez.default_agent is not None


async def test_a_phone_pairs_with_just_works(rig: Rig, bluez: FakeBluez) -> None:
    phone = await bluez.connect_central(address="aa:bb:cc:00:00:01")
    result = await phone.pair()
    assert result.success and result.agent_call == "RequestAuthorization"
    await rig.wait(lambda: rig.log.counters["paired"] == 1)
    (attempt,) = rig.log.attempts
    assert (attempt.device, attempt.address, attempt.request, attempt.outcome) == (
        phone.device_path, "AA:BB:CC:00:00:01", "RequestAuthorization", "paired")
    assert rig.log.counters == {"requests": 1, "accepted": 1, "rejected": 0, "canceled": 0,
                                "paired": 1, "failed": 0}
    (bonded,) = rig.log.snapshot()["bonded_devices"]
    assert (bonded["address"], bonded["paired"], bonded["bonded"]) == (
        "AA:BB:CC:00:00:01", True, True)


async def test_encrypted_reads_need_the_pairing(rig: Rig, bluez: FakeBluez) -> None:
    """What EATT and encrypt-* flags need: the link is encrypted after Just Works."""
    phone = await bluez.connect_central()
    assert phone.security == "low"
    assert (await phone.pair()).success
    assert phone.security == "medium"


async def test_foreign_callers_are_refused(rig: Rig, client: Connection) -> None:
    for member, signature, args in (
            ("RequestAuthorization", "o", (HCI0 + "/dev_11_22_33_44_55_66",)),
            ("RequestConfirmation", "ou", (HCI0 + "/dev_11_22_33_44_55_66", 1234)),
            ("AuthorizeService", "os", (HCI0 + "/dev_11_22_33_44_55_66", "1812")),
            ("Cancel", "", ()), ("Release", "", ())):
        with pytest.raises(DBusError) as err:
            await client.call(rig.conn.unique_name, PATH, AGENT_IFACE, member, signature, args)
        assert err.value.name == ACCESS_DENIED
    assert rig.log.counters["requests"] == 0 and rig.agent.registered and rig.released == 0


async def test_just_works_accepts_and_refuses_what_it_cannot_do(rig: Rig) -> None:
    device = HCI0 + "/dev_11_22_33_44_55_66"
    await rig.call_as_bluez("RequestConfirmation", "ou", device, 123456)
    with pytest.raises(DBusError) as err:  # a BR/EDR profile: we serve none, in any mode
        await rig.call_as_bluez("AuthorizeService", "os", device,
                                "0000180d-0000-1000-8000-00805f9b34fb")
    assert err.value.name == "org.bluez.Error.Rejected"
    for member in ("RequestPasskey", "RequestPinCode"):
        with pytest.raises(DBusError) as err:
            await rig.call_as_bluez(member, "o", device)
        assert err.value.name == "org.bluez.Error.Rejected"
    with pytest.raises(DBusError):
        await rig.call_as_bluez("DisplayPinCode", "os", device, "0000")
    await rig.call_as_bluez("DisplayPasskey", "ouq", device, 123456, 0)
    outcomes = [(a.request, a.outcome) for a in rig.log.attempts]
    assert outcomes == [("RequestConfirmation", "accepted"), ("AuthorizeService", "rejected"),
                        ("RequestPasskey", "rejected"), ("RequestPinCode", "rejected"),
                        ("DisplayPinCode", "rejected"), ("DisplayPasskey", "rejected")]
    assert (rig.log.counters["requests"], rig.log.counters["accepted"],
            rig.log.counters["rejected"]) == (6, 1, 5)


class ShowPasskeyPolicy:
    """A later mode's shape: DisplayOnly, the passkey shown, others refused."""

    mode = "passkey"
    capability = "DisplayOnly"

    def __init__(self) -> None:
        self.shown: list[int | None] = []

    def decide(self, request: PairingRequest) -> Decision:
        if request.kind == "DisplayPasskey":
            self.shown.append(request.passkey)
            return Decision.yes()
        return Decision.no("passkey pairing only")


async def test_a_new_mode_is_a_new_policy(bus_address: str, bluez: FakeBluez) -> None:
    policy = ShowPasskeyPolicy()
    async with open_connection(bus_address) as conn:
        agent = PairingAgent(conn, PATH, policy)
        await agent.register(timeout=2.0)
        phone = await bluez.connect_central()
        result = await phone.pair(io_capability="KeyboardOnly", mitm=True)
        assert result.success and result.agent_call == "DisplayPasskey"
        with trio.fail_after(2):
            while not policy.shown:
                await trio.sleep(0.01)
        assert [a.outcome for a in agent.log.attempts] == ["displayed"]
        refused = await (await bluez.connect_central(address="aa:bb:cc:00:00:0a")).pair()
        assert not refused.success and refused.error == "org.bluez.Error.Rejected"
        await agent.unregister(timeout=1.0)


async def test_cancel_marks_the_open_attempt(rig: Rig) -> None:
    await rig.call_as_bluez("RequestAuthorization", "o", HCI0 + "/dev_11_22_33_44_55_66")
    await rig.call_as_bluez("Cancel")
    assert rig.log.counters["canceled"] == 1
    assert rig.log.attempts[-1].outcome == "canceled"


async def test_accepted_then_dropped_is_failed(rig: Rig, bluez: FakeBluez) -> None:
    phone = await bluez.connect_central()
    await rig.wait(lambda: phone.device_path in rig.log.devices)
    await rig.call_as_bluez("RequestAuthorization", "o", phone.device_path)
    await phone.disconnect()
    await rig.wait(lambda: rig.log.counters["failed"] == 1)
    assert rig.log.attempts[-1].outcome == "failed"


async def test_history_is_bounded_counters_are_not(rig: Rig) -> None:
    for _ in range(12):
        await rig.call_as_bluez("RequestAuthorization", "o", HCI0 + "/dev_11_22_33_44_55_66")
    assert len(rig.log.attempts) == 8 and rig.log.counters["requests"] == 12


async def test_bond_removed_leaves_the_list(rig: Rig, bluez: FakeBluez) -> None:
    phone = await bluez.connect_central()
    assert (await phone.pair()).success
    await rig.wait(lambda: rig.log.bonded)
    await rig.conn.call("org.bluez", HCI0, "org.bluez.Adapter1", "RemoveDevice", "o",
                        (phone.device_path,))
    await rig.wait(lambda: not rig.log.bonded)


async def test_release_on_bluetoothd_shutdown(rig: Rig, bluez: FakeBluez) -> None:
    await bluez.restart(graceful=True)
    await rig.wait(lambda: rig.released == 1)
    assert not rig.agent.registered and rig.agent.releases == 1


async def test_register_again_after_a_restart(rig: Rig, bluez: FakeBluez) -> None:
    for graceful in (True, False):
        await bluez.restart(graceful=graceful)
        assert bluez.default_agent is None
        rig.agent.forget_registration()
        await rig.agent.register(timeout=2.0)
        default = bluez.default_agent
        assert default is not None and default.owner == rig.conn.unique_name
        assert rig.agent.registered_with == bluez.unique_name
    phone = await bluez.connect_central()
    assert (await phone.pair()).success


async def test_unregister_on_stop_even_when_cancelled(rig: Rig, bluez: FakeBluez,
                                                      client: Connection) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await rig.agent.unregister(timeout=2.0)
    assert bluez.agents == [] and not rig.agent.registered and not rig.agent.exported
    with pytest.raises(DBusError):
        await client.call(rig.conn.unique_name, PATH, AGENT_IFACE, "Release")
    result = await (await bluez.connect_central()).pair()
    assert not result.success and result.error == "no-agent"
    await rig.agent.unregister(timeout=2.0)  # idempotent


async def test_unregister_is_bounded_when_bluetoothd_stalls(rig: Rig, bluez: FakeBluez) -> None:
    bluez.stop_reading()
    try:
        with trio.fail_after(2):
            await rig.agent.unregister(timeout=0.2)
    finally:
        bluez.resume_reading()
    assert not rig.agent.exported


async def test_bonds_known_before_we_started_are_listed(bus_address: str,
                                                        bluez: FakeBluez) -> None:
    phone = await bluez.connect_central(address="aa:bb:cc:00:00:09")
    result = await phone.pair(secure_connections=False)  # legacy Just Works: no agent asked
    assert result.success
    pairing_log = PairingLog()
    async with open_connection(bus_address) as conn, trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: follow_bonds(
            conn, HCI0, pairing_log, timeout=2.0, task_status=task_status))
        assert [d.address for d in pairing_log.bonded] == ["AA:BB:CC:00:00:09"]
        nursery.cancel_scope.cancel()


def test_modes() -> None:
    assert policy_for_mode("off") is None
    policy = policy_for_mode("just-works")
    assert policy is not None and policy.capability == "NoInputNoOutput"
    assert policy.decide(PairingRequest("RequestAuthorization", "/d")).accept
    assert not policy.decide(PairingRequest("RequestPasskey", "/d")).accept
    with pytest.raises(ValueError, match="window, passkey"):
        policy_for_mode("always")


def test_the_setting() -> None:
    assert load_settings({}).pairing_mode == "just-works"
    assert load_settings({"MUSHPI_BLE_PAIRING": "Off"}).ble_pairing == "off"
    with pytest.raises(ConfigError) as err:
        load_settings({"MUSHPI_BLE_PAIRING": "yes"})
    assert err.value.variable == "MUSHPI_BLE_PAIRING"
    assert "just-works, window, passkey, off" in str(err.value)


def test_gatt_knows_no_mushpi() -> None:
    source = Path(__file__).parents[1] / "mushpi_ble" / "gatt" / "agent.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    forbidden = ("mushpi_ble.protocol", "mushpi_ble.service", "mushpi_ble.config")
    assert not [m for m in imported if m.startswith(forbidden)]


async def test_mode_off_registers_nothing_but_shows_bonds(bus_address: str,
                                                         bluez: FakeBluez) -> None:
    async with open_connection(bus_address) as conn, trio.open_nursery() as nursery:
        pairing = Pairing(conn, PATH, "off")
        await pairing.register(timeout=2.0)
        await nursery.start(partial(pairing.run_bonds, HCI0, timeout=2.0))
        assert bluez.agents == [] and pairing.agent is None
        phone = await bluez.connect_central()
        result = await phone.pair()
        assert not result.success and result.error == "no-agent"
        snapshot = pairing.snapshot()
        assert (snapshot["mode"], snapshot["agent_registered"], snapshot["capability"],
                snapshot["requests"], snapshot["bonded_devices"]) == ("off", False, None, 0, [])
        await pairing.unregister(timeout=1.0)
        nursery.cancel_scope.cancel()


async def test_a_refused_registration_is_kept_not_fatal(bus_address: str,
                                                        bluez: FakeBluez) -> None:
    bluez.refuse_next_registration("org.freedesktop.DBus.Error.AccessDenied", "policy",
                                   member="RegisterAgent")
    async with open_connection(bus_address) as conn:
        pairing = Pairing(conn, PATH, "just-works")
        await pairing.register(timeout=2.0)
        snapshot = pairing.snapshot()
        assert not snapshot["agent_registered"]
        assert snapshot["agent_error"] == "org.freedesktop.DBus.Error.AccessDenied: policy"
        await pairing.register(timeout=2.0)
        assert pairing.snapshot()["agent_registered"] and pairing.last_error is None
        assert bluez.default_agent is not None
        await pairing.unregister(timeout=1.0)
        assert bluez.agents == []


async def run_check(bus: str, **env: str) -> str:
    settings = load_settings(environ={"MUSHPI_DBUS_BUS_TIMEOUT_MS": "500", **env},
                             env_file=None)
    findings = await check.run_checks(settings, bus, "/bin/false")
    assert not [f for f in findings if f.level == check.FAIL]
    return check.report(findings)


async def test_check_without_a_running_peripheral(bus_address: str, bluez: FakeBluez) -> None:
    text = await run_check(bus_address)
    assert "[info] pairing agent" in text and "none of ours is registered now" in text
    assert "accepted without a PIN" in text and "once the peripheral runs" in text
    assert bluez.agents == []  # the probe registered nothing


async def test_check_finds_the_registered_agent(bus_address: str, bluez: FakeBluez) -> None:
    async with open_connection(bus_address) as conn:
        pairing = Pairing(conn, PATH, "just-works")
        await pairing.register(timeout=2.0)
        text = await run_check(bus_address)
        await pairing.unregister(timeout=1.0)
    assert "[  ok] pairing agent" in text and f"exported by {conn.unique_name}" in text
    assert "once the peripheral runs" not in text


async def test_check_mode_off_and_not_pairable(bus_address: str, bluez: FakeBluez) -> None:
    text = await run_check(bus_address, MUSHPI_BLE_PAIRING="off")
    assert "MUSHPI_BLE_PAIRING=off: no agent of ours" in text
    async with open_connection(bus_address) as conn:
        await conn.call("org.bluez", HCI0, "org.freedesktop.DBus.Properties", "Set", "ssv",
                        ("org.bluez.Adapter1", "Pairable", ("b", False)))
    text = await run_check(bus_address)
    assert "[warn] pairing request" in text and "not pairable" in text


async def test_check_agent_manager_refusing(bus_address: str, bluez: FakeBluez) -> None:
    bluez.refuse_next_registration("org.freedesktop.DBus.Error.AccessDenied", "policy",
                                   member="UnregisterAgent")
    text = await run_check(bus_address)
    assert "[warn] pairing agent" in text and "cannot register its agent" in text


# --- wired into the peripheral ------------------------------------------------------------


@pytest.fixture
async def portal_rig(bus_address: str, bluez: FakeBluez) -> AsyncIterator[PortalRig]:
    """A running portal with a simulated controller on the fake bluetoothd."""
    running = await start_rig(bus_address, bluez, make_settings())
    try:
        yield running
    finally:
        await trio.to_thread.run_sync(running.portal.stop)


async def portal_agent_owner(portal_rig: PortalRig) -> str:
    conn = portal_rig.portal.peripheral.host.conn
    assert conn is not None
    return conn.unique_name


async def test_the_peripheral_registers_its_agent(portal_rig: PortalRig) -> None:
    owner = await portal_agent_owner(portal_rig)
    default = await portal_rig.bluez.wait_for_default_agent(owner=owner)
    assert (default.path, default.capability) == (
        agent_path("/com/mushpi/gatt"), "NoInputNoOutput")
    await eventually(lambda: portal_rig.portal.get_status()["pairing"]["agent_registered"])
    status = portal_rig.portal.get_status()["pairing"]
    assert (status["mode"], status["agent_registered"], status["capability"]) == (
        "just-works", True, "NoInputNoOutput")


async def test_a_phone_pairs_and_the_status_metrics_and_view_say_so(portal_rig: PortalRig) -> None:
    from mushpi_ble.cli.serve import render_view
    from mushpi_ble.prometheus import StatusCollector

    await portal_rig.bluez.wait_for_default_agent()  # start() returns before later steps
    phone = await portal_rig.bluez.connect_central(address="aa:bb:cc:00:00:07")
    assert (await phone.pair()).success
    await eventually(lambda: portal_rig.portal.get_status()["pairing"]["paired"] == 1)
    status = portal_rig.portal.get_status()["pairing"]
    assert status["requests"] == status["accepted"] == 1
    assert [d["address"] for d in status["bonded_devices"]] == ["AA:BB:CC:00:00:07"]
    assert status["recent"][-1]["outcome"] == "paired"
    metrics = {(s.name, s.labels.get("outcome")): s.value
               for m in StatusCollector(portal_rig.portal.get_status, dict).collect()
               for s in m.samples}
    assert metrics[("mushpi_ble_pairing_agent_registered", None)] == 1
    assert metrics[("mushpi_ble_pairing_requests_total", None)] == 1
    assert metrics[("mushpi_ble_pairing_outcomes_total", "paired")] == 1
    assert metrics[("mushpi_ble_bonded_devices", None)] == 1
    view = render_view(portal_rig.portal, portal_rig.controller)
    assert "Pairing: just-works, agent registered · 1 bonded: AA:BB:CC:00:00:07 connected" \
        in view
    assert "RequestAuthorization from AA:BB:CC:00:00:07: paired" in view


async def test_registered_again_after_every_bluetoothd_restart(portal_rig: PortalRig) -> None:
    owner = await portal_agent_owner(portal_rig)
    await portal_rig.bluez.wait_for_default_agent(owner=owner)
    for graceful in (True, False):
        await portal_rig.bluez.restart(graceful=graceful)
        await portal_rig.bluez.wait_for_default_agent(owner=owner, timeout=5.0)
        await eventually(lambda: portal_rig.portal.get_status()["pairing"]["agent_registered"])
    phone = await portal_rig.bluez.connect_central()
    assert (await phone.pair()).success


async def test_unregistered_on_stop(bus_address: str, bluez: FakeBluez) -> None:
    running = await start_rig(bus_address, bluez, make_settings())
    await bluez.wait_for_default_agent()
    await trio.to_thread.run_sync(running.portal.stop)
    assert bluez.agents == []
    assert not running.portal.get_status()["pairing"]["agent_registered"]


async def test_pairing_off_registers_no_agent(bus_address: str, bluez: FakeBluez) -> None:
    running = await start_rig(bus_address, bluez, make_settings(MUSHPI_BLE_PAIRING="off"))
    try:
        assert bluez.agents == []
        status = running.portal.get_status()["pairing"]
        assert (status["mode"], status["agent_registered"]) == ("off", False)
        result = await (await bluez.connect_central()).pair()
        assert not result.success and result.error == "no-agent" and result.disconnected
    finally:
        await trio.to_thread.run_sync(running.portal.stop)


async def test_check_sees_the_running_peripheral_agent(bus_address: str,
                                                       portal_rig: PortalRig) -> None:
    owner = await portal_agent_owner(portal_rig)
    await portal_rig.bluez.wait_for_default_agent(owner=owner)
    text = await run_check(bus_address)
    assert "[  ok] pairing agent" in text and f"exported by {owner}" in text


async def test_the_agent_decides_for_its_own_adapter_only(bus_address: str) -> None:
    """bluetoothd asks the default agent about every adapter; a device of another
    adapter (another program's, or the phone's side in a one-host test rig) is not
    ours to accept."""
    async with FakeBluez.serve(bus_address, adapters=("hci0", "hci1")) as bluez:
        running = await start_rig(bus_address, bluez, make_settings())
        try:
            await bluez.wait_for_default_agent()
            await eventually(lambda: running.portal.peripheral.steps.agent.pairing is not None
                             and running.portal.peripheral.steps.agent.pairing.registered)
            stranger = await bluez.connect_central(adapter="hci1", address="aa:bb:cc:00:00:08")
            assert not (await stranger.pair()).success
            ours = await bluez.connect_central(adapter="hci0", address="aa:bb:cc:00:00:09")
            assert (await ours.pair()).success
            recent = running.portal.get_status()["pairing"]["recent"]
            refused = [a for a in recent if a["address"] == "AA:BB:CC:00:00:08"]
            assert refused and refused[0]["outcome"] == "rejected"
            assert "is not a device of /org/bluez/hci0" in refused[0]["reason"]
        finally:
            await trio.to_thread.run_sync(running.portal.stop)
