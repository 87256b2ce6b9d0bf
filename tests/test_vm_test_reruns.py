"""scripts/vm-test's one more run of a lane whose failure was the lab's, not ours.

The lane script is replaced by a stand-in in a copy of scripts/: the rerun
rule is vm-test's own, and these tests walk each of its paths (a boot that
never reached init, a btvirt core, a real test failure that must not be
rerun, a second failure that stays a failure).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="vm-test refuses to start unless it runs as root"
)

# The stand-in lane: each `run` reads its outcome from outcomes/<n> (n = how
# many runs came before) and leaves what the real lane would leave behind.
STAND_IN_LANE = r"""#!/usr/bin/env bash
set -eu
here=$(cd "$(dirname "$0")" && pwd)
[ "$1" = run ] || exit 0
mkdir -p "$MUSHPI_VM_LOGS"
n=$(ls "$here/runs" 2>/dev/null | wc -l)
mkdir -p "$here/runs"; : >"$here/runs/$n"
outcome=$(cat "$here/outcomes/$n")
case "$outcome" in
    pass) exit 0 ;;
    boot-failed) : >"$MUSHPI_VM_LOGS/boot-failed"; exit 90 ;;
    btvirt-core) : >"$MUSHPI_VM_LOGS/core.btvirt.123"; exit 1 ;;
    test-failed) echo "1 failed" >"$MUSHPI_VM_LOGS/pytest.log"; exit 1 ;;
    kernel-bug) printf '%s\n' "list_del corruption, ffff88800656c480->prev is LIST_POISON2" \
        "kernel BUG at lib/list_debug.c:56!" " hci_chan_del+0x18/0x90 [bluetooth]" \
        >"$MUSHPI_VM_LOGS/console.log"; exit 1 ;;
    other-oops) printf '%s\n' "kernel BUG at mm/slub.c:1!" " kfree+0x1/0x2" \
        >"$MUSHPI_VM_LOGS/console.log"; exit 1 ;;
    controllers-gone) echo "E   Failed: timed out after 30 s waiting for bluetoothd (att)" \
        "with hci0 to hci3 powered" >"$MUSHPI_VM_LOGS/pytest.log"; exit 1 ;;
    no-adapters-only) echo "INFO supervisor finding-adapter -> backing-off reason=adapter" \
        "'hci0' not found; bluetoothd has: no adapters" >"$MUSHPI_VM_LOGS/pytest.log"; exit 1 ;;
esac
"""


def run_vm_test(
    tmp_path: Path, outcomes: list[str]
) -> tuple[subprocess.CompletedProcess[str], int]:
    """vm-test on a stand-in generation; returns its result and the lane's runs."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "scripts", checkout / "scripts")
    vm = checkout / "scripts" / "vm"
    (vm / "lane").write_text(STAND_IN_LANE)
    (vm / "prepare-standin.sh").write_text("#!/bin/sh\n")
    (vm / "outcomes").mkdir()
    for n, outcome in enumerate(outcomes):
        (vm / "outcomes" / str(n)).write_text(outcome)
    result = subprocess.run(
        [str(checkout / "scripts" / "vm-test"), "--generation", "standin"],
        env={**os.environ, "MUSHPI_VM_LOGS": str(tmp_path / "logs")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    runs = len(list((vm / "runs").iterdir())) if (vm / "runs").exists() else 0
    return result, runs


def test_a_lane_whose_guest_never_booted_is_booted_once_more(tmp_path: Path) -> None:
    result, runs = run_vm_test(tmp_path, ["boot-failed", "pass"])
    assert runs == 2
    assert result.returncode == 0, result.stderr
    assert "never reached its init" in result.stderr
    assert (tmp_path / "logs" / "standin-boot-failed" / "boot-failed").exists()


def test_a_lane_whose_btvirt_crashed_runs_once_more(tmp_path: Path) -> None:
    result, runs = run_vm_test(tmp_path, ["btvirt-core", "pass"])
    assert runs == 2
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "logs" / "standin-btvirt-crash").is_dir()


def test_a_failing_test_is_not_run_again(tmp_path: Path) -> None:
    result, runs = run_vm_test(tmp_path, ["test-failed", "pass"])
    assert runs == 1
    assert result.returncode == 1


def test_the_second_run_must_pass_on_its_own(tmp_path: Path) -> None:
    result, runs = run_vm_test(tmp_path, ["boot-failed", "boot-failed", "pass"])
    assert runs == 2
    assert result.returncode == 90


def test_a_lane_whose_guest_kernel_bluetooth_stack_oopsed_runs_once_more(
    tmp_path: Path,
) -> None:
    result, runs = run_vm_test(tmp_path, ["kernel-bug", "pass"])
    assert runs == 2
    assert result.returncode == 0, result.stderr
    assert "Bluetooth stack oopsed" in result.stderr
    assert (tmp_path / "logs" / "standin-kernel-bug" / "console.log").exists()


def test_an_oops_outside_bluetooth_is_not_run_again(tmp_path: Path) -> None:
    result, runs = run_vm_test(tmp_path, ["other-oops", "pass"])
    assert runs == 1
    assert result.returncode == 1


def test_a_lane_whose_controllers_never_came_back_runs_once_more(tmp_path: Path) -> None:
    """bluetoothd's start timed out waiting for the emulated controllers: the radio."""
    result, runs = run_vm_test(tmp_path, ["controllers-gone", "pass"])
    assert runs == 2
    assert result.returncode == 0, result.stderr
    assert "controllers vanished" in result.stderr


def test_no_adapters_for_a_moment_is_not_the_radio(tmp_path: Path) -> None:
    """The portal says "no adapters" after every bluetoothd restart (the Bumble step
    restarts it): a failing test beside that line is a failure, not a rerun."""
    result, runs = run_vm_test(tmp_path, ["no-adapters-only", "pass"])
    assert runs == 1
    assert result.returncode == 1
