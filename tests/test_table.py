"""The characteristics table: capabilities imply flags, impossible rows cannot be
written, and an eighth characteristic is one row plus its value class."""

from __future__ import annotations

import struct
from typing import Any, ClassVar, Self

import attrs
import pytest
import trio
from rig import PROTOCOL_FLAGS, make_settings

from mushpi_ble.portal import BlePortal
from mushpi_ble.protocol import (
    CHARACTERISTIC_UUIDS,
    CHARACTERISTICS,
    FIXED_SIZES,
    NOTIFYING,
    REQUIRED_BY_APP,
    WRITABLE,
    AppError,
    BytesLike,
    Characteristic,
    InvalidPayload,
    Notify,
    Read,
    ReadSource,
    Write,
    by_name,
    decode_write,
)
from mushpi_ble.testing.fakebluez import AttError, FakeBluez


def test_the_table_matches_the_protocol_flags_and_uuids() -> None:
    assert {row.name: row.flags for row in CHARACTERISTICS} == PROTOCOL_FLAGS
    assert {row.name: row.uuid for row in CHARACTERISTICS} == dict(CHARACTERISTIC_UUIDS)
    assert NOTIFYING == ("env_measurements", "status_flags", "actuator_status")
    assert set(WRITABLE) == {"control_targets", "stage_state", "override_bits",
                             "stage_thresholds"}
    assert "actuator_status" not in REQUIRED_BY_APP and len(REQUIRED_BY_APP) == 6
    assert FIXED_SIZES == {"env_measurements": 12, "status_flags": 4, "actuator_status": 6}


def test_decode_write_goes_through_the_row() -> None:
    assert decode_write("override_bits", struct.pack("<H", 1)) is not None
    with pytest.raises(KeyError, match="not a writable"):
        decode_write("env_measurements", bytes(12))
    with pytest.raises(KeyError):
        by_name("no_such_characteristic")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Read(ReadSource.GETTER), "needs"),
        (lambda: Read(ReadSource.PUBLISHED, "get_sensor_data"), "takes no"),
        (lambda: Read(ReadSource.THRESHOLDS, "get_stage_thresholds", lambda d: b""),
         "encoder"),
        (lambda: Characteristic("x", "0000aaa1-0000-1000-8000-00805f9b34fb", object, 1),
         "no capability"),
        (lambda: Characteristic("x", "0000aaa1-0000-1000-8000-00805f9b34fb", object, 1,
                                read=Read(ReadSource.PUBLISHED)), "needs notify"),
        (lambda: Characteristic("x", "0000aaa1-0000-1000-8000-00805f9b34fb", object, None,
                                notify=Notify()), "fixed size"),
    ],
)
def test_rows_that_cannot_work_cannot_be_written(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# -- an eighth characteristic --------------------------------------------------------------
@attrs.frozen
class MistPulse:
    """A made-up characteristic: mist pulse length and pause, seconds (u16 each)."""

    CHARACTERISTIC: ClassVar[str] = "mist_pulse"
    SIZE: ClassVar[int] = 4

    pulse_s: int
    pause_s: int

    @classmethod
    def from_controller(cls, data: Any) -> Self:
        data = data or {}
        return cls(int(data.get("pulse_s", 0)), int(data.get("pause_s", 0)))

    def to_controller(self) -> dict[str, int]:
        return {"pulse_s": self.pulse_s, "pause_s": self.pause_s}

    def pack(self) -> bytes:
        return struct.pack("<HH", self.pulse_s, self.pause_s)

    @classmethod
    def unpack(cls, data: BytesLike) -> Self:
        if len(data) != cls.SIZE:
            raise InvalidPayload.wrong_length(cls.CHARACTERISTIC, cls.SIZE, len(data))
        pulse, pause = struct.unpack("<HH", bytes(data))
        if not 1 <= pulse <= 600:
            raise InvalidPayload(cls.CHARACTERISTIC, "pulse_s", f"{pulse} not in 1..600",
                                 AppError.OUT_OF_RANGE)
        return cls(pulse, pause)


MIST_UUID = "12345678-1234-5678-1234-56789abcdefa"
MIST_ROW = Characteristic(
    "mist_pulse", MIST_UUID, MistPulse, MistPulse.SIZE,
    read=Read(ReadSource.GETTER, "get_control_data",
              lambda data: MistPulse.from_controller(data.get("mist_pulse")).pack()),
    write=Write(lambda data, _now: MistPulse.unpack(data), "apply_overrides"),
    handle=0x1013,  # the next free value handle after the last row's CCC (0x1011)
)


async def test_an_eighth_characteristic_is_one_row_plus_its_value_class(
        bus_address: str, bluez: FakeBluez) -> None:
    applied: list[dict[str, Any]] = []
    portal = BlePortal(make_settings(), bus=bus_address,
                       characteristics=(*CHARACTERISTICS, MIST_ROW))
    # a table of its own: its setter receives its own decoder's dict (the mapping form)
    portal.set_callbacks({"get_control_data": lambda: {"mist_pulse": {"pulse_s": 5,
                                                                      "pause_s": 55}},
                          "apply_overrides": applied.append})
    await trio.to_thread.run_sync(portal.start)
    try:
        central = await bluez.connect_central(address="11:22:33:44:55:66", mtu=185)
        assert central.characteristic(MIST_UUID).flags == ("read", "write")
        assert await central.read(MIST_UUID) == struct.pack("<HH", 5, 55)
        await central.write(MIST_UUID, struct.pack("<HH", 10, 50))
        assert applied == [{"pulse_s": 10, "pause_s": 50}]
        with pytest.raises(AttError) as refused:
            await central.write(MIST_UUID, struct.pack("<HH", 0, 50))
        assert refused.value.code == 0x81
        with pytest.raises(AttError) as short:
            await central.write(MIST_UUID, b"\x01")
        assert short.value.code == 0x0D
        assert applied == [{"pulse_s": 10, "pause_s": 50}]
        # the seven are still served as before, at the handles they always had
        assert await central.read(CHARACTERISTIC_UUIDS["env_measurements"]) == bytes(12)
        assert central.characteristic(MIST_UUID).handle == 0x1013
        for row in CHARACTERISTICS:
            assert central.characteristic(row.uuid).handle == row.handle
    finally:
        await trio.to_thread.run_sync(portal.stop)
