"""What the D-Bus benchmark's servers export and its client asks for.

Each server (:mod:`mushpi_ble.bench.dbus_servers`) exports an
``org.bluez.GattCharacteristic1``-like object with ``ReadValue(a{sv}) -> ay``
(12 bytes) and a ``Value`` property, plus a small control interface whose
``Burst(u count, u pace_every)`` makes it emit ``count``
PropertiesChanged(Value) signals as fast as it can, the first four bytes of
each value carrying a sequence number. ``pace_every`` > 0 makes the server do
a Ping round trip to the bus daemon after every that many signals (dbus-fast
treats EAGAIN on its socket as fatal and needs this).

Shared by the servers and the client; imports neither trio nor a D-Bus library.
"""

from typing import Any

from mushpi_ble.bench.loop_floor import ASYNCIO_FLOOR, TRIO_FLOOR

BUS_NAME = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"
PEER = "org.freedesktop.DBus.Peer"
PROPERTIES = "org.freedesktop.DBus.Properties"

SERVICE_PATH = "/org/bluez/mushpi/service0"
CHAR_PATH = SERVICE_PATH + "/char0"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
CHAR_UUID = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"
BENCH_PATH = "/org/mushpi/bench"
BENCH_IFACE = "org.mushpi.Bench1"
VALUE_LEN = 12
PACE_EVERY = 64

# What BlueZ passes to ReadValue for an LE link.
READ_OPTIONS: dict[str, tuple[str, Any]] = {
    "device": ("o", "/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF"),
    "mtu": ("q", 247),
    "link": ("s", "LE"),
}

SERVERS = ("ours", "dbus-fast", TRIO_FLOOR, ASYNCIO_FLOOR)
FLOOR_OF = {"ours": TRIO_FLOOR, "dbus-fast": ASYNCIO_FLOOR}  # each one's event loop


def make_value(seq: int) -> bytes:
    """A 12-byte characteristic value whose first four bytes are ``seq``."""
    return (seq & 0xFFFFFFFF).to_bytes(4, "little") + bytes(VALUE_LEN - 4)
