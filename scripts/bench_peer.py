#!/usr/bin/env python3
"""Serve the MushPi service from a child process, for ``mushpi-ble bench``.

Two servers behind one line protocol, so the benchmark drives both the
same way and each process's CPU and peak RSS are its own:

* ``--library mushpi_ble``: this project's peripheral, embedded as the
  controller embeds it (``BlePortal`` with a ``SimulatedController``);
* ``--library bluez_peripheral``: the same service (seven characteristics,
  same UUIDs and flags, byte-exact payloads from ``mushpi_ble.protocol``,
  static controller state) built with the ``bluez_peripheral`` library on
  its own D-Bus library (dbus-next in 0.1.x, dbus-fast later).

Both connect to ``--bus ADDRESS``, register the GATT application (and an
advertisement) with whatever owns ``org.bluez`` there, adapter
``/org/bluez/hci0``, and print one JSON line::

    {"event": "ready", "library": ..., "version": ..., "registration_ms": ...}

or ``{"event": "error", "kind": "not installed" | "failed", "error": ...}``
and exit 1. Then they read commands from stdin, one per line:

``notify N [BATCH]``
    emit N env_measurements notifications as fast as the library allows and
    answer ``{"event": "done", "emitted", "elapsed_s", "on_bus", ...}``.
    Packet ``seq`` carries co2 = seq & 0xFFFF, light = seq >> 16 and
    temperature ``MARK_TEMPERATURE`` so a central can count losses. With
    BATCH > 0 the emitter is paced at the library's own back-pressure
    point: mushpi_ble waits while its env mailbox is full; bluez_peripheral
    waits for a Ping round trip to the bus after every BATCH signals (its
    writer has no bound and dbus-next drops off the bus on EAGAIN). BATCH 0
    emits unpaced.
``quit`` (or end of input)
    unregister and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from mushpi_ble.gatt import refusal
from mushpi_ble.protocol import (
    ACTUATOR_STATUS,
    CHARACTERISTIC_UUIDS,
    CONTROL_TARGETS,
    DEFAULT_QUERY,
    ENV_MEASUREMENTS,
    OVERRIDE_BITS,
    SERVICE_UUID,
    STAGE_STATE,
    STAGE_THRESHOLDS,
    STATUS_FLAGS,
    ActuatorStatus,
    ControlTargets,
    InvalidPayload,
    StageState,
    StatusFlags,
    ThresholdsQuery,
    decode_write,
    encode_env,
    encode_thresholds_answer,
)
from mushpi_ble.testing.controller import SimulatedController

LIBRARIES = ("mushpi_ble", "bluez_peripheral")
ADAPTER_PATH = "/org/bluez/hci0"
PEER_APP_PATH = "/com/mushpi/peer"
ADVERT_NAME = "MushPi"
MARK_TEMPERATURE = -12.3
"""Temperature of benchmark packets (−123 on the wire), never a real reading."""
INITIAL_ENV = (21.5, 88.0, 950, 600)
CONTROLLER_SEED = 3


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def fail(kind: str, error: str, library: str) -> int:
    emit("error", library=library, kind=kind, error=error)
    return 1


def version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def bench_packet(seq: int) -> tuple[float, float, int, int]:
    """(temperature, humidity, co2, light) of benchmark packet ``seq``."""
    return MARK_TEMPERATURE, 50.0, seq & 0xFFFF, seq >> 16


def parse_command(line: str) -> tuple[str, int, int]:
    parts = line.split()
    if not parts:
        return "", 0, 0
    count = int(parts[1]) if len(parts) > 1 else 0
    batch = int(parts[2]) if len(parts) > 2 else 64
    return parts[0], count, batch


# ----------------------------------------------------------------------
# mushpi_ble
# ----------------------------------------------------------------------
def run_mushpi(address: str) -> int:
    from mushpi_ble.config import load_settings
    from mushpi_ble.errors import StartError
    from mushpi_ble.portal import BlePortal

    started = time.perf_counter()
    settings = load_settings(environ={"MUSHPI_BLE_NAME_PREFIX": ADVERT_NAME}, env_file=None)
    controller = SimulatedController(seed=CONTROLLER_SEED)
    portal = BlePortal(settings, bus=address)
    portal.set_callbacks(controller.callbacks())
    try:
        portal.start()
    except StartError as exc:
        return fail("failed", f"{type(exc).__name__}: {exc}", "mushpi_ble")
    registration_ms = (time.perf_counter() - started) * 1000
    try:
        portal.publish_env(*INITIAL_ENV)
        portal.publish_actuator()
        status = portal.get_status()
        emit("ready", library="mushpi_ble", version=version_of("mushpi-ble"),
             registration_ms=registration_ms, advertising=status["advertising"])
        mailbox = portal.service.mailboxes[ENV_MEASUREMENTS]
        for line in sys.stdin:
            command, count, batch = parse_command(line)
            if command == "quit":
                break
            if command != "notify":
                continue
            before = mailbox.counters()
            t0 = time.perf_counter()
            for seq in range(count):
                if batch > 0:
                    while mailbox.depth >= mailbox.capacity:
                        time.sleep(0.0001)
                portal.publish_env(*bench_packet(seq))
            elapsed = time.perf_counter() - t0
            while mailbox.depth and time.perf_counter() - t0 < elapsed + 5.0:
                time.sleep(0.001)
            after = mailbox.counters()
            emit("done", emitted=count, elapsed_s=elapsed,
                 on_bus=portal.get_status()["registered"],
                 sent=after.sent - before.sent, dropped=after.dropped - before.dropped)
    finally:
        portal.stop()
    return 0


# ----------------------------------------------------------------------
# bluez_peripheral
# ----------------------------------------------------------------------
class PeerState:
    """The static controller state the bluez_peripheral server answers from."""

    def __init__(self) -> None:
        controller = SimulatedController(seed=CONTROLLER_SEED)
        self.started = time.monotonic()
        self.env = encode_env(*INITIAL_ENV, 0)
        self.control_targets = ControlTargets.from_controller(
            controller.get_control_targets()).pack()
        self.stage_state = StageState.from_controller(controller.get_stage_data()).pack()
        self.status_flags = StatusFlags(0).pack()
        self.actuator = ActuatorStatus.from_controller(controller.get_control_data()).pack()
        self.cursor = (DEFAULT_QUERY.species, DEFAULT_QUERY.stage)
        self.controller = controller

    def uptime_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def thresholds(self) -> bytes:
        species, stage = self.cursor
        return encode_thresholds_answer(species, stage,
                                        self.controller.get_stage_thresholds(species, stage))


def build_peer_service(state: PeerState, bp: dict[str, Any],
                       dbus_error: Callable[[str, str], Exception]) -> Any:
    """The MushPi service as a ``bluez_peripheral`` Service, in protocol table order."""
    flags = bp["CharacteristicFlags"]
    read, write, notify = flags.READ, flags.WRITE, flags.NOTIFY

    def reader(get: Callable[[], bytes]) -> Callable[[Any, Any], bytes]:
        def read_value(_service: Any, options: Any) -> bytes:
            return get()[int(options.offset):]
        return read_value

    def writer(name: str) -> Callable[[Any, bytes, Any], None]:
        def write_value(_service: Any, data: bytes, _options: Any) -> None:
            try:
                value = decode_write(name, bytes(data))
            except InvalidPayload as exc:
                error = refusal(exc.app_code, exc.detail)
                raise dbus_error(error.name, error.text) from None
            if isinstance(value, ControlTargets):
                state.control_targets = value.pack()
            elif isinstance(value, StageState):
                state.stage_state = value.pack()
            elif isinstance(value, ThresholdsQuery):
                state.cursor = (value.species, value.stage)
        return write_value

    table: list[tuple[str, Any, Callable[[], bytes] | None, bool]] = [
        (ENV_MEASUREMENTS, read | notify, lambda: state.env, False),
        (CONTROL_TARGETS, read | write, lambda: state.control_targets, True),
        (STAGE_STATE, read | write, lambda: state.stage_state, True),
        (OVERRIDE_BITS, write, None, True),
        (STATUS_FLAGS, read | notify, lambda: state.status_flags, False),
        (ACTUATOR_STATUS, read | notify, lambda: state.actuator, False),
        (STAGE_THRESHOLDS, read | write, state.thresholds, True),
    ]
    service = bp["Service"](SERVICE_UUID, True)
    characteristics: dict[str, Any] = {}
    for name, char_flags, get, writable in table:
        char = bp["characteristic"](CHARACTERISTIC_UUIDS[name], char_flags)
        char(reader(get) if get is not None else None, writer(name) if writable else None)
        service.add_characteristic(char)
        characteristics[name] = char
    service.mushpi_characteristics = characteristics
    return service


def load_bluez_peripheral() -> dict[str, Any]:
    """The library's classes, whichever release (0.1.x on dbus-next, later on dbus-fast)."""
    service_module = importlib.import_module("bluez_peripheral.gatt.service")
    char_module = importlib.import_module("bluez_peripheral.gatt.characteristic")
    advert_module = importlib.import_module("bluez_peripheral.advert")
    try:
        adapter_class = importlib.import_module("bluez_peripheral.adapter").Adapter
    except ImportError:
        adapter_class = importlib.import_module("bluez_peripheral.util").Adapter
    bus_class = service_module.MessageBus
    dbus_library = importlib.import_module(bus_class.__module__.split(".")[0])
    return {
        "Service": service_module.Service,
        "characteristic": char_module.characteristic,
        "CharacteristicFlags": char_module.CharacteristicFlags,
        "Advertisement": advert_module.Advertisement,
        "Adapter": adapter_class,
        "MessageBus": bus_class,
        "dbus": dbus_library,
    }


async def serve_peer(address: str) -> int:
    try:
        bp = load_bluez_peripheral()
    except ImportError as exc:
        return fail("not installed", f"{exc}", "bluez_peripheral")
    dbus = bp["dbus"]
    state = PeerState()
    started = time.perf_counter()
    try:
        bus = await bp["MessageBus"](bus_address=address).connect()
        introspection = await bus.introspect("org.bluez", ADAPTER_PATH)
        adapter = bp["Adapter"](bus.get_proxy_object("org.bluez", ADAPTER_PATH, introspection))
        service = build_peer_service(state, bp, dbus.DBusError)
        await service.register(bus, path=PEER_APP_PATH, adapter=adapter)
    except Exception as exc:
        return fail("failed", f"{type(exc).__name__}: {exc}", "bluez_peripheral")
    registration_ms = (time.perf_counter() - started) * 1000
    advertising: bool | str = False
    try:
        advert = bp["Advertisement"](ADVERT_NAME, [SERVICE_UUID], 0, 0)
        await advert.register(bus, adapter, PEER_APP_PATH + "/advert0")
        advertising = True
    except Exception as exc:
        advertising = f"{type(exc).__name__}: {exc}"
    env_char = service.mushpi_characteristics[ENV_MEASUREMENTS]
    emit("ready", library="bluez_peripheral", version=version_of("bluez-peripheral"),
         dbus_library=dbus.__name__, dbus_version=version_of(dbus.__name__.replace("_", "-")),
         registration_ms=registration_ms, advertising=advertising)

    ping = dbus.Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus.Peer", member="Ping")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        raw = await reader.readline()
        command, count, batch = parse_command(raw.decode())
        if command == "quit" or not raw:
            break
        if command != "notify":
            continue
        error = None
        t0 = time.perf_counter()
        emitted = 0
        try:
            for seq in range(count):
                state.env = encode_env(*bench_packet(seq), state.uptime_ms())
                env_char.changed(state.env)
                emitted += 1
                if batch > 0 and emitted % batch == 0:
                    await bus.call(ping)
            await bus.call(ping)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - t0
        emit("done", emitted=emitted, elapsed_s=elapsed, on_bus=bool(bus.connected),
             error=error)
    if bus.connected:
        try:
            await asyncio.wait_for(service.unregister(), 2.0)
        except Exception as exc:
            print(f"unregister failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        bus.disconnect()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", choices=LIBRARIES, required=True)
    parser.add_argument("--bus", required=True, help="D-Bus address to serve on")
    args = parser.parse_args(argv)
    if args.library == "mushpi_ble":
        return run_mushpi(args.bus)
    return asyncio.run(serve_peer(args.bus))


if __name__ == "__main__":
    sys.exit(main())
