"""Which received messages are worth decoding: foreign traffic is cheap to refuse.

The connection serves one *preferred peer* above everyone else: the owner
of any name an exported interface names as its ``allowed_caller`` (the
only caller of its restricted members), plus names an upper layer adds
with :meth:`Admission.prefer`; the bus daemon is trusted like it. Once
there is a preferred peer, any other sender is *foreign*; until then all
senders are equal and only unwanted signals are dropped. Every message's header is shown to
:meth:`Admission.screen` before its body is decoded (see
:class:`~.codec.WireParser`), which decides from the header alone:

* a signal no subscription could want is dropped (from anyone but the bus
  daemon, whose NameOwnerChanged keeps owners current);
* a foreign call whose answer can only be an error (an unknown object,
  interface or method, a wrong signature, a restricted method) is answered
  with that error, its body never decoded;
* each foreign sender has a budget (a token bucket): past it, its calls are
  answered ``LimitsExceeded`` and its signals dropped, undecoded;
* a foreign message longer than ``max_foreign_message`` is skipped as it
  arrives, never gathered or parsed (a call is answered ``LimitsExceeded``).

The preferred peer is never throttled or skipped, and within a batch of
received messages its are handled first (:meth:`Admission.order`). What
strangers may legitimately use (Introspect, Peer, reading unrestricted
properties, unrestricted interfaces) stays available within their budget.
Everything refused is counted in the connection's stats and logged at a
bounded rate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from jeepney.low_level import Header, HeaderFields, Message, MessageFlag, MessageType

from mushpi_ble.lograte import LogRate, RateLimitedLog

from .calls import BUS_NAME
from .dispatch import Dispatcher
from .errors import DBusError
from .interface import CallContext
from .stats import ConnectionStats

log = logging.getLogger(__name__)

LIMITS_EXCEEDED = "org.freedesktop.DBus.Error.LimitsExceeded"
_SENDER, _PATH, _INTERFACE, _MEMBER, _SIGNATURE = (
    HeaderFields.sender, HeaderFields.path, HeaderFields.interface, HeaderFields.member,
    HeaderFields.signature,
)
_METHOD_CALL, _SIGNAL = MessageType.method_call, MessageType.signal
_NO_REPLY_FLAGS = frozenset(f for f in range(256) if f & MessageFlag.no_reply_expected)
MAX_BUCKETS = 4096  # senders tracked at once; a stranger cannot grow this without bound


@attrs.define
class AdmissionPolicy:
    """How much a foreign sender may ask: ``rate`` messages a second on average,
    ``burst`` at once; messages longer than ``max_foreign_message`` bytes are skipped."""

    rate: float = 200.0
    burst: float = 400.0
    max_foreign_message: int = 64 << 10


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


Refuse = Callable[[Message, str, str], None]  # answer a call with an error (name, text)
Wanted = Callable[[dict[HeaderFields, Any]], bool]  # could a subscription want this signal?


class Admission:
    """Screens the messages one connection receives, from their headers."""

    def __init__(self, dispatcher: Dispatcher, owner_of: Callable[[str], str | None],
                 wanted: Wanted, refuse: Refuse, stats: ConnectionStats, *,
                 policy: AdmissionPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._dispatcher = dispatcher
        self._owner_of = owner_of
        self._wanted = wanted
        self._refuse = refuse
        self._stats = stats
        self.policy = policy or AdmissionPolicy()
        self._clock = clock
        self._names: list[str] = []
        self._buckets: dict[str, _Bucket] = {}
        self._ratelog = RateLimitedLog(log, "flood reports", LogRate(burst=1))
        self._foreign_admitted = False

    # -- who is preferred ------------------------------------------------------------
    def prefer(self, name: str) -> None:
        """Treat the owner of ``name`` (a well-known or unique name) as the preferred peer."""
        if name not in self._names:
            self._names.append(name)

    @property
    def preferred_names(self) -> tuple[str, ...]:
        return tuple(self._names)

    def is_preferred(self, sender: str | None) -> bool:
        """Whether ``sender`` is the bus daemon or owns a preferred name now."""
        if sender == BUS_NAME:
            return True
        if sender:
            for name in self._names:
                if self._owner_of(name) == sender:
                    return True
        return False

    # -- the screen ----------------------------------------------------------------
    def screen(self, header: Header, size: int) -> bool:
        """Whether to decode this message; refuses, drops or skips it otherwise."""
        kind = header.message_type
        if kind is not _METHOD_CALL and kind is not _SIGNAL:
            return True  # replies: matched against our own calls
        fields = header.fields
        sender = fields.get(_SENDER)
        if kind is _SIGNAL:
            if sender == BUS_NAME:
                return True
            if not self._wanted(fields):
                self._stats.signals_unwanted += 1
                return False
            if not self._names or self.is_preferred(sender):
                return True
            return self._foreign_signal(str(sender), size)
        if not self._names or self.is_preferred(sender):
            return True
        return self._foreign_call(header, str(sender or ""), size)

    def _foreign_signal(self, sender: str, size: int) -> bool:
        if size > self.policy.max_foreign_message:
            self._skipped(sender, size, "signal")
            return False
        if not self._take(sender):
            self._throttled(sender)
            return False
        self._foreign_admitted = True
        return True

    def _foreign_call(self, header: Header, sender: str, size: int) -> bool:
        if size > self.policy.max_foreign_message:
            self._skipped(sender, size, "call")
            self._answer(header, LIMITS_EXCEEDED,
                         f"messages longer than {self.policy.max_foreign_message} bytes "
                         "are not read")
            return False
        if not self._take(sender):
            self._throttled(sender)
            self._answer(header, LIMITS_EXCEEDED, "too many requests; slow down")
            return False
        fields = header.fields
        ctx = CallContext(sender=sender, path=str(fields.get(_PATH, "/")),
                          interface=str(fields.get(_INTERFACE, "")),
                          member=str(fields.get(_MEMBER, "")))
        try:
            self._dispatcher.resolve(ctx, str(fields.get(_SIGNATURE, "")))
        except DBusError as exc:
            self._stats.foreign_refused += 1  # access denials are logged by the dispatcher
            self._answer(header, exc.name, exc.text)
            return False
        self._foreign_admitted = True
        return True

    def _answer(self, header: Header, name: str, text: str) -> None:
        self._stats.calls_received += 1
        if header.flags not in _NO_REPLY_FLAGS:
            self._refuse(Message(header, ()), name, text)

    # -- budgets -------------------------------------------------------------------
    def _take(self, sender: str) -> bool:
        """Spend one token of ``sender``'s bucket; False when it has none left."""
        now = self._clock()
        policy = self.policy
        bucket = self._buckets.get(sender)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._buckets.clear()
            bucket = self._buckets[sender] = _Bucket(policy.burst, now)
        else:
            bucket.tokens = min(policy.burst, bucket.tokens + (now - bucket.stamp) * policy.rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _throttled(self, sender: str) -> None:
        self._stats.foreign_throttled += 1
        self._ratelog.log(f"throttled {sender}", logging.WARNING,
                          "throttling a sender over its budget sender=%s rate=%.0f/s "
                          "burst=%.0f", sender, self.policy.rate, self.policy.burst)

    def _skipped(self, sender: str, size: int, what: str) -> None:
        self._stats.foreign_skipped += 1
        self._stats.foreign_skipped_bytes += size
        self._ratelog.log(f"skipped {sender}", logging.WARNING,
                          "skipped a %s too long to read sender=%s bytes=%d limit=%d", what,
                          sender, size, self.policy.max_foreign_message)

    # -- ordering ------------------------------------------------------------------
    def order(self, batch: list[Message]) -> Iterable[Message]:
        """``batch`` with the preferred peer's messages first, when foreign ones were
        admitted into it (each sender's own order is kept)."""
        if not self._foreign_admitted:
            return batch
        self._foreign_admitted = False
        first: list[Message] = []
        later: list[Message] = []
        for msg in batch:
            sender = msg.header.fields.get(_SENDER)
            (first if sender is None or self.is_preferred(sender) else later).append(msg)
        return first + later
