"""Log lines carry journald's priority when, and only when, they go to the journal."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

from mushpi_ble import journal

CLI = [sys.executable, "-m", "mushpi_ble.cli"]


def stream_id(path: Path) -> str:
    stat = os.stat(path)
    return f"{stat.st_dev}:{stat.st_ino}"


def test_priorities_of_the_levels() -> None:
    assert [journal.priority(level) for level in (logging.CRITICAL, logging.ERROR,
                                                  logging.WARNING, logging.INFO,
                                                  logging.DEBUG)] == [2, 3, 4, 6, 7]


def test_only_the_journals_own_stream_is_prefixed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("w") as stream:
        assert journal.is_journal(stream, {"JOURNAL_STREAM": stream_id(out)})
        assert not journal.is_journal(stream, {"JOURNAL_STREAM": "1:2"})
        assert not journal.is_journal(stream, {})
    assert not journal.is_journal(io.StringIO(), {"JOURNAL_STREAM": stream_id(out)})


def test_a_config_error_under_systemd_is_an_error_in_the_journal(tmp_path: Path) -> None:
    """serve's stdout and stderr both on the "journal" (a file standing in for its socket):
    its first line says it is simulated, and the bad setting is at priority err."""
    out = tmp_path / "journal"
    out.touch()
    env = {**os.environ, "JOURNAL_STREAM": stream_id(out),
           "MUSHPI_BLE_WRITE_ACCESS": "bonded   # only paired phones"}
    with out.open("a") as sink:
        done = subprocess.run([*CLI, "--log-format", "json", "serve", "--duration", "1"],
                              env=env, cwd=tmp_path, stdout=sink, stderr=sink, timeout=30,
                              check=False)
    assert done.returncode == 2
    lines = out.read_text().splitlines()
    assert lines[0].startswith("<4>{") and "SIMULATED controller" in lines[0]
    assert lines[1].startswith("<3>configuration error: MUSHPI_BLE_WRITE_ACCESS=")
    assert "# only paired phones" in lines[1]


def test_a_terminal_or_pipe_sees_plain_lines(tmp_path: Path) -> None:
    env = {**os.environ, "MUSHPI_BLE_QUEUE_MAX_SIZE": "0", "JOURNAL_STREAM": "1:2"}
    done = subprocess.run([*CLI, "serve", "--duration", "1"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("configuration error: MUSHPI_BLE_QUEUE_MAX_SIZE=")
    assert "SIMULATED controller" in done.stdout.splitlines()[0]
