"""Signal subscriptions: match rules on the bus, one bounded channel each.

The bus daemon filters what reaches the connection by the match rules
added here; locally, each received signal goes to every subscription with
a matching rule. A full channel makes the receive loop wait a little
(back-pressure), then the signal is dropped and counted. Leaving a
subscription removes its rules from the bus even when cancelled.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from jeepney.low_level import HeaderFields, Message

from .calls import BUS_NAME, BUS_PATH, Calls
from .errors import ConnectionLost
from .match import MatchRule
from .owners import NameOwners
from .stats import ConnectionStats

log = logging.getLogger(__name__)


@attrs.frozen
class SignalMessage:
    """A received signal, as delivered to a subscription."""

    sender: str
    path: str
    interface: str
    member: str
    signature: str
    body: tuple[Any, ...]


@attrs.define
class Subscription:
    """Live match rules and their one bounded delivery channel; counts overflow.

    Several rules may share the channel: their signals then arrive in the
    order the bus delivered them, which one task per rule could not keep.
    """

    rules: tuple[MatchRule, ...]
    channel: trio.MemorySendChannel[SignalMessage]
    overflow_timeout: float
    delivered: int = 0
    dropped: int = 0
    waited: int = 0


class Subscriptions:
    """The live subscriptions of one connection, and delivery to them."""

    def __init__(self, calls: Calls, owners: NameOwners, closed: trio.Event,
                 stats: ConnectionStats) -> None:
        self._calls = calls
        self._owners = owners
        self._closed = closed
        self._stats = stats
        self._live: list[Subscription] = []

    @asynccontextmanager
    async def subscribe(
        self, *rules: MatchRule, capacity: int = 1024, overflow_timeout: float = 1.0
    ) -> AsyncIterator[trio.MemoryReceiveChannel[SignalMessage]]:
        """Receive signals matching any of ``rules`` (see :meth:`.Connection.subscribe`)."""
        if not rules:
            raise ValueError("subscribe() needs at least one match rule")
        send, recv = trio.open_memory_channel[SignalMessage](capacity)
        sub = Subscription(tuple(rules), send, overflow_timeout)
        for rule in rules:
            if rule.sender and not rule.sender.startswith(":") and rule.sender != BUS_NAME:
                await self._owners.watch(rule.sender)
        self._live.append(sub)
        added: list[MatchRule] = []
        try:
            for rule in rules:
                await self._calls.call_bus("AddMatch", "s", (rule.to_string(),))
                added.append(rule)
            yield recv
        finally:
            self._live.remove(sub)
            send.close()
            recv.close()
            for rule in added:  # no await: must also work inside a cancelled scope
                self._remove_match_nowait(rule)

    def _remove_match_nowait(self, rule: MatchRule) -> None:
        if self._closed.is_set():
            return
        with contextlib.suppress(ConnectionLost):
            self._calls.call_nowait(BUS_NAME, BUS_PATH, BUS_NAME, "RemoveMatch", "s",
                                    (rule.to_string(),))

    async def on_signal(self, msg: Message) -> None:
        """Deliver a received signal to every subscription it matches.

        A NameOwnerChanged from the bus daemon updates the tracked owners
        first, so rules naming that owner match from this signal on.
        """
        fields = msg.header.fields
        self._stats.signals_received += 1
        signal = SignalMessage(
            sender=str(fields.get(HeaderFields.sender, "")),
            path=str(fields.get(HeaderFields.path, "")),
            interface=str(fields.get(HeaderFields.interface, "")),
            member=str(fields.get(HeaderFields.member, "")),
            signature=str(fields.get(HeaderFields.signature, "")),
            body=tuple(msg.body),
        )
        if signal.member == "NameOwnerChanged" and signal.sender == BUS_NAME:
            self._owners.on_name_owner_changed(signal.body)
        for sub in list(self._live):
            if any(self._matches(rule, signal) for rule in sub.rules):
                await self._deliver(sub, signal)

    def _matches(self, rule: MatchRule, signal: SignalMessage) -> bool:
        owner = self._owners.current(rule.sender) if rule.sender else None
        return rule.matches(sender=signal.sender, path=signal.path, interface=signal.interface,
                            member=signal.member, body=signal.body, sender_owner=owner)

    async def _deliver(self, sub: Subscription, signal: SignalMessage) -> None:
        try:
            sub.channel.send_nowait(signal)
            sub.delivered += 1
            return
        except trio.WouldBlock:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        sub.waited += 1
        with trio.move_on_after(sub.overflow_timeout):
            try:
                await sub.channel.send(signal)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            sub.delivered += 1
            return
        sub.dropped += 1
        self._stats.signals_dropped += 1
        if sub.dropped == 1 or sub.dropped % 1000 == 0:
            log.warning(
                "subscription overflow rules=%s dropped=%d capacity=%s",
                " | ".join(rule.to_string() for rule in sub.rules),
                sub.dropped,
                sub.channel.statistics().max_buffer_size,
            )
