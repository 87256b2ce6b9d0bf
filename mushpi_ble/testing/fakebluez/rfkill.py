"""A fake ``/sys/class/rfkill``: one ``rfkillN`` directory per adapter, like the kernel's.

Tests block an adapter here (as ``rfkill block`` would); the fake bluetoothd
follows the files, so a program that lifts the soft block by writing ``0``
to ``soft`` (what :class:`mushpi_ble.gatt.rfkill.Rfkill` does without
``/dev/rfkill``) sees the adapter come back exactly as on a Pi. Nothing here
needs root or a real rfkill device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import trio

from .adapter import FakeAdapter

log = logging.getLogger(__name__)

POLL_S = 0.01


class FakeRfkill:
    """The switch files of a set of adapters under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, int] = {}
        root.mkdir(parents=True, exist_ok=True)

    def add(self, adapter_id: str) -> Path:
        """The adapter's switch (``type`` bluetooth, ``name`` hciN), unblocked."""
        if adapter_id not in self._index:
            self._index[adapter_id] = len(self._index)
        entry = self.entry(adapter_id)
        entry.mkdir(exist_ok=True)
        index = self._index[adapter_id]
        for name, value in (("type", "bluetooth"), ("name", adapter_id), ("soft", "0"),
                            ("hard", "0"), ("index", str(index))):
            (entry / name).write_text(value + "\n")
        return entry

    def add_platform_switch(self, name: str = "bcm43xx Bluetooth") -> Path:
        """A board-wide bluetooth switch, not named after an adapter."""
        self._index[name] = len(self._index)
        entry = self.root / f"rfkill{self._index[name]}"
        entry.mkdir(exist_ok=True)
        for key, value in (("type", "bluetooth"), ("name", name), ("soft", "0"),
                           ("hard", "0")):
            (entry / key).write_text(value + "\n")
        return entry

    def entry(self, adapter_id: str) -> Path:
        return self.root / f"rfkill{self._index[adapter_id]}"

    def block(self, adapter_id: str, *, soft: bool | None = None,
              hard: bool | None = None) -> None:
        """Set the switch files; the watcher applies them to the adapter."""
        entry = self.entry(adapter_id)
        if soft is not None:
            (entry / "soft").write_text("1\n" if soft else "0\n")
        if hard is not None:
            (entry / "hard").write_text("1\n" if hard else "0\n")

    def read(self, adapter_id: str) -> tuple[bool, bool]:
        entry = self.entry(adapter_id)
        return ((entry / "soft").read_text().strip() == "1",
                (entry / "hard").read_text().strip() == "1")

    async def follow(self, adapters: Callable[[], dict[str, FakeAdapter]], *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply file changes to the adapters, as the kernel and bluetoothd's rfkill watch."""
        task_status.started()
        while True:
            for adapter_id, adapter in adapters().items():
                if adapter_id not in self._index:
                    self.add(adapter_id)
                    continue
                try:
                    soft, hard = self.read(adapter_id)
                except OSError:
                    continue
                if (soft, hard) != (adapter.soft_blocked, adapter.hard_blocked):
                    log.info("rfkill switch changed adapter=%s soft=%s hard=%s", adapter_id,
                             soft, hard)
                    await adapter.set_blocked(soft=soft, hard=hard)
            await trio.sleep(POLL_S)
