"""``mushpi-ble demo``: the whole system on one machine, no radio needed.

Starts a private dbus-daemon, the fake bluetoothd, the peripheral (through
the same ``BlePortal`` the controller embeds) with a simulated controller,
and a simulated MushPi Hub app that checks what the real app relies on.
Prints each exchange decoded with its latency and a summary; exits 0 only
if every check held. Leaves no process behind.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import trio

from mushpi_ble.cli import exits
from mushpi_ble.config import ConfigError, Settings, load_settings
from mushpi_ble.errors import StartError
from mushpi_ble.naming import advertised_name
from mushpi_ble.portal import BlePortal
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS, ENV_MEASUREMENTS
from mushpi_ble.testing.bus import DBusDaemonMissing, private_bus
from mushpi_ble.testing.controller import SimulatedController
from mushpi_ble.testing.fakebluez import FakeBluez
from mushpi_ble.testing.hub import HubReport, SimulatedHub, describe_env


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=0.0,
                        help="after the checks, keep streaming env notifications this long (s)")
    parser.add_argument("--seed", type=int, default=7, help="seed for the simulated sensors")


def print_report(report: HubReport, out: list[str]) -> None:
    out.append("")
    out.append(f"{'step':44} {'result':7} {'ms':>8}")
    out.append("-" * 62)
    for ex in report.exchanges:
        out.append(f"{ex.step:44} {'ok' if ex.ok else 'FAILED':7} {ex.latency_ms:8.1f}")
    passed = sum(1 for e in report.exchanges if e.ok)
    out.append("-" * 62)
    out.append(f"{passed} passed, {len(report.exchanges) - passed} failed")


async def _demo(address: str, settings: Settings, args: argparse.Namespace) -> HubReport:
    controller = SimulatedController(seed=args.seed)
    portal = BlePortal(settings, bus=address)
    portal.set_callbacks(controller.callbacks())
    async with FakeBluez.serve(address, adapters=("hci0",)) as bluez:
        started = time.perf_counter()
        await trio.to_thread.run_sync(portal.start)
        print(f"peripheral registered with the fake bluetoothd in "
              f"{(time.perf_counter() - started) * 1000:.0f} ms")
        try:
            name = advertised_name(settings.ble_name_prefix, controller.get_stage_data())
            print(f"advertised name: {name}")
            reading = controller.sensor_reading()
            portal.publish_env(reading["temperature"], reading["humidity"], reading["co2"],
                               reading["light"])
            await trio.sleep(0.05)
            hub = SimulatedHub(bluez)
            report = await hub.run()
            for ex in report.exchanges:
                mark = "ok " if ex.ok else "!! "
                print(f"{mark}{ex.step} ({ex.latency_ms:.1f} ms): {ex.detail}")
            if args.duration > 0 and hub.central is not None:
                await _stream(portal, controller, hub, args.duration)
            status = portal.get_status()
            env = status["characteristics"][ENV_MEASUREMENTS]
            print(f"env counters: offered={env['offered']} sent={env['sent']} "
                  f"dropped={env['dropped']} coalesced={env['coalesced']} "
                  f"pending={env['pending']}")
        finally:
            stop_started = time.perf_counter()
            await trio.to_thread.run_sync(portal.stop)
            print(f"peripheral stopped in {(time.perf_counter() - stop_started) * 1000:.0f} ms")
    return report


async def _stream(portal: BlePortal, controller: SimulatedController, hub: SimulatedHub,
                  duration: float) -> None:
    assert hub.central is not None
    uuid = CHARACTERISTIC_UUIDS[ENV_MEASUREMENTS]
    end = trio.current_time() + duration
    while trio.current_time() < end:
        reading = controller.sensor_reading()
        portal.publish_env(reading["temperature"], reading["humidity"], reading["co2"],
                           reading["light"])
        packet = await hub.central.next_notification(uuid, timeout=2.0)
        print(f"   env notification: {describe_env(packet.value)}")
        await trio.sleep(1.0)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level if args.log_level != "INFO"
                                      else "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return exits.CONFIG
    try:
        with private_bus() as address:
            print(f"private D-Bus bus at {address}")
            report = trio.run(_demo, address, settings, args)
    except DBusDaemonMissing as exc:
        print(str(exc), file=sys.stderr)
        return exits.FAILED
    except StartError as exc:
        print(f"the peripheral could not start: {exc}", file=sys.stderr)
        return exits.FAILED
    lines: list[str] = []
    print_report(report, lines)
    print("\n".join(lines))
    return exits.OK if report.ok else exits.FAILED
