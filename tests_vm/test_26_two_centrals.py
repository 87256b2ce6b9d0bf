"""Two phones on notify sockets with the real bluetoothd 5.82: each subscribing phone
gets a socket of its own, both receive what the controller publishes, and when one
leaves the other keeps receiving.

Then the second phone (hci2) comes back alone, pairs, is served through its socket,
leaves, and its bond is removed on both sides; then the portal stops. That is the
sequence that killed bluetoothd 5.82 in
``UnregisterApplication`` (a bonded phone's subscription outlives its device, and
bluetoothd clears it while freeing our characteristics — see
``GattApplication.unregister``): the test ends by checking that bluetoothd survived.

Runs in the att pass of trixie only: bookworm's 5.66 shares one socket among all
subscribers, so there is no second socket to see.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    CENTRAL_ADAPTER,
    GENERATION,
    PERIPHERAL_ADAPTER,
    PORTAL_NAME,
    SECOND_CENTRAL_ADAPTER,
    Bluetoothd,
    HubLink,
    LoopThread,
    Metrics,
    PortalLab,
    SystemBus,
    connect_device,
    device_path,
    forget_bond,
    hub_connection,
    pair_as_central,
    portal_in_place_of_the_lab,
    wait_for,
)
from hub import Hub, device_at
from jeepney.wrappers import DBusErrorResponse
from test_60_unattended import drop_link, handles_kept_apart

from mushpi_ble.protocol import EnvMeasurement

ENV = "env_measurements"


def _phones(portal: Any) -> dict[str, Any]:
    return dict(portal.get_status()["notify"]["phones"])


def _peripheral_side(bus: SystemBus, adapter: str) -> str:
    """hci0's device path for the central on ``adapter``: the key of its socket."""
    return device_path(bus.adapter_address(adapter), PERIPHERAL_ADAPTER)


def _resolved(bus: SystemBus, path: str) -> bool:
    try:
        return bool(bus.get(path, "org.bluez.Device1", "ServicesResolved"))
    except (DBusErrorResponse, TimeoutError):
        return False


def _receive(link: HubLink, co2: int) -> None:
    """Wait until ``link``'s hub got the reading with this CO2 value."""
    deadline = time.monotonic() + 10
    while True:
        _, value = link.run(link.hub.next_value(ENV, max(0.1, deadline - time.monotonic())), 15)
        if EnvMeasurement.unpack(value).co2 == co2:
            return


@contextlib.contextmanager
def second_phone(bus: SystemBus, lab: PortalLab, *, pair: bool) -> Iterator[HubLink]:
    """A bleak connection from hci2 (paired first with ``pair``); at the end it
    disconnects and the device (with any bond) is removed on both sides."""
    central = bus.adapter_address(SECOND_CENTRAL_ADAPTER)
    forget_bond(bus, SECOND_CENTRAL_ADAPTER, lab.address)
    forget_bond(bus, PERIPHERAL_ADAPTER, central)
    path = connect_device(bus, lab.address, SECOND_CENTRAL_ADAPTER)
    loop = LoopThread("second-phone")
    hub = Hub(device_at(path, lab.address, PORTAL_NAME), adapter=SECOND_CENTRAL_ADAPTER)
    try:
        if pair:
            pair_as_central(path, adapter=SECOND_CENTRAL_ADAPTER)
        # bleak connects over the link once bluetoothd resolved the services (see
        # conftest.central_connect)
        wait_for(lambda: _resolved(bus, path), 40, f"{path} ServicesResolved")
        loop.run(hub.connect(), 60)
        yield HubLink(loop, hub, path)
    finally:
        # at once, as a phone leaves (bleak's disconnect waits bluetoothd's 2 s timer)
        with contextlib.suppress(Exception):
            drop_link(bus, SECOND_CENTRAL_ADAPTER, lab.address)
        with contextlib.suppress(Exception):
            loop.run(hub.disconnect(), 30)
        loop.close()
        forget_bond(bus, SECOND_CENTRAL_ADAPTER, lab.address)
        forget_bond(bus, PERIPHERAL_ADAPTER, central)


def test_two_phones_get_a_socket_each_and_one_leaving_spares_the_other(
        bluez: str, portal_lab: PortalLab, bluetoothd: Bluetoothd, system_bus: SystemBus,
        metrics: Metrics) -> None:
    if bluez != "att":
        pytest.skip("the socket path is tested in the att pass of each generation")
    if GENERATION == "bookworm":
        pytest.skip("bluetoothd 5.66 shares one notify socket among all subscribers")
    started = time.monotonic()
    try:
        with portal_in_place_of_the_lab(portal_lab, MUSHPI_BLE_NOTIFY_MODE="auto") as portal:
            # The first phone, then the second (its handle kept apart from the first's, see
            # test_60_unattended.handles_kept_apart).
            with handles_kept_apart(system_bus), \
                    hub_connection(bluez, portal_lab, system_bus, name="hub-first") as first, \
                    contextlib.ExitStack() as second_stack:
                second = second_stack.enter_context(
                    second_phone(system_bus, portal_lab, pair=False))
                for link in (first, second):
                    link.run(link.hub.subscribe(ENV))
                phones = wait_for(lambda: len(_phones(portal)) == 2 and _phones(portal), 20,
                                  "a notify socket for each phone")
                assert set(phones) == {_peripheral_side(system_bus, a)
                                       for a in (CENTRAL_ADAPTER, SECOND_CENTRAL_ADAPTER)}, phones
                assert all(ENV in p["characteristics"] for p in phones.values()), phones
                for co2 in (4200, 4201):
                    portal.publish_env(19.5, 90.0, co2, 2.0)
                    _receive(first, co2)
                    _receive(second, co2)
                # The second phone leaves; the first one keeps receiving: through its
                # socket, or — where bluetoothd also closes the socket of the phone that
                # stays (bluez/bluez#1452, up to 5.87) — by signals, as the portal then
                # falls back to them.
                second_stack.close()
                mine = _peripheral_side(system_bus, CENTRAL_ADAPTER)

                def settled() -> str | None:
                    notify = portal.get_status()["notify"]
                    env = notify["characteristics"][ENV]
                    if set(notify["phones"]) == {mine} and env["path"] == "socket":
                        return "socket"
                    if not notify["phones"] and env["path"] == "signal" and env["socket_losses"]:
                        return "signal (bluez/bluez#1452)"
                    return None

                path = wait_for(settled, 15, "the second phone's socket to end")
                metrics.set(f"{bluez}.two_phones_remaining_path", path)
                for co2 in (4300, 4301):
                    portal.publish_env(19.5, 90.0, co2, 2.0)
                    _receive(first, co2)
                assert settled() == path, portal.get_status()["notify"]
                drop_link(system_bus, CENTRAL_ADAPTER, portal_lab.address)
            metrics.set(f"{bluez}.two_phones_s", round(time.monotonic() - started, 2))
            # A phone that pairs, is served through its socket, leaves, and has its bond
            # removed on both sides.
            with second_phone(system_bus, portal_lab, pair=True) as bonded:
                bonded.run(bonded.hub.subscribe(ENV))
                wait_for(lambda: _phones(portal), 20, "the bonded phone's notify socket")
                portal.publish_env(19.5, 90.0, 4400, 2.0)
                _receive(bonded, 4400)
            wait_for(lambda: not _phones(portal), 15, "the bonded phone's socket to end")
    except Exception:
        if bluetoothd.proc is not None and bluetoothd.proc.poll() is not None:
            pytest.fail(f"bluetoothd died with {bluetoothd.proc.returncode} "
                        f"(see {bluetoothd.log_path.name})")
        raise
    # The portal stopped (UnregisterApplication) after a bonded phone's socket ended and
    # its bond was removed: bluetoothd must still be there.
    assert bluetoothd.proc is not None and bluetoothd.proc.poll() is None, (
        f"bluetoothd died with {bluetoothd.proc and bluetoothd.proc.returncode} "
        f"(see {bluetoothd.log_path.name})")
    try:
        system_bus.get(f"/org/bluez/{PERIPHERAL_ADAPTER}", "org.bluez.Adapter1", "Powered")
    except DBusErrorResponse as exc:
        pytest.fail(f"bluetoothd does not answer after the portal's stop: {exc}")
    metrics.set(f"{bluez}.two_phones_with_stop_s", round(time.monotonic() - started, 2))
