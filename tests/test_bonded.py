"""Bonded means bonded: every way around the pairing window, walked on the fake bluetoothd.

Each test plays one attacker's path: another local client's agent taking the default
slot, bonds made before bonded mode, BR/EDR (the kernel's own Just Works, a profile
asking AuthorizeService), a subscription from an unpaired device, a second phone in
the grower's window, a journal reader waiting for a passkey, a phone name carrying
terminal escapes; and the approved list itself (restart, corrupt file).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from rig import NOW, Rig, eventually, make_settings, start_rig, status_until

from mushpi_ble.access import RoomAccess
from mushpi_ble.cli import main
from mushpi_ble.cli.serve import render_view
from mushpi_ble.config import ConfigError
from mushpi_ble.dbus import (
    CallContext,
    Connection,
    DBusError,
    Interface,
    Method,
    open_connection,
)
from mushpi_ble.gatt import Pairing
from mushpi_ble.prometheus import StatusCollector
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.fakebluez import AttError, FakeBluez, FakeCentral

UUID = CHARACTERISTIC_UUIDS
STAGE = struct.pack("<BBBIHB", 0, 2, 3, int(NOW - 10), 14, 0)
PHONE = "11:22:33:44:55:66"
NEIGHBOUR = "66:55:44:33:22:11"
HID = "00001124-0000-1000-8000-00805f9b34fb"
APPROVALS = "approved-bonds.json"


@asynccontextmanager
async def room(bus_address: str, bluez: FakeBluez, state_dir: Path | None = None,
               **env: str) -> AsyncIterator[Rig]:
    """A portal whose writes (by default) need an approved bond; its agent registered."""
    env = {"MUSHPI_BLE_WRITE_ACCESS": "bonded", **env}
    if state_dir is not None:
        env["MUSHPI_BLE_STATE_DIR"] = str(state_dir)
    rig = await start_rig(bus_address, bluez, make_settings(**env))
    try:
        await status_until(rig.portal, lambda s: s["pairing"]["agent_registered"])
        yield rig
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)


def setter_calls(rig: Rig) -> int:
    return sum(1 for name, _ in rig.controller.writes if name == "stage_state")


async def refused(central: FakeCentral) -> AttError:
    with pytest.raises(AttError) as err:
        await central.write(UUID["stage_state"], STAGE)
    return err.value


@asynccontextmanager
async def rogue_default_agent(bus_address: str) -> AsyncIterator[list[str]]:
    """Another local client (``bt-agent``, ``bluetoothctl default-agent``) registers an
    accept-everything agent and takes the default slot; bluetoothd tells us nothing."""
    asked: list[str] = []

    def accept(ctx: CallContext, *_args: object) -> None:
        asked.append(ctx.member)

    async with open_connection(bus_address, call_timeout=2.0) as conn:
        conn.export("/rogue/agent", [Interface("org.bluez.Agent1", methods=[
            Method("RequestAuthorization", "o", handler=accept),
            Method("RequestConfirmation", "ou", handler=accept),
            Method("AuthorizeService", "os", handler=accept),
            Method("Cancel", handler=accept),
            Method("Release", handler=accept),
        ])])
        for member, signature, body in (
                ("RegisterAgent", "os", ("/rogue/agent", "NoInputNoOutput")),
                ("RequestDefaultAgent", "o", ("/rogue/agent",))):
            await conn.call("org.bluez", "/org/bluez", "org.bluez.AgentManager1", member,
                            signature, body)
        yield asked


# -- 1. another agent takes the default slot ------------------------------------------------
async def test_a_bond_made_through_another_agent_is_refused_and_warned(
        bus_address: str, bluez: FakeBluez, caplog: pytest.LogCaptureFixture) -> None:
    async with room(bus_address, bluez) as rig, rogue_default_agent(bus_address) as asked:
        assert bluez.default_agent is not None and bluez.default_agent.path == "/rogue/agent"
        phone = await bluez.connect_central(address=NEIGHBOUR)
        assert (await refused(phone)).code == 0x0F  # bluetoothd: pair first
        assert (await phone.pair()).success  # the other agent said yes; ours was not asked
        assert asked == ["RequestAuthorization"]
        error = await refused(phone)
        assert error.code == 0x08 and error.dbus_error == "org.bluez.Error.NotAuthorized"
        assert setter_calls(rig) == 0
        status = await status_until(rig.portal, lambda s: s["access"]["unapproved_bonds"] == 1)
        assert status["access"]["unapproved"] == [NEIGHBOUR]
        assert status["access"]["refused"]["not-approved"] == 1
        metrics = {s.name: s.value for m in StatusCollector(rig.portal.get_status, dict).collect()
                   for s in m.samples}
        assert metrics["mushpi_ble_unapproved_bonds"] == 1
        assert f"NOT APPROVED bonds (1): {NEIGHBOUR}" in render_view(rig.portal, rig.controller)
        assert status["pairing"]["accepted"] == 0
        warnings = [r.getMessage() for r in caplog.records
                    if r.levelno == logging.WARNING and NEIGHBOUR in r.getMessage()]
        assert any("not approved" in w for w in warnings), warnings
        # once per device, not per request
        await refused(phone)
        assert sum("bond not approved" in r.getMessage() for r in caplog.records) == 1


# -- 2. bonds made before bonded mode -----------------------------------------------------------
async def test_bonds_made_before_bonded_mode_need_the_growers_approval(
        bus_address: str, bluez: FakeBluez, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # an open room with just-works bonded the grower's phone and a neighbour's
    async with room(bus_address, bluez, tmp_path, MUSHPI_BLE_WRITE_ACCESS="open") as rig:
        for address in (PHONE, NEIGHBOUR):
            central = await bluez.connect_central(address=address)
            assert (await central.pair()).success
            await central.disconnect()
    assert sorted(bluez.adapter().bonded_devices) == sorted([PHONE, NEIGHBOUR])
    # the grower switches to bonded: nothing is adopted silently
    async with room(bus_address, bluez, tmp_path) as rig:
        status = await status_until(rig.portal, lambda s: s["access"]["unapproved_bonds"] == 2)
        assert sorted(status["access"]["unapproved"]) == sorted([PHONE, NEIGHBOUR])
        neighbour = await bluez.connect_central(address=NEIGHBOUR, security="medium")
        assert (await refused(neighbour)).code == 0x08
        code, out = await cli(capsys, "bonds", "--bus", bus_address)
        assert code == 0 and "approved" in out.splitlines()[0]
        assert {line.split()[0]: line.split()[-1] for line in out.splitlines()[1:]} == {
            PHONE: "bonded,NOT-APPROVED", NEIGHBOUR: "connected,NOT-APPROVED"}
        # the grower approves their own phone, removes the stranger
        code, out = await cli(capsys, "bonds", "--bus", bus_address, "--approve", PHONE.lower())
        assert code == 0 and f"approved: {PHONE}" in out
        code, _ = await cli(capsys, "bonds", "--bus", bus_address, "--remove", NEIGHBOUR)
        assert code == 0
        phone = await bluez.connect_central(address=PHONE, security="medium")
        await phone.write(UUID["stage_state"], STAGE)
        assert setter_calls(rig) == 1
        await status_until(rig.portal, lambda s: s["access"]["unapproved_bonds"] == 0)
        await phone.disconnect()
        code, text = await cli(capsys, "bonds", "--bus", bus_address, "--approve", NEIGHBOUR)
        assert code == 1 and "no bonded phone" in text  # approving needs a bond
    # the approval survives a restart; removing the bond removes it
    stored = json.loads((tmp_path / APPROVALS).read_text())
    assert [b["address"] for b in stored["bonds"]] == [PHONE]
    async with room(bus_address, bluez, tmp_path) as rig:
        await status_until(rig.portal, lambda s: s["access"]["approved"] == [PHONE])
        phone = await bluez.connect_central(address=PHONE, security="medium")
        await phone.write(UUID["stage_state"], STAGE)
        await trio.to_thread.run_sync(rig.portal.remove_bond, PHONE)
        assert rig.portal.get_status()["access"]["approved"] == []
    await eventually(lambda: PHONE not in (tmp_path / APPROVALS).read_text())


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = await trio.to_thread.run_sync(main, list(argv))
    except SystemExit as exc:
        return 1, str(exc.code)
    return code, capsys.readouterr().out


# -- 3. BR/EDR ------------------------------------------------------------------------------
async def test_bredr_bonds_and_requests_are_refused(bus_address: str,
                                                    bluez: FakeBluez) -> None:
    async with room(bus_address, bluez, MUSHPI_BLE_READ_ACCESS="bonded") as rig:
        # the kernel accepts BR/EDR Just Works without asking our agent (window closed)
        laptop = await bluez.connect_central(address=NEIGHBOUR, transport="BR/EDR")
        assert (await laptop.pair()).success and laptop.paired
        await status_until(rig.portal, lambda s: s["access"]["unapproved"] == [NEIGHBOUR])
        assert rig.portal.get_status()["pairing"]["requests"] == 0  # nobody asked us
        assert (await refused(laptop)).code == 0x08
        with pytest.raises(AttError) as err:
            await laptop.read(UUID["stage_state"])
        assert err.value.code == 0x08
        # even an approved phone may not use BR/EDR: the gate reads `link`
        await trio.to_thread.run_sync(rig.portal.approve_bond, NEIGHBOUR)
        assert (await refused(laptop)).code == 0x08
        status = rig.portal.get_status()["access"]
        assert status["refused"]["not-le"] == 3 and status["unapproved"] == []
        assert setter_calls(rig) == 0


@pytest.mark.parametrize("mode", ["just-works", "window", "passkey"])
async def test_authorize_service_is_rejected_in_every_mode(bus_address: str, bluez: FakeBluez,
                                                           mode: str) -> None:
    access = "open" if mode == "just-works" else "bonded"
    async with room(bus_address, bluez, MUSHPI_BLE_WRITE_ACCESS=access,
                    MUSHPI_BLE_PAIRING=mode) as rig:
        if mode != "just-works":
            rig.portal.open_pairing_window(60)
        keyboard = await bluez.connect_central(address=NEIGHBOUR, transport="BR/EDR")
        assert not await keyboard.connect_profile(HID)
        recent = rig.portal.get_status()["pairing"]["recent"]
        assert recent[-1]["request"] == "AuthorizeService"
        assert recent[-1]["outcome"] == "rejected"


# -- 4. subscriptions ---------------------------------------------------------------------------
async def test_an_unpaired_subscription_is_refused_and_gets_nothing(
        bus_address: str, bluez: FakeBluez) -> None:
    async with room(bus_address, bluez, MUSHPI_BLE_READ_ACCESS="bonded",
                    MUSHPI_BLE_WRITE_ACCESS="open") as rig:
        # encrypted but not paired: a bluetoothd that did not enforce encrypt-notify
        stranger = await bluez.connect_central(address=NEIGHBOUR, security="medium")
        with pytest.raises(AttError):
            await stranger.read(UUID["env_measurements"])
        await stranger.subscribe(UUID["env_measurements"])  # the CCC write itself succeeds
        rig.portal.open_pairing_window(60)
        friend = await bluez.connect_central(address=PHONE)
        assert (await friend.pair()).success
        await friend.subscribe(UUID["env_measurements"])
        await friend.next_notification(UUID["env_measurements"])  # the current value
        rig.portal.publish_env(22.5, 80.0, 900, 100)
        await friend.next_notification(UUID["env_measurements"])
        assert stranger.notifications(UUID["env_measurements"]) == []
        status = rig.portal.get_status()
        assert list(status["notify"]["phones"]) == [friend.device_path]
        assert status["access"]["refused"]["not-bonded"] >= 2


async def test_signal_notifications_cannot_be_gated_so_bonded_reads_refuse_them() -> None:
    with pytest.raises(ConfigError) as err:
        make_settings(MUSHPI_BLE_READ_ACCESS="bonded", MUSHPI_BLE_NOTIFY_MODE="signal")
    assert err.value.variable == "MUSHPI_BLE_NOTIFY_MODE"
    assert "StartNotify" in str(err.value)


# -- 5. one window, one new phone -------------------------------------------------------------
async def test_a_window_admits_one_new_phone(bus_address: str, bluez: FakeBluez,
                                             caplog: pytest.LogCaptureFixture) -> None:
    async with room(bus_address, bluez) as rig:
        rig.portal.open_pairing_window(120)
        mine = await bluez.connect_central(address=PHONE)
        assert (await mine.pair()).success
        await status_until(rig.portal, lambda s: not s["access"]["window_open"])
        neighbour = await bluez.connect_central(address=NEIGHBOUR)
        result = await neighbour.pair()
        assert not result.success
        assert rig.portal.get_status()["pairing"]["recent"][-1]["reason"] == \
            "pairing window closed"
        await mine.write(UUID["stage_state"], STAGE)
        assert setter_calls(rig) == 1
        new_bond = [r for r in caplog.records if "new bond approved" in r.getMessage()]
        assert len(new_bond) == 1 and new_bond[0].levelno == logging.WARNING
        assert PHONE in new_bond[0].getMessage()
        assert rig.portal.get_status()["access"]["approved"] == [PHONE]


async def test_two_phones_pairing_at_once_in_one_window(bus_address: str,
                                                        bluez: FakeBluez) -> None:
    async with room(bus_address, bluez) as rig:
        rig.portal.open_pairing_window(120)
        mine = await bluez.connect_central(address=PHONE)
        neighbour = await bluez.connect_central(address=NEIGHBOUR)
        keys = trio.Event()
        results = {}

        async def pair(central: FakeCentral) -> None:
            results[central.address] = await central.pair(keys_after=keys)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pair, mine)
            await status_until(rig.portal, lambda s: s["pairing"]["accepted"] == 1)
            nursery.start_soon(pair, neighbour)
            await status_until(rig.portal, lambda s: s["pairing"]["rejected"] == 1)
            keys.set()
        assert results[PHONE].success and not results[NEIGHBOUR].success
        assert rig.portal.get_status()["pairing"]["recent"][-1]["reason"] == \
            "pairing window full (1 new phone per window)"
        await status_until(rig.portal, lambda s: s["access"]["approved"] == [PHONE])


async def test_a_window_may_admit_more_phones(bus_address: str, bluez: FakeBluez) -> None:
    async with room(bus_address, bluez, MUSHPI_BLE_PAIRING_WINDOW_BONDS="0") as rig:
        rig.portal.open_pairing_window(120)
        for address in (PHONE, NEIGHBOUR):
            central = await bluez.connect_central(address=address)
            assert (await central.pair()).success
        status = await status_until(rig.portal, lambda s: len(s["access"]["approved"]) == 2)
        assert status["access"]["window_open"]


def test_the_window_bonds_setting_is_checked() -> None:
    assert make_settings().ble_pairing_window_bonds == 1
    for bad in ("-1", "101", "one"):
        with pytest.raises(ConfigError) as err:
            make_settings(MUSHPI_BLE_PAIRING_WINDOW_BONDS=bad)
        assert err.value.variable == "MUSHPI_BLE_PAIRING_WINDOW_BONDS"


# -- 6. the passkey goes only where the grower looks ------------------------------------------
@pytest.mark.parametrize("callback", [True, False])
async def test_the_passkey_is_logged_only_without_a_callback(
        bus_address: str, bluez: FakeBluez, caplog: pytest.LogCaptureFixture,
        callback: bool) -> None:
    caplog.set_level(logging.INFO)
    shown: list[tuple[str, int]] = []
    async with room(bus_address, bluez, MUSHPI_BLE_PAIRING="passkey") as rig:
        if callback:
            rig.portal.set_callbacks(on_pairing_passkey=lambda a, p: shown.append((a, p)))
        rig.portal.open_pairing_window(60)
        phone = await bluez.connect_central(address=PHONE)

        async def typed() -> int:
            status = await status_until(rig.portal, lambda s: s["pairing"]["passkey"])
            return int(status["pairing"]["passkey"]["passkey"])  # the live view's line

        assert (await phone.pair(io_capability="KeyboardDisplay", mitm=True,
                                 passkey=typed)).success
        passkey = rig.portal.get_status()["pairing"]["passkey"]["passkey"]
        logged = [r for r in caplog.records if passkey in r.getMessage()]
        if callback:
            await eventually(lambda: shown)
            assert shown == [(PHONE, int(passkey))]
            assert logged == []
        else:
            assert len(logged) == 1 and logged[0].levelno == logging.WARNING
            assert "journal" in logged[0].getMessage()


# -- 7. names are escaped ---------------------------------------------------------------------
async def test_a_phone_name_cannot_reach_the_terminal_raw(
        bus_address: str, bluez: FakeBluez, capsys: pytest.CaptureFixture[str]) -> None:
    async with room(bus_address, bluez) as rig:
        rig.portal.open_pairing_window(60)
        phone = await bluez.connect_central(address=PHONE)
        bluez.adapter().set_name(PHONE, "evil\x1b[2J\x1b]0;owned\x07\u202ephone")
        assert (await phone.pair()).success
        await eventually(lambda: rig.portal.bonds())
        code, out = await cli(capsys, "bonds", "--bus", bus_address)
        assert code == 0
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
        assert "evil\\x1b[2J\\x1b]0;owned\\x07\\u202ephone"[:24] in out
        code, out = await cli(capsys, "bonds", "--bus", bus_address, "--json")
        assert json.loads(out)[0]["name"] == "evil\\x1b[2J\\x1b]0;owned\\x07\\u202ephone"


# -- the approved list --------------------------------------------------------------------------
async def test_a_corrupt_approved_list_approves_nothing_and_is_kept(
        bus_address: str, bluez: FakeBluez, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    async with room(bus_address, bluez, tmp_path) as rig:
        rig.portal.open_pairing_window(60)
        phone = await bluez.connect_central(address=PHONE)
        assert (await phone.pair()).success
        await status_until(rig.portal, lambda s: s["access"]["approved"] == [PHONE])
        await phone.disconnect()
    await eventually(lambda: PHONE in (tmp_path / APPROVALS).read_text())
    garbage = (tmp_path / APPROVALS).read_text()[:-7]  # a write cut short
    (tmp_path / APPROVALS).write_text(garbage)
    async with room(bus_address, bluez, tmp_path) as rig:
        status = rig.portal.get_status()["access"]
        assert status["approved"] == [] and "not valid" in status["approvals"]["error"]
        kept = Path(status["approvals"]["kept_as"])
        assert kept.parent == tmp_path and kept.read_text() == garbage
        assert any(r.levelno == logging.ERROR and str(kept) in r.getMessage()
                   for r in caplog.records)
        phone = await bluez.connect_central(address=PHONE, security="medium")
        assert (await refused(phone)).code == 0x08  # nothing approved by accident
        await trio.to_thread.run_sync(rig.portal.approve_bond, PHONE)
        await phone.write(UUID["stage_state"], STAGE)
    assert json.loads((tmp_path / APPROVALS).read_text())["bonds"][0]["address"] == PHONE


def test_the_state_directory_must_exist_where_access_is_bonded(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as err:
        make_settings(MUSHPI_BLE_WRITE_ACCESS="bonded", MUSHPI_BLE_STATE_DIR=str(missing))
    assert err.value.variable == "MUSHPI_BLE_STATE_DIR"
    assert "approved" in str(err.value)
    make_settings(MUSHPI_BLE_STATE_DIR=str(missing))  # open access keeps no list
    with pytest.raises(ConfigError):
        make_settings(MUSHPI_BLE_STATE_DIR="relative/dir")


async def test_the_management_interface_approves_a_bond(bus_address: str,
                                                        bluez: FakeBluez) -> None:
    """ApproveBond is checked like every management call (GetConnectionUnixUser)."""
    async with room(bus_address, bluez) as rig:
        phone = await bluez.connect_central(address=PHONE, security="medium")
        bluez.adapter().set_paired(PHONE, bonded=True)
        await status_until(rig.portal, lambda s: s["access"]["unapproved_bonds"] == 1)
        async with open_connection(bus_address) as caller:
            await caller.call("org.mushpi.Ble", "/org/mushpi/Ble", "org.mushpi.Ble1",
                              "ApproveBond", "s", (PHONE,))
            with pytest.raises(DBusError) as err:
                await caller.call("org.mushpi.Ble", "/org/mushpi/Ble", "org.mushpi.Ble1",
                                  "ApproveBond", "s", ("nonsense",))
            assert err.value.name == "org.freedesktop.DBus.Error.InvalidArgs"
        await phone.write(UUID["stage_state"], STAGE)
        assert setter_calls(rig) == 1


async def test_an_approved_address_paired_again_elsewhere_loses_its_approval(
        bus_address: str, bluez: FakeBluez) -> None:
    """Another client removes the grower's bond and pairs a phone spoofing its address
    through its own agent: the new bond is not the approved one."""
    async with room(bus_address, bluez) as rig:
        rig.portal.open_pairing_window(60)
        mine = await bluez.connect_central(address=PHONE)
        assert (await mine.pair()).success
        await status_until(rig.portal, lambda s: s["access"]["approved"] == [PHONE])
        await mine.disconnect()
        async with rogue_default_agent(bus_address):
            async with open_connection(bus_address) as other:
                await other.call("org.bluez", "/org/bluez/hci0", "org.bluez.Adapter1",
                                 "RemoveDevice", "o", (mine.device_path,))
            await status_until(rig.portal, lambda s: s["access"]["bonded_count"] == 0)
            spoof = await bluez.connect_central(address=PHONE)
            assert (await spoof.pair()).success
            assert (await refused(spoof)).code == 0x08
        status = await status_until(rig.portal, lambda s: s["access"]["approved"] == [])
        assert status["access"]["unapproved"] == [PHONE]
        assert setter_calls(rig) == 0


async def test_a_bond_found_before_the_list_of_bonds_is_read_keeps_its_approval(
        bus_address: str, client: Connection) -> None:
    """After a (re)start a phone may write before its bond is read: bluetoothd's answer
    to the gate then finds the bond; it does not withdraw an approval."""
    access = RoomAccess(make_settings(MUSHPI_BLE_WRITE_ACCESS="bonded"))
    assert access.approvals is not None
    access.approvals.add(PHONE, "grower")
    pairing = Pairing(client, "/agent", "window", window=access.window,
                      on_bond=access.bond_made)
    access.attach(client, pairing)
    path = "/org/bluez/hci0/dev_" + PHONE.replace(":", "_")
    access._bond_seen(path, {"Address": PHONE, "Paired": True})
    assert PHONE in access.approvals and access.snapshot()["unapproved"] == []
    # seen unpaired, then paired without our agent: a new bond, not the approved one
    pairing.log.update_device(path, {"Paired": False})
    access._bond_seen(path, {"Paired": True})
    assert PHONE not in access.approvals and access.snapshot()["unapproved"] == [PHONE]


# -- mushpi-ble check ---------------------------------------------------------------------------
def test_check_names_bluetoothds_settings_that_decide_what_a_bond_is_worth(
        tmp_path: Path) -> None:
    from mushpi_ble.cli import check

    settings = make_settings(MUSHPI_BLE_WRITE_ACCESS="bonded")
    conf = tmp_path / "main.conf"
    conf.write_text("[General]\n#ControllerMode = dual\n")
    stock = {f.topic: f for f in check.bonded_security_findings(settings, conf)}
    assert stock["BR/EDR"].level == check.WARN
    assert "`ControllerMode = le`" in stock["BR/EDR"].message
    assert stock["Just Works re-pairing"].level == check.OK
    assert stock["Secure Connections"].level == check.OK
    conf.write_text("[General]\nControllerMode = le\nJustWorksRepairing = always\n"
                    "SecureConnections = off\n")
    tuned = {f.topic: f for f in check.bonded_security_findings(settings, conf)}
    assert tuned["BR/EDR"].level == check.OK
    assert tuned["Just Works re-pairing"].level == check.WARN
    assert tuned["Secure Connections"].level == check.WARN


async def test_check_lists_bonds_the_grower_has_not_approved(
        bus_address: str, bluez: FakeBluez, tmp_path: Path) -> None:
    from mushpi_ble.cli import check

    settings = make_settings(MUSHPI_BLE_WRITE_ACCESS="bonded",
                             MUSHPI_BLE_STATE_DIR=str(tmp_path))
    phone = await bluez.connect_central(address=NEIGHBOUR)
    bluez.adapter().set_name(NEIGHBOUR, "\x1b[31mred")
    bluez.adapter().set_paired(NEIGHBOUR, bonded=True)
    await phone.disconnect()
    async with open_connection(bus_address) as conn:
        finding = await check.unapproved_bonds_finding(conn, settings)
        assert finding.level == check.WARN
        assert f"{NEIGHBOUR} (\\x1b[31mred)" in finding.message
        assert "bonds --approve" in finding.message
        (tmp_path / APPROVALS).write_text("{")
        damaged = await check.unapproved_bonds_finding(conn, settings)
        assert damaged.level == check.WARN and "damaged" in damaged.message
        assert (tmp_path / APPROVALS).read_text() == "{"  # check changes nothing
