"""A pairing agent: ``org.bluez.Agent1`` answering bluetoothd's pairing requests.

bluetoothd asks the default agent about every incoming pairing request; with
no agent at all an LE Just Works request fails ("No agent available for
request type 2") and the phone's link drops. The agent asks a
:class:`PairingPolicy` what to answer, so new modes (a pairing window, a
displayed passkey) are new policies, not a new agent. Every request and its
outcome is recorded in :class:`PairingLog`, which also follows ``Device1``
``Paired``/``Bonded``/``Trusted`` to show the bonded devices.

Knows BlueZ; takes plain parameters (a mode string, paths), nothing of MushPi.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from mushpi_ble.dbus import (
    CallContext,
    CallTimeout,
    Connection,
    ConnectionLost,
    DBusError,
    Interface,
    MatchRule,
    Method,
)
from mushpi_ble.dbus.connection import SignalMessage
from mushpi_ble.text import printable

from .adapter import managed_objects
from .errors import ALREADY_EXISTS, DOES_NOT_EXIST
from .exported import ExportedObject
from .names import (
    AGENT_IFACE,
    AGENT_MANAGER_IFACE,
    BLUEZ,
    DEVICE_IFACE,
    ERROR_PREFIX,
    OBJECT_MANAGER,
    PROPERTIES,
)
from .pairing_policy import (
    AUTHORIZE_SERVICE,
    CAPABILITIES,
    DISPLAY_PASSKEY,
    DISPLAY_PIN_CODE,
    MAX_WINDOW_S,
    PAIRING_MODES,
    REQUEST_AUTHORIZATION,
    REQUEST_CONFIRMATION,
    REQUEST_PASSKEY,
    REQUEST_PIN_CODE,
    WINDOW_CLOSED,
    Decision,
    JustWorksPolicy,
    PairingPolicy,
    PairingRequest,
    PairingWindow,
    PasskeyPolicy,
    WindowPolicy,
    policy_for_mode,
)

log = logging.getLogger(__name__)

AGENT_MANAGER_PATH = "/org/bluez"
REJECTED = f"{ERROR_PREFIX}.Rejected"
CANCELED = f"{ERROR_PREFIX}.Canceled"

#: How long a displayed passkey is shown in the status (SMP gives up after 30 s).
PASSKEY_SHOWN_S = 60.0

# outcomes of one attempt
ACCEPTED = "accepted"
REFUSED = "rejected"
CANCELLED = "canceled"
PAIRED = "paired"
FAILED = "failed"
DISPLAYED = "displayed"

HISTORY = 32


def address_of(device_path: str) -> str:
    """``/org/bluez/hci0/dev_AA_BB_…`` → ``AA:BB:…`` ("" when the path has no device)."""
    leaf = device_path.rsplit("/", 1)[-1]
    return leaf[4:].replace("_", ":") if leaf.startswith("dev_") else ""


PasskeyShown = Callable[[str, int], bool]
"""Told ``(address, passkey)`` when a passkey is to be shown to the grower; True when
someone will show it (a callback is set), else the agent logs it."""

BondSeen = Callable[["BondedDevice", bool], None]
"""Told ``(device, new)`` when a device is paired: ``new`` when we saw it become paired,
False when it already was when we first saw it (a bond from before we started)."""

BondMade = Callable[["BondedDevice", bool, bool], None]
"""Told ``(device, new, ours)``: as :data:`BondSeen`, and whether our agent admitted it."""


@attrs.define
class PairingAttempt:
    """One pairing request and what became of it."""

    device: str
    address: str
    request: str
    outcome: str
    reason: str = ""
    at: float = attrs.Factory(time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "address": self.address, "request": self.request,
                "outcome": self.outcome, "reason": self.reason, "at": self.at}


@attrs.define
class BondedDevice:
    """A device bluetoothd reports on our adapter, with its pairing state."""

    path: str
    address: str = ""
    paired: bool = False
    bonded: bool = False
    trusted: bool = False
    connected: bool = False
    name: str = ""
    """As the phone named itself, made printable (:func:`mushpi_ble.text.printable`)."""
    last_seen: float | None = None
    """Wall time of the last connect or disconnect we saw (None: not since we started)."""

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "address": self.address, "name": self.name,
                "paired": self.paired, "bonded": self.bonded, "trusted": self.trusted,
                "connected": self.connected, "last_seen": self.last_seen}


class PairingLog:
    """Bounded history of attempts, counters that only grow, and the bonded devices.

    Outcomes: ``accepted`` (the agent said yes; pairing still running),
    ``paired`` (Device1 ``Paired`` became true), ``rejected``, ``canceled``
    (bluetoothd's Cancel, e.g. its 60 s agent timeout), ``failed`` (accepted,
    then the link dropped unpaired), ``displayed`` (a passkey shown).
    """

    COUNTERS = ("requests", ACCEPTED, REFUSED, CANCELLED, PAIRED, FAILED)

    def __init__(self, history: int = HISTORY) -> None:
        self.attempts: deque[PairingAttempt] = deque(maxlen=history)
        self.counters: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)
        self.devices: dict[str, BondedDevice] = {}
        self.passkey: dict[str, Any] | None = None
        """The passkey last shown: address, passkey, at (wall time)."""
        self.on_paired: BondSeen | None = None
        self.on_failed: Callable[[str], None] | None = None
        """Told the device path of an accepted attempt that came to nothing."""

    def _latest_open(self, device: str | None = None) -> PairingAttempt | None:
        for attempt in reversed(self.attempts):
            if device is None or attempt.device == device:
                return attempt if attempt.outcome in (ACCEPTED, DISPLAYED) else None
        return None

    def request(self, request: PairingRequest, decision: Decision) -> PairingAttempt:
        shown = request.kind in (DISPLAY_PASSKEY, DISPLAY_PIN_CODE)
        outcome = (REFUSED if not decision.accept else DISPLAYED if shown else ACCEPTED)
        attempt = PairingAttempt(request.device, address_of(request.device), request.kind,
                                 outcome, decision.reason)
        self.attempts.append(attempt)
        self.counters["requests"] += 1
        if outcome in (ACCEPTED, REFUSED):
            self.counters[outcome] += 1
        return attempt

    def cancelled(self) -> None:
        """bluetoothd gave up on the request in flight (no device is named)."""
        self.counters[CANCELLED] += 1
        attempt = self._latest_open()
        if attempt is not None:
            attempt.outcome = CANCELLED
            attempt.reason = "cancelled by bluetoothd"
            if self.on_failed is not None:
                self.on_failed(attempt.device)

    def _device_changed(self, device: BondedDevice, props: Mapping[str, Any],
                        found: bool) -> None:
        was_paired = device.paired or device.bonded
        if "Address" in props:
            device.address = str(props["Address"])
        for key in ("Name", "Alias"):  # Alias falls back to the address: Name wins
            if key in props and (key == "Name" or not device.name):
                device.name = printable(str(props[key]))
        if "Connected" in props and (bool(props["Connected"]) or device.connected):
            device.last_seen = time.time()
        for name in ("paired", "bonded", "trusted", "connected"):
            key = name.capitalize()
            if key in props:
                setattr(device, name, bool(props[key]))
        attempt = self._latest_open(device.path)
        if (device.paired or device.bonded) and not was_paired:
            self.counters[PAIRED] += 1
            if attempt is not None:
                attempt.outcome = PAIRED
            log.info("device paired device=%s address=%s bonded=%s", device.path,
                     device.address or "-", device.bonded)
            if self.passkey is not None and self.passkey["address"] == device.address:
                self.passkey = None  # typed and used: no longer to be shown
            if self.on_paired is not None:
                self.on_paired(device, not found)
        elif "Connected" in props and not device.connected and attempt is not None \
                and not device.paired:
            attempt.outcome = FAILED
            attempt.reason = "disconnected before pairing completed"
            self.counters[FAILED] += 1
            if self.on_failed is not None:
                self.on_failed(device.path)

    def update_device(self, path: str, props: Mapping[str, Any], *,
                      found: bool = False) -> None:
        """``props`` changed; ``found``: the device was just found as it is (read at
        start, or announced by InterfacesAdded) rather than seen changing."""
        device = self.devices.setdefault(path, BondedDevice(path, address_of(path)))
        self._device_changed(device, props, found)

    def remove_device(self, path: str) -> None:
        """bluetoothd forgot ``path`` (its InterfacesRemoved, or our RemoveDevice's reply)."""
        device = self.devices.pop(path, None)
        if device is not None and device.paired:
            log.info("device forgotten device=%s address=%s", path, device.address or "-")

    def clear_devices(self) -> None:
        self.devices.clear()

    @property
    def bonded(self) -> list[BondedDevice]:
        return [d for d in self.devices.values() if d.paired or d.bonded]

    def is_bonded(self, path: str) -> bool:
        device = self.devices.get(path)
        return device is not None and (device.paired or device.bonded)

    def shown(self, address: str, passkey: int) -> None:
        self.passkey = {"address": address, "passkey": f"{passkey:06d}", "at": time.time()}

    def snapshot(self) -> dict[str, Any]:
        """Plain data; safe from another thread (each copy is one C-level call)."""
        attempts, devices, passkey = list(self.attempts), list(self.devices.values()), \
            self.passkey
        if passkey is not None and time.time() - passkey["at"] > PASSKEY_SHOWN_S:
            passkey = None
        return {
            **dict(self.counters),
            "recent": [a.as_dict() for a in attempts],
            "bonded_devices": [d.as_dict() for d in devices if d.paired or d.bonded],
            "passkey": passkey,
        }


class PairingAgent(ExportedObject):
    """Our ``org.bluez.Agent1`` object; registered as bluetoothd's default agent.

    Handlers answer inline (a policy decides without I/O). Only the current
    owner of ``org.bluez`` may call them; anyone else gets ``AccessDenied``.
    """

    def __init__(self, conn: Connection, path: str, policy: PairingPolicy, *,
                 log_: PairingLog | None = None, allowed_caller: str | None = BLUEZ,
                 on_release: Callable[[], None] | None = None,
                 on_passkey: PasskeyShown | None = None) -> None:
        if policy.capability not in CAPABILITIES:
            raise ValueError(f"capability {policy.capability!r} is not one of {CAPABILITIES}")
        super().__init__(conn, path)
        self.policy = policy
        self.log = log_ if log_ is not None else PairingLog()
        self._allowed_caller = allowed_caller
        self._on_release = on_release
        self.on_passkey = on_passkey
        self.registered_with: str | None = None
        self._asked = False  # RegisterAgent sent to the current bluetoothd, answer or not
        self.releases = 0
        self.adapter_path: str | None = None
        """Requests about devices of other adapters are refused: the default agent is
        asked about every adapter of bluetoothd, and only ours is ours to decide."""

    @property
    def registered(self) -> bool:
        return self.registered_with is not None

    def _interface(self) -> Interface:
        return Interface(AGENT_IFACE, allowed_caller=self._allowed_caller, methods=[
            Method(REQUEST_AUTHORIZATION, "o", handler=self._authorization,
                   arg_names=["device"]),
            Method(REQUEST_CONFIRMATION, "ou", handler=self._confirmation,
                   arg_names=["device", "passkey"]),
            Method(AUTHORIZE_SERVICE, "os", handler=self._authorize_service,
                   arg_names=["device", "uuid"]),
            Method(DISPLAY_PASSKEY, "ouq", handler=self._display_passkey,
                   arg_names=["device", "passkey", "entered"]),
            Method(REQUEST_PASSKEY, "o", "u", handler=self._request_passkey,
                   arg_names=["device"], out_names=["passkey"]),
            Method(REQUEST_PIN_CODE, "o", "s", handler=self._request_pin_code,
                   arg_names=["device"], out_names=["pincode"]),
            Method(DISPLAY_PIN_CODE, "os", handler=self._display_pin_code,
                   arg_names=["device", "pincode"]),
            Method("Cancel", handler=self._cancel),
            Method("Release", handler=self._release),
        ])

    # -- requests ----------------------------------------------------------------
    def _answer(self, request: PairingRequest) -> None:
        adapter = self.adapter_path
        if adapter is not None and not request.device.startswith(adapter + "/"):
            decision = Decision.no(f"{request.device} is not a device of {adapter}")
        else:
            decision = self.policy.decide(request)
        attempt = self.log.request(request, decision)
        log.info("pairing request %s device=%s address=%s mode=%s outcome=%s%s",
                 request.kind, request.device, attempt.address or "-", self.policy.mode,
                 attempt.outcome, f" reason={decision.reason}" if decision.reason else "")
        if not decision.accept:
            raise DBusError(REJECTED, decision.reason or "Rejected")

    def _authorization(self, _ctx: CallContext, device: str) -> None:
        self._answer(PairingRequest(REQUEST_AUTHORIZATION, device))

    def _confirmation(self, _ctx: CallContext, device: str, passkey: int) -> None:
        self._answer(PairingRequest(REQUEST_CONFIRMATION, device, passkey=passkey))

    def _authorize_service(self, _ctx: CallContext, device: str, uuid: str) -> None:
        self._answer(PairingRequest(AUTHORIZE_SERVICE, device, uuid=uuid))

    def _display_passkey(self, _ctx: CallContext, device: str, passkey: int,
                         entered: int) -> None:
        # bluetoothd expects no reply: a refusal withholds the passkey (and records it)
        request = PairingRequest(DISPLAY_PASSKEY, device, passkey=passkey)
        adapter = self.adapter_path
        if adapter is not None and not device.startswith(adapter + "/"):
            decision = Decision.no(f"{device} is not a device of {adapter}")
        else:
            decision = self.policy.decide(request)
        attempt = self.log.request(request, decision)
        if not decision.accept:
            log.info("pairing passkey withheld device=%s address=%s reason=%s", device,
                     attempt.address or "-", decision.reason)
            return
        if entered:  # the phone reports keystrokes: the same passkey again
            return
        self.log.shown(attempt.address, passkey)
        # whoever reads the log in range could pair in the grower's place: the passkey
        # goes to the log only when nobody else will show it
        if self.on_passkey is not None and self.on_passkey(attempt.address, passkey):
            log.info("pairing passkey shown device=%s address=%s to=on_pairing_passkey",
                     device, attempt.address or "-")
            return
        log.warning("pairing passkey device=%s address=%s passkey=%06d (no "
                    "on_pairing_passkey callback: shown here, so anyone who can read this "
                    "journal may type it while the window is open)", device,
                    attempt.address or "-", passkey)

    def _request_passkey(self, _ctx: CallContext, device: str) -> int:
        self._answer(PairingRequest(REQUEST_PASSKEY, device))
        raise DBusError(REJECTED, "no passkey to give")

    def _request_pin_code(self, _ctx: CallContext, device: str) -> str:
        self._answer(PairingRequest(REQUEST_PIN_CODE, device))
        raise DBusError(REJECTED, "no PIN code to give")

    def _display_pin_code(self, _ctx: CallContext, device: str, _pincode: str) -> None:
        self._answer(PairingRequest(DISPLAY_PIN_CODE, device))

    def _cancel(self, _ctx: CallContext) -> None:
        self.log.cancelled()
        log.info("pairing request cancelled by bluetoothd")

    def _release(self, _ctx: CallContext) -> None:
        self.releases += 1
        self.registered_with = None
        log.info("pairing agent released by bluetoothd path=%s", self.path)
        if self._on_release is not None:
            self._on_release()

    # -- lifetime ------------------------------------------------------------------
    async def register(self, *, timeout: float) -> None:
        """RegisterAgent + RequestDefaultAgent on the current bluetoothd.

        Safe to call again (after a restart, or twice): ``AlreadyExists``
        from the same bluetoothd means this connection's agent is there.
        """
        self.export()
        owner = await self._conn.get_name_owner(BLUEZ)
        self._asked = True
        try:
            await self._conn.call(BLUEZ, AGENT_MANAGER_PATH, AGENT_MANAGER_IFACE,
                                  "RegisterAgent", "os", (self.path, self.policy.capability),
                                  timeout=timeout)
        except DBusError as exc:
            if exc.name != ALREADY_EXISTS:
                raise
        await self._conn.call(BLUEZ, AGENT_MANAGER_PATH, AGENT_MANAGER_IFACE,
                              "RequestDefaultAgent", "o", (self.path,), timeout=timeout)
        self.registered_with = owner
        log.info("pairing agent registered path=%s mode=%s capability=%s bluez=%s", self.path,
                 self.policy.mode, self.policy.capability, owner)

    async def unregister(self, *, timeout: float) -> None:
        """UnregisterAgent under a shielded, bounded scope; then stop answering."""
        asked = self._asked or self.registered_with is not None
        self.registered_with, self._asked = None, False
        with trio.move_on_after(timeout) as scope:
            scope.shield = True
            if asked:  # a stop may overtake RegisterAgent's reply
                try:
                    await self._conn.call(BLUEZ, AGENT_MANAGER_PATH, AGENT_MANAGER_IFACE,
                                          "UnregisterAgent", "o", (self.path,), timeout=timeout)
                    log.info("pairing agent unregistered path=%s", self.path)
                except DBusError as exc:
                    if exc.name != DOES_NOT_EXIST:
                        log.warning("pairing agent unregister failed error=%s", exc)
        self.unexport()

    def forget_registration(self) -> None:
        """bluetoothd went away: whatever it knew of us is gone with it."""
        self.registered_with = None
        self._asked = False


def agent_path(app_root: str) -> str:
    """Beside the GATT application, not under it: bluetoothd watches the app's subtree."""
    parent = app_root.rsplit("/", 1)[0]
    return (parent or "") + "/agent0"


async def follow_bonds(conn: Connection, adapter_path: str, pairing_log: PairingLog, *,
                       timeout: float,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Keep ``pairing_log.devices`` current from bluetoothd's Device1 objects.

    Subscribes first, then reads the current state, then follows
    InterfacesAdded/Removed and PropertiesChanged in the order bluetoothd sent them.
    """
    def mine(path: str) -> bool:
        return path.startswith(adapter_path + "/dev_")

    om_rule = MatchRule(sender=BLUEZ, path="/", interface=OBJECT_MANAGER)
    pc_rule = MatchRule(sender=BLUEZ, path_namespace=adapter_path, interface=PROPERTIES,
                        member="PropertiesChanged", arg0=DEVICE_IFACE)
    async with conn.subscribe(om_rule, pc_rule) as signals:
        pairing_log.clear_devices()
        for path, ifaces in (await managed_objects(conn, timeout=timeout)).items():
            if DEVICE_IFACE in ifaces and mine(path):
                pairing_log.update_device(path, _plain(ifaces[DEVICE_IFACE]), found=True)
        task_status.started()
        async for signal in signals:
            _apply_signal(signal, pairing_log, mine)


def _plain(props: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
    return {k: v[1] for k, v in props.items()}


def _apply_signal(signal: SignalMessage, pairing_log: PairingLog,
                  mine: Callable[[str], bool]) -> None:
    if signal.member == "InterfacesAdded":
        path, ifaces = signal.body
        if DEVICE_IFACE in ifaces and mine(path):
            pairing_log.update_device(path, _plain(ifaces[DEVICE_IFACE]), found=True)
    elif signal.member == "InterfacesRemoved":
        path, names = signal.body
        if DEVICE_IFACE in names and mine(path):
            pairing_log.remove_device(path)
    elif signal.member == "PropertiesChanged" and mine(signal.path):
        _iface, changed, _invalidated = signal.body
        pairing_log.update_device(signal.path, _plain(changed))


class Pairing:
    """The agent of one pairing mode, its log, and the bond follower, for a supervisor.

    ``register`` after every bluetoothd (re)start, ``forget`` when it goes,
    ``unregister`` on stop; ``run_bonds`` lives as long as one adapter
    session. With mode "off" no agent is exported or registered, but bonds
    are still followed and shown.
    """

    def __init__(self, conn: Connection, path: str, mode: str, *,
                 history: int = HISTORY, allowed_caller: str | None = BLUEZ,
                 window: PairingWindow | None = None,
                 on_passkey: PasskeyShown | None = None,
                 on_bond: BondMade | None = None) -> None:
        self.mode = mode
        self.window = window if window is not None else PairingWindow()
        self.log = PairingLog(history)
        self._on_bond = on_bond
        self.log.on_paired = self._paired
        self.log.on_failed = self.window.release
        policy = policy_for_mode(mode, self.window)
        self.agent = (PairingAgent(conn, path, policy, log_=self.log,
                                   allowed_caller=allowed_caller, on_passkey=on_passkey)
                      if policy is not None else None)
        self._conn = conn
        self.last_error: str | None = None

    @property
    def registered(self) -> bool:
        return self.agent is not None and self.agent.registered

    def _paired(self, device: BondedDevice, new: bool) -> None:
        """A bond is ours only when our agent admitted it in the window it paired in."""
        ours = new and self.mode in ("window", "passkey") and self.window.bonded(device.path)
        if self._on_bond is not None:
            self._on_bond(device, new, ours)

    async def register(self, *, timeout: float, adapter_path: str | None = None) -> None:
        """Register the agent (deciding for ``adapter_path``'s devices only); a refusal
        is logged and kept, never fatal to serving.

        A timeout or a lost connection is raised: worth another try later.
        """
        if self.agent is None:
            return
        self.agent.adapter_path = adapter_path
        try:
            await self.agent.register(timeout=timeout)
            self.last_error = None
        except (CallTimeout, ConnectionLost) as exc:
            self.last_error = f"{exc.name}: {exc.text}"
            raise
        except DBusError as exc:
            self.last_error = f"{exc.name}: {exc.text}"
            log.warning("pairing agent not registered error=%s", self.last_error)

    def forget(self) -> None:
        if self.agent is not None:
            self.agent.forget_registration()

    async def unregister(self, *, timeout: float) -> None:
        if self.agent is not None:
            await self.agent.unregister(timeout=timeout)

    async def run_bonds(self, adapter_path: str, *, timeout: float,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await follow_bonds(self._conn, adapter_path, self.log, timeout=timeout,
                           task_status=task_status)

    @staticmethod
    def idle_snapshot(mode: str, window: PairingWindow | None = None) -> dict[str, Any]:
        """The snapshot before the peripheral runs: nothing registered, nothing seen."""
        return {"mode": mode, "agent_registered": False, "capability": None,
                "agent_error": None, "window": (window or PairingWindow()).snapshot(),
                **PairingLog().snapshot()}

    def snapshot(self) -> dict[str, Any]:
        """``get_status()["pairing"]``."""
        return {
            "mode": self.mode,
            "agent_registered": self.registered,
            "capability": self.agent.policy.capability if self.agent is not None else None,
            "agent_error": self.last_error,
            "window": self.window.snapshot(),
            **self.log.snapshot(),
        }


__all__ = [
    "AUTHORIZE_SERVICE", "CAPABILITIES", "DISPLAY_PASSKEY", "DISPLAY_PIN_CODE", "MAX_WINDOW_S",
    "PAIRING_MODES", "REQUEST_AUTHORIZATION", "REQUEST_CONFIRMATION", "REQUEST_PASSKEY",
    "REQUEST_PIN_CODE", "WINDOW_CLOSED", "BondMade", "BondSeen", "BondedDevice", "Decision",
    "JustWorksPolicy", "Pairing", "PairingAgent", "PairingLog", "PairingPolicy",
    "PairingRequest", "PairingWindow", "PasskeyPolicy", "WindowPolicy", "address_of",
    "agent_path", "follow_bonds", "policy_for_mode",
]
