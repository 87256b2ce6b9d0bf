"""What every command shares: options anywhere, exit codes, pipes that close, entry points."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mushpi_ble.cli import COMMANDS, build_parser, exits

CLI = [sys.executable, "-m", "mushpi_ble.cli"]


def run(*argv: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.mark.parametrize(("argv", "level", "fmt"), [
    (["--log-format", "json", "serve"], "INFO", "json"),
    (["serve", "--log-format", "json"], "INFO", "json"),
    (["serve", "--log-level", "debug"], "DEBUG", "text"),
    (["-v", "serve"], "DEBUG", "text"),
    (["serve", "-q"], "WARNING", "text"),
    (["--log-level", "ERROR", "serve"], "ERROR", "text"),
])
def test_global_options_go_before_or_after_the_command(argv: list[str], level: str,
                                                       fmt: str) -> None:
    args = build_parser("serve").parse_args(argv)
    assert (args.log_level, args.log_format) == (level, fmt)


def test_every_command_says_what_it_does_and_the_exit_codes() -> None:
    for name, help_text, *_ in COMMANDS:
        out = run(name, "--help")
        assert out.returncode == exits.OK, name
        assert help_text[1:] in out.stdout, name
        assert "exit codes: 0 ok, 1 a check or run failed, 2 usage, 3 configuration" in out.stdout


def test_usage_errors_exit_2_and_configuration_errors_exit_3(tmp_path: Path) -> None:
    assert run("serve", "--no-such-option").returncode == exits.USAGE
    bad = run("check", env={"MUSHPI_BLE_ADV_TX_POWER": "loud"}, cwd=tmp_path)
    assert bad.returncode == exits.CONFIG
    assert "MUSHPI_BLE_ADV_TX_POWER='loud'" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("argv", [["systemd-unit"], ["dbus-policy"], ["--help"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly(argv: list[str]) -> None:
    """``mushpi-ble systemd-unit | head -1``: the pipe closes before we are done."""
    reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL)
    assert reader.stdin is not None
    writer = subprocess.Popen([*CLI, *argv], stdout=reader.stdin, stderr=subprocess.PIPE,
                              text=True)
    reader.stdin.close()
    reader.wait(timeout=30)
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == exits.OK, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_a_closed_pipe_ends_demo_quietly(tmp_path: Path) -> None:
    """The demo prints as it goes; its trio tasks see the closed pipe inside a nursery."""
    reader = subprocess.Popen(["head", "-n", "1"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL)
    assert reader.stdin is not None
    writer = subprocess.Popen([*CLI, "demo"], stdout=reader.stdin, stderr=subprocess.PIPE,
                              text=True, cwd=tmp_path)
    reader.stdin.close()
    reader.wait(timeout=60)
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == exits.OK, err
    assert "Traceback" not in err


def test_python_dash_m_mushpi_ble_is_the_command() -> None:
    out = subprocess.run([sys.executable, "-m", "mushpi_ble", "--version"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == exits.OK
    assert out.stdout.startswith("mushpi-ble ")


def test_the_library_logs_nowhere_until_the_application_says_where() -> None:
    handlers = logging.getLogger("mushpi_ble").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


@pytest.mark.parametrize("user", ["bad user<>", "root\"/><policy", "", "Mushpi", "a" * 40])
def test_dbus_policy_refuses_what_is_no_user_name(user: str) -> None:
    """The policy is XML the bus reads as root: nothing but a user name goes into it."""
    out = run("dbus-policy", "--user", user)
    assert out.returncode == exits.USAGE
    assert out.stdout == "" and "is not a user name" in out.stderr


def test_dbus_policy_for_a_user_name() -> None:
    out = run("dbus-policy", "--user", "mushpi-ble_2")
    assert out.returncode == exits.OK and '<policy user="mushpi-ble_2">' in out.stdout


def test_an_address_that_is_no_bus_address_says_what_is_expected(tmp_path: Path) -> None:
    out = run("check", "--bus", "garbage", cwd=tmp_path)
    assert out.returncode == exits.FAILED
    assert "unusable D-Bus address 'garbage': expected SYSTEM, SESSION or a D-Bus address" \
        in out.stdout
    assert "unpack" not in out.stdout


def test_config_lists_every_setting_with_where_it_came_from(tmp_path: Path) -> None:
    settings = tmp_path / "ble.env"
    # bonded access keeps its approved phones in the state directory, which must exist
    settings.write_text("MUSHPI_BLE_WRITE_ACCESS=bonded\nMUSHPI_BLE_PAIRING=window\n"
                        f"MUSHPI_BLE_STATE_DIR={tmp_path}\n")
    out = run("config", "--env-file", str(settings), env={"MUSHPI_BLE_QUEUE_MAX_SIZE": "128"},
              cwd=tmp_path)
    assert out.returncode == exits.OK, out.stderr
    lines = {line.split("=", 1)[0]: line for line in out.stdout.splitlines()}
    assert lines["MUSHPI_BLE_WRITE_ACCESS"].endswith(f"# {settings}")
    assert lines["MUSHPI_BLE_QUEUE_MAX_SIZE"].startswith("MUSHPI_BLE_QUEUE_MAX_SIZE=128")
    assert lines["MUSHPI_BLE_QUEUE_MAX_SIZE"].endswith("# environment")
    assert lines["MUSHPI_BLE_READ_ACCESS"].endswith("# default")
    from mushpi_ble.config import VARIABLES
    assert set(lines) == {spec.name for spec in VARIABLES}
    as_json = json.loads(run("config", "--json", "--env-file", str(settings),
                             cwd=tmp_path).stdout)
    assert {"variable": "MUSHPI_BLE_PAIRING", "value": "window",
            "source": str(settings)} in as_json


def test_config_names_every_bad_setting_and_exits_3(tmp_path: Path) -> None:
    settings = tmp_path / "ble.env"
    settings.write_text('MUSHPI_BLE_READ_ACCESS="bonded\n')
    out = run("config", "--env-file", str(settings), env={"MUSHPI_BLE_ADV_TX_POWER": "loud"},
              cwd=tmp_path)
    assert out.returncode == exits.CONFIG
    assert f"(from {settings}:1)" in out.stderr and "MUSHPI_BLE_ADV_TX_POWER='loud'" in out.stderr
    missing = run("config", "--env-file", str(tmp_path / "absent.env"), cwd=tmp_path)
    assert missing.returncode == exits.CONFIG and "MUSHPI_ENV_FILE" in missing.stderr


def test_the_management_commands_start_without_the_event_loop() -> None:
    """pair, bonds, status and config make a call or two and exit: no trio to import."""
    probe = ("import sys\n"
             "from mushpi_ble.cli import build_parser\n"
             "for name in ('pair', 'bonds', 'status', 'config'):\n"
             "    build_parser(name)\n"
             "print(sorted(m for m in sys.modules if m == 'trio' or m.startswith('trio.')))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_cold_start_benchmark_prints_each_command_beside_the_interpreter(
        tmp_path: Path) -> None:
    out = run("bench", "--cli-start", "--quick", "--json", "--output",
              str(tmp_path / "c.json"))
    assert out.returncode == exits.OK, out.stderr
    commands = json.loads(out.stdout)["results"]["commands"]
    assert {"python -c pass", "mushpi-ble pair --help", "mushpi-ble status --help"} <= set(
        commands)
    assert all(row["runs"] == 3 and row["median_ms"] > 0 for row in commands.values())
