"""bluetoothd restarts under the running BlePortal: it registers again and serves.

The pairing agent is registered again too, and made the default (bluetoothd's
own log says so); test_40 then pairs with the new bluetoothd. On bookworm a
restart never follows a live paired link or a bond: test_40 runs after this
test, disconnects and removes its bonds before the next pass restarts
bluetoothd, and every configuration is LE only (conftest.CONFIGS says why).
"""

from __future__ import annotations

import signal
import time

import pytest
from conftest import (
    Bluetoothd,
    LoopThread,
    Metrics,
    PortalLab,
    SystemBus,
    central_connect,
    pairs_first,
    wait_for,
)
from hub import Hub, device_at

from mushpi_ble.gatt.agent import agent_path
from mushpi_ble.protocol import EnvMeasurement


@pytest.mark.restart
def test_bluetoothd_restart_registers_again(bluez: str, portal_lab: PortalLab,
                                            bluetoothd: Bluetoothd, system_bus: SystemBus,
                                            metrics: Metrics) -> None:
    portal = portal_lab.portal
    before = portal_lab.status()
    assert before["registered"], before
    # The classic pass stops bluetoothd as systemd would; the other one kills it.
    sig = signal.SIGTERM if bluez == "att" else signal.SIGKILL
    stopped = time.monotonic()
    bluetoothd.stop(sig)
    wait_for(lambda: not portal_lab.status()["registered"], 15,
             "the portal to notice bluetoothd leaving")
    bluetoothd.start(bluez)
    spawned = bluetoothd.started_at

    def registered_again() -> bool:
        status = portal_lab.status()
        return bool(status["registered"] and status["restarts"] == before["restarts"] + 1)

    wait_for(registered_again, 30, "the portal to register with the new bluetoothd")
    registered = time.monotonic()
    wait_for(lambda: portal_lab.status()["advertising"], 15, "advertising again")
    advertising = time.monotonic()
    wait_for(lambda: portal_lab.status()["pairing"]["agent_registered"], 15,
             "the pairing agent to be registered again")
    agent_back = time.monotonic()
    status = portal_lab.status()
    assert status["pairing"]["agent_error"] is None, status["pairing"]

    def default_agent_line() -> str:
        lines = [line for line in bluetoothd.log_since(0).splitlines()
                 if "Default agent set to" in line]
        return lines[-1] if lines else ""

    # bluetoothd's debug line: "Default agent set to <owner> <path>"
    line = wait_for(default_agent_line, 10, "bluetoothd to log a default agent")
    assert line.rstrip().endswith(agent_path(portal.settings.dbus_app_path)), line
    assert status["bluez_owner"] != before["bluez_owner"]
    assert status["running"] and status["last_error"] in (None, ""), status["last_error"]
    metrics.add("restart_to_registered_s", registered - spawned)
    metrics.set(f"{bluez}.restart_signal", signal.Signals(sig).name)
    metrics.set(f"{bluez}.restart_spawn_to_registered_s", round(registered - spawned, 2))
    metrics.set(f"{bluez}.restart_stop_to_registered_s", round(registered - stopped, 2))
    metrics.set(f"{bluez}.restart_spawn_to_advertising_s", round(advertising - spawned, 2))
    metrics.set(f"{bluez}.restart_spawn_to_agent_s", round(agent_back - spawned, 2))
    metrics.set(f"{bluez}.restart_last_recovery_s",
                None if status["last_recovery_s"] is None
                else round(status["last_recovery_s"], 2))

    # A new central connection works end to end: read, subscribe, get a publish.
    path = central_connect(system_bus, portal_lab.address, pair=pairs_first(bluez))
    with LoopThread("hub-after-restart") as loop:
        hub = Hub(device_at(path, portal_lab.address))
        loop.run(hub.connect(), 60)
        try:
            env = EnvMeasurement.unpack(loop.run(hub.read("env_measurements"), 20))
            assert env.uptime_ms > 0
            loop.run(hub.subscribe("env_measurements"), 20)
            loop.run(hub.next_value("env_measurements", 10), 15)  # the value pushed at once
            portal.publish_env(19.5, 77.0, 2468, 5.0)
            deadline = time.monotonic() + 10
            while True:
                _, value = loop.run(hub.next_value(
                    "env_measurements", max(0.1, deadline - time.monotonic())), 15)
                if EnvMeasurement.unpack(value).co2 == 2468:
                    break
            wait_for(lambda: portal_lab.status()["connection_count"] == 1, 10,
                     "the portal to see the new central")
            if pairs_first(bluez):
                # The hub is bonded here. bluetoothd keeps a bonded device's CCC
                # values past its disconnect and even past RemoveDevice, so
                # test_40's fresh pairing from the same address would write an
                # "unchanged" 1: bluetoothd then answers without calling
                # StartNotify and the current value is never pushed.
                loop.run(hub.unsubscribe("env_measurements"), 20)
        finally:
            loop.run(hub.disconnect(), 30)
    wait_for(lambda: portal_lab.status()["connection_count"] == 0, 15,
             "the portal to see the central leave")
