"""The README's Pi section under a real systemd (PID 1 of a trixie VM, udev, Debian's
bluetooth.service, btvirt controllers): the wheel installed into a venv under /opt as a
packager would, ``mushpi-ble setup --user mushpi --unit mushpi-sim.service --notify``
for a unit that runs ``serve`` as the stand-in controller, then in order what the issue
asks of it. The tests run in file order and share the one system; each prints its figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from mushpi_ble.protocol import CHARACTERISTIC_UUIDS, SERVICE_UUID, ControlTargets

T = TypeVar("T")

JOB = Path(os.environ.get("MUSHPI_VM_JOB", "/tmp"))
WHEELHOUSE = os.environ.get("MUSHPI_VM_WHEELHOUSE", "")
PREFIX = Path("/opt/mushpi/venv")  # the README's
CLI = str(PREFIX / "bin/mushpi-ble")
UNIT = "mushpi-sim.service"
STANDALONE = "mushpi-ble-sim.service"
SETTINGS = Path("/etc/mushpi/ble.env")
WATCHDOG_S = 6
GOOD_SETTINGS = "MUSHPI_BLE_ADAPTER=hci0\nMUSHPI_SIM_INTERVAL_S=5\n"
CONTROLLER_UNIT = f"""\
[Unit]
Description=MushPi controller (here its stand-in: mushpi-ble serve, a simulated controller)

[Service]
ExecStart={CLI} --log-format json serve --interval 5
EnvironmentFile={SETTINGS}
Environment=MUSHPI_ENV_FILE={SETTINGS}

[Install]
WantedBy=multi-user.target
"""
OURS = (Path("/etc/udev/rules.d/70-mushpi-rfkill.rules"),
        Path("/etc/dbus-1/system.d/org.mushpi.Ble.conf"),
        Path(f"/etc/systemd/system/{UNIT}.d/50-mushpi-ble.conf"),
        Path("/etc/systemd/system/bluetooth.service.d/50-mushpi-ble.conf"),
        Path("/var/lib/mushpi-ble/setup.json"))
# trixie's bluetooth.service restarts bluetoothd on failure; bookworm's (Raspberry Pi OS
# 12) has that line commented out. The lab makes this trixie behave like bookworm, so the
# crash step shows setup's own drop-in at work.
AS_BOOKWORM = Path("/etc/systemd/system/bluetooth.service.d/00-lab-as-bookworm.conf")
FIGURES: dict[str, Any] = {
    "generation": "systemd", "passes": [], "kernel": os.uname().release,
    "python": platform.python_version(),
    "bluetoothd": subprocess.run(["/usr/libexec/bluetooth/bluetoothd", "--version"],
                                 capture_output=True, text=True, check=False).stdout.strip(),
}


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(argv)} -> {done.returncode}\n{done.stdout}\n"
                             f"{done.stderr}")
    return done


def show(unit: str, *props: str) -> dict[str, str]:
    out = sh("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def monotonic_s(unit: str, prop: str) -> float:
    return int(show(unit, prop)[prop]) / 1e6


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def cursor() -> str:
    out = sh("journalctl", "-n", "0", "--show-cursor", "--no-pager").stdout
    return out.strip().rsplit("cursor: ", 1)[-1]


def journal(after: str, *args: str) -> str:
    return sh("journalctl", "--no-pager", f"--after-cursor={after}", *args).stdout


def figure(key: str, value: Any) -> None:
    FIGURES[key] = value
    print(f"\nFIGURE {key} = {value}")
    (JOB / "metrics.json").write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


def security_score(unit: str) -> float:
    out = sh("systemd-analyze", "security", "--no-pager", unit).stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert found, out
    return float(found.group(1))


def system_state() -> dict[str, str]:
    """What setup may touch: our files, the accounts, the unit folders."""
    state = {str(p): p.read_text() if p.exists() else "-" for p in OURS}
    for name in ("passwd", "group"):
        state[name] = Path(f"/etc/{name}").read_text()
    state["units"] = " ".join(sorted(os.listdir("/etc/systemd/system")))
    state["var/lib"] = " ".join(sorted(os.listdir("/var/lib")))
    return state


# -- the packager's steps ------------------------------------------------------------------
def test_00_the_readmes_apt_line() -> None:
    """`apt-get install bluez python3-venv`: offline here, the root was built with both,
    so apt has nothing to fetch and says so."""
    done = sh("apt-get", "install", "-y", "--no-download", "bluez", "python3-venv")
    for package in ("bluez", "python3-venv"):
        assert f"{package} is already the newest version" in done.stdout, done.stdout


def test_01_wheel_installed_into_a_venv_under_opt() -> None:
    """The packager's lines: a venv under /opt with its own pip, which installs
    `mushpi-ble[metrics]` (offline here: from the lab's wheel and wheelhouse, not PyPI)."""
    wheel = next((JOB / "wheel").glob("mushpi_ble-*.whl"))
    started = time.monotonic()
    sh("python3", "-m", "venv", str(PREFIX))
    sh(str(PREFIX / "bin/pip"), "install", "-q", "--no-index", "--find-links", WHEELHOUSE,
       f"mushpi-ble[metrics] @ file://{wheel}", timeout=300)
    figure("install_s", round(time.monotonic() - started, 1))
    assert sh(CLI, "--version").stdout.startswith("mushpi-ble ")


BEFORE: dict[str, str] = {}


def test_02_setup_for_the_controllers_unit() -> None:
    SETTINGS.parent.mkdir(parents=True, exist_ok=True)
    SETTINGS.write_text(GOOD_SETTINGS)
    Path(f"/etc/systemd/system/{UNIT}").write_text(CONTROLLER_UNIT)
    AS_BOOKWORM.parent.mkdir(parents=True, exist_ok=True)
    AS_BOOKWORM.write_text("[Service]\nRestart=no\n")
    sh("systemctl", "daemon-reload")
    assert show("bluetooth.service", "Restart")["Restart"] == "no"
    BEFORE.update(system_state())
    figure("security_before", security_score(UNIT))
    done = sh(CLI, "setup", "--user", "mushpi", "--unit", UNIT, "--notify",
              "--watchdog-s", str(WATCHDOG_S))
    print(done.stdout)
    assert "setup: done" in done.stdout
    # the udev rule applied at once: the service's group may write /dev/rfkill
    rfkill = sh("stat", "-c", "%G %a", "/dev/rfkill").stdout.split()
    assert rfkill == ["mushpi-rfkill", "664"], rfkill
    groups = sh("id", "-nG", "mushpi").stdout.split()
    assert {"bluetooth", "mushpi-rfkill"} <= set(groups), groups
    score = security_score(UNIT)
    figure("security_after", score)
    assert score <= 2.0


DEVICE: dict[str, BLEDevice] = {}


async def _start_while_scanning() -> list[str]:
    """Scan on hci1 first (btvirt reports an advertiser on an edge), then start the unit
    and watch its state until it is active."""
    found = asyncio.Event()

    def seen(device: BLEDevice, adv: AdvertisementData) -> None:
        if SERVICE_UUID in {u.lower() for u in adv.service_uuids}:
            DEVICE["pi"] = device
            found.set()

    scanner = BleakScanner(detection_callback=seen, bluez={"adapter": "hci1"})
    await scanner.start()
    try:
        sh("systemctl", "start", "--no-block", UNIT)
        states: list[str] = []
        while not states or states[-1] not in ("active", "failed"):
            state = show(UNIT, "ActiveState")["ActiveState"]
            if not states or states[-1] != state:
                states.append(state)
            await asyncio.sleep(0.05)
        await asyncio.wait_for(found.wait(), 60)
    finally:
        await scanner.stop()
    return states


def test_03_active_only_after_ready() -> None:
    states = asyncio.run(_start_while_scanning())
    assert states[-1] == "active" and "activating" in states, states
    start_to_ready = (monotonic_s(UNIT, "ActiveEnterTimestampMonotonic")
                      - monotonic_s(UNIT, "InactiveExitTimestampMonotonic"))
    figure("start_to_ready_s", round(start_to_ready, 2))
    # READY=1 came with the first status: the unit went active serving, not before
    text = show(UNIT, "StatusText")["StatusText"]
    assert text.startswith("serving as MushPi-"), text
    user = sh("ps", "-o", "user=", "-p", show(UNIT, "MainPID")["MainPID"]).stdout.strip()
    assert user == "mushpi"


async def _central() -> tuple[int, bytes, int]:
    """Connect as the app does, retrying a link that drops during the first discovery
    (as phones do; seen once in the lab right after the advert was registered again)."""
    targets = ControlTargets(temp_min_x10=180, temp_max_x10=260, rh_min_x10=850, co2_max=1200)
    for attempt in range(1, 4):
        try:
            async with BleakClient(DEVICE["pi"], bluez={"adapter": "hci1"},
                                   timeout=40) as client:
                env = bytes(await client.read_gatt_char(
                    CHARACTERISTIC_UUIDS["env_measurements"]))
                await client.write_gatt_char(CHARACTERISTIC_UUIDS["control_targets"],
                                             targets.pack(), response=True)
                back = bytes(await client.read_gatt_char(
                    CHARACTERISTIC_UUIDS["control_targets"]))
            return len(env), back, attempt
        except BleakError as exc:
            if attempt == 3:
                raise
            print(f"connect attempt {attempt}: {exc}; again")
            await asyncio.sleep(2)
    raise AssertionError("unreachable")


def test_04_a_central_reads_env_and_writes_targets() -> None:
    size, back, attempts = asyncio.run(_central())
    figure("central_connect_attempts", attempts)
    assert size == 12
    assert back == ControlTargets(temp_min_x10=180, temp_max_x10=260, rh_min_x10=850,
                                  co2_max=1200).pack()


def test_05_systemctl_status_shows_our_status_line() -> None:
    out = sh("systemctl", "status", "--no-pager", UNIT, check=False).stdout
    assert re.search(r'Status: "serving as MushPi-\S+, \d+ phones? connected', out), out


def test_05b_check_as_the_service_user() -> None:
    """The README's check line, as the service user: every piece of setup right for it."""
    done = sh("runuser", "-u", "mushpi", "--", CLI, "check", "--env-file", str(SETTINGS),
              check=False, timeout=180)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    for words in ("/dev/rfkill is writable by mushpi", f"read {SETTINGS}",
                  "mushpi is in bluetooth", "advertising probe",
                  f"{UNIT} is active, Type=notify, watchdog {WATCHDOG_S} s"):
        assert words in done.stdout, words
    assert "NOT:" not in done.stdout


def test_05c_status_and_pair_reach_the_service_under_systemd() -> None:
    """The grower's view of the running service: `status` (once, as JSON, and --watch
    until interrupted) and `pair --wait`, as root over the system bus, through the
    policy setup installed."""
    status = json.loads(sh(CLI, "status", "--json").stdout)
    assert status["registered"] is True and status["state"] == "serving"
    frame = sh(CLI, "status").stdout.splitlines()
    assert frame[0].startswith("MushPi BLE · serving as MushPi-")
    assert len(frame) <= 24 and max(map(len, frame)) <= 80
    watch = subprocess.Popen([CLI, "status", "--watch", "0.5"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    watch.send_signal(signal.SIGINT)
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert out.count("MushPi BLE · serving as") >= 2  # redrawn
    waited = sh(CLI, "pair", "--seconds", "2", "--wait", check=False, timeout=60)
    figure("pair_wait_exit", waited.returncode)
    if status["pairing"]["mode"] in ("window", "passkey"):
        assert waited.returncode == 1, waited.stdout + waited.stderr
        assert "the pairing window closed before a phone bonded" in waited.stdout
    else:  # no window in this mode: refused plainly, as the README says
        assert waited.returncode == 1 and "refused" in waited.stderr + waited.stdout


def test_05d_journalctl_p_warning_shows_the_warnings() -> None:
    """The README: `journalctl -u <unit> -p warning` shows our warnings (serve's first
    line says its controller is simulated)."""
    warnings = sh("journalctl", "--no-pager", "-b", "-u", UNIT, "-p", "warning").stdout
    assert "SIMULATED controller" in warnings, warnings
    info = sh("journalctl", "--no-pager", "-b", "-u", UNIT, "-p", "info").stdout
    assert "serving name=" in info and "serving name=" not in warnings


GROWER = "grower"
GROWER_VENV = Path(f"/home/{GROWER}/mushpi")


def as_grower(*argv: str, check: bool = True, timeout: float = 300
              ) -> subprocess.CompletedProcess[str]:
    """A command as the grower would type it: their user, their home directory."""
    return sh("runuser", "-u", GROWER, "--", "sh", "-c", 'cd && exec "$@"', "sh", *argv,
              check=check, timeout=timeout)


def test_05e_the_growers_venv_as_the_readme_makes_it() -> None:
    """`python3 -m venv ~/mushpi && ~/mushpi/bin/pip install mushpi-ble` as a user in the
    bluetooth group (offline here: from the lab's wheelhouse and wheel, no PyPI)."""
    sh("useradd", "--create-home", "--groups", "bluetooth", GROWER)
    wheels = Path("/tmp/grower-wheels")
    wheels.mkdir(exist_ok=True)
    for wheel in [*Path(WHEELHOUSE).glob("*.whl"), *(JOB / "wheel").glob("mushpi_ble-*.whl")]:
        (wheels / wheel.name).write_bytes(wheel.read_bytes())
    started = time.monotonic()
    as_grower("python3", "-m", "venv", str(GROWER_VENV))
    as_grower(str(GROWER_VENV / "bin/pip"), "install", "-q", "--no-index", "--find-links",
              str(wheels), "mushpi-ble")
    figure("grower_venv_s", round(time.monotonic() - started, 1))
    assert as_grower(str(GROWER_VENV / "bin/mushpi-ble"), "--version").stdout.startswith(
        "mushpi-ble ")


def test_05f_the_growers_serve_beside_the_unit_refuses_and_names_it() -> None:
    """Only one peripheral serves an adapter, also when the second is another user's whom
    the policy keeps from the management name: it refuses, naming the unit's process."""
    pid = show(UNIT, "MainPID")["MainPID"]
    done = as_grower(str(GROWER_VENV / "bin/mushpi-ble"), "serve", check=False, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "already serves adapter hci0" in done.stderr and f"process {pid}" in done.stderr, \
        done.stderr
    assert show(UNIT, "ActiveState")["ActiveState"] == "active"


def rfkill_soft(adapter: str) -> bool:
    switch = next(Path(f"/sys/class/bluetooth/{adapter}").glob("rfkill*"))
    return (switch / "soft").read_text().strip() == "1"


def test_06_rfkill_block_is_lifted_by_the_service_user() -> None:
    try:
        sh("rfkill", "block", "bluetooth")
        wait_for(lambda: not rfkill_soft("hci0"), 30, "the service (user mushpi) to unblock hci0")
        assert rfkill_soft("hci1")  # the phone's adapter stays blocked: nobody else lifted it
    finally:
        sh("rfkill", "unblock", "bluetooth")
    wait_for(lambda: show(UNIT, "StatusText")["StatusText"].startswith("serving as"), 30,
             "serving again after the block")


def test_07_a_stalled_loop_is_restarted_by_the_watchdog() -> None:
    pid = show(UNIT, "MainPID")["MainPID"]
    mark = cursor()
    stopped_at = time.monotonic()  # CLOCK_MONOTONIC, as systemd's *Monotonic timestamps
    sh("kill", "-STOP", pid)

    def restarted() -> bool:
        now = show(UNIT, "MainPID", "ActiveState")
        return now["MainPID"] not in ("0", pid) and now["ActiveState"] == "active"

    wait_for(restarted, WATCHDOG_S + 90, "the watchdog to restart the unit", every=0.2)
    took = monotonic_s(UNIT, "ActiveEnterTimestampMonotonic") - stopped_at
    figure("watchdog_restart_s", round(took, 2))
    assert "Watchdog timeout" in journal(mark, "-u", UNIT), journal(mark, "-u", UNIT)
    # killed after WatchdogSec, then RestartSec=5, then a new start up to READY: bounded
    assert WATCHDOG_S <= took <= WATCHDOG_S + 5 + 60


def test_08_bluetoothd_restart_is_survived() -> None:
    pid = show(UNIT, "MainPID")["MainPID"]
    mark = cursor()
    sh("systemctl", "restart", "bluetooth.service")
    wait_for(lambda: "registered again" in journal(mark, "-u", UNIT), 60,
             "the peripheral registered again")
    assert show(UNIT, "MainPID", "ActiveState") == {"MainPID": pid, "ActiveState": "active"}


def test_08b_a_crashed_bluetoothd_is_started_again() -> None:
    """bluetoothd killed by SIGSEGV, as a central that leaves while a read is pending
    makes it crash later (README): bluetooth.service starts it again only through setup's
    drop-in (the lab's own makes it bookworm's Restart=no), and the peripheral, still
    the same process, registers again on the new bluetoothd."""
    shown = show("bluetooth.service", "Restart", "DropInPaths", "MainPID")
    assert shown["Restart"] == "on-failure", shown
    assert "/bluetooth.service.d/50-mushpi-ble.conf" in shown["DropInPaths"], shown
    ours = show(UNIT, "MainPID")["MainPID"]
    mark = cursor()
    sh("kill", "-SEGV", shown["MainPID"])

    def started_again() -> bool:
        now = show("bluetooth.service", "MainPID", "ActiveState")
        return now["ActiveState"] == "active" and now["MainPID"] not in ("0", shown["MainPID"])

    wait_for(started_again, 60, "systemd to start bluetoothd again")
    wait_for(lambda: "registered again" in journal(mark, "-u", UNIT), 60,
             "the peripheral registered again")
    assert show(UNIT, "MainPID", "ActiveState") == {"MainPID": ours, "ActiveState": "active"}


def test_09_broken_settings_stop_the_unit_without_a_restart_loop() -> None:
    mark = cursor()
    # the README's old snippet: systemd keeps an inline comment as part of the value
    SETTINGS.write_text(GOOD_SETTINGS + "MUSHPI_BLE_WRITE_ACCESS=bonded   # only paired\n")
    try:
        assert sh("systemctl", "restart", UNIT, check=False).returncode != 0
        state = show(UNIT, "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
        # "failed", not "activating (auto-restart)": RestartPreventExitStatus=3 held (a
        # manual restart sets NRestarts to 0; each automatic one would count)
        assert state == {"ActiveState": "failed", "SubState": "failed", "Result": "exit-code",
                         "ExecMainStatus": "3", "NRestarts": "0"}, state
        errors = journal(mark, "-u", UNIT, "-p", "err")
        assert "MUSHPI_BLE_WRITE_ACCESS" in errors, errors
    finally:
        SETTINGS.write_text(GOOD_SETTINGS)
        sh("systemctl", "reset-failed", UNIT)
    sh("systemctl", "start", UNIT, timeout=120)


def test_10_stop_is_clean_and_bounded() -> None:
    mark = cursor()
    asked = time.monotonic()
    sh("systemctl", "stop", UNIT, timeout=60)  # returns once the unit is inactive
    figure("stop_s", round(time.monotonic() - asked, 2))
    state = show(UNIT, "ActiveState", "Result")
    # "success": it ended on SIGTERM by itself, within TimeoutStopSec (else "timeout")
    assert state == {"ActiveState": "inactive", "Result": "success"}, state
    stopped = re.search(r"stopped stop_ms=(\d+)", journal(mark, "-u", UNIT))
    assert stopped, journal(mark, "-u", UNIT)
    figure("portal_stop_ms", int(stopped.group(1)))


async def _grower_serves_while_scanning() -> tuple[float, int, str]:
    """Scan on hci1, start the grower's `~/mushpi/bin/mushpi-ble serve` in the
    foreground, wait for its advert, then Ctrl-C it: (seconds to the advert, its exit
    code, its output)."""
    found = asyncio.Event()

    def seen(_device: BLEDevice, adv: AdvertisementData) -> None:
        if SERVICE_UUID in {u.lower() for u in adv.service_uuids}:
            found.set()

    scanner = BleakScanner(detection_callback=seen, bluez={"adapter": "hci1"})
    await scanner.start()
    # the grower's own process (not under runuser, which keeps Ctrl-C from it)
    serve = subprocess.Popen([str(GROWER_VENV / "bin/mushpi-ble"), "serve"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=f"/home/{GROWER}", user=GROWER, group=GROWER,
                             extra_groups=["bluetooth"],
                             env={"HOME": f"/home/{GROWER}", "PATH": "/usr/bin:/bin",
                                  "LANG": "C.UTF-8"})
    started = time.monotonic()
    try:
        await asyncio.wait_for(found.wait(), 90)
        advert_s = time.monotonic() - started
    finally:
        await scanner.stop()
        serve.send_signal(signal.SIGINT)
    out, _ = serve.communicate(timeout=60)
    return advert_s, serve.returncode, out


def test_10b_the_grower_serves_in_the_foreground() -> None:
    """The README's grower: `~/mushpi/bin/mushpi-ble serve` as a bluetooth-group user,
    no unit, no setup of its own; phones see it; Ctrl-C ends it cleanly."""
    try:
        advert_s, code, out = asyncio.run(_grower_serves_while_scanning())
    finally:
        sh("userdel", "--remove", GROWER)  # the lab's user: not setup's to undo
    figure("grower_serve_to_advert_s", round(advert_s, 2))
    print(out)
    assert code == 0, out
    assert "SIMULATED controller" in out.splitlines()[0], out


def test_11_remove_leaves_nothing_of_ours() -> None:
    done = sh(CLI, "setup", "--remove")
    print(done.stdout)
    assert system_state() == BEFORE
    assert show("bluetooth.service", "Restart")["Restart"] == "no"  # the lab's, as before
    assert sh("stat", "-c", "%G", "/dev/rfkill").stdout.strip() == "root"


def test_12_a_grower_tries_it_with_one_command() -> None:
    """``setup --standalone``: the serve unit, enabled and started, then removed."""
    sh(CLI, "setup", "--standalone")
    wait_for(lambda: show(STANDALONE, "ActiveState")["ActiveState"] == "active", 60,
             f"{STANDALONE} active")
    assert "simulated controller" in show(STANDALONE, "Description")["Description"]
    assert SETTINGS.read_text() == GOOD_SETTINGS  # the operator's file is kept
    sh(CLI, "setup", "--remove")
    assert show(STANDALONE, "LoadState")["LoadState"] == "not-found"
    assert system_state() == BEFORE


def test_13_pip_uninstall_takes_the_package_out() -> None:
    """The README's last line, `/opt/mushpi/venv/bin/pip uninstall mushpi-ble`."""
    sh(str(PREFIX / "bin/pip"), "uninstall", "-y", "mushpi-ble", timeout=300)
    assert not Path(CLI).exists()
    sh(str(PREFIX / "bin/python"), "-c", "import importlib.util, sys; "
       "sys.exit(importlib.util.find_spec('mushpi_ble') is not None)")


@pytest.fixture(autouse=True, scope="session")
def _journal_on_failure() -> Any:
    yield
    (JOB / "units.txt").write_text(sh("systemctl", "status", "--no-pager", "--all",
                                      check=False).stdout)
