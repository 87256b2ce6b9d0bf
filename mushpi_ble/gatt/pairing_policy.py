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


NO_PROFILES = "we serve no BR/EDR profile"
"""Why ``AuthorizeService`` is refused in every mode: bluetoothd asks it only for BR/EDR
profile connections (HID, audio...), and a yes would let a bonded device in as one."""


@attrs.frozen
class JustWorksPolicy:
    """NoInputNoOutput: accept every Just Works request; encryption without MITM protection.

    Passkey and PIN requests cannot reach a NoInputNoOutput agent over LE;
    refusing them keeps a misbehaving stack from pairing with a guessed key.
    """

    mode: str = "just-works"
    capability: str = "NoInputNoOutput"

    def decide(self, request: PairingRequest) -> Decision:
        if request.kind == AUTHORIZE_SERVICE:
            return Decision.no(NO_PROFILES)
        if request.kind in (REQUEST_AUTHORIZATION, REQUEST_CONFIRMATION):
            return Decision.yes()
        return Decision.no(f"{request.kind} is not offered by {self.capability}")


_JUST_WORKS_KINDS = (REQUEST_AUTHORIZATION, REQUEST_CONFIRMATION)
WINDOW_CLOSED = "pairing window closed"
#: How long a phone our agent said yes to holds its place in the window: bluetoothd's
#: agent timeout (25 s) plus SMP's (30 s), rounded up.
ADMISSION_S = 60.0


def window_full(bonds: int) -> str:
    return f"pairing window full ({bonds} new phone{'s' if bonds != 1 else ''} per window)"


class PairingWindow:
    """A time during which new bonds are accepted (a button, ``mushpi-ble pair``), and
    how many: ``bonds`` new phones (0 = any number), then it closes by itself.

    A phone the agent says yes to is *admitted*: it holds one of the window's places
    until ``Paired`` follows (:meth:`bonded`, which counts it and closes a full window),
    its attempt fails (:meth:`release`) or :data:`ADMISSION_S` passes. While the places
    are held, another phone is refused, so two phones pairing at once in a window for
    one get one bond, not two. A phone admitted inside the window whose keys arrive
    just after it closed still counts as admitted.

    Any thread may open or close it; the loop reads it when bluetoothd asks. Bonds made
    earlier keep working when it closes: re-encrypting with stored keys never asks the
    agent.
    """

    def __init__(self, *, bonds: int = 1, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        if bonds < 0:
            raise ValueError(f"a window admits 0 (any number) or more phones, not {bonds}")
        self.bonds = bonds
        self._clock = clock
        self._wall = wall
        self._until: float | None = None
        self._admitted: dict[str, float] = {}  # device -> when the agent said yes
        self.new_bonds = 0
        """Bonds made in the window opened last."""
        self.opened = 0
        self._watchers: list[Callable[[], None]] = []

    def open(self, seconds: float) -> float:
        """Open (or extend, or shorten) the window to ``seconds`` from now; the wall
        time it closes. Every open starts a new count of new bonds."""
        if not 0 < seconds <= MAX_WINDOW_S:
            raise ValueError(f"a pairing window lasts 0 < seconds <= {MAX_WINDOW_S:.0f}, "
                             f"not {seconds!r}")
        self._until = self._clock() + seconds
        self.opened += 1
        self.new_bonds = 0
        until = self._wall() + seconds
        log.info("pairing window opened seconds=%.0f until=%s new_phones=%s", seconds,
                 time.strftime("%H:%M:%S", time.localtime(until)), self.bonds or "any")
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

    def close(self, why: str = "") -> None:
        if self._until is not None:
            log.info("pairing window closed%s", f" reason={why}" if why else "")
        self._until = None

    def admit(self, device: str) -> Decision:
        """The agent is asked about ``device``: yes while the window is open and has a
        place (a device already admitted keeps its own)."""
        now = self._clock()
        for other, at in list(self._admitted.items()):
            if now - at > ADMISSION_S:
                del self._admitted[other]
        if not self.is_open:
            return Decision.no(WINDOW_CLOSED)
        if device not in self._admitted and self.bonds and \
                self.new_bonds + len(self._admitted) >= self.bonds:
            return Decision.no(window_full(self.bonds))
        self._admitted[device] = now
        return Decision.yes()

    def bonded(self, device: str) -> bool:
        """``Paired`` followed for ``device``: True when this window admitted it (the
        bond is ours); a full window closes."""
        at = self._admitted.pop(device, None)
        if at is None or self._clock() - at > ADMISSION_S:
            return False
        self.new_bonds += 1
        if self.bonds and self.new_bonds >= self.bonds:
            self.close(f"{self.new_bonds} new phone{'s' if self.new_bonds != 1 else ''} "
                       "paired")
        return True

    def release(self, device: str) -> None:
        """The admitted device's pairing failed: its place is free again."""
        self._admitted.pop(device, None)

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
                "opened": self.opened, "bonds": self.bonds, "new_bonds": self.new_bonds}


@attrs.frozen
class WindowPolicy:
    """NoInputNoOutput, like Just Works, but only while the pairing window has a place."""

    window: PairingWindow
    mode: str = "window"
    capability: str = "NoInputNoOutput"

    def decide(self, request: PairingRequest) -> Decision:
        if request.kind == AUTHORIZE_SERVICE:
            return Decision.no(NO_PROFILES)
        if request.kind not in _JUST_WORKS_KINDS:
            return Decision.no(f"{request.kind} is not offered by {self.capability}")
        return self.window.admit(request.device)


@attrs.frozen
class PasskeyPolicy:
    """DisplayOnly: the phone's user types the passkey we show, so the bond is
    protected against a man in the middle; only while the window has a place.

    bluetoothd does not wait for an answer to ``DisplayPasskey``: outside the
    window the passkey is shown to nobody, so the pairing cannot complete.
    Just Works (no passkey) is refused: it would give an unauthenticated bond.
    """

    window: PairingWindow
    mode: str = "passkey"
    capability: str = "DisplayOnly"

    def decide(self, request: PairingRequest) -> Decision:
        if request.kind == AUTHORIZE_SERVICE:
            return Decision.no(NO_PROFILES)
        if request.kind != DISPLAY_PASSKEY:
            return Decision.no(f"{request.kind}: passkey mode pairs only with a passkey")
        return self.window.admit(request.device)


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
