"""GATT-server cases run by a central that is not BlueZ: Bumble on hci3.

Every other test has bluetoothd on both ends. Here Bumble (tests_vm/bumble_central.py),
with its own ATT, GATT and SMP, talks to the Pi's bluetoothd and our peripheral
(``portal_lab`` on hci0) over the emulated air, sending its requests byte for
byte. Each test's docstring names the case of BlueZ's
doc/qualification/gatt-pts.rst (the Bluetooth SIG's GATT test suite) it
corresponds to, checked against the MushPi service.

It runs once per generation, as a step of its own after the suite (its own pytest run in
the same VM, the classic (att) pass only: scripts/vm/steps.sh). For its duration
bluetoothd runs with its own ATT defaults (``ExchangeMTU`` 517, one bearer:
``BUMBLE_CONFIG``) instead of the pass's MTU 48, so that one link can be held at 23
(Bumble's server maximum 23; it never asks itself) and another can ask for 517. hci3
(the second phone's peer in tests_vm/test_60_unattended.py) is taken from bluetoothd for
Bumble; at the end bluetoothd is stopped, hci3 handed back and bluetoothd started afresh
(the next pass starts it with its own configuration again).

The links: ``link`` (MTU 23, from Bumble's static random address) for discovery,
reads, writes and notifications; ``link_517`` (the public address, as most
later links) for the MTU exchange, a long read at MTU 517 and pairing; then
links of their own for bonded-only writes, a bonded reconnect, a phone with
privacy on (resolvable private addresses made from Bumble's IRK), Service
Changed (our re-registration; a bluetoothd restart, hci3 kept by Bumble) and
robustness; last the two cases that crash bluetoothd (a request pending when
the link ends), each starting a new one when it has died.
"""

from __future__ import annotations

import contextlib
import json
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import mgmt
import pytest
from bumble import att
from bumble.core import UUID
from bumble_central import (
    BUMBLE_VERSION,
    CCC,
    DATABASE_HASH,
    OWN_PUBLIC,
    OWN_RPA,
    OWN_STATIC,
    STATIC_RANDOM,
    AttError,
    BumbleCentral,
    Link,
    OwnAddress,
    PasskeyKeyboard,
    RawRequest,
)
from conftest import (
    GENERAL,
    GENERATION,
    HELPER_ADAPTER,
    JOB,
    PERIPHERAL_ADAPTER,
    Bluetoothd,
    LoopThread,
    Metrics,
    PortalLab,
    SystemBus,
    forget_bond,
    portal_in_place_of_the_lab,
    restart_btmon_if_gone,
    wait_for,
)
from jeepney.wrappers import DBusErrorResponse

from mushpi_ble.protocol import (
    CHARACTERISTIC_NAMES,
    CHARACTERISTIC_UUIDS,
    SERVICE_UUID,
    ActuatorStatus,
    ControlTargets,
    EnvMeasurement,
    StageState,
)
from mushpi_ble.protocol.table import CHARACTERISTICS
from mushpi_ble.protocol.thresholds import encode_thresholds_answer
from mushpi_ble.service import DEVICE_INFORMATION_HANDLE

BUMBLE_INDEX = int(HELPER_ADAPTER.removeprefix("hci"))
# bluetoothd's own ATT defaults (ExchangeMTU 517), one classic bearer.
BUMBLE_CONFIG = GENERAL + "\n[GATT]\nChannels = 1\n"
# ATT error codes (Core Vol 3 Part F 3.4.1.1) and opcodes.
INVALID_HANDLE, READ_NOT_PERMITTED, WRITE_NOT_PERMITTED = 0x01, 0x02, 0x03
REQUEST_NOT_SUPPORTED, INVALID_OFFSET, INVALID_LENGTH = 0x06, 0x07, 0x0D
INSUFFICIENT_AUTHENTICATION, INSUFFICIENT_ENCRYPTION = 0x05, 0x0F
ATTRIBUTE_NOT_FOUND = 0x0A
PROPERTY = {"read": 0x02, "write": 0x08, "notify": 0x10}
READABLE = tuple(c.name for c in CHARACTERISTICS if c.read is not None)
LIONS_MANE = {"species": "Lion's Mane", "stage": "Fruiting"}


def targets(
    t_min: int = 180,
    t_max: int = 240,
    rh: int = 900,
    co2: int = 1400,
    mode: int = 2,
    on: int = 600,
    off: int = 840,
) -> bytes:
    return struct.pack("<hhHHBHHH", t_min, t_max, rh, co2, mode, on, off, 0)


def stage(start: int, mode: int = 1, species: int = 2, stage_: int = 2, days: int = 14) -> bytes:
    return struct.pack("<BBBIHB", mode, species, stage_, start, days, 0)


class BumbleLab:
    """Bumble on hci3 with its loop thread, and the portal it talks to."""

    def __init__(
        self, loop: LoopThread, central: BumbleCentral, lab: PortalLab, bus: SystemBus
    ) -> None:
        self.loop = loop
        self.central = central
        self.lab = lab
        self.bus = bus
        self.status_of: Callable[[], dict[str, Any]] = lab.status
        """Whose status says the Pi advertises: the lab's portal, or one in its place."""

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return self.loop.run(coro, timeout)

    def connect(
        self,
        mtu: int,
        *,
        encrypt: bool = False,
        own: OwnAddress = OWN_PUBLIC,
        discover: bool = True,
    ) -> Link:
        """A new link (Bumble's server maximum ``mtu``, from Bumble's ``own`` address),
        the MushPi service discovered unless ``discover`` is False (a bonded phone that
        trusts its cached handles); ``encrypt``: first with the key of an earlier
        pairing, as a bonded phone does.

        Only once the Pi advertises again (it registers its advert anew after each
        connection): btvirt completes a connection only while the peripheral advertises,
        and never one it was asked for before the advert started."""
        wait_for(
            lambda: _registered_and_advertising(self.status_of, self.bus),
            30,
            "the Pi advertising before Bumble connects",
        )
        link: Link = self.run(self.central.connect(self.lab.address, mtu=mtu, own=own), 45)
        if encrypt:
            self.run(link.connection.encrypt(), 30)
        if discover:
            self.run(link.discover(SERVICE_UUID, dict(CHARACTERISTIC_NAMES)), 60)
        return link

    def expected(self, name: str) -> bytes:
        """What a read of ``name`` must answer, from the peripheral's and the
        controller's own state."""
        core = self.lab.portal.service.core
        controller = self.lab.controller
        if name == "env_measurements":
            return bytes(core.published(name))
        if name == "status_flags":
            return bytes(core.status_packet(True))
        if name == "control_targets":
            return ControlTargets.from_controller(controller.get_control_targets()).pack()
        if name == "stage_state":
            return StageState.from_controller(controller.get_stage_data()).pack()
        if name == "actuator_status":
            return ActuatorStatus.from_controller(controller.get_control_data()).pack()
        assert name == "stage_thresholds", name
        species, stage_ = core.cursor.species, core.cursor.stage
        return encode_thresholds_answer(
            species, stage_, controller.get_stage_thresholds(species, stage_)
        )


@pytest.fixture(scope="module", autouse=True)
def classic_pass_only(bluez: str) -> None:
    """Module-scoped, so the skip comes before the module's own fixtures are set up."""
    if bluez != "att":
        pytest.skip("the Bumble pass runs once per generation, in the classic (att) pass")


def _registered_and_advertising(status_of: Callable[[], dict[str, Any]], bus: SystemBus) -> bool:
    status = status_of()
    if not (status["registered"] and status["advert_state"] == "advertising"):
        return False
    try:
        return (
            int(
                bus.get(
                    f"/org/bluez/{PERIPHERAL_ADAPTER}",
                    "org.bluez.LEAdvertisingManager1",
                    "ActiveInstances",
                )
            )
            >= 1
        )
    except (DBusErrorResponse, TimeoutError):
        return False


@pytest.fixture(scope="module")
def bumble(
    bluez: str,
    portal_lab: PortalLab,
    bluetoothd: Bluetoothd,
    system_bus: SystemBus,
    metrics: Metrics,
) -> Iterator[BumbleLab]:
    started = time.monotonic()
    wait_for(lambda: portal_lab.status()["connection_count"] == 0, 20, "no central on the Pi")
    bluetoothd.stop()
    bluetoothd.start("bumble", BUMBLE_CONFIG)
    wait_for(
        lambda: _registered_and_advertising(portal_lab.status, system_bus),
        40,
        "the portal registered and advertising on the restarted bluetoothd",
    )
    assert mgmt.set_powered(BUMBLE_INDEX, False) == 0
    loop = LoopThread("bumble")
    central = BumbleCentral(BUMBLE_INDEX, JOB / "bumble.btsnoop")
    try:
        loop.run(central.open(), 30)
        metrics.set("bumble.version", BUMBLE_VERSION)
        metrics.set("bumble.setup_s", round(time.monotonic() - started, 2))
        yield BumbleLab(loop, central, portal_lab, system_bus)
    finally:
        # hci3 goes back while bluetoothd is down, and a fresh bluetoothd takes all four
        # controllers at its start, as at every start in the lab: bluetoothd 5.82, given
        # hci3 back while it ran after this pass, crashed (SIGSEGV) in some trixie runs
        # while adding it, and in others at the lab portal's next UnregisterApplication
        # (test_bluetoothd_survived_the_bumble_pass is the pass's own check).
        if bluetoothd.exited() is not None:
            metrics.set("bumble.bluetoothd_exit", bluetoothd.exited())
        else:  # no bond of the pass outlives it
            forget_bond(system_bus, PERIPHERAL_ADAPTER, STATIC_RANDOM)
            if central.device is not None:
                forget_bond(system_bus, PERIPHERAL_ADAPTER, central.address)
        bluetoothd.stop()
        loop.run(central.close(), 20)
        loop.close()
        with contextlib.suppress(OSError):
            mgmt.set_powered(BUMBLE_INDEX, True)
        bluetoothd.start("bumble", BUMBLE_CONFIG)
        wait_for(
            lambda: _registered_and_advertising(portal_lab.status, system_bus),
            40,
            "the portal registered again after the Bumble pass",
        )
        metrics.set("bumble.btmon_restarted", restart_btmon_if_gone())
        metrics.set("bumble.pass_s", round(time.monotonic() - started, 2))


@pytest.fixture(scope="module")
def link(bumble: BumbleLab, system_bus: SystemBus) -> Iterator[Link]:
    """The MTU 23 link, from Bumble's static random address: the device that subscribes
    here is never the one that bonds later (the public address). bluetoothd 5.82 keeps
    the subscriptions of a device that becomes bonded, and crashed (SIGSEGV) at the next
    UnregisterApplication in runs where the same address had subscribed and then paired."""
    link = bumble.connect(mtu=23, own=OWN_STATIC)
    try:
        yield link
    finally:
        bumble.run(link.disconnect(), 20)
        forget_bond(system_bus, PERIPHERAL_ADAPTER, STATIC_RANDOM)


def devices_known_as(bus: SystemBus, *addresses: str) -> list[str]:
    """The Pi's Device1 objects whose Address is one of ``addresses``: a phone first seen
    under a private address keeps that object (dev_<private address>) after bluetoothd
    learned its identity address from its IRK."""
    (objects,) = bus.call(
        "/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", timeout=10
    )
    wanted = {a.upper() for a in addresses}
    return sorted(
        path
        for path, interfaces in objects.items()
        if path.startswith(f"/org/bluez/{PERIPHERAL_ADAPTER}/")
        and str(interfaces.get("org.bluez.Device1", {}).get("Address", ("s", ""))[1]).upper()
        in wanted
    )


def forget_devices(bus: SystemBus, *addresses: str) -> None:
    """``RemoveDevice`` for every object known by one of ``addresses`` (see above)."""
    for path in devices_known_as(bus, *addresses):
        with contextlib.suppress(DBusErrorResponse, TimeoutError):
            bus.call(
                f"/org/bluez/{PERIPHERAL_ADAPTER}",
                "org.bluez.Adapter1",
                "RemoveDevice",
                "o",
                (path,),
                timeout=15,
            )


def resolvable_private(address: str) -> bool:
    """A resolvable private address: the two top bits of its first octet are 0b01."""
    return int(address[:2], 16) >> 6 == 0b01


def handle(link: Link, name: str) -> int:
    return int(link.chars[name].handle)


def att_error(bumble: BumbleLab, coro: Any) -> int:
    with pytest.raises(AttError) as refused:
        bumble.run(coro)
    return refused.value.code


# -- discovery ---------------------------------------------------------------------------------
def test_discover_all_primary_services(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAD/BV-01-C: Discover All Primary Services finds GAP, GATT and MushPi."""
    uuids = {s.uuid for s in link.peer.services}
    assert {UUID(SERVICE_UUID), UUID("1800"), UUID("1801")} <= uuids, uuids


def test_discover_primary_service_by_uuid(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAD/BV-02-C: Discover Primary Service by Service UUID: one MushPi service,
    its handle range holding every characteristic."""
    services = bumble.run(link.peer.discover_service(SERVICE_UUID))
    assert len(services) == 1
    (service,) = services
    assert link.service is not None and service.handle == link.service.handle
    for char in link.chars.values():
        assert service.handle < char.handle <= service.end_group_handle


def test_discover_all_characteristics(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAD/BV-04-C: Discover All Characteristics of the MushPi service: every row of
    the table, each with exactly the properties its capabilities imply."""
    assert sorted(link.chars) == sorted(c.name for c in CHARACTERISTICS)
    for row in CHARACTERISTICS:
        want = sum(PROPERTY[flag] for flag in row.flags)
        assert int(link.chars[row.name].properties) == want, row.name


def test_discover_characteristics_by_uuid(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAD/BV-05-C: Discover Characteristics by UUID finds each one at its handle."""
    assert link.service is not None
    for name, uuid in CHARACTERISTIC_UUIDS.items():
        found = bumble.run(link.peer.discover_characteristics([uuid], link.service))
        assert [c.handle for c in found] == [handle(link, name)], name


def test_discover_all_descriptors(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAD/BV-06-C: Discover All Characteristic Descriptors: a CCC on each notifying
    characteristic and on no other (MushPi declares no user descriptions)."""
    for row in CHARACTERISTICS:
        kinds = [d.type for d in link.chars[row.name].descriptors]
        assert kinds.count(CCC) == (1 if row.notify is not None else 0), (row.name, kinds)


# -- reads -------------------------------------------------------------------------------------
def test_read_every_characteristic_byte_exact(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAR/BV-01-C: Read Characteristic Value of every readable MushPi characteristic,
    byte for byte what the peripheral and the controller hold (long values by Read Blob)."""
    assert link.mtu == 23, "bluetoothd's own MTU exchange must end at Bumble's maximum, 23"
    for name in READABLE:
        value, _ = bumble.run(link.read_long(handle(link, name)))
        assert value == bumble.expected(name), name


def test_read_using_characteristic_uuid(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAR/BV-03-C: Read Using Characteristic UUID (Read By Type) answers the value
    at the characteristic's handle."""
    for name in ("control_targets", "stage_state", "status_flags"):
        pairs = bumble.run(link.read_by_type(CHARACTERISTIC_UUIDS[name]))
        assert pairs == [(handle(link, name), bumble.expected(name))], name


def test_read_invalid_handle(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAR/BI-01-C: a Read of a handle that does not exist: Invalid Handle."""
    assert att_error(bumble, link.read(0xFFF0)) == INVALID_HANDLE


def test_read_write_only_characteristic(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAR/BI-02-C: a Read of override_bits (write only): Read Not Permitted."""
    assert att_error(bumble, link.read(handle(link, "override_bits"))) == READ_NOT_PERMITTED


def test_long_read_at_mtu_23(bumble: BumbleLab, link: Link, metrics: Metrics) -> None:
    """GATT/SR/GAW/BV-05-C then GATT/SR/GAR/BV-04-C at MTU 23: the app's thresholds query
    (longer than MTU-3, so prepared and executed), then Read Long of the JSON answer by
    Read Blob at each offset, equal to the controller's thresholds; one blob at an odd
    offset is that slice."""
    h = handle(link, "stage_thresholds")
    query = json.dumps(LIONS_MANE).encode()
    assert len(query) > link.mtu - 3
    echoes = bumble.run(link.long_write(h, query))
    assert b"".join(echoes) == query
    wait_for(
        lambda: bumble.lab.portal.service.core.cursor.species == "Lion's Mane",
        5,
        "the thresholds cursor to move",
    )
    want = bumble.expected("stage_thresholds")
    value, requests = bumble.run(link.read_long(h))
    assert value == want
    assert requests == len(want) // 22 + 1
    assert bumble.run(link.read_blob(h, 7)) == want[7 : 7 + 22]
    metrics.set("bumble.thresholds_json_bytes", len(want))


def test_read_blob_invalid_offset(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAR/BI-13-C: Read Blob past the end of the value: Invalid Offset."""
    h = handle(link, "stage_thresholds")
    length = len(bumble.expected("stage_thresholds"))
    assert att_error(bumble, link.read_blob(h, length + 1)) == INVALID_OFFSET


# -- writes ------------------------------------------------------------------------------------
def test_write_request(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAW/BV-03-C: Write Characteristic Value (Write Request): the controller gets
    the control targets; a read gives back the written bytes."""
    controller = bumble.lab.controller
    payload = targets(co2=1400)
    bumble.run(link.write(handle(link, "control_targets"), payload))
    wait_for(
        lambda: controller.control_targets.get("co2_max") == 1400,
        5,
        "the controller to get the targets",
    )
    assert bumble.run(link.read(handle(link, "control_targets"))) == payload


def test_write_command_to_a_write_request_characteristic(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAW/BV-01-C, turned round: MushPi declares no write-without-response, yet
    bluetoothd hands a Write Command to WriteValue like a request (src/gatt-database.c,
    chrc_write_cb): a valid one is applied; an invalid one is refused unseen by the phone
    (a command has no response) and nothing is applied."""
    controller = bumble.lab.controller
    h = handle(link, "control_targets")
    bumble.run(link.write_command(h, targets(co2=1450)))
    wait_for(
        lambda: controller.control_targets.get("co2_max") == 1450,
        5,
        "the controller to get the targets written as a command",
    )
    writes = len(controller.writes)
    # A command has no response: a read right behind it may be answered before the
    # write's own completion ends the read cache (500 ms), so the link is read until
    # it gives the new value, as an app that wrote without response would.
    wait_for(
        lambda: bumble.run(link.read(h)) == targets(co2=1450),
        5,
        "a read to give the value written as a command",
    )
    bumble.run(link.write_command(h, targets(t_min=250, t_max=240)))
    time.sleep(0.6)
    assert bumble.run(link.read(h)) == targets(co2=1450)  # the link still answers
    assert len(controller.writes) == writes


def test_write_not_permitted(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAW/BI-03-C: a Write to status_flags (read and notify only): Write Not
    Permitted."""
    code = att_error(bumble, link.write(handle(link, "status_flags"), b"\x00\x00\x00\x00"))
    assert code == WRITE_NOT_PERMITTED


def test_write_invalid_handle(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAW/BI-02-C: a Write to a handle that does not exist: Invalid Handle."""
    assert att_error(bumble, link.write(0xFFF0, b"\x00")) == INVALID_HANDLE


def test_write_invalid_length(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAW/BI-32-C: a Write of 13 bytes to control_targets (15): Invalid Attribute
    Value Length, nothing applied."""
    controller = bumble.lab.controller
    writes = len(controller.writes)
    code = att_error(bumble, link.write(handle(link, "control_targets"), targets()[:13]))
    assert code == INVALID_LENGTH
    assert len(controller.writes) == writes


def test_mushpi_validation_errors_apply_nothing(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAW/BI-03-C's family for application errors: each MushPi validation error
    (protocol/errors.py) on the air as its own ATT code, and the controller untouched.
    0x89 (payload too large, over 4096 bytes) cannot cross ATT: a value is at most 512."""
    controller = bumble.lab.controller
    now = int(time.time())
    cases = [
        ("control_targets", targets(co2=399), 0x81),
        ("control_targets", targets(t_min=250, t_max=240), 0x82),
        ("override_bits", struct.pack("<H", 0x0100), 0x83),
        ("stage_state", stage(now + 7 * 86400), 0x84),
        ("stage_state", stage(0), 0x85),
        ("control_targets", targets(mode=3), 0x86),
        ("stage_thresholds", b"{not json", 0x87),
        ("stage_thresholds", b"[1]", 0x88),
    ]
    writes = len(controller.writes)
    state = (dict(controller.control_targets), dict(controller.stage), dict(controller.overrides))
    for name, payload, code in cases:
        assert att_error(bumble, link.write(handle(link, name), payload)) == code, name
    assert len(controller.writes) == writes
    assert state == (
        dict(controller.control_targets),
        dict(controller.stage),
        dict(controller.overrides),
    )


def test_prepared_write_executed(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAW/BV-06-C: Reliable Write: control_targets in two Prepare Writes, each
    echoed byte for byte, then Execute Write applies the joined value."""
    controller = bumble.lab.controller
    h = handle(link, "control_targets")
    payload = targets(co2=1500)
    assert bumble.run(link.prepare(h, 0, payload[:9])) == (h, 0, payload[:9])
    assert bumble.run(link.prepare(h, 9, payload[9:])) == (h, 9, payload[9:])
    bumble.run(link.execute(True))
    wait_for(
        lambda: controller.control_targets.get("co2_max") == 1500,
        5,
        "the controller to get the executed write",
    )
    assert bumble.run(link.read(h)) == payload


def test_prepared_write_cancelled(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAW/BV-07-C: Prepare Writes then Execute Write with flags 0 (cancel):
    nothing applied."""
    controller = bumble.lab.controller
    h = handle(link, "control_targets")
    writes = len(controller.writes)
    payload = targets(co2=1600)
    bumble.run(link.prepare(h, 0, payload[:9]))
    bumble.run(link.prepare(h, 9, payload[9:]))
    bumble.run(link.execute(False))
    time.sleep(0.5)
    assert len(controller.writes) == writes
    assert bumble.run(link.read(h)) == targets(co2=1500)


def test_prepared_write_invalid_offset(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAW/BI-09-C: a prepared piece past the end of control_targets: Execute Write
    answers Invalid Offset, nothing applied."""
    controller = bumble.lab.controller
    writes = len(controller.writes)
    h = handle(link, "control_targets")
    bumble.run(link.prepare(h, 15, b"\x01\x02"))
    assert att_error(bumble, link.execute(True)) == INVALID_OFFSET
    assert len(controller.writes) == writes


def test_prepared_write_invalid_length(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAW/BI-33-C: a long write of 17 bytes to control_targets (15): Execute Write
    answers Invalid Attribute Value Length, nothing applied."""
    controller = bumble.lab.controller
    writes = len(controller.writes)
    h = handle(link, "control_targets")
    bumble.run(link.prepare(h, 0, targets()[:9]))
    bumble.run(link.prepare(h, 9, targets()[9:] + b"\x00\x00"))
    assert att_error(bumble, link.execute(True)) == INVALID_LENGTH
    assert len(controller.writes) == writes


# -- notifications -----------------------------------------------------------------------------
def test_subscribe_gets_the_current_value(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAN/BV-01-C, as the app relies on it: enabling notifications on each
    notifying characteristic pushes its current value at once."""
    for row in CHARACTERISTICS:
        if row.notify is None:
            continue
        bumble.run(link.subscribe(row.name))
        value = bumble.run(link.next_value(row.name, 10), 15)
        assert value == bumble.expected(row.name), row.name


def test_notifications_arrive_in_order(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAN/BV-01-C: published readings arrive as notifications, in order, each the
    packet a read then answers."""
    portal = bumble.lab.portal
    link.drain("env_measurements")
    seen: list[int] = []
    for co2 in range(4100, 4106):
        portal.publish_env(19.0, 90.0, co2, 2.0)
        deadline = time.monotonic() + 10
        while True:
            value = bumble.run(
                link.next_value("env_measurements", max(0.1, deadline - time.monotonic())), 15
            )
            seen.append(EnvMeasurement.unpack(value).co2)
            if seen[-1] == co2:
                break
        assert value == bumble.expected("env_measurements")
    assert seen == sorted(seen), seen


def test_unsubscribe_stops_notifications(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/GAN/BV-01-C's end: CCC written back to 0, a published reading is not sent."""
    bumble.run(link.unsubscribe("env_measurements"))
    time.sleep(0.5)
    link.drain("env_measurements")
    bumble.lab.portal.publish_env(20.0, 85.0, 4200, 1.0)
    with pytest.raises(TimeoutError):
        bumble.run(link.next_value("env_measurements", 3), 10)


# -- unsupported requests ----------------------------------------------------------------------
def test_unsupported_request(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/UNS/BI-01-C: a request with an opcode no server knows (0x3E): Error Response
    Request Not Supported naming that opcode; the link stays."""
    with pytest.raises(AttError) as refused:
        bumble.run(link.request(RawRequest(0x3E, b"\x01\x00")))
    assert (refused.value.code, refused.value.request) == (REQUEST_NOT_SUPPORTED, 0x3E)
    assert bumble.run(link.read(handle(link, "status_flags"))) == bumble.expected("status_flags")


def test_unsupported_command(bumble: BumbleLab, link: Link) -> None:
    """GATT/SR/UNS/BI-02-C: a command with an unknown opcode (0x7E) is ignored: no answer,
    the link stays and the next request is answered."""
    bumble.run(link.command(RawRequest(0x7E, b"\x01\x00")))
    assert bumble.run(link.read(handle(link, "status_flags"))) == bumble.expected("status_flags")


def test_link_23_leaves(bumble: BumbleLab, link: Link) -> None:
    """The first link ends; the peripheral counts the central gone."""
    bumble.run(link.disconnect(), 20)
    wait_for(
        lambda: bumble.lab.status()["connection_count"] == 0, 15, "the portal to see Bumble leave"
    )


# -- MTU 517 and pairing -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def link_517(bumble: BumbleLab) -> Iterator[Link]:
    link = bumble.connect(mtu=517)
    try:
        yield link
    finally:
        bumble.run(link.disconnect(), 20)


def test_exchange_mtu_517(bumble: BumbleLab, link_517: Link, metrics: Metrics) -> None:
    """GATT/SR/GAC/BV-01-C: Exchange MTU: a central asking for 517 gets 517 (bluetoothd's
    ExchangeMTU default)."""
    assert bumble.run(link_517.request_mtu(517)) == 517
    assert link_517.mtu == 517
    metrics.set("bumble.mtu_517", link_517.mtu)


def test_long_read_at_mtu_517(bumble: BumbleLab, link_517: Link) -> None:
    """GATT/SR/GAR/BV-04-C at MTU 517: the thresholds JSON in one Read (up to 516 bytes),
    and Read Blob at an offset answers that slice."""
    h = handle(link_517, "stage_thresholds")
    want = bumble.expected("stage_thresholds")
    assert bumble.run(link_517.read(h)) == want[:516]
    assert bumble.run(link_517.read_blob(h, 100)) == want[100:616]


def test_just_works_pairing(
    bumble: BumbleLab, link_517: Link, system_bus: SystemBus, metrics: Metrics
) -> None:
    """GATT/SR security precondition (SM/PER/SCJW): LE Secure Connections Just Works
    pairing started by Bumble, answered by our agent (just-works mode); bluetoothd bonds,
    the link is encrypted, and reads and writes go on over it."""
    portal = bumble.lab
    before = portal.status()["pairing"]
    assert before["mode"] == "just-works", before
    started = time.monotonic()
    bumble.run(link_517.pair(), 45)
    metrics.set("bumble.pairing_s", round(time.monotonic() - started, 2))
    assert link_517.encrypted
    address = bumble.central.address

    def paired() -> dict[str, Any] | None:
        pairing: dict[str, Any] = portal.status()["pairing"]
        mine = [a for a in pairing["recent"] if a["address"] == address]
        return pairing if pairing["paired"] > before["paired"] and mine else None

    pairing = wait_for(paired, 15, "our agent to count Bumble's pairing")
    assert [a for a in pairing["recent"] if a["address"] == address][-1]["outcome"] == "paired"
    path = f"/org/bluez/{PERIPHERAL_ADAPTER}/dev_{address.replace(':', '_')}"
    assert system_bus.get(path, "org.bluez.Device1", "Paired")
    h = handle(link_517, "control_targets")
    bumble.run(link_517.write(h, targets(co2=1700)))
    assert bumble.run(link_517.read(h)) == targets(co2=1700)


def test_link_517_leaves(bumble: BumbleLab, link_517: Link, system_bus: SystemBus) -> None:
    """The second link ends; both sides forget the bond (the next cases pair afresh)."""
    bumble.run(link_517.disconnect(), 20)
    wait_for(
        lambda: bumble.lab.status()["connection_count"] == 0, 15, "the portal to see Bumble leave"
    )
    forget_bond(system_bus, PERIPHERAL_ADAPTER, bumble.central.address)
    bumble.run(bumble.central.forget_bonds())


# -- bonded-only writes: refused before pairing, passkey entry, a pairing window ---------------
@contextlib.contextmanager
def bonded_portal(
    bumble: BumbleLab, bus: SystemBus, pairing: str
) -> Iterator[tuple[Any, list[tuple[str, int]]]]:
    """The lab's portal stopped; one whose writes need a bond (``MUSHPI_BLE_WRITE_ACCESS``
    bonded, ``MUSHPI_BLE_PAIRING`` as given) in its place, advertising; yields it and the
    passkeys it showed."""
    shown: list[tuple[str, int]] = []
    with portal_in_place_of_the_lab(
        bumble.lab,
        MUSHPI_BLE_WRITE_ACCESS="bonded",
        MUSHPI_BLE_PAIRING=pairing,
        MUSHPI_BLE_STATE_DIR=tempfile.mkdtemp(),
    ) as portal:
        portal.set_callbacks(on_pairing_passkey=lambda address, key: shown.append((address, key)))

        def ready() -> bool:
            status = portal.get_status()
            return bool(status["pairing"]["agent_registered"]) and _registered_and_advertising(
                lambda: dict(status), bus
            )

        wait_for(ready, 30, "the bonded-access portal registered and advertising")
        bumble.status_of = lambda: dict(portal.get_status())
        try:
            yield portal, shown
        finally:
            bumble.status_of = bumble.lab.status
            forget_devices(bus, bumble.central.address)
            bumble.run(bumble.central.forget_bonds())


def _control_target_writes(bumble: BumbleLab) -> int:
    return sum(1 for name, _ in bumble.lab.controller.writes if name == "control_targets")


def write_reaches_controller(
    bumble: BumbleLab, link: Link, h: int, co2: int, writes: int, what: str
) -> None:
    """A Write Request of control targets (``co2``) answered, and the controller at
    ``writes`` control-target writes within 5 s."""
    bumble.run(link.write(h, targets(co2=co2)))
    wait_for(lambda: _control_target_writes(bumble) == writes, 5, what)


def test_write_refused_before_pairing_then_passkey_entry(
    bumble: BumbleLab, system_bus: SystemBus, metrics: Metrics
) -> None:
    """GATT/SR/GAW/BI-05-C (a write the link's security does not allow) and SM passkey
    entry, with writes for bonded phones only (MUSHPI_BLE_WRITE_ACCESS=bonded, pairing
    passkey): an unpaired Bumble may read, its write is refused on the air with
    Insufficient Authentication (the passkey mode's encrypt-authenticated-write) before
    the peripheral is asked; with a pairing window open it
    pairs by typing the passkey the peripheral showed (LE Secure Connections, MITM) and
    its write then reaches the controller."""
    with bonded_portal(bumble, system_bus, "passkey") as (portal, shown):
        link = bumble.connect(mtu=23)
        try:
            h = handle(link, "control_targets")
            before = _control_target_writes(bumble)
            assert len(bumble.run(link.read(h))) == ControlTargets.SIZE
            code = att_error(bumble, link.write(h, targets(co2=1800)))
            assert code == INSUFFICIENT_AUTHENTICATION  # encrypt-authenticated-write
            assert _control_target_writes(bumble) == before
            assert portal.get_status()["access"]["refused_writes"] == 0  # bluetoothd's refusal
            portal.open_pairing_window(60)
            keyboard = PasskeyKeyboard(lambda: shown[-1][1] if shown else None)
            started = time.monotonic()
            bumble.run(link.pair(delegate=keyboard, mitm=True), 60)
            metrics.set("bumble.passkey_pairing_s", round(time.monotonic() - started, 2))
            assert link.encrypted
            assert shown and shown[-1][0] == bumble.central.address, shown
            assert keyboard.typed == shown[-1][1]
            write_reaches_controller(
                bumble, link, h, 1800, before + 1, "the bonded write to reach the controller"
            )
        finally:
            bumble.run(link.disconnect(), 20)


def test_pairing_refused_while_the_window_is_closed(
    bumble: BumbleLab, system_bus: SystemBus
) -> None:
    """GATT/SR/GAW/BI-05-C (a write the link's security does not allow; here encrypt-write,
    so Insufficient Encryption) and SM Just Works in window mode: an unpaired write is
    refused; with the pairing window
    closed our agent refuses Bumble's pairing and the write stays refused; once the
    window is open the same phone pairs (Just Works) and writes."""
    with bonded_portal(bumble, system_bus, "window") as (portal, _shown):
        link = bumble.connect(mtu=23)
        try:
            h = handle(link, "control_targets")
            before = _control_target_writes(bumble)
            with pytest.raises(Exception):  # noqa: B017 - Bumble's pairing failure, any kind
                bumble.run(link.pair(), 45)
            assert not link.encrypted
            if link.disconnected.is_set():  # bluetoothd may drop the link after it
                link = bumble.connect(mtu=23)
            assert att_error(bumble, link.write(h, targets(co2=1900))) == INSUFFICIENT_ENCRYPTION
            portal.open_pairing_window(60)
            bumble.run(link.pair(), 45)
            assert link.encrypted
            write_reaches_controller(
                bumble, link, h, 1900, before + 1, "the write after pairing in the window"
            )
        finally:
            bumble.run(link.disconnect(), 20)


# -- a bonded phone comes back; robustness -------------------------------------------------------
def test_bonded_reconnect_resubscribes(bumble: BumbleLab, system_bus: SystemBus) -> None:
    """GATT/SR/GAN/BV-01-C across a bond, as a phone that comes back does: Bumble pairs
    (Just Works, bonded), subscribes and leaves; it reconnects, encrypts at once with the
    stored key (bluetoothd asks for it with an SMP Security Request and answers no ATT
    request before), enables notifications again and must get the current value at once,
    and then the next published reading."""
    portal = bumble.lab.portal
    try:
        link = bumble.connect(mtu=23)
        try:
            bumble.run(link.pair(), 45)
            bumble.run(link.subscribe("env_measurements"))
            bumble.run(link.next_value("env_measurements", 10), 15)
        finally:
            bumble.run(link.disconnect(), 20)
        wait_for(lambda: bumble.lab.status()["connection_count"] == 0, 15, "Bumble gone")
        again = bumble.connect(mtu=23, encrypt=True)
        try:
            assert again.encrypted
            bumble.run(again.subscribe("env_measurements"))
            problems = []
            try:
                value = bumble.run(again.next_value("env_measurements", 10), 15)
                if value != bumble.expected("env_measurements"):
                    problems.append(f"the pushed value {value.hex()} is not the current one")
            except TimeoutError:
                problems.append("no current value within 10 s of the CCC write")
            again.drain("env_measurements")
            portal.publish_env(21.0, 88.0, 4321, 1.0)
            try:
                value = bumble.run(again.next_value("env_measurements", 10), 15)
                if EnvMeasurement.unpack(value).co2 != 4321:
                    problems.append(f"the next notification {value.hex()} is not the published one")
            except TimeoutError:
                problems.append("the published reading never arrived")
            assert not problems, problems
        finally:
            bumble.run(again.disconnect(), 20)
    finally:
        wait_for(lambda: bumble.lab.status()["connection_count"] == 0, 15, "Bumble gone")
        forget_bond(system_bus, PERIPHERAL_ADAPTER, bumble.central.address)
        bumble.run(bumble.central.forget_bonds())


def test_a_private_address_phone_keeps_its_bond_and_write_access(
    bumble: BumbleLab, system_bus: SystemBus, metrics: Metrics
) -> None:
    """SM/PER/KDU (key distribution: the central's IRK and identity address) and
    GATT/SR/GAW/BV-03-C across it, with writes for bonded phones only (window mode): a
    phone with privacy on connects from a resolvable private address, pairs in the
    window (Just Works; Bumble distributes its IRK and its public identity address) and
    writes; it comes back from a new private address with the window closed, encrypts
    with the stored key, and its write reaches the controller: bluetoothd resolved the
    new address to the bond, and the peripheral's approval still holds. The Pi keeps
    one device for that phone, known by its identity address, approved."""
    with bonded_portal(bumble, system_bus, "window") as (portal, _shown):
        identity = bumble.central.address
        portal.open_pairing_window(60)
        first = bumble.connect(mtu=23, own=OWN_RPA)
        h = handle(first, "control_targets")
        before = _control_target_writes(bumble)
        try:
            assert resolvable_private(first.own_address), first.own_address
            bumble.run(first.pair(), 45)
            assert first.encrypted
            write_reaches_controller(
                bumble, first, h, 2100, before + 1, "the first write after pairing"
            )
        finally:
            bumble.run(first.disconnect(), 20)
        portal.close_pairing_window()
        wait_for(lambda: portal.get_status()["connection_count"] == 0, 15, "Bumble gone")
        again = bumble.connect(mtu=23, own=OWN_RPA, encrypt=True)
        try:
            assert resolvable_private(again.own_address), again.own_address
            assert again.own_address != first.own_address
            assert again.encrypted
            write_reaches_controller(
                bumble, again, h, 2200, before + 2, "the write from the new private address"
            )
            known = devices_known_as(system_bus, identity, first.own_address, again.own_address)
            assert len(known) == 1, known
            assert system_bus.get(known[0], "org.bluez.Device1", "Paired")
            bonds = [b for b in portal.bonds() if b["address"].upper() == identity]
            assert [b["approved"] for b in bonds] == [True], portal.bonds()
            metrics.set("bumble.private_addresses", [first.own_address, again.own_address])
        finally:
            bumble.run(again.disconnect(), 20)


def database_hash(bumble: BumbleLab, link: Link) -> bytes | None:
    """The GATT service's Database Hash (Read By Type 0x2B2A), None where bluetoothd
    has none (it needs the kernel's AF_ALG crypto)."""
    try:
        ((_, value),) = bumble.run(link.read_by_type(DATABASE_HASH))
    except AttError as refused:
        if refused.code == ATTRIBUTE_NOT_FOUND:
            return None
        raise
    return value


def ranges_indicated(
    link: Link, service_changed: int, quiet_s: float, bumble: BumbleLab
) -> list[tuple[int, int]]:
    """Every Service Changed range indicated on ``link`` until ``quiet_s`` pass without one."""
    ranges: list[tuple[int, int]] = []
    while True:
        try:
            got, value = bumble.run(link.next_indication(quiet_s), quiet_s + 5)
        except TimeoutError:
            return ranges
        assert got == service_changed, f"an indication on 0x{got:04x}"
        ranges.append(struct.unpack("<HH", value))


def test_service_changed_when_the_peripheral_registers_again(
    bumble: BumbleLab, metrics: Metrics
) -> None:
    """GATT/SR/GAS/BV-01-C (Service Changed), for our own re-registration: a central
    connected with Service Changed indications on sees the peripheral stop and start
    (UnregisterApplication, RegisterApplication). bluetoothd indicates each of our
    services' range as it is removed and as it is added again, one indication a
    service, nothing else; after it, discovery finds every characteristic at the
    handle it had (fixed handles) and the Database Hash is the one before.

    Also GATT/SR/GAI/BV-01-C (an indication confirmed by the central): Service Changed
    is the only characteristic the Pi indicates (MushPi's table declares none), and
    the four indications arrive one by one, each sent only after Bumble confirmed the
    one before (ATT allows one outstanding indication)."""
    link = bumble.connect(mtu=23)
    try:
        service_changed, ccc = bumble.run(link.service_changed())
        bumble.run(link.write(ccc, struct.pack("<H", 2)))
        assert link.service is not None
        mushpi = (int(link.service.handle), int(link.service.end_group_handle))
        dis = dis_range(bumble, link)
        handles, hash_before = link.handles(), database_hash(bumble, link)
        portal = bumble.lab.portal
        portal.stop()
        portal.start()
        wait_for(lambda: bumble.lab.status()["registered"], 30, "the portal registered again")
        ranges = ranges_indicated(link, service_changed, 5, bumble)
        metrics.set("bumble.service_changed_ranges", [f"{a:04x}-{b:04x}" for a, b in ranges])
        assert sorted(ranges) == sorted([mushpi, mushpi, dis, dis]), ranges
        bumble.run(link.discover(SERVICE_UUID, dict(CHARACTERISTIC_NAMES)), 60)
        assert link.handles() == handles
        assert database_hash(bumble, link) == hash_before
        metrics.set("bumble.database_hash", hash_before.hex() if hash_before else None)
    finally:
        bumble.run(link.disconnect(), 20)


def dis_range(bumble: BumbleLab, link: Link) -> tuple[int, int]:
    """Our Device Information service's handle range, as discovered on ``link`` (bluetoothd
    5.66 serves one of its own as well, from its DeviceID setting)."""
    services = bumble.run(link.peer.discover_service(UUID.from_16_bits(0x180A)))
    (ours,) = [s for s in services if int(s.handle) == DEVICE_INFORMATION_HANDLE]
    return int(ours.handle), int(ours.end_group_handle)


def test_service_changed_for_a_bonded_phone_after_bluetoothd_restarts(
    bumble: BumbleLab, bluetoothd: Bluetoothd, system_bus: SystemBus
) -> None:
    """GATT/SR/GAS/BV-01-C across a bluetoothd restart, as a bonded phone that keeps its
    GATT cache meets it: Bumble pairs, turns Service Changed indications on and leaves;
    bluetoothd restarts (the peripheral registers again by itself); Bumble comes back,
    encrypts and discovers nothing. bluetoothd indicates Service Changed over the whole
    database (0x0001-0xFFFF: it cannot know what changed across its restart), so a phone
    discovers again; the handles it had still answer byte-exact, and discovery finds
    every characteristic where it was."""
    link = bumble.connect(mtu=23)
    try:
        bumble.run(link.pair(), 45)
        service_changed, ccc = bumble.run(link.service_changed())
        bumble.run(link.write(ccc, struct.pack("<H", 2)))
        cached, hash_before = link.handles(), database_hash(bumble, link)
    finally:
        bumble.run(link.disconnect(), 20)
    try:
        wait_for(lambda: bumble.lab.status()["connection_count"] == 0, 15, "Bumble gone")
        assert bluetoothd.exited() is None, "bluetoothd died before this case restarted it"
        bluetoothd.stop()
        bluetoothd.start("bumble", BUMBLE_CONFIG, helper=False)  # hci3 is Bumble's
        again = bumble.connect(mtu=23, encrypt=True, discover=False)
        try:
            assert again.encrypted
            got, value = bumble.run(again.next_indication(15), 20)
            assert (got, struct.unpack("<HH", value)) == (service_changed, (0x0001, 0xFFFF))
            for name in ("control_targets", "stage_state", "status_flags"):
                assert bumble.run(again.read(cached[name])) == bumble.expected(name), name
            bumble.run(again.discover(SERVICE_UUID, dict(CHARACTERISTIC_NAMES)), 60)
            assert again.handles() == cached
            assert database_hash(bumble, again) == hash_before
        finally:
            bumble.run(again.disconnect(), 20)
    finally:
        wait_for(lambda: bumble.lab.status()["connection_count"] == 0, 15, "Bumble gone")
        forget_devices(system_bus, bumble.central.address)
        bumble.run(bumble.central.forget_bonds())


def test_disconnect_in_the_middle_of_a_long_write(bumble: BumbleLab) -> None:
    """Robustness (the issue's list; no PTS case): a central that prepared the first piece
    of control_targets and left applies nothing; on its next link a second piece alone
    is not joined to the first (Execute Write refused) and a whole write works."""
    controller = bumble.lab.controller
    writes = _control_target_writes(bumble)
    link = bumble.connect(mtu=23)
    h = handle(link, "control_targets")
    try:
        bumble.run(link.prepare(h, 0, targets(co2=2000)[:9]))
    finally:
        bumble.run(link.disconnect(), 20)
    wait_for(lambda: bumble.lab.status()["connection_count"] == 0, 15, "Bumble gone")
    assert _control_target_writes(bumble) == writes
    again = bumble.connect(mtu=23)
    try:
        bumble.run(again.prepare(h, 9, targets(co2=2000)[9:]))
        assert att_error(bumble, again.execute(True)) in (INVALID_OFFSET, INVALID_LENGTH)
        assert _control_target_writes(bumble) == writes
        bumble.run(again.write(h, targets(co2=2001)))
        wait_for(
            lambda: controller.control_targets.get("co2_max") == 2001,
            5,
            "the whole write after the broken one",
        )
    finally:
        bumble.run(again.disconnect(), 20)


def test_bluetoothd_survived_the_bumble_pass(bumble: BumbleLab, bluetoothd: Bluetoothd) -> None:
    """Whatever the cases above sent, the Pi's bluetoothd is still running: the one the
    pass started, or the one the Service Changed restart case started after checking
    that the first was alive (a crash leaves core.bluetoothd.<pid> in the log folder)."""
    exited = bluetoothd.exited()
    assert exited is None, f"bluetoothd ended with {exited} (negative: the signal)"


# -- last, as they harm bluetoothd: a request pending when the link ends ------------------
BLUEZ_PENDING_OP = (
    "the central's link ended while bluetoothd waited for our ReadValue or WriteValue "
    "reply, and the request outlives the ATT channel it answers (src/gatt-database.c "
    "pending_disconnect_cb only clears the op's queue pointer; the reply callback drops "
    "our late reply): 5 s after the request, gatt-db's timeout answers on the freed "
    "channel (read_timeout -> read_complete_cb -> bt_att_chan_send_error_rsp: SIGSEGV, "
    "or an Unlikely Error sent into whichever link reused the memory), and freeing our "
    "characteristics (UnregisterApplication, our exit, bluetoothd's: chrc_free -> "
    "cancel_pending_read) touches the freed op. BlueZ 5.66 to 5.87 and master"
)
ATTRIBUTE_TIMEOUT_S = 5.0
"""gatt-db's own deadline for an attribute's read or write (src/shared/gatt-db.c
ATTRIBUTE_TIMEOUT)."""


class ControllerGate:
    """A controller callback held until released (a busy controller: bluetoothd waits
    for our ReadValue or WriteValue reply meanwhile); ``entered`` once it was called."""

    def __init__(self, body: Callable[..., Any]) -> None:
        self.body = body
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args: Any) -> Any:
        self.entered.set()
        self.release.wait(30)
        return self.body(*args)


@contextlib.contextmanager
def held(bumble: BumbleLab, callback: str) -> Iterator[ControllerGate]:
    """The lab controller's ``callback`` behind a gate while the block runs."""
    body = bumble.lab.controller.callbacks()[callback]
    gate = ControllerGate(body)
    bumble.lab.portal.set_callbacks({callback: gate})
    try:
        yield gate
    finally:
        gate.release.set()
        bumble.lab.portal.set_callbacks({callback: body})


def _left_waiting(bumble: BumbleLab) -> int:
    """Phones the peripheral saw leave while a request of theirs was being answered."""
    return int(bumble.lab.status()["left_waiting"]["phones"])


def leave_while_held(bumble: BumbleLab, link: Link, gate: ControllerGate, before: int) -> None:
    """Once the request is with the controller, the phone leaves; the peripheral counts
    it (within 15 s), then the controller answers."""
    assert gate.entered.wait(15), "the request never reached the controller"
    bumble.run(link.disconnect(), 20)
    with contextlib.suppress(pytest.fail.Exception):
        wait_for(lambda: _left_waiting(bumble) > before, 15, "the departure counted")
    gate.release.set()


def counted_then_recover(
    bumble: BumbleLab, bluetoothd: Bluetoothd, before: int, asked: float
) -> None:
    """The peripheral counted the phone that left with its request open (and named it
    in a WARNING); where it did not, bluetoothd is first brought back (past gatt-db's
    timeout) so the cases after this one run, then the case fails."""
    counted = _left_waiting(bumble) - before
    if counted != 1:
        time.sleep(max(0.0, asked + ATTRIBUTE_TIMEOUT_S - time.monotonic()))
        bluetoothd_died(bumble, bluetoothd, 3)
        pytest.fail(f"left_waiting went up by {counted}, not 1")


def bluetoothd_died(
    bumble: BumbleLab, bluetoothd: Bluetoothd, within_s: float, *, wait_registered: bool = True
) -> int | None:
    """bluetoothd's exit status if it dies within ``within_s``; then a new one is started
    (hci3 stays Bumble's) and, unless told not to (the portal is stopped), the lab's
    portal waited for until it registered on it."""
    with contextlib.suppress(pytest.fail.Exception):
        wait_for(lambda: bluetoothd.exited() is not None, within_s, "bluetoothd to die")
    died = bluetoothd.exited()
    if died is not None:
        bluetoothd.stop()
        bluetoothd.start("bumble", BUMBLE_CONFIG, helper=False)
        if wait_registered:
            wait_for(lambda: bumble.lab.status()["registered"], 40, "the portal registered")
    return died


def served_then_registered_again(
    bumble: BumbleLab, bluetoothd: Bluetoothd, h: int, asked: float
) -> None:
    """What must hold after a central left with a request pending (sent at monotonic
    ``asked``): bluetoothd alive past gatt-db's timeout, the next central served, and
    bluetoothd alive through our own re-registration (stop: UnregisterApplication
    frees our characteristics in bluetoothd; start), as a restart of the controller's
    service does. Where bluetoothd dies, the test is an expected failure naming when
    (BLUEZ_PENDING_OP)."""
    time.sleep(max(0.0, asked + ATTRIBUTE_TIMEOUT_S - time.monotonic()))
    died = bluetoothd_died(bumble, bluetoothd, 3)
    if died is not None:
        pytest.xfail(
            f"bluetoothd ({GENERATION}) ended with {died} at gatt-db's 5 s request timeout: "
            + BLUEZ_PENDING_OP
        )
    wait_for(lambda: bumble.lab.status()["connection_count"] == 0, 15, "Bumble gone")
    again = bumble.connect(mtu=23)
    try:
        assert bumble.run(again.read(h)) == bumble.expected("stage_state")
    finally:
        bumble.run(again.disconnect(), 20)
    wait_for(lambda: bumble.lab.status()["connection_count"] == 0, 15, "Bumble gone")
    portal = bumble.lab.portal
    portal.stop()
    try:
        died = bluetoothd_died(bumble, bluetoothd, 3, wait_registered=False)
    finally:
        portal.start()
    wait_for(lambda: bumble.lab.status()["registered"], 40, "the portal registered again")
    if died is not None:
        pytest.xfail(
            f"bluetoothd ({GENERATION}) ended with {died} at our UnregisterApplication: "
            + BLUEZ_PENDING_OP
        )


def test_a_second_request_before_the_first_response(
    bumble: BumbleLab, bluetoothd: Bluetoothd
) -> None:
    """Robustness (the issue's list; no PTS case): ATT is sequential, and a central that
    sends a second Read Request while the first one waits for the controller loses its
    link (bluetoothd shuts the bearer, src/shared/att.c: "Received request while another
    is pending"); the next central is served, and bluetoothd lives on, through our own
    re-registration too. It does not on 5.66 and 5.82 (BLUEZ_PENDING_OP): an expected
    failure while BlueZ has the bug; a BlueZ without it passes. (``left_waiting`` is not
    asserted here: the ATT bearer is shut at once, and Device1 can say Connected false
    only seconds later, after the read was answered.)"""
    link = bumble.connect(mtu=23)
    h = handle(link, "stage_state")
    try:
        with held(bumble, "get_stage_data") as gate:
            read = att.ATT_Read_Request(attribute_handle=h)
            asked = time.monotonic()
            bumble.run(link.send_raw(read, read))
            assert gate.entered.wait(15), "the first read never reached the controller"
            bumble.run(link.wait_disconnected(20), 25)
    finally:
        bumble.run(link.disconnect(), 20)
    served_then_registered_again(bumble, bluetoothd, h, asked)


def test_a_central_that_leaves_while_its_read_is_pending(
    bumble: BumbleLab, bluetoothd: Bluetoothd
) -> None:
    """Robustness, the ordinary way to the same bluetoothd bug: a phone that leaves (out
    of range, app closed) while the peripheral waits for a busy controller to answer its
    read. Nothing of ours goes wrong (bluetoothd drops the late reply), the next central
    reads, and bluetoothd must live on, through our own re-registration too. It does not
    on 5.66 and 5.82 (BLUEZ_PENDING_OP): an expected failure while BlueZ has the bug;
    setup's bluetooth.service drop-in (Restart=on-failure) is how a room lives with it."""
    link = bumble.connect(mtu=23)
    h = handle(link, "stage_state")
    before = _left_waiting(bumble)
    with held(bumble, "get_stage_data") as gate:
        asked = time.monotonic()
        bumble.run(link.send_raw(att.ATT_Read_Request(attribute_handle=h)))
        leave_while_held(bumble, link, gate, before)
    counted_then_recover(bumble, bluetoothd, before, asked)
    served_then_registered_again(bumble, bluetoothd, h, asked)


def test_a_central_that_leaves_while_its_write_is_pending(
    bumble: BumbleLab, bluetoothd: Bluetoothd
) -> None:
    """Robustness, the write side: a phone that leaves while a busy controller applies
    its write. The peripheral counts it, the next central reads, and bluetoothd must
    live on, through our own re-registration too; where it does not (BLUEZ_PENDING_OP
    on the write path), an expected failure naming when."""
    link = bumble.connect(mtu=23)
    h = handle(link, "control_targets")
    stage_handle = handle(link, "stage_state")
    before = _left_waiting(bumble)
    with held(bumble, "set_control_targets") as gate:
        asked = time.monotonic()
        write = att.ATT_Write_Request(attribute_handle=h, attribute_value=targets(co2=2300))
        bumble.run(link.send_raw(write))
        leave_while_held(bumble, link, gate, before)
    counted_then_recover(bumble, bluetoothd, before, asked)
    served_then_registered_again(bumble, bluetoothd, stage_handle, asked)
