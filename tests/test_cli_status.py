"""``mushpi-ble status``: the running peripheral's view over the management interface."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import trio
from rig import Rig, status_until

from mushpi_ble.cli import exits, main
from mushpi_ble.testing.fakebluez import FakeBluez

CLI = [sys.executable, "-m", "mushpi_ble"]


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await trio.to_thread.run_sync(main, list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


async def test_status_shows_the_view_the_live_view_shows(
        rig: Rig, bus_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    await status_until(rig.portal, lambda s: s["advertising"])
    phone = await rig.bluez.connect_central(address="11:22:33:44:55:77", mtu=200)
    await status_until(rig.portal, lambda s: s["connection_count"] == 1)
    rig.portal.publish_env(21.5, 88.0, 950, 600)
    await status_until(rig.portal,
                       lambda s: s["characteristics"]["env_measurements"]["sent"] >= 1)
    code, out, _ = await cli(capsys, "status", "--bus", bus_address)
    assert code == exits.OK
    lines = out.splitlines()
    assert lines[0].startswith("MushPi BLE · serving as MushPi-")
    assert any("11:22:33:44:55:77" in line and "MTU " in line for line in lines), out
    assert any("950 ppm" in line for line in lines)
    assert len(lines) <= 24 and max(map(len, lines)) <= 80  # no terminal: 80x24
    del phone


async def test_status_json_is_get_status_with_the_values(
        rig: Rig, bus_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await cli(capsys, "status", "--bus", bus_address, "--json")
    assert code == exits.OK
    status = json.loads(out)
    assert status["registered"] is True and status["backend"] == "bluez-dbus"
    assert set(status["values"]) >= {"env_measurements", "status_flags"}
    assert "recent_writes" in status


async def test_status_without_a_peripheral_says_so_and_exits_1(
        bus_address: str, bluez: FakeBluez, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await cli(capsys, "status", "--bus", bus_address)
    assert code == exits.FAILED
    assert "no running mushpi-ble peripheral owns org.mushpi.Ble" in out
    code, _, err = await cli(capsys, "status", "--bus", bus_address, "--json")
    assert code == exits.FAILED and "no running mushpi-ble peripheral" in err


async def test_status_watch_redraws_until_interrupted(rig: Rig, bus_address: str) -> None:
    proc = subprocess.Popen([*CLI, "status", "--bus", bus_address, "--watch", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ})
    try:
        assert proc.stdout is not None
        frames = 0
        with trio.fail_after(30):
            while frames < 2:
                line = await trio.to_thread.run_sync(proc.stdout.readline)
                frames += line.startswith("\x1b[H\x1b[2JMushPi BLE · serving as")
        proc.send_signal(signal.SIGINT)
        code = await trio.to_thread.run_sync(proc.wait, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == exits.OK
    assert "Traceback" not in proc.stderr.read() if proc.stderr else True
