"""A hostile bus client for ``mushpi-ble bench --hostile``: floods the peripheral.

A server of kind ``flood`` (:mod:`mushpi_ble.bench.wire`) on plain blocking
jeepney, in its own process, so its work never shares a CPU slice with the
measuring side's loop more than the machine forces. Variants:

* ``pipeline``: method calls to a characteristic only bluetoothd may call,
  sent back to back; it never reads a reply;
* ``huge``: calls carrying a multi-megabyte body; it reads the answers and
  reports their error names;
* ``signals``: unicast junk signals addressed to the peripheral.

One command, ``{"cmd": "flood", "destination", "path", "count", "size"}``:
send ``count`` messages (``size`` bytes of payload each), then ping the
peripheral from a second connection and answer ``sent``, ``elapsed_s``
(sending), ``drained_s`` (until the ping came back: the peripheral has read
everything sent before it) and, for ``huge``, ``errors`` (name: count).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from jeepney import DBusAddress, HeaderFields, MessageType, new_method_call, new_signal
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from mushpi_ble.bench import wire

GATT_CHARACTERISTIC = "org.bluez.GattCharacteristic1"
JUNK_INTERFACE = "com.example.Junk1"
PEER = "org.freedesktop.DBus.Peer"
VARIANTS = ("pipeline", "huge", "signals")
REPLY_TIMEOUT = 60.0


def _calls(conn: DBusConnection, destination: str, path: str, count: int, size: int,
           read_replies: bool) -> dict[str, Any]:
    target = DBusAddress(path, bus_name=destination, interface=GATT_CHARACTERISTIC)
    serials = []
    for _ in range(count):
        if size:
            msg = new_method_call(target, "WriteValue", "aya{sv}", (b"\xa5" * size, {}))
        else:
            msg = new_method_call(target, "ReadValue", "a{sv}", ({},))
        serial = next(conn.outgoing_serial)
        conn.send(msg, serial=serial)
        serials.append(serial)
    if not read_replies:
        return {}
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + REPLY_TIMEOUT
    pending = set(serials)
    while pending and time.monotonic() < deadline:
        reply = conn.receive(timeout=max(deadline - time.monotonic(), 0.01))
        serial = reply.header.fields.get(HeaderFields.reply_serial)
        if serial in pending:
            pending.discard(serial)
            if reply.header.message_type is MessageType.error:
                errors[str(reply.header.fields.get(HeaderFields.error_name))] += 1
            else:
                errors["(value)"] += 1
    return {"errors": dict(errors), "unanswered": len(pending)}


def _signals(conn: DBusConnection, destination: str, count: int, size: int) -> None:
    junk = b"\x5a" * size
    for seq in range(count):
        msg = new_signal(DBusAddress("/com/example/junk", interface=JUNK_INTERFACE),
                         "Junk", "uay", (seq, junk))
        msg.header.fields[HeaderFields.destination] = destination  # unicast
        conn.send(msg)


def _ping(address: str, destination: str) -> None:
    with open_dbus_connection(bus=address) as pinger:
        pinger.send_and_get_reply(
            new_method_call(DBusAddress("/", bus_name=destination, interface=PEER), "Ping"),
            timeout=REPLY_TIMEOUT)


def serve(variant: str, address: str) -> int:
    if variant not in VARIANTS:
        return wire.fail("failed", f"unknown flood {variant!r}; one of {', '.join(VARIANTS)}")
    conn = open_dbus_connection(bus=address)

    def flood(command: wire.Event) -> dict[str, Any]:
        destination, path = str(command["destination"]), str(command["path"])
        count, size = int(command["count"]), int(command.get("size", 0))
        t0 = time.monotonic()
        extra: dict[str, Any] = {}
        if variant == "signals":
            _signals(conn, destination, count, size)
        else:
            extra = _calls(conn, destination, path, count, size, read_replies=variant == "huge")
        sent = time.monotonic()
        _ping(address, destination)
        return {"sent": count, "elapsed_s": sent - t0, "drained_s": time.monotonic() - t0,
                **extra}

    wire.emit("ready", flood=variant, unique_name=conn.unique_name)
    try:
        wire.serve_commands({"flood": flood})
    finally:
        conn.close()
    return 0
