"""Notify sockets with the real bluetoothd: ``MUSHPI_BLE_NOTIFY_MODE=auto`` takes the
socket bluetoothd offers through AcquireNotify, and bleak receives what the controller
publishes through it — on both generations (5.66 shares one socket among
subscribers, 5.82 gives one per phone; with one phone both look the same).

This test runs a portal of its own in auto mode (whatever the default), in the
att pass; test_26_two_centrals covers two phones and a paired one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    HubLink,
    Metrics,
    PortalLab,
    SystemBus,
    hub_connection,
    portal_in_place_of_the_lab,
    wait_for,
)

from mushpi_ble.protocol import EnvMeasurement

ENV = "env_measurements"


class SocketLab:
    """The lab's portal stopped; one in ``MUSHPI_BLE_NOTIFY_MODE=auto`` in its place."""

    def __init__(self, portal: Any) -> None:
        self.portal = portal

    def status(self) -> dict[str, Any]:
        return dict(self.portal.get_status())


@pytest.fixture
def socket_lab(bluez: str, portal_lab: PortalLab) -> Iterator[SocketLab]:
    if bluez != "att":
        pytest.skip("the socket path is tested in the att pass of each generation")
    with portal_in_place_of_the_lab(portal_lab, MUSHPI_BLE_NOTIFY_MODE="auto") as portal:
        yield SocketLab(portal)


@pytest.fixture
def own_link(bluez: str, portal_lab: PortalLab, socket_lab: SocketLab,
             system_bus: SystemBus) -> Iterator[HubLink]:
    """A bleak connection of this test's own, to the auto-mode portal."""
    with hub_connection(bluez, portal_lab, system_bus, name="hub-socket") as link:
        yield link


def test_bleak_receives_notifications_through_the_notify_socket(
        bluez: str, socket_lab: SocketLab, own_link: HubLink, metrics: Metrics) -> None:
    portal_lab = socket_lab
    hub_link = own_link
    hub = hub_link.hub
    hub_link.run(hub.subscribe(ENV))
    wait_for(lambda: portal_lab.status()["notify"]["phones"], 20,
             "bluetoothd to acquire a notify socket")
    notify = portal_lab.status()["notify"]
    assert notify["mode"] == "auto"
    assert notify["characteristics"][ENV]["path"] == "socket", notify
    (phone,) = notify["phones"].values()
    assert ENV in phone["characteristics"] and phone["mtu"] >= 23, phone
    sent_before = phone["sent"]
    hub.drain(ENV)
    for i in range(10):
        co2 = 4100 + i
        published = time.perf_counter()
        portal_lab.portal.publish_env(19.5, 90.0, co2, 2.0)
        deadline = time.monotonic() + 10
        while True:
            arrived, value = hub_link.run(hub.next_value(
                ENV, max(0.1, deadline - time.monotonic())), 15)
            if EnvMeasurement.unpack(value).co2 == co2:
                break
        metrics.add(f"{bluez}.socket_notify_latency_ms", (arrived - published) * 1000)
    phone = next(iter(portal_lab.status()["notify"]["phones"].values()))
    assert phone["sent"] >= sent_before + 10 and phone["dropped"] == 0, phone
    assert portal_lab.status()["subscriptions"][ENV] is True  # a socket phone is subscribed
