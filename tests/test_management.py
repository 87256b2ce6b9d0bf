"""The management interface and `mushpi-ble pair` / `bonds` / `dbus-policy`, against a
running portal on the fake bluetoothd (a real dbus-daemon in between)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from rig import NOW, Rig, eventually, make_settings, start_rig

from mushpi_ble.cli import main
from mushpi_ble.dbus import DBusError, open_connection
from mushpi_ble.errors import AlreadyServing
from mushpi_ble.management import BUS_NAME, INTERFACE, PATH, Management, policy_file
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing import private_bus
from mushpi_ble.testing.fakebluez import AttError, FakeBluez

UUID = CHARACTERISTIC_UUIDS
STAGE = struct.pack("<BBBIHB", 0, 2, 3, int(NOW - 10), 14, 0)
PHONE = "11:22:33:44:55:66"


@contextlib.asynccontextmanager
async def locked_room(bus_address: str, bluez: FakeBluez) -> AsyncIterator[Rig]:
    """A room whose writes need a bond; the agent is registered."""
    rig = await start_rig(bus_address, bluez, make_settings(MUSHPI_BLE_WRITE_ACCESS="bonded"))
    try:
        await eventually(lambda: rig.portal.get_status()["pairing"]["agent_registered"])
        yield rig
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)


@pytest.fixture
async def locked(bus_address: str, bluez: FakeBluez) -> AsyncIterator[Rig]:
    async with locked_room(bus_address, bluez) as rig:
        yield rig


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = await trio.to_thread.run_sync(main, list(argv))
    except SystemExit as exc:
        code, text = 1, str(exc.code)
        return code, text
    return code, capsys.readouterr().out


async def test_pair_bonds_and_remove_from_the_command_line(
        locked: Rig, bluez: FakeBluez, bus_address: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    management = locked.portal.get_status()["management"]
    assert management is not None and management["state"] == "serving"
    phone = await bluez.connect_central(address=PHONE)
    with pytest.raises(AttError):
        await phone.write(UUID["stage_state"], STAGE)
    assert not (await phone.pair()).success  # no window yet: rejected
    code, out = await cli(capsys, "pair", "--bus", bus_address, "--seconds", "60")
    assert code == 0 and "pairing window open for 60 s" in out
    assert locked.portal.get_status()["access"]["window_open"]
    phone = await bluez.connect_central(address=PHONE)
    assert (await phone.pair()).success
    await phone.write(UUID["stage_state"], STAGE)
    assert [w[0] for w in locked.controller.writes] == ["stage_state"]
    code, out = await cli(capsys, "pair", "--bus", bus_address, "--close")
    assert code == 0 and not locked.portal.get_status()["access"]["window_open"]

    await eventually(lambda: locked.portal.bonds())
    code, out = await cli(capsys, "bonds", "--bus", bus_address)
    assert code == 0 and PHONE in out and "connected" in out
    code, out = await cli(capsys, "bonds", "--bus", bus_address, "--json")
    (bond,) = json.loads(out)
    assert bond["address"] == PHONE and bond["bonded"] and bond["last_seen"] is not None

    code, out = await cli(capsys, "bonds", "--bus", bus_address, "--remove", PHONE.lower())
    assert code == 0 and f"bond removed: {PHONE}" in out
    assert not phone.connected  # bluetoothd drops a removed device's link
    assert bluez.adapter().bonded_devices == []
    await eventually(lambda: not locked.portal.bonds())
    # the phone comes back: it is a stranger again, and the window is closed
    phone = await bluez.connect_central(address=PHONE)
    with pytest.raises(AttError):
        await phone.write(UUID["stage_state"], STAGE)
    assert not (await phone.pair()).success
    assert len(locked.controller.writes) == 1

    code, text = await cli(capsys, "bonds", "--bus", bus_address, "--remove", PHONE)
    assert code == 1 and "no bonded phone" in text
    code, text = await cli(capsys, "bonds", "--bus", bus_address, "--remove", "nonsense")
    assert code == 1 and "not a Bluetooth address" in text
    code, text = await cli(capsys, "pair", "--bus", bus_address, "--seconds", "0")
    assert code == 2


async def test_the_portal_api_does_the_same(locked: Rig, bluez: FakeBluez) -> None:
    until = await trio.to_thread.run_sync(locked.portal.open_pairing_window, 30)
    assert until == pytest.approx(locked.portal.get_status()["access"]["window_until"], abs=1)
    phone = await bluez.connect_central(address=PHONE)
    assert (await phone.pair()).success
    await eventually(lambda: locked.portal.bonds())
    assert [b["address"] for b in await trio.to_thread.run_sync(locked.portal.bonds)] == [PHONE]
    await trio.to_thread.run_sync(locked.portal.remove_bond, PHONE)
    assert await trio.to_thread.run_sync(locked.portal.bonds) == []
    with pytest.raises(ValueError, match="no bonded phone"):
        await trio.to_thread.run_sync(locked.portal.remove_bond, PHONE)


async def test_a_removed_bond_is_gone_before_bluetoothd_announces_it(bus_address: str) -> None:
    """bluetoothd answers RemoveDevice before its InterfacesRemoved leaves: the list, the
    count and the write gate follow the answer, not the later signal."""
    async with FakeBluez.serve(bus_address, removed_signal_delay=2.0) as bluez, \
            locked_room(bus_address, bluez) as locked:
        await trio.to_thread.run_sync(locked.portal.open_pairing_window, 30)
        phone = await bluez.connect_central(address=PHONE)
        assert (await phone.pair()).success
        await eventually(lambda: locked.portal.bonds())
        await trio.to_thread.run_sync(locked.portal.close_pairing_window)
        await trio.to_thread.run_sync(locked.portal.remove_bond, PHONE)
        assert await trio.to_thread.run_sync(locked.portal.bonds) == []
        assert locked.portal.get_status()["access"]["bonded_count"] == 0
        assert bluez.adapter().bonded_devices == [PHONE]  # not announced yet
        with pytest.raises(ValueError, match="no bonded phone"):
            await trio.to_thread.run_sync(locked.portal.remove_bond, PHONE)


async def test_no_running_peripheral_is_said_plainly(bus_address: str, bluez: FakeBluez,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, text = await cli(capsys, "pair", "--bus", bus_address)
    assert code == 1 and "no running mushpi-ble peripheral owns org.mushpi.Ble" in text


async def test_a_window_is_refused_where_the_mode_has_none(
        bus_address: str, bluez: FakeBluez, capsys: pytest.CaptureFixture[str]) -> None:
    rig = await start_rig(bus_address, bluez, make_settings())  # open access, just-works
    try:
        code, text = await cli(capsys, "pair", "--bus", bus_address)
        assert code == 1 and "MUSHPI_BLE_PAIRING=just-works" in text
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)


class _Controls:
    def __init__(self) -> None:
        self.opened: list[float] = []

    def open_pairing_window(self, seconds: float) -> float:
        self.opened.append(seconds)
        return 1.0

    def close_pairing_window(self) -> None: ...

    def bonds(self) -> list[dict[str, object]]:
        return []

    async def remove_bond(self, address: str) -> None: ...

    async def approve_bond(self, address: str) -> None: ...


async def test_callers_of_another_user_are_refused(bus_address: str) -> None:
    controls = _Controls()
    async with open_connection(bus_address) as server, open_connection(bus_address) as caller:
        management = Management(server, controls, adapter="hci0",
                                allowed_uids=frozenset({os.geteuid() + 1}))
        await management.start()
        with pytest.raises(DBusError) as err:
            await caller.call(BUS_NAME, PATH, INTERFACE, "OpenPairingWindow", "u", (60,))
        assert err.value.name == "org.freedesktop.DBus.Error.AccessDenied"
        assert controls.opened == []
        assert management.status.refused_callers == 1
        # introspection shows the interface to anyone
        (xml,) = await caller.call(BUS_NAME, PATH, "org.freedesktop.DBus.Introspectable",
                                   "Introspect")
        assert INTERFACE in xml


async def test_a_second_peripheral_on_the_same_adapter_refuses_to_start(
        bus_address: str) -> None:
    """The first owns the name; a second on its adapter names that process and stops,
    one on another adapter serves without the interface and says whose it is."""
    controls = _Controls()
    async with open_connection(bus_address) as server, open_connection(bus_address) as same, \
            open_connection(bus_address) as other:
        await Management(server, controls, adapter="hci0").start()
        with pytest.raises(AlreadyServing) as refused:
            await Management(same, controls, adapter="hci0").start()
        assert f"process {os.getpid()}" in str(refused.value)
        assert "adapter hci0" in str(refused.value)
        beside = Management(other, controls, adapter="hci1")
        await beside.start()
        assert beside.status.state.startswith(
            f"unavailable: {BUS_NAME} is owned by the peripheral of adapter hci0 (process ")


# A peripheral of another user: owns the management name as the policy lets that user,
# answers nothing (as one whose policy keeps the caller out would not either).
OTHER_USERS_PERIPHERAL = """
import sys
from jeepney import new_error
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection
from jeepney.low_level import MessageType
conn = open_dbus_connection(sys.argv[1])
conn.send_and_get_reply(message_bus.RequestName(sys.argv[2], 4))
print("owned", flush=True)
while True:
    msg = conn.receive()
    if msg.header.message_type == MessageType.method_call:
        conn.send(new_error(msg, "org.freedesktop.DBus.Error.AccessDenied"))
"""


@contextlib.contextmanager
def another_users_peripheral(address: str, user: str) -> Iterator[int]:
    """A process running as ``user`` that owns :data:`BUS_NAME` on the bus at ``address``
    (Debian's python3 with a copy of jeepney it may read); yields its pid."""
    import jeepney

    socket_dir = Path(address.split("path=", 1)[1].split(",")[0]).parent
    socket_dir.chmod(0o755)
    with tempfile.TemporaryDirectory(prefix="mushpi-other-") as tmp:
        shutil.copytree(Path(jeepney.__file__).parent, Path(tmp) / "jeepney")
        for path in [Path(tmp), *Path(tmp).rglob("*")]:
            path.chmod(0o755)
        proc = subprocess.Popen(
            ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups",
             "/usr/bin/python3", "-c", OTHER_USERS_PERIPHERAL, address, BUS_NAME],
            stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": tmp})
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "owned"
            yield proc.pid
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                    reason="runs another user's process: needs root and Debian's python3")
async def test_a_peripheral_the_policy_keeps_from_the_name_still_stops_beside_another(
) -> None:
    """A grower's `serve` beside the controller's unit: the policy lets only the
    service user own the name, so the second is refused the name itself — it must
    still see who holds it and refuse to start, not serve a second application."""
    # the service user's policy, where we (root here) stand for a user it does not name
    policy = policy_file("nobody").replace(
        f'<policy user="root">\n    <allow own="{BUS_NAME}"/>', '<policy user="root">')
    assert policy.count("<allow own=") == 1
    with private_bus(system_policy=policy) as address, \
            another_users_peripheral(address, "nobody") as pid:
        async with open_connection(address) as conn:
            with pytest.raises(AlreadyServing) as refused:
                await Management(conn, _Controls(), adapter="hci0").start()
    assert f"process {pid}" in str(refused.value) and "adapter hci0" in str(refused.value)


def test_the_policy_file_lets_the_service_user_own_and_root_call() -> None:
    text = policy_file("mushpi")
    assert '<policy user="mushpi">' in text and '<policy user="root">' in text
    assert f'<allow own="{BUS_NAME}"/>' in text
    assert f'send_destination="{BUS_NAME}" send_interface="{INTERFACE}"' in text
    assert policy_file("root").count("<policy ") == 1


@pytest.mark.parametrize("installed", [False, True])
async def test_on_a_system_like_bus_the_policy_file_is_what_makes_it_work(
        installed: bool) -> None:
    """Debian's system bus denies owning names and calling methods by default."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    with private_bus(system_policy=policy_file(user) if installed else "") as address:
        async with open_connection(address) as server, open_connection(address) as caller:
            management = Management(server, _Controls())
            await management.start()
            if not installed:
                assert management.status.state.startswith("unavailable: the bus refused")
                assert "mushpi-ble dbus-policy" in management.status.state
                return
            assert management.status.state == "serving"
            (until,) = await caller.call(BUS_NAME, PATH, INTERFACE, "OpenPairingWindow", "u",
                                         (60,))
            assert until == 1.0


async def test_check_reports_access_and_the_management_interface(
        locked: Rig, bus_address: str) -> None:
    from mushpi_ble.cli import check

    settings = make_settings(MUSHPI_BLE_WRITE_ACCESS="bonded")
    async with open_connection(bus_address) as conn:
        finding = await check.access_finding(conn, settings)
    assert finding.level == check.OK
    assert "write=bonded read=open pairing=window" in finding.message
    assert "serves org.mushpi.Ble" in finding.message


async def test_check_without_a_peripheral_names_the_missing_policy(
        bus_address: str, tmp_path: Path) -> None:
    from mushpi_ble.cli import check

    policy = tmp_path / "org.mushpi.Ble.conf"
    settings = make_settings(MUSHPI_BLE_WRITE_ACCESS="bonded")
    async with open_connection(bus_address) as conn:
        with trio.fail_after(5):  # a peripheral of an earlier test has left the bus
            while (await conn.call_bus("NameHasOwner", "s", (BUS_NAME,))):
                await trio.sleep(0.01)
        missing = await check.access_finding(conn, settings, (policy,))
        policy.write_text(policy_file("mushpi"))
        present = await check.access_finding(conn, settings, (policy,))
        open_room = await check.access_finding(conn, make_settings(), (tmp_path / "none",))
    assert missing.level == check.WARN and "mushpi-ble dbus-policy" in missing.message
    assert present.level == check.INFO and f"policy is installed ({policy})" in present.message
    assert open_room.level == check.INFO and "write=open" in open_room.message


async def test_pair_wait_follows_the_next_phone_and_closes_the_window_after_its_bond(
        locked: Rig, bluez: FakeBluez, bus_address: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    async with trio.open_nursery() as nursery:
        done = trio.Event()
        result: list[int] = []

        async def waiting() -> None:
            result.append(await trio.to_thread.run_sync(
                main, ["pair", "--bus", bus_address, "--seconds", "60", "--wait"]))
            done.set()

        nursery.start_soon(waiting)
        await eventually(lambda: locked.portal.get_status()["access"]["window_open"])
        phone = await bluez.connect_central(address=PHONE)
        assert (await phone.pair()).success
        with trio.fail_after(10):
            await done.wait()
    out = capsys.readouterr().out
    assert result == [0]
    assert f"{PHONE}: paired" in out and f"bonded: {PHONE}; pairing window closed" in out
    assert not locked.portal.get_status()["access"]["window_open"]


async def test_pair_wait_shows_the_passkey_where_the_grower_looks(
        bus_address: str, bluez: FakeBluez, capsys: pytest.CaptureFixture[str]) -> None:
    rig = await start_rig(bus_address, bluez, make_settings(MUSHPI_BLE_WRITE_ACCESS="bonded",
                                                            MUSHPI_BLE_PAIRING="passkey"))
    try:
        await eventually(lambda: rig.portal.get_status()["pairing"]["agent_registered"])
        capsys.readouterr()
        async with trio.open_nursery() as nursery:
            result: list[int] = []

            async def waiting() -> None:
                result.append(await trio.to_thread.run_sync(
                    main, ["pair", "--bus", bus_address, "--seconds", "60", "--wait"]))

            printed: list[str] = []

            async def typed_from_the_terminal() -> int:
                """The grower types what `pair --wait` printed, once it printed it."""
                with trio.fail_after(10):
                    while not (found := re.search(r"type (\d{6}) on the phone",
                                                  "".join(printed))):
                        printed.append(capsys.readouterr().out)
                        await trio.sleep(0.05)
                return int(found.group(1))

            nursery.start_soon(waiting)
            await eventually(lambda: rig.portal.get_status()["access"]["window_open"])
            phone = await bluez.connect_central(address=PHONE)
            assert (await phone.pair(io_capability="KeyboardDisplay", mitm=True,
                                     passkey=typed_from_the_terminal)).success
        out = "".join(printed) + capsys.readouterr().out
        assert result == [0] and f"bonded: {PHONE}" in out
        # typed and used: the live view and status no longer show it
        assert rig.portal.get_status()["pairing"]["passkey"] is None
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)


async def test_pair_wait_says_when_the_window_closes_without_a_bond(
        locked: Rig, bus_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = await trio.to_thread.run_sync(
        main, ["pair", "--bus", bus_address, "--seconds", "1", "--wait"])
    assert code == 1
    assert "the pairing window closed before a phone bonded" in capsys.readouterr().out
