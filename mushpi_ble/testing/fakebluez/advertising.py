"""``org.bluez.LEAdvertisingManager1``: registering adverts and sizing them.

The size rules follow ``src/advertising.c`` and ``src/shared/ad.c`` for a
legacy (31-byte) controller, which is what a Raspberry Pi has:

* advertising data: Flags (3, counted always), each service/solicit UUID
  list 2 + 2n / 4n / 16n by the form the UUID was written in,
  ManufacturerData 4 + len each, ServiceData 2 + UUID size + len each,
  Appearance (property or "appearance" include) 4, Data 2 + len each,
  the "tx-power" include 3; more than 31 is refused with
  ``org.bluez.Error.Failed`` "Failed to register advertisement";
* the local name (``LocalName``, or the adapter alias via the
  "local-name" include) goes into the scan response, shortened to fit 31
  bytes, so it never makes an advert too long.

Parse errors (bad Type, bad UUID, LocalName together with the "local-name"
include, TxPower out of range, ...) give "Failed to parse advertisement.".
Unknown or unsupported includes are ignored, as bluetoothd does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from mushpi_ble.dbus import CallContext, DBusError, Interface, Method, Property

from .names import (
    ADVERT_INCOMPLETE,
    ADVERT_MAX_REACHED,
    ADVERT_PARSE_FAILED,
    ADVERT_REGISTER_FAILED,
    ADVERTISEMENT,
    ADVERTISING_MANAGER,
    ALREADY_EXISTS,
    DOES_NOT_EXIST,
    FAILED,
    NOT_PERMITTED,
    PROPERTIES,
    TEXT_ALREADY_EXISTS,
    TEXT_DOES_NOT_EXIST,
)
from .runtime import Runtime
from .uuids import parse_uuid

if TYPE_CHECKING:
    from .adapter import FakeAdapter

log = logging.getLogger(__name__)

MAX_ADV_LEN: Final = 31
MAX_SCAN_RSP_LEN: Final = 31
FLAGS_SIZE: Final = 3
KNOWN_INCLUDES: Final = ("tx-power", "appearance", "local-name", "rsi")

Variant = tuple[str, Any]


class AdvertParseError(Exception):
    """bluetoothd's "Failed to parse advertisement." with the reason for the log."""


@attrs.frozen
class Payload:
    """What bluetoothd would put on the air for one advertisement."""

    type: str
    adv_size: int
    scan_response_size: int
    local_name: str | None
    advertised_name: str | None
    includes: tuple[str, ...]
    tx_power: int | None
    timeout: int
    interval_units: tuple[int, int] | None = None
    """(min, max) in 0.625 ms units as the controller gets them; None: bluetoothd's default."""


def _get(props: Mapping[str, Variant], name: str, signature: str) -> Any:
    variant = props[name]
    if variant[0] != signature:
        raise AdvertParseError(f"{name} has type {variant[0]!r}, expected {signature!r}")
    return variant[1]


def _uuid_lists(props: Mapping[str, Variant], name: str) -> int:
    if name not in props:
        return 0
    sizes: list[int] = []
    seen: set[str] = set()
    for text in _get(props, name, "as"):
        parsed = parse_uuid(text)
        if parsed is None:
            raise AdvertParseError(f"{name}: {text!r} is not a UUID")
        if parsed.canonical not in seen:
            seen.add(parsed.canonical)
            sizes.append(parsed.size)
    return sum(2 + size * sizes.count(size) for size in set(sizes))


def _bytes_of(name: str, variant: Any) -> bytes:
    if not (isinstance(variant, tuple) and len(variant) == 2 and variant[0] == "ay"):
        raise AdvertParseError(f"{name}: each value must be a variant holding 'ay'")
    return bytes(variant[1])


def _interval(props: Mapping[str, Variant], name: str) -> int:
    jiffies = int(_get(props, name, "u") / 0.625)
    if not 0x20 <= jiffies <= 0xFFFFFF:
        raise AdvertParseError(f"{name} out of range")
    return jiffies


def parse_advertisement(props: Mapping[str, Variant], *, alias: str,
                        supported_includes: Collection[str],
                        secondary_channels: Collection[str] = (),
                        can_set_tx_power: bool = False,
                        intervals: str = "honoured") -> Payload:
    """Parse an advert's properties like bluetoothd's parser table, and size it."""
    adtype = "broadcast"
    if "Type" in props:
        adtype = _get(props, "Type", "s")
        if adtype not in ("broadcast", "peripheral"):
            raise AdvertParseError(f"Type {adtype!r} is neither 'broadcast' nor 'peripheral'")
    size = FLAGS_SIZE
    size += _uuid_lists(props, "ServiceUUIDs")
    size += _uuid_lists(props, "SolicitUUIDs")
    if "ManufacturerData" in props:
        for company, variant in _get(props, "ManufacturerData", "a{qv}").items():
            data = _bytes_of(f"ManufacturerData[0x{company:04x}]", variant)
            if len(data) > MAX_ADV_LEN - 4:
                raise AdvertParseError("ManufacturerData entry longer than 27 bytes")
            size += 4 + len(data)
    if "ServiceData" in props:
        for key, variant in _get(props, "ServiceData", "a{sv}").items():
            parsed = parse_uuid(key)
            if parsed is None:
                raise AdvertParseError(f"ServiceData key {key!r} is not a UUID")
            data = _bytes_of(f"ServiceData[{key}]", variant)
            if len(data) > MAX_ADV_LEN - 2 - parsed.size:
                raise AdvertParseError("ServiceData entry too long")
            size += 2 + parsed.size + len(data)
    includes: list[str] = []
    if "Includes" in props:
        for name in _get(props, "Includes", "as"):
            if name in supported_includes and name in KNOWN_INCLUDES and name != "rsi":
                includes.append(name)
            else:
                log.debug("advertisement include ignored include=%s", name)
    local_name: str | None = None
    if "LocalName" in props:
        value = _get(props, "LocalName", "s")
        if "local-name" in includes:
            raise AdvertParseError("LocalName given and 'local-name' included")
        local_name = value or None
    has_appearance = False
    if "Appearance" in props:
        _get(props, "Appearance", "q")
        if "appearance" in includes:
            raise AdvertParseError("Appearance given and 'appearance' included")
        has_appearance = True
    if "Duration" in props:
        _get(props, "Duration", "q")
    timeout = int(_get(props, "Timeout", "q")) if "Timeout" in props else 0
    if "Data" in props:
        for adtype_code, variant in _get(props, "Data", "a{yv}").items():
            data = _bytes_of(f"Data[0x{adtype_code:02x}]", variant)
            if len(data) > MAX_ADV_LEN - 2:
                raise AdvertParseError("Data entry too long")
            size += 2 + len(data)
    discoverable = bool(_get(props, "Discoverable", "b")) if "Discoverable" in props else False
    discoverable_timeout = (int(_get(props, "DiscoverableTimeout", "q"))
                            if "DiscoverableTimeout" in props else 0)
    if "SecondaryChannel" in props:
        channel = _get(props, "SecondaryChannel", "s")
        if channel not in secondary_channels:
            raise AdvertParseError(f"SecondaryChannel {channel!r} is not supported")
    honoured = intervals != "ignored"  # before 5.77 without -E the parsers skip them
    min_interval = _interval(props, "MinInterval") if honoured and "MinInterval" in props else 0
    max_interval = _interval(props, "MaxInterval") if honoured and "MaxInterval" in props else 0
    tx_power: int | None = None
    if "TxPower" in props:
        tx_power = int(_get(props, "TxPower", "n"))
        if not -127 <= tx_power <= 20:
            raise AdvertParseError(f"TxPower {tx_power} outside -127..20")
    if discoverable and adtype == "broadcast":
        raise AdvertParseError("a broadcast advertisement cannot be discoverable")
    if timeout and discoverable_timeout and timeout < discoverable_timeout:
        raise AdvertParseError("DiscoverableTimeout is longer than Timeout")
    if min_interval > max_interval:
        raise AdvertParseError("MinInterval is larger than MaxInterval")
    if has_appearance or "appearance" in includes:
        size += 4
    if "tx-power" in includes:
        size += 3
    name = local_name if local_name is not None else (alias if "local-name" in includes
                                                      else None)
    advertised: str | None = None
    scan_size = 0
    if name:
        encoded = name.encode()[: MAX_SCAN_RSP_LEN - 2]
        advertised = encoded.decode(errors="ignore")
        scan_size = 2 + len(encoded)
    # like refresh_extended_adv: the intervals go to the kernel only when both are set
    units = (min_interval, max_interval) if min_interval and max_interval else None
    return Payload(adtype, size, scan_size, name, advertised, tuple(includes),
                   tx_power if can_set_tx_power else None, timeout, units)


def unwrap(props: Mapping[str, Variant]) -> dict[str, Any]:
    return {name: value for name, (_sig, value) in props.items()}


@attrs.define(eq=False)
class Advertisement:
    """A registered (or registering) advertisement, as bluetoothd holds it."""

    sender: str
    path: str
    instance: int
    variants: dict[str, Variant] = attrs.Factory(dict)
    payload: Payload | None = None
    registered: bool = False
    dropped: trio.Event = attrs.Factory(trio.Event)
    timeout_scope: trio.CancelScope | None = None

    @property
    def properties(self) -> dict[str, Any]:
        """The advert's properties as last read, variants unwrapped."""
        return unwrap(self.variants)

    @property
    def payload_size(self) -> int:
        return self.payload.adv_size if self.payload else 0

    @property
    def scan_response_size(self) -> int:
        return self.payload.scan_response_size if self.payload else 0

    @property
    def local_name(self) -> str | None:
        return self.payload.local_name if self.payload else None

    @property
    def tx_power(self) -> int | None:
        """The requested TxPower bluetoothd honours (None without CanSetTxPower)."""
        return self.payload.tx_power if self.payload else None

    @property
    def type(self) -> str:
        return self.payload.type if self.payload else ""

    @property
    def interval_ms(self) -> tuple[float, float] | None:
        """(min, max) advertising interval on the air in ms; None: bluetoothd's default."""
        units = self.payload.interval_units if self.payload else None
        return None if units is None else (units[0] * 0.625, units[1] * 0.625)


class AdvertisingManager:
    """One adapter's advertising manager."""

    def __init__(self, runtime: Runtime, adapter: FakeAdapter) -> None:
        self._runtime = runtime
        self._adapter = adapter
        self.adverts: list[Advertisement] = []
        self.registrations = 0
        """RegisterAdvertisement calls that succeeded."""
        self.live_updates: list[tuple[str, ...]] = []
        """The properties of each PropertiesChanged applied to an advert while held."""
        self.halted = False
        """The controller stopped advertising for a central (``halt_advertising_on_connect``);
        off the air while one is connected, until a new registration."""
        self.lost = False
        """The controller lost its advertising sets in a power cycle
        (``lose_adverts_on_power_off``): off the air until a new registration."""

    # -- D-Bus ----------------------------------------------------------
    def interface(self) -> Interface:
        cfg = self._runtime.config
        props = [
            Property("ActiveInstances", "y", get=lambda: len(self.adverts)),
            Property("SupportedInstances", "y",
                     get=lambda: max(0, cfg.supported_instances - len(self.adverts))),
            Property("SupportedIncludes", "as", get=lambda: list(cfg.supported_includes)),
        ]
        if cfg.advert_intervals != "ignored":
            # before 5.77 without -E: experimental, hidden with the intervals' parsers
            props += [
                Property("SupportedFeatures", "as",
                         get=lambda: ["CanSetTxPower"] if cfg.can_set_tx_power else []),
                Property("SupportedCapabilities", "a{sv}", get=self._capabilities),
            ]
        if cfg.secondary_channels:
            props.insert(3, Property("SupportedSecondaryChannels", "as",
                                     get=lambda: list(cfg.secondary_channels)))
        return Interface(ADVERTISING_MANAGER, methods=[
            Method("RegisterAdvertisement", "oa{sv}", "", handler=self._register,
                   arg_names=["advertisement", "options"], timeout=math.inf),
            Method("UnregisterAdvertisement", "o", "", handler=self._unregister,
                   arg_names=["service"], timeout=math.inf),
        ], properties=props)

    def _capabilities(self) -> dict[str, Variant]:
        cfg = self._runtime.config
        return {"MinTxPower": ("n", cfg.min_tx_power), "MaxTxPower": ("n", cfg.max_tx_power),
                "MaxAdvLen": ("y", MAX_ADV_LEN), "MaxScnRspLen": ("y", MAX_SCAN_RSP_LEN)}

    def registered(self) -> list[Advertisement]:
        return [a for a in self.adverts if a.registered]

    def _find(self, sender: str, path: str) -> Advertisement | None:
        return next((a for a in self.adverts if a.sender == sender and a.path == path), None)

    def _instances_changed(self) -> None:
        link = self._runtime.link
        if link is not None:
            link.conn.emit_properties_changed_nowait(
                self._adapter.path, ADVERTISING_MANAGER,
                {"SupportedInstances": max(0, self._runtime.config.supported_instances
                                           - len(self.adverts)),
                 "ActiveInstances": len(self.adverts)})
        self._runtime.changed()

    async def _register(self, ctx: CallContext, path: str, _options: dict[str, Any]) -> None:
        runtime = self._runtime
        await runtime.faults.delay("RegisterAdvertisement")
        refusal = runtime.faults.take_refusal("RegisterAdvertisement")
        if refusal is not None:
            raise DBusError(*refusal)
        if self._find(ctx.sender, path) is not None:
            raise DBusError(ALREADY_EXISTS, TEXT_ALREADY_EXISTS)
        if len(self.adverts) >= runtime.config.supported_instances:
            log.info("advertisement refused sender=%s path=%s reason=no-free-instance",
                     ctx.sender, path)
            raise DBusError(NOT_PERMITTED, ADVERT_MAX_REACHED)
        used = {a.instance for a in self.adverts}
        instance = next(i for i in range(1, 256) if i not in used)
        advert = Advertisement(ctx.sender, path, instance)
        self.adverts.append(advert)
        try:
            variants = await self._read(advert)
            payload = self._parse(advert, variants)
        except BaseException:
            if advert in self.adverts:
                self.adverts.remove(advert)
            raise
        if advert not in self.adverts:
            raise DBusError(FAILED, ADVERT_INCOMPLETE)
        advert.variants = variants
        advert.payload = payload
        advert.registered = True
        self.registrations += 1
        self.halted = self.lost = False
        if payload.tx_power is not None:
            selected = min(max(payload.tx_power, runtime.config.min_tx_power),
                           runtime.config.max_tx_power)
            await runtime.call(ctx.sender, path, PROPERTIES, "Set", "ssv",
                               (ADVERTISEMENT, "TxPower", ("n", selected)), no_reply=True)
        self._start_timeout(advert)
        log.info("advertisement registered adapter=%s sender=%s path=%s instance=%d "
                 "adv_bytes=%d scan_bytes=%d local_name=%r", self._adapter.id, ctx.sender, path,
                 instance, payload.adv_size, payload.scan_response_size, payload.local_name)
        self._instances_changed()

    async def _read(self, advert: Advertisement) -> dict[str, Variant]:
        try:
            (variants,) = await self._runtime.call(advert.sender, advert.path, PROPERTIES,
                                                   "GetAll", "s", (ADVERTISEMENT,))
        except DBusError as exc:
            link = self._runtime.require_link()
            if not await link.conn.get_name_owner(advert.sender):
                raise DBusError(FAILED, ADVERT_INCOMPLETE) from None
            # bluetoothd's proxy never appears, so it never answers; the caller times out.
            log.warning("advertisement unreadable, registration left unanswered sender=%s "
                        "path=%s error=%s", advert.sender, advert.path, exc.name)
            await advert.dropped.wait()
            raise DBusError(FAILED, ADVERT_INCOMPLETE) from None
        return dict(variants)

    def _parse(self, advert: Advertisement, variants: Mapping[str, Variant]) -> Payload:
        cfg = self._runtime.config
        try:
            payload = parse_advertisement(
                variants, alias=self._adapter.alias, supported_includes=cfg.supported_includes,
                secondary_channels=cfg.secondary_channels, can_set_tx_power=cfg.can_set_tx_power,
                intervals=cfg.advert_intervals)
        except AdvertParseError as exc:
            log.info("advertisement refused sender=%s path=%s reason=%r", advert.sender,
                     advert.path, str(exc))
            raise DBusError(FAILED, ADVERT_PARSE_FAILED) from None
        if payload.interval_units is not None and cfg.advert_intervals == "refused":
            log.info("advertisement refused sender=%s path=%s reason=intervals-refused",
                     advert.sender, advert.path)
            raise DBusError(FAILED, ADVERT_REGISTER_FAILED)
        if payload.adv_size > MAX_ADV_LEN:
            log.info("advertisement refused sender=%s path=%s reason=too-long adv_bytes=%d "
                     "max=%d", advert.sender, advert.path, payload.adv_size, MAX_ADV_LEN)
            raise DBusError(FAILED, ADVERT_REGISTER_FAILED)
        return payload

    async def _unregister(self, ctx: CallContext, path: str) -> None:
        await self._runtime.faults.delay("UnregisterAdvertisement")
        advert = self._find(ctx.sender, path)
        if advert is None:
            raise DBusError(DOES_NOT_EXIST, TEXT_DOES_NOT_EXIST)
        self._remove(advert)
        log.info("advertisement unregistered adapter=%s sender=%s path=%s", self._adapter.id,
                 ctx.sender, path)

    def _remove(self, advert: Advertisement) -> None:
        if advert in self.adverts:
            self.adverts.remove(advert)
        advert.registered = False
        advert.dropped.set()
        if advert.timeout_scope is not None:
            advert.timeout_scope.cancel()
        self._instances_changed()

    # -- timeouts and releases ---------------------------------------------
    def _start_timeout(self, advert: Advertisement) -> None:
        if advert.timeout_scope is not None:
            advert.timeout_scope.cancel()
            advert.timeout_scope = None
        timeout = advert.payload.timeout if advert.payload else 0
        if timeout:
            scope = trio.CancelScope()
            advert.timeout_scope = scope
            self._runtime.spawn(self._expire, advert, timeout, scope)

    async def _expire(self, advert: Advertisement, timeout: int, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(timeout)
            advert.timeout_scope = None
            log.info("advertisement timed out sender=%s path=%s timeout_s=%d", advert.sender,
                     advert.path, timeout)
            self._remove(advert)
            await self._release(advert)

    async def _release(self, advert: Advertisement) -> None:
        try:
            await self._runtime.call(advert.sender, advert.path, ADVERTISEMENT, "Release",
                                     no_reply=True)
        except DBusError as exc:
            log.debug("release not sent path=%s error=%s", advert.path, exc)
        log.info("advertisement released sender=%s path=%s", advert.sender, advert.path)

    async def release_all(self) -> None:
        """Drop every advert with ``Release()``, as when the adapter goes away."""
        adverts, self.adverts = list(self.adverts), []
        for advert in adverts:
            was_registered = advert.registered
            advert.registered = False
            advert.dropped.set()
            if advert.timeout_scope is not None:
                advert.timeout_scope.cancel()
            if was_registered:
                await self._release(advert)
        self._runtime.changed()

    def forget_all(self) -> None:
        """Drop everything silently (bluetoothd died)."""
        for advert in self.adverts:
            advert.registered = False
            advert.dropped.set()
        self.adverts = []

    def drop_silently(self, *, announce: bool = True) -> int:
        """Adverts stop without ``Release()`` (bluez/bluez #1015): gone from
        ActiveInstances; ``announce=False`` leaves out even the PropertiesChanged,
        so only an application that looks again notices. Returns how many."""
        dropped = list(self.adverts)
        for advert in dropped:
            log.info("advertisement dropped silently sender=%s path=%s announce=%s",
                     advert.sender, advert.path, announce)
            self.adverts.remove(advert)
            advert.registered = False
            advert.dropped.set()
            if advert.timeout_scope is not None:
                advert.timeout_scope.cancel()
        if dropped and announce:
            self._instances_changed()
        self._runtime.changed()
        return len(dropped)

    def drop_sender(self, sender: str) -> None:
        """The advert's owner left the bus: drop its adverts, no Release."""
        for advert in [a for a in self.adverts if a.sender == sender]:
            log.info("advertisement dropped sender=%s path=%s reason=owner-left", sender,
                     advert.path)
            self._remove(advert)

    def on_properties_changed(self, sender: str, path: str, changed: Mapping[str, Variant],
                              invalidated: Collection[str] = ()) -> None:
        """Re-parse the advert with the changed values, as bluetoothd's property watch.

        An invalidated property is dropped: bluetoothd's parsers are called
        without a value for it and clear it (a LocalName that goes away).
        """
        advert = self._find(sender, path)
        if advert is None or not advert.registered:
            return
        variants = {k: v for k, v in {**advert.variants, **changed}.items()
                    if k not in invalidated}
        try:
            payload = self._parse(advert, variants)
        except DBusError:
            log.warning("advertisement update rejected sender=%s path=%s changed=%s", sender,
                        path, ",".join(changed))
            return
        old_timeout = advert.payload.timeout if advert.payload else 0
        advert.variants = variants
        advert.payload = payload
        self.live_updates.append(tuple(changed) + tuple(invalidated))
        log.info("advertisement updated sender=%s path=%s changed=%s invalidated=%s "
                 "local_name=%r adv_bytes=%d", sender, path, ",".join(changed),
                 ",".join(invalidated), payload.local_name, payload.adv_size)
        if "Timeout" in changed and payload.timeout != old_timeout:
            self._start_timeout(advert)
        self._runtime.changed()
