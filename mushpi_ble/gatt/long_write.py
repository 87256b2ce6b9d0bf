"""Long writes: a value bluetoothd hands over in pieces, joined per characteristic and phone.

bluetoothd passes each piece of a prepared (long) write as its own ``WriteValue`` with an
``offset``. The pieces are joined here; the write handler sees the whole value so far and
raises :class:`~.model.IncompleteValue` while it wants more. Offset 0 always starts afresh;
a piece that does not continue where the last one ended is refused with InvalidOffset.
"""

from __future__ import annotations

import logging

import attrs
import trio

from .errors import INVALID_VALUE_LENGTH, GattError, invalid_offset
from .model import Characteristic
from .requests import WriteRequest

log = logging.getLogger(__name__)


@attrs.define
class PendingWrite:
    """A long write being reassembled, piece by piece, for one device."""

    data: bytearray
    started: float


class LongWrites:
    """The unfinished long writes of one application, by characteristic and device.

    An unfinished write older than ``timeout`` is dropped when its next piece arrives,
    so a phone that went away mid-write cannot make a later write look continued.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._pending: dict[tuple[str, str], PendingWrite] = {}

    def assemble(self, spec: Characteristic, piece: WriteRequest) -> bytes:
        """The whole value so far: the pending pieces and this one."""
        key = (spec.uuid, piece.device)
        if piece.offset == 0:
            unfinished = self._pending.pop(key, None)
            if unfinished is not None:
                log.warning("unfinished long write discarded characteristic=%s device=%s "
                            "bytes=%d", spec.label, piece.device or "-", len(unfinished.data))
            whole = piece.value
        else:
            pending = self._pending.get(key)
            if pending is not None and trio.current_time() - pending.started > self._timeout:
                del self._pending[key]
                log.warning("unfinished long write expired characteristic=%s device=%s "
                            "bytes=%d", spec.label, piece.device or "-", len(pending.data))
                pending = None
            if pending is None or piece.offset != len(pending.data):
                have = 0 if pending is None else len(pending.data)
                self._pending.pop(key, None)
                raise invalid_offset(piece.offset, have)
            whole = bytes(pending.data) + piece.value
        if len(whole) > spec.max_write_length:
            self._pending.pop(key, None)
            raise GattError(
                INVALID_VALUE_LENGTH,
                f"{spec.label}: {len(whole)} bytes exceeds {spec.max_write_length}",
            )
        return whole

    def hold(self, spec: Characteristic, device: str, whole: bytes) -> None:
        """The handler wants more: keep what came so far for the next piece."""
        self._pending[(spec.uuid, device)] = PendingWrite(bytearray(whole), trio.current_time())

    def done(self, spec: Characteristic, device: str) -> None:
        """The handler took the whole value."""
        self._pending.pop((spec.uuid, device), None)

    def clear(self) -> None:
        """bluetoothd is gone: no write is half done."""
        self._pending.clear()
