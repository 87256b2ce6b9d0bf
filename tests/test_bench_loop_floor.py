"""The event-loop floor servers of the D-Bus layer benchmark: a canned reply per call, and
the benchmark's split of CPU per call into loop and layer."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from jeepney import DBusAddress, new_method_call
from jeepney.low_level import HeaderFields, Parser

from mushpi_ble.bench import dbus_layer, dbus_report
from mushpi_ble.bench.dbus_objects import PACE_EVERY
from mushpi_ble.bench.loop_floor import CannedReplies

VALUE = bytes(range(12))


def _call(serial: int) -> bytes:
    call = new_method_call(DBusAddress("/char0", "org.example", "org.bluez.GattCharacteristic1"),
                           "ReadValue", "a{sv}", ({},))
    call.header.fields[HeaderFields.sender] = ":1.7"
    data: bytes = call.serialise(serial=serial)
    return data


def test_every_call_gets_its_reply_even_split_across_reads() -> None:
    ours, theirs = socket.socketpair()
    replies = CannedReplies(ours, VALUE)
    first, second, third = _call(5), _call(6), _call(9)
    replies.feed(first + second[:20])  # one whole call, and the start of the next
    replies.feed(second[20:] + third)
    parser = Parser()
    parser.add_data(theirs.recv(65536))
    answers = [parser.get_next_message() for _ in range(3)]
    assert [a.header.fields[HeaderFields.reply_serial] for a in answers if a] == [5, 6, 9]
    assert all(a is not None and a.body == (VALUE,) for a in answers)
    assert {a.header.fields[HeaderFields.destination] for a in answers if a} == {":1.7"}
    assert len({a.header.serial for a in answers if a}) == 3  # a serial of its own each


def test_the_benchmark_splits_cpu_into_loop_and_layer(tmp_path: Path) -> None:
    out = tmp_path / "dbus_layer.json"
    # enough of each for /proc's clock ticks (10 ms) to see some CPU
    assert dbus_layer.main(["--calls", "1500", "--signals", "6000", "--servers",
                            "ours", "trio-floor", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    ratios = data["results"]["ratios"]
    rows = data["results"]["summary"]
    assert rows["trio floor"]["rt_p50_us"] > 0  # every canned reply passed the client's check
    assert ratios["loop_floor_cpu_us_trio"] == rows["trio floor"]["server_cpu_us_per_call"]
    assert ratios["layer_cpu_us_ours"] == round(
        rows["ours"]["server_cpu_us_per_call"] - rows["trio floor"]["server_cpu_us_per_call"], 1)
    assert ratios["bus_notif_ceiling_per_s"] == round(1e6 / rows["ours"]["daemon_cpu_us_per_notif"])


def test_a_target_is_judged_on_the_ratio_as_printed() -> None:
    rows = {"ours": {"rt_p50_us": 100.0, "server_cpu_us_per_call": 92.0, "notif_per_s": 2.0},
            f"dbus-fast paced/{PACE_EVERY}": {
                "rt_p50_us": 100.4, "server_cpu_us_per_call": 91.99999999999999,
                "notif_per_s": 1.0}}
    judged = dbus_report.ratios(rows)
    assert judged["cpu_target"] == "met"  # 1.0000000000000002 is shown, and taken, as 1.00
    assert judged["p50_target"] == "met" and judged["notif_target"] == "met"
    rows["ours"]["server_cpu_us_per_call"] = 93.0
    assert dbus_report.ratios(rows)["cpu_target"] == "missed"
