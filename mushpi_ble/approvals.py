"""The phones the grower approved: ours, not bluetoothd's, kept in the state directory.

A bond in bluetoothd says only that *someone* paired the phone: another
local client's agent, the kernel on its own (BR/EDR Just Works), or an open
room before access was bonded. An address is approved here when our agent
admitted it in a pairing window and ``Paired`` followed, or when the grower
approved it by hand; bonded access needs both the bond and this.

The list is one JSON file (:data:`FILE_NAME`), replaced atomically (a
temporary file in the same directory, flushed, renamed over it), so a power
cut leaves the old list or the new one, never half of either. A file that
cannot be read as a list is kept aside under a new name, reported, and
nothing is approved: a damaged list must never approve a phone by accident.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from .files import write_atomically

log = logging.getLogger(__name__)

FILE_NAME = "approved-bonds.json"
SCHEMA = "mushpi-ble-approved-bonds/1"
ADDRESS_RE = re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2}){5}")
HOW = ("window", "passkey", "grower")
"""How an address was approved: our agent in a window (Just Works or passkey), or by hand."""


class ApprovalsError(ValueError):
    """The file is there but is not an approved-bond list."""


@attrs.frozen
class Approval:
    address: str
    how: str
    at: float
    name: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.address, "how": self.how, "at": self.at, "name": self.name}


def _parse(text: str) -> dict[str, Approval]:
    """Every entry checked; one bad entry makes the whole file unusable."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ApprovalsError(f"not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or \
            not isinstance(data.get("bonds"), list):
        raise ApprovalsError(f"not a {SCHEMA} document")
    out: dict[str, Approval] = {}
    for entry in data["bonds"]:
        try:
            approval = Approval(address=entry["address"], how=entry["how"],
                                at=float(entry["at"]), name=str(entry.get("name", "")))
        except (TypeError, KeyError, ValueError):
            raise ApprovalsError(f"entry {entry!r} lacks address, how or at") from None
        if not isinstance(approval.address, str) or \
                not ADDRESS_RE.fullmatch(approval.address) or approval.how not in HOW:
            raise ApprovalsError(f"entry {entry!r} is not an approval")
        out[approval.address] = approval
    return out


def read_approved(directory: Path) -> list[str]:
    """The approved addresses in ``directory``'s list, read only (``mushpi-ble check``);
    ApprovalsError when the file is damaged, [] when there is none."""
    try:
        text = (directory / FILE_NAME).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise ApprovalsError(f"unreadable ({exc})") from None
    return sorted(_parse(text))


class ApprovedBonds:
    """The approved addresses, in memory and in ``directory/approved-bonds.json``.

    Changes are made in memory at once (any thread; the loop's reads never wait) and
    written by :meth:`save`, which callers run off the event loop; each save writes
    the newest list, so saves finishing out of order still leave the newest on disk.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self._approved: dict[str, Approval] = {}
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self.error: str | None = None
        """Why the file found at start was not used (it was kept as :attr:`kept_as`)."""
        self.kept_as: Path | None = None
        self.saved = 0

    # -- reading ---------------------------------------------------------------------
    def load(self) -> None:
        """Read the file; a missing one is an empty list. A damaged one is renamed
        aside (nothing lost), reported, and nothing is approved."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            self._unusable(f"unreadable ({exc})")
            return
        try:
            approved = _parse(text)
        except ApprovalsError as exc:
            self._unusable(str(exc))
            return
        with self._lock:
            self._approved = approved
        log.info("approved bonds loaded file=%s count=%d", self.path, len(approved))

    def _unusable(self, why: str) -> None:
        kept = self.path.with_name(f"{FILE_NAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(self.path, kept)
            self.kept_as = kept
        except OSError as exc:
            why += f"; could not be moved aside ({exc}), so nothing will be written over it"
        self.error = (f"{self.path} is not valid: {why}; nothing is approved until the grower "
                      "approves the phones again (mushpi-ble bonds --approve)")
        log.error("approved bonds file unusable: %s%s", self.error,
                  f"; kept as {kept}" if self.kept_as is not None else "")

    # -- the list ------------------------------------------------------------------------
    def __contains__(self, address: str) -> bool:
        return address.upper() in self._approved

    def addresses(self) -> list[str]:
        return sorted(self._approved)

    def add(self, address: str, how: str, name: str = "") -> bool:
        """Approve ``address``; True if it was not approved before."""
        if how not in HOW:
            raise ValueError(f"how {how!r}: allowed {', '.join(HOW)}")
        address = address.upper()
        with self._lock:
            new = address not in self._approved
            self._approved[address] = Approval(address, how, time.time(), name)
        return new

    def remove(self, address: str) -> bool:
        """Withdraw an approval; True if there was one."""
        with self._lock:
            return self._approved.pop(address.upper(), None) is not None

    # -- writing ---------------------------------------------------------------------------
    def save(self) -> None:
        """Write the list now (blocking: run it off the event loop). Refused while a
        damaged file could not be moved aside, so it is never written over."""
        if self.error is not None and self.kept_as is None:
            raise ApprovalsError(self.error)
        with self._save_lock:
            with self._lock:
                document = {"schema": SCHEMA,
                            "bonds": [a.as_dict() for a in self._approved.values()]}
            write_atomically(self.path, json.dumps(document, indent=2) + "\n")
            self.saved += 1

    def snapshot(self) -> dict[str, Any]:
        return {"file": str(self.path), "error": self.error,
                "kept_as": str(self.kept_as) if self.kept_as is not None else None}
