"""Golden vectors packed and unpacked at run time, for ``mushpi-ble check``.

A deployed Pi can prove its codecs still produce the bytes the phone app
expects without a phone: each line starts with ``ok`` or ``FAIL``.
"""

from __future__ import annotations

from collections.abc import Callable

from .actuator import ActuatorStatus
from .env import EnvMeasurement
from .errors import AppError, InvalidPayload
from .overrides import OverrideBits
from .stage import StageState
from .status import StatusFlags
from .targets import ControlTargets
from .thresholds import (
    ThresholdsQuery,
    decode_thresholds_write,
    encode_thresholds_answer,
)

__all__ = ["self_check"]

_NOW = 1_700_000_100.0


def _now() -> float:
    return _NOW


_Packable = (
    EnvMeasurement
    | StatusFlags
    | ActuatorStatus
    | ControlTargets
    | StageState
    | OverrideBits
    | ThresholdsQuery
)


def _golden() -> list[tuple[str, _Packable, str, Callable[[bytes], object]]]:
    """(label, value, expected hex, decoder) — the hex is computed by hand."""
    return [
        (
            "env 21.57 C, 65 %, 800 ppm, light 300, uptime 123456 ms",
            EnvMeasurement.from_readings(21.57, 65.0, 800, 300, 123456),
            "2003d7008a022c0140e20100",
            EnvMeasurement.unpack,
        ),
        (
            "env -3.27 C, co2 70000 and uptime 2**32+5 clamped",
            EnvMeasurement.from_readings(-3.27, 45.67, 70000, 512.9, 2**32 + 5),
            "ffffe0ffc8010002ffffffff",
            EnvMeasurement.unpack,
        ),
        (
            "status sensor error + connectivity + simulation",
            StatusFlags(0x0091),
            "91000000",
            StatusFlags.unpack,
        ),
        (
            "actuator light+fan+heater on, reasons fan 3 mist 0 light 1 heater 255",
            ActuatorStatus(True, True, False, True, 3, 0, 1, 255),
            "0b00030001ff",
            ActuatorStatus.unpack,
        ),
        (
            "control targets default (20.0, 28.0, 70.0, 5000, off)",
            ControlTargets.from_controller(None),
            "c8001801bc02881300000000000000",
            ControlTargets.unpack,
        ),
        (
            "control targets 18.5..24.0 C, 85 %, 1200 ppm, cycle 720/720",
            ControlTargets.from_controller(
                {
                    "temp_min": 18.5,
                    "temp_max": 24.0,
                    "rh_min": 85.0,
                    "co2_max": 1200,
                    "light": {"mode": "cycle", "on_min": 720, "off_min": 720},
                }
            ),
            "b900f0005203b00402d002d0020000",
            ControlTargets.unpack,
        ),
        (
            "stage SEMI Shiitake Pinning since 1700000000, 14 days",
            StageState.from_controller(
                {
                    "mode": "semi",
                    "species": "Shiitake",
                    "stage": "Pinning",
                    "stage_start_ts": 1_700_000_000,
                    "expected_days": 14,
                }
            ),
            "01020200f153650e0000",
            lambda data: StageState.unpack(data, now=_now),
        ),
        (
            "override light + heater + disable automation",
            OverrideBits(light=True, heater=True, disable_automation=True),
            "8900",
            OverrideBits.unpack,
        ),
        (
            "thresholds query Oyster/Pinning",
            ThresholdsQuery("Oyster", "Pinning"),
            b'{"species":"Oyster","stage":"Pinning"}'.hex(),
            decode_thresholds_write,
        ),
    ]


_REJECTIONS: list[tuple[str, Callable[[], object], AppError | None]] = [
    (
        "control targets 14 bytes",
        lambda: ControlTargets.unpack(bytes(14)),
        None,
    ),
    (
        "control targets temp_min >= temp_max",
        lambda: ControlTargets.unpack(bytes.fromhex("fa00f000bc02881300000000000000")),
        AppError.INCONSISTENT,
    ),
    (
        "override bit 15",
        lambda: OverrideBits.unpack(bytes.fromhex("0080")),
        AppError.FORBIDDEN_BITS,
    ),
    (
        "stage start in the future",
        lambda: StageState.unpack(bytes.fromhex("01020200f253650e0000"), now=_now),
        AppError.TIMESTAMP_IN_FUTURE,
    ),
    (
        "thresholds JSON array",
        lambda: decode_thresholds_write(b"[]"),
        AppError.JSON_SHAPE,
    ),
]


def self_check() -> list[str]:
    """Pack and unpack every golden vector; one line per check, ``ok`` or ``FAIL``."""
    lines: list[str] = []
    for label, value, expected, decode in _golden():
        try:
            packed = value.pack()
            back = decode(packed)
        except Exception as exc:  # a self-check reports, it does not crash
            lines.append(f"FAIL {label}: {type(exc).__name__}: {exc}")
            continue
        if packed.hex() != expected:
            lines.append(f"FAIL {label}: packed {packed.hex()}, expected {expected}")
        elif back != value:
            lines.append(f"FAIL {label}: unpacked {back!r}, expected {value!r}")
        else:
            lines.append(f"ok   {label}: {expected}")
    for label, attempt, code in _REJECTIONS:
        try:
            attempt()
        except InvalidPayload as exc:
            if exc.app_code == code:
                lines.append(f"ok   rejects {label}: {exc}")
            else:
                lines.append(f"FAIL rejects {label} with {exc.app_code!r}, expected {code!r}")
        except Exception as exc:  # a self-check reports, it does not crash
            lines.append(f"FAIL rejects {label}: {type(exc).__name__}: {exc}")
        else:
            lines.append(f"FAIL {label} was accepted")
    answer = encode_thresholds_answer("Oyster", "Fruiting", None)
    expected_answer = b'{"error":"Stage not found","species":"Oyster","stage":"Fruiting"}'
    if answer == expected_answer:
        lines.append(f"ok   thresholds answer not found: {answer.decode()}")
    else:
        lines.append(f"FAIL thresholds answer not found: {answer!r}")
    return lines
