"""The types an integrator is given are the ones the code keeps: checked at run time
against a running portal, and by mypy against a controller written as an integrator would."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
import typing
from pathlib import Path

from rig import Rig, status_until

from mushpi_ble.api_types import Status
from mushpi_ble.controller import CALLBACK_NAMES

REPO = Path(__file__).resolve().parent.parent


def _matches(value: object, kind: object) -> bool:
    """Whether ``value`` fits ``kind`` (outer types only: ``list[...]`` is a list)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(kind))
    if kind is None or kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is typing.Any:
        return True
    if typing.is_typeddict(kind):
        return isinstance(value, dict)
    return isinstance(value, origin or kind)  # type: ignore[arg-type]


async def test_get_status_has_exactly_the_typed_keys_with_their_types(rig: Rig) -> None:
    status = await status_until(rig.portal, lambda s: s["advertising"])
    hints = typing.get_type_hints(Status)
    assert set(status) == set(hints)
    wrong = {key: status[key] for key, kind in hints.items()  # type: ignore[literal-required]
             if not _matches(status[key], kind)}  # type: ignore[literal-required]
    assert not wrong


def test_every_callback_has_a_typed_keyword() -> None:
    from mushpi_ble.api_types import CallbackArgs
    assert set(CallbackArgs.__annotations__) == set(CALLBACK_NAMES)


INTEGRATOR = '''
from collections.abc import Mapping
from typing import Any

from mushpi_ble.portal import BlePortal
from mushpi_ble.protocol import ControlTargetsDict, OverridesDict, StageDict


def sensors() -> dict[str, float]:
    return {"temperature": 21.5, "humidity": 88.0, "co2": 900.0, "light": 10.0}


def set_targets(targets: ControlTargetsDict) -> bool:
    return targets["temp_min"] < targets["temp_max"]


def set_stage(stage: Mapping[str, Any]) -> None: ...


def overrides(bits: OverridesDict) -> bool:
    return not bits["emergency_stop"]


def thresholds(species: str, stage: str) -> dict[str, Any] | None:
    return None


def passkey(address: str, passkey: int) -> None: ...


ble = BlePortal()
ble.set_callbacks(get_sensor_data=sensors, set_control_targets=set_targets,
                  set_stage_state=set_stage, apply_overrides=overrides,
                  get_stage_thresholds=thresholds, on_pairing_passkey=passkey)
status = ble.get_status()
phones: int = status["connection_count"] + len(status["connected_devices"])
name: str = status["advertised_name"]
'''

MISTAKES = '''
from mushpi_ble.portal import BlePortal


def set_targets(targets: int) -> bool:
    return True


def passkey(address: str) -> None: ...


ble = BlePortal()
ble.set_callbacks(set_control_targets=set_targets, on_pairing_passkey=passkey,
                  get_sensor_dat=lambda: {})
count: str = ble.get_status()["connection_count"]
'''


def mypy(source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    module = tmp_path / "controller.py"
    module.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                           "--cache-dir", str(tmp_path / "cache"), str(module)],
                          capture_output=True, text=True, cwd=REPO, timeout=300, check=False)


def test_an_integrators_controller_type_checks(tmp_path: Path) -> None:
    out = mypy(INTEGRATOR, tmp_path)
    assert out.returncode == 0, out.stdout


def test_an_integrators_mistakes_are_found_by_mypy(tmp_path: Path) -> None:
    out = mypy(MISTAKES, tmp_path)
    assert out.returncode == 1
    assert '"set_control_targets"' in out.stdout
    assert '"on_pairing_passkey"' in out.stdout
    assert '"get_sensor_dat"' in out.stdout
    assert 'expression has type "int", variable has type "str"' in out.stdout
