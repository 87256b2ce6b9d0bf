"""Log lines for a terminal, for a pipe and for journald.

Our log lines are ``event key=value key=value``. As JSON (``--log-format
json``) each becomes one object: ``time`` (ISO 8601), ``level``,
``priority`` (syslog's number), ``logger``, ``message``, and every
``key=value`` as a key of its own, so ``jq 'select(.device == ...)'`` works.
Under systemd (``JOURNAL_STREAM`` set) every line starts with ``<N>``, the
priority journald reads, so ``journalctl -p warning`` finds our warnings.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
from typing import Any, TextIO

PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
              logging.CRITICAL: 2}
_PAIR = re.compile(r"""(?<![\w.])([a-z_][a-z0-9_]*)=("[^"]*"|'[^']*'|[^\s]+)""")
RESERVED = frozenset({"time", "level", "priority", "logger", "message"})


def priority(levelno: int) -> int:
    """syslog's priority for a logging level (a level between two takes the lower one's)."""
    return next((p for level, p in sorted(PRIORITIES.items(), reverse=True)
                 if levelno >= level), 7)


def fields(message: str) -> dict[str, Any]:
    """The ``key=value`` pairs of a message; numbers as numbers, quotes removed."""
    out: dict[str, Any] = {}
    for key, raw in _PAIR.findall(message):
        if key in RESERVED:
            continue
        text = raw[1:-1] if raw[:1] in "\"'" and raw[-1:] == raw[:1] else raw
        out[key] = _number(text)
    return out


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the message's fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname, "priority": priority(record.levelno),
            "logger": record.name, "message": message, **fields(message)}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class JournalPrefix(logging.Formatter):
    """Wraps another formatter: ``<N>`` before each line, for journald."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).splitlines())


def under_journald(environ: dict[str, str] | None = None) -> bool:
    """systemd set our stdout or stderr to the journal (sd_journal_stream_fd's contract)."""
    return bool((os.environ if environ is None else environ).get("JOURNAL_STREAM"))


def formatter(fmt: str, *, journald: bool) -> logging.Formatter:
    inner: logging.Formatter = (JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s"))
    return JournalPrefix(inner) if journald else inner


def configure_logging(fmt: str, level: str, stream: TextIO) -> None:
    """The root logger's one handler: ``fmt`` (text or json) on ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(fmt, journald=under_journald()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
