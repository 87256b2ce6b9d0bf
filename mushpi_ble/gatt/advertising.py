"""LE advertising: plan what fits in 31 bytes, export the advert, keep it registered.

bluetoothd refuses an advertisement whose legacy payload exceeds 31 bytes
(flags included) with ``InvalidLength`` and silently truncates a long local
name in the scan response; planning first lets us drop the least important
part — the name, which the adapter alias still carries — and say so in one
log line instead of failing or advertising a clipped name.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from mushpi_ble.dbus import (
    CallContext,
    Connection,
    ConnectionLost,
    DBusError,
    Interface,
    MatchRule,
    Method,
    Property,
    SignalMessage,
)

from .exported import ExportedObject
from .names import ADVERTISEMENT_IFACE, ADVERTISING_MANAGER_IFACE, BLUEZ, ERROR_PREFIX, PROPERTIES

log = logging.getLogger(__name__)

LEGACY_MAX = 31
FLAGS_SIZE = 3
BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"

# MUSHPI_BLE_ADV_TX_POWER → dBm requested when the controller can set it
TX_POWER_DBM = {"low": -20, "med": -8, "high": 4}


def uuid_size(value: str) -> int:
    """Bytes a UUID takes in an AD structure: 2, 4 or 16."""
    text = str(uuidlib.UUID(value)) if len(value) > 8 else value
    if len(text) <= 8:
        return 2 if int(text, 16) <= 0xFFFF else 4
    if text.endswith(BASE_UUID_SUFFIX):
        short = int(text[:8], 16)
        return 2 if short <= 0xFFFF else 4
    return 16


def legacy_payload_size(
    *,
    service_uuids: Sequence[str] = (),
    local_name: str | None = None,
    tx_power: bool = False,
    appearance: bool = False,
    manufacturer_data: Mapping[int, bytes] | None = None,
    service_data: Mapping[str, bytes] | None = None,
) -> int:
    """The legacy advertising payload size bluetoothd would build, flags included."""
    size = FLAGS_SIZE
    by_width: dict[int, int] = {}
    for value in service_uuids:
        width = uuid_size(value)
        by_width[width] = by_width.get(width, 0) + 1
    size += sum(2 + width * count for width, count in by_width.items())
    if local_name:
        size += 2 + len(local_name.encode())
    if tx_power:
        size += 3
    if appearance:
        size += 4
    for data in (manufacturer_data or {}).values():
        size += 2 + 2 + len(data)
    for key, data in (service_data or {}).items():
        size += 2 + uuid_size(key) + len(data)
    return size


@attrs.frozen
class AdvertisingCapabilities:
    """What the adapter's LEAdvertisingManager1 says it supports."""

    supported_includes: tuple[str, ...] = ("tx-power", "appearance", "local-name")
    supported_instances: int = 1
    active_instances: int = 0
    can_set_tx_power: bool = False
    max_adv_len: int = LEGACY_MAX
    max_scan_rsp_len: int = LEGACY_MAX
    min_tx_power: int = -127
    max_tx_power: int = 20
    honours_intervals: bool = True
    """MinInterval/MaxInterval reach the controller: bluetoothd 5.77 and newer, or older
    ones with -E. The same switch shows SupportedCapabilities (one commit, 7e028287a,
    made both stable), so its absence says the intervals would be parsed as nothing."""

    @classmethod
    def from_properties(cls, props: Mapping[str, Any]) -> AdvertisingCapabilities:
        caps = {k: v[1] if isinstance(v, tuple) else v
                for k, v in dict(props.get("SupportedCapabilities", {})).items()}
        return cls(
            supported_includes=tuple(props.get("SupportedIncludes", ())),
            supported_instances=int(props.get("SupportedInstances", 1)),
            active_instances=int(props.get("ActiveInstances", 0)),
            can_set_tx_power="CanSetTxPower" in tuple(props.get("SupportedFeatures", ())),
            max_adv_len=int(caps.get("MaxAdvLen", LEGACY_MAX)),
            max_scan_rsp_len=int(caps.get("MaxScnRspLen", LEGACY_MAX)),
            min_tx_power=int(caps.get("MinTxPower", -127)),
            max_tx_power=int(caps.get("MaxTxPower", 20)),
            honours_intervals="SupportedCapabilities" in props,
        )


@attrs.frozen
class AdvertPlan:
    """The properties to advertise and what was left out, with the reason."""

    service_uuids: tuple[str, ...]
    local_name: str | None
    includes: tuple[str, ...]
    tx_power: int | None
    size: int
    scan_response_size: int = 0
    left_out: tuple[str, ...] = ()
    interval_ms: int | None = None
    """MinInterval = MaxInterval in ms (bluetoothd 5.77+, or -E before); None: its default."""


def plan_advertisement(
    name: str,
    service_uuid: str,
    capabilities: AdvertisingCapabilities,
    tx_level: str,
    interval_ms: int | None = None,
) -> AdvertPlan:
    """Fit the service UUID, the tx power and the name into the legacy budgets.

    bluetoothd (5.5x and later) builds the advertising data from the flags,
    the service UUIDs and the tx-power include, and puts LocalName in the
    scan response, each within 31 bytes. The service UUID always stays (the
    app finds the device by it); the name goes first when a budget is short.
    """
    adv_budget = min(LEGACY_MAX, capabilities.max_adv_len)
    scan_budget = min(LEGACY_MAX, capabilities.max_scan_rsp_len)
    left_out: list[str] = []
    includes: list[str] = []
    tx_power: int | None = None
    dbm = TX_POWER_DBM[tx_level]
    if capabilities.can_set_tx_power:
        tx_power = max(capabilities.min_tx_power, min(capabilities.max_tx_power, dbm))
    elif "tx-power" in capabilities.supported_includes:
        includes.append("tx-power")
    else:
        left_out.append("tx-power (the adapter can neither set nor report it)")
    uuids = (service_uuid,)
    size = legacy_payload_size(service_uuids=uuids, tx_power="tx-power" in includes)
    if size > adv_budget and "tx-power" in includes:
        includes.remove("tx-power")
        left_out.append(f"tx-power include ({size} > {adv_budget} bytes)")
        size -= 3
    local_name: str | None = name
    name_size = 2 + len(name.encode())
    if name_size > scan_budget:
        left_out.append(
            f"local name {name!r} ({name_size} > {scan_budget} bytes of scan response; "
            "the adapter alias still names the device)"
        )
        local_name = None
    return AdvertPlan(uuids, local_name, tuple(includes), tx_power, size,
                      name_size if local_name else 0, tuple(left_out), interval_ms)


class Advertisement(ExportedObject):
    """Our ``org.bluez.LEAdvertisement1`` object, kept registered.

    ``Release()`` from bluetoothd (adapter gone, timeout) triggers
    re-registration with backoff unless we are stopping.
    """

    def __init__(self, conn: Connection, path: str, plan: AdvertPlan, *,
                 allowed_caller: str | None = BLUEZ,
                 on_release: Callable[[], None] | None = None) -> None:
        super().__init__(conn, path)
        self.plan = plan
        self._allowed_caller = allowed_caller
        self._on_release = on_release
        self.registered_on: str | None = None
        self.releases = 0

    def _interface(self) -> Interface:
        def props() -> list[Property]:
            out = [
                Property("Type", "s", get=lambda: "peripheral"),
                Property("ServiceUUIDs", "as", get=lambda: list(self.plan.service_uuids)),
                Property("Includes", "as", get=lambda: list(self.plan.includes)),
                Property("Discoverable", "b", get=lambda: True),
            ]
            if self.plan.local_name is not None:
                out.append(Property("LocalName", "s", get=lambda: self.plan.local_name or ""))
            if self.plan.tx_power is not None:
                out.append(Property("TxPower", "n", get=lambda: self.plan.tx_power))
            if self.plan.interval_ms is not None:
                out.append(Property("MinInterval", "u", get=lambda: self.plan.interval_ms))
                out.append(Property("MaxInterval", "u", get=lambda: self.plan.interval_ms))
            return out

        return Interface(
            ADVERTISEMENT_IFACE,
            allowed_caller=self._allowed_caller,
            methods=[Method("Release", handler=self._release)],
            properties=props(),
        )

    def _release(self, _ctx: CallContext) -> None:
        self.releases += 1
        self.registered_on = None
        log.warning("advertisement released by bluetoothd path=%s", self.path)
        if self._on_release is not None:
            self._on_release()

    async def register(self, adapter_path: str, *, timeout: float) -> None:
        self.export()
        await self._conn.call(BLUEZ, adapter_path, ADVERTISING_MANAGER_IFACE,
                              "RegisterAdvertisement", "oa{sv}", (self.path, {}),
                              timeout=timeout)
        self.registered_on = adapter_path
        log.info("advertisement registered path=%s name=%s size=%d interval_ms=%s", self.path,
                 self.plan.local_name or "-", self.plan.size, self.plan.interval_ms or "default")

    async def unregister(self, *, timeout: float, quiet: bool = False) -> None:
        """Best effort; ``quiet`` when bluetoothd may well have dropped it already."""
        adapter_path, self.registered_on = self.registered_on, None
        if adapter_path is None:
            return
        try:
            await self._conn.call(BLUEZ, adapter_path, ADVERTISING_MANAGER_IFACE,
                                  "UnregisterAdvertisement", "o", (self.path,), timeout=timeout)
        except DBusError as exc:
            if isinstance(exc, ConnectionLost):
                raise
            log.log(logging.DEBUG if quiet else logging.WARNING,
                    "advertisement unregister failed error=%s", exc)

    async def update(self, plan: AdvertPlan, *, announce: bool = True) -> None:
        """Apply a new plan; ``announce``: live, with PropertiesChanged making bluetoothd
        re-read it (False: the next registration reads it; nothing to tell a bluetoothd
        that does not hold it)."""
        old, self.plan = self.plan, plan
        if not self.exported:
            return
        # the property set follows the plan: LocalName is absent, not "", when left out
        self._conn.unexport(self.path)
        self._conn.export(self.path, [self._interface()])
        changed: dict[str, Any] = {}
        invalidated: list[str] = []
        if old.local_name != plan.local_name:
            if plan.local_name is None:
                invalidated.append("LocalName")
            else:
                changed["LocalName"] = plan.local_name
        if old.includes != plan.includes:
            changed["Includes"] = list(plan.includes)
        if old.interval_ms != plan.interval_ms and plan.interval_ms is not None:
            # bluetoothd applies each property as it comes: never min above max between two
            pair = {"MinInterval": plan.interval_ms, "MaxInterval": plan.interval_ms}
            growing = old.interval_ms is not None and plan.interval_ms > old.interval_ms
            for key in (("MaxInterval", "MinInterval") if growing else pair):
                changed[key] = pair[key]
        if announce and (changed or invalidated):
            await self._conn.emit_properties_changed(self.path, ADVERTISEMENT_IFACE, changed,
                                                     invalidated)


async def read_capabilities(conn: Connection, adapter_path: str, *,
                            timeout: float) -> AdvertisingCapabilities:
    (props,) = await conn.call(BLUEZ, adapter_path, PROPERTIES, "GetAll", "s",
                               (ADVERTISING_MANAGER_IFACE,), timeout=timeout)
    return AdvertisingCapabilities.from_properties(
        {k: v[1] for k, v in dict(props).items()}
    )


def advert_path(app_root: str) -> str:
    """Beside the GATT application, not under it: bluetoothd watches the app's subtree."""
    parent = app_root.rsplit("/", 1)[0]
    return (parent or "") + "/advertisement0"


# -- when bluetoothd refuses or drops the advert ------------------------------------------

REGISTER_FAILED_TEXT = "Failed to register advertisement"
MAX_REACHED_TEXT = "Maximum advertisements reached"
PARSE_FAILED_TEXT = "Failed to parse advertisement."

KERNEL_MISMATCH_ADVICE = (
    'bluetoothd refused the advertisement ("Failed to register advertisement"; its log '
    'shows MGMT "Invalid Parameters" 0x0d). On a Raspberry Pi this is the kernel/BlueZ '
    "mismatch of 2026: kernels 6.12.93 and 6.18.34 refuse every D-Bus advertisement from "
    "BlueZ older than 5.87 (bluez/bluez #2268, #2269; raspberrypi/linux #7473). Update the "
    "kernel (Raspberry Pi OS: apt full-upgrade to 6.18.36 or later; its BlueZ 5.82 will not "
    "get 5.87) or BlueZ to 5.87 or later; `mushpi-ble check` says which fits this system. "
    "Until then phones cannot find the Pi by its service UUID: it keeps serving under its "
    "adapter name (alias only) and keeps retrying."
)


def explain_refusal(exc: DBusError, capabilities: AdvertisingCapabilities | None = None) -> str:
    """What bluetoothd's refusal of our advertisement means, in plain words."""
    if exc.name == f"{ERROR_PREFIX}.Failed" and exc.text.startswith(REGISTER_FAILED_TEXT):
        return KERNEL_MISMATCH_ADVICE
    if exc.text.startswith(MAX_REACHED_TEXT):
        active = f" ({capabilities.active_instances} in use)" if capabilities else ""
        return ("the controller has no free advertising instance" + active + ": other "
                "programs' advertisements use them all, so a phone cannot discover the Pi; "
                "stop them (e.g. bluetoothctl: advertise off). Serving alias only, retrying.")
    if exc.text.startswith(PARSE_FAILED_TEXT):
        return ("bluetoothd could not parse our advertisement (" + exc.text + "); this is a "
                "fault of ours, please report it with bluetoothd's version. Serving alias "
                "only, retrying.")
    return (f"bluetoothd refused the advertisement ({exc.name}: {exc.text}). Serving alias "
            "only, retrying.")


class AdvertMonitor:
    """Confirms from bluetoothd's view that an advert is on the air.

    Looks at ``LEAdvertisingManager1.ActiveInstances`` a moment (``settle``)
    after every :meth:`poke` (registration, a central connecting or leaving),
    on each change of the manager's properties, and every ``period`` seconds.
    ``registration()`` names which registration of ours should be on the air
    (None while none should: not yet, being registered again, stopping). No
    active instance means bluetoothd dropped it without a Release
    (bluez/bluez #1015) and ``on_gone`` is called, but only when the same
    registration was expected before and after the look: an answer read while
    we were registering again is about the advert we had just unregistered.
    ``on_instances(active, available)`` reports every look.
    """

    def __init__(self, conn: Connection, adapter_path: str, *,
                 registration: Callable[[], int | None],
                 on_gone: Callable[[AdvertisingCapabilities], None],
                 on_instances: Callable[[AdvertisingCapabilities], None],
                 timeout: float, settle: float = 0.3, period: float = 30.0) -> None:
        self._conn = conn
        self.adapter_path = adapter_path
        self._registration = registration
        self._on_gone = on_gone
        self._on_instances = on_instances
        self._timeout = timeout
        self._settle = settle
        self._period = period
        self._poke = trio.Event()
        self.looks = 0

    def poke(self) -> None:
        self._poke.set()

    async def check(self) -> bool:
        """One look; False when ours should be there and is not."""
        expected = self._registration()
        caps = await read_capabilities(self._conn, self.adapter_path, timeout=self._timeout)
        self.looks += 1
        self._on_instances(caps)
        if (expected is not None and self._registration() == expected
                and caps.active_instances == 0):
            self._on_gone(caps)
            return False
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        rule = MatchRule(sender=BLUEZ, path=self.adapter_path, interface=PROPERTIES,
                         member="PropertiesChanged", arg0=ADVERTISING_MANAGER_IFACE)
        async with self._conn.subscribe(rule) as signals, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, signals)
            task_status.started()
            while True:
                with trio.move_on_after(self._period):
                    await self._poke.wait()
                await trio.sleep(self._settle)
                self._poke = trio.Event()
                try:
                    await self.check()
                except DBusError as exc:
                    if isinstance(exc, ConnectionLost):
                        raise
                    log.debug("advertising look failed adapter=%s error=%s",
                              self.adapter_path, exc)

    async def _pump(self, signals: trio.MemoryReceiveChannel[SignalMessage]) -> None:
        async for _signal in signals:
            self.poke()
