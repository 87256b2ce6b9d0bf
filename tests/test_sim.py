"""The simulated controller is product code: serve runs it without the test doubles."""

from __future__ import annotations

import subprocess
import sys

from mushpi_ble import sim
from mushpi_ble.testing import controller as old_home


def test_old_import_path_is_the_same_class() -> None:
    assert old_home.SimulatedController is sim.SimulatedController
    assert old_home.DEFAULT_THRESHOLDS is sim.DEFAULT_THRESHOLDS


def test_serve_loads_no_test_double() -> None:
    code = (
        "import sys, mushpi_ble.cli.serve; "
        "print(sorted(m for m in sys.modules if m.startswith('mushpi_ble.testing')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_writes_change_what_reads_return() -> None:
    controller = sim.SimulatedController(seed=1, now=lambda: 1_700_000_000.0)
    update = {"temp_min": 16.0, "light": {"mode": "on"}}
    assert controller.set_stage_thresholds("Oyster", "Pinning", update) is True
    got = controller.get_stage_thresholds("Oyster", "Pinning")
    assert (got["temp_min"], got["light"], got["co2_max"]) == (16.0, {"mode": "on"}, 1000)
    controller.apply_overrides({"fan_override": True})
    assert controller.get_control_data()["fan"] is True
