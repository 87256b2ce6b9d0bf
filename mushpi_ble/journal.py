"""Log lines journald files at their own priority.

journald reads a ``<N>`` prefix (sd-daemon(3)) on each line a service writes to
stdout or stderr; without it every line is "info" and ``journalctl -p warning``
shows nothing. The prefix is added only when the stream really is the journal
(``JOURNAL_STREAM`` names its device and inode), so a terminal or a pipe sees
the lines unchanged. A controller logging to the journal can wrap its own
formatter the same way: ``handler.setFormatter(JournalPrefix(formatter))``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TextIO

PRIORITIES: tuple[tuple[int, int], ...] = (
    (logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6),
)
DEBUG_PRIORITY = 7


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (crit 2, err 3, warning 4, info 6, debug 7)."""
    return next((p for level, p in PRIORITIES if levelno >= level), DEBUG_PRIORITY)


def is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal's stream socket systemd connected us to."""
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


class JournalPrefix(logging.Formatter):
    """Another formatter's line with the record's priority in front."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{priority(record.levelno)}>{self.inner.format(record)}"


def line(text: str, level: int, stream: TextIO) -> str:
    """``text`` as written to ``stream``: prefixed when that is the journal."""
    return f"<{priority(level)}>{text}" if is_journal(stream) else text
