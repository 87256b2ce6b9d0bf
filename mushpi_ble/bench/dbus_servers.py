"""The servers the D-Bus benchmark measures, one per process (server kind ``dbus``).

* ``ours``: ``mushpi_ble.dbus`` (jeepney codec, trio I/O);
* ``dbus-fast``: ``dbus_fast.aio.MessageBus`` with a ``ServiceInterface``;
* ``trio-floor``, ``asyncio-floor``: the canned-reply servers of
  :mod:`mushpi_ble.bench.loop_floor`.

What they export is in :mod:`mushpi_ble.bench.dbus_objects`. They are told
what to do over D-Bus, and each one's ready event carries its unique name.
Annotations are not postponed here: dbus-fast reads them at run time.
"""

import functools
import json
from collections.abc import Callable
from typing import Any

from mushpi_ble.bench import wire
from mushpi_ble.bench.dbus_objects import (
    BENCH_IFACE,
    BENCH_PATH,
    BUS_NAME,
    BUS_PATH,
    CHAR_IFACE,
    CHAR_PATH,
    CHAR_UUID,
    FLOOR_OF,
    PEER,
    SERVICE_PATH,
    make_value,
)
from mushpi_ble.bench.loop_floor import serve_floor


def serve_ours(address: str) -> None:
    """Our D-Bus layer, as the product uses it: handlers on the connection, one awaited
    emit per signal."""
    import trio

    from mushpi_ble.dbus import CallContext, Interface, Method, Property, open_connection

    value = [make_value(0)]
    emitted = [0]

    async def main() -> None:
        async with open_connection(address) as conn, trio.open_nursery() as nursery:

            async def burst(count: int, pace_every: int) -> None:
                for seq in range(count):
                    data = make_value(seq)
                    value[0] = data
                    await conn.emit_properties_changed(CHAR_PATH, CHAR_IFACE, {"Value": data})
                    emitted[0] += 1
                    if pace_every and (seq + 1) % pace_every == 0:
                        await conn.call(BUS_NAME, BUS_PATH, PEER, "Ping")

            def read_value(_ctx: CallContext, _options: dict[str, Any]) -> bytes:
                return value[0]

            def start_burst(_ctx: CallContext, count: int, pace_every: int) -> None:
                nursery.start_soon(burst, count, pace_every)

            def stats(_ctx: CallContext) -> str:
                w = conn.writer
                return json.dumps({
                    "emitted": emitted[0],
                    "writer_messages": w.messages_sent,
                    "writer_batches": w.batches,
                    "writer_eagain": w.eagain_count,
                    "writer_backpressure_waits": w.backpressure_waits,
                    "writer_peak_queued_bytes": w.peak_queued_bytes,
                    "calls_received": conn.stats.calls_received,
                    "calls_answered": conn.stats.calls_answered,
                })

            conn.export(CHAR_PATH, [Interface(
                CHAR_IFACE,
                methods=[Method("ReadValue", "a{sv}", "ay", handler=read_value,
                                arg_names=("options",), out_names=("value",))],
                properties=[
                    Property("UUID", "s", get=lambda: CHAR_UUID),
                    Property("Service", "o", get=lambda: SERVICE_PATH),
                    Property("Value", "ay", get=lambda: value[0]),
                    Property("Flags", "as", get=lambda: ["read", "notify"]),
                ],
            )])
            conn.export(BENCH_PATH, [Interface(
                BENCH_IFACE,
                methods=[
                    Method("Burst", "uu", "", handler=start_burst),
                    Method("Stats", "", "s", handler=stats),
                ],
            )])
            wire.emit("ready", name=conn.unique_name)
            await trio.sleep_forever()

    trio.run(main)


def serve_dbus_fast(address: str) -> None:
    """dbus-fast as its users write it: ``ServiceInterface`` classes on asyncio."""
    import asyncio
    from typing import Annotated

    from dbus_fast import Message, PropertyAccess, Variant
    from dbus_fast.aio import MessageBus
    from dbus_fast.annotations import DBusSignature
    from dbus_fast.service import ServiceInterface, dbus_property, method

    class Characteristic(ServiceInterface):
        def __init__(self) -> None:
            super().__init__(CHAR_IFACE)
            self.value = make_value(0)

        @method()
        def ReadValue(
            self, options: Annotated[dict[str, Variant], DBusSignature("a{sv}")]
        ) -> Annotated[bytes, DBusSignature("ay")]:
            return self.value

        @dbus_property(access=PropertyAccess.READ)
        def UUID(self) -> Annotated[str, DBusSignature("s")]:
            return CHAR_UUID

        @dbus_property(access=PropertyAccess.READ)
        def Service(self) -> Annotated[str, DBusSignature("o")]:
            return SERVICE_PATH

        @dbus_property(access=PropertyAccess.READ)
        def Value(self) -> Annotated[bytes, DBusSignature("ay")]:
            return self.value

        @dbus_property(access=PropertyAccess.READ)
        def Flags(self) -> Annotated[list[str], DBusSignature("as")]:
            return ["read", "notify"]

    tasks: set[asyncio.Task[None]] = set()
    counters: dict[str, Any] = {"emitted": 0, "error": ""}

    class Bench(ServiceInterface):
        def __init__(self, bus: MessageBus, char: Characteristic) -> None:
            super().__init__(BENCH_IFACE)
            self.bus = bus
            self.char = char

        @method()
        def Burst(
            self,
            count: Annotated[int, DBusSignature("u")],
            pace_every: Annotated[int, DBusSignature("u")],
        ) -> None:
            task = asyncio.get_running_loop().create_task(self.burst(count, pace_every))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        @method()
        def Stats(self) -> Annotated[str, DBusSignature("s")]:
            return json.dumps(counters)

        async def burst(self, count: int, pace_every: int) -> None:
            try:
                for seq in range(count):
                    data = make_value(seq)
                    self.char.value = data
                    self.char.emit_properties_changed({"Value": data})
                    counters["emitted"] += 1
                    if pace_every and (seq + 1) % pace_every == 0:
                        await self.bus.call(Message(
                            destination=BUS_NAME, path=BUS_PATH, interface=PEER, member="Ping",
                        ))
                    if not self.bus.connected:
                        counters["error"] = "disconnected during burst"
                        return
            except Exception as exc:
                counters["error"] = f"{type(exc).__name__}: {exc}"
                wire.emit("burst_error", error=counters["error"])

    async def main() -> None:
        bus = await MessageBus(bus_address=address).connect()
        char = Characteristic()
        bus.export(CHAR_PATH, char)
        bus.export(BENCH_PATH, Bench(bus, char))
        wire.emit("ready", name=bus.unique_name)
        try:
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
            reason = "closed"
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        wire.emit("disconnected", reason=reason)
        # Stay alive so the parent can still read this process's /proc figures.
        await asyncio.Event().wait()

    asyncio.run(main())


def serve(variant: str, address: str) -> int:
    """Run server ``variant`` (ours or dbus-fast) on ``address`` until stopped."""
    servers: dict[str, Callable[[str], None]] = {
        "ours": serve_ours, "dbus-fast": serve_dbus_fast,
        **{floor: functools.partial(serve_floor, floor, value=make_value(0))
           for floor in FLOOR_OF.values()},
    }
    if variant not in servers:
        return wire.fail("not installed", f"no D-Bus benchmark server {variant!r}")
    servers[variant](address)
    return 0
