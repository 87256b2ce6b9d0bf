"""The one child-process protocol every benchmark server speaks.

A server runs as ``python -m mushpi_ble.bench.server KIND [VARIANT] --bus
ADDRESS`` (:func:`server_argv`) and talks JSON lines:

* stdout, first line: ``{"event": "ready", ...}``, or ``{"event": "error",
  "kind": "not installed" | "failed", "error": ...}`` and exit status 1;
* stdin, then: one command a line, ``{"cmd": NAME, ...}``; the server
  answers each with one ``{"event": "done", ...}`` line;
* ``{"cmd": "quit"}`` or the end of stdin: the server cleans up and exits 0.

A server may also print other events at any time (``{"event":
"disconnected", ...}``); lines that are not JSON objects are not protocol and
the parent skips them (libraries print). This module is the server side
and the parsing both sides share; it imports neither trio nor a D-Bus
library, so a server's memory figures are its own.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

SERVER_MODULE = "mushpi_ble.bench.server"
QUIT = "quit"

Event = dict[str, Any]
Handler = Callable[[Event], Mapping[str, Any]]


def server_argv(kind: str, variant: str, address: str, *extra: str) -> list[str]:
    """The command line that starts server ``kind``/``variant`` on bus ``address``."""
    return [sys.executable, "-m", SERVER_MODULE, kind, variant, "--bus", address, *extra]


def command_line(cmd: str, **fields: Any) -> bytes:
    """One command, encoded for the server's stdin."""
    return (json.dumps({"cmd": cmd, **fields}) + "\n").encode()


def decode_line(line: str | bytes) -> Event | None:
    """The JSON object on ``line``, or None for anything else."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class LineBuffer:
    """Bytes from a child's stdout in, protocol events out."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, chunk: bytes | bytearray) -> list[Event]:
        self._pending += chunk
        events: list[Event] = []
        while (end := self._pending.find(b"\n")) >= 0:
            event = decode_line(bytes(self._pending[:end]))
            del self._pending[: end + 1]
            if event is not None:
                events.append(event)
        return events


# ----------------------------------------------------------------------
# server side
# ----------------------------------------------------------------------
def emit(event: str, **fields: Any) -> None:
    """Send one event line to the parent."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def fail(kind: str, error: str, **fields: Any) -> int:
    """Report that the server cannot serve; the exit status to return."""
    emit("error", kind=kind, error=error, **fields)
    return 1


def is_quit(command: Event | None, raw: str | bytes) -> bool:
    """End of input, or the quit command."""
    return not raw or (command is not None and command.get("cmd") == QUIT)


def serve_commands(handlers: Mapping[str, Handler], lines: Iterable[str] | None = None) -> None:
    """Answer commands from stdin (or ``lines``) until quit: each one's handler
    result goes back as a ``done`` event; an unknown command gets an error answer."""
    for raw in sys.stdin if lines is None else lines:
        command = decode_line(raw)
        if is_quit(command, raw):
            return
        if command is None:
            continue
        handler = handlers.get(str(command.get("cmd")))
        if handler is None:
            emit("done", error=f"unknown command {command.get('cmd')!r}")
            continue
        emit("done", **handler(command))
