"""A small management interface on the peripheral's own D-Bus connection.

``mushpi-ble pair`` and ``mushpi-ble bonds`` reach the running peripheral
here: the connection owns the well-known name :data:`BUS_NAME` and exports
:data:`INTERFACE` at :data:`PATH`. Anyone may see it exists (Introspect);
every method asks the bus daemon who the caller is
(``GetConnectionUnixUser``) and refuses everyone but root and the user the
peripheral runs as with ``AccessDenied``. On the system bus, owning the name
and calling it need a D-Bus policy file (``mushpi-ble dbus-policy``); without
it the peripheral serves as always and says why the interface is missing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import attrs

from .dbus import CallContext, Connection, DBusError, Interface, Method
from .errors import AlreadyServing
from .management_api import (
    ACCESS_DENIED,
    BUS_NAME,
    INTERFACE,
    INVALID_ARGS,
    PATH,
    policy_file,
)

log = logging.getLogger(__name__)

NAME_DO_NOT_QUEUE = 4
PRIMARY_OWNER, EXISTS, ALREADY_OWNER = 1, 3, 4


class Controls(Protocol):
    """What the interface drives: the peripheral's pairing window and bonds."""

    def open_pairing_window(self, seconds: float) -> float: ...

    def close_pairing_window(self) -> None: ...

    def bonds(self) -> list[dict[str, Any]]: ...

    async def remove_bond(self, address: str) -> None: ...

    async def approve_bond(self, address: str) -> None: ...


@attrs.define
class ManagementStatus:
    """Whether the name is ours, and the callers refused."""

    state: str = "not started"
    refused_callers: int = 0
    calls: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"name": BUS_NAME, "state": self.state, "calls": self.calls,
                "refused_callers": self.refused_callers}


class Management:
    """The exported object; ``start`` exports it and asks for the name."""

    def __init__(self, conn: Connection, controls: Controls, *, adapter: str = "",
                 status: Callable[[], dict[str, Any]] | None = None,
                 allowed_uids: frozenset[int] | None = None) -> None:
        self._conn = conn
        self.adapter = adapter
        self._controls = controls
        self._status = status
        self.allowed_uids = (allowed_uids if allowed_uids is not None
                             else frozenset({0, os.geteuid()}))
        self.status = ManagementStatus()

    def _interface(self) -> Interface:
        return Interface(INTERFACE, methods=[
            Method("OpenPairingWindow", "u", "d", handler=self._open,
                   arg_names=["seconds"], out_names=["until"]),
            Method("ClosePairingWindow", handler=self._close),
            Method("ListBonds", "", "s", handler=self._bonds, out_names=["bonds_json"]),
            Method("RemoveBond", "s", handler=self._remove, arg_names=["address"]),
            Method("ApproveBond", "s", handler=self._approve, arg_names=["address"]),
            Method("GetStatus", "", "s", handler=self._get_status, out_names=["status_json"]),
            Method("Adapter", "", "s", handler=self._adapter, out_names=["adapter"]),
        ])

    async def start(self) -> None:
        """Export, then own :data:`BUS_NAME`; a refusal is kept in the status, never raised."""
        self._conn.export(PATH, [self._interface()])
        try:
            result = await self._conn.request_name(BUS_NAME, NAME_DO_NOT_QUEUE)
        except DBusError as exc:
            # the policy lets another user own it: a peripheral of that user's may hold it
            if await self._conn.call_bus("NameHasOwner", "s", (BUS_NAME,)):
                await self._beside_another()
                return
            self.status.state = (f"unavailable: the bus refused the name {BUS_NAME} "
                                 f"({exc.name}); install the D-Bus policy "
                                 "(mushpi-ble dbus-policy)")
            log.warning("management interface unavailable name=%s error=%s: %s", BUS_NAME,
                        exc.name, exc.text)
            return
        if result in (PRIMARY_OWNER, ALREADY_OWNER):
            self.status.state = "serving"
            log.info("management interface serving name=%s path=%s", BUS_NAME, PATH)
        else:
            await self._beside_another()

    async def _beside_another(self) -> None:
        """Another process owns :data:`BUS_NAME`: on our adapter (or one it does not
        tell us, e.g. its user's policy keeps us from asking) we must not start."""
        other = await self._other_owner()
        if other.adapter in ("", self.adapter):
            raise AlreadyServing(
                f"another mushpi-ble peripheral already serves adapter "
                f"{other.adapter or self.adapter} ({BUS_NAME} is owned by "
                f"{other.describe()}): stop it first; two would register two GATT "
                "applications and adverts on one adapter")
        self.status.state = (f"unavailable: {BUS_NAME} is owned by the peripheral of "
                             f"adapter {other.adapter} ({other.describe()})")
        log.warning("management interface unavailable: name %s belongs to the "
                    "peripheral of adapter %s (%s)", BUS_NAME, other.adapter,
                    other.describe())

    async def _other_owner(self) -> _Owner:
        """Who owns :data:`BUS_NAME`: its process and the adapter it serves ("" when it
        does not say, which counts as ours)."""
        owner = _Owner(await self._conn.get_name_owner(BUS_NAME) or "?")
        try:
            owner.pid = int(await self._conn.call_bus("GetConnectionUnixProcessID", "s",
                                                      (owner.name,)))
            owner.command = _command_line(owner.pid)
        except DBusError:
            pass
        try:
            reply = await self._conn.call(BUS_NAME, PATH, INTERFACE, "Adapter")
            owner.adapter = str(reply[0])
        except DBusError:
            pass
        return owner

    def stop(self) -> None:
        self._conn.unexport(PATH)

    async def _authorize(self, ctx: CallContext) -> None:
        self.status.calls += 1
        uid = int(await self._conn.call_bus("GetConnectionUnixUser", "s", (ctx.sender,)))
        if uid not in self.allowed_uids:
            self.status.refused_callers += 1
            log.warning("management call refused member=%s sender=%s uid=%d", ctx.member,
                        ctx.sender, uid)
            raise DBusError(ACCESS_DENIED, f"uid {uid} may not manage this peripheral "
                                           "(root or the service's own user only)")

    async def _open(self, ctx: CallContext, seconds: int) -> float:
        await self._authorize(ctx)
        try:
            return self._controls.open_pairing_window(float(seconds))
        except ValueError as exc:
            raise DBusError(INVALID_ARGS, str(exc)) from None

    async def _close(self, ctx: CallContext) -> None:
        await self._authorize(ctx)
        self._controls.close_pairing_window()

    async def _bonds(self, ctx: CallContext) -> str:
        await self._authorize(ctx)
        return json.dumps(self._controls.bonds())

    async def _adapter(self, ctx: CallContext) -> str:
        """Which adapter this peripheral serves: a second one asks before it refuses."""
        return self.adapter

    async def _remove(self, ctx: CallContext, address: str) -> None:
        await self._authorize(ctx)
        try:
            await self._controls.remove_bond(address)
        except ValueError as exc:
            raise DBusError(INVALID_ARGS, str(exc)) from None

    async def _approve(self, ctx: CallContext, address: str) -> None:
        await self._authorize(ctx)
        try:
            await self._controls.approve_bond(address)
        except ValueError as exc:
            raise DBusError(INVALID_ARGS, str(exc)) from None

    async def _get_status(self, ctx: CallContext) -> str:
        """The running peripheral's status, as ``get_status()`` and the live view see it."""
        await self._authorize(ctx)
        return json.dumps(self._status() if self._status is not None else {}, default=str)

@attrs.define
class _Owner:
    name: str
    pid: int | None = None
    command: str = ""
    adapter: str = ""

    def describe(self) -> str:
        if self.pid is None:
            return f"connection {self.name}"
        return f"process {self.pid}" + (f" `{self.command}`" if self.command else "")


def _command_line(pid: int) -> str:
    """The process's command line, when /proc shows it (not across users under
    ProtectProc=invisible)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


__all__ = ["BUS_NAME", "INTERFACE", "PATH", "Controls", "Management", "ManagementStatus",
           "policy_file"]
