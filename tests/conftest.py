"""Shared fixtures: one private dbus-daemon per test session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from mushpi_ble.dbus import Connection, open_connection
from mushpi_ble.testing import private_bus


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
