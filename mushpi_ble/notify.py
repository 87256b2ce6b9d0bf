"""Per-characteristic notification queues: producers in any thread, one
notifier task each on the trio side.

Why not a ``trio.MemorySendChannel``: its methods are not thread-safe, and
reaching it through ``trio.from_thread`` makes the producer wait for the
loop (24 ms p99 measured on a busy loop, see ``shared/dbus-facts.md``).
:class:`Mailbox` is a channel of fixed capacity whose sending side is
thread-safe and never waits for the loop: the policy is applied under a
short lock in the producer's thread, which learns the outcome at once, and
the loop is woken with ``TrioToken.run_sync_soon`` only when the notifier
is parked.

The loop never takes that lock. Producers publishing flat out re-take a
``threading.Lock`` faster than a blocked waiter can wake, so a loop that
waited on it was starved for seconds (the publish storm of
``mushpi-ble bench --hostile``). The consumer side uses only operations the
interpreter makes atomic (``deque.popleft``, single attribute stores), and
the policy tolerates a consumer popping concurrently
(:func:`~mushpi_ble.gatt.queue_policy.admit`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from time import perf_counter

import attrs
import trio

from .gatt import POLICIES, Admission, admit, check_policy
from .metrics import LatencyHistogram

log = logging.getLogger(__name__)

__all__ = ["POLICIES", "Counters", "Mailbox", "Outcome", "run_notifier"]


class Outcome(enum.Enum):
    """What happened to one offered payload, told to the producer at once."""

    QUEUED = "queued"
    COALESCED = "coalesced"
    DROPPED = "dropped"
    NOT_RUNNING = "not_running"
    INVALID = "invalid"
    """Refused before queueing: a reading was given but is no number (counted as
    ``invalid`` in the characteristic's counters, logged within a budget)."""


@attrs.frozen
class Counters:
    """A snapshot: offered = sent + dropped + coalesced + pending whenever no offer
    is running at the same moment (the counters are read without a lock)."""

    offered: int
    sent: int
    dropped: int
    coalesced: int
    pending: int
    notified: int

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


class Mailbox:
    """A fixed-capacity channel: thread-safe sends, trio-side receive."""

    def __init__(self, name: str, *, capacity: int, policy: str, put_timeout: float) -> None:
        check_policy(policy)
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.name = name
        self.capacity = 1 if policy == "coalesce" else capacity
        self.policy = policy
        self.put_timeout = put_timeout
        self._lock = threading.Lock()  # producers only, never the loop
        self._queue: deque[tuple[bytes, float]] = deque()
        self._token: trio.lowlevel.TrioToken | None = None
        self._parked = False
        self._event: trio.Event | None = None
        # producer side, changed under the lock
        self._offered = 0
        self._dropped = 0
        self._coalesced = 0
        self._lock_timeouts = 0
        self._timeout_lock = threading.Lock()
        # consumer side, changed only in the loop's thread
        self._in_flight = 0
        self._sent = 0
        self._failed = 0
        self._discarded = 0
        self._notified = 0
        self.latency = LatencyHistogram()

    # -- producer side (any thread) ------------------------------------------
    def offer(self, payload: bytes) -> Outcome:
        """Hand over one payload; never waits longer than ``put_timeout``.

        This is the producer's hot path (the controller calls it every tick
        from its own thread), so the policy is applied inline.
        """
        if self._token is None:
            return Outcome.NOT_RUNNING
        lock = self._lock
        if not lock.acquire(False) and not lock.acquire(True, self.put_timeout):
            with self._timeout_lock:
                self._lock_timeouts += 1
            return Outcome.DROPPED
        try:
            token = self._token
            if token is None:
                return Outcome.NOT_RUNNING
            self._offered += 1
            admission = admit(self._queue, (payload, perf_counter()), self.capacity,
                              self.policy)
            if admission is not Admission.QUEUED:
                if admission is Admission.COALESCED:
                    self._coalesced += 1
                    return Outcome.COALESCED
                self._dropped += 1
                if admission is Admission.REFUSED:
                    return Outcome.DROPPED
            # the consumer marks itself parked before it looks at the queue a last
            # time, and the payload is in the queue before this looks at the mark:
            # one of the two always sees the other
            wake = self._parked
            if wake:
                self._parked = False
        finally:
            lock.release()
        if wake:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._wake)
        return Outcome.QUEUED

    # -- consumer side (the trio thread) --------------------------------------
    def attach(self, token: trio.lowlevel.TrioToken) -> None:
        with self._lock:
            self._token = token

    def detach(self) -> None:
        """Stop accepting; what is still queued counts as dropped."""
        with self._lock:
            self._token = None
            self._parked = False
        self._discard_queued()

    def _discard_queued(self) -> None:
        while True:
            try:
                self._queue.popleft()
            except IndexError:
                return
            self._discarded += 1

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()

    async def get(self) -> tuple[bytes, float]:
        """Next payload and the perf_counter time it was offered."""
        queue = self._queue
        while True:
            self._in_flight += 1  # before the pop: a reader never sees the item in neither
            try:
                return queue.popleft()
            except IndexError:
                self._in_flight -= 1
            event = self._event = trio.Event()
            self._parked = True
            if queue:  # offered between the pop and the mark
                self._parked = False
                continue
            await event.wait()

    def done(self, *, notified: bool, failed: bool = False) -> None:
        self._in_flight -= 1
        if failed:
            self._failed += 1
        else:
            self._sent += 1
            if notified:
                self._notified += 1

    # -- reading --------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self._queue)

    def counters(self) -> Counters:
        timeouts = self._lock_timeouts
        return Counters(
            offered=self._offered + timeouts,
            sent=self._sent,
            dropped=self._dropped + self._failed + self._discarded + timeouts,
            coalesced=self._coalesced,
            pending=len(self._queue) + self._in_flight,
            notified=self._notified,
        )


Emit = Callable[[bytes], Awaitable[bool]]


async def run_notifier(mailbox: Mailbox, emit: Emit, *, slow_publish_s: float,
                       min_interval_s: float = 0.0) -> None:
    """The one task behind one characteristic: take, emit, count, time.

    ``min_interval_s`` paces a burst: the next value goes out no sooner than that
    after the previous one started, and meanwhile waits in the mailbox under its
    policy. bluetoothd queues every signal it cannot put on the air yet, without
    limit, and a loop emitting flat out keeps bluetoothd's own calls waiting
    (``mushpi-ble bench --hostile``, the publish storm). A value after a quiet
    spell is not delayed. Unpaced (0), the notifier still lets the loop's other
    tasks run between two sends.
    """
    while True:
        payload, offered_at = await mailbox.get()
        started = time.perf_counter()
        started_loop = trio.current_time()
        try:
            notified = await emit(payload)
        except BaseException:
            mailbox.done(notified=False, failed=True)
            raise
        mailbox.done(notified=notified)
        finished = time.perf_counter()
        mailbox.latency.observe(finished - offered_at)
        if finished - started > slow_publish_s:
            log.warning("slow publish characteristic=%s took_ms=%.1f threshold_ms=%.0f",
                        mailbox.name, (finished - started) * 1000, slow_publish_s * 1000)
        if min_interval_s > 0:
            await trio.sleep_until(started_loop + min_interval_s)
        else:  # unpaced: neither a full mailbox nor a socket send waits, so yield here
            await trio.lowlevel.checkpoint()
