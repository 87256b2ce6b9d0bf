"""BR/EDR on the real stack: a bond the kernel made by itself, and GATT over BR/EDR, refused.

bluetoothd runs dual-mode for this test (``ControllerMode = dual``; the lab
is LE only otherwise). The Pi's adapter is made connectable over BR/EDR, the
central pages it (``ConnectDevice``) and pairs over BR/EDR (SSP): with our
NoInputNoOutput agent the Pi's kernel accepts Just Works without asking any
agent, so the bond is made while our window is closed. Our peripheral does
not approve it; the central's ATT write over BR/EDR (L2CAP PSM 31, reaching
us with ``link: "BR/EDR"``) is refused by our gate with Insufficient
Authorization.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from uuid import UUID

import pytest
from conftest import (
    CENTRAL_ADAPTER,
    CONFIGS,
    GENERATION,
    PERIPHERAL_ADAPTER,
    Bluetoothd,
    Metrics,
    PortalLab,
    SystemBus,
    forget_bond,
    pair_as_central,
    portal_in_place_of_the_lab,
    wait_for,
)
from jeepney.wrappers import DBusErrorResponse
from test_50_access import _writes

from mushpi_ble.protocol import CHARACTERISTIC_UUIDS, ControlTargets

log = logging.getLogger("tests_vm.bredr")

DUAL = "dual"
TARGETS = ControlTargets(190, 270, 710, 1400, light_mode=2, on_minutes=600,
                         off_minutes=840).pack()


@pytest.fixture(scope="module", autouse=True)
def classic_pass_on_trixie(bluez: str) -> None:
    """Once per lane, and only where the lab can turn BR/EDR on: bookworm's kernel 6.1
    refuses to switch the lab's controllers back to BR/EDR once bluetoothd ran them LE
    only (bluetoothd: "Failed to set mode: Rejected (0x0b)" for each adapter; the
    central then meets a legacy PIN request), and a failed BR/EDR connection there hits
    the kernel BUG in hci_chan_del (conftest.py)."""
    if GENERATION != "trixie":
        pytest.skip("BR/EDR cannot be switched on in the bookworm lab (kernel 6.1)")
    if bluez != "att":
        pytest.skip("the BR/EDR test runs in the att pass")


@contextlib.contextmanager
def dual_mode(bluetoothd: Bluetoothd) -> Iterator[None]:
    """bluetoothd restarted with BR/EDR on; the pass's own configuration afterwards."""
    previous = bluetoothd.mode
    assert previous is not None
    CONFIGS[DUAL] = CONFIGS[previous].replace("ControllerMode = le", "ControllerMode = dual")
    bluetoothd.stop()
    bluetoothd.start(DUAL)
    try:
        yield
    finally:
        bluetoothd.stop()
        bluetoothd.start(previous)
        del CONFIGS[DUAL]


def _set(bus: SystemBus, adapter: str, prop: str, signature: str, value: object) -> None:
    bus.call(f"/org/bluez/{adapter}", "org.freedesktop.DBus.Properties", "Set", "ssv",
             ("org.bluez.Adapter1", prop, (signature, value)))


def _connect_bredr(bus: SystemBus, address: str) -> str:
    """``Adapter1.ConnectDevice`` without an address type: bluetoothd pages the Pi over
    BR/EDR (its SDP channel), so the central knows it as a BR/EDR device. No inquiry:
    btvirt (5.82) was seen to remove every controller after an Inquiry Cancel."""
    forget_bond(bus, CENTRAL_ADAPTER, address)
    (path,) = bus.call(f"/org/bluez/{CENTRAL_ADAPTER}", "org.bluez.Adapter1", "ConnectDevice",
                       "a{sv}", ({"Address": ("s", address)},), timeout=30)
    return str(path)


SOL_BLUETOOTH, BT_SECURITY, BT_SECURITY_MEDIUM = 274, 4, 2
ATT_PSM = 31
ATT_ERROR, READ_BY_TYPE, WRITE_REQ, WRITE_RSP = 0x01, 0x08, 0x12, 0x13
CHARACTERISTIC_DECLARATION = 0x2803


NOTIFICATION, INDICATION, CONFIRMATION = 0x1B, 0x1D, 0x1E
ATTRIBUTE_NOT_FOUND = 0x0A
# requests the other side may send us meanwhile (MTU, find information, by type, read,
# by group type...): each answered "not found", as a client with no database would
PEER_REQUESTS = frozenset({0x02, 0x04, 0x06, 0x08, 0x0A, 0x0C, 0x0E, 0x10, 0x20})


def _att(sock: socket.socket, pdu: bytes) -> bytes:
    """Send one request, return its answer; what the server sends meanwhile (Service
    Changed to a bonded client) is confirmed or passed over."""
    sock.send(pdu)
    while True:
        answer = sock.recv(1024)
        log.info("att over BR/EDR sent=%s got=%s", pdu.hex(), answer.hex())
        if answer[0] == INDICATION:
            sock.send(bytes([CONFIRMATION]))
        elif answer[0] in PEER_REQUESTS:  # the Pi's own GATT client discovering ours
            sock.send(struct.pack("<BBHB", ATT_ERROR, answer[0], 0x0001, ATTRIBUTE_NOT_FOUND))
        elif answer[0] != NOTIFICATION:
            return answer


def _value_handle(sock: socket.socket, uuid: str) -> int:
    """Characteristic discovery by hand: Read By Type of the declarations (0x2803)."""
    wanted = UUID(uuid).bytes[::-1]  # ATT carries 128-bit UUIDs little-endian
    start = 1
    while start <= 0xFFFF:
        answer = _att(sock, struct.pack("<BHHH", READ_BY_TYPE, start, 0xFFFF,
                                        CHARACTERISTIC_DECLARATION))
        if answer[0] == ATT_ERROR:
            break
        assert answer[0] == READ_BY_TYPE + 1 and answer[1] >= 7, answer.hex()
        size = answer[1]
        for at in range(2, len(answer) - size + 1, size):
            handle, _props, value_handle = struct.unpack_from("<HBH", answer, at)
            if answer[at + 5:at + size] == wanted:
                return int(value_handle)
            start = handle + 1
    raise LookupError(uuid)


def _write_over_bredr(central: str, pi: str, uuid: str, value: bytes) -> bytes:
    """An ATT Write Request over BR/EDR (L2CAP PSM 31) on the encrypted, bonded link:
    what a BR/EDR GATT client sends. Returns the answer PDU."""
    sock = socket.socket(socket.AF_BLUETOOTH, socket.SOCK_SEQPACKET,  # type: ignore[attr-defined]
                         socket.BTPROTO_L2CAP)  # type: ignore[attr-defined]
    try:
        sock.settimeout(30)
        sock.setsockopt(SOL_BLUETOOTH, BT_SECURITY, struct.pack("BB", BT_SECURITY_MEDIUM, 0))
        sock.bind((central, 0))
        sock.connect((pi, ATT_PSM))
        handle = _value_handle(sock, uuid)
        return _att(sock, struct.pack("<BH", WRITE_REQ, handle) + value)
    finally:
        sock.close()


@pytest.mark.pairing
def test_a_bredr_bond_and_a_write_over_bredr_are_refused(
        bluez: str, bluetoothd: Bluetoothd, portal_lab: PortalLab, system_bus: SystemBus,
        metrics: Metrics) -> None:
    central = system_bus.adapter_address(CENTRAL_ADAPTER)
    with dual_mode(bluetoothd), portal_in_place_of_the_lab(
            portal_lab, MUSHPI_BLE_WRITE_ACCESS="bonded", MUSHPI_BLE_PAIRING="window",
            MUSHPI_BLE_STATE_DIR=tempfile.mkdtemp()) as portal:
        try:
            wait_for(lambda: portal.get_status()["pairing"]["agent_registered"], 15,
                     "our agent registered")
            before = _writes(portal_lab)
            _set(system_bus, PERIPHERAL_ADAPTER, "Discoverable", "b", True)
            path = _connect_bredr(system_bus, portal_lab.address)
            started = time.monotonic()
            pair_as_central(path)
            ours = f"/org/bluez/{PERIPHERAL_ADAPTER}/dev_{central.replace(':', '_')}"
            wait_for(lambda: bool(system_bus.get(ours, "org.bluez.Device1", "Paired")), 20,
                     "the Pi's side paired")
            metrics.set(f"{bluez}.bredr_pair_s", round(time.monotonic() - started, 2))
            status = portal.get_status()
            assert status["pairing"]["requests"] == 0, status["pairing"]["recent"]
            wait_for(lambda: portal.get_status()["access"]["unapproved"] == [central], 10,
                     "the unapproved bond")
            # bluetoothd's own GATT client does not connect over BR/EDR here
            # ("br-connection-profile-unavailable"): the write is sent by hand
            answer = _write_over_bredr(central, portal_lab.address,
                                       CHARACTERISTIC_UUIDS["control_targets"], TARGETS)
            metrics.set(f"{bluez}.bredr_write_answer", answer.hex())
            # ATT Error Response to the Write Request: Insufficient Authorization (0x08)
            assert answer[0] == ATT_ERROR and answer[1] == WRITE_REQ and answer[4] == 0x08, \
                answer.hex()
            access = portal.get_status()["access"]
            assert access["refused"]["not-le"] == 1, access
            assert _writes(portal_lab) == before
        finally:
            with contextlib.suppress(DBusErrorResponse, TimeoutError):
                _set(system_bus, PERIPHERAL_ADAPTER, "Discoverable", "b", False)
            forget_bond(system_bus, CENTRAL_ADAPTER, portal_lab.address)
            forget_bond(system_bus, PERIPHERAL_ADAPTER, central)
