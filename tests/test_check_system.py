"""`mushpi-ble check` about the system: the settings file it read (and the inline comments
systemd would keep), the pieces setup installed, right for the service user, running as
root, bonds on a root whose writes vanish, and the advert-refusal cure that fits the OS."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from system_root import make_root

from mushpi_ble.cli import check, main
from mushpi_ble.cli import check_system as system
from mushpi_ble.cli import system_files as files
from mushpi_ble.config import load_settings
from mushpi_ble.testing.fakebluez import FakeBluez


def levels(found: list[check.Finding]) -> dict[str, str]:
    return {f.message: f.level for f in found}


def test_settings_file_named(tmp_path: Path) -> None:
    env = tmp_path / "ble.env"
    env.write_text("MUSHPI_BLE_ADAPTER=hci0\n")
    assert "read " + str(env) in system.settings_finding(env, env).message
    missing = system.settings_finding(None, tmp_path / "nothing")
    assert missing.level == check.INFO and "does not exist" in missing.message


@pytest.fixture
def root(tmp_path: Path) -> Path:
    top = make_root(tmp_path / "root")
    return top


@pytest.mark.skipif(os.geteuid() != 0, reason="setup --root runs the shadow tools: root only")
def test_setup_pieces_present_and_right_for_the_service_user(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert system.setup_findings(root)[0].level == check.INFO  # not run yet: says how
    assert main(["setup", "--root", str(root), "--standalone"]) == 0
    capsys.readouterr()
    found = system.setup_findings(root)
    assert all(f.level in (check.OK, check.INFO) for f in found), found
    assert any("nothing to check here" in f.message for f in found)  # no /dev/rfkill here
    # the device as the udev rule leaves it, then as Debian ships it
    device = root / "dev/rfkill"
    device.parent.mkdir()
    device.touch()
    gid = int(system._db(root, "group")[files.RFKILL_GROUP][2])
    os.chown(device, 0, gid)
    os.chmod(device, 0o664)
    assert system.rfkill_writable(root, "mushpi") is True
    os.chown(device, 0, 0)
    assert system.rfkill_writable(root, "mushpi") is False
    assert any(f.level == check.WARN and "/dev/rfkill is writable" in f.message
               for f in system.setup_findings(root))
    # an edited unit, and the user taken out of bluetooth
    unit = root / "etc/systemd/system" / files.STANDALONE_UNIT
    unit.write_text(unit.read_text() + "# mine\n")
    group = root / "etc/group"
    group.write_text(group.read_text().replace("bluetooth:x:112:mushpi", "bluetooth:x:112:"))
    found = system.setup_findings(root)
    assert any(f.level == check.WARN and str(files.UNIT_DIR / files.STANDALONE_UNIT)
               in f.message for f in found)
    assert any(f.level == check.FAIL and "in bluetooth" in f.message for f in found)


def test_running_as_root_is_a_warning() -> None:
    finding = system.root_finding(0)
    assert finding is not None and finding.level == check.WARN
    assert system.root_finding(1000) is None


ROOT_OVERLAY = "overlay / overlay rw,relatime,lowerdir=/ro 0 0\nproc /proc proc rw 0 0\n"
ROOT_EXT4 = "/dev/mmcblk0p2 / ext4 rw,noatime 0 0\n"
ROOT_RO = "/dev/mmcblk0p2 / ext4 ro,noatime 0 0\n"


@pytest.mark.parametrize(("mounts", "access", "level"), [
    (ROOT_OVERLAY, "bonded", check.WARN),
    (ROOT_RO, "bonded", check.WARN),
    (ROOT_OVERLAY, "open", check.INFO),
    (ROOT_EXT4, "bonded", None),
    (ROOT_OVERLAY + "/dev/sda1 /var/lib/bluetooth ext4 rw 0 0\n", "bonded", None),
])
def test_bonds_on_a_root_whose_writes_vanish(mounts: str, access: str, level: str | None,
                                             tmp_path: Path) -> None:
    settings = load_settings(environ={"MUSHPI_BLE_WRITE_ACCESS": access,
                                      "MUSHPI_BLE_STATE_DIR": str(tmp_path)}, env_file=None)
    finding = system.bond_storage_finding(settings, mounts)
    assert (finding.level if finding else None) == level
    if level == check.WARN:
        assert finding is not None and "lost at reboot" in finding.message


def test_platform_is_read_from_the_os() -> None:
    pi = {"/etc/os-release": 'ID=debian\nVERSION_CODENAME=trixie\n',
          "/proc/sys/kernel/osrelease": "6.12.93+rpt-rpi-2712\n"}
    debian = {"/etc/os-release": "ID=debian\n", "/proc/sys/kernel/osrelease": "6.12.117-amd64"}

    def reader(files_: dict[str, str]):  # type: ignore[no-untyped-def]
        def read(path: str) -> str:
            if path not in files_:
                raise FileNotFoundError(path)
            return files_[path]
        return read

    assert system.Platform.here((5, 82), reader(pi)).raspberry_pi_os
    assert not system.Platform.here((5, 82), reader(debian)).raspberry_pi_os


@pytest.mark.parametrize(("platform", "words", "not_words"), [
    (system.Platform(True, "6.18.34+rpt-rpi-v8", (5, 82)),
     ["kernel update", "full-upgrade", "6.18.34+rpt-rpi-v8", "will not get 5.87"], ["or BlueZ"]),
    (system.Platform(False, "6.18.34", (5, 82)), ["Update the kernel", "or BlueZ (5.82)"],
     ["Raspberry Pi OS"]),
    (system.Platform(False, "6.18.34", (5, 87)), ["BlueZ 5.87 has its side"], ["or BlueZ"]),
])
def test_the_advert_refusal_cure_fits_the_os(platform: system.Platform, words: list[str],
                                             not_words: list[str]) -> None:
    cure = system.mismatch_cure(platform)
    assert all(w in cure for w in words), cure
    assert not any(w in cure for w in not_words), cure


async def test_check_gives_the_cure_of_this_os_when_the_probe_is_refused(
        bus_address: str, bluez: FakeBluez) -> None:
    bluez.refuse_advertisements()
    settings = load_settings(environ={"MUSHPI_DBUS_BUS_TIMEOUT_MS": "1000"}, env_file=None)
    platform = system.Platform(True, "6.12.93+rpt-rpi-v8", (5, 82))
    findings = await check.run_checks(settings, bus_address, "/bin/false", platform)
    probe = next(f for f in findings if f.topic == "advertising probe")
    assert probe.level == check.FAIL
    assert "6.12.93+rpt-rpi-v8" in probe.message and "will not get 5.87" in probe.message


async def test_check_names_the_settings_file_it_read(tmp_path: Path, bus_address: str,
                                                    bluez: FakeBluez,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    env = tmp_path / "ble.env"
    env.write_text(f"MUSHPI_BLE_WRITE_ACCESS=bonded\nMUSHPI_BLE_STATE_DIR={tmp_path}\n"
                   "MUSHPI_DBUS_BUS_TIMEOUT_MS=1000\n")
    await trio.to_thread.run_sync(main, ["check", "--bus", bus_address, "--bluetoothd",
                                         "/bin/false", "--env-file", str(env)])
    out = capsys.readouterr().out
    assert f"read {env}" in out and "write=bonded" in out
    assert main(["check", "--env-file", str(tmp_path / "gone")]) == 1
    assert "does not exist" in capsys.readouterr().out
