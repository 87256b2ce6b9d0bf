"""The types an integrator meets: each controller callback's signature and the shape of
``get_status()``, so mypy (or an editor) checks a controller against them.

Getters may return a plain dict with any subset of the keys (missing ones count as
unset); setters receive exactly the TypedDict named. A return value of a setter is
its success (``False`` refuses the write), of ``on_pairing_passkey`` ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypedDict

from .protocol import ControlTargetsDict, OverridesDict, StageDict

Reading = Mapping[str, Any] | None
"""What a getter returns: a mapping (``None``: nothing to say)."""

GetSensorData = Callable[[], Reading]
"""``{"temperature": °C, "humidity": %RH, "co2": ppm, "light": raw}`` (any may be None)."""
GetControlData = Callable[[], Reading]
"""Relays: ``{"light", "fan", "mist", "heater": bool, "<relay>_reason": int}``."""
GetControlTargets = Callable[[], Reading]
"""The targets, keyed as :class:`~mushpi_ble.protocol.ControlTargetsDict`."""
GetStageData = Callable[[], Reading]
"""The stage, keyed as :class:`~mushpi_ble.protocol.StageDict`."""
SetControlTargets = Callable[[ControlTargetsDict], object]
SetStageState = Callable[[StageDict], object]
ApplyOverrides = Callable[[OverridesDict], object]
GetStageThresholds = Callable[[str, str], Reading]
"""``(species, stage)`` → that stage's thresholds."""
SetStageThresholds = Callable[[str, str, dict[str, Any]], object]
"""``(species, stage, changed_fields)``."""
OnPairingPasskey = Callable[[str, int], object]
"""``(address, passkey)``: show the 6-digit passkey to the grower."""


class CallbackArgs(TypedDict, total=False):
    """``BlePortal.set_callbacks(**kwargs)``: every callback by name, each optional."""

    get_sensor_data: GetSensorData | None
    get_control_data: GetControlData | None
    get_control_targets: GetControlTargets | None
    get_stage_data: GetStageData | None
    set_control_targets: SetControlTargets | None
    set_stage_state: SetStageState | None
    apply_overrides: ApplyOverrides | None
    get_stage_thresholds: GetStageThresholds | None
    set_stage_thresholds: SetStageThresholds | None
    on_pairing_passkey: OnPairingPasskey | None


class Central(TypedDict):
    path: str
    address: str | None
    mtu: int
    connected: bool
    connected_at: float | None


class Status(TypedDict):
    """``BlePortal.get_status()`` (the README's table says what each key means). The
    nested sections are plain mappings: their keys are documented, not fixed here."""

    backend: str
    running: bool
    state: str
    registered: bool
    advertising: bool
    adapter: str | None
    advertised_name: str
    advert_left_out: list[str]
    bluez_owner: str
    connected_devices: list[Central]
    connection_count: int
    connects: int
    disconnects: int
    subscriptions: dict[str, bool]
    left_waiting: dict[str, int]
    characteristics: dict[str, dict[str, Any]]
    notify: dict[str, Any]
    callbacks: dict[str, dict[str, Any]]
    restarts: int
    last_recovery_s: float | None
    last_error: str | None
    started_at: float | None
    advert_state: str
    advert_problem: str | None
    advert_refusals: int
    advert_drops: int
    advert_instances: dict[str, int | None]
    advert_interval: dict[str, Any]
    adapter_state: str
    rfkill: str
    adapter_recovery: bool
    recoveries: list[dict[str, Any]]
    recovery_totals: dict[str, int]
    pairing: dict[str, Any]
    access: dict[str, Any]
    management: dict[str, Any] | None
