"""Signal match rules: the string the bus daemon wants, and local matching.

The daemon filters what reaches this connection; local matching decides
which subscription gets each signal, since several may be active at once.
"""

from __future__ import annotations

from typing import Any

import attrs


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


@attrs.frozen
class MatchRule:
    """A signal match rule (only the keys this project needs)."""

    sender: str | None = None
    path: str | None = None
    path_namespace: str | None = None
    interface: str | None = None
    member: str | None = None
    arg0: str | None = None

    def to_string(self) -> str:
        parts = ["type='signal'"]
        for key in ("sender", "path", "path_namespace", "interface", "member", "arg0"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key}={_quote(value)}")
        return ",".join(parts)

    def matches(
        self,
        *,
        sender: str | None,
        path: str | None,
        interface: str | None,
        member: str | None,
        body: tuple[Any, ...] | None,
        sender_owner: str | None = None,
    ) -> bool:
        """Local check; ``sender_owner`` is the unique name owning ``self.sender``.

        ``body`` None (not decoded yet) checks the header only: the arguments
        are taken to match.
        """
        if self.sender is not None:
            expected = self.sender if self.sender.startswith(":") else sender_owner
            if expected is not None and sender != expected:
                return False
        if self.path is not None and path != self.path:
            return False
        if self.path_namespace is not None and path is not None:
            ns = self.path_namespace.rstrip("/")
            if not (path == (ns or "/") or path.startswith(ns + "/")):
                return False
        if self.interface is not None and interface != self.interface:
            return False
        if self.member is not None and member != self.member:
            return False
        if self.arg0 is not None and body is not None:
            return bool(body) and body[0] == self.arg0
        return True
