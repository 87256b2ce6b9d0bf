"""``mushpi-ble setup --root``: the files it writes, their modes, the user and groups, a
second run that changes nothing, ``--remove`` that leaves the root as it found it; the
unit and drop-in as bookworm's systemd reads them (``systemd-analyze verify`` and
``security --offline``). Runs the real shadow tools on a root of its own."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from system_root import BASE, make_root

from mushpi_ble.cli import check_system, main
from mushpi_ble.cli import system_files as files

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="setup changes a root: run as root")

CONTROLLER = "mushpi-sim.service"
CONTROLLER_UNIT = f"""\
[Unit]
Description=a grow-room controller (here: the simulated one)

[Service]
ExecStart={files.exec_start()} serve
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A packager's root: the account databases, a bluetooth group, the controller's unit."""
    top = make_root(tmp_path / "root")
    unit = top / "etc/systemd/system" / CONTROLLER
    unit.parent.mkdir(parents=True)
    unit.write_text(CONTROLLER_UNIT)
    return top


def snapshot(top: Path) -> dict[str, str]:
    """Every file's text and every folder (the shadow tools' ``name-`` backups and lock
    aside: a real root has them anyway)."""
    found: dict[str, str] = {}
    for path in sorted(top.rglob("*")):
        name = str(path.relative_to(top))
        if path.is_dir():
            found[name + "/"] = ""
        elif not name.endswith("-") and path.name != ".pwd.lock":
            found[name] = path.read_text()
    return found


def setup(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(["setup", *argv])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def at(top: Path, path: Path) -> Path:
    return top / path.relative_to("/")


def db(top: Path, name: str) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":")
            for line in (top / "etc" / name).read_text().splitlines()}


def test_standalone_files_modes_user_and_groups(root: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = setup(capsys, "--root", str(root), "--standalone")
    users, groups = db(root, "passwd"), db(root, "group")
    assert users["mushpi"][6] == "/usr/sbin/nologin"
    assert int(users["mushpi"][2]) < 1000  # a system user
    for group in ("bluetooth", files.RFKILL_GROUP):
        assert "mushpi" in groups[group][3].split(","), groups[group]
    rule = at(root, files.UDEV_RULE).read_text()
    assert f'GROUP="{files.RFKILL_GROUP}", MODE="0664"' in rule
    assert 'user="mushpi"' in at(root, files.POLICY).read_text()
    settings = at(root, files.SETTINGS)
    assert settings.stat().st_mode & 0o777 == 0o640
    assert settings.stat().st_gid == int(groups["mushpi"][2])
    unit = at(root, files.UNIT_DIR / files.STANDALONE_UNIT).read_text()
    assert "SIMULATED" in unit and "simulated controller" in unit
    assert f"EnvironmentFile={files.SETTINGS}\n" in unit  # no "-": the file must exist
    assert "Type=notify" in unit and "RestartPreventExitStatus=3" in unit
    for path in (files.UDEV_RULE, files.POLICY, files.UNIT_DIR / files.STANDALONE_UNIT):
        assert at(root, path).stat().st_mode & 0o777 == 0o644
    manifest = json.loads(at(root, files.MANIFEST).read_text())
    assert manifest["users"] == ["mushpi"]
    assert sorted(manifest["groups"]) == sorted([files.RFKILL_GROUP, "mushpi"])
    assert sorted(map(tuple, manifest["members"])) == [
        ("mushpi", "bluetooth"), ("mushpi", files.RFKILL_GROUP)]
    # every step is logged; under an alternate root nothing runs on this system
    assert "skip (alternate root): systemctl daemon-reload" in out
    assert f"wrote {files.UDEV_RULE}" in out


def test_second_run_changes_nothing_and_remove_restores_the_root(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(root)
    setup(capsys, "--root", str(root), "--unit", CONTROLLER, "--notify")
    first = snapshot(root)
    again = setup(capsys, "--root", str(root), "--unit", CONTROLLER, "--notify")
    assert snapshot(root) == first
    assert "wrote" not in again and "would" not in again
    assert "user mushpi: present" in again and "up to date" in again
    setup(capsys, "--root", str(root), "--remove")
    assert snapshot(root) == before


def test_remove_keeps_what_the_operator_changed(root: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    policy = at(root, files.POLICY)
    policy.parent.mkdir(parents=True)
    policy.write_text("<busconfig/>\n")  # installed by hand before setup
    setup(capsys, "--root", str(root), "--standalone")
    settings = at(root, files.SETTINGS)
    settings.write_text("MUSHPI_BLE_WRITE_ACCESS=bonded\n")
    out = setup(capsys, "--root", str(root), "--remove")
    assert policy.read_text() == "<busconfig/>\n"  # as it was before setup
    assert settings.read_text() == "MUSHPI_BLE_WRITE_ACCESS=bonded\n"
    assert "changed since setup wrote it; kept" in out
    assert not at(root, files.UNIT_DIR / files.STANDALONE_UNIT).exists()
    assert "mushpi" not in db(root, "passwd")


def test_an_existing_settings_file_is_the_operators(root: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    settings = at(root, files.SETTINGS)
    settings.parent.mkdir(parents=True)
    settings.write_text("MUSHPI_BLE_ADAPTER=hci1\n")
    out = setup(capsys, "--root", str(root), "--standalone")
    assert settings.read_text() == "MUSHPI_BLE_ADAPTER=hci1\n"
    assert "kept (the operator's)" in out
    setup(capsys, "--root", str(root), "--remove")
    assert settings.read_text() == "MUSHPI_BLE_ADAPTER=hci1\n"


def test_existing_user_keeps_its_account(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "etc/passwd").write_text(BASE["etc/passwd"] + "pi:x:1000:1000::/home/pi:/bin/bash\n")
    (root / "etc/group").write_text(BASE["etc/group"] + "pi:x:1000:\n")
    setup(capsys, "--root", str(root), "--user", "pi", "--unit", CONTROLLER)
    assert db(root, "passwd")["pi"][6] == "/bin/bash"
    assert "pi" in db(root, "group")[files.RFKILL_GROUP][3]
    setup(capsys, "--root", str(root), "--remove")
    assert "pi" in db(root, "passwd")  # not ours to delete
    assert "pi" not in db(root, "group")["bluetooth"][3]


def test_dry_run_prints_every_file_and_command_and_changes_nothing(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(root)
    out = setup(capsys, "--root", str(root), "--standalone", "--dry-run")
    assert snapshot(root) == before
    for path in (files.UDEV_RULE, files.POLICY, files.SETTINGS,
                 files.UNIT_DIR / files.STANDALONE_UNIT,
                 files.dropin_path(files.BLUETOOTHD_UNIT)):
        assert f"would write {path}" in out
    assert "would run: useradd --system" in out
    assert "    | KERNEL==\"rfkill\"" in out


def test_dry_run_needs_no_root_and_no_root_folder_changes(
        capsys: pytest.CaptureFixture[str]) -> None:
    out = setup(capsys, "--standalone", "--dry-run")
    assert "would run: systemctl enable --now mushpi-ble-sim.service" in out or \
        "skip (systemctl not installed)" in out or "would run: systemctl" in out


@pytest.mark.parametrize(("argv", "words"), [
    (["--user", "Bad User"], "not a valid user name"),
    (["--unit", "controller"], "must name a .service unit"),
    (["--remove", "--standalone"], "--remove takes no"),
    (["--unit", "x.service", "--watchdog-s", "1"], "at least 2"),
])
def test_bad_arguments(root: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                       words: str) -> None:
    assert main(["setup", "--root", str(root), *argv]) == 2
    assert words in capsys.readouterr().err


def rendered(service: files.Service, unit: str = CONTROLLER) -> str:
    return files.dropin_text(unit, service)


def test_drop_in_follows_the_install() -> None:
    plain = rendered(files.Service(exec_start="/opt/mushpi/venv/bin/mushpi-ble"))
    assert "ProtectHome=yes" in plain and "RestrictAddressFamilies=AF_UNIX\n" in plain
    assert "Type=notify" not in plain and "LimitNPROC" not in plain
    assert "PrivateDevices" not in plain and "DeviceAllow=/dev/rfkill rw" in plain
    home = rendered(files.Service(exec_start="/home/pi/controller/.venv/bin/python -m app"))
    assert "ProtectHome=read-only" in home and "ProtectHome=yes" not in home
    metrics = rendered(files.Service(metrics_port=9477))
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in metrics
    assert "PrivateNetwork" not in metrics
    network = rendered(files.Service(network=True))
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in network
    assert "PrivateNetwork" not in network and "IPAddressDeny" not in network
    notify = rendered(files.Service(notify=True, watchdog_s=12))
    assert "Type=notify" in notify and "WatchdogSec=12" in notify
    assert "Environment=MUSHPI_BLE_SYSTEMD_NOTIFY=true" in notify
    extra = rendered(files.Service(devices=("char-gpiochip rw",), writable=("/var/lib/c",)))
    assert "DeviceAllow=char-gpiochip rw" in extra and "ReadWritePaths=/var/lib/c" in extra


# -- as bookworm's systemd reads them ---------------------------------------------------------
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing (scripts/test installs it)")
SCORE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+)")


def verify(root: Path, unit: str) -> str:
    """``systemd-analyze verify`` of the unit with its drop-ins from the root; its output."""
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{root}/etc/systemd/system:"}
    done = subprocess.run(["systemd-analyze", "verify", unit], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def exposure(root: Path, unit: str) -> float:
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--root={root}",
                           "--no-pager", unit], capture_output=True, text=True, timeout=60,
                          check=False)
    found = SCORE.search(done.stdout)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


@needs_systemd
@pytest.mark.parametrize("argv", [["--unit", CONTROLLER, "--notify"], ["--standalone"],
                                  ["--unit", CONTROLLER, "--metrics-port", "9477"]])
def test_systemd_accepts_the_unit_and_drop_in(root: Path, capsys: pytest.CaptureFixture[str],
                                              argv: list[str]) -> None:
    setup(capsys, "--root", str(root), *argv)
    unit = files.STANDALONE_UNIT if "--standalone" in argv else CONTROLLER
    output = verify(root, unit)
    ours = [line for line in output.splitlines() if str(root) in line or unit in line]
    assert ours == [], output


@needs_systemd
def test_unit_and_drop_in_score_at_most_2(root: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = exposure(root, CONTROLLER)
    setup(capsys, "--root", str(root), "--unit", CONTROLLER, "--notify")
    after = exposure(root, CONTROLLER)
    print(f"systemd-analyze security {CONTROLLER}: {before} before, {after} with the drop-in",
          file=sys.stderr)
    assert after <= 2.0
    setup(capsys, "--root", str(root), "--remove")
    setup(capsys, "--root", str(root), "--standalone")
    assert exposure(root, files.STANDALONE_UNIT) <= 2.0


@pytest.mark.parametrize("argv", [["--unit", CONTROLLER], ["--standalone"]])
def test_bluetoothd_is_started_again_after_a_crash(root: Path, capsys: pytest.CaptureFixture[str],
                                                   argv: list[str]) -> None:
    """bookworm's bluetooth.service ships Restart= commented out: setup adds a drop-in of
    its own for it, in either mode, and --remove takes it (and its folder) away."""
    before = snapshot(root)
    setup(capsys, "--root", str(root), *argv)
    dropin = at(root, files.dropin_path(files.BLUETOOTHD_UNIT))
    assert dropin == root / "etc/systemd/system/bluetooth.service.d/50-mushpi-ble.conf"
    service = dropin.read_text().split("[Service]\n", 1)[1].splitlines()
    assert "Restart=on-failure" in service and "RestartSec=2" in service
    # the service's own unit is still the one check looks at
    unit = CONTROLLER if "--unit" in argv else files.STANDALONE_UNIT
    assert json.loads(at(root, files.MANIFEST).read_text())["units"] == [unit]
    assert check_system.service_unit(root) == unit
    setup(capsys, "--root", str(root), "--remove")
    assert snapshot(root) == before


@needs_systemd
@pytest.mark.skipif(not Path("/lib/systemd/system/bluetooth.service").exists(),
                    reason="bluez's bluetooth.service missing (scripts/test installs bluez)")
def test_systemd_accepts_the_bluetoothd_drop_in(root: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """bookworm's own bluetooth.service with our drop-in from the root."""
    setup(capsys, "--root", str(root), "--unit", CONTROLLER)
    output = verify(root, files.BLUETOOTHD_UNIT)
    assert [line for line in output.splitlines() if "50-mushpi-ble" in line] == [], output


def test_dry_run_without_a_unit_still_reloads_for_the_bluetoothd_drop_in(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With neither --unit nor --standalone, setup still writes bluetooth.service's
    drop-in, and systemd must read it: a dry run says both, as a real run does them."""
    out = setup(capsys, "--root", str(root), "--dry-run")
    assert f"would write {files.dropin_path(files.BLUETOOTHD_UNIT)}" in out
    assert "systemctl daemon-reload" in out
    real = setup(capsys, "--root", str(root))
    assert f"wrote {files.dropin_path(files.BLUETOOTHD_UNIT)}" in real
    assert "systemctl daemon-reload" in real
