"""The one rule for a full notification queue: drop the oldest, drop the newest,
or coalesce (the last value wins).

Both queues that hold notifications apply it: the per-characteristic mailbox
the controller publishes into, and each phone's queue in front of its notify
socket. Keeping it here means a policy means the same thing in both places.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TypeVar

POLICIES = ("drop_oldest", "drop_newest", "coalesce")

T = TypeVar("T")


class Admission(enum.Enum):
    """What :func:`admit` did with one item."""

    QUEUED = "queued"
    QUEUED_DROPPING_OLDEST = "queued_dropping_oldest"
    COALESCED = "coalesced"
    REFUSED = "refused"


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; allowed: {', '.join(POLICIES)}")


def admit(queue: deque[T], item: T, capacity: int, policy: str) -> Admission:
    """Put ``item`` into ``queue`` (never longer than ``capacity``) by ``policy``.

    ``coalesce`` replaces the newest queued item, so a coalescing queue holds
    at most one item however large ``capacity`` is.

    One consumer may pop from the left in another thread meanwhile (the
    mailbox's loop takes no lock): every step is a single atomic deque
    operation, and an item the consumer took first is simply not there to
    replace or drop.
    """
    if policy == "coalesce" and queue:
        try:
            queue[-1] = item
        except IndexError:  # the consumer took it
            pass
        else:
            return Admission.COALESCED
    if len(queue) >= capacity:
        if policy == "drop_newest":
            return Admission.REFUSED
        try:
            queue.popleft()
        except IndexError:  # the consumer took it
            queue.append(item)
            return Admission.QUEUED
        queue.append(item)
        return Admission.QUEUED_DROPPING_OLDEST
    queue.append(item)
    return Admission.QUEUED
