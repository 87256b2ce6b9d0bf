"""Log lines as JSON objects with their fields as keys, and with journald's priorities."""

from __future__ import annotations

import json
import logging

from mushpi_ble.cli.logs import JournalPrefix, JsonFormatter, fields, formatter, priority


def record(message: str, level: int = logging.WARNING, *args: object) -> logging.LogRecord:
    return logging.LogRecord("mushpi_ble.peripheral", level, __file__, 1, message, args, None)


def test_a_json_line_carries_the_message_fields_as_keys_and_an_iso_time() -> None:
    line = JsonFormatter().format(record(
        "central connected device=%s address=%s mtu=%d reason='a b'",
        logging.INFO, "/org/bluez/hci0/dev_AA", "AA:BB", 247))
    entry = json.loads(line)
    assert entry["message"].startswith("central connected device=")
    assert entry["device"] == "/org/bluez/hci0/dev_AA" and entry["address"] == "AA:BB"
    assert entry["mtu"] == 247 and entry["reason"] == "a b"
    assert entry["level"] == "INFO" and entry["priority"] == 6
    assert entry["logger"] == "mushpi_ble.peripheral"
    assert entry["time"].endswith("Z") and "T" in entry["time"]


def test_fields_never_override_the_line_itself() -> None:
    assert fields("x level=debug message=hi time=1 n=2.5") == {"n": 2.5}


def test_under_systemd_each_line_starts_with_the_priority_journald_reads() -> None:
    prefixed = formatter("text", journald=True)
    assert isinstance(prefixed, JournalPrefix)
    assert prefixed.format(record("advertisement refused")).startswith("<4>")
    assert formatter("json", journald=True).format(
        record("x", logging.ERROR)).startswith('<3>{"time"')
    assert not formatter("text", journald=False).format(record("x")).startswith("<")
    assert [priority(level) for level in (10, 20, 25, 30, 40, 50)] == [7, 6, 6, 4, 3, 2]
