"""Finding the BlueZ adapter the peripheral serves on, and keeping it powered.

An unattended Pi meets adapters that are powered off (after an update, by
another program), rfkill-blocked, or gone for a while (a USB dongle, a
firmware crash); :class:`AdapterRecovery` notices each, does what it is
allowed to and reports every step.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from mushpi_ble.dbus import Connection, ConnectionLost, DBusError, MatchRule, SignalMessage

from .names import ADAPTER_IFACE, BLUEZ, OBJECT_MANAGER, PROPERTIES
from .rfkill import BlockState, Rfkill, RfkillError

log = logging.getLogger(__name__)

MAC_RE = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")

ManagedObjects = dict[str, dict[str, dict[str, tuple[str, Any]]]]


async def managed_objects(conn: Connection, *, timeout: float) -> ManagedObjects:
    (objects,) = await conn.call(BLUEZ, "/", OBJECT_MANAGER, "GetManagedObjects",
                                 timeout=timeout)
    return dict(objects)


def adapters(objects: ManagedObjects) -> dict[str, dict[str, Any]]:
    """Adapter path → plain property values."""
    return {
        path: {name: value for name, (_sig, value) in ifaces[ADAPTER_IFACE].items()}
        for path, ifaces in objects.items()
        if ADAPTER_IFACE in ifaces
    }


def pick_adapter(objects: ManagedObjects, wanted: str) -> str | None:
    """The path of the adapter named ``wanted`` (hciN) or with that address."""
    for path, props in adapters(objects).items():
        if MAC_RE.match(wanted.upper()):
            if str(props.get("Address", "")).upper() == wanted.upper():
                return path
        elif path.rsplit("/", 1)[-1] == wanted:
            return path
    return None


async def get_property(conn: Connection, path: str, iface: str, name: str, *,
                       timeout: float) -> Any:
    (variant,) = await conn.call(BLUEZ, path, PROPERTIES, "Get", "ss", (iface, name),
                                 timeout=timeout)
    return variant[1]


async def set_property(conn: Connection, path: str, iface: str, name: str, signature: str,
                       value: Any, *, timeout: float) -> None:
    await conn.call(BLUEZ, path, PROPERTIES, "Set", "ssv", (iface, name, (signature, value)),
                    timeout=timeout)


async def ensure_powered(conn: Connection, path: str, *, timeout: float) -> bool:
    """Power the adapter on when it is off; True if it had to be switched on."""
    if await get_property(conn, path, ADAPTER_IFACE, "Powered", timeout=timeout):
        return False
    log.info("adapter was off, powering on adapter=%s", path)
    await set_property(conn, path, ADAPTER_IFACE, "Powered", "b", True, timeout=timeout)
    return True


# -- recovery: powered off, rfkill-blocked ------------------------------------------------

POWER_STATES = ("on", "off", "off-enabling", "on-disabling", "off-blocked")
"""bluetoothd's ``Adapter1.PowerState`` values (5.66+; older ones only have ``Powered``)."""
BLOCKED_ERROR = "org.bluez.Error.Blocked"
RECOVERY_BACKOFF_FIRST_S = 0.5
RECOVERY_BACKOFF_MAX_S = 30.0
RECOVERY_POLL_S = 10.0
UNBLOCK_WAIT_S = 2.0


@attrs.frozen
class AdapterCondition:
    """The adapter's power and rfkill state, as one word for status and logs."""

    powered: bool
    power_state: str
    """bluetoothd's PowerState, or "on"/"off" from Powered when it has none."""
    rfkill: BlockState = attrs.field(factory=BlockState)

    @property
    def state(self) -> str:
        """PowerState, with "off-blocked" also where only rfkill says so (old bluetoothd)."""
        if not self.powered and (self.rfkill.soft or self.rfkill.hard):
            return "off-blocked"
        return self.power_state

    @property
    def healthy(self) -> bool:
        return self.powered


@attrs.frozen
class Recovery:
    """One step taken (or deliberately not taken) about the adapter, for status and logs."""

    at: float
    action: str
    """power-on, rfkill-unblock, report, wait."""
    result: str
    """ok, failed, not-allowed, impossible, waiting."""
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "action": self.action, "result": self.result,
                "detail": self.detail}


class AdapterRecovery:
    """Keeps one adapter powered: reads its condition, lifts soft blocks, powers it on.

    With ``allowed`` false it only reports. Every step goes to ``on_step`` and
    every condition read to ``on_condition``; a report is made once per
    condition, not on every look.
    """

    def __init__(self, conn: Connection, path: str, *, allowed: bool, rfkill: Rfkill,
                 timeout: float, on_step: Callable[[Recovery], None],
                 on_condition: Callable[[AdapterCondition], None]) -> None:
        self._conn = conn
        self.path = path
        self.adapter_id = path.rsplit("/", 1)[-1]
        self._allowed = allowed
        self._rfkill = rfkill
        self._timeout = timeout
        self._on_step = on_step
        self._on_condition = on_condition
        self._reported: str | None = None
        self._poke = trio.Event()

    async def read(self) -> AdapterCondition:
        (props,) = await self._conn.call(BLUEZ, self.path, PROPERTIES, "GetAll", "s",
                                         (ADAPTER_IFACE,), timeout=self._timeout)
        values = {k: v[1] for k, v in dict(props).items()}
        powered = bool(values.get("Powered"))
        power_state = str(values.get("PowerState") or ("on" if powered else "off"))
        condition = AdapterCondition(powered, power_state,
                                     await trio.to_thread.run_sync(self._rfkill.state,
                                                                   self.adapter_id))
        self._on_condition(condition)
        return condition

    def _step(self, action: str, result: str, detail: str) -> None:
        step = Recovery(time.time(), action, result, detail)
        level = logging.INFO if result in ("ok", "waiting") else logging.WARNING
        log.log(level, "adapter recovery adapter=%s action=%s result=%s detail=%s",
                self.adapter_id, action, result, detail)
        self._on_step(step)

    def _report_once(self, key: str, result: str, detail: str) -> None:
        if self._reported != key:
            self._reported = key
            self._step("report", result, detail)

    async def recover(self) -> AdapterCondition:
        """Look once and do what is allowed; the condition afterwards."""
        condition = await self.read()
        if condition.healthy:
            if self._reported is not None:
                self._step("report", "ok", f"adapter is {condition.state} again")
            self._reported = None
            return condition
        if condition.power_state in ("off-enabling", "on-disabling"):
            return condition  # bluetoothd is switching it: look again shortly
        if condition.rfkill.hard:
            self._report_once("hard", "impossible",
                              f"adapter is {condition.state}: rfkill hard block (a switch or "
                              "the firmware), which software cannot lift; waiting for it")
            return condition
        if not self._allowed:
            self._report_once(f"off:{condition.rfkill.describe()}", "not-allowed",
                              f"adapter is {condition.state} (rfkill "
                              f"{condition.rfkill.describe()}); left alone because "
                              "MUSHPI_BLE_ADAPTER_RECOVERY=false")
            return condition
        if condition.rfkill.soft or condition.power_state == "off-blocked":
            condition = await self._unblock(condition)
            if condition.healthy or condition.state == "off-blocked":
                return condition
        return await self._power_on()

    async def _unblock(self, condition: AdapterCondition) -> AdapterCondition:
        if not condition.rfkill.soft:
            self._report_once("blocked-unknown", "impossible",
                              "bluetoothd says the adapter is blocked but no rfkill switch "
                              f"of {self.adapter_id} is readable here")
            return condition
        try:
            names = await trio.to_thread.run_sync(self._rfkill.unblock, self.adapter_id)
        except RfkillError as exc:
            self._step("rfkill-unblock", "failed", f"soft block not lifted: {exc} (run as "
                       "root, or give the service user write access to /dev/rfkill)")
            return condition
        self._step("rfkill-unblock", "ok", f"soft block lifted ({', '.join(names)})")
        with trio.move_on_after(min(UNBLOCK_WAIT_S, self._timeout / 2)):
            while True:  # bluetoothd restores power itself once the kernel unblocks
                condition = await self.read()
                if condition.healthy or condition.state != "off-blocked":
                    break
                await trio.sleep(0.05)
        return condition

    async def _power_on(self) -> AdapterCondition:
        try:
            await set_property(self._conn, self.path, ADAPTER_IFACE, "Powered", "b", True,
                               timeout=self._timeout)
        except DBusError as exc:
            if isinstance(exc, ConnectionLost):
                raise
            self._step("power-on", "failed", f"{exc.name}: {exc.text}")
            return await self.read()
        self._step("power-on", "ok", "adapter powered on")
        return await self.read()

    def poke(self) -> None:
        self._poke.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Follow the adapter's PropertiesChanged and look again on each, on a poll (rfkill
        sends nothing over D-Bus) and, while it stays down, with a growing back-off."""
        rule = MatchRule(sender=BLUEZ, path=self.path, interface=PROPERTIES,
                         member="PropertiesChanged", arg0=ADAPTER_IFACE)
        async with self._conn.subscribe(rule) as signals, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, signals)
            task_status.started()
            delay = RECOVERY_BACKOFF_FIRST_S
            while True:
                try:
                    condition = await self.recover()
                except DBusError as exc:
                    if isinstance(exc, ConnectionLost):
                        raise
                    log.debug("adapter look failed adapter=%s error=%s", self.adapter_id, exc)
                    condition = None
                if condition is not None and condition.healthy:
                    delay, wait = RECOVERY_BACKOFF_FIRST_S, RECOVERY_POLL_S
                else:
                    wait = delay
                    delay = min(RECOVERY_BACKOFF_MAX_S, delay * 2)
                with trio.move_on_after(wait):
                    await self._poke.wait()
                self._poke = trio.Event()

    async def _pump(self, signals: trio.MemoryReceiveChannel[SignalMessage]) -> None:
        async for signal in signals:
            _iface, changed, _invalidated = signal.body
            if "Powered" in changed or "PowerState" in changed:
                self.poke()
