"""Bonded means bonded, on the real bluetoothd: a bond another agent made does not count.

Another program on the guest's system bus (as ``bt-agent`` or ``bluetoothctl
default-agent`` would on a Pi) registers an agent that accepts everything and
makes it bluetoothd's default, while our pairing window is closed. The
central writes; bluetoothd refuses it on the air (``encrypt-write``); the
central pairs by itself, and the other agent, not ours, says yes on the
Pi's side. The bond is real (``Paired`` on hci0) but not approved: the
retried write is refused by our gate, the WARNING and the counter appear,
the controller sees nothing.

The window path (a phone paired in the window writes; after ``bonds
--remove`` it cannot) runs in test_50_access.py against the same approval
rule: its writes pass only because the window's bond is approved.

No ``from __future__ import annotations`` here: dbus-fast reads the D-Bus
signatures of the other program's agent from the live annotations.
"""

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    CENTRAL_ADAPTER,
    PERIPHERAL_ADAPTER,
    LoopThread,
    Metrics,
    PortalLab,
    SystemBus,
    connect_device,
    forget_bond,
    portal_in_place_of_the_lab,
    wait_for,
)
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, method
from test_50_access import _hub_write, _writes

log = logging.getLogger("tests_vm.rogue_agent")

ROGUE_PATH = "/other/program/agent"


class _AcceptAll(ServiceInterface):
    """The other program's agent: yes to everything, on every adapter."""

    def __init__(self, calls: list[tuple[str, str]]) -> None:
        super().__init__("org.bluez.Agent1")
        self.calls = calls

    @method()
    def RequestAuthorization(self, device: DBusObjectPath) -> None:
        log.info("rogue agent RequestAuthorization %s", device)
        self.calls.append(("RequestAuthorization", device))

    @method()
    def RequestConfirmation(self, device: DBusObjectPath, passkey: DBusUInt32) -> None:
        log.info("rogue agent RequestConfirmation %s", device)
        self.calls.append(("RequestConfirmation", device))

    @method()
    def AuthorizeService(self, device: DBusObjectPath, uuid: DBusStr) -> None:
        self.calls.append(("AuthorizeService", device))

    @method()
    def Cancel(self) -> None:
        self.calls.append(("Cancel", ""))

    @method()
    def Release(self) -> None:
        self.calls.append(("Release", ""))


async def _agent_manager(bus: MessageBus, member: str, signature: str, body: list[Any]) -> None:
    reply = await asyncio.wait_for(bus.call(Message(
        destination="org.bluez", path="/org/bluez", interface="org.bluez.AgentManager1",
        member=member, signature=signature, body=body)), 10)
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        raise RuntimeError(f"{member}: {reply.error_name} {reply.body}")


@contextlib.contextmanager
def rogue_default_agent() -> Iterator[list[tuple[str, str]]]:
    """Another program's agent, bluetoothd's default for as long as the block runs."""
    calls: list[tuple[str, str]] = []

    async def connect() -> MessageBus:  # dbus-fast wants its loop running when built
        return await MessageBus(bus_type=BusType.SYSTEM).connect()

    with LoopThread("rogue-agent") as loop:
        bus = loop.run(connect(), 10)
        bus.export(ROGUE_PATH, _AcceptAll(calls))
        loop.run(_agent_manager(bus, "RegisterAgent", "os", [ROGUE_PATH, "NoInputNoOutput"]),
                 15)
        loop.run(_agent_manager(bus, "RequestDefaultAgent", "o", [ROGUE_PATH]), 15)
        try:
            yield calls
        finally:
            with contextlib.suppress(Exception):
                loop.run(_agent_manager(bus, "UnregisterAgent", "o", [ROGUE_PATH]), 10)
            bus.disconnect()


@pytest.fixture(scope="module", autouse=True)
def classic_pass_only(bluez: str) -> None:
    """Who made a bond does not depend on the bearer: once per generation."""
    if bluez != "att":
        pytest.skip("bonded-access tests run in the att pass of each generation")


def _part(bus: SystemBus, lab_address: str, central: str) -> None:
    forget_bond(bus, CENTRAL_ADAPTER, lab_address)
    forget_bond(bus, PERIPHERAL_ADAPTER, central)


@pytest.mark.pairing
def test_a_bond_another_agent_made_is_refused_and_reported(
        bluez: str, portal_lab: PortalLab, system_bus: SystemBus, metrics: Metrics,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mushpi_ble.access")
    central = system_bus.adapter_address(CENTRAL_ADAPTER)
    _part(system_bus, portal_lab.address, central)
    state_dir = tempfile.mkdtemp(prefix="mushpi-state-")
    with portal_in_place_of_the_lab(portal_lab, MUSHPI_BLE_WRITE_ACCESS="bonded",
                                    MUSHPI_BLE_PAIRING="window",
                                    MUSHPI_BLE_STATE_DIR=state_dir) as portal:
        try:
            wait_for(lambda: portal.get_status()["pairing"]["agent_registered"], 15,
                     "our agent registered")
            assert not portal.get_status()["access"]["window_open"]
            before = _writes(portal_lab)
            with rogue_default_agent() as rogue:
                path = connect_device(system_bus, portal_lab.address)
                wait_for(lambda: bool(system_bus.get(path, "org.bluez.Device1",
                                                     "ServicesResolved")), 40,
                         "ServicesResolved")
                with pytest.raises(Exception) as failed:
                    _hub_write(path, portal_lab.address, timeout=20)
                metrics.set(f"{bluez}.bonded_rogue_write_error",
                            f"{type(failed.value).__name__}: {failed.value}")
            ours = f"/org/bluez/{PERIPHERAL_ADAPTER}/dev_{central.replace(':', '_')}"
            # the other agent said yes on the Pi's side; ours was never asked
            assert ("RequestAuthorization", ours) in rogue or \
                ("RequestConfirmation", ours) in rogue, rogue
            assert bool(system_bus.get(ours, "org.bluez.Device1", "Paired"))
            status = portal.get_status()
            assert status["pairing"]["accepted"] == 0, status["pairing"]["recent"]
            assert status["access"]["unapproved"] == [central], status["access"]
            assert status["access"]["refused"]["not-approved"] >= 1, status["access"]
            assert _writes(portal_lab) == before
            warned = [r.getMessage() for r in caplog.records
                      if "bond not approved" in r.getMessage()]
            assert len(warned) == 1 and central in warned[0], warned
            metrics.set(f"{bluez}.bonded_rogue_refused", status["access"]["refused"])
        finally:
            _part(system_bus, portal_lab.address, central)
