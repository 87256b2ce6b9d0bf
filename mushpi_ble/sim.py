"""A simulated MushPi controller: plausible sensors and a store phones can change.

It is product code: ``mushpi-ble serve`` runs the real service against it
on a bench Pi; ``demo``, the benchmarks and tests use it too. Sensor curves follow
a grow room: temperature and humidity drift with noise, CO2 builds up and is
vented, and the light follows a day/night cycle. Writes from a phone really
change the store (so reads return them) and overrides flip the relays.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .files import write_atomically

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS: dict[tuple[str, str], dict[str, Any]] = {
    ("Oyster", "Incubation"): {"temp_min": 20.0, "temp_max": 24.0, "rh_min": 85.0,
                               "rh_max": 95.0, "co2_max": 5000,
                               "light": {"mode": "off", "on_min": 0, "off_min": 0},
                               "expected_days": 14},
    ("Oyster", "Pinning"): {"temp_min": 15.0, "temp_max": 20.0, "rh_min": 90.0,
                            "rh_max": 95.0, "co2_max": 1000,
                            "light": {"mode": "cycle", "on_min": 720, "off_min": 720},
                            "expected_days": 5},
    ("Oyster", "Fruiting"): {"temp_min": 15.0, "temp_max": 21.0, "rh_min": 85.0,
                             "rh_max": 92.0, "co2_max": 1000,
                             "light": {"mode": "cycle", "on_min": 720, "off_min": 720},
                             "expected_days": 7},
    ("Shiitake", "Incubation"): {"temp_min": 21.0, "temp_max": 27.0, "rh_min": 60.0,
                                 "rh_max": 80.0, "co2_max": 10000,
                                 "light": {"mode": "off", "on_min": 0, "off_min": 0},
                                 "expected_days": 60},
    ("Lion's Mane", "Fruiting"): {"temp_min": 18.0, "temp_max": 24.0, "rh_min": 85.0,
                                  "rh_max": 95.0, "co2_max": 1000,
                                  "light": {"mode": "on", "on_min": 0, "off_min": 0},
                                  "expected_days": 10,
                                  "mist": {"pulses_per_hour": 6, "pulse_s": 8},
                                  "fan": {"on_min": 5, "off_min": 10},
                                  "notes": "Lion's Mane likes fresh air: keep CO2 under 1000 ppm "
                                           "and mist lightly so the spines stay white. Harvest "
                                           "when the spines are about 5 mm long."},
}


class SimulatedController:
    """Thread-safe in-memory controller with the callbacks the BLE layer calls."""

    def __init__(self, *, seed: int | None = None, now: Callable[[], float] = time.time,
                 getter_delay_s: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._now = now
        self.getter_delay_s = getter_delay_s
        self.control_targets: dict[str, Any] = {
            "temp_min": 20.0, "temp_max": 28.0, "rh_min": 70.0, "co2_max": 5000,
            "light": {"mode": "off", "on_min": 0, "off_min": 0},
        }
        self.stage: dict[str, Any] = {
            "species": "Oyster", "stage": "Incubation", "mode": 0,
            "stage_start_ts": int(now()) - 3 * 86400, "expected_days": 14,
        }
        self.thresholds: dict[tuple[str, str], dict[str, Any]] = {
            k: json.loads(json.dumps(v)) for k, v in DEFAULT_THRESHOLDS.items()
        }
        self.relays = {"light": False, "fan": False, "mist": False, "heater": False}
        self.reasons = {"fan": 0, "mist": 0, "light": 0, "heater": 0}
        self.overrides: dict[str, Any] = {}
        self.writes: list[tuple[str, Any]] = []
        self.on_relays_changed: Callable[[], None] | None = None
        self._started = now()

    # -- sensors --------------------------------------------------------------------
    def sensor_reading(self) -> dict[str, float]:
        """One reading: slow drift plus noise, CO2 saw-tooth, light day/night."""
        t = self._now() - self._started
        rng = self._rng
        day_phase = (self._now() % 86400) / 86400
        light_on = 0.25 <= day_phase < 0.75
        with self._lock:
            if self.relays["light"]:
                light_on = True
        return {
            "temperature": round(21.5 + 1.5 * math.sin(t / 3600) + rng.gauss(0, 0.15), 2),
            "humidity": round(min(99.0, 88 + 4 * math.sin(t / 1800) + rng.gauss(0, 0.8)), 1),
            "co2": int(800 + (t % 1200) / 1200 * 900 + rng.gauss(0, 25)),
            "light": round(600 + rng.gauss(0, 15), 1) if light_on else round(rng.uniform(0, 3), 1),
        }

    # -- callbacks --------------------------------------------------------------------
    def callbacks(self) -> dict[str, Callable[..., Any]]:
        return {
            "get_sensor_data": self.get_sensor_data,
            "get_control_data": self.get_control_data,
            "get_control_targets": self.get_control_targets,
            "get_stage_data": self.get_stage_data,
            "set_control_targets": self.set_control_targets,
            "set_stage_state": self.set_stage_state,
            "apply_overrides": self.apply_overrides,
            "get_stage_thresholds": self.get_stage_thresholds,
            "set_stage_thresholds": self.set_stage_thresholds,
        }

    def _slow(self) -> None:
        if self.getter_delay_s:
            time.sleep(self.getter_delay_s)

    def get_sensor_data(self) -> dict[str, float]:
        return self.sensor_reading()

    def get_control_data(self) -> dict[str, Any]:
        with self._lock:
            data: dict[str, Any] = dict(self.relays)
            data["mode"] = "MANUAL" if self.overrides.get("disable_automation") else "AUTO"
            data.update({f"{k}_reason": v for k, v in self.reasons.items()})
            return data

    def get_control_targets(self) -> dict[str, Any]:
        self._slow()
        with self._lock:
            return json.loads(json.dumps(self.control_targets))  # type: ignore[no-any-return]

    def get_stage_data(self) -> dict[str, Any]:
        self._slow()
        with self._lock:
            return dict(self.stage)

    def set_control_targets(self, targets: dict[str, Any]) -> None:
        with self._lock:
            self.control_targets = json.loads(json.dumps(targets))
            self.writes.append(("control_targets", targets))
        log.info("simulated controller: control targets %s", targets)

    def set_stage_state(self, stage: dict[str, Any]) -> None:
        with self._lock:
            self.stage = dict(stage)
            self.writes.append(("stage_state", stage))
        log.info("simulated controller: stage %s", stage)

    def apply_overrides(self, overrides: dict[str, Any]) -> None:
        with self._lock:
            self.overrides = dict(overrides)
            for relay in ("light", "fan", "mist", "heater"):
                on = bool(overrides.get(f"{relay}_override"))
                self.relays[relay] = on
                self.reasons[relay] = 0x10 if on else 0
            self.writes.append(("override_bits", overrides))
        log.info("simulated controller: overrides %s", overrides)
        if self.on_relays_changed is not None:
            self.on_relays_changed()

    def get_stage_thresholds(self, species: str, stage: str) -> dict[str, Any]:
        self._slow()
        with self._lock:
            return dict(self.thresholds.get((species, stage), {}))

    def set_stage_thresholds(self, species: str, stage: str, thresholds: dict[str, Any]) -> bool:
        with self._lock:
            current = self.thresholds.setdefault((species, stage), {})
            current.update(thresholds)
            self.writes.append(("stage_thresholds", (species, stage, thresholds)))
        return True

    # -- persistence ------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Atomically: a power cut leaves the old file or the new one, never half of one
        (which, under ``Restart=on-failure``, would be a crash loop)."""
        with self._lock:
            state = {
                "control_targets": self.control_targets,
                "stage": self.stage,
                "thresholds": [
                    {"species": s, "stage": st, "values": v}
                    for (s, st), v in self.thresholds.items()
                ],
            }
        write_atomically(path, json.dumps(state, indent=2) + "\n")

    def load(self, path: Path) -> None:
        """Take the state in ``path``; :class:`StateFileError` (nothing taken) when the file
        cannot be read or is not a state this controller saved."""
        state = read_state(path)
        with self._lock:
            self.control_targets = state.get("control_targets", self.control_targets)
            self.stage = state.get("stage", self.stage)
            for entry in state.get("thresholds", []):
                self.thresholds[(entry["species"], entry["stage"])] = entry["values"]


class StateFileError(ValueError):
    """A state file that cannot be used, and why (the message names the file)."""


def read_state(path: Path) -> dict[str, Any]:
    """The checked content of a state file (the shape :meth:`SimulatedController.save`
    writes); a file that is not one raises :class:`StateFileError`."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError) as exc:
        raise StateFileError(f"state file {path} cannot be read: {exc}") from None
    except ValueError as exc:
        raise StateFileError(f"state file {path} is not JSON: {exc}") from None
    problem = _state_problem(state)
    if problem is not None:
        raise StateFileError(f"state file {path} is not a saved state: {problem}")
    return dict(state)


def _state_problem(state: object) -> str | None:
    if not isinstance(state, dict):
        return f"a JSON object was expected, not {type(state).__name__}"
    unknown = set(state) - {"control_targets", "stage", "thresholds"}
    if unknown:
        return f"unknown keys {sorted(unknown)}"
    for key in ("control_targets", "stage"):
        if key in state and not isinstance(state[key], dict):
            return f"{key} must be an object, not {type(state[key]).__name__}"
    entries = state.get("thresholds", [])
    if not isinstance(entries, list):
        return "thresholds must be a list"
    for n, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("species"), str)
                and isinstance(entry.get("stage"), str)
                and isinstance(entry.get("values"), dict)):
            return f"thresholds[{n}] must have species, stage (text) and values (an object)"
    return None
