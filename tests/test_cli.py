"""The command line: serve (with metrics), demo, check — as users run them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from rig import Rig, eventually, status_until

from mushpi_ble import __version__
from mushpi_ble.cli import check
from mushpi_ble.cli.serve import render_view
from mushpi_ble.config import load_settings
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS, ControlTargets
from mushpi_ble.testing.fakebluez import AttError, FakeBluez

UUID = CHARACTERISTIC_UUIDS
CLI = [sys.executable, "-m", "mushpi_ble.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def test_serve_registers_applies_writes_exports_metrics_and_stops_on_sigterm(
    bus_address: str, bluez: FakeBluez, tmp_path: Path
) -> None:
    port = free_port()
    prom = tmp_path / "mushpi.prom"
    env = {**os.environ, "MUSHPI_BLE_METRICS_PORT": str(port),
           "MUSHPI_BLE_METRICS_FILE": str(prom), "MUSHPI_BLE_SHUTDOWN_TIMEOUT_MS": "1000"}
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"stage": {"species": "Shiitake", "stage": "Pinning",
                                           "mode": 1, "stage_start_ts": 1_700_000_000,
                                           "expected_days": 9}}))
    proc = subprocess.Popen([*CLI, "--log-format", "json", "serve", "--bus", bus_address,
                             "--interval", "5", "--seed", "1", "--state", str(state),
                             "--save", str(state)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        await bluez.wait_for_application(timeout=10)
        central = await bluez.connect_central(mtu=512)
        wanted = ControlTargets(170, 230, 880, 1500, 1, 0, 0)
        await central.write(UUID["control_targets"], wanted.pack())
        assert ControlTargets.unpack(await central.read(UUID["control_targets"])) == wanted
        await central.subscribe(UUID["env_measurements"])
        await central.next_notification(UUID["env_measurements"])

        def scrape() -> str:
            deadline = time.monotonic() + 10
            while True:  # the endpoint starts right after registration
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                timeout=5) as r:
                        return str(r.read().decode())
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

        offered = ("mushpi_ble_notifications_offered_total",
                   (("characteristic", "env_measurements"),))
        with trio.fail_after(10):  # serve publishes its first reading right after start
            while not (values := metric_values(await trio.to_thread.run_sync(scrape))).get(
                    offered):
                await trio.sleep(0.05)
        assert values[("mushpi_ble_registered", ())] == 1
        assert values[("mushpi_ble_build_info",
                       (("backend", "bluez-dbus"), ("version", __version__)))] == 1
        assert values[("process_cpu_seconds_total", ())] > 0  # the client's process collector
        assert values[("mushpi_ble_connected_centrals", ())] == 1
        assert values[offered] >= 1
        assert ("mushpi_ble_publish_latency_seconds_bucket",
                (("characteristic", "env_measurements"), ("le", "+Inf"))) in values
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(proc.wait, 10)
        stop_s = time.monotonic() - started
        assert code == 0
        assert stop_s < 1.0 + 2.0  # the shutdown bound plus interpreter exit
        await bluez.wait_until(lambda: not bluez.applications(), timeout=3)
        assert metric_values(prom.read_text())[("mushpi_ble_running", ())] in (0, 1)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    assert '"message": "serving name=MushPi-ShiitakePinning' in out  # from the state file
    assert '"name": "MushPi-ShiitakePinning"' in out  # its fields are keys of their own
    assert "stopped stop_ms=" in out
    saved = json.loads(state.read_text())
    assert saved["control_targets"] == {"temp_min": 17.0, "temp_max": 23.0, "rh_min": 88.0,
                                        "co2_max": 1500, "light": {"mode": "on"}}
    assert saved["stage"]["species"] == "Shiitake"


async def test_live_view_shows_centrals_counters_values_and_writes(rig: Rig) -> None:
    await status_until(rig.portal,
                       lambda s: s["advertising"] and s["pairing"]["agent_registered"])
    central = await rig.bluez.connect_central(mtu=247)
    rig.portal.publish_env(21.5, 88.0, 950, 600)
    await central.write(UUID["override_bits"], b"\x02\x00")
    with pytest.raises(AttError):
        await central.write(UUID["control_targets"], b"\x00")
    await eventually(lambda: rig.portal.get_status()["connection_count"] == 1)
    await eventually(lambda: "950 ppm" in render_view(rig.portal, rig.controller))
    view = render_view(rig.portal, rig.controller)
    assert "MushPi BLE · serving as MushPi-" in view and "1 phone connected" in view
    assert "MTU 247" in view
    assert "21.5 °C  88.0 %RH  950 ppm  light 600" in view
    assert re.search(r"ok +override bits", view)
    assert re.search(r"REFUSED control targets +11:22:33:44:55:66 rejected length", view)
    assert "relays on: fan" in view
    lines = view.splitlines()
    assert len(lines) <= 24 and max(map(len, lines)) <= 80, view
    for python_or_dbus in ("True", "False", "None", "/org/bluez", "dev_", "0x"):
        assert python_or_dbus not in view, python_or_dbus


def test_demo_exits_zero_and_leaves_no_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSHPI_")}
    out = subprocess.run([*CLI, "demo"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^9 passed, 0 failed$", out.stdout, re.MULTILINE), out.stdout
    bus_dir = re.search(r"unix:path=(/tmp/mushpi-bus-[^/]+)/bus", out.stdout)
    assert bus_dir is not None
    assert not Path(bus_dir.group(1)).exists()
    leftovers = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if bus_dir.group(1).encode() in cmdline:
                leftovers.append(pid)
    assert leftovers == []


async def run_check(bus: str, **env: str) -> tuple[int, str]:
    settings = load_settings(environ={"MUSHPI_DBUS_BUS_TIMEOUT_MS": "500", **env},
                             env_file=None)
    findings = await check.run_checks(settings, bus, "/bin/false")
    text = check.report(findings)
    return (1 if any(f.level == check.FAIL for f in findings) else 0), text


async def test_check_all_good(bus_address: str, bluez: FakeBluez) -> None:
    code, text = await run_check(bus_address)
    assert code == 0, text
    assert "D-Bus calls to bluetoothd are permitted" in text
    assert "the peripheral can work here" in text


async def test_check_bus_unreachable() -> None:
    code, text = await run_check("unix:path=/nonexistent/bus")
    assert code == 1
    assert "[FAIL] D-Bus" in text and "cannot reach the bus" in text


async def test_check_no_bluetoothd(bus_address: str) -> None:
    code, text = await run_check(bus_address)
    assert code == 1
    assert "org.bluez is not on the bus" in text


async def test_check_missing_adapter(bus_address: str, bluez: FakeBluez) -> None:
    code, text = await run_check(bus_address, MUSHPI_BLE_ADAPTER="hci4")
    assert code == 1
    assert "'hci4' (MUSHPI_BLE_ADAPTER) not found; bluetoothd has: hci0" in text


async def test_check_adapter_off_is_a_warning(bus_address: str, bluez: FakeBluez) -> None:
    await bluez.adapter("hci0").set_powered(False)
    code, text = await run_check(bus_address)
    assert code == 0
    assert "[warn] adapter" in text and "powered OFF" in text


async def test_check_calls_not_permitted(bus_address: str, bluez: FakeBluez) -> None:
    bluez.refuse_next_registration("org.freedesktop.DBus.Error.AccessDenied",
                                   "Rejected send message", member="UnregisterApplication")
    code, text = await run_check(bus_address)
    assert code == 1
    assert "denied by the D-Bus policy" in text


def test_bluetoothd_version_meaning(tmp_path: Path) -> None:
    fake = tmp_path / "bluetoothd"
    fake.write_text("#!/bin/sh\necho 5.72\n")
    fake.chmod(0o755)
    version, where = check.bluetoothd_version(str(fake))
    assert (version, where) == ("5.72", str(fake))
    notes = check.version_notes((5, 72))
    assert any("per-device notify needs 5.76+" in n for n in notes)
    assert any("need bluetoothd -E" in n for n in notes)
    assert check.version_notes((5, 82)) == []
    assert any("0x80" in n for n in check.version_notes((5, 64)))
    assert any("one notify socket shared" in n for n in check.version_notes((5, 66)))
    assert not any("notify socket" in n for n in notes)  # 5.72: one per phone


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["check", "--help"]])
def test_help_texts(argv: list[str]) -> None:
    out = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=30,
                         check=False)
    assert out.returncode == 0
    assert "usage: mushpi-ble" in out.stdout


def test_bad_setting_stops_serve_with_the_variable_named(tmp_path: Path) -> None:
    env = {**os.environ, "MUSHPI_BLE_QUEUE_MAX_SIZE": "0"}
    out = subprocess.run([*CLI, "serve", "--duration", "1"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 3
    assert "MUSHPI_BLE_QUEUE_MAX_SIZE='0' is invalid: allowed 1..4096" in out.stderr
    assert "Traceback" not in out.stderr


async def test_readme_documents_every_get_status_key(rig: Rig) -> None:
    """get_status() is documented in the README; keep the two in step."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("### `get_status()`"):readme.index("## Invalid writes")]
    status = rig.portal.get_status()
    missing = [key for key in status if f"`{key}`" not in table]
    assert missing == []
    counters = next(iter(status["characteristics"].values()))
    assert [key for key in counters if f"`{key}`" not in table] == []
