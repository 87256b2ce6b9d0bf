"""A generic BlueZ GATT peripheral: services as data, exported and registered.

Knows BlueZ; knows nothing of mushrooms.
"""

from .access import AccessGate, AccessRules
from .adapter import (
    AdapterCondition,
    AdapterRecovery,
    Recovery,
    managed_objects,
    pick_adapter,
    set_property,
)
from .advertising import (
    KERNEL_MISMATCH_ADVICE,
    Advertisement,
    AdvertisingCapabilities,
    AdvertMonitor,
    AdvertPlan,
    advert_path,
    explain_refusal,
    plan_advertisement,
    read_capabilities,
)
from .agent import (
    AGENT_MANAGER_PATH,
    BondedDevice,
    BondMade,
    Pairing,
    PasskeyShown,
    address_of,
    agent_path,
)
from .application import GattApplication
from .device_information import DEVICE_INFORMATION, device_information_service
from .devices import Central, DeviceTracker
from .errors import (
    DEADLINE_ERROR,
    DOES_NOT_EXIST,
    GattError,
    failed,
    invalid_offset,
    invalid_value_length,
    refusal,
)
from .in_flight import BLUEZ_AFFECTED, InFlight
from .model import (
    Characteristic,
    GattDefinitionError,
    IncompleteValue,
    Service,
    fixed_handles,
    normalise_uuid,
    slice_for_offset,
    validate_services,
)
from .names import (
    ADAPTER_IFACE,
    ADVERTISING_MANAGER_IFACE,
    AGENT_IFACE,
    AGENT_MANAGER_IFACE,
    BLUEZ,
    DEVICE_IFACE,
    ERROR_PREFIX,
    GATT_MANAGER_IFACE,
    OBJECT_MANAGER,
)
from .pairing_policy import PairingWindow
from .queue_policy import POLICIES, Admission, admit, check_policy
from .requests import ReadRequest, WriteRequest
from .resubscribe import REPLAY_SETTLE_S, replay_on_reconnect
from .rfkill import Rfkill
from .state import CharacteristicState

__all__ = [
    "ADAPTER_IFACE",
    "ADVERTISING_MANAGER_IFACE",
    "AGENT_IFACE",
    "AGENT_MANAGER_IFACE",
    "AGENT_MANAGER_PATH",
    "BLUEZ",
    "BLUEZ_AFFECTED",
    "DEADLINE_ERROR",
    "DEVICE_IFACE",
    "DEVICE_INFORMATION",
    "DOES_NOT_EXIST",
    "ERROR_PREFIX",
    "GATT_MANAGER_IFACE",
    "KERNEL_MISMATCH_ADVICE",
    "OBJECT_MANAGER",
    "POLICIES",
    "REPLAY_SETTLE_S",
    "AccessGate",
    "AccessRules",
    "AdapterCondition",
    "AdapterRecovery",
    "Admission",
    "AdvertMonitor",
    "AdvertPlan",
    "Advertisement",
    "AdvertisingCapabilities",
    "BondMade",
    "BondedDevice",
    "Central",
    "Characteristic",
    "CharacteristicState",
    "DeviceTracker",
    "GattApplication",
    "GattDefinitionError",
    "GattError",
    "InFlight",
    "IncompleteValue",
    "Pairing",
    "PairingWindow",
    "PasskeyShown",
    "ReadRequest",
    "Recovery",
    "Rfkill",
    "Service",
    "WriteRequest",
    "address_of",
    "admit",
    "advert_path",
    "agent_path",
    "check_policy",
    "device_information_service",
    "explain_refusal",
    "failed",
    "fixed_handles",
    "invalid_offset",
    "invalid_value_length",
    "managed_objects",
    "normalise_uuid",
    "pick_adapter",
    "plan_advertisement",
    "read_capabilities",
    "refusal",
    "replay_on_reconnect",
    "set_property",
    "slice_for_offset",
    "validate_services",
]
