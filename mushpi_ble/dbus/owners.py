"""Which unique name owns a well-known name, kept current from NameOwnerChanged.

Callers restricted to a well-known name, and signal subscriptions naming
one as sender, need its current owner; each watched name costs one match
rule and one GetNameOwner, set up once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from trio_util import AsyncValue

from .calls import BUS_NAME, Calls
from .errors import NAME_HAS_NO_OWNER, DBusError
from .match import MatchRule

log = logging.getLogger(__name__)


class NameOwners:
    """The owners of the well-known names one connection watches."""

    def __init__(self, calls: Calls,
                 lookup: Callable[[str], Awaitable[str]] | None = None) -> None:
        """``lookup`` asks the bus who owns a name; :meth:`get_name_owner` by default."""
        self._calls = calls
        self._lookup = lookup or self.get_name_owner
        self._owners: dict[str, AsyncValue[str]] = {}
        self._ready: dict[str, trio.Event] = {}
        self._changes: dict[str, int] = {}
        self.nursery: trio.Nursery | None = None  # for watches started without waiting

    async def get_name_owner(self, name: str) -> str:
        """The unique name owning ``name`` now, asked of the bus ("" if none)."""
        try:
            return str(await self._calls.call_bus("GetNameOwner", "s", (name,)))
        except DBusError as exc:
            if exc.name == NAME_HAS_NO_OWNER:
                return ""
            raise

    def ensure_watch(self, name: str) -> None:
        """Start watching ``name`` in the background unless already watched."""
        if name not in self._owners and self.nursery is not None:
            self.nursery.start_soon(self._watch_in_background, name)

    async def _watch_in_background(self, name: str) -> None:
        try:
            await self.watch(name)
        except DBusError as exc:  # callers restricted to ``name`` stay refused meanwhile
            log.warning("cannot follow the owner of name=%s error=%s", name, exc)

    async def watch(self, name: str) -> AsyncValue[str]:
        """An :class:`AsyncValue` holding the unique name owning ``name`` ("" if none).

        Kept current from ``NameOwnerChanged``; watching is set up once per name.
        A NameOwnerChanged that arrives while GetNameOwner is in flight is
        newer than its answer, so the answer is then dropped.
        """
        value = self._owners.get(name)
        if value is not None:
            await self._ready[name].wait()
            return value
        value = AsyncValue("")
        ready = trio.Event()
        self._owners[name] = value
        self._ready[name] = ready
        rule = MatchRule(sender=BUS_NAME, interface=BUS_NAME, member="NameOwnerChanged", arg0=name)
        try:
            await self._calls.call_bus("AddMatch", "s", (rule.to_string(),))
            changes_before = self._changes.get(name, 0)
            owner = await self._lookup(name)
            if self._changes.get(name, 0) == changes_before:
                value.value = owner
        except BaseException:
            del self._owners[name]
            del self._ready[name]
            ready.set()  # wake other waiters; they see "" (unknown)
            raise
        ready.set()
        return value

    def current(self, name: str) -> str | None:
        """The tracked owner of ``name``, or None when it is not tracked yet."""
        if name.startswith(":") or name == BUS_NAME:
            return name
        ready = self._ready.get(name)
        if ready is None or not ready.is_set():
            return None
        return str(self._owners[name].value)

    def on_name_owner_changed(self, body: tuple[Any, ...]) -> None:
        """Record the bus daemon's NameOwnerChanged(name, old, new) for a watched name."""
        name, _old, new = body
        watched = self._owners.get(name)
        if watched is not None:
            self._changes[name] = self._changes.get(name, 0) + 1
            watched.value = new
