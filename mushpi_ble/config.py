"""Settings for mushpi_ble, read once from the environment and an optional ``.env`` file.

Every variable is declared once, as a field of :class:`Settings` carrying its
:class:`VarSpec` in the field's metadata; :data:`VARIABLES` is read off those fields. The
loader, the error messages, ``.env.example`` (:func:`render_env_example`) and the
documentation table (:func:`render_markdown_table`) are all generated from that table, so
they cannot drift apart. Every value is validated at load, so a typo stops the service at
start-up with one :class:`ConfigError` naming the variable, instead of failing later deep
inside the stack.

Precedence: environment variables win over the file. The file is ``.env`` in the current
directory unless the caller names another one, or the environment names one in
``MUSHPI_ENV_FILE``. The file is read strictly, as systemd's ``EnvironmentFile=`` reads
it (:mod:`.envfile`), and is never exported into ``os.environ``.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast, get_args

import attrs

from . import envfile
from .errors import ConfigError
from .protocol.table import DEFAULT_POLICIES, NOTIFYING

__all__ = [
    "ENV_FILE_VARIABLE",
    "NOTIFYING_CHARACTERISTICS",
    "POLICY_PREFIX",
    "VARIABLES",
    "AccessMode",
    "Backend",
    "BackpressurePolicy",
    "ConfigError",
    "InvalidWriteMode",
    "PairingMode",
    "Settings",
    "TxPower",
    "VarSpec",
    "env_file_in_use",
    "load_settings",
    "render_env_example",
    "render_markdown_table",
]

log = logging.getLogger(__name__)

PREFIX = "MUSHPI_"
ENV_FILE_VARIABLE = "MUSHPI_ENV_FILE"
POLICY_PREFIX = "MUSHPI_BLE_POLICY_"

Backend = Literal["bluez-dbus", "bluezero"]
TxPower = Literal["low", "med", "high"]
BackpressurePolicy = Literal["drop_oldest", "drop_newest", "coalesce"]
NotifyMode = Literal["auto", "signal", "socket"]
InvalidWriteMode = Literal["reject", "ignore"]
PairingMode = Literal["just-works", "window", "passkey", "off"]
AccessMode = Literal["open", "bonded"]

#: Characteristics that notify and therefore own a publish queue with a policy (from the table).
NOTIFYING_CHARACTERISTICS: tuple[str, ...] = tuple(name.upper() for name in NOTIFYING)


class _Invalid(Exception):
    """Raised by a parser; the loader turns it into a ConfigError with the variable's name."""

    def __init__(self, problem: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem


# --- parsers: stripped text in, typed and normalised value out, _Invalid otherwise ---

_INT_RE = re.compile(r"[+-]?[0-9]+")
_ADAPTER_NAME_RE = re.compile(r"hci(?:0|[1-9][0-9]*)", re.IGNORECASE)
_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
_OBJECT_PATH_RE = re.compile(r"/|(?:/[A-Za-z0-9_]+)+")
_UUID_RE = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
)
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_POLICIES: tuple[str, ...] = get_args(BackpressurePolicy)


def _integer(low: int, high: int) -> Callable[[str], int]:
    """Accept plain ASCII decimal integers only, so '10.5', '1e3' or '0x10' fail loudly."""

    def parse(text: str) -> int:
        if not _INT_RE.fullmatch(text):
            raise _Invalid("not an integer")
        number = int(text)
        if not low <= number <= high:
            raise _Invalid()
        return number

    return parse


def _choice(values: tuple[str, ...]) -> Callable[[str], str]:
    """Case-insensitive choice, normalised to the canonical lower-case spelling."""

    def parse(text: str) -> str:
        lowered = text.lower()
        if lowered not in values:
            raise _Invalid()
        return lowered

    return parse


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _Invalid()


def _adapter(text: str) -> str:
    if _ADAPTER_NAME_RE.fullmatch(text):
        return text.lower()
    if _MAC_RE.fullmatch(text):
        return text.upper()
    raise _Invalid()


def _object_path(text: str) -> str:
    if not _OBJECT_PATH_RE.fullmatch(text):
        raise _Invalid()
    return text


def _uuid128(text: str) -> str:
    if not _UUID_RE.fullmatch(text):
        raise _Invalid()
    return text.lower()


def _name_prefix(text: str) -> str:
    # ASCII only: the advertised name is counted in bytes, and the limit is sized for ASCII.
    if not 1 <= len(text) <= 12 or not all(" " <= ch <= "~" for ch in text):
        raise _Invalid()
    return text


def _info_text(text: str) -> str:
    # a Device Information string: what a phone shows, so printable and short
    if not 1 <= len(text) <= 64 or not text.isprintable():
        raise _Invalid()
    return text


def _ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _Invalid() from None


def _file_in_existing_dir(text: str) -> Path:
    # Absolute, so a later change of working directory cannot move the file.
    path = Path(text).expanduser().absolute()
    if path.is_dir():
        raise _Invalid(f"{path} is a directory")
    if not path.parent.is_dir():
        raise _Invalid(f"directory {path.parent} does not exist")
    return path


def _absolute_dir(text: str) -> Path:
    # Existence is checked where it matters (bonded access), not for every setting.
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise _Invalid("not an absolute path")
    return path


# --- the table ---


@attrs.frozen(kw_only=True)
class VarSpec:
    """One environment variable: everything the loader and the generated docs need."""

    name: str
    #: The Settings field it fills, taken from the field that declares it (see VARIABLES).
    attribute: str = ""
    #: Default as it would be written in the file; None means unset by default (optional).
    default: str | None
    parse: Callable[[str], object]
    allowed: str
    comment: str
    #: Old spellings still accepted, with a logged warning: (old, replacement, why).
    legacy: tuple[tuple[str, str, str], ...] = ()
    #: For per-characteristic overrides: the key in ``Settings.policy_overrides``.
    key: str | None = None

    @property
    def optional(self) -> bool:
        """Optional variables treat an empty value as unset."""
        return self.default is None


# --- declaring a setting: one Settings field carrying its VarSpec in the field's metadata ---

_SPECS = "mushpi_ble.config.specs"
"""The metadata key under which a Settings field holds the variables that fill it."""


def _setting(spec: VarSpec) -> Any:
    """The attrs field of one variable; its default is the table text parsed, so Settings()
    and load_settings({}) cannot disagree."""
    default = None if spec.default is None else spec.parse(spec.default)
    return attrs.field(default=default, metadata={_SPECS: (spec,)})


def _var(
    name: str, default: str | None, parse: Callable[[str], object], allowed: str, comment: str
) -> Any:
    return _setting(
        VarSpec(name=name, default=default, parse=parse, allowed=allowed, comment=comment)
    )


def _int_var(name: str, default: str | None, low: int, high: int, comment: str) -> Any:
    allowed = f"{low}..{high}" + (" or empty (off)" if default is None else "")
    return _var(name, default, _integer(low, high), allowed, comment)


def _choice_var(
    name: str,
    values: tuple[str, ...],
    default: str | None,
    comment: str,
    legacy: tuple[tuple[str, str, str], ...] = (),
) -> Any:
    return _setting(
        VarSpec(
            name=name,
            default=default,
            parse=_choice(values),
            allowed=", ".join(values) + (" or empty" if default is None else ""),
            comment=comment,
            legacy=legacy,
        )
    )


def _bool_var(name: str, default: str, comment: str) -> Any:
    return _var(name, default, _boolean, "true/false (also 1/0, yes/no, on/off)", comment)


def _policy_override_var(characteristic: str) -> VarSpec:
    return VarSpec(
        name=POLICY_PREFIX + characteristic,
        default=None,
        parse=_choice(_POLICIES),
        allowed=", ".join(_POLICIES) + " or empty",
        comment=f"Back-pressure policy for {characteristic} only; "
        "empty = MUSHPI_BLE_BACKPRESSURE_POLICY, else the characteristic's own "
        f"({DEFAULT_POLICIES[characteristic.lower()]}).",
        key=characteristic,
    )


_PRIORITY_WHY = "queues are per characteristic, so one can no longer starve another"


def _freeze_policies(value: Mapping[str, str]) -> Mapping[str, BackpressurePolicy]:
    """Copy into a read-only mapping so a frozen Settings stays frozen."""
    # The values are checked in Settings.__attrs_post_init__; the cast only names the type.
    return cast("Mapping[str, BackpressurePolicy]", MappingProxyType(dict(value)))


def _as_text(value: object) -> str:
    """Write a typed value back as the text a user would put in the environment."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return os.fspath(value)
    return str(value)


@attrs.frozen(kw_only=True)
class Settings:
    """Validated, immutable settings; derive variants with ``attrs.evolve``.

    Each field declares its environment variable (name, default, allowed values, comment);
    :data:`VARIABLES` is read off these fields, in this order. Construction re-checks every
    field against its variable, so an evolved copy is held to the same rules as a loaded one.
    """

    ble_backend: Backend = _choice_var(
        "MUSHPI_BLE_BACKEND", get_args(Backend), "bluez-dbus",
        "Which BLE backend serves the MushPi GATT service.",
    )
    dbus_bus_timeout_ms: int = _int_var(
        "MUSHPI_DBUS_BUS_TIMEOUT_MS", "2500", 100, 60000,
        "Deadline for each D-Bus call to bluetoothd, in milliseconds.",
    )
    ble_adapter: str = _var(
        "MUSHPI_BLE_ADAPTER", "hci0", _adapter, "hciN or a MAC address AA:BB:CC:DD:EE:FF",
        "Bluetooth adapter to use, by name or by address.",
    )
    dbus_app_path: str = _var(
        "MUSHPI_DBUS_APP_PATH", "/com/mushpi/gatt", _object_path,
        "a D-Bus object path (/ or /a/b, elements of [A-Za-z0-9_], no trailing /)",
        "D-Bus object path under which the GATT application is exported.",
    )
    ble_service_uuid: str = _var(
        "MUSHPI_BLE_SERVICE_UUID", "12345678-1234-5678-1234-56789abcdef0", _uuid128,
        "a 128-bit UUID in canonical form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
        "UUID of the MushPi GATT service the phone app looks for.",
    )
    ble_name_prefix: str = _var(
        "MUSHPI_BLE_NAME_PREFIX", "MushPi", _name_prefix, "1..12 printable ASCII characters",
        "Prefix of the advertised local name; short so it fits the advertisement.",
    )
    ble_adv_enable: bool = _bool_var(
        "MUSHPI_BLE_ADV_ENABLE", "true",
        "Whether to send LE advertisements so phones can discover the service.",
    )
    ble_adv_tx_power: TxPower = _choice_var(
        "MUSHPI_BLE_ADV_TX_POWER", get_args(TxPower), "med",
        "Advertising transmit power level.",
    )
    ble_advert_intervals: bool = _bool_var(
        "MUSHPI_BLE_ADVERT_INTERVALS", "true",
        "Ask bluetoothd for advertising intervals: fast after a start, a disconnect and a "
        "pairing window, then slow (false: bluetoothd's default, about 1.28 s).",
    )
    ble_advert_fast_ms: int = _int_var(
        "MUSHPI_BLE_ADVERT_FAST_MS", "20", 20, 10240,
        "Advertising interval of the fast period, in ms (Apple asks for 20).",
    )
    ble_advert_fast_s: int = _int_var(
        "MUSHPI_BLE_ADVERT_FAST_S", "30", 0, 3600,
        "How long the fast period lasts, in seconds (0: always slow).",
    )
    ble_advert_slow_ms: int = _int_var(
        "MUSHPI_BLE_ADVERT_SLOW_MS", "418", 20, 10240,
        "Advertising interval after the fast period, in ms, at least the fast one; 418 is "
        "Apple's 417.5 ms on the air (bluetoothd rounds down to 0.625 ms units), inside "
        "Android's 512 ms low-power scan window.",
    )
    ble_adapter_recovery: bool = _bool_var(
        "MUSHPI_BLE_ADAPTER_RECOVERY", "true",
        "Power the adapter on and lift rfkill soft blocks when it is off; false only reports.",
    )
    ble_actuator_status_enable: bool = _bool_var(
        "MUSHPI_BLE_ACTUATOR_STATUS_ENABLE", "true",
        "Whether to expose the actuator status characteristic.",
    )
    ble_device_info: bool = _bool_var(
        "MUSHPI_BLE_DEVICE_INFO", "true",
        "Serve the Device Information Service (0x180A): manufacturer, model, firmware and "
        "software revision, as phone makers ask (nRF Connect and the app show them).",
    )
    ble_manufacturer: str = _var(
        "MUSHPI_BLE_MANUFACTURER", "MushPi", _info_text, "1..64 printable characters",
        "Manufacturer Name String of the Device Information Service.",
    )
    ble_model: str = _var(
        "MUSHPI_BLE_MODEL", "MushPi Controller", _info_text, "1..64 printable characters",
        "Model Number String of the Device Information Service.",
    )
    ble_firmware_revision: str | None = _var(
        "MUSHPI_BLE_FIRMWARE_REVISION", None, _info_text,
        "1..64 printable characters, or empty (left out)",
        "The controller's own version, served as the Firmware Revision String (the "
        "Software Revision String is always this library's version).",
    )
    ble_queue_max_size: int = _int_var(
        "MUSHPI_BLE_QUEUE_MAX_SIZE", "64", 1, 4096,
        "Capacity of each notifying characteristic's publish queue.",
    )
    ble_queue_put_timeout_ms: int = _int_var(
        "MUSHPI_BLE_QUEUE_PUT_TIMEOUT_MS", "10", 0, 1000,
        "Longest a controller thread waits to hand over a payload, in milliseconds.",
    )
    ble_backpressure_policy: BackpressurePolicy | None = _choice_var(
        "MUSHPI_BLE_BACKPRESSURE_POLICY", _POLICIES, None,
        "What a full publish queue does with a new payload, for every notifying "
        "characteristic (legacy 'priority' = drop_oldest). Empty = each characteristic's "
        "own policy: coalesce (the last value wins) for the MushPi state snapshots.",
        legacy=(("priority", "drop_oldest", _PRIORITY_WHY),),
    )
    #: Per-characteristic policies (keys from NOTIFYING_CHARACTERISTICS); see policy_for().
    policy_overrides: Mapping[str, BackpressurePolicy] = attrs.field(
        factory=dict,
        converter=_freeze_policies,
        hash=False,
        metadata={_SPECS: tuple(_policy_override_var(n) for n in NOTIFYING_CHARACTERISTICS)},
    )
    ble_notify_mode: NotifyMode = _choice_var(
        "MUSHPI_BLE_NOTIFY_MODE", get_args(NotifyMode), "auto",
        "How notifications reach phones: auto = a notify socket per phone when bluetoothd "
        "acquires one, signals otherwise; signal = PropertiesChanged only; socket = "
        "sockets without the signal fallback.",
    )
    ble_notify_interval_ms: int = _int_var(
        "MUSHPI_BLE_NOTIFY_INTERVAL_MS", "5", 0, 1000,
        "Shortest time between two notifications of one characteristic, in ms (0 = as fast "
        "as the loop can): a burst waits in the characteristic's queue under its policy "
        "instead of flooding bluetoothd, whose own queue has no limit; a lone value goes "
        "out at once.",
    )
    ble_log_slow_publish_ms: int = _int_var(
        "MUSHPI_BLE_LOG_SLOW_PUBLISH_MS", "250", 1, 60000,
        "Log a publish that takes longer than this, in milliseconds.",
    )
    ble_shutdown_timeout_ms: int = _int_var(
        "MUSHPI_BLE_SHUTDOWN_TIMEOUT_MS", "1500", 50, 30000,
        "Deadline for a clean shutdown (cancel tasks, unregister), in milliseconds.",
    )
    ble_handler_timeout_ms: int = _int_var(
        "MUSHPI_BLE_HANDLER_TIMEOUT_MS", "5000", 10, 25000,
        "Deadline for a controller read/write handler, in ms; below the phone's 30 s ATT timeout.",
    )
    ble_read_cache_ms: int = _int_var(
        "MUSHPI_BLE_READ_CACHE_MS", "500", 0, 60000,
        "How long a controller getter's answer also answers further reads, in ms (0 = ask "
        "every time); any accepted write ends it at once.",
    )
    ble_invalid_write: InvalidWriteMode = _choice_var(
        "MUSHPI_BLE_INVALID_WRITE", get_args(InvalidWriteMode), "reject",
        "Answer to an invalid write: reject with an error, or ignore (ack, log, never apply).",
    )
    ble_write_access: AccessMode = _choice_var(
        "MUSHPI_BLE_WRITE_ACCESS", get_args(AccessMode), "open",
        "Who may write (steer the room): open = any phone in range; bonded = only phones "
        "paired with this Pi (the phone pairs by itself on its first write).",
    )
    ble_read_access: AccessMode = _choice_var(
        "MUSHPI_BLE_READ_ACCESS", get_args(AccessMode), "open",
        "Who may read and subscribe: open = any phone in range; bonded = paired phones only.",
    )
    ble_pairing: PairingMode | None = _choice_var(
        "MUSHPI_BLE_PAIRING", get_args(PairingMode), None,
        "Pairing agent: just-works accepts every pairing request (encryption without MITM "
        "protection); window accepts them only while a pairing window is open; passkey shows "
        "a 6-digit passkey the phone's user types (MITM protection), only while a window is "
        "open; off registers none, so no new phone can pair. Empty = window when any access "
        "is bonded, else just-works.",
    )
    ble_pairing_window_bonds: int = _int_var(
        "MUSHPI_BLE_PAIRING_WINDOW_BONDS", "1", 0, 100,
        "How many new phones one pairing window admits before it closes by itself "
        "(0 = any number until it times out): a neighbour pairing in the same minutes is "
        "refused.",
    )
    ble_state_dir: Path = _var(
        "MUSHPI_BLE_STATE_DIR", "/var/lib/mushpi", _absolute_dir, "an absolute directory path",
        "Where the service keeps its state: with bonded access, the phones the grower "
        "approved (approved-bonds.json); must exist and be writable by the service then.",
    )
    ble_metrics_port: int | None = _int_var(
        "MUSHPI_BLE_METRICS_PORT", None, 1, 65535,
        "TCP port of the metrics endpoint.",
    )
    ble_metrics_bind: str = _var(
        "MUSHPI_BLE_METRICS_BIND", "127.0.0.1", _ip_address, "an IPv4 or IPv6 address",
        "Address the metrics endpoint listens on.",
    )
    ble_metrics_file: Path | None = _var(
        "MUSHPI_BLE_METRICS_FILE", None, _file_in_existing_dir,
        "a file path whose directory exists, or empty (off)",
        "File the metrics snapshot is written to.",
    )
    ble_systemd_notify: bool = _bool_var(
        "MUSHPI_BLE_SYSTEMD_NOTIFY", "false",
        "Under a Type=notify unit, the BLE layer tells systemd READY once it serves, keeps "
        "STATUS current and pings the watchdog (the controller's unit: mushpi-ble setup "
        "--notify).",
    )
    sim_interval_s: int = _int_var(
        "MUSHPI_SIM_INTERVAL_S", "30", 5, 300,
        "Publish interval of the simulated controller, in seconds.",
    )

    def __attrs_post_init__(self) -> None:
        """Hold directly built and evolved Settings to the same rules as loaded ones."""
        for attribute, spec in _BY_ATTRIBUTE.items():
            value = getattr(self, attribute)
            if value is None and spec.optional:
                continue
            _check_field(spec, value)
        for key, policy in self.policy_overrides.items():
            if key not in NOTIFYING_CHARACTERISTICS:
                raise _unknown_characteristic(POLICY_PREFIX + key, policy, None)
            _check_field(_BY_NAME[POLICY_PREFIX + key], policy)
        self._check_access()
        if self.ble_advert_slow_ms < self.ble_advert_fast_ms:
            raise ConfigError(
                "MUSHPI_BLE_ADVERT_SLOW_MS", str(self.ble_advert_slow_ms),
                f"{self.ble_advert_fast_ms}..10240 (at least MUSHPI_BLE_ADVERT_FAST_MS)",
                "the slow interval is shorter than the fast one")

    def _check_access(self) -> None:
        """Access modes that would protect nothing, or that a backend cannot enforce."""
        bonded = [name for name, mode in (("MUSHPI_BLE_WRITE_ACCESS", self.ble_write_access),
                                          ("MUSHPI_BLE_READ_ACCESS", self.ble_read_access))
                  if mode == "bonded"]
        if not bonded:
            return
        if self.ble_pairing == "just-works":
            raise ConfigError(
                "MUSHPI_BLE_PAIRING", "just-works",
                f"window, passkey, off or empty while {bonded[0]}=bonded",
                "with just-works anyone in range may pair and then write, so bonded access "
                "would protect nothing",
            )
        if self.ble_backend == "bluezero":
            raise ConfigError(bonded[0], "bonded", "open with MUSHPI_BLE_BACKEND=bluezero",
                              "the legacy bluezero backend has no access control")
        if self.ble_read_access == "bonded" and self.ble_notify_mode == "signal":
            raise ConfigError(
                "MUSHPI_BLE_NOTIFY_MODE", "signal", "auto or socket while "
                "MUSHPI_BLE_READ_ACCESS=bonded",
                "subscriptions by StartNotify carry no device, so they cannot be refused to "
                "phones that may not read; notify sockets (AcquireNotify) can")
        state = self.ble_state_dir
        if not state.is_dir() or not os.access(state, os.W_OK | os.X_OK):
            raise ConfigError(
                "MUSHPI_BLE_STATE_DIR", os.fspath(state),
                "an existing directory the service may write",
                f"{bonded[0]}=bonded keeps the phones the grower approved there "
                f"({'not writable' if state.is_dir() else 'no such directory'})")

    def policy_for(self, characteristic: str) -> BackpressurePolicy:
        """The back-pressure policy of one notifying characteristic (name case-insensitive):
        its MUSHPI_BLE_POLICY_* override, else MUSHPI_BLE_BACKPRESSURE_POLICY when set,
        else the characteristic's own from the table."""
        key = characteristic.upper()
        if key not in NOTIFYING_CHARACTERISTICS:
            raise ValueError(
                f"{characteristic!r} is not a notifying characteristic: "
                f"allowed {', '.join(NOTIFYING_CHARACTERISTICS)}"
            )
        if key in self.policy_overrides:
            return self.policy_overrides[key]
        if self.ble_backpressure_policy is not None:
            return self.ble_backpressure_policy
        return cast("BackpressurePolicy", DEFAULT_POLICIES[key.lower()])

    @property
    def access_bonded(self) -> bool:
        """Some access (read or write) is for bonded phones only."""
        return "bonded" in (self.ble_write_access, self.ble_read_access)

    @property
    def pairing_mode(self) -> PairingMode:
        """MUSHPI_BLE_PAIRING, or its default: a window when access is bonded."""
        if self.ble_pairing is not None:
            return self.ble_pairing
        return "window" if self.access_bonded else "just-works"

    @property
    def bus_timeout_s(self) -> float:
        """D-Bus call deadline in seconds, the unit trio's fail_after takes."""
        return self.dbus_bus_timeout_ms / 1000

    @property
    def queue_put_timeout_s(self) -> float:
        """Producer hand-over deadline in seconds."""
        return self.ble_queue_put_timeout_ms / 1000

    @property
    def notify_interval_s(self) -> float:
        """Shortest gap between two notifications of one characteristic, in seconds."""
        return self.ble_notify_interval_ms / 1000

    @property
    def log_slow_publish_s(self) -> float:
        """Slow-publish log threshold in seconds."""
        return self.ble_log_slow_publish_ms / 1000

    @property
    def shutdown_timeout_s(self) -> float:
        """Shutdown deadline in seconds."""
        return self.ble_shutdown_timeout_ms / 1000

    @property
    def handler_timeout_s(self) -> float:
        """Controller handler deadline in seconds."""
        return self.ble_handler_timeout_ms / 1000


# --- the table, read off the fields ---

VARIABLES: tuple[VarSpec, ...] = tuple(
    attrs.evolve(spec, attribute=field.name)
    for field in attrs.fields(Settings)
    for spec in field.metadata[_SPECS]
)
"""Every variable, in the order of the Settings fields that declare them."""

_BY_NAME: Mapping[str, VarSpec] = {spec.name: spec for spec in VARIABLES}
_BY_ATTRIBUTE: Mapping[str, VarSpec] = {
    spec.attribute: spec for spec in VARIABLES if spec.key is None
}
#: MUSHPI_* names that are not settings (scripts/test reads MUSHPI_VENV); never warned about.
_NOT_SETTINGS: frozenset[str] = frozenset({"MUSHPI_VENV"})
_KNOWN_NAMES: frozenset[str] = frozenset(_BY_NAME) | {ENV_FILE_VARIABLE} | _NOT_SETTINGS


def _default(name: str) -> Any:
    """The parsed default of a variable (None for an optional one)."""
    spec = _BY_NAME[name]
    return None if spec.default is None else spec.parse(spec.default)


def _check_field(spec: VarSpec, value: object) -> None:
    """Round-trip a constructed value through its parser; it must come back identical."""
    text = _as_text(value)
    try:
        parsed = spec.parse(text)
    except _Invalid as exc:
        raise ConfigError(spec.name, text, spec.allowed, exc.problem) from None
    if type(parsed) is not type(value) or parsed != value:
        raise ConfigError(spec.name, text, spec.allowed, f"not normalised, expected {parsed!r}")


def _unknown_characteristic(variable: str, value: str, source: str | None) -> ConfigError:
    suffix = variable.removeprefix(POLICY_PREFIX)
    return ConfigError(
        variable,
        value,
        "a characteristic among " + ", ".join(NOTIFYING_CHARACTERISTICS),
        f"unknown characteristic {suffix!r}",
        source,
    )


# --- loading ---


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = ".env",
) -> Settings:
    """Read, validate and return the settings; raise one ConfigError naming every bad
    value and every settings-file line that cannot be read.

    ``environ`` defaults to ``os.environ``. ``env_file`` is read if it exists (None: no file);
    a non-empty ``MUSHPI_ENV_FILE`` in ``environ`` replaces it, and must then exist, since an
    operator who names a file expects it to be used.
    """
    errors: list[ConfigError] = []
    values = _collect(os.environ if environ is None else environ, env_file, errors)
    for name, (value, source) in values.items():
        if name.startswith(POLICY_PREFIX) and name not in _BY_NAME:
            errors.append(_unknown_characteristic(name, value, source))
    _warn_unknown(values)

    fields: dict[str, Any] = {}
    overrides: dict[str, str] = {}
    for spec in VARIABLES:
        raw, source = values.get(spec.name, (None, None))
        try:
            value = _load_one(spec, raw, source)
        except ConfigError as exc:
            errors.append(exc)
            continue
        if spec.key is None:
            fields[spec.attribute] = value
        elif value is not None:
            overrides[spec.key] = value
    if errors:
        raise ConfigError.gather(errors) from None
    return Settings(policy_overrides=overrides, **fields)


def _collect(env: Mapping[str, str], env_file: str | os.PathLike[str] | None,
             errors: list[ConfigError]) -> dict[str, tuple[str, str | None]]:
    """Every MUSHPI_ value with where it came from (a file path, or None: the
    environment); the environment wins. Unreadable file lines go to ``errors``."""
    path, must_exist = _choose_env_file(env, env_file)
    values: dict[str, tuple[str, str | None]] = {}
    if path is not None:
        for name, value in _read_env_file(path, must_exist, errors).items():
            if name.startswith(PREFIX) and name != ENV_FILE_VARIABLE:
                values[name] = (value, os.fspath(path))
    for name, value in env.items():
        if name.startswith(PREFIX):
            values[name] = (value, None)
    return values


@attrs.frozen
class SettingSource:
    """One setting in effect: its text and where it came from."""

    variable: str
    value: str
    source: str
    """"environment", the settings file's path, or "default"."""


def setting_sources(environ: Mapping[str, str] | None = None,
                    env_file: str | os.PathLike[str] | None = ".env") -> list[SettingSource]:
    """Where each setting comes from, in table order (``mushpi-ble config``). Call it
    after :func:`load_settings` accepted the same inputs."""
    values = _collect(os.environ if environ is None else environ, env_file, [])
    out = []
    for spec in VARIABLES:
        raw, source = values.get(spec.name, (None, None))
        if raw is None or (spec.optional and not raw.strip()):
            out.append(SettingSource(spec.name, spec.default or "", "default"))
        else:
            out.append(SettingSource(spec.name, raw.strip(), source or "environment"))
    return out


def env_file_in_use(
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = ".env",
) -> Path | None:
    """The settings file :func:`load_settings` reads with these arguments, if one exists:
    the logs and ``mushpi-ble check`` say which file that was."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    path, _ = _choose_env_file(env, env_file)
    return path.absolute() if path is not None and path.is_file() else None


def _choose_env_file(
    env: Mapping[str, str], env_file: str | os.PathLike[str] | None
) -> tuple[Path | None, bool]:
    named = env.get(ENV_FILE_VARIABLE, "").strip()
    if named:
        return Path(named), True
    return (None if env_file is None else Path(env_file)), False


def _read_env_file(path: Path, must_exist: bool, errors: list[ConfigError]) -> dict[str, str]:
    """The file's assignments; each line that cannot be read is added to ``errors``.

    No interpolation: ${VAR} would silently read os.environ even when the caller
    passed its own environ mapping (and systemd does not interpolate either).
    """
    if not path.is_file():
        if must_exist:
            raise ConfigError(ENV_FILE_VARIABLE, os.fspath(path), "an existing, readable file")
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise ConfigError(
            ENV_FILE_VARIABLE, os.fspath(path), "an existing, readable UTF-8 file", str(exc)
        ) from None
    parsed = envfile.parse(text, strict_prefix=PREFIX)
    for bad in parsed.problems:
        errors.append(ConfigError(
            bad.name or ENV_FILE_VARIABLE, bad.text, "NAME=value, the value unquoted or "
            "wholly in quotes", f"line {bad.line}: {bad.problem}",
            f"{os.fspath(path)}:{bad.line}"))
    return parsed.values


def _warn_unknown(values: Mapping[str, tuple[str, str | None]]) -> None:
    """Unknown names are most often typos of known ones: say so, but keep running."""
    for name in sorted(set(values) - _KNOWN_NAMES):
        close = difflib.get_close_matches(name, _BY_NAME, n=1)
        source = values[name][1] or "environment"
        log.warning(
            "unknown config variable ignored variable=%s source=%s did_you_mean=%s",
            name,
            source,
            close[0] if close else "-",
        )


def _load_one(spec: VarSpec, raw: str | None, source: str | None) -> Any:
    if raw is None or (spec.optional and not raw.strip()):
        return _default(spec.name)
    text = raw.strip()
    for old, new, why in spec.legacy:
        if text.lower() == old:
            log.warning(
                "legacy config value variable=%s value=%s using=%s reason=%r",
                spec.name,
                old,
                new,
                why,
            )
            text = new
    try:
        return spec.parse(text)
    except _Invalid as exc:
        raise ConfigError(spec.name, raw, spec.allowed, exc.problem, source) from None


# --- generated documentation ---

_ENV_EXAMPLE_HEADER = """\
# mushpi_ble settings. Generated from mushpi_ble/config.py (render_env_example); do not edit.
# Every line shows the default and is commented out, so copying this file to .env changes
# nothing; uncomment a line to change it. Environment variables win over the file.
# The environment variable MUSHPI_ENV_FILE names a file to read instead of ./.env."""


def render_env_example() -> str:
    """The text of ``.env.example``: each variable, its meaning, allowed values and default."""
    lines = [_ENV_EXAMPLE_HEADER]
    for spec in VARIABLES:
        lines.append("")
        lines.append(f"# {spec.comment} Allowed: {spec.allowed}.")
        lines.append(f"# {spec.name}={spec.default or ''}")
    return "\n".join(lines) + "\n"


def render_markdown_table() -> str:
    """A Markdown table of the variables, for the README or other docs."""
    lines = [
        "| Variable | Default | Allowed | Meaning |",
        "|---|---|---|---|",
    ]
    for spec in VARIABLES:
        default = f"`{spec.default}`" if spec.default is not None else "(unset)"
        lines.append(f"| `{spec.name}` | {default} | {spec.allowed} | {spec.comment} |")
    return "\n".join(lines) + "\n"
