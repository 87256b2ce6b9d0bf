"""`mushpi-ble serve` started exactly as a user would, seen by bleak as the Hub app."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bleak.exc import BleakError
from conftest import (
    JOB,
    PERIPHERAL_ADAPTER,
    LoopThread,
    Metrics,
    SystemBus,
    btmon_offset,
    btmon_since,
    central_connect,
    pairs_first,
)
from hub import (
    EXPECTED_PROPERTIES,
    REQUIRED_BY_APP,
    Hub,
    HubScanner,
    att_error_code,
    device_at,
)

from mushpi_ble.protocol import (
    SERVICE_UUID,
    ActuatorStatus,
    ControlTargets,
    EnvMeasurement,
    StageState,
    StatusFlags,
)

SERVE_INTERVAL_S = 5
EXPECTED_NAME = "MushPi-OysterIncubation"  # the simulated controller's starting stage


def mushpi_ble_command() -> list[str]:
    script = Path(sys.executable).parent / "mushpi-ble"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mushpi_ble.cli"]


def test_serve_cli_with_bleak_as_the_hub_app(bluez: str, system_bus: SystemBus,
                                             metrics: Metrics) -> None:
    if bluez != "att":
        # the command line runs the same peripheral the portal tests run on both bearers;
        # its ~17 s (a cold Python start under emulation, then a scan) is spent once
        pytest.skip("the serve command is tested in the att pass of each generation")
    address = system_bus.adapter_address(PERIPHERAL_ADAPTER)
    scan_loop = LoopThread("scan")
    scanner = HubScanner()
    # Scan first, then start the peripheral: the emulator reports an advertiser
    # on the edge of advertising being enabled while the peer scans.
    scan_loop.run(scanner.start(), 20)
    log_path = JOB / f"serve-{bluez}.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MUSHPI_")}
    child_env["MUSHPI_BLE_ADAPTER"] = PERIPHERAL_ADAPTER
    with log_path.open("wb") as log_file:
        spawned = time.monotonic()
        proc = subprocess.Popen(
            [*mushpi_ble_command(), "serve", "--interval", str(SERVE_INTERVAL_S),
             "--duration", "240", "--seed", "7"],
            stdout=log_file, stderr=subprocess.STDOUT, env=child_env, cwd=JOB)
    hub: Hub | None = None
    hub_loop: LoopThread | None = None
    try:
        try:
            sighting = scan_loop.run(scanner.discover(address, EXPECTED_NAME), 70)
        except TimeoutError:
            assert proc.poll() is None, f"serve exited with {proc.returncode}: " \
                                        f"{log_path.read_text()[-2000:]}"
            raise
        finally:
            scan_loop.run(scanner.stop(), 20)
            scan_loop.close()
        metrics.set(f"{bluez}.serve_spawn_to_advert_s",
                    round(sighting.at - spawned, 2))
        metrics.set(f"{bluez}.serve_discovery_rescans", scanner.rescans)
        # The advert: the MushPi service UUID, and the name (advert or scan response).
        assert SERVICE_UUID in sighting.uuids
        assert EXPECTED_NAME in sighting.names | {sighting.device.name}, \
            f"names seen: {sighting.names}, device name {sighting.device.name!r}"

        started = time.monotonic()
        path = central_connect(system_bus, address, pair=pairs_first(bluez))
        metrics.add("connect_s", time.monotonic() - started)
        hub_loop = LoopThread("hub")
        run = hub_loop.run
        hub = Hub(device_at(path, address, sighting.device.name))
        run(hub.connect(), 60)

        # Discovery: the six the app requires (and actuator_status), with their flags.
        props = hub.properties()
        missing = [name for name in REQUIRED_BY_APP if name not in props]
        assert not missing, f"characteristics missing: {missing}"
        for name, expected in EXPECTED_PROPERTIES.items():
            assert props.get(name) == expected, f"{name}: {props.get(name)} != {expected}"

        # Reads, decoded.
        env_value = run(hub.read("env_measurements"), 20)
        assert len(env_value) == 12
        env = EnvMeasurement.unpack(env_value)
        assert 10.0 < env.temperature < 35.0 and 50.0 < env.humidity <= 100.0
        assert 300 < env.co2 < 5000
        targets = ControlTargets.unpack(run(hub.read("control_targets"), 20))
        assert (targets.temp_min_x10, targets.temp_max_x10, targets.rh_min_x10,
                targets.co2_max) == (200, 280, 700, 5000)
        stage = StageState.unpack(run(hub.read("stage_state"), 20))
        assert (stage.species, stage.stage) == ("Oyster", "Incubation")
        status = StatusFlags.unpack(run(hub.read("status_flags"), 20))
        assert status.flags & (1 << 4), f"connectivity bit not set: 0x{status.flags:04x}"
        actuator = ActuatorStatus.unpack(run(hub.read("actuator_status"), 20))
        assert actuator.relay_bits == 0
        thresholds = json.loads(run(hub.read("stage_thresholds"), 20))
        assert (thresholds["species"], thresholds["stage"]) == ("Oyster", "Incubation")
        assert thresholds["temp_min"] == 20.0

        # Subscriptions: each pushes its current value at once.
        for name in ("env_measurements", "status_flags", "actuator_status"):
            run(hub.subscribe(name), 20)
            _, value = run(hub.next_value(name, 10), 15)
            assert len(value) == {"env_measurements": 12, "status_flags": 4,
                                  "actuator_status": 6}[name]
        # The simulated controller publishes env every SERVE_INTERVAL_S.
        first_uptime = env.uptime_ms
        _, pushed = run(hub.next_value("env_measurements", SERVE_INTERVAL_S + 10),
                        SERVE_INTERVAL_S + 15)
        assert EnvMeasurement.unpack(pushed).uptime_ms > first_uptime

        # Writes as the app sends them; reads show the controller kept them.
        new_targets = struct.pack("<hhHHBHHH", 180, 250, 800, 1200, 2, 600, 840, 0)
        run(hub.write("control_targets", new_targets), 20)
        assert run(hub.read("control_targets"), 20) == new_targets
        start_ts = int(time.time()) - 3600
        new_stage = struct.pack("<BBBIHB", 1, 2, 2, start_ts, 7, 0)
        run(hub.write("stage_state", new_stage), 20)
        assert run(hub.read("stage_state"), 20) == new_stage
        hub.drain("actuator_status")
        run(hub.write("override_bits", struct.pack("<H", 0x0003)), 20)
        _, act = run(hub.next_value("actuator_status", 10), 15)
        assert ActuatorStatus.unpack(act).relay_bits == 0x03

        # Invalid writes come back as ATT errors (on the air too); nothing changes.
        on_air = btmon_offset()
        with pytest.raises((BleakError, ValueError)) as inconsistent:
            run(hub.write("control_targets",
                          struct.pack("<hhHHBHHH", 260, 250, 800, 1200, 0, 0, 0, 0)), 20)
        assert att_error_code(inconsistent.value) == 0x82, repr(inconsistent.value)
        with pytest.raises((BleakError, ValueError)) as short:
            run(hub.write("control_targets", new_targets[:14]), 20)
        assert att_error_code(short.value) == 0x0D, repr(short.value)
        needles = ("Error: Reserved (0x82)", "Error: Invalid Attribute Value Length (0x0d)")
        trace = btmon_since(on_air, *needles)
        for needle in needles:
            assert needle in trace, f"not on the air: {needle}"
        assert run(hub.read("control_targets"), 20) == new_targets

        metrics.set(f"{bluez}.serve_mtu", hub.mtu)
        for sample in hub.read_latencies_ms:
            metrics.add("read_latency_ms", sample)
        run(hub.disconnect(), 30)
        hub = None
    finally:
        if hub is not None and hub_loop is not None:
            hub_loop.run(hub.disconnect(), 30)
        if hub_loop is not None:
            hub_loop.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(5)
    output = log_path.read_text()
    assert rc == 0, f"serve exited with {rc}:\n{output[-3000:]}"
    assert "advertised name name=MushPi-OysterIncubation" in output
    assert "simulated controller: control targets" in output
    assert "stopped stop_ms=" in output
