"""Pairing, as a central that wants an encrypted link asks for it.

The hub pairs Just Works: ``Device1.Pair()`` on its own connection with its
own agent (central_agent.py), so bluetoothd decides the hub's side with that
agent, and the request arriving on hci0 (the Pi) with the default agent —
ours, registered by the portal (``MUSHPI_BLE_PAIRING=just-works``). The
link is encrypted (both controllers report the Encryption Change on the
air) and the app's reads, writes and notifications work over it.

With ``MUSHPI_BLE_PAIRING=off`` and no agent anywhere, the same request
meets "No agent available for request type 2": the peripheral's side sends
SMP Pairing Failed and ``Pair()`` fails — what a phone that pairs met on a
Pi before the agent. The central pairs without its agent there: one
bluetoothd serves both adapters, and an agent registered while no other is
becomes the default and would be asked in the peripheral's place.

These tests run after test_30's bluetoothd restart, so the pairing here is
answered by the agent the portal registered again with the new bluetoothd.
Each test disconnects and removes the bonds on both sides before it ends, so
no restart (the next pass) follows a live paired link.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    CENTRAL_ADAPTER,
    PERIPHERAL_ADAPTER,
    Bluetoothd,
    LoopThread,
    Metrics,
    PortalLab,
    SystemBus,
    btmon_offset,
    btmon_since,
    connect_device,
    device_path,
    device_prop,
    forget_bond,
    pair_as_central,
    portal_in_place_of_the_lab,
    wait_for,
)
from hub import Hub, device_at
from jeepney.wrappers import DBusErrorResponse

from mushpi_ble.gatt.agent import agent_path
from mushpi_ble.protocol import ControlTargets, EnvMeasurement

NO_AGENT = "No agent available for request type 2"
# The peripheral's own refusal on the air: an SMP Pairing Failed sent by hci0.
PERIPHERAL_REFUSES = re.compile(
    r"< ACL Data TX:[^\n]*\[hci0\][^\n]*\n\s+SMP: Pairing Failed \(0x05\)[^\n]*\n"
    r"\s+Reason: ([^\n]+)")
# Each controller's Encryption Change with encryption on (btmon text).
ENCRYPTED = {adapter: re.compile(
    r"> HCI Event: Encryption Change[^\n]*\[" + adapter + r"\][^\n]*\n"
    r"(?:\s+[^\n]*\n){0,3}?\s+Encryption: Enabled")
    for adapter in (PERIPHERAL_ADAPTER, CENTRAL_ADAPTER)}



def _part(bus: SystemBus, lab_address: str, central: str, status: Any) -> None:
    """Disconnect and forget the bond on both sides; the portal sees the central leave."""
    path = device_path(lab_address)
    if device_prop(bus, path, "Connected"):
        with contextlib.suppress(DBusErrorResponse, TimeoutError):
            bus.call(path, "org.bluez.Device1", "Disconnect", timeout=15)
    forget_bond(bus, CENTRAL_ADAPTER, lab_address)
    forget_bond(bus, PERIPHERAL_ADAPTER, central)
    wait_for(lambda: status()["connection_count"] == 0, 15,
             "the portal to see the central leave")


@pytest.mark.pairing
def test_just_works_pairing_then_gatt_over_the_encrypted_link(
        bluez: str, portal_lab: PortalLab, bluetoothd: Bluetoothd, system_bus: SystemBus,
        metrics: Metrics) -> None:
    portal = portal_lab.portal
    central = system_bus.adapter_address(CENTRAL_ADAPTER)
    # A fresh pairing: no bond from earlier in the pass (the trixie EATT pass pairs first).
    _part(system_bus, portal_lab.address, central, portal_lab.status)
    before = portal_lab.status()["pairing"]
    assert before["mode"] == "just-works" and before["agent_registered"], before
    log_from = bluetoothd.log_offset()
    trace_from = btmon_offset()
    try:
        path = connect_device(system_bus, portal_lab.address)
        started = time.monotonic()
        central_calls = pair_as_central(path)
        metrics.set(f"{bluez}.pairing_s", round(time.monotonic() - started, 2))
        assert device_prop(system_bus, path, "Paired")

        # Our agent answered the request that arrived on hci0, and only that one.
        def paired_in_status() -> dict[str, Any] | None:
            pairing: dict[str, Any] = portal_lab.status()["pairing"]
            mine = [a for a in pairing["recent"] if a["address"] == central]
            if pairing["paired"] > before["paired"] and mine and mine[-1]["outcome"] == "paired":
                return pairing
            return None

        pairing = wait_for(paired_in_status, 10, "our agent's attempt to end paired")
        attempt = [a for a in pairing["recent"] if a["address"] == central][-1]
        assert attempt["device"].startswith(f"/org/bluez/{PERIPHERAL_ADAPTER}/"), attempt
        assert pairing["accepted"] == before["accepted"] + 1, pairing
        assert pairing["rejected"] == before["rejected"], pairing
        assert central in [d["address"] for d in pairing["bonded_devices"]], pairing
        metrics.set(f"{bluez}.pairing_peripheral_request", attempt["request"])
        # The hub's own agent was asked at most about its own (hci1's) device.
        assert all(str(args[0]).startswith(f"/org/bluez/{CENTRAL_ADAPTER}/")
                   for _name, args in central_calls if args), central_calls
        metrics.set(f"{bluez}.pairing_central_agent_calls", [c[0] for c in central_calls])
        # bluetoothd's log: it called our agent (its path) about hci0's device.
        ours = agent_path(portal.settings.dbus_app_path)
        log = bluetoothd.log_since(log_from)
        asked = [line for line in log.splitlines()
                 if "Calling Agent." in line and f"path={ours}" in line]
        assert asked, f"bluetoothd never called {ours}:\n{log[-3000:]}"
        assert NO_AGENT not in log
        # Encrypted: both controllers report it on the air.
        for adapter, pattern in ENCRYPTED.items():
            wait_for(lambda p=pattern: p.search(btmon_since(trace_from)), 10,
                     f"an Encryption Change (enabled) on {adapter} in btmon")

        # The app's conversation over the encrypted link.
        wait_for(lambda: device_prop(system_bus, path, "ServicesResolved"), 40, "ServicesResolved")
        with LoopThread("paired-hub") as loop:
            hub = Hub(device_at(path, portal_lab.address))
            loop.run(hub.connect(), 60)
            try:
                env = EnvMeasurement.unpack(loop.run(hub.read("env_measurements"), 20))
                assert env.uptime_ms > 0
                targets = ControlTargets(195, 265, 720, 1500, light_mode=2, on_minutes=600,
                                         off_minutes=840).pack()
                loop.run(hub.write("control_targets", targets), 20)
                assert loop.run(hub.read("control_targets"), 20) == targets
                for sample in hub.read_latencies_ms:
                    metrics.add(f"{bluez}.paired_read_latency_ms", sample)
                loop.run(hub.subscribe("env_measurements"), 20)
                loop.run(hub.next_value("env_measurements", 10), 15)  # pushed at once
                published = time.perf_counter()
                portal.publish_env(21.5, 81.0, 1357, 9.0)
                deadline = time.monotonic() + 10
                while True:
                    at, value = loop.run(hub.next_value(
                        "env_measurements", max(0.1, deadline - time.monotonic())), 15)
                    if EnvMeasurement.unpack(value).co2 == 1357:
                        break
                metrics.add(f"{bluez}.paired_notify_latency_ms", (at - published) * 1000)
                assert device_prop(system_bus, path, "Paired")
                assert device_prop(system_bus, path, "Connected")
            finally:
                loop.run(hub.disconnect(), 30)
    finally:
        _part(system_bus, portal_lab.address, central, portal_lab.status)
    wait_for(lambda: central not in [d["address"] for d in
                                     portal_lab.status()["pairing"]["bonded_devices"]],
             10, "the portal to see the bond removed")


@pytest.fixture
def portal_without_agent(portal_lab: PortalLab) -> Iterator[Any]:
    """The lab's portal stopped; one with ``MUSHPI_BLE_PAIRING=off`` in its place."""
    with portal_in_place_of_the_lab(portal_lab, MUSHPI_BLE_PAIRING="off") as portal:
        yield portal


@pytest.mark.pairing
def test_pairing_off_is_refused_for_want_of_an_agent(
        bluez: str, portal_lab: PortalLab, portal_without_agent: Any, bluetoothd: Bluetoothd,
        system_bus: SystemBus, metrics: Metrics) -> None:
    portal = portal_without_agent
    central = system_bus.adapter_address(CENTRAL_ADAPTER)
    pairing = portal.get_status()["pairing"]
    assert pairing["mode"] == "off" and not pairing["agent_registered"], pairing
    log_from = bluetoothd.log_offset()
    trace_from = btmon_offset()
    try:
        path = connect_device(system_bus, portal_lab.address)
        started = time.monotonic()
        with pytest.raises(DBusErrorResponse) as refused:
            system_bus.call(path, "org.bluez.Device1", "Pair", timeout=45)
        metrics.set(f"{bluez}.pairing_refused_after_s", round(time.monotonic() - started, 2))
        metrics.set(f"{bluez}.pairing_error", refused.value.name)
        assert refused.value.name.startswith("org.bluez.Error.Authentication"), refused.value
        trace = btmon_since(trace_from, "Pairing Request", "Pairing Failed")
        assert "SMP: Pairing Request" in trace, "the central never asked to pair"
        assert NO_AGENT in bluetoothd.log_since(log_from)
        # Usually the peripheral's SMP Pairing Failed is on the air; when the
        # central's side (also without an agent) fails first, the link drops
        # before it is sent (seen once on bookworm under load).
        reasons = PERIPHERAL_REFUSES.findall(btmon_since(trace_from, "Reason: Numeric"))
        metrics.set(f"{bluez}.pairing_refusal_reason",
                    reasons[0] if reasons else "link dropped before the peripheral's reply")
        assert not device_prop(system_bus, path, "Paired")
        metrics.set(f"{bluez}.pairing_refusal_dropped_link",
                    not device_prop(system_bus, path, "Connected"))
        # No agent: nothing was asked of the portal, nothing bonded.
        pairing = portal.get_status()["pairing"]
        assert pairing["requests"] == 0 and not pairing["bonded_devices"], pairing
    finally:
        _part(system_bus, portal_lab.address, central, portal.get_status)

