"""Pairing policies: what the agent answers, per ``MUSHPI_BLE_PAIRING`` mode.

A policy is pure (no I/O): it gets the request bluetoothd made and answers
accept or refuse with a reason. New modes are new policies, not a new agent.
The pairing window lives here too, because the window and passkey modes
decide by it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs

log = logging.getLogger(__name__)

#: The modes this module knows; "off" means no agent at all.
PAIRING_MODES = ("just-works", "window", "passkey", "off")
#: The longest a pairing window may stay open, in seconds.
MAX_WINDOW_S = 3600.0
#: IO capabilities bluetoothd accepts in RegisterAgent.
CAPABILITIES = ("DisplayOnly", "DisplayYesNo", "KeyboardOnly", "NoInputNoOutput",
                "KeyboardDisplay")

# Agent1 request kinds, named by the method bluetoothd calls
REQUEST_AUTHORIZATION = "RequestAuthorization"
REQUEST_CONFIRMATION = "RequestConfirmation"
AUTHORIZE_SERVICE = "AuthorizeService"
DISPLAY_PASSKEY = "DisplayPasskey"
REQUEST_PASSKEY = "RequestPasskey"
REQUEST_PIN_CODE = "RequestPinCode"
DISPLAY_PIN_CODE = "DisplayPinCode"


@attrs.frozen
class PairingRequest:
    """One call bluetoothd made on the agent."""

    kind: str
    device: str
    passkey: int | None = None
    uuid: str | None = None


@attrs.frozen
class Decision:
    """A policy's answer: accept, or refuse with ``org.bluez.Error.Rejected`` and why."""

    accept: bool
    reason: str = ""

    @classmethod
    def yes(cls, reason: str = "") -> Decision:
        return cls(True, reason)

    @classmethod
    def no(cls, reason: str) -> Decision:
        return cls(False, reason)


class PairingPolicy(Protocol):
    """What the agent consults: its capability, and an answer per request."""

    @property
    def mode(self) -> str: ...

    @property
    def capability(self) -> str: ...

    def decide(self, request: PairingRequest) -> Decision: ...


@attrs.frozen
class JustWorksPolicy:
    """NoInputNoOutput: accept every Just Works request; encryption without MITM protection.

    Passkey and PIN requests cannot reach a NoInputNoOutput agent over LE;
    refusing them keeps a misbehaving stack from pairing with a guessed key.
    """

    mode: str = "just-works"
    capability: str = "NoInputNoOutput"

    def decide(self, request: PairingRequest) -> Decision:
        if request.kind in (REQUEST_AUTHORIZATION, REQUEST_CONFIRMATION, AUTHORIZE_SERVICE):
            return Decision.yes()
        return Decision.no(f"{request.kind} is not offered by {self.capability}")


_JUST_WORKS_KINDS = (REQUEST_AUTHORIZATION, REQUEST_CONFIRMATION)
WINDOW_CLOSED = "pairing window closed"


class PairingWindow:
    """A time during which new bonds are accepted (a button, ``mushpi-ble pair``).

    Any thread may open or close it (one attribute is written); the loop reads
    it when bluetoothd asks. Bonds made earlier keep working when it closes:
    re-encrypting with stored keys never asks the agent.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall = wall
        self._until: float | None = None
        self.opened = 0
        self._watchers: list[Callable[[], None]] = []

    def open(self, seconds: float) -> float:
        """Open (or extend, or shorten) the window to ``seconds`` from now; the wall
        time it closes."""
        if not 0 < seconds <= MAX_WINDOW_S:
            raise ValueError(f"a pairing window lasts 0 < seconds <= {MAX_WINDOW_S:.0f}, "
                             f"not {seconds!r}")
        self._until = self._clock() + seconds
        self.opened += 1
        until = self._wall() + seconds
        log.info("pairing window opened seconds=%.0f until=%s", seconds,
                 time.strftime("%H:%M:%S", time.localtime(until)))
        for watcher in list(self._watchers):
            watcher()
        return until

    def watch(self, opened: Callable[[], None]) -> Callable[[], None]:
        """Call ``opened()`` (in the opener's thread) each time the window opens; returns
        the function that stops it. A watcher must not block (hand over to its loop)."""
        self._watchers.append(opened)

        def stop() -> None:
            if opened in self._watchers:
                self._watchers.remove(opened)

        return stop

    def close(self) -> None:
        if self._until is not None:
            log.info("pairing window closed")
        self._until = None

    @property
    def remaining(self) -> float:
        until = self._until
        return 0.0 if until is None else max(0.0, until - self._clock())

    @property
    def is_open(self) -> bool:
        return self.remaining > 0

    def snapshot(self) -> dict[str, Any]:
        remaining = self.remaining
        return {"open": remaining > 0, "remaining_s": round(remaining, 1),
                "until": self._wall() + remaining if remaining > 0 else None,
                "opened": self.opened}


@attrs.frozen
class WindowPolicy:
    """NoInputNoOutput, like Just Works, but only while the pairing window is open."""

    window: PairingWindow
    mode: str = "window"
    capability: str = "NoInputNoOutput"

    def decide(self, request: PairingRequest) -> Decision:
        if request.kind == AUTHORIZE_SERVICE:
            return Decision.yes()
        if request.kind not in _JUST_WORKS_KINDS:
            return Decision.no(f"{request.kind} is not offered by {self.capability}")
        return Decision.yes() if self.window.is_open else Decision.no(WINDOW_CLOSED)


@attrs.frozen
class PasskeyPolicy:
    """DisplayOnly: the phone's user types the passkey we show, so the bond is
    protected against a man in the middle; only while the window is open.

    bluetoothd does not wait for an answer to ``DisplayPasskey``: outside the
    window the passkey is shown to nobody, so the pairing cannot complete.
    Just Works (no passkey) is refused: it would give an unauthenticated bond.
    """

    window: PairingWindow
    mode: str = "passkey"
    capability: str = "DisplayOnly"

    def decide(self, request: PairingRequest) -> Decision:
        if request.kind == AUTHORIZE_SERVICE:
            return Decision.yes()
        if request.kind != DISPLAY_PASSKEY:
            return Decision.no(f"{request.kind}: passkey mode pairs only with a passkey")
        return Decision.yes() if self.window.is_open else Decision.no(WINDOW_CLOSED)


def policy_for_mode(mode: str, window: PairingWindow | None = None) -> PairingPolicy | None:
    """The policy of a ``MUSHPI_BLE_PAIRING``-style mode; None for "off" (no agent)."""
    if mode == "off":
        return None
    if mode == "just-works":
        return JustWorksPolicy()
    if mode in ("window", "passkey"):
        window = window if window is not None else PairingWindow()
        return WindowPolicy(window) if mode == "window" else PasskeyPolicy(window)
    raise ValueError(f"unknown pairing mode {mode!r}: allowed {', '.join(PAIRING_MODES)}")
