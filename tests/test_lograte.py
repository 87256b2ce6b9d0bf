"""Refusals do not flood the log: the limiter alone (an injected clock, no bus), then
a thousand invalid writes from one phone through the peripheral."""

from __future__ import annotations

import logging
import struct

import pytest
from rig import Rig, phone

from mushpi_ble.core import MushPiCore, Reject
from mushpi_ble.lograte import OVERFLOW_KEY, LogRate, RateLimitedLog, Suppressed
from mushpi_ble.protocol import CHARACTERISTIC_UUIDS

UUID = CHARACTERISTIC_UUIDS


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_lines_of_a_window_pass_then_are_counted() -> None:
    clock = Clock()
    rate = LogRate(burst=3, window=60, clock=clock)
    verdicts = [rate.allow("phone-a") for _ in range(10)]
    assert [v.log for v in verdicts] == [True] * 3 + [False] * 7
    assert [v.last for v in verdicts] == [False, False, True] + [False] * 7
    # another key has its own budget
    assert rate.allow("phone-b").log
    clock.now += 59.9
    assert rate.due() == ()
    assert not rate.allow("phone-a").log


def test_an_ended_window_is_summarised_once_with_its_count() -> None:
    clock = Clock()
    rate = LogRate(burst=2, window=60, clock=clock)
    for _ in range(7):
        rate.allow("phone-a")
    clock.now += 60
    first = rate.allow("phone-a")  # the next allowed line brings the summary first
    assert first.log and first.summaries == (Suppressed("phone-a", 5, 100.0),)
    assert rate.allow("phone-a").summaries == ()
    clock.now += 60
    assert rate.due() == ()  # two lines, nothing suppressed: nothing to say
    assert rate.open_windows == 0


def test_windows_end_on_the_timer_in_opening_order() -> None:
    clock = Clock()
    rate = LogRate(burst=1, window=10, clock=clock)
    for key in ("a", "b"):
        rate.allow(key)
        rate.allow(key)
        clock.now += 1
    rate.allow("c")
    clock.now = 110.5  # a's window ended, b's not yet
    assert rate.due() == (Suppressed("a", 1, 100.0),)
    clock.now = 111.0
    assert [s.key for s in rate.due()] == ["b"]
    assert rate.open_windows == 1  # c, whose single line was logged


def test_keys_are_bounded_and_the_rest_share_one_window() -> None:
    clock = Clock()
    rate = LogRate(burst=1, window=60, max_keys=4, clock=clock)
    logged = [rate.allow(f"phone-{i}").log for i in range(100)]
    assert rate.open_windows == 4
    assert logged.count(True) == 4  # 3 keys and the overflow window's first line
    clock.now += 60
    assert rate.due()[-1] == Suppressed(OVERFLOW_KEY, 96, 100.0)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        LogRate(burst=0)
    with pytest.raises(ValueError):
        LogRate(window=0)
    with pytest.raises(ValueError):
        LogRate(max_keys=1)


def test_the_logger_says_when_it_stops_and_how_many_it_left_out(
    caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    out = RateLimitedLog(logging.getLogger("test.lograte"), "invalid writes",
                         LogRate(burst=2, window=60, clock=clock))
    caplog.set_level(logging.INFO, logger="test.lograte")
    results = [out.log("dev_1", logging.WARNING, "invalid write n=%d", n) for n in range(50)]
    assert results == [True, True] + [False] * 48
    out.flush()  # the window has not ended: nothing yet
    clock.now += 60
    out.flush()
    out.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "invalid write n=0",
        "invalid write n=1 (more invalid writes of key=dev_1 are counted, not logged, "
        "for up to 60 s)",
        "invalid writes not logged key=dev_1 count=48 window_s=60",
    ]


def test_the_core_counts_refusals_per_device_and_reports_them_after_the_window(
    caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    core = MushPiCore(monotonic=clock)
    caplog.set_level(logging.INFO, logger="mushpi_ble.core")

    def refused(device: str) -> object:
        decision = core.write("override_bits", b"\x00\x80", device)
        return decision.app_code if isinstance(decision, Reject) else decision

    assert [refused("/dev_A") for _ in range(1000)] == [0x83] * 1000
    assert refused("/dev_B") == 0x83
    core.flush_logs()
    assert len(caplog.records) == 6  # five of A's, one of B's
    clock.now += 60
    core.flush_logs()
    assert caplog.records[-1].getMessage() == (
        "invalid writes not logged key=/dev_A count=995 window_s=60")
    assert len(caplog.records) == 7


async def test_a_thousand_invalid_writes_from_one_phone_log_a_few_lines(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mushpi_ble")
    central = await phone(rig)
    other = await phone(rig, address="22:33:44:55:66:77")
    codes = []
    for _ in range(1000):
        try:
            await central.write(UUID["override_bits"], struct.pack("<H", 0x8000))
        except Exception as exc:
            codes.append(getattr(exc, "code", exc))
    assert codes == [0x83] * 1000  # every one refused with the right ATT error
    # another phone still gets its own few lines
    for _ in range(3):
        try:
            await other.write(UUID["stage_state"], b"\x00")
        except Exception as exc:
            codes.append(getattr(exc, "code", exc))
    assert codes[1000:] == [0x0D] * 3
    assert rig.controller.writes == []
    invalid = [r.getMessage() for r in caplog.records
               if r.name == "mushpi_ble.core" and "invalid write" in r.getMessage()]
    first = [m for m in invalid if central.device_path in m]
    assert len(first) == 5
    assert "counted, not logged" in first[-1]
    assert len([m for m in invalid if other.device_path in m]) == 3
    ours = [r for r in caplog.records if not r.name.startswith("mushpi_ble.testing")]
    assert len(ours) < 60  # a handful of lines, not a thousand
    assert sum(1 for e in rig.portal.service.recent_writes if not e.accepted) == 50


async def test_a_getter_that_always_raises_logs_a_few_lines(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken getter is asked on every read: each read still answers the last good
    value, but the log gets the first few failures per minute, not one per read."""
    caplog.set_level(logging.INFO, logger="mushpi_ble")

    def broken() -> dict[str, object]:
        raise OSError("i2c bus stuck")

    rig.portal.set_callbacks(get_control_targets=broken)
    central = await phone(rig)
    answers = {await central.read(UUID["control_targets"]) for _ in range(100)}
    assert len(answers) == 1  # the last good value, every time
    raised = [r.getMessage() for r in caplog.records
              if "controller call failed" in r.getMessage()]
    assert len(raised) == 5
    assert "OSError: i2c bus stuck" in raised[0]
