"""D-Bus names and error texts bluetoothd uses, in one place so they match.

The texts are the ones ``src/error.c`` and the managers put in replies;
applications (and their tests) sometimes compare them.
"""

from __future__ import annotations

BLUEZ = "org.bluez"

ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
GATT_MANAGER = "org.bluez.GattManager1"
GATT_SERVICE = "org.bluez.GattService1"
GATT_CHARACTERISTIC = "org.bluez.GattCharacteristic1"
GATT_DESCRIPTOR = "org.bluez.GattDescriptor1"
ADVERTISING_MANAGER = "org.bluez.LEAdvertisingManager1"
ADVERTISEMENT = "org.bluez.LEAdvertisement1"
AGENT_MANAGER = "org.bluez.AgentManager1"
AGENT = "org.bluez.Agent1"

PROPERTIES = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
BUS_NAME = "org.freedesktop.DBus"

ERROR_PREFIX = "org.bluez.Error."
FAILED = "org.bluez.Error.Failed"
INVALID_ARGUMENTS = "org.bluez.Error.InvalidArguments"
ALREADY_EXISTS = "org.bluez.Error.AlreadyExists"
DOES_NOT_EXIST = "org.bluez.Error.DoesNotExist"
NOT_PERMITTED = "org.bluez.Error.NotPermitted"
NOT_READY = "org.bluez.Error.NotReady"
BLOCKED = "org.bluez.Error.Blocked"
REJECTED = "org.bluez.Error.Rejected"
CANCELED = "org.bluez.Error.Canceled"

TEXT_INVALID_ARGUMENTS = "Invalid arguments in method call"
TEXT_ALREADY_EXISTS = "Already Exists"
TEXT_DOES_NOT_EXIST = "Does Not Exist"
TEXT_NOT_READY = "Resource Not Ready"
TEXT_BLOCKED = "Blocked through rfkill"  # mgmt_errstr(MGMT_STATUS_RFKILLED)

# RegisterApplication failures (src/gatt-database.c)
NO_OBJECT_RECEIVED = "No object received"
NO_VALID_SERVICE = "No valid service object found"
DATABASE_ENTRY_FAILED = "Failed to create entry in database"

# RegisterAdvertisement failures (src/advertising.c)
ADVERT_PARSE_FAILED = "Failed to parse advertisement."
ADVERT_REGISTER_FAILED = "Failed to register advertisement"
ADVERT_MAX_REACHED = "Maximum advertisements reached"
ADVERT_INCOMPLETE = "Failed to complete registration"

# org.freedesktop.DBus.RequestName
NAME_FLAG_DO_NOT_QUEUE = 4
NAME_PRIMARY_OWNER = 1
