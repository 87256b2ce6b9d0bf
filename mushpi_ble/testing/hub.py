"""A simulated MushPi Hub app: a central that behaves like the phone.

It drives a :class:`~mushpi_ble.testing.fakebluez.FakeCentral` the way the
app does: MTU 512, discovery, refusal when a required characteristic is
missing, subscriptions expecting a packet at once, a thresholds query then a
long read by offset, control targets written and read back, an override
followed by an actuator notification, and one invalid write. Each exchange
is recorded with its latency and decoded in human terms.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from mushpi_ble.protocol import (
    ACTUATOR_STATUS,
    CHARACTERISTIC_UUIDS,
    CONTROL_TARGETS,
    ENV_MEASUREMENTS,
    OVERRIDE_BITS,
    REQUIRED_BY_APP,
    STAGE_STATE,
    STAGE_THRESHOLDS,
    STATUS_FLAGS,
    ActuatorStatus,
    ControlTargets,
    EnvMeasurement,
    OverrideBits,
    StageState,
    StatusFlags,
    mode_name,
    species_name,
    stage_name,
)

from .fakebluez import AttError, FakeBluez, FakeCentral

UUID = CHARACTERISTIC_UUIDS


@attrs.define
class Exchange:
    """One step of the app's conversation: what, outcome, latency, details."""

    step: str
    ok: bool
    latency_ms: float
    detail: str


@attrs.define
class HubReport:
    exchanges: list[Exchange] = attrs.Factory(list)

    @property
    def ok(self) -> bool:
        return bool(self.exchanges) and all(e.ok for e in self.exchanges)


class MissingCharacteristics(Exception):
    """The device lacks a characteristic the app requires."""


def describe_env(data: bytes) -> str:
    env = EnvMeasurement.unpack(data)
    return (f"{env.temperature:.1f} °C, {env.humidity:.1f} %RH, {env.co2} ppm CO2, "
            f"light {env.light}, uptime {env.uptime_ms / 1000:.1f} s")


def describe_status(data: bytes) -> str:
    flags = StatusFlags.unpack(data)
    names = [f.name.lower() for f in type(flags.bits) if f.name and flags.has(f)]
    return f"flags 0x{flags.flags:04x} ({', '.join(names) or 'none'})"


def describe_actuator(data: bytes) -> str:
    act = ActuatorStatus.unpack(data)
    on = [name for name in ("light", "fan", "mist", "heater") if getattr(act, name)]
    return f"relays on: {', '.join(on) or 'none'}"


class SimulatedHub:
    """Runs the app's checks against one connected central."""

    def __init__(self, bluez: FakeBluez, *, adapter: str = "hci0",
                 address: str = "5A:4D:55:53:48:01", mtu: int = 512) -> None:
        self.bluez = bluez
        self.adapter = adapter
        self.address = address
        self.mtu = mtu
        self.report = HubReport()
        self.central: FakeCentral | None = None

    async def _step(self, step: str, action: Callable[[], Awaitable[str]]) -> bool:
        started = time.perf_counter()
        try:
            detail = await action()
            ok = True
        except (AttError, AssertionError, MissingCharacteristics, ValueError,
                trio.TooSlowError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            ok = False
        self.report.exchanges.append(
            Exchange(step, ok, (time.perf_counter() - started) * 1000, detail))
        return ok

    async def run(self) -> HubReport:
        """The whole conversation; stops early only when the device is refused."""
        if not await self._step("connect (MTU 512) and discover", self._connect):
            return self.report
        for name, describe in ((ENV_MEASUREMENTS, describe_env),
                               (STATUS_FLAGS, describe_status),
                               (ACTUATOR_STATUS, describe_actuator)):
            await self._step(f"subscribe {name}", lambda n=name, d=describe:  # type: ignore[misc]
                             self._subscribe(n, d))
        await self._step("read stage_state", self._read_stage)
        await self._step("thresholds query + long read", self._thresholds)
        await self._step("write control_targets + read back", self._targets)
        await self._step("override (fan) + actuator notification", self._override)
        await self._step("invalid write is refused", self._invalid_write)
        return self.report

    async def _connect(self) -> str:
        self.central = await self.bluez.connect_central(adapter=self.adapter,
                                                        address=self.address, mtu=self.mtu)
        missing = []
        for name in REQUIRED_BY_APP:
            try:
                self.central.characteristic(UUID[name])
            except KeyError:
                missing.append(name)
        if missing:
            raise MissingCharacteristics(f"device refused, missing: {', '.join(missing)}")
        return f"all {len(REQUIRED_BY_APP)} required characteristics present"

    async def _subscribe(self, name: str, describe: Callable[[bytes], str]) -> str:
        assert self.central is not None
        await self.central.subscribe(UUID[name])
        packet = await self.central.next_notification(UUID[name], timeout=2.0)
        return f"pushed at once: {describe(packet.value)}"

    async def _read_stage(self) -> str:
        assert self.central is not None
        raw = await self.central.read(UUID[STAGE_STATE])
        assert len(raw) == StageState.SIZE, f"{len(raw)} bytes"
        mode, species, stage, start, days, _reserved = struct.unpack("<BBBIHB", raw)
        age_days = (time.time() - start) / 86400
        return (f"{species_name(species)} / {stage_name(stage)}, mode {mode_name(mode)}, "
                f"day {age_days:.0f} of {days}")

    async def _thresholds(self) -> str:
        assert self.central is not None
        query = {"species": "Lion's Mane", "stage": "Fruiting"}
        await self.central.write(UUID[STAGE_THRESHOLDS], json.dumps(query).encode())
        await trio.sleep(0.1)  # the app waits ~100 ms before reading
        raw = await self.central.read_long(UUID[STAGE_THRESHOLDS])
        answer: dict[str, Any] = json.loads(raw)
        assert answer.get("species") == "Lion's Mane", answer
        return (f"{len(raw)} bytes of JSON (longer than one ATT read at MTU {self.mtu}: "
                f"{len(raw) > self.mtu - 1}); keys: {', '.join(sorted(answer))}")

    async def _targets(self) -> str:
        assert self.central is not None
        wanted = ControlTargets(180, 240, 850, 1200, 2, 600, 840)
        await self.central.write(UUID[CONTROL_TARGETS], wanted.pack())
        back = ControlTargets.unpack(await self.central.read(UUID[CONTROL_TARGETS]))
        assert back == wanted, f"read back {back}"
        d = back.to_controller()
        return (f"temp {d['temp_min']}–{d['temp_max']} °C, RH ≥ {d['rh_min']} %, "
                f"CO2 ≤ {d['co2_max']} ppm, light {d['light']['mode']} — read back equal")

    async def _override(self) -> str:
        assert self.central is not None
        before = len(self.central.notifications(UUID[ACTUATOR_STATUS]))
        await self.central.write(UUID[OVERRIDE_BITS], OverrideBits(fan=True).pack())
        with trio.fail_after(2.0):
            while len(self.central.notifications(UUID[ACTUATOR_STATUS])) <= before:
                await trio.sleep(0.005)
        packet = self.central.notifications(UUID[ACTUATOR_STATUS])[-1]
        assert ActuatorStatus.unpack(packet.value).fan, "fan relay not on"
        return f"actuator notification: {describe_actuator(packet.value)}"

    async def _invalid_write(self) -> str:
        assert self.central is not None
        bad = ControlTargets(300, 200, 850, 1200, 0, 0, 0).pack()  # temp_min > temp_max
        try:
            await self.central.write(UUID[CONTROL_TARGETS], bad)
        except AttError as exc:
            assert exc.code == 0x82, f"unexpected ATT error 0x{exc.code:02x}"
            return f"refused with ATT error 0x{exc.code:02X} ({exc.name})"
        raise AssertionError("the invalid write was accepted")
