"""The kernel's rfkill switches for a Bluetooth adapter: read them, lift a soft block.

After an OS update or an ``rfkill block bluetooth`` a Pi's adapter can be
soft-blocked: bluetoothd then shows it powered off (``PowerState``
"off-blocked" on 5.66+) and refuses to power it on with
``org.bluez.Error.Blocked``. A soft block is lifted from software; a hard
block (a switch, the firmware) is not, and is only reported.

The state is read from sysfs (``/sys/class/rfkill/rfkillN/{type,name,soft,hard}``,
world-readable). A soft block is lifted through ``/dev/rfkill`` — one
``struct rfkill_event`` with ``RFKILL_OP_CHANGE`` (the device is usually
writable by the ``netdev`` group or the seat's user) — or, when that cannot
be opened, by writing ``0`` to the entry's sysfs ``soft`` file (root only).
Both paths can be pointed elsewhere, so tests use a plain directory.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import attrs

log = logging.getLogger(__name__)

SYSFS_ROOT = Path("/sys/class/rfkill")
DEVICE = Path("/dev/rfkill")

RFKILL_TYPE_BLUETOOTH = 2
RFKILL_OP_CHANGE = 2
EVENT = struct.Struct("=IBBBB")
"""struct rfkill_event (v1, 8 bytes): idx, type, op, soft, hard."""


class RfkillError(Exception):
    """A soft block could not be lifted (permissions, no such switch)."""


@attrs.frozen
class Switch:
    """One rfkill entry of type bluetooth."""

    index: int
    name: str
    soft: bool
    hard: bool


@attrs.frozen
class BlockState:
    """The switches that govern one adapter, combined."""

    switches: tuple[Switch, ...] = ()

    @property
    def known(self) -> bool:
        return bool(self.switches)

    @property
    def soft(self) -> bool:
        return any(s.soft for s in self.switches)

    @property
    def hard(self) -> bool:
        return any(s.hard for s in self.switches)

    def describe(self) -> str:
        """"unblocked", "soft-blocked", "hard-blocked", "soft+hard-blocked" or "unknown"."""
        if not self.known:
            return "unknown"
        if self.soft and self.hard:
            return "soft+hard-blocked"
        if self.hard:
            return "hard-blocked"
        return "soft-blocked" if self.soft else "unblocked"


def encode_change(index: int, *, soft: bool) -> bytes:
    """The ``/dev/rfkill`` write that sets one switch's soft block."""
    return EVENT.pack(index, RFKILL_TYPE_BLUETOOTH, RFKILL_OP_CHANGE, int(soft), 0)


class Rfkill:
    """rfkill as seen from ``root`` (sysfs) and ``device`` (None: sysfs writes only)."""

    def __init__(self, root: Path = SYSFS_ROOT, device: Path | None = DEVICE) -> None:
        self.root = root
        self.device = device

    def switches(self) -> list[Switch]:
        """Every bluetooth switch; an unreadable or missing tree gives none."""
        found: list[Switch] = []
        try:
            entries = sorted(self.root.iterdir())
        except OSError:
            return found
        for entry in entries:
            try:
                if _read(entry / "type") != "bluetooth":
                    continue
                index = int(entry.name.removeprefix("rfkill"))
                found.append(Switch(index, _read(entry / "name"), _read(entry / "soft") == "1",
                                    _read(entry / "hard") == "1"))
            except (OSError, ValueError):
                continue
        return found

    def state(self, adapter_id: str) -> BlockState:
        """The adapter's own switch (named hciN) and any platform-wide bluetooth switch
        (named otherwise, e.g. a laptop's or a board's); other adapters' are ignored."""
        return BlockState(tuple(s for s in self.switches()
                                if s.name == adapter_id or not s.name.startswith("hci")))

    def unblock(self, adapter_id: str) -> list[str]:
        """Lift every soft block on the adapter; the switches changed, by name."""
        changed: list[str] = []
        for switch in self.state(adapter_id).switches:
            if switch.soft:
                self._set_soft(switch, False)
                changed.append(switch.name)
        return changed

    def _set_soft(self, switch: Switch, soft: bool) -> None:
        problems: list[str] = []
        if self.device is not None:
            try:
                fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError as exc:
                problems.append(f"{self.device}: {exc.strerror or exc}")
            else:
                try:
                    os.write(fd, encode_change(switch.index, soft=soft))
                    log.info("rfkill soft block set switch=%s soft=%s via=%s", switch.name,
                             soft, self.device)
                    return
                except OSError as exc:
                    problems.append(f"{self.device}: {exc.strerror or exc}")
                finally:
                    os.close(fd)
        path = self.root / f"rfkill{switch.index}" / "soft"
        try:
            path.write_text("1" if soft else "0")
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")
            raise RfkillError("; ".join(problems)) from exc
        log.info("rfkill soft block set switch=%s soft=%s via=%s", switch.name, soft, path)


def _read(path: Path) -> str:
    return path.read_text().strip()
