"""BlueZ's D-Bus names, defined once: the bus name, its interfaces, its error prefix.

Every module that talks to bluetoothd takes its names from here, so a
misspelt interface cannot hide in one corner of the code.
"""

from __future__ import annotations

from mushpi_ble.dbus.objects import OBJECT_MANAGER, PROPERTIES

BLUEZ = "org.bluez"

ADAPTER_IFACE = f"{BLUEZ}.Adapter1"
DEVICE_IFACE = f"{BLUEZ}.Device1"
GATT_MANAGER_IFACE = f"{BLUEZ}.GattManager1"
GATT_SERVICE_IFACE = f"{BLUEZ}.GattService1"
GATT_CHARACTERISTIC_IFACE = f"{BLUEZ}.GattCharacteristic1"
GATT_DESCRIPTOR_IFACE = f"{BLUEZ}.GattDescriptor1"
ADVERTISEMENT_IFACE = f"{BLUEZ}.LEAdvertisement1"
ADVERTISING_MANAGER_IFACE = f"{BLUEZ}.LEAdvertisingManager1"
AGENT_IFACE = f"{BLUEZ}.Agent1"
AGENT_MANAGER_IFACE = f"{BLUEZ}.AgentManager1"

ERROR_PREFIX = f"{BLUEZ}.Error"

__all__ = [
    "ADAPTER_IFACE",
    "ADVERTISEMENT_IFACE",
    "ADVERTISING_MANAGER_IFACE",
    "AGENT_IFACE",
    "AGENT_MANAGER_IFACE",
    "BLUEZ",
    "DEVICE_IFACE",
    "ERROR_PREFIX",
    "GATT_CHARACTERISTIC_IFACE",
    "GATT_DESCRIPTOR_IFACE",
    "GATT_MANAGER_IFACE",
    "GATT_SERVICE_IFACE",
    "OBJECT_MANAGER",
    "PROPERTIES",
]
