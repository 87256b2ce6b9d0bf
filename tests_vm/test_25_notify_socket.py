"""Notify sockets with the real bluetoothd: the default mode (auto) takes the socket
bluetoothd offers through AcquireNotify, and bleak receives what the controller
publishes through it — on both generations (5.66 shares one socket among
subscribers, 5.82 gives one per phone; with one phone both look the same)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from conftest import (
    PORTAL_NAME,
    HubLink,
    LoopThread,
    Metrics,
    PortalLab,
    SystemBus,
    central_connect,
    pairs_first,
    wait_for,
)

from mushpi_ble.protocol import EnvMeasurement

ENV = "env_measurements"


@pytest.fixture
def own_link(bluez: str, portal_lab: PortalLab, system_bus: SystemBus) -> Iterator[HubLink]:
    """A bleak connection of this test's own (the shared one may have been closed)."""
    from hub import Hub, device_at

    path = central_connect(system_bus, portal_lab.address, pair=pairs_first(bluez))
    loop = LoopThread("hub-socket")
    hub = Hub(device_at(path, portal_lab.address, PORTAL_NAME))
    try:
        loop.run(hub.connect(), 60)
        yield HubLink(loop, hub, path)
    finally:
        with contextlib.suppress(Exception):
            loop.run(hub.disconnect(), 30)
        loop.close()


def test_bleak_receives_notifications_through_the_notify_socket(
        bluez: str, portal_lab: PortalLab, own_link: HubLink, metrics: Metrics) -> None:
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
    assert portal_lab.status()["subscriptions"][ENV] is False  # no StartNotify: the socket
