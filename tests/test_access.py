"""Who may steer the room: access modes × pairing modes × bonds × the pairing window.

Every case runs the portal on the fake bluetoothd with a phone that behaves
like Android/iOS: it writes; a security error makes it pair (its OS dialog)
and write again. Bonds from earlier are made by the fake itself.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from rig import NOW, Rig, eventually, make_settings, start_rig, status_until

from mushpi_ble.config import ConfigError
from mushpi_ble.gatt.access import AccessGate, AccessRules
from mushpi_ble.gatt.pairing_policy import (
    PairingRequest,
    PairingWindow,
    policy_for_mode,
)
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS
from mushpi_ble.testing.fakebluez import AttError, FakeBluez, FakeCentral

UUID = CHARACTERISTIC_UUIDS
STAGE = struct.pack("<BBBIHB", 0, 2, 3, int(NOW - 10), 14, 0)
ADDRESS = "11:22:33:44:55:66"
ACCESS = ("open", "bonded")
MODES = ("just-works", "window", "passkey", "off")


# -- pure rules -----------------------------------------------------------------------------
def test_flags_ask_bluetoothd_for_encryption_where_access_is_bonded() -> None:
    flags = ("read", "write", "notify")
    assert AccessRules().flags(flags) == flags
    assert AccessRules(write="bonded").flags(flags) == ("read", "encrypt-write", "notify")
    assert AccessRules(read="bonded").flags(flags) == ("encrypt-read", "write",
                                                       "encrypt-notify")
    assert AccessRules(read="bonded", write="bonded", authenticated=True).flags(flags) == (
        "encrypt-authenticated-read", "encrypt-authenticated-write",
        "encrypt-authenticated-notify")
    # a flag that already names a security level stays; nothing is doubled
    assert AccessRules(write="bonded").flags(("secure-write", "write", "encrypt-write")) == (
        "secure-write", "encrypt-write")
    with pytest.raises(ValueError, match="write access 'closed'"):
        AccessRules(write="closed")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("window_open", [False, True])
@pytest.mark.parametrize("kind", ["RequestAuthorization", "RequestConfirmation",
                                  "DisplayPasskey", "RequestPasskey", "RequestPinCode"])
def test_every_mode_answers_every_request(mode: str, window_open: bool, kind: str) -> None:
    window = PairingWindow()
    if window_open:
        window.open(30)
    policy = policy_for_mode(mode, window)
    if policy is None:
        assert mode == "off"
        return
    decision = policy.decide(PairingRequest(kind, "/org/bluez/hci0/dev_X", passkey=123456))
    just_works = kind in ("RequestAuthorization", "RequestConfirmation")
    expected = {
        "just-works": just_works,
        "window": just_works and window_open,
        "passkey": kind == "DisplayPasskey" and window_open,
    }[mode]
    assert decision.accept is expected
    if not expected and window_open is False and mode != "just-works" and (
            (mode == "window" and just_works) or (mode == "passkey" and kind == "DisplayPasskey")):
        assert decision.reason == "pairing window closed"


def test_the_window_opens_closes_and_expires() -> None:
    now = [100.0]
    window = PairingWindow(clock=lambda: now[0], wall=lambda: 1_000.0)
    assert not window.is_open and window.snapshot()["until"] is None
    assert window.open(60) == 1_060.0
    now[0] += 59.5
    assert window.is_open and window.snapshot()["remaining_s"] == 0.5
    now[0] += 1
    assert not window.is_open
    window.open(10)
    window.close()
    assert not window.is_open and window.opened == 2
    for bad in (0, -1, 3601, float("nan")):
        with pytest.raises(ValueError, match="pairing window"):
            window.open(bad)


# -- settings -------------------------------------------------------------------------------
def test_bonded_access_defaults_to_a_window_and_refuses_just_works() -> None:
    assert make_settings().pairing_mode == "just-works"
    assert make_settings(MUSHPI_BLE_WRITE_ACCESS="bonded").pairing_mode == "window"
    assert make_settings(MUSHPI_BLE_READ_ACCESS="bonded").pairing_mode == "window"
    assert make_settings(MUSHPI_BLE_WRITE_ACCESS="bonded",
                         MUSHPI_BLE_PAIRING="passkey").pairing_mode == "passkey"
    with pytest.raises(ConfigError) as err:
        make_settings(MUSHPI_BLE_WRITE_ACCESS="bonded", MUSHPI_BLE_PAIRING="just-works")
    assert err.value.variable == "MUSHPI_BLE_PAIRING"
    assert "would protect nothing" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_settings(MUSHPI_BLE_READ_ACCESS="bonded", MUSHPI_BLE_BACKEND="bluezero")
    assert err.value.variable == "MUSHPI_BLE_READ_ACCESS"
    assert "no access control" in str(err.value)


# -- the matrix on the fake bluetoothd ---------------------------------------------------------
@asynccontextmanager
async def running(bus_address: str, bluez: FakeBluez, **env: str) -> AsyncIterator[Rig]:
    settings = make_settings(**env)
    rig = await start_rig(bus_address, bluez, settings)
    try:
        if settings.pairing_mode != "off":  # the agent registers after the application
            await eventually(lambda: rig.portal.get_status()["pairing"]["agent_registered"])
        yield rig
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)


async def bonded_phone(rig: Rig, security: str) -> FakeCentral:
    """A phone bonded and approved on an earlier visit: it re-encrypts with its stored
    keys."""
    central = await rig.bluez.connect_central(address=ADDRESS, security=security)
    rig.bluez.adapter().set_paired(ADDRESS, bonded=True)
    if rig.portal.peripheral.access.approvals is not None:
        await status_until(rig.portal, lambda s: s["access"]["unapproved"] == [ADDRESS])
        await trio.to_thread.run_sync(rig.portal.approve_bond, ADDRESS)
    return central


async def write_like_a_phone(central: FakeCentral, shown: list[tuple[str, int]] | None) -> str:
    """Write; on a security error pair (as the phone's OS does) and write again.

    ``shown`` is where the controller's ``on_pairing_passkey`` puts passkeys:
    given, the phone pairs with passkey entry and its user types the last one
    shown (a wrong one when none is shown within 2 s).
    Returns "written", "paired+written" or why it failed.
    """
    try:
        await central.write(UUID["stage_state"], STAGE)
        return "written"
    except AttError as exc:
        if exc.code not in (0x05, 0x0F):
            return f"att-0x{exc.code:02x}"

    async def typed() -> int:
        with trio.move_on_after(2):
            await eventually(lambda: shown)
        return shown[-1][1] if shown else 1_000_000  # no six digits to copy: a guess

    if shown is None:
        result = await central.pair()
    else:
        result = await central.pair(io_capability="KeyboardDisplay", mitm=True, passkey=typed)
    if not result.success:
        return f"pairing failed: {result.error}"
    await central.write(UUID["stage_state"], STAGE)
    return "paired+written"


def expected_outcome(access: str, mode: str, bonded: bool, window_open: bool) -> str:
    if access == "open" or bonded:
        return "written"
    may_pair = mode in ("window", "passkey") and window_open
    return "paired+written" if may_pair else "pairing failed"


CASES = [(a, m, b, w) for a in ACCESS for m in MODES for b in (False, True) for w in (False, True)
         if not (a == "bonded" and m == "just-works")]


@pytest.mark.parametrize(("access", "mode", "bonded", "window_open"), CASES)
async def test_access_matrix(bus_address: str, bluez: FakeBluez, access: str, mode: str,
                             bonded: bool, window_open: bool) -> None:
    passkeys: list[tuple[str, int]] = []
    async with running(bus_address, bluez, MUSHPI_BLE_WRITE_ACCESS=access,
                       MUSHPI_BLE_PAIRING=mode) as rig:
        rig.portal.set_callbacks(on_pairing_passkey=lambda a, p: passkeys.append((a, p)))
        if window_open:
            if mode in ("window", "passkey"):
                rig.portal.open_pairing_window(30)
            else:
                with pytest.raises(ValueError, match="only applies to the window and passkey"):
                    rig.portal.open_pairing_window(30)
        central = (await bonded_phone(rig, "high" if mode == "passkey" else "medium")
                   if bonded else await bluez.connect_central(address=ADDRESS))
        outcome = await write_like_a_phone(central, passkeys if mode == "passkey" else None)
        want = expected_outcome(access, mode, bonded, window_open)
        assert outcome.startswith(want), (outcome, want)
        setter_calls = [w for w in rig.controller.writes if w[0] == "stage_state"]
        assert len(setter_calls) == (0 if want == "pairing failed" else 1)
        status = rig.portal.get_status()["access"]
        assert status["write"] == access and status["pairing"] == mode
        # a window admits one new phone, then closes
        assert status["window_open"] is (window_open and mode in ("window", "passkey")
                                         and outcome != "paired+written")
        assert status["refused_writes"] == 0  # bluetoothd refused them; none reached us
        if access == "open" and not bonded:
            # the pairing mode still answers a phone that asks to pair by itself
            result = await central.pair()
            may_pair = mode == "just-works" or (mode == "window" and window_open)
            assert result.success is may_pair, (mode, window_open, result)


# -- defence in depth ------------------------------------------------------------------------
async def test_a_write_bluetoothd_let_through_from_an_unpaired_device_is_refused(
        bus_address: str, bluez: FakeBluez) -> None:
    async with running(bus_address, bluez, MUSHPI_BLE_WRITE_ACCESS="bonded") as rig:
        # encrypted but not paired: a bluetoothd that did not enforce our flags
        central = await bluez.connect_central(address=ADDRESS, security="medium")
        for _ in range(3):
            with pytest.raises(AttError) as err:
                await central.write(UUID["stage_state"], STAGE)
            assert err.value.code == 0x08  # org.bluez.Error.NotAuthorized
        assert err.value.dbus_error == "org.bluez.Error.NotAuthorized"
        assert rig.controller.writes == []
        status = rig.portal.get_status()["access"]
        assert status["refused"]["not-bonded"] == 3 and status["refused_writes"] == 3
        assert status["bond_checks"] == 3  # bluetoothd was asked each time, said no
        # reads stay open with MUSHPI_BLE_READ_ACCESS=open
        assert len(await central.read(UUID["stage_state"])) == 10


async def test_a_write_right_after_pairing_is_not_refused_while_the_signal_lags(
        bus_address: str) -> None:
    """The gate asks bluetoothd when its own view (from signals) says not bonded; a bond
    our agent admitted is approved then, before its Paired signal arrives."""
    async with FakeBluez.serve(bus_address, paired_signal_delay=30.0) as bluez, \
            running(bus_address, bluez, MUSHPI_BLE_WRITE_ACCESS="bonded") as rig:
        rig.portal.open_pairing_window(30)
        central = await bluez.connect_central(address=ADDRESS)
        assert (await central.pair()).success
        await central.write(UUID["stage_state"], STAGE)
        assert [w[0] for w in rig.controller.writes] == ["stage_state"]
        status = rig.portal.get_status()["access"]
        assert status["refused_writes"] == 0 and status["bond_checks"] == 1
        assert status["approved"] == [ADDRESS]


async def test_bonded_reads(bus_address: str, bluez: FakeBluez) -> None:
    async with running(bus_address, bluez, MUSHPI_BLE_READ_ACCESS="bonded") as rig:
        stranger = await bluez.connect_central(address=ADDRESS)
        with pytest.raises(AttError) as err:
            await stranger.read(UUID["env_measurements"])
        assert err.value.code == 0x0F  # bluetoothd: insufficient encryption
        with pytest.raises(AttError) as err:
            await stranger.subscribe(UUID["env_measurements"])
        assert err.value.code == 0x0F
        await stranger.disconnect()
        rig.portal.open_pairing_window(30)
        friend = await bluez.connect_central(address="22:33:44:55:66:77")
        assert (await friend.pair()).success
        assert len(await friend.read(UUID["env_measurements"])) == 12
        # writes stay open with MUSHPI_BLE_WRITE_ACCESS=open
        await stranger_write(bluez)
        assert rig.portal.get_status()["access"]["bonded_count"] == 1


async def stranger_write(bluez: FakeBluez) -> None:
    other = await bluez.connect_central(address="33:44:55:66:77:88")
    await other.write(UUID["stage_state"], STAGE)


async def test_the_gate_without_a_connection_refuses_unknown_devices() -> None:
    gate = AccessGate(AccessRules(write="bonded"), lambda path: path.endswith("_OK"))
    await gate.check("read", "", "x")  # reads are open
    await gate.check("write", "/org/bluez/hci0/dev_OK", "x")
    for device in ("", "/org/bluez/hci0/dev_NO"):
        with pytest.raises(Exception, match="needs an approved bond"):
            await gate.check("write", device, "x")
    assert gate.refused == {"not-bonded": 1, "not-approved": 0, "not-le": 0, "no-device": 1}


async def test_passkey_status_metrics_and_live_view(bus_address: str, bluez: FakeBluez) -> None:
    from mushpi_ble.cli.serve import render_view
    from mushpi_ble.prometheus import StatusCollector

    shown: list[tuple[str, int]] = []
    # a window for any number of phones: it is still open when the view is drawn
    async with running(bus_address, bluez, MUSHPI_BLE_WRITE_ACCESS="bonded",
                       MUSHPI_BLE_PAIRING="passkey", MUSHPI_BLE_PAIRING_WINDOW_BONDS="0") as rig:
        rig.portal.set_callbacks(on_pairing_passkey=lambda a, p: shown.append((a, p)))
        # outside the window: the passkey is shown to nobody
        outsider = await bluez.connect_central(address="22:22:22:22:22:22")
        assert (await write_like_a_phone(outsider, shown)).startswith("pairing failed")
        assert shown == []
        rig.portal.open_pairing_window(60)
        central = await bluez.connect_central(address=ADDRESS)
        assert await write_like_a_phone(central, shown) == "paired+written"
        assert shown[-1][0] == ADDRESS and 0 <= shown[-1][1] < 1_000_000
        # a device bluetoothd let through unpaired is refused by us and counted
        sneaky = await bluez.connect_central(address="33:33:33:33:33:33", security="fips")
        with pytest.raises(AttError):
            await sneaky.write(UUID["stage_state"], STAGE)
        status = rig.portal.get_status()
        assert status["pairing"]["capability"] == "DisplayOnly"
        assert status["pairing"]["passkey"] is None  # typed and used: shown no longer
        assert status["access"]["authenticated"] and status["access"]["refused_writes"] == 1
        await eventually(lambda: rig.portal.get_status()["access"]["bonded_count"] == 1)
        metrics = {(s.name, s.labels.get("reason")): s.value
                   for m in StatusCollector(rig.portal.get_status, dict).collect()
                   for s in m.samples}
        assert metrics[("mushpi_ble_write_access_bonded", None)] == 1
        assert metrics[("mushpi_ble_pairing_window_open", None)] == 1
        assert metrics[("mushpi_ble_access_refused_total", "not-bonded")] == 1
        view = render_view(rig.portal, rig.controller)
        assert "Access: write bonded, read open · pairing window OPEN until" in view
        assert "PASSKEY" not in view
        assert "refused 1 writes, 0 reads of phones without an approved bond" in view
        assert "NOT APPROVED" not in view
