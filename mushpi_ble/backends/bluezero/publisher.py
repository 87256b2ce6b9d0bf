"""The legacy hand-over of notifications: one bounded queue, one worker thread.

Producers (the controller's threads) put each encoded payload on one queue shared by
the notifying characteristics, waiting at most ``MUSHPI_BLE_QUEUE_PUT_TIMEOUT_MS``; a
full queue applies the characteristic's back-pressure policy. The worker takes the
queue in order and has each notification performed on the GLib loop with
``GLib.idle_add``, waiting for it. Kept in its own module because these mechanics
shape the legacy backend's behaviour and performance in the A/B comparison.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from mushpi_ble.config import Settings
from mushpi_ble.metrics import LatencyHistogram
from mushpi_ble.notify import Outcome

from .deps import GLib

log = logging.getLogger(__name__)

WORKER_NAME = "mushpi-ble-publisher"
PUBLISH_TIMEOUT_S = 2.0
"""How long the worker waits for the GLib loop to perform one notification
(the legacy ``MUSHPI_BLE_PUBLISH_TIMEOUT_MS`` default)."""
_STOP = object()


class Counters:
    """Per notifying characteristic; offered = sent + dropped + coalesced + pending."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.offered = 0
        self.sent = 0
        self.dropped = 0
        self.coalesced = 0
        self.latency = LatencyHistogram()

    def as_dict(self) -> dict[str, Any]:
        pending = self.offered - self.sent - self.dropped - self.coalesced
        return {"offered": self.offered, "sent": self.sent, "dropped": self.dropped,
                "coalesced": self.coalesced, "pending": pending, "notified": self.sent,
                "queue_depth": pending, "policy": self.policy,
                "latency": self.latency.snapshot()}


class Item:
    """One queued notification: the payload as offered, and when."""

    __slots__ = ("name", "offered_at", "payload")

    def __init__(self, name: str, payload: bytes, offered_at: float) -> None:
        self.name = name
        self.payload = payload
        self.offered_at = offered_at


class Publisher:
    """The queue, its counters and the worker.

    ``deliver(name, payload)`` runs on the GLib loop and says whether the notification
    went out; ``active()`` is False once the backend stops (the worker then quits)."""

    def __init__(self, settings: Settings, names: Iterable[str], *,
                 deliver: Callable[[str, bytes], bool], active: Callable[[], bool]) -> None:
        self.settings = settings
        self._deliver = deliver
        self._active = active
        self._counters_lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=settings.ble_queue_max_size)
        self._counters = {name: Counters(settings.policy_for(name)) for name in names}
        self._worker: threading.Thread | None = None

    def reset(self) -> None:
        """A fresh, empty queue (at each start)."""
        self._queue = queue.Queue(maxsize=self.settings.ble_queue_max_size)

    def handles(self, name: str) -> bool:
        return name in self._counters

    def depth(self) -> int:
        return self._queue.qsize()

    def stats(self) -> dict[str, dict[str, Any]]:
        with self._counters_lock:
            return {name: c.as_dict() for name, c in self._counters.items()}

    # -- producers (any thread) --------------------------------------------------------
    def offer(self, name: str, payload: bytes) -> Outcome:
        """The legacy hand-over: a bounded put with a timeout, then the policy."""
        counters = self._counters[name]
        item = Item(name, payload, time.monotonic())
        with self._counters_lock:
            counters.offered += 1
        try:
            self._queue.put(item, timeout=self.settings.queue_put_timeout_s)
            return Outcome.QUEUED
        except queue.Full:
            pass
        policy = counters.policy
        if policy == "coalesce":
            with self._queue.mutex:
                for queued in reversed(self._queue.queue):
                    if isinstance(queued, Item) and queued.name == name:
                        queued.payload = payload
                        with self._counters_lock:
                            counters.coalesced += 1
                        return Outcome.COALESCED
        elif policy == "drop_oldest":
            try:
                oldest = self._queue.get_nowait()
            except queue.Empty:
                oldest = None
            if isinstance(oldest, Item):
                with self._counters_lock:
                    self._counters[oldest.name].dropped += 1
            elif oldest is _STOP:
                self._put_stop()
            try:
                self._queue.put_nowait(item)
                return Outcome.QUEUED
            except queue.Full:
                pass
        with self._counters_lock:
            counters.dropped += 1
        return Outcome.DROPPED

    # -- the worker --------------------------------------------------------------------
    def start_worker(self) -> None:
        self._worker = threading.Thread(target=self._worker_main, name=WORKER_NAME,
                                        daemon=True)
        self._worker.start()

    def stop_worker(self, deadline: float) -> None:
        """Wake the worker and wait for it a little (at most 0.25 s, never past deadline)."""
        worker = self._worker
        if worker is not None:
            self._put_stop()
            worker.join(max(0.0, min(0.25, deadline - time.monotonic())))

    def forget_worker(self) -> None:
        self._worker = None

    def _put_stop(self) -> None:
        """Wake the worker even when the queue is full (the sentinel may replace an item)."""
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            with self._queue.mutex:
                for item in self._queue.queue:
                    if isinstance(item, Item):
                        with self._counters_lock:
                            self._counters[item.name].dropped += 1
                self._queue.queue.clear()
                self._queue.queue.append(_STOP)
                self._queue.not_empty.notify()

    def _worker_main(self) -> None:
        """One notification at a time, each performed on the GLib loop."""
        while True:
            item = self._queue.get()
            if item is _STOP or not self._active():
                return
            done = threading.Event()
            GLib.idle_add(self._emit, item, done)
            if not done.wait(PUBLISH_TIMEOUT_S):
                log.warning("slow BLE publish characteristic=%s waited_s=%.3g", item.name,
                            PUBLISH_TIMEOUT_S)
            elapsed = time.monotonic() - item.offered_at
            if elapsed > self.settings.log_slow_publish_s:
                log.warning("slow BLE publish characteristic=%s ms=%d", item.name,
                            int(elapsed * 1000))

    def _emit(self, item: Item, done: threading.Event) -> bool:
        """On the loop: deliver (BlueZero's set_value: a PropertiesChanged on Value)."""
        counters = self._counters[item.name]
        sent = False
        try:
            sent = self._deliver(item.name, item.payload)
        except Exception:
            log.exception("notification failed characteristic=%s", item.name)
        finally:
            with self._counters_lock:
                if sent:
                    counters.sent += 1
                else:
                    counters.dropped += 1
            if sent:
                counters.latency.observe(time.monotonic() - item.offered_at)
            done.set()
        return False
