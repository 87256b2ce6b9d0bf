"""`mushpi-ble check` on the host: the LE connection interval bluetoothd will ask for
against Apple's rules, and whether the service runs under systemd with the watchdog."""

from __future__ import annotations

from pathlib import Path

import pytest

from mushpi_ble.cli import check
from mushpi_ble.dbus import Connection, Interface, Method, Property

UNIT_PATH = "/org/freedesktop/systemd1/unit/mushpi_2dble_2eservice"


@pytest.mark.parametrize(
    ("conf", "level", "words"),
    [
        (None, check.OK, "30..50 ms from kernel defaults"),
        ("[LE]\nMinConnectionInterval=24\nMaxConnectionInterval=40\n", check.OK, "30..50 ms"),
        ("[LE]\nMinConnectionInterval=6\nMaxConnectionInterval=40\n", check.WARN,
         "minimum below 15 ms"),
        ("[LE]\nMinConnectionInterval=16\nMaxConnectionInterval=40\n", check.WARN,
         "not a multiple of 15 ms"),
        ("[LE]\nMinConnectionInterval=24\nMaxConnectionInterval=24\n", check.WARN,
         "maximum less than minimum + 15 ms"),
        ("[LE]\n#MinConnectionInterval=6\n[GATT]\nChannels=3\n", check.OK, "30..50 ms"),
        ("[LE]\nMinConnectionInterval=soon\n", check.WARN, "is not a number"),
    ],
)
def test_connection_interval_against_apples_rules(tmp_path: Path, conf: str | None,
                                                  level: str, words: str) -> None:
    main_conf = tmp_path / "main.conf"
    if conf is not None:
        main_conf.write_text(conf)
    finding = check.connection_interval_finding(main_conf)
    assert finding.level == level, finding
    assert words in finding.message


async def test_systemd_seen_from_inside_the_service(server: Connection) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    finding = await check.systemd_finding(server, 0.5, env)
    assert (finding.level, finding.message) == (
        check.OK, "this process runs under systemd with a 30 s watchdog")
    finding = await check.systemd_finding(server, 0.5, {"NOTIFY_SOCKET": "/run/x"})
    assert finding.level == check.WARN and "without a watchdog" in finding.message


async def test_no_systemd_on_the_bus_is_information(server: Connection) -> None:
    finding = await check.systemd_finding(server, 0.5, {})
    assert finding.level == check.INFO
    assert "mushpi-ble systemd-unit" in finding.message


@pytest.mark.parametrize(("unit_type", "watchdog_usec", "level"),
                         [("notify", 30_000_000, check.OK), ("simple", 0, check.WARN)])
async def test_the_unit_as_systemd_reports_it(server: Connection, client: Connection,
                                              unit_type: str, watchdog_usec: int,
                                              level: str) -> None:
    """A stand-in for systemd's manager on the private bus answers like the real one."""
    server.export("/org/freedesktop/systemd1", [Interface(
        "org.freedesktop.systemd1.Manager",
        methods=[Method("GetUnit", "s", "o", handler=lambda _ctx, _name: UNIT_PATH)])])
    server.export(UNIT_PATH, [
        Interface("org.freedesktop.systemd1.Unit",
                  properties=[Property("ActiveState", "s", get=lambda: "active")]),
        Interface("org.freedesktop.systemd1.Service",
                  properties=[Property("Type", "s", get=lambda: unit_type),
                              Property("WatchdogUSec", "t", get=lambda: watchdog_usec)]),
    ])
    await server.request_name("org.freedesktop.systemd1")
    try:
        finding = await check.systemd_finding(client, 0.5, {}, "mushpi-ble.service")
    finally:
        await server.release_name("org.freedesktop.systemd1")
    assert finding.level == level
    assert finding.message.startswith(f"mushpi-ble.service is active, Type={unit_type}")
