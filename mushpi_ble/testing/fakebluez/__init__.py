"""A fake bluetoothd on a private bus, behaving like the real one.

Applications register GATT databases and advertisements with it exactly as
with BlueZ; simulated centrals then read, write and subscribe, and it calls
the application the way bluetoothd does (same options, same error mapping,
same quirks). Faults can be injected: restarts, adapter removal, slow
answers, refused registrations, a stalled daemon.

    async with FakeBluez.serve(bus_address) as bluez:
        app = await bluez.wait_for_application()
        phone = await bluez.connect_central(mtu=185)
        value = await phone.read(uuid)
        result = await phone.pair()        # Just Works, through the default agent

Run it as a process with ``python -m mushpi_ble.testing.fakebluez``.
"""

from .adapter import FakeAdapter
from .advertising import Advertisement, Payload, parse_advertisement
from .att import ATT_ERRORS, AttError, att_code_for_dbus_error
from .central import CharacteristicInfo, FakeCentral, NotConnected, Notification
from .daemon import FakeBluez, NotDiscoverable
from .gatt_db import Attribute, Characteristic, Descriptor, Service
from .gatt_manager import Application
from .pairing import PairingResult
from .rfkill import FakeRfkill
from .uuids import normalize_uuid, parse_uuid

__all__ = [
    "ATT_ERRORS",
    "Advertisement",
    "Application",
    "AttError",
    "Attribute",
    "Characteristic",
    "CharacteristicInfo",
    "Descriptor",
    "FakeAdapter",
    "FakeBluez",
    "FakeCentral",
    "FakeRfkill",
    "NotConnected",
    "NotDiscoverable",
    "Notification",
    "PairingResult",
    "Payload",
    "Service",
    "att_code_for_dbus_error",
    "normalize_uuid",
    "parse_advertisement",
    "parse_uuid",
]
