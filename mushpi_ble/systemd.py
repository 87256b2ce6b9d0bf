"""systemd's notify protocol: readiness, plain-words status and the watchdog.

A service that looks "active (running)" while no phone can find it is the
worst failure a grow room can have, so under ``Type=notify`` we say READY
only once the application is registered, keep ``STATUS=`` current in plain
words, and ping ``WATCHDOG=1`` from the trio loop itself: a stalled loop
stops pinging and systemd restarts us.

The protocol is one datagram per message on the ``AF_UNIX`` socket named by
``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace), newline
separated ``KEY=value`` lines (sd_notify(3)); small enough to speak directly.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import trio

from .headline import serving, status_text

log = logging.getLogger(__name__)

MAX_STATUS_PERIOD_S = 1.0
"""How often the status text is looked at (and the watchdog pinged, at the least)."""


class SystemdNotifier:
    """Sends notify messages when systemd asked for them; a no-op otherwise."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = _watchdog_seconds(env)
        self._sock: socket.socket | None = None
        self._failed = False
        self.sent: int = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str) -> bool:
        """Send ``KEY=value`` lines (``ready="1"`` becomes ``READY=1``); True if sent.

        Never raises and never blocks: a full or missing socket costs one log line.
        """
        if self.address is None or not fields:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("systemd notification failed socket=%r error=%s", self.address, exc)
                self._failed = True
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET is neither a path nor an abstract name: %r; ignored", value)
    return None


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """``WATCHDOG_USEC`` for this process (``WATCHDOG_PID``, when set, must be ours)."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC is not a number: %r; no watchdog pings", usec)
        return None
    return value / 1_000_000 if value > 0 else None


async def run_notifier(notifier: SystemdNotifier, status: Callable[[], Mapping[str, Any]],
                       *, advertising_wanted: bool = True, ready_timeout: float = 5.0,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """READY with the first status once the application and the advertisement are
    registered (after ``ready_timeout`` alias-only serving counts too: the status line
    says "not advertising"), then watchdog pings at half ``WATCHDOG_USEC`` and status
    lines when they change. Run it in the loop it vouches for."""
    with trio.move_on_after(ready_timeout):
        while not serving(status(), advertising_wanted=advertising_wanted):
            await trio.sleep(0.02)
    text = status_text(status())
    notifier.notify(ready="1", status=text)
    log.info("systemd notified ready=1 status=%r watchdog_s=%s", text, notifier.watchdog_s)
    task_status.started()
    period = MAX_STATUS_PERIOD_S
    if notifier.watchdog_s is not None:
        period = min(period, notifier.watchdog_s / 2)
    try:
        while True:
            await trio.sleep(period)
            fields: dict[str, str] = {}
            if notifier.watchdog_s is not None:
                fields["watchdog"] = "1"
            latest = status_text(status())
            if latest != text:
                text = fields["status"] = latest
            notifier.notify(**fields)
    finally:
        notifier.notify(stopping="1", status="stopping")
