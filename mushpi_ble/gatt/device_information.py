"""The Device Information Service (0x180A) as data: any application can add it.

Phone makers' guidelines ask an accessory to say who made it, what it is and
which firmware it runs; nRF Connect and apps show it. bluetoothd's own 0x180A
(the deviceinfo plugin) carries only a PnP ID, so an application that wants
these strings serves its own service beside it. Each value is a constant
UTF-8 string answered from memory; a value that is None is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .model import Characteristic, Service, fixed_handles
from .requests import ReadRequest

DEVICE_INFORMATION = "180a"
MANUFACTURER_NAME = "2a29"
MODEL_NUMBER = "2a24"
SERIAL_NUMBER = "2a25"
HARDWARE_REVISION = "2a27"
FIRMWARE_REVISION = "2a26"
SOFTWARE_REVISION = "2a28"

MAX_VALUE = 512
"""The longest attribute value ATT allows."""


def _constant(value: bytes) -> Callable[[ReadRequest], bytes]:
    def read(_request: ReadRequest) -> bytes:
        return value

    return read


def device_information_service(
    *,
    manufacturer: str | None = None,
    model: str | None = None,
    serial: str | None = None,
    hardware: str | None = None,
    firmware: str | None = None,
    software: str | None = None,
    handle: int = 0,
) -> Service:
    """A 0x180A service with the given strings, in the specification's order; ``handle``
    fixes the service's handles (0: bluetoothd chooses)."""
    rows: Sequence[tuple[str, str, str | None]] = (
        (MANUFACTURER_NAME, "manufacturer_name", manufacturer),
        (MODEL_NUMBER, "model_number", model),
        (SERIAL_NUMBER, "serial_number", serial),
        (HARDWARE_REVISION, "hardware_revision", hardware),
        (FIRMWARE_REVISION, "firmware_revision", firmware),
        (SOFTWARE_REVISION, "software_revision", software),
    )
    present = [(uuid, name, text.encode()) for uuid, name, text in rows if text is not None]
    for _uuid, name, value in present:
        if len(value) > MAX_VALUE:
            raise ValueError(f"device information {name}: {len(value)} bytes, at most "
                             f"{MAX_VALUE}")
    handles = (fixed_handles(handle, [2] * len(present)) if handle
               else (0,) * len(present))
    chars = tuple(
        Characteristic(uuid, ("read",), read=_constant(value), rejects_writes=False,
                       name=name, handle=value_handle)
        for (uuid, name, value), value_handle in zip(present, handles, strict=True)
    )
    return Service(DEVICE_INFORMATION, chars, name="device_information", handle=handle)
