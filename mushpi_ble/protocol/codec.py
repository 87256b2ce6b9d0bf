"""One entry point to decode any writable characteristic by name.

The GATT layer only knows which characteristic was written; this keeps
the name-to-decoder table in the protocol package, next to the decoders.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ._coerce import BytesLike
from .overrides import OverrideBits
from .stage import StageState
from .targets import ControlTargets
from .thresholds import ThresholdsQuery, ThresholdsUpdate, decode_thresholds_write
from .uuids import CONTROL_TARGETS, OVERRIDE_BITS, STAGE_STATE, STAGE_THRESHOLDS

__all__ = ["WriteValue", "decode_write"]

WriteValue = ControlTargets | StageState | OverrideBits | ThresholdsQuery | ThresholdsUpdate
"""What a valid write decodes to."""


def decode_write(
    characteristic: str, data: BytesLike, *, now: Callable[[], float] = time.time
) -> WriteValue:
    """Decode and validate a write to ``characteristic`` (a name from :mod:`.uuids`).

    Raises :class:`~.errors.InvalidPayload` for a bad payload and :class:`KeyError`
    for a characteristic that is not writable.
    """
    if characteristic == CONTROL_TARGETS:
        return ControlTargets.unpack(data)
    if characteristic == STAGE_STATE:
        return StageState.unpack(data, now=now)
    if characteristic == OVERRIDE_BITS:
        return OverrideBits.unpack(data)
    if characteristic == STAGE_THRESHOLDS:
        return decode_thresholds_write(data)
    raise KeyError(f"{characteristic!r} is not a writable characteristic")
