"""The parts of running unattended on their own: rfkill, refusal advice, the check probe."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from mushpi_ble.cli import check
from mushpi_ble.config import load_settings
from mushpi_ble.dbus import DBusError
from mushpi_ble.gatt.advertising import KERNEL_MISMATCH_ADVICE, explain_refusal
from mushpi_ble.gatt.rfkill import Rfkill, RfkillError, Switch, encode_change
from mushpi_ble.testing.fakebluez import FakeBluez, FakeRfkill


def fake_tree(tmp_path: Path) -> FakeRfkill:
    tree = FakeRfkill(tmp_path / "rfkill")
    tree.add("hci0")
    tree.add("hci1")
    return tree


def test_rfkill_state_is_the_adapters_own_switch(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    wlan = tree.root / "rfkill9"
    wlan.mkdir()
    for name, value in (("type", "wlan"), ("name", "phy0"), ("soft", "1"), ("hard", "0")):
        (wlan / name).write_text(value + "\n")
    rfkill = Rfkill(tree.root, device=None)
    assert rfkill.state("hci0").describe() == "unblocked"
    tree.block("hci1", soft=True)
    assert rfkill.state("hci0").describe() == "unblocked"  # another adapter's, and wlan
    assert rfkill.state("hci1").describe() == "soft-blocked"
    tree.block("hci1", hard=True)
    assert rfkill.state("hci1").describe() == "soft+hard-blocked"
    assert Rfkill(tmp_path / "missing").state("hci0").describe() == "unknown"


def test_a_platform_switch_counts_for_every_adapter(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    board = tree.add_platform_switch()
    (board / "hard").write_text("1\n")
    assert Rfkill(tree.root, device=None).state("hci0").describe() == "hard-blocked"


def test_unblock_writes_the_sysfs_soft_file_without_a_device(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    tree.block("hci0", soft=True)
    assert Rfkill(tree.root, device=None).unblock("hci0") == ["hci0"]
    assert tree.read("hci0") == (False, False)


def test_unblock_sends_an_rfkill_change_event_to_the_device(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    tree.block("hci1", soft=True)
    device = tmp_path / "dev-rfkill"
    device.write_bytes(b"")
    assert Rfkill(tree.root, device=device).unblock("hci1") == ["hci1"]
    # struct rfkill_event: idx u32, type u8 (bluetooth 2), op u8 (CHANGE 2), soft, hard
    assert device.read_bytes() == struct.pack("=IBBBB", 1, 2, 2, 0, 0)
    assert encode_change(1, soft=False) == device.read_bytes()
    assert tree.read("hci1") == (True, False)  # the device did it, not sysfs


def test_unblock_failure_says_where_it_tried(tmp_path: Path) -> None:
    rfkill = Rfkill(tmp_path / "gone", device=tmp_path / "no-such-device")
    with pytest.raises(RfkillError) as info:
        rfkill._set_soft(Switch(3, "hci0", soft=True, hard=False), False)
    assert "no-such-device" in str(info.value)
    assert "rfkill3/soft" in str(info.value)


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("org.bluez.Error.Failed", "Failed to register advertisement", "5.87"),
    ("org.bluez.Error.NotPermitted", "Maximum advertisements reached", "no free advertising"),
    ("org.bluez.Error.Failed", "Failed to parse advertisement.", "could not parse"),
    ("org.bluez.Error.InvalidArguments", "Invalid arguments in method call",
     "InvalidArguments"),
])
def test_refusals_are_explained(name: str, text: str, expected: str) -> None:
    advice = explain_refusal(DBusError(name, text))
    assert expected in advice
    assert "alias" in advice


def test_the_kernel_mismatch_advice_names_the_versions_and_the_fix() -> None:
    for part in ("6.12.93", "6.18.34", "5.87", "0x0d", "#2268", "#7473", "Update the kernel",
                 "full-upgrade", "6.18.36"):
        assert part in KERNEL_MISMATCH_ADVICE


async def run_check(bus: str, **env: str) -> tuple[int, str]:
    settings = load_settings(environ={"MUSHPI_DBUS_BUS_TIMEOUT_MS": "1000", **env},
                             env_file=None)
    findings = await check.run_checks(settings, bus, "/bin/false")
    text = check.report(findings)
    return (1 if any(f.level == check.FAIL for f in findings) else 0), text


async def test_check_probe_registers_and_unregisters_a_test_advert(
    bus_address: str, bluez: FakeBluez
) -> None:
    code, text = await run_check(bus_address)
    assert code == 0, text
    assert "[  ok] advertising probe" in text
    assert bluez.advertisements() == []
    assert bluez.runtime.faults.refused["RegisterAdvertisement"] == 0


async def test_check_probe_prints_the_kernel_mismatch_advice(
    bus_address: str, bluez: FakeBluez
) -> None:
    bluez.refuse_advertisements()
    code, text = await run_check(bus_address)
    assert code == 1
    assert "[FAIL] advertising probe" in text and "5.87 or later" in text
    code, text = await run_check(bus_address, MUSHPI_BLE_ADV_ENABLE="false")
    assert code == 0 and "[warn] advertising probe" in text


async def test_check_reports_rfkill(bus_address: str, tmp_path: Path) -> None:
    root = tmp_path / "rfkill"
    async with FakeBluez.serve(bus_address, rfkill_dir=root) as bluez:
        settings = load_settings(environ={"MUSHPI_DBUS_BUS_TIMEOUT_MS": "1000"}, env_file=None)
        rfkill = Rfkill(root, device=None)
        assert "unblocked" in check.rfkill_finding(rfkill, "hci0", settings).message
        await bluez.block(soft=True)
        finding = check.rfkill_finding(rfkill, "hci0", settings)
        assert finding.level == check.WARN and "soft-blocked" in finding.message
        await bluez.block(soft=False, hard=True)
        assert check.rfkill_finding(rfkill, "hci0", settings).level == check.FAIL
