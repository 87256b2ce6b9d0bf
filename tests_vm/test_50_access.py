"""Who may steer the room, on the real bluetoothd: bonded-only writes and pairing windows.

The lab's portal is replaced, for these tests, by one with
``MUSHPI_BLE_WRITE_ACCESS=bonded``; its management interface is reached
with ``mushpi-ble pair`` / ``bonds`` over the guest's system bus, with the
policy file ``mushpi-ble dbus-policy`` prints installed as a grower would.

- ``mushpi-ble pair`` opens a window. A central writes; bluetoothd answers
  with an ATT security error (the characteristics carry ``encrypt-write``);
  the central pairs by itself (Just Works, as a phone's OS does) and its
  retried write reaches the controller.
- With the window closed, a second central (hci2) writes: refused on the
  air, its pairing is rejected by our agent ("pairing window closed"), the
  controller never sees it.
- ``mushpi-ble bonds`` lists the first central; ``bonds --remove`` forgets
  it: bluetoothd drops the link, and its next write fails again.
- Passkey mode: the peripheral shows a passkey (``on_pairing_passkey``),
  the central's user types it (its agent answers ``RequestPasskey`` with
  it; the central pairs explicitly, as a phone's settings page does), and
  the authenticated bond may write.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mgmt
import pytest
from central_agent import PairingFailed
from conftest import (
    CENTRAL_ADAPTER,
    PERIPHERAL_ADAPTER,
    SECOND_CENTRAL_ADAPTER,
    LoopThread,
    Metrics,
    PortalLab,
    SystemBus,
    btmon_offset,
    btmon_since,
    connect_device,
    forget_bond,
    pair_as_central,
    portal_in_place_of_the_lab,
    wait_for,
)
from hub import Hub, device_at

from mushpi_ble.cli import main as cli_main
from mushpi_ble.protocol import ControlTargets

POLICY = Path("/etc/dbus-1/system.d/org.mushpi.Ble.conf")
# The peripheral's bluetoothd refusing the write on the air, and the central pairing next.
# (btmon shortens "ACL Data TX:" to "ACL Data T.." on lines it prefixes with the
# sending process, e.g. bluetoothd's, once frame numbers grow to four digits.)
REFUSED_ON_AIR = re.compile(
    r"ACL Data T[^\n]*\[hci0\][^\n]*\n\s+ATT: Error Response[^\n]*\n\s+Write Request"
    r"[^\n]*\n[^\n]*\n\s+Error: Insufficient Encryption \(0x0f\)")
REFUSED_WRITE_WAIT_S = 4
TARGETS = ControlTargets(190, 270, 710, 1400, light_mode=2, on_minutes=600,
                         off_minutes=840).pack()


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``mushpi-ble *argv``: its exit code and what it printed, as a process would."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(list(argv))
        except SystemExit as exc:  # how the commands refuse: a message, or a code
            if isinstance(exc.code, int) or exc.code is None:
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def policy_installed(system_bus: SystemBus) -> Iterator[None]:
    """The install step of the README, in the guest's throw-away root."""
    done = cli("dbus-policy", "--user", "root")
    assert done.returncode == 0, done.stderr
    POLICY.write_text(done.stdout)
    system_bus.call("/org/freedesktop/DBus", "org.freedesktop.DBus", "ReloadConfig",
                    dest="org.freedesktop.DBus")
    try:
        yield
    finally:
        POLICY.unlink(missing_ok=True)


class Locked:
    def __init__(self, portal: Any, shown: list[tuple[str, int]]) -> None:
        self.portal = portal
        self.shown = shown

    def status(self) -> dict[str, Any]:
        return dict(self.portal.get_status())


@pytest.fixture(scope="module", autouse=True)
def classic_pass_only(bluez: str) -> None:
    """Bonds and windows do not depend on the bearer: once per generation is enough.

    Module-scoped, so the skip comes before the module's own fixtures are set up."""
    if bluez != "att":
        pytest.skip("access tests run in the att pass of each generation")


@contextlib.contextmanager
def locked_portal(portal_lab: PortalLab, pairing: str) -> Iterator[Locked]:
    """The lab's portal stopped; one whose writes need a bond in its place."""
    shown: list[tuple[str, int]] = []
    with portal_in_place_of_the_lab(portal_lab, MUSHPI_BLE_WRITE_ACCESS="bonded",
                                    MUSHPI_BLE_PAIRING=pairing,
                                    MUSHPI_BLE_STATE_DIR=tempfile.mkdtemp()) as portal:
        portal.set_callbacks(
            on_pairing_passkey=lambda address, key: shown.append((address, key)))
        wait_for(lambda: portal.get_status()["pairing"]["agent_registered"], 15,
                 "our agent registered")
        yield Locked(portal, shown)


def _part(bus: SystemBus, lab_address: str, central: str,
          adapter: str = CENTRAL_ADAPTER) -> None:
    forget_bond(bus, adapter, lab_address)
    forget_bond(bus, PERIPHERAL_ADAPTER, central)


def _writes(portal_lab: PortalLab) -> int:
    return sum(1 for name, _ in portal_lab.controller.writes if name == "control_targets")


def _hub_write(path: str, address: str, timeout: float = 40,
               adapter: str = CENTRAL_ADAPTER) -> None:
    """Connect bleak, write control targets, disconnect; raises what the write raised."""
    with LoopThread("access-hub") as loop:
        hub = Hub(device_at(path, address), adapter=adapter)
        loop.run(hub.connect(), 60)
        try:
            loop.run(hub.write("control_targets", TARGETS), timeout)
        finally:
            with contextlib.suppress(Exception):
                loop.run(hub.disconnect(), 30)


def _refused_write(bus: SystemBus, portal_lab: PortalLab, locked: Locked,
                   adapter: str = CENTRAL_ADAPTER) -> str:
    """A central that is not bonded writes: it fails, and the controller sees nothing."""
    before = _writes(portal_lab)
    trace_from = btmon_offset()
    path = connect_device(bus, portal_lab.address, adapter)
    wait_for(lambda: bool(bus.get(path, "org.bluez.Device1", "ServicesResolved")), 40,
             "ServicesResolved")
    # bleak's error varies: 5.66's central reports the failed retry as ATT 0x0e at once;
    # 5.82's never answers the write once its pairing was refused (the link is gone), so
    # its write ends at the timeout; the trace below shows what happened on the air
    with pytest.raises(Exception) as failed:
        _hub_write(path, portal_lab.address, timeout=REFUSED_WRITE_WAIT_S, adapter=adapter)
    assert _writes(portal_lab) == before
    # bluetoothd refused it on the air (the central then asked to pair, as a phone does);
    # our own gate never saw it
    trace = btmon_since(trace_from, "Insufficient Encryption", "SMP: Pairing Request")
    assert REFUSED_ON_AIR.search(trace), trace[-3000:]
    assert locked.status()["access"]["refused_writes"] == 0
    return f"{type(failed.value).__name__}: {failed.value}"


@pytest.mark.pairing
def test_bonded_writes_need_a_pairing_window(
        bluez: str, portal_lab: PortalLab, system_bus: SystemBus, policy_installed: None,
        metrics: Metrics) -> None:
    central = system_bus.adapter_address(CENTRAL_ADAPTER)
    second = system_bus.adapter_address(SECOND_CENTRAL_ADAPTER)
    _part(system_bus, portal_lab.address, central)
    _part(system_bus, portal_lab.address, second, SECOND_CENTRAL_ADAPTER)
    with locked_portal(portal_lab, "window") as locked:
        try:
            # 1. the grower opens a window from the command line; the phone writes, meets
            # the security error, pairs by itself (as a phone's OS does: bluetoothd on the
            # central side pairs and retries) and its write reaches the controller
            opened = cli("pair", "--seconds", "60")
            assert opened.returncode == 0, opened.stderr
            assert "pairing window open for 60 s" in opened.stdout
            assert locked.status()["access"]["window_open"]
            before = _writes(portal_lab)
            trace_from = btmon_offset()
            path = connect_device(system_bus, portal_lab.address)
            wait_for(lambda: bool(system_bus.get(path, "org.bluez.Device1",
                                                 "ServicesResolved")), 40, "ServicesResolved")
            started = time.monotonic()
            _hub_write(path, portal_lab.address)
            metrics.set(f"{bluez}.access_pair_and_write_s", round(time.monotonic() - started, 2))
            assert _writes(portal_lab) == before + 1
            assert bool(system_bus.get(path, "org.bluez.Device1", "Paired"))
            trace = btmon_since(trace_from, "Insufficient Encryption")
            assert REFUSED_ON_AIR.search(trace), "the first write was not refused on the air"
            accepted = [a for a in locked.status()["pairing"]["recent"]
                        if a["address"] == central and a["outcome"] in ("accepted", "paired")]
            assert accepted, locked.status()["pairing"]["recent"]
            # our agent admitted it in the window: approved, and the window, for one new
            # phone, closed by itself
            wait_for(lambda: locked.status()["access"]["approved"] == [central], 10,
                     "the approval")
            assert not locked.status()["access"]["window_open"]
            closed = cli("pair", "--close")
            assert closed.returncode == 0, closed.stderr
            wait_for(lambda: locked.status()["access"]["bonded_count"] == 1, 10, "the bond")

            # 2. a second central, outside the window: its write fails and it cannot pair
            metrics.set(f"{bluez}.access_refused_write_error",
                        _refused_write(system_bus, portal_lab, locked, SECOND_CENTRAL_ADAPTER))
            path2 = connect_device(system_bus, portal_lab.address, SECOND_CENTRAL_ADAPTER)
            with pytest.raises(PairingFailed) as refused:
                pair_as_central(path2, adapter=SECOND_CENTRAL_ADAPTER)
            metrics.set(f"{bluez}.access_refused_pairing", refused.value.name)
            rejected = [a for a in locked.status()["pairing"]["recent"]
                        if a["address"] == second and a["outcome"] == "rejected"]
            assert rejected and rejected[-1]["reason"] == "pairing window closed", rejected
            assert locked.status()["access"]["bonded_count"] == 1
            _part(system_bus, portal_lab.address, second, SECOND_CENTRAL_ADAPTER)

            # 3. the first phone's bond is listed, then removed: its writes fail again
            listed = cli("bonds", "--json")
            assert listed.returncode == 0, listed.stderr
            assert [b["address"] for b in json.loads(listed.stdout)] == [central]
            removed = cli("bonds", "--remove", central)
            assert removed.returncode == 0, removed.stderr
            wait_for(lambda: locked.status()["access"]["bonded_count"] == 0, 10,
                     "the bond gone")
            assert locked.status()["access"]["approved"] == []
            forget_bond(system_bus, CENTRAL_ADAPTER, portal_lab.address)  # the phone's side
            metrics.set(f"{bluez}.access_write_after_removal_error",
                        _refused_write(system_bus, portal_lab, locked))
        finally:
            _part(system_bus, portal_lab.address, central)
            _part(system_bus, portal_lab.address, second, SECOND_CENTRAL_ADAPTER)


@pytest.mark.pairing
def test_passkey_entry_with_the_passkey_the_controller_showed(
        bluez: str, portal_lab: PortalLab, system_bus: SystemBus, metrics: Metrics) -> None:
    central = system_bus.adapter_address(CENTRAL_ADAPTER)
    _part(system_bus, portal_lab.address, central)
    with locked_portal(portal_lab, "passkey") as locked:
        try:
            assert locked.status()["pairing"]["capability"] == "DisplayOnly"
            locked.portal.open_pairing_window(60)
            before = _writes(portal_lab)
            # One bluetoothd serves both controllers here, and 5.82 pairs a connected LE
            # device with the adapter's IO capability, which it sets from the default
            # agent (ours, DisplayOnly). A phone has a keyboard: say so for hci1.
            mgmt.set_io_capability(int(CENTRAL_ADAPTER[3:]), mgmt.KEYBOARD_DISPLAY)
            path = connect_device(system_bus, portal_lab.address)
            calls = pair_as_central(
                path, capability="KeyboardDisplay",
                passkey=lambda: locked.shown[-1][1] if locked.shown else None)
            assert [c[0] for c in calls if c[0] == "RequestPasskey"] == ["RequestPasskey"]
            assert locked.shown and locked.shown[-1][0] == central, locked.shown
            metrics.set(f"{bluez}.access_passkey_shown", True)
            assert bool(system_bus.get(path, "org.bluez.Device1", "Paired"))
            wait_for(lambda: bool(system_bus.get(path, "org.bluez.Device1",
                                                 "ServicesResolved")), 40, "ServicesResolved")
            _hub_write(path, portal_lab.address)
            assert _writes(portal_lab) == before + 1
        finally:
            _part(system_bus, portal_lab.address, central)

