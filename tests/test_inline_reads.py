"""Reads the core can answer at once are answered inline, from the receive loop: no task
is started for them. Only a read that must ask the controller runs as a task."""

from __future__ import annotations

import trio
from rig import Rig, make_settings, phone, start_rig

from mushpi_ble.protocol import CHARACTERISTIC_UUIDS, ControlTargets, EnvMeasurement
from mushpi_ble.testing.fakebluez import FakeBluez

UUID = CHARACTERISTIC_UUIDS


def _deferred(rig: Rig) -> int:
    """Calls the peripheral answered from a task rather than inline."""
    conn = rig.portal.peripheral.host.conn
    assert conn is not None
    return conn.stats.calls_deferred


async def test_published_values_are_read_inline_and_getter_reads_run_as_tasks(
        rig: Rig) -> None:
    central = await phone(rig)
    before = _deferred(rig)
    for _ in range(5):  # env from what was published, status from the flags the Pi holds
        EnvMeasurement.unpack(await central.read(UUID["env_measurements"]))
        await central.read(UUID["status_flags"])
    assert _deferred(rig) == before
    # with no read cache (this rig's setting) every control targets read asks the getter
    for count in (1, 2):
        await central.read(UUID["control_targets"])
        assert _deferred(rig) == before + count


async def test_a_cached_getter_answer_is_read_inline(bus_address: str, bluez: FakeBluez) -> None:
    rig = await start_rig(bus_address, bluez, make_settings(MUSHPI_BLE_READ_CACHE_MS="60000"))
    try:
        central = await phone(rig)
        before = _deferred(rig)
        targets = ControlTargets.unpack(await central.read(UUID["control_targets"]))
        assert _deferred(rig) == before + 1  # the first read asks the controller, in a task
        for _ in range(3):  # then the cached answer, inline
            assert ControlTargets.unpack(await central.read(UUID["control_targets"])) == targets
        assert _deferred(rig) == before + 1
    finally:
        await trio.to_thread.run_sync(rig.portal.stop)
