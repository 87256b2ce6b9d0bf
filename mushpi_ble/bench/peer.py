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
Commands:

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

``{"cmd": "storm", "threads": T, "seconds": S}`` (mushpi_ble only)
    publish env readings flat out from T threads for S seconds, as the
    controller's sensor threads would; answers ``offered``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import operator
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from mushpi_ble.bench import UNPACED, wire
from mushpi_ble.bench.results import package_version
from mushpi_ble.gatt import refusal
from mushpi_ble.protocol import (
    CHARACTERISTICS,
    DEFAULT_QUERY,
    ENV_MEASUREMENTS,
    SERVICE_UUID,
    STATUS_FLAGS,
    Characteristic,
    InvalidPayload,
    ReadSource,
    StatusFlags,
    by_name,
    decode_write,
    encode_env,
    encode_thresholds_answer,
)
from mushpi_ble.sim import SimulatedController

OURS = "mushpi_ble"
#: ours with every setting at its default (notifications paced), where the
#: question is how the shipped configuration behaves, not like for like
OURS_AS_SHIPPED = "mushpi_ble:defaults"
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
def run_mushpi(address: str, *, as_shipped: bool = False) -> int:
    from mushpi_ble.config import load_settings
    from mushpi_ble.errors import StartError
    from mushpi_ble.portal import BlePortal

    started = time.perf_counter()
    # like for like with the peer, which only signals and does not pace
    like_the_peer = {"MUSHPI_BLE_NOTIFY_MODE": "signal", **UNPACED}
    settings = load_settings(environ={"MUSHPI_BLE_NAME_PREFIX": ADVERT_NAME,
                                     **({} if as_shipped else like_the_peer)},
                             env_file=None)
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

        def storm(command: wire.Event) -> dict[str, Any]:
            return publish_storm(portal.publish_env, int(command.get("threads", 4)),
                                 float(command.get("seconds", 3.0)))

        wire.serve_commands({"notify": notify, "storm": storm})
    finally:
        portal.stop()
    return 0


def publish_storm(publish: Callable[..., Any], threads: int, seconds: float) -> dict[str, Any]:
    """Publish env readings flat out from ``threads`` threads for ``seconds``, as a
    controller with several sensor threads would; answers how many were offered."""
    stop = threading.Event()
    offered = [0] * threads

    def producer(index: int) -> None:
        n = 0
        while not stop.is_set():
            publish(*bench_packet(n))
            n += 1
        offered[index] = n

    workers = [threading.Thread(target=producer, args=(i,), name=f"storm-{i}")
               for i in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return {"offered": sum(offered), "threads": threads, "seconds": seconds}


# ----------------------------------------------------------------------
# bluez_peripheral
# ----------------------------------------------------------------------
class PeerState:
    """The static controller state the bluez_peripheral server answers from, read and
    written through the protocol's characteristic table."""

    def __init__(self) -> None:
        self.controller = SimulatedController(seed=CONTROLLER_SEED)
        self.started = time.monotonic()
        self.cursor = (DEFAULT_QUERY.species, DEFAULT_QUERY.stage)
        self.values: dict[str, bytes] = {ENV_MEASUREMENTS: encode_env(*INITIAL_ENV, 0),
                                         STATUS_FLAGS: StatusFlags(0).pack()}
        for row in peer_characteristics():
            if row.read is not None and row.read.source is ReadSource.GETTER:
                assert row.read.getter is not None and row.read.encode is not None
                self.values[row.name] = row.read.encode(
                    getattr(self.controller, row.read.getter)())

    def uptime_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def read(self, name: str) -> bytes:
        """What a read of ``name`` answers: the thresholds at the cursor, else the
        value published, remembered or read from the controller at start."""
        row = by_name(name)
        if row.read is not None and row.read.source is ReadSource.THRESHOLDS:
            species, stage = self.cursor
            getter = getattr(self.controller, row.read.getter or "")
            return encode_thresholds_answer(species, stage, getter(species, stage))
        return self.values.get(name, row.initial)

    def write(self, name: str, data: bytes) -> None:
        """Decode a write through the table (InvalidPayload when refused); a query
        moves the thresholds cursor and a remembered value is read back."""
        write = by_name(name).write
        assert write is not None
        value = decode_write(name, data)
        if any(isinstance(value, query) for query in write.queries):
            self.cursor = (value.species, value.stage)
        elif write.remembered:
            self.values[name] = value.pack()


def peer_characteristics() -> tuple[Characteristic, ...]:
    """The characteristics the peer serves, in order: the protocol's own table, so the
    peer stays the same service as ours when a row is added."""
    return CHARACTERISTICS


READABLE = tuple(c.name for c in peer_characteristics() if c.read is not None)
"""The readable characteristics, in protocol order: what the benchmarks read."""


def build_peer_service(state: PeerState, bp: dict[str, Any],
                       dbus_error: Callable[[str, str], Exception]) -> Any:
    """The MushPi service as a ``bluez_peripheral`` Service."""
    flag_of = {"read": bp["CharacteristicFlags"].READ, "write": bp["CharacteristicFlags"].WRITE,
               "notify": bp["CharacteristicFlags"].NOTIFY}

    def reader(name: str) -> Callable[[Any, Any], bytes]:
        def read_value(_service: Any, options: Any) -> bytes:
            return state.read(name)[int(options.offset):]
        return read_value

    def writer(name: str) -> Callable[[Any, bytes, Any], None]:
        def write_value(_service: Any, data: bytes, _options: Any) -> None:
            try:
                state.write(name, bytes(data))
            except InvalidPayload as exc:
                error = refusal(exc.app_code, exc.detail)
                raise dbus_error(error.name, error.text) from None
        return write_value

    service = bp["Service"](SERVICE_UUID, True)
    characteristics: dict[str, Any] = {}
    for row in peer_characteristics():
        char_flags = functools.reduce(operator.or_, (flag_of[f] for f in row.flags))
        char = bp["characteristic"](row.uuid, char_flags)
        char(reader(row.name) if row.read is not None else None,
             writer(row.name) if row.write is not None else None)
        service.add_characteristic(char)
        characteristics[row.name] = char
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
                packet = encode_env(*bench_packet(seq), state.uptime_ms())
                state.values[ENV_MEASUREMENTS] = packet
                env_char.changed(packet)
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
    if variant in (OURS, OURS_AS_SHIPPED):
        return run_mushpi(address, as_shipped=variant == OURS_AS_SHIPPED)
    if variant == BLUEZ_PERIPHERAL:
        return asyncio.run(serve_peer(address))
    return wire.fail("not installed", f"no benchmark server for {variant!r}", library=variant)
