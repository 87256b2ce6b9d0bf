#!/usr/bin/env python3
"""The MushPi service served for ``mushpi-ble bench``'s side-by-side comparison.

Two servers of kind ``peer`` (:mod:`mushpi_ble.bench.wire`), so the suite
drives both the same way and each process's CPU and peak RSS are its own:

* variant ``mushpi_ble``: this project's peripheral, embedded as the
  controller embeds it (``BlePortal`` with a ``SimulatedController``);
* variant ``bluez_peripheral``: the same service (seven characteristics,
  same UUIDs and flags, byte-exact payloads from ``mushpi_ble.protocol``,
  static controller state) built with the ``bluez_peripheral`` library on
  its own D-Bus library (dbus-next in 0.1.x, dbus-fast later).

Both register the GATT application (and an advertisement) with whatever owns
``org.bluez`` on the bus, adapter ``/org/bluez/hci0``; the ready event
carries ``library``, ``version``, ``registration_ms`` and ``advertising``.
One command:

``{"cmd": "notify", "count": N, "batch": BATCH}``
    emit N env_measurements notifications as fast as the library allows and
    answer ``emitted``, ``elapsed_s``, ``on_bus`` (and what else it knows).
    Packet ``seq`` carries co2 = seq & 0xFFFF, light = seq >> 16 and
    temperature ``MARK_TEMPERATURE`` so a central can count losses. With
    BATCH > 0 the emitter is paced at the library's own back-pressure
    point: mushpi_ble waits while its env mailbox is full; bluez_peripheral
    waits for a Ping round trip to the bus after every BATCH signals (its
    writer has no bound and dbus-next drops off the bus on EAGAIN). BATCH 0
    emits unpaced.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import operator
import sys
import time
from collections.abc import Callable
from typing import Any

import attrs

from mushpi_ble.bench import wire
from mushpi_ble.bench.results import package_version
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

OURS = "mushpi_ble"
BLUEZ_PERIPHERAL = "bluez_peripheral"
LIBRARIES = (OURS, BLUEZ_PERIPHERAL)
ADAPTER_PATH = "/org/bluez/hci0"
PEER_APP_PATH = "/com/mushpi/peer"
ADVERT_NAME = "MushPi"
MARK_TEMPERATURE = -12.3
"""Temperature of benchmark packets (−123 on the wire), never a real reading."""
INITIAL_ENV = (21.5, 88.0, 950, 600)
CONTROLLER_SEED = 3


def bench_packet(seq: int) -> tuple[float, float, int, int]:
    """(temperature, humidity, co2, light) of benchmark packet ``seq``."""
    return MARK_TEMPERATURE, 50.0, seq & 0xFFFF, seq >> 16


def notify_args(command: wire.Event) -> tuple[int, int]:
    """(count, batch) of a notify command."""
    return int(command.get("count", 0)), int(command.get("batch", 64))


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
        return wire.fail("failed", f"{type(exc).__name__}: {exc}", library="mushpi_ble")
    registration_ms = (time.perf_counter() - started) * 1000
    try:
        portal.publish_env(*INITIAL_ENV)
        portal.publish_actuator()
        status = portal.get_status()
        wire.emit("ready", library="mushpi_ble", version=package_version("mushpi-ble"),
             registration_ms=registration_ms, advertising=status["advertising"])
        mailbox = portal.service.mailboxes[ENV_MEASUREMENTS]

        def notify(command: wire.Event) -> dict[str, Any]:
            count, batch = notify_args(command)
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
            return {"emitted": count, "elapsed_s": elapsed,
                    "on_bus": portal.get_status()["registered"],
                    "sent": after.sent - before.sent, "dropped": after.dropped - before.dropped}

        wire.serve_commands({"notify": notify})
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


@attrs.frozen
class PeerCharacteristic:
    """One characteristic the peer serves: its GATT flags, where a read's value
    comes from (None: not readable) and whether writes are accepted."""

    name: str
    flags: frozenset[str]
    read: Callable[[PeerState], bytes] | None
    writable: bool


def peer_characteristics() -> tuple[PeerCharacteristic, ...]:
    """The seven MushPi characteristics in protocol table order: the one list the
    peer's service, and every benchmark's list of readable characteristics, come from."""
    row = PeerCharacteristic
    read_notify, read_write = frozenset({"read", "notify"}), frozenset({"read", "write"})
    return (
        row(ENV_MEASUREMENTS, read_notify, lambda s: s.env, False),
        row(CONTROL_TARGETS, read_write, lambda s: s.control_targets, True),
        row(STAGE_STATE, read_write, lambda s: s.stage_state, True),
        row(OVERRIDE_BITS, frozenset({"write"}), None, True),
        row(STATUS_FLAGS, read_notify, lambda s: s.status_flags, False),
        row(ACTUATOR_STATUS, read_notify, lambda s: s.actuator, False),
        row(STAGE_THRESHOLDS, read_write, PeerState.thresholds, True),
    )


READABLE = tuple(c.name for c in peer_characteristics() if c.read is not None)
"""The readable characteristics, in protocol order: what the benchmarks read."""


def build_peer_service(state: PeerState, bp: dict[str, Any],
                       dbus_error: Callable[[str, str], Exception]) -> Any:
    """The MushPi service as a ``bluez_peripheral`` Service."""
    flag_of = {"read": bp["CharacteristicFlags"].READ, "write": bp["CharacteristicFlags"].WRITE,
               "notify": bp["CharacteristicFlags"].NOTIFY}

    def reader(get: Callable[[PeerState], bytes]) -> Callable[[Any, Any], bytes]:
        def read_value(_service: Any, options: Any) -> bytes:
            return get(state)[int(options.offset):]
        return read_value

    def writer(name: str) -> Callable[[Any, bytes, Any], None]:
        def write_value(_service: Any, data: bytes, _options: Any) -> None:
            try:
                value = decode_write(name, bytes(data))
            except InvalidPayload as exc:
                raise dbus_error(exc.bluez_error, exc.dbus_message) from None
            if isinstance(value, ControlTargets):
                state.control_targets = value.pack()
            elif isinstance(value, StageState):
                state.stage_state = value.pack()
            elif isinstance(value, ThresholdsQuery):
                state.cursor = (value.species, value.stage)
        return write_value

    service = bp["Service"](SERVICE_UUID, True)
    characteristics: dict[str, Any] = {}
    for spec in peer_characteristics():
        char_flags = functools.reduce(operator.or_, (flag_of[f] for f in sorted(spec.flags)))
        char = bp["characteristic"](CHARACTERISTIC_UUIDS[spec.name], char_flags)
        char(reader(spec.read) if spec.read is not None else None,
             writer(spec.name) if spec.writable else None)
        service.add_characteristic(char)
        characteristics[spec.name] = char
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
        return wire.fail("not installed", f"{exc}", library="bluez_peripheral")
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
        return wire.fail("failed", f"{type(exc).__name__}: {exc}", library="bluez_peripheral")
    registration_ms = (time.perf_counter() - started) * 1000
    advertising: bool | str = False
    try:
        advert = bp["Advertisement"](ADVERT_NAME, [SERVICE_UUID], 0, 0)
        await advert.register(bus, adapter, PEER_APP_PATH + "/advert0")
        advertising = True
    except Exception as exc:
        advertising = f"{type(exc).__name__}: {exc}"
    env_char = service.mushpi_characteristics[ENV_MEASUREMENTS]
    wire.emit("ready", library="bluez_peripheral", version=package_version("bluez-peripheral"),
              dbus_library=dbus.__name__,
              dbus_version=package_version(dbus.__name__.replace("_", "-")),
         registration_ms=registration_ms, advertising=advertising)

    ping = dbus.Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus.Peer", member="Ping")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        raw = await reader.readline()
        command = wire.decode_line(raw)
        if wire.is_quit(command, raw):
            break
        if command is None or command.get("cmd") != "notify":
            continue
        count, batch = notify_args(command)
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
        wire.emit("done", emitted=emitted, elapsed_s=elapsed, on_bus=bool(bus.connected),
                  error=error)
    if bus.connected:
        try:
            await asyncio.wait_for(service.unregister(), 2.0)
        except Exception as exc:
            print(f"unregister failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        bus.disconnect()
    return 0


def serve(variant: str, address: str) -> int:
    """Serve the MushPi service with library ``variant`` on ``address``."""
    if variant == OURS:
        return run_mushpi(address)
    if variant == BLUEZ_PERIPHERAL:
        return asyncio.run(serve_peer(address))
    return wire.fail("not installed", f"no benchmark server for {variant!r}", library=variant)
