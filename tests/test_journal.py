"""serve under systemd: its first line says the controller is simulated, and a bad
setting reaches the journal at priority err (``journalctl -p err`` names the variable)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "mushpi_ble.cli"]


def test_a_config_error_under_systemd_is_an_error_in_the_journal(tmp_path: Path) -> None:
    """stdout and stderr on one file standing in for the journal's stream socket; the
    README's old snippet as systemd passes it: the inline comment kept in the value."""
    out = tmp_path / "journal"
    env = {**os.environ, "JOURNAL_STREAM": "1:2",
           "MUSHPI_BLE_WRITE_ACCESS": "bonded   # only paired phones"}
    with out.open("a") as sink:
        done = subprocess.run([*CLI, "--log-format", "json", "serve", "--duration", "1"],
                              env=env, cwd=tmp_path, stdout=sink, stderr=sink, timeout=30,
                              check=False)
    assert done.returncode == 3
    lines = out.read_text().splitlines()
    assert lines[0].startswith("<4>{") and "SIMULATED controller" in lines[0]
    assert lines[1].startswith("<3>configuration error: MUSHPI_BLE_WRITE_ACCESS=")
    assert "# only paired phones" in lines[1]


def test_a_terminal_or_pipe_sees_plain_lines(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["MUSHPI_BLE_QUEUE_MAX_SIZE"] = "0"
    done = subprocess.run([*CLI, "serve", "--duration", "1"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 3
    assert done.stderr.startswith("configuration error: MUSHPI_BLE_QUEUE_MAX_SIZE=")
    assert "SIMULATED controller" in done.stdout.splitlines()[0]
