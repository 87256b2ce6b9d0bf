"""Pairing, as a central that wants an encrypted link asks for it.

Today the peripheral registers no pairing agent, and neither does anyone
else on the VM's bus: the central calls ``Device1.Pair()`` and bluetoothd
finds no agent for the Just Works request arriving on hci0 ("No agent
available for request type 2"), so the peripheral's side sends SMP Pairing
Failed and the pairing fails — what a phone that pairs (or a central using
EATT on BlueZ 5.82) meets on a Pi today. Once the peripheral answers pairing
requests this test is its ``MUSHPI_BLE_PAIRING=off`` case, and a central with
an agent of its own (central_agent.py) pairs and then reads, writes and
subscribes over the encrypted link.

No agent of the central here on purpose: one bluetoothd serves both
adapters, and with no default agent an agent that any program registered
was asked about the request arriving on hci0 too (seen on 5.66 and 5.82) —
it would answer in the peripheral's place.
"""

from __future__ import annotations

import contextlib
import re
import time

import pytest
from conftest import (
    CENTRAL_ADAPTER,
    Bluetoothd,
    Metrics,
    PortalLab,
    SystemBus,
    btmon_offset,
    btmon_since,
    central_connect,
    wait_for,
)
from jeepney.wrappers import DBusErrorResponse

NO_AGENT = "No agent available for request type 2"
# The peripheral's own refusal on the air: an SMP Pairing Failed sent by hci0.
PERIPHERAL_REFUSES = re.compile(
    r"< ACL Data TX:[^\n]*\[hci0\][^\n]*\n\s+SMP: Pairing Failed \(0x05\)[^\n]*\n"
    r"\s+Reason: ([^\n]+)")


def _connected(bus: SystemBus, path: str) -> bool:
    try:
        return bool(bus.get(path, "org.bluez.Device1", "Connected"))
    except (DBusErrorResponse, TimeoutError):
        return False


@pytest.mark.pairing
def test_pairing_without_a_peripheral_agent_is_refused(bluez: str, portal_lab: PortalLab,
                                                       bluetoothd: Bluetoothd,
                                                       system_bus: SystemBus,
                                                       metrics: Metrics) -> None:
    log_from = bluetoothd.log_offset()
    trace_from = btmon_offset()
    path = central_connect(system_bus, portal_lab.address)
    wait_for(lambda: portal_lab.status()["connection_count"] == 1, 10,
             "the portal to see the central")
    try:
        started = time.monotonic()
        with pytest.raises(DBusErrorResponse) as refused:
            system_bus.call(path, "org.bluez.Device1", "Pair", timeout=45)
        metrics.set(f"{bluez}.pairing_refused_after_s", round(time.monotonic() - started, 2))
        metrics.set(f"{bluez}.pairing_error", refused.value.name)
        assert refused.value.name.startswith("org.bluez.Error.Authentication"), refused.value
        trace = btmon_since(trace_from, "Pairing Request", "Pairing Failed")
        assert "SMP: Pairing Request" in trace, "the central never asked to pair"
        reasons = PERIPHERAL_REFUSES.findall(trace)
        assert reasons, "the peripheral (hci0) sent no SMP Pairing Failed"
        metrics.set(f"{bluez}.pairing_refusal_reason", reasons[0])
        assert NO_AGENT in bluetoothd.log_since(log_from)
        assert not system_bus.get(path, "org.bluez.Device1", "Paired")
        metrics.set(f"{bluez}.pairing_refusal_dropped_link", not _connected(system_bus, path))
    finally:
        if _connected(system_bus, path):
            with contextlib.suppress(DBusErrorResponse, TimeoutError):
                system_bus.call(path, "org.bluez.Device1", "Disconnect", timeout=15)
        wait_for(lambda: portal_lab.status()["connection_count"] == 0, 15,
                 "the portal to see the central leave")
        with contextlib.suppress(DBusErrorResponse, TimeoutError):
            system_bus.call(f"/org/bluez/{CENTRAL_ADAPTER}", "org.bluez.Adapter1",
                            "RemoveDevice", "o", (path,))
