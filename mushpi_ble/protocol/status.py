"""status_flags: 4 bytes ``<HH`` — u16 flag bits and a reserved u16 (0).

The app reads the same bytes as one u32, so the reserved half must stay 0.
"""

from __future__ import annotations

import struct
from typing import ClassVar, Self

import attrs

from ._coerce import U16_MAX, BytesLike, check_length, int_range
from .names import StatusFlag
from .uuids import STATUS_FLAGS

__all__ = ["StatusFlags"]

_STRUCT = struct.Struct("<HH")


@attrs.frozen
class StatusFlags:
    """The controller's status bits (see :class:`StatusFlag`)."""

    SIZE: ClassVar[int] = _STRUCT.size
    CHARACTERISTIC: ClassVar[str] = STATUS_FLAGS

    flags: int = attrs.field(default=0, validator=int_range(0, U16_MAX))

    @classmethod
    def from_controller(cls, flags: object) -> Self:
        """From ``update_status_flags(flags)``: an int bitfield; bits above 15 are
        dropped, anything that is not a non-negative int is 0."""
        if isinstance(flags, bool) or not isinstance(flags, int) or flags < 0:
            return cls(0)
        return cls(flags & U16_MAX)

    def to_controller(self) -> int:
        return self.flags

    @property
    def bits(self) -> StatusFlag:
        return StatusFlag(self.flags)

    def has(self, flag: StatusFlag) -> bool:
        return self.flags & flag == flag

    def with_flag(self, flag: StatusFlag, on: bool) -> Self:
        """A copy with ``flag`` set or cleared."""
        flags = self.flags | flag if on else self.flags & ~flag & U16_MAX
        return attrs.evolve(self, flags=int(flags))

    def with_connectivity(self, connected: bool) -> Self:
        """The BLE layer owns the CONNECTIVITY bit, whatever the controller says."""
        return self.with_flag(StatusFlag.CONNECTIVITY, connected)

    def pack(self) -> bytes:
        return _STRUCT.pack(self.flags, 0)

    @classmethod
    def unpack(cls, data: BytesLike) -> Self:
        """Decode a notification; the reserved half is ignored."""
        check_length(cls.CHARACTERISTIC, data, cls.SIZE)
        flags, _reserved = _STRUCT.unpack(data)
        return cls(flags)
