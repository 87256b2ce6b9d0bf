"""``mushpi-ble bench``: one quick run end to end, and the report when a peer is missing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from mushpi_ble.cli import bench, main

PEER = "bluez_peripheral"


def test_quick_run_prints_both_rows_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"

    assert main(["bench", "--quick", "--json", str(out)]) == 0

    text = capsys.readouterr().out
    rows = {line.split()[0].rstrip(":"): line for line in text.splitlines()
            if line.startswith(("mushpi_ble ", f"{PEER} ", f"{PEER}:"))}
    assert set(rows) == {"mushpi_ble", PEER}, text
    assert "peripheral (scripts/bench.py" in text
    assert "offer→central" in text  # the peripheral's own figures were read back

    report = json.loads(out.read_text())
    assert {"quick", "counts", "environment", "peripheral", "side_by_side",
            "ratios"} <= set(report)
    assert report["quick"] is True
    assert report["peripheral"]["status"] == "ok"
    assert {"read_us", "notify_latency_us", "sustained", "peak_rss_mib"} <= set(
        report["peripheral"])

    ours = report["side_by_side"]["mushpi_ble"]
    assert ours["status"] == "ok", ours
    assert {"p50", "p95", "p99"} <= set(ours["read_us"])
    assert ours["read_us"]["p50"] > 0
    assert ours["notifications"]["received"] == ours["notifications"]["requested"]
    assert ours["notifications"]["loss_percent"] == 0
    assert ours["peak_rss_mib"] > 0
    assert ours["unpaced"]["on_bus"] is True
    assert ours["value_pushed_on_subscribe"] is True

    peer = report["side_by_side"][PEER]
    if peer["status"] == "ok":
        assert {"read_us", "notifications", "unpaced", "peak_rss_mib"} <= set(peer)
        assert peer["notifications"]["per_s"] > 0
        assert set(report["ratios"][PEER]) >= {"read_p50", "read_p95", "read_p99",
                                               "notifications_per_s", "peak_rss_mib"}
        assert any(line.startswith("ratio") for line in text.splitlines())
    else:
        assert peer["error"]
        assert peer["error"] in rows[PEER]


def fake_report(peer_row: dict[str, Any]) -> dict[str, Any]:
    ours = {
        "library": "mushpi_ble", "status": "ok", "version": "0.1.0", "registration_ms": 8.0,
        "read_us": {"p50": 400.0, "p95": 500.0, "p99": 600.0},
        "notifications": {"per_s": 10_000.0, "loss_percent": 0.0, "received": 500,
                          "requested": 500},
        "unpaced": {"received": 64, "requested": 500, "on_bus": True},
        "cpu_us_per_read": math.nan, "cpu_us_per_notification": 30.0, "peak_rss_mib": 34.0,
        "advertisement": "registered", "value_pushed_on_subscribe": True,
    }
    rows = {"mushpi_ble": ours, PEER: peer_row}
    return {"quick": True, "counts": {"reads": 1, "notifications": 500, "batch": 64},
            "environment": {"python": "3.11", "cpus": 2},
            "peripheral": {"status": "failed", "error": "scripts/bench.py not found"},
            "side_by_side": rows, "ratios": bench.ratios(rows)}


@pytest.mark.parametrize(("status", "error", "expected"), [
    ("not installed", "not installed (pip install 'mushpi-ble[bench]')",
     f"{PEER}: not installed (pip install 'mushpi-ble[bench]')"),
    ("failed", "DBusError: Failed to parse advertisement.",
     f"{PEER}: failed: DBusError: Failed to parse advertisement."),
    ("skipped", "skipped (--no-peer)", f"{PEER}: skipped (--no-peer)"),
])
def test_a_peer_that_cannot_run_keeps_its_row(status: str, error: str, expected: str) -> None:
    text = bench.render(fake_report({"library": PEER, "status": status, "error": error}))

    assert expected in text.splitlines()
    assert not any(line.startswith("ratio") for line in text.splitlines())
    assert "scripts/bench.py: failed: scripts/bench.py not found" in text


def test_missing_scripts_are_reported_not_raised(tmp_path: Path) -> None:
    assert bench.run_peripheral_bench(tmp_path, quick=True)["status"] == "failed"


def test_benchmark_packets_carry_their_sequence_number() -> None:
    from mushpi_ble.protocol import encode_env

    assert bench.decode_seq(encode_env(-12.3, 50.0, 70_000 & 0xFFFF, 70_000 >> 16, 5)) == 70_000
    assert bench.decode_seq(encode_env(21.5, 88.0, 950, 600, 5)) is None
    assert bench.decode_seq(b"\x00" * 4) is None


def test_a_peer_that_is_not_installed_is_not_started() -> None:
    import trio

    row = trio.run(bench.measure_library, "unix:path=/nonexistent", "no_such_peer_library",
                   bench.QUICK, bench.SCRIPTS_DIR)

    assert row["status"] == "not installed"
    assert row["error"].startswith("not installed (pip install")
