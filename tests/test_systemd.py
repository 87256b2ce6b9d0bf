"""systemd's notify protocol: READY once registered, plain-words STATUS, watchdog pings
from the loop that stop when the loop stalls — against a NOTIFY_SOCKET of our own."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from rig import make_settings

from mushpi_ble.cli import main
from mushpi_ble.errors import StartError
from mushpi_ble.headline import serving, status_text
from mushpi_ble.portal import BlePortal
from mushpi_ble.sim import SimulatedController
from mushpi_ble.systemd import SystemdNotifier
from mushpi_ble.testing.fakebluez import FakeBluez


class NotifySocket:
    """What systemd listens on: a datagram socket; messages kept with their arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[tuple[float, dict[str, str]]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(at, m) for at, m in self.drain() if key in m]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify")
    yield listener
    listener.sock.close()


def notifier(listener: NotifySocket, watchdog_usec: int | None = None) -> SystemdNotifier:
    env = {"NOTIFY_SOCKET": str(listener.path)}
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return SystemdNotifier(env)


def test_the_environment_decides_what_is_sent() -> None:
    assert not SystemdNotifier({}).enabled
    assert SystemdNotifier({}).notify(ready="1") is False
    assert SystemdNotifier({"NOTIFY_SOCKET": "@sd"}).address == b"\0sd"
    assert SystemdNotifier({"NOTIFY_SOCKET": "relative"}).address is None
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert SystemdNotifier(env).watchdog_s == 30.0
    assert SystemdNotifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_s == 30.0
    assert SystemdNotifier({**env, "WATCHDOG_PID": "1"}).watchdog_s is None  # not ours
    assert SystemdNotifier({**env, "WATCHDOG_USEC": "soon"}).watchdog_s is None


def test_a_missing_listener_costs_nothing(tmp_path: Path) -> None:
    gone = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert gone.notify(ready="1") is False
    assert gone.notify(watchdog="1") is False  # and logs once


def test_status_lines_are_plain_words() -> None:
    assert status_text({"registered": False}) == "waiting for bluetoothd"
    assert status_text({"registered": False, "last_error": "BluezUnavailable: gone"}) == (
        "waiting for bluetoothd (BluezUnavailable: gone)")
    serving = {"registered": True, "advertising": True, "advertised_name": "MushPi-Init",
               "connection_count": 1}
    assert status_text(serving) == "serving as MushPi-Init, 1 phone connected"
    assert status_text({**serving, "connection_count": 2, "advertising": False}) == (
        "serving as MushPi-Init, 2 phones connected, not advertising")
    refused = {**serving, "advertising": False, "advert_state": "alias-only",
               "advert_problem": "update BlueZ to 5.87"}
    assert status_text(refused) == (
        "serving as MushPi-Init, 1 phone connected, alias-only: update BlueZ to 5.87")


def test_alias_only_serving_is_ready() -> None:
    base = {"registered": True, "advertising": False}
    assert not serving(base, advertising_wanted=True)
    assert serving({**base, "advert_state": "alias-only"}, advertising_wanted=True)
    assert serving(base, advertising_wanted=False)
    assert not serving({"registered": False, "advertising": True}, advertising_wanted=True)


async def test_ready_once_registered_then_status_and_stopping(
        bus_address: str, bluez: FakeBluez, notify_socket: NotifySocket) -> None:
    portal = BlePortal(make_settings(), bus=bus_address, systemd=notifier(notify_socket))
    portal.set_callbacks(SimulatedController(seed=1).callbacks())
    bluez.delay_next_call("RegisterApplication", 0.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, portal.start)
        await trio.sleep(0.3)
        assert notify_socket.drain() == []  # registering: not ready yet
    try:
        ready = notify_socket.with_key("READY")
        assert len(ready) == 1
        assert ready[0][1]["STATUS"].startswith("serving as MushPi-")
        assert ready[0][1]["STATUS"].endswith("0 phones connected")
        await bluez.connect_central(address="11:22:33:44:55:66", mtu=185)
        deadline = trio.current_time() + 5
        while not any(m["STATUS"].endswith("1 phone connected")
                      for _at, m in notify_socket.with_key("STATUS")):
            assert trio.current_time() < deadline
            await trio.sleep(0.05)
    finally:
        await trio.to_thread.run_sync(portal.stop)
    assert notify_socket.drain()[-1][1] == {"STOPPING": "1", "STATUS": "stopping"}


async def test_no_ready_when_bluetoothd_is_absent(bus_address: str,
                                                  notify_socket: NotifySocket) -> None:
    portal = BlePortal(make_settings(MUSHPI_DBUS_BUS_TIMEOUT_MS="300"), bus=bus_address,
                       systemd=notifier(notify_socket))
    with pytest.raises(StartError):
        await trio.to_thread.run_sync(portal.start)
    assert notify_socket.with_key("READY") == []


async def test_watchdog_pings_come_from_the_loop_and_stop_while_it_stalls(
        bus_address: str, bluez: FakeBluez, notify_socket: NotifySocket) -> None:
    portal = BlePortal(make_settings(), bus=bus_address,
                       systemd=notifier(notify_socket, watchdog_usec=200_000))
    await trio.to_thread.run_sync(portal.start)
    try:
        await trio.sleep(0.6)
        assert len(notify_socket.with_key("WATCHDOG")) >= 2  # every 0.1 s
        before = len(notify_socket.with_key("WATCHDOG"))
        stalled_from = time.monotonic()
        # block the trio loop itself for 0.8 s: no ping may leave meanwhile
        await trio.to_thread.run_sync(
            lambda: portal.call_in_loop(lambda: time.sleep(0.8), timeout=3))
        stalled_to = time.monotonic()
        await trio.sleep(0.5)
        pings = [at for at, _m in notify_socket.with_key("WATCHDOG")]
        assert len(pings) > before + 1  # pinging again after the stall
        during = [at for at in pings if stalled_from + 0.05 < at < stalled_to - 0.05]
        assert during == []
    finally:
        await trio.to_thread.run_sync(portal.stop)


def test_the_unit_ships_in_the_package(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["systemd-unit", "--watchdog-s", "20"]) == 0
    unit = capsys.readouterr().out
    assert "Type=notify" in unit and "WatchdogSec=20" in unit and "NotifyAccess=main" in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    program = exec_start.removeprefix("ExecStart=").split()[0]
    assert Path(program).exists()
    assert " serve " in exec_start
    assert main(["systemd-unit", "--watchdog-s", "1"]) == 2
