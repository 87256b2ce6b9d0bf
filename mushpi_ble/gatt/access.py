"""Who may read and write: flags that make bluetoothd demand a bond, and our own check.

``bonded`` access does two things, in this order of strength:

* the characteristic's flags ask bluetoothd for an encrypted link
  (``encrypt-write``, or ``encrypt-authenticated-write`` when pairing needs
  a passkey); bluetoothd then refuses an unencrypted request with the ATT
  error that makes a phone's OS pair and retry, and the request never
  reaches us;
* as defence in depth, a request that does reach us from a device
  bluetoothd does not report as paired (``Device1.Paired``/``Bonded``) is
  refused with ``org.bluez.Error.NotAuthorized`` before any handler runs;
* a bond in bluetoothd is not proof that *our* agent approved it (another
  local client may hold the default agent slot; the kernel accepts BR/EDR
  Just Works by itself; bonds may predate bonded access), so the owner's
  ``approved`` lookup must also say yes;
* a request over anything but LE (``link`` present and not ``LE``) is
  refused: over BR/EDR the bond may be one the kernel made without asking.

What the gate knows of bonds comes from bluetoothd's signals (a lookup
the owner supplies); a device not known as paired is asked about once
more, ``Properties.GetAll(Device1)`` under a deadline, because the retried
write of a phone that just paired may overtake the ``Paired`` signal.

Knows BlueZ; nothing of MushPi.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args

import attrs

from mushpi_ble.dbus import Connection, DBusError
from mushpi_ble.lograte import LogRate, RateLimitedLog

from .errors import NOT_AUTHORIZED, GattError
from .names import BLUEZ, DEVICE_IFACE, PROPERTIES

log = logging.getLogger(__name__)

AccessMode = Literal["open", "bonded"]
ACCESS_MODES: tuple[str, ...] = get_args(AccessMode)

READ, WRITE = "read", "write"

# reasons a request is refused, as counted and logged
NO_DEVICE = "no-device"
NOT_BONDED = "not-bonded"
NOT_APPROVED = "not-approved"
NOT_LE = "not-le"
REASONS = (NOT_BONDED, NOT_APPROVED, NOT_LE, NO_DEVICE)
LE = "LE"

_PLAIN = {"read": READ, "write": WRITE, "notify": READ, "indicate": READ}
_ENCRYPTED = {
    False: {"read": "encrypt-read", "write": "encrypt-write", "notify": "encrypt-notify",
            "indicate": "encrypt-indicate"},
    True: {"read": "encrypt-authenticated-read", "write": "encrypt-authenticated-write",
           "notify": "encrypt-authenticated-notify",
           "indicate": "encrypt-authenticated-indicate"},
}

BondLookup = Callable[[str], bool]
"""Is this device path known as paired or bonded right now (from bluetoothd's signals)?
Also the form of the ``approved`` lookup: did the owner approve this device's bond?"""


@attrs.frozen
class AccessRules:
    """Read and write access, and whether a bond must be authenticated (a passkey)."""

    read: AccessMode = "open"
    write: AccessMode = "open"
    authenticated: bool = False

    def __attrs_post_init__(self) -> None:
        for kind, mode in ((READ, self.read), (WRITE, self.write)):
            if mode not in ACCESS_MODES:
                raise ValueError(f"{kind} access {mode!r}: allowed {', '.join(ACCESS_MODES)}")

    def mode(self, kind: str) -> AccessMode:
        return self.read if kind == READ else self.write

    def flags(self, flags: Iterable[str]) -> tuple[str, ...]:
        """The flags bluetoothd should enforce: plain ``read``/``write``/``notify``/
        ``indicate`` become their encrypted forms where access is bonded. A flag
        that already names a security level is left as it is."""
        out: list[str] = []
        for flag in flags:
            kind = _PLAIN.get(flag)
            if kind is not None and self.mode(kind) == "bonded":
                flag = _ENCRYPTED[self.authenticated][flag]
            if flag not in out:
                out.append(flag)
        return tuple(out)


class AccessGate:
    """Refuses requests of devices that are not bonded, where access is bonded.

    ``bonded(path)`` answers from what the owner follows; ``conn`` is asked
    when it says no. Refusals are counted by reason and logged once per
    device and reason (then counted, within the log budget).
    """

    def __init__(self, rules: AccessRules, bonded: BondLookup, *,
                 approved: BondLookup | None = None,
                 conn: Connection | None = None, timeout: float = 1.0,
                 on_bond_seen: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.rules = rules
        self._bonded = bonded
        self._approved = approved
        self._conn = conn
        self._timeout = timeout
        self._on_bond_seen = on_bond_seen
        self.refused: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.refused_by_kind: dict[str, int] = {READ: 0, WRITE: 0}
        self.checks = 0
        """Requests that needed bluetoothd's answer (not known as bonded from signals)."""
        self._logged = RateLimitedLog(log, "access refusals",
                                      LogRate(burst=1, window=3600.0, max_keys=1024))

    def attach(self, conn: Connection, *, timeout: float) -> None:
        self._conn, self._timeout = conn, timeout

    def guards(self, kind: str) -> bool:
        return self.rules.mode(kind) == "bonded"

    async def check(self, kind: str, device: str, label: str, link: str = "") -> None:
        """Return when ``device`` may make a ``kind`` request over ``link`` (bluetoothd's
        option; "" when it sent none); else raise NotAuthorized."""
        if not self.guards(kind):
            return
        if link and link != LE:
            self._refuse(kind, NOT_LE, device, label)
        if not device:
            self._refuse(kind, NO_DEVICE, device, label)
        if not (self._bonded(device) or await self._ask(device)):
            self._refuse(kind, NOT_BONDED, device, label)
        if self._approved is not None and not self._approved(device):
            self._refuse(kind, NOT_APPROVED, device, label)

    async def _ask(self, device: str) -> bool:
        if self._conn is None:
            return False
        self.checks += 1
        try:
            (props,) = await self._conn.call(BLUEZ, device, PROPERTIES, "GetAll", "s",
                                             (DEVICE_IFACE,), timeout=self._timeout)
        except DBusError as exc:
            log.info("bond check failed device=%s error=%s", device, exc.name)
            return False
        plain = {k: v[1] for k, v in props.items()}
        if self._on_bond_seen is not None:
            self._on_bond_seen(device, plain)
        return bool(plain.get("Paired")) or bool(plain.get("Bonded"))

    def _refuse(self, kind: str, reason: str, device: str, label: str) -> None:
        self.refused[reason] += 1
        self.refused_by_kind[kind] += 1
        self._logged.log(f"{device or '-'} {reason} {kind}", logging.WARNING,
                         "%s refused characteristic=%s device=%s reason=%s access=bonded",
                         kind, label, device or "-", reason)
        raise GattError(NOT_AUTHORIZED, f"{kind} needs an approved bond over LE ({reason})")

    def snapshot(self) -> dict[str, Any]:
        return {"read": self.rules.read, "write": self.rules.write,
                "authenticated": self.rules.authenticated,
                "refused": dict(self.refused), "refused_reads": self.refused_by_kind[READ],
                "refused_writes": self.refused_by_kind[WRITE], "bond_checks": self.checks}
