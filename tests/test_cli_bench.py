"""The benchmark harness: ``mushpi-ble bench`` end to end, the report when a peer is
missing, and the pieces every benchmark shares (percentiles, the report schema, the
child-process protocol)."""

from __future__ import annotations

import io
import json
import math
import statistics
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from mushpi_ble.bench import results, stats, wire
from mushpi_ble.bench import suite as bench
from mushpi_ble.bench.children import Child, ChildFailed
from mushpi_ble.bench.peer import READABLE, PeerState, peer_characteristics
from mushpi_ble.cli import main
from mushpi_ble.protocol import (
    CHARACTERISTICS,
    ControlTargets,
    InvalidPayload,
    ThresholdsQuery,
)

PEER = "bluez_peripheral"


def test_quick_run_prints_both_rows_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"

    assert main(["bench", "--quick", "--output", str(out)]) == 0

    text = capsys.readouterr().out
    rows = {line.split()[0].rstrip(":"): line for line in text.splitlines()
            if line.startswith(("mushpi_ble ", f"{PEER} ", f"{PEER}:"))}
    assert set(rows) == {"mushpi_ble", PEER}, text
    assert "peripheral (its own process" in text
    assert "offer→central" in text  # the peripheral's own figures came back from its process

    report = json.loads(out.read_text())
    results.check_report(report)
    assert report["benchmark"] == "suite"
    assert report["config"]["quick"] is True
    figures = report["results"]
    assert {"peripheral", "side_by_side", "ratios"} <= set(figures)
    assert figures["peripheral"]["status"] == "ok"
    assert {"read_us", "notify_latency_us", "sustained", "peak_rss_mib"} <= set(
        figures["peripheral"])
    assert set(figures["peripheral"]["notify_latency_us"]) == set(stats.SUMMARY_KEYS)

    ours = figures["side_by_side"]["mushpi_ble"]
    assert ours["status"] == "ok", ours
    assert set(ours["read_us"]) == set(stats.SUMMARY_KEYS)
    assert ours["read_us"]["p50"] > 0
    assert ours["notifications"]["received"] == ours["notifications"]["requested"]
    assert ours["notifications"]["loss_percent"] == 0
    assert ours["peak_rss_mib"] > 0
    assert ours["unpaced"]["on_bus"] is True
    assert ours["value_pushed_on_subscribe"] is True

    peer = figures["side_by_side"][PEER]
    if peer["status"] == "ok":
        assert {"read_us", "notifications", "unpaced", "peak_rss_mib"} <= set(peer)
        assert peer["notifications"]["per_s"] > 0
        assert set(figures["ratios"][PEER]) >= {"read_p50", "read_p95", "read_p99",
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
    return results.report(
        "suite", config={"quick": True, "counts": {"reads": 1, "notifications": 500,
                                                   "batch": 64}},
        results={"peripheral": {"status": "failed", "error": "the server process closed"},
                 "side_by_side": rows, "ratios": bench.ratios(rows)})


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
    assert "  peripheral: failed: the server process closed" in text


def test_benchmark_packets_carry_their_sequence_number() -> None:
    from mushpi_ble.protocol import encode_env

    assert bench.decode_seq(encode_env(-12.3, 50.0, 70_000 & 0xFFFF, 70_000 >> 16, 5)) == 70_000
    assert bench.decode_seq(encode_env(21.5, 88.0, 950, 600, 5)) is None
    assert bench.decode_seq(b"\x00" * 4) is None


def test_a_peer_that_is_not_installed_is_not_started() -> None:
    import trio

    row = trio.run(bench.measure_library, "unix:path=/nonexistent", "no_such_peer_library",
                   bench.QUICK)

    assert row["status"] == "not installed"
    assert row["error"].startswith("not installed (pip install")


# ----------------------------------------------------------------------
# the one percentile definition and summary shape
# ----------------------------------------------------------------------
def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]

    assert stats.percentile(values, 0) == 15.0
    assert stats.percentile(values, 50) == 35.0
    assert stats.percentile(values, 100) == 50.0
    assert stats.percentile(values, 40) == pytest.approx(29.0)  # rank 1.6: 20 + 0.6 × 15
    assert stats.percentile(list(reversed(values)), 40) == pytest.approx(29.0)
    assert stats.percentile([7.0], 99) == 7.0
    assert math.isnan(stats.percentile([], 50))


@pytest.mark.parametrize("pct", [5, 25, 50, 75, 95, 99])
def test_percentile_is_the_inclusive_quantile(pct: int) -> None:
    values = [float(v * v % 97) for v in range(1, 60)]
    expected = statistics.quantiles(values, n=100, method="inclusive")[pct - 1]

    assert stats.percentile(values, pct) == pytest.approx(expected)


def test_summary_has_one_shape_and_scales_its_samples() -> None:
    ns = [1_000, 2_000, 3_000, 4_000]

    us = stats.summary(ns, 1e-3)

    assert tuple(us) == stats.SUMMARY_KEYS
    assert us["min"] == 1.0 and us["max"] == 4.0 and us["mean"] == 2.5 and us["n"] == 4
    assert us["p50"] == stats.percentile([1.0, 2.0, 3.0, 4.0], 50)
    empty = stats.summary([])
    assert tuple(empty) == stats.SUMMARY_KEYS
    assert empty["n"] == 0 and math.isnan(empty["p99"])


def test_ratio_and_median_skip_missing_numbers() -> None:
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.ratio(1.0, 0.0) is None
    assert stats.ratio(math.nan, 1.0) is None
    assert stats.ratio(None, 1.0) is None
    assert stats.median([3.0, None, math.nan, 1.0]) == 2.0
    assert stats.median([None]) is None
    assert stats.fmt(math.nan) == "-" and stats.fmt(1234.5, 1) == "1,234.5"


# ----------------------------------------------------------------------
# the one report schema
# ----------------------------------------------------------------------
def test_json_prints_the_report_itself_on_stdout_and_output_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json means "JSON on stdout" in every command (a pipe into jq); --output the file."""
    report = results.report("x", config={}, results={"a": 1}, packages=())
    path = results.publish(report, "the tables", output=tmp_path / "x.json", as_json=True)
    out, err = capsys.readouterr()
    assert json.loads(out)["results"] == {"a": 1} and "the tables" not in out
    assert f"wrote {path}" in err and json.loads(path.read_text())["benchmark"] == "x"
    results.publish(report, "the tables", output=path, as_json=False)
    assert capsys.readouterr().out == f"the tables\nwrote {path}\n"


def test_a_report_is_written_as_strict_json_in_the_envelope(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "x.json"
    data = results.report("x", config={"n": 1}, results={"lat": stats.summary([])},
                          packages=["trio"], extra_field=5)

    results.write_report(path, data)

    text = path.read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert tuple(loaded) == results.REPORT_KEYS
    assert loaded["schema"] == results.SCHEMA and loaded["benchmark"] == "x"
    assert loaded["results"]["lat"]["p50"] is None
    assert loaded["environment"]["extra_field"] == 5
    assert set(loaded["environment"]["packages"]) == {"mushpi-ble", "trio"}
    assert results.default_path("x") == Path("bench-results/x.json")


def test_a_report_outside_the_schema_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing"):
        results.write_report(tmp_path / "x.json", {"benchmark": "x", "results": {}})
    assert not (tmp_path / "x.json").exists()


# ----------------------------------------------------------------------
# the one child-process protocol
# ----------------------------------------------------------------------
def test_lines_become_events_across_chunks_and_noise_is_skipped() -> None:
    lines = wire.LineBuffer()

    assert lines.feed(b'{"event": "ready", "na') == []
    assert lines.feed(b'me": ":1.5"}\nlibrary chatter\n[1]\n{"event": "done"}\n') == [
        {"event": "ready", "name": ":1.5"}, {"event": "done"}]
    assert wire.decode_line(wire.command_line("notify", count=3)) == {"cmd": "notify",
                                                                      "count": 3}


def test_a_server_answers_each_command_until_quit() -> None:
    commands = [wire.command_line("double", n=2).decode(), "not json\n",
                wire.command_line("nope").decode(), wire.command_line("quit").decode(),
                wire.command_line("double", n=5).decode()]
    out = io.StringIO()

    with redirect_stdout(out):
        wire.serve_commands({"double": lambda c: {"n": c["n"] * 2}}, commands)

    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert answers == [{"event": "done", "n": 4},
                       {"event": "done", "error": "unknown command 'nope'"}]


async def test_a_server_that_cannot_serve_says_why() -> None:
    argv = wire.server_argv("peer", "no_such_library", "unix:path=/nonexistent")

    async with Child(argv) as child:
        with pytest.raises(ChildFailed) as failed:
            await child.ready(30.0)

    assert failed.value.kind == "not installed"
    assert "no_such_library" in failed.value.error


# ----------------------------------------------------------------------
# the peer: the protocol's table, served from static state
# ----------------------------------------------------------------------
def test_the_peer_serves_the_protocol_table_and_the_benchmarks_read_its_readable_rows() -> None:
    assert peer_characteristics() == CHARACTERISTICS
    assert tuple(c.name for c in CHARACTERISTICS if "read" in c.flags) == READABLE
    assert "override_bits" not in READABLE


def test_the_peer_answers_reads_and_writes_through_the_table() -> None:
    state = PeerState()

    for row in CHARACTERISTICS:
        if row.read is not None and row.size is not None:
            assert len(state.read(row.name)) == row.size, row.name
    targets = ControlTargets.from_controller(None).pack()
    state.write("control_targets", targets)
    assert state.read("control_targets") == targets
    state.write("stage_thresholds", ThresholdsQuery("Shiitake", "Pinning").pack())
    assert state.cursor == ("Shiitake", "Pinning")
    answer = json.loads(state.read("stage_thresholds"))
    assert (answer["species"], answer["stage"]) == ("Shiitake", "Pinning")
    with pytest.raises(InvalidPayload):
        state.write("control_targets", b"\x00")


def test_notify_paths_runs_both_paths_side_by_side(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "paths.json"
    assert main(["bench", "--notify-paths", "--quick", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[1].startswith("signal") and text.splitlines()[2].startswith("socket")
    report = json.loads(out.read_text())
    results.check_report(report)
    assert report["benchmark"] == "notify-paths"
    rows = report["results"]["paths"]
    assert rows["signal"]["path_taken"] == "signal" and rows["socket"]["path_taken"] == "socket"
    for row in rows.values():
        assert set(row["latency_us"]) == set(stats.SUMMARY_KEYS)
        assert row["cpu_us_per_notification"]["process"] > 0
        slow = row["slow_phone"]
        assert slow["fast_phone_received"] == slow["published"]  # the other phone: every one
    # the slow phone's backlog: unbounded in bluetoothd on signals, bounded by us on sockets
    assert rows["socket"]["slow_phone"]["slow_phone_peak_waiting_in_bluetoothd"] == 0
    assert rows["socket"]["slow_phone"]["slow_phone_peak_waiting_in_our_queue"] <= 64
    assert rows["socket"]["slow_phone"]["slow_phone_dropped_by_policy"] > 0


def test_hostile_runs_every_flood_twice_and_the_flooder_gets_its_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mushpi_ble.bench import hostile

    out = tmp_path / "hostile.json"
    assert main(["bench", "--hostile", "--quick", "--output", str(out)]) == 0
    figures = json.loads(out.read_text())["results"]
    expected = [*hostile.SITUATIONS, *(name + hostile.AGAIN for name in hostile.REPEATED)]
    assert [name for name in expected if "read_us" in figures[name]] == expected
    # every read answered, the huge calls refused as too large, each flood drained
    assert all(figures[name]["reads_failed"] == 0 for name in expected)
    for name in ("huge", "huge" + hostile.AGAIN):
        assert figures[name]["trouble"]["errors"] == {
            "org.freedesktop.DBus.Error.LimitsExceeded": hostile.QUICK.huge_calls}
    assert all(figures[name]["trouble"]["drained_s"] is not None for name in hostile.REPEATED)
    growth = hostile.rss_growth(figures)
    assert set(growth) == set(hostile.REPEATED)
    assert "RSS growth, first run → second run of each flood" in capsys.readouterr().out
