"""``serve`` survives what an operator saves, names and runs beside it: no traceback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from mushpi_ble.cli import exits
from mushpi_ble.files import write_atomically
from mushpi_ble.sim import SimulatedController, StateFileError
from mushpi_ble.testing.fakebluez import FakeBluez

CLI = [sys.executable, "-m", "mushpi_ble.cli"]


async def serve(bus_address: str, tmp_path: Path, *args: str, duration: float = 1.5,
                **env: str) -> subprocess.CompletedProcess[str]:
    """``serve`` for ``duration`` seconds; its log lines are on stdout (no terminal)."""
    argv = [*CLI, "serve", "--bus", bus_address, "--duration", str(duration), *args]
    return await trio.to_thread.run_sync(lambda: subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        env={**os.environ, "MUSHPI_BLE_SHUTDOWN_TIMEOUT_MS": "1000", **env}))


@pytest.mark.parametrize(("content", "why"), [
    ("{garbage", "is not JSON"),
    ("[1, 2]", "a JSON object was expected, not list"),
    ('{"stage": 5}', "stage must be an object, not int"),
    ('{"thresholds": [{"species": "Oyster"}]}', "thresholds[0] must have"),
    ('{"stage": {}, "extra": 1}', "unknown keys ['extra']"),
])
async def test_a_corrupt_state_file_is_one_error_kept_aside_and_defaults_serve(
    bus_address: str, bluez: FakeBluez, tmp_path: Path, content: str, why: str
) -> None:
    state = tmp_path / "state.json"
    state.write_text(content)
    out = await serve(bus_address, tmp_path, "--state", str(state), "--save", str(state))
    assert out.returncode == exits.OK, out.stderr
    errors = [line for line in out.stdout.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and str(state) in errors[0] and why in errors[0], errors
    assert "Traceback" not in out.stderr
    assert (tmp_path / "state.json.corrupt").read_text() == content  # the evidence
    saved = json.loads(state.read_text())  # a good state saved at exit, from the defaults
    assert saved["stage"]["species"] == "Oyster"


async def test_a_state_path_that_is_a_directory_is_reported_and_left_alone(
    bus_address: str, bluez: FakeBluez, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    out = await serve(bus_address, tmp_path, "--state", str(state))
    assert out.returncode == exits.OK, out.stderr
    assert f"state file {state} cannot be read" in out.stdout
    assert state.is_dir() and "Traceback" not in out.stderr


@pytest.mark.parametrize("target", ["missing/state.json", "."])
async def test_an_unusable_save_path_is_refused_at_start_not_at_exit(
    bus_address: str, bluez: FakeBluez, tmp_path: Path, target: str
) -> None:
    out = await serve(bus_address, tmp_path, "--save", str(tmp_path / target))
    assert out.returncode == exits.USAGE
    assert "--save" in out.stderr and "Traceback" not in out.stderr
    assert not bluez.applications()


async def test_a_metrics_port_in_use_is_logged_and_the_service_runs(
    bus_address: str, bluez: FakeBluez, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = await serve(bus_address, tmp_path, MUSHPI_BLE_METRICS_PORT=str(port))
    assert out.returncode == exits.OK, out.stderr
    assert f"metrics not served bind=127.0.0.1 port={port}" in out.stdout
    assert "serving name=" in out.stdout and "Traceback" not in out.stderr


async def test_a_metrics_file_that_cannot_be_written_spares_the_stop_and_the_save(
    bus_address: str, bluez: FakeBluez, tmp_path: Path
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    state = tmp_path / "state.json"

    async def remove_folder_once_serving() -> None:
        await bluez.wait_for_application(timeout=20)
        shutil.rmtree(folder)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(remove_folder_once_serving)
        out = await serve(bus_address, tmp_path, "--save", str(state), duration=3.0,
                          MUSHPI_BLE_METRICS_FILE=str(folder / "m.prom"))
    assert out.returncode == exits.OK, out.stderr
    assert out.stdout.count("metrics file not written") == 1  # once, not every write
    assert "stopped stop_ms=" in out.stdout and "Traceback" not in out.stderr
    assert json.loads(state.read_text())["stage"]["species"] == "Oyster"
    assert not bluez.applications()  # unregistered cleanly


def test_a_save_interrupted_before_the_rename_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"stage": {"species": "Oyster"}}')

    def power_cut(_fd: int) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "fsync", power_cut)
    with pytest.raises(OSError, match="power cut"):
        write_atomically(path, '{"stage": {"species": "Shiitake"}}')
    assert path.read_text() == '{"stage": {"species": "Oyster"}}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


def test_a_saved_state_loads_back(tmp_path: Path) -> None:
    one = SimulatedController(seed=1)
    one.stage["species"] = "Shiitake"
    path = tmp_path / "s.json"
    one.save(path)
    two = SimulatedController(seed=2)
    two.load(path)
    assert two.stage["species"] == "Shiitake"
    path.write_text("")
    with pytest.raises(StateFileError, match="is not JSON"):
        two.load(path)
