"""BlePortal in this process on hci0, bleak on hci1: the app's whole conversation.

The tests of one pass share one connection (``hub_link``) and run in file
order: discover, read, subscribe, get pushed values, write, get refused,
read long JSON, check the bearer, disconnect.
"""

from __future__ import annotations

import json
import re
import struct
import time
from collections import Counter

import pytest
from bleak.exc import BleakError
from conftest import (
    PORTAL_NAME,
    Bluetoothd,
    HubLink,
    Metrics,
    PortalLab,
    btmon_offset,
    btmon_since,
    wait_for,
)
from hub import EXPECTED_PROPERTIES, REQUIRED_BY_APP, Hub, att_error_code

from mushpi_ble.protocol import (
    SERVICE_UUID,
    ActuatorStatus,
    ControlTargets,
    EnvMeasurement,
    StageState,
    StatusFlags,
)

CONNECTIVITY = 1 << 4
NOTIFYING = ("env_measurements", "status_flags", "actuator_status")
# An ATT PDU on an EATT bearer (L2CAP PSM 39) from the peripheral to the
# central, in btmon's text (frame line, channel line, ATT line): sent by hci0
# or received by hci1. btmon on 6.12 decodes mostly the receiving side.
SENT_OVER_EATT = re.compile(
    r"(?:< ACL Data T[^\n]*\[hci0\]|> ACL Data RX[^\n]*\[hci1\])[^\n]*\n"
    r"\s+Channel: \d+ len \d+ (?:sdu \d+ )?\[PSM 39 mode [^\]]*\][^\n]*\n\s+ATT: ([A-Za-z ]+)")
# What only a server sends: the peripheral's own GATT client may use the bearers too.
SERVER_PDU = re.compile(r"Response|Notification|Indication")


def ensure_subscribed(link: HubLink, name: str) -> None:
    if name not in link.hub.queues:
        link.run(link.hub.subscribe(name))


def next_matching(link: HubLink, name: str, want: bytes, timeout: float) -> float:
    """Wait for notification ``want`` on ``name`` (skipping others); its arrival time."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no {name} notification {want.hex()} within {timeout} s; "
                        f"got {seen}")
        try:
            at, value = link.run(link.hub.next_value(name, remaining), remaining + 5)
        except TimeoutError:
            continue
        if value == want:
            return float(at)
        seen.append(value.hex())


def test_advert_and_discovery(bluez: str, portal_lab: PortalLab, hub_link: HubLink) -> None:
    sighting = portal_lab.sighting
    assert SERVICE_UUID in sighting.uuids
    assert PORTAL_NAME in sighting.names | {sighting.device.name}, sighting.names
    props = hub_link.hub.properties()
    assert all(name in props for name in REQUIRED_BY_APP), props
    for name, expected in EXPECTED_PROPERTIES.items():
        assert props.get(name) == expected, f"{name}: {props.get(name)} != {expected}"
    wait_for(lambda: portal_lab.status()["connection_count"] == 1, 10,
             "the portal to see the central")
    status = portal_lab.status()
    assert status["registered"] and status["advertised_name"] == PORTAL_NAME
    assert status["adapter"].endswith("hci0")


def test_reads_decode_to_the_controller_state(bluez: str, portal_lab: PortalLab,
                                              hub_link: HubLink, metrics: Metrics) -> None:
    hub: Hub = hub_link.hub
    run = hub_link.run
    controller = portal_lab.controller
    hub.read_latencies_ms.clear()
    for _ in range(8):
        env = EnvMeasurement.unpack(run(hub.read("env_measurements")))
        assert 10.0 < env.temperature < 35.0 and 300 < env.co2 < 5000
        targets = ControlTargets.unpack(run(hub.read("control_targets")))
        assert targets.to_controller()["temp_max"] == controller.control_targets["temp_max"]
        stage = StageState.unpack(run(hub.read("stage_state")))
        assert (stage.species, stage.stage) == ("Shiitake", "Pinning")
        status = StatusFlags.unpack(run(hub.read("status_flags")))
        assert status.flags & CONNECTIVITY
        ActuatorStatus.unpack(run(hub.read("actuator_status")))
    thresholds = json.loads(run(hub.read("stage_thresholds")))
    assert "species" in thresholds or "error" in thresholds
    for sample in hub.read_latencies_ms:
        metrics.add("read_latency_ms", sample)
        metrics.add(f"{bluez}.read_latency_ms", sample)


def test_subscribing_pushes_the_current_value(bluez: str, hub_link: HubLink) -> None:
    sizes = {"env_measurements": 12, "status_flags": 4, "actuator_status": 6}
    for name in NOTIFYING:
        hub_link.run(hub_link.hub.subscribe(name))
        _, value = hub_link.run(hub_link.hub.next_value(name, 10), 15)
        assert len(value) == sizes[name], f"{name}: {value.hex()}"


def test_publish_reaches_bleak(bluez: str, portal_lab: PortalLab, hub_link: HubLink,
                               metrics: Metrics) -> None:
    portal = portal_lab.portal
    for name in NOTIFYING:
        ensure_subscribed(hub_link, name)
        hub_link.hub.drain(name)
    for i in range(20):
        co2 = 4000 + i
        published = time.perf_counter()
        outcome = portal.publish_env(18.5, 91.0, co2, 3.0)
        assert outcome.value in ("queued", "coalesced"), outcome
        deadline = time.monotonic() + 10
        while True:
            arrived, value = hub_link.run(hub_link.hub.next_value(
                "env_measurements", max(0.1, deadline - time.monotonic())), 15)
            env = EnvMeasurement.unpack(value)
            if env.co2 == co2:
                break
        assert (env.temperature, env.humidity, env.light) == (18.5, 91.0, 3)
        metrics.add("notify_latency_ms", (arrived - published) * 1000)
        metrics.add(f"{bluez}.notify_latency_ms", (arrived - published) * 1000)
    # Status (the connectivity bit is the BLE layer's) and actuator state.
    portal.publish_status(1 << 2)
    want = StatusFlags.from_controller((1 << 2) | CONNECTIVITY).pack()
    next_matching(hub_link, "status_flags", want, 10)
    portal.publish_actuator({"light": True, "fan": False, "mist": True, "heater": False,
                             "fan_reason": 1, "mist_reason": 2, "light_reason": 3,
                             "heater_reason": 4})
    act = ActuatorStatus.from_controller({"light": True, "mist": True, "fan_reason": 1,
                                          "mist_reason": 2, "light_reason": 3,
                                          "heater_reason": 4}).pack()
    next_matching(hub_link, "actuator_status", act, 10)


def test_writes_reach_the_controller(bluez: str, portal_lab: PortalLab,
                                     hub_link: HubLink) -> None:
    hub: Hub = hub_link.hub
    run = hub_link.run
    controller = portal_lab.controller
    run(hub.write("control_targets",
                  struct.pack("<hhHHBHHH", 175, 235, 880, 1500, 2, 720, 720, 0)))
    wait_for(lambda: controller.control_targets.get("co2_max") == 1500, 5,
             "the controller to get the control targets")
    assert controller.control_targets == {
        "temp_min": 17.5, "temp_max": 23.5, "rh_min": 88.0, "co2_max": 1500,
        "light": {"mode": "cycle", "on_min": 720, "off_min": 720}}
    start_ts = int(time.time()) - 2 * 86400
    run(hub.write("stage_state", struct.pack("<BBBIHB", 1, 3, 3, start_ts, 10, 0)))
    wait_for(lambda: controller.stage.get("species") == "Lion's Mane", 5,
             "the controller to get the stage")
    assert controller.stage["stage"] == "Fruiting" and controller.stage["mode"] == 1
    assert controller.stage["stage_start_ts"] == start_ts
    ensure_subscribed(hub_link, "actuator_status")
    hub.drain("actuator_status")
    run(hub.write("override_bits", struct.pack("<H", 0x0085)))  # light, mist, no automation
    wait_for(lambda: controller.overrides.get("raw_bits") == 0x0085, 5,
             "the controller to get the overrides")
    assert controller.overrides["disable_automation"] is True
    deadline = time.monotonic() + 10
    while True:  # the override write publishes fresh actuator status
        _, value = run(hub.next_value("actuator_status", max(0.1, deadline - time.monotonic())),
                       15)
        if ActuatorStatus.unpack(value).relay_bits == 0x05:
            break
    # A thresholds update (species + stage + values) goes to the set callback.
    run(hub.write("stage_thresholds", json.dumps(
        {"species": "Oyster", "stage": "Fruiting", "temp_max": 22.5}).encode()))
    wait_for(lambda: controller.thresholds[("Oyster", "Fruiting")].get("temp_max") == 22.5, 5,
             "the controller to get the thresholds update")


def test_invalid_writes_are_att_errors(bluez: str, portal_lab: PortalLab,
                                       hub_link: HubLink) -> None:
    hub: Hub = hub_link.hub
    run = hub_link.run
    controller = portal_lab.controller
    writes_before = len(controller.writes)
    targets_before = dict(controller.control_targets)
    future = int(time.time()) + 7 * 86400
    cases = [
        ("control_targets", struct.pack("<hhHHBHHH", 260, 250, 800, 1200, 0, 0, 0, 0), 0x82),
        ("control_targets", struct.pack("<hhHHBHHH", 200, 260, 800, 1200, 0, 0, 0, 0)[:14],
         0x0D),
        ("override_bits", struct.pack("<H", 0x0100), 0x83),
        ("stage_state", struct.pack("<BBBIHB", 0, 1, 1, future, 5, 0), 0x84),
        ("stage_thresholds", b"{not json", 0x87),
    ]
    on_air = btmon_offset()
    for name, payload, code in cases:
        with pytest.raises((BleakError, ValueError)) as refused:
            run(hub.write(name, payload))
        assert att_error_code(refused.value) == code, f"{name}: {refused.value!r}"
    needles = [f"Error: Reserved (0x{code:02x})" for code in (0x82, 0x83, 0x84, 0x87)]
    needles.append("Error: Invalid Attribute Value Length (0x0d)")
    trace = btmon_since(on_air, *needles)
    for needle in needles:
        assert needle in trace, f"not on the air: {needle}"
    assert len(controller.writes) == writes_before
    assert controller.control_targets == targets_before
    recent = [w for w in portal_lab.portal.service.recent_writes if not w.accepted]
    assert len(recent) >= len(cases)


def test_long_thresholds_json_read(bluez: str, portal_lab: PortalLab, hub_link: HubLink,
                                   metrics: Metrics) -> None:
    hub: Hub = hub_link.hub
    run = hub_link.run
    on_air = btmon_offset()
    run(hub.write("stage_thresholds",
                  json.dumps({"species": "Lion's Mane", "stage": "Fruiting"}).encode()))
    time.sleep(0.1)  # the app waits ~100 ms between query and read
    raw = run(hub.read("stage_thresholds"))
    answer = json.loads(raw)
    expected = portal_lab.controller.get_stage_thresholds("Lion's Mane", "Fruiting")
    assert (answer["species"], answer["stage"]) == ("Lion's Mane", "Fruiting")
    for key in ("temp_min", "temp_max", "co2_max", "notes"):
        assert answer[key] == expected[key], key
    metrics.set(f"{bluez}.thresholds_json_bytes", len(raw))
    metrics.set(f"{bluez}.att_mtu", hub.mtu)
    if len(raw) > hub.mtu - 1:  # more than one ATT read: the rest came by offset
        assert "Read Blob Request" in btmon_since(on_air, "Read Blob Request")
    if bluez == "att":
        assert len(raw) > hub.mtu - 1, "the classic pass must force a long read"


def test_bearer_matches_the_configuration(bluez: str, bluetoothd: Bluetoothd,
                                          metrics: Metrics) -> None:
    """EATT bearers (L2CAP PSM 39) open only with EATT on, never with Channels=1, and serve.

    bluetoothd 5.66 on bookworm's kernel opens them one by one as LE
    credit-based channels (the kernel's enhanced credit mode is off by
    default); 5.82 on trixie's opens one Enhanced Credit channel
    (conftest.eatt_channels says why one). Either way the peripheral's
    responses and notifications must have gone out over them.
    """
    trace = btmon_since(bluetoothd.btmon_start, *(("PSM: 39 (0x0027)",) if bluez == "eatt"
                                                   else ()))
    eatt_requests = trace.count("PSM: 39 (0x0027)")
    multiple = trace.count("Handle Multiple Value Notification")
    metrics.set(f"{bluez}.eatt_channel_requests", eatt_requests)
    metrics.set(f"{bluez}.multiple_value_notifications", multiple)
    if bluez == "att":
        assert eatt_requests == 0, "EATT channels were requested with Channels=1"
        return
    assert eatt_requests > 0, "no EATT channel was requested with EATT on"
    # Served over EATT: our answers and notifications went out on a PSM 39
    # bearer. btmon drops a frame now and then under load; there are dozens.
    trace = btmon_since(bluetoothd.btmon_start)
    served = Counter(op.strip() for op in SENT_OVER_EATT.findall(trace)
                     if SERVER_PDU.search(op))
    metrics.set(f"{bluez}.served_over_eatt", dict(served))
    assert served, "the peripheral sent no ATT response or notification over an EATT bearer"


def test_disconnect(bluez: str, portal_lab: PortalLab, hub_link: HubLink,
                   metrics: Metrics) -> None:
    before = portal_lab.status()["disconnects"]
    took = hub_link.run(hub_link.hub.disconnect(), 30)
    metrics.add("disconnect_s", took)

    def gone() -> bool:  # get_status() is read field by field from another thread
        status = portal_lab.status()
        return bool(status["connection_count"] == 0 and status["disconnects"] == before + 1)

    wait_for(gone, 15, "the portal to see the central leave (and count it)")
    assert hub_link.hub.disconnected.is_set()
