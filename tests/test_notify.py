"""Notification mailboxes: policies, counters, thread hand-off, the notifier task."""

from __future__ import annotations

import contextlib
import threading

import pytest
import trio

from mushpi_ble.notify import Mailbox, Outcome, run_notifier


def check_sum(box: Mailbox) -> None:
    c = box.counters()
    assert c.offered == c.sent + c.dropped + c.coalesced + c.pending, c


def payload(n: int) -> bytes:
    return n.to_bytes(4, "little")


async def test_not_running_until_attached() -> None:
    box = Mailbox("env", capacity=4, policy="drop_oldest", put_timeout=0.01)
    assert box.offer(b"x") is Outcome.NOT_RUNNING
    assert box.counters().offered == 0


@pytest.mark.parametrize(
    ("policy", "outcomes", "kept", "dropped", "coalesced"),
    [
        ("drop_oldest", [Outcome.QUEUED] * 5, [2, 3, 4], 2, 0),
        ("drop_newest", [Outcome.QUEUED] * 3 + [Outcome.DROPPED] * 2, [0, 1, 2], 2, 0),
        ("coalesce", [Outcome.QUEUED] + [Outcome.COALESCED] * 4, [4], 0, 4),
    ],
)
async def test_policies_under_overload(
    policy: str, outcomes: list[Outcome], kept: list[int], dropped: int, coalesced: int
) -> None:
    box = Mailbox("env", capacity=3, policy=policy, put_timeout=0.01)
    box.attach(trio.lowlevel.current_trio_token())
    assert [box.offer(payload(n)) for n in range(5)] == outcomes
    check_sum(box)
    got = []
    for _ in kept:
        value, _at = await box.get()
        box.done(notified=True)
        got.append(int.from_bytes(value, "little"))
    assert got == kept
    c = box.counters()
    assert (c.offered, c.sent, c.dropped, c.coalesced, c.pending) == (
        5,
        len(kept),
        dropped,
        coalesced,
        0,
    )


async def test_thread_producers_wake_the_parked_notifier_in_order() -> None:
    box = Mailbox("env", capacity=10_000, policy="drop_newest", put_timeout=0.01)
    box.attach(trio.lowlevel.current_trio_token())
    received: list[int] = []
    emitted = trio.Event()
    total = 2000

    async def emit(value: bytes) -> bool:
        received.append(int.from_bytes(value, "little"))
        if len(received) == total:
            emitted.set()
        return True

    def produce() -> list[Outcome]:
        return [box.offer(payload(n)) for n in range(total)]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_notifier(box, emit, slow_publish_s=1.0))
        outcomes = await trio.to_thread.run_sync(produce)
        with trio.fail_after(5):
            await emitted.wait()
        nursery.cancel_scope.cancel()
    assert set(outcomes) == {Outcome.QUEUED}
    assert received == list(range(total))
    c = box.counters()
    assert (c.offered, c.sent, c.notified, c.pending) == (total, total, total, 0)
    assert box.latency.snapshot()["count"] == total


async def test_slow_emit_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    box = Mailbox("status", capacity=2, policy="drop_oldest", put_timeout=0.01)
    box.attach(trio.lowlevel.current_trio_token())
    done = trio.Event()

    async def slow_emit(_value: bytes) -> bool:
        await trio.sleep(0.05)
        done.set()
        return False

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_notifier(box, slow_emit, slow_publish_s=0.01))
        box.offer(b"abcd")
        with trio.fail_after(2):
            await done.wait()
        await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert "slow publish characteristic=status" in caplog.text
    c = box.counters()
    assert (c.sent, c.notified) == (1, 0)


async def test_failed_emit_counts_as_dropped() -> None:
    box = Mailbox("env", capacity=2, policy="drop_oldest", put_timeout=0.01)
    box.attach(trio.lowlevel.current_trio_token())

    async def broken(_value: bytes) -> bool:
        raise RuntimeError("bus gone")

    box.offer(b"1")
    with pytest.raises(RuntimeError):
        await run_notifier(box, broken, slow_publish_s=1.0)
    c = box.counters()
    assert (c.offered, c.dropped, c.pending) == (1, 1, 0)
    check_sum(box)


async def test_detach_drops_what_is_queued_and_refuses_more() -> None:
    box = Mailbox("env", capacity=5, policy="drop_oldest", put_timeout=0.01)
    box.attach(trio.lowlevel.current_trio_token())
    for n in range(3):
        box.offer(payload(n))
    box.detach()
    assert box.offer(b"late") is Outcome.NOT_RUNNING
    c = box.counters()
    assert (c.offered, c.dropped, c.pending) == (3, 3, 0)


def test_contended_lock_returns_dropped_within_put_timeout() -> None:
    box = Mailbox("env", capacity=5, policy="drop_oldest", put_timeout=0.02)
    box._token = object()  # type: ignore[assignment]  # attached without a loop
    box._lock.acquire()  # a producer holding it
    try:
        result: list[Outcome] = []
        t = threading.Thread(target=lambda: result.append(box.offer(b"x")))
        t.start()
        t.join(2)
        assert result == [Outcome.DROPPED]
    finally:
        box._lock.release()
    check_sum(box)
    assert box.counters().dropped == 1


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        Mailbox("env", capacity=1, policy="priority", put_timeout=0.01)


async def test_the_notifier_never_waits_for_the_producers_lock() -> None:
    """Producers publishing flat out re-take their lock faster than a blocked waiter
    wakes; a loop that waited on it starved for seconds. Here a producer holds the
    lock the whole time, and the notifier still takes, emits and counts."""
    box = Mailbox("env", capacity=8, policy="drop_oldest", put_timeout=0.01)
    box.attach(trio.lowlevel.current_trio_token())
    for n in range(3):
        box.offer(payload(n))
    emitted: list[bytes] = []

    async def emit(value: bytes) -> bool:
        emitted.append(value)
        return True

    box._lock.acquire()  # a producer in the middle of an offer
    try:
        with trio.fail_after(2):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: run_notifier(box, emit, slow_publish_s=1.0))
                while len(emitted) < 3:
                    await trio.sleep(0.001)
                assert box.depth == 0
                c = box.counters()
                assert (c.sent, c.pending) == (3, 0)
                nursery.cancel_scope.cancel()
    finally:
        box._lock.release()
    assert emitted == [payload(n) for n in range(3)]
    check_sum(box)


def offer_with_a_consumer_popping(policy: str) -> tuple[Mailbox, list[bytes]]:
    """Three producers offer 5,000 payloads each while a thread pops the deque as the
    loop does; what that consumer took, and the mailbox."""
    box = Mailbox("env", capacity=4, policy=policy, put_timeout=1.0)
    box._token = object()  # type: ignore[assignment]  # attached without a loop
    stop = threading.Event()
    taken: list[bytes] = []

    def consume() -> None:
        while not stop.is_set() or box.depth:
            with contextlib.suppress(IndexError):
                taken.append(box._queue.popleft()[0])

    def produce(k: int) -> None:
        for n in range(5_000):
            box.offer(payload(k * 10_000 + n))

    consumer = threading.Thread(target=consume)
    consumer.start()
    producers = [threading.Thread(target=produce, args=(k,)) for k in range(3)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    stop.set()
    consumer.join()
    return box, taken


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest", "coalesce"])
def test_a_consumer_popping_meanwhile_loses_nothing_and_counts_exactly(policy: str) -> None:
    """The policy runs while the loop may pop the same deque: every item is either
    taken by the consumer or counted by the producer, never both, never neither."""
    box, taken = offer_with_a_consumer_popping(policy)
    c = box.counters()
    assert c.offered == 15_000
    assert len(taken) + c.dropped + c.coalesced == c.offered, (len(taken), c)
    assert len(set(taken)) == len(taken)


async def test_a_burst_is_paced_and_a_lone_value_is_not(autojump_clock: trio.abc.Clock) -> None:
    """MUSHPI_BLE_NOTIFY_INTERVAL_MS: a burst goes out one value per interval (bluetoothd
    would queue it without limit); a value after a quiet spell goes out at once."""
    box = Mailbox("env", capacity=8, policy="drop_oldest", put_timeout=0.01)
    box.attach(trio.lowlevel.current_trio_token())
    sent_at: list[tuple[bytes, float]] = []

    async def emit(value: bytes) -> bool:
        sent_at.append((value, trio.current_time()))
        return True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_notifier(box, emit, slow_publish_s=1.0, min_interval_s=0.05))
        start = trio.current_time()
        for n in range(3):
            box.offer(payload(n))
        await trio.sleep(1.0)
        quiet_offer = trio.current_time()
        box.offer(payload(9))
        await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [v for v, _ in sent_at] == [payload(n) for n in (0, 1, 2, 9)]
    gaps = [round(t - start, 6) for _, t in sent_at[:3]]
    assert gaps == [0.0, 0.05, 0.1]
    assert sent_at[3][1] == quiet_offer


async def test_while_paced_a_burst_obeys_the_policy(autojump_clock: trio.abc.Clock) -> None:
    box = Mailbox("env", capacity=8, policy="coalesce", put_timeout=0.01)
    box.attach(trio.lowlevel.current_trio_token())
    sent: list[bytes] = []

    async def emit(value: bytes) -> bool:
        sent.append(value)
        return True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_notifier(box, emit, slow_publish_s=1.0, min_interval_s=0.05))
        box.offer(payload(0))
        await trio.sleep(0.01)  # the first is out; the next may go at 0.05
        for n in range(1, 10):
            box.offer(payload(n))
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert sent == [payload(0), payload(9)]
    c = box.counters()
    assert (c.offered, c.sent, c.coalesced, c.pending) == (10, 2, 8, 0)


async def test_an_unpaced_notifier_lets_other_tasks_run_between_sends() -> None:
    """MUSHPI_BLE_NOTIFY_INTERVAL_MS=0: a full mailbox and a send into the notify sockets
    (which does not wait) must not keep the loop's other tasks (the reads) waiting until
    the mailbox is empty."""
    box = Mailbox("env", capacity=8, policy="drop_oldest", put_timeout=0.01)
    box.attach(trio.lowlevel.current_trio_token())
    for n in range(5):
        box.offer(payload(n))
    ticks = 0
    ticks_at_send: list[int] = []

    async def emit(value: bytes) -> bool:
        ticks_at_send.append(ticks)
        return True

    async def other_task() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        nursery.start_soon(lambda: run_notifier(box, emit, slow_publish_s=1.0))
        while len(ticks_at_send) < 5:
            await trio.sleep(0)
        nursery.cancel_scope.cancel()
    # each send is one scheduling round apart, and the other task runs once a round
    # (before or after the notifier, as trio shuffles them): three whole rounds at least
    assert ticks_at_send[-1] - ticks_at_send[0] >= 3, ticks_at_send
