"""Shared fixtures: one private dbus-daemon per test session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import trio
from hypothesis import settings
from rig import Rig, make_settings, start_rig

from mushpi_ble.dbus import Connection, open_connection
from mushpi_ble.portal import BlePortal
from mushpi_ble.testing import private_bus
from mushpi_ble.testing.fakebluez import FakeBluez

# Tests assert behaviour, never speed: a loaded CI machine must not fail an example
# for taking long (hypothesis's default deadline is 200 ms per example).
settings.register_profile("mushpi", deadline=None)
settings.load_profile("mushpi")


@pytest.fixture(scope="session")
def bus_address() -> Iterator[str]:
    with private_bus() as address:
        yield address


@pytest.fixture
async def server(bus_address: str) -> AsyncIterator[Connection]:
    async with open_connection(bus_address, call_timeout=2.0) as conn:
        yield conn


@pytest.fixture
async def client(bus_address: str) -> AsyncIterator[Connection]:
    async with open_connection(bus_address, call_timeout=2.0) as conn:
        yield conn


@pytest.fixture
async def app_conn(bus_address: str) -> AsyncIterator[Connection]:
    """A connection that plays an application exported by hand."""
    async with open_connection(bus_address, call_timeout=3.0) as conn:
        yield conn


@pytest.fixture
async def bluez(bus_address: str) -> AsyncIterator[FakeBluez]:
    async with FakeBluez.serve(bus_address) as fake:
        yield fake


@pytest.fixture
async def rig(bus_address: str, bluez: FakeBluez) -> AsyncIterator[Rig]:
    """A running portal with a simulated controller on the fake bluetoothd."""
    running = await start_rig(bus_address, bluez, make_settings())
    try:
        yield running
    finally:
        await trio.to_thread.run_sync(running.portal.stop)


@pytest.fixture
async def stopper() -> AsyncIterator[list[BlePortal]]:
    """Portals a test started, stopped after it (in the loop's worker thread)."""
    portals: list[BlePortal] = []
    yield portals
    for portal in portals:
        await trio.to_thread.run_sync(portal.stop)
