"""A phone stack that is not BlueZ: Bumble as the central, on one of the lab's controllers.

Every other central in the lab is bluetoothd (bleak drives the same bluetoothd
that serves our peripheral), so both ends share BlueZ's ATT, GATT and SMP.
Bumble (Google's Python Bluetooth host stack) brings its own: it drives a
btvirt controller directly through Linux's HCI user channel
(``hci-socket:N``), the controller taken away from bluetoothd first, and
talks over the emulated air to the Pi's bluetoothd and our peripheral. Its
ATT requests are sent as built here, byte for byte (read blob at any offset,
prepare/execute write, a request no server knows), as a phone's stack would
send them.

Everything here is a coroutine for the suite's asyncio loop thread
(``conftest.LoopThread``): Bumble's transport registers its socket with the
running loop when it is opened.

Particulars (each seen in the lab):
- Bumble opens its HCI socket with ``socket.AF_BLUETOOTH`` and binds it
  through libc. A CPython built without Bluetooth headers (the project venv's
  interpreter on the lab's host is such a build) lacks the two constants and
  nothing else; Linux's values are fixed ABI (``mgmt.py`` uses them too).
- bluetoothd is also a GATT client toward the central and sends its own MTU
  exchange at once: the MTU a link ends with is the smaller of bluetoothd's
  ``[GATT] ExchangeMTU`` and Bumble's server maximum (``mtu``), whether or not
  Bumble asks for more itself.
- btvirt completes a connection only while the peripheral advertises.
- btmon can crash in the guest: Bumble's own snooper writes a btsnoop trace
  of everything its controller sent and received (``bumble-<n>.btsnoop`` in
  the job folder; ``bumble-show --format snoop FILE`` reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

from bumble import att, hci
from bumble.core import UUID
from bumble.device import Connection, Device, Peer
from bumble.gatt_client import CharacteristicProxy, ServiceProxy
from bumble.hci import Address, OwnAddressType
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.snoop import BtSnooper
from bumble.transport import Transport, open_transport

log = logging.getLogger("tests_vm.bumble")

BUMBLE_VERSION = version("bumble")
CCC = UUID.from_16_bits(0x2902)
STATIC_RANDOM = "F0:F1:F2:F3:F4:F5"  # the top two bits set: a static random address
# Which address a link is made from: the controller's public one (Bumble's identity
# address, the one it distributes when it pairs), the static random one (another device
# to bluetoothd), or a new resolvable private address made from Bumble's IRK (the same
# device, as a phone with privacy on looks each time it comes back).
OwnAddress = Literal["public", "static", "rpa"]
OWN_PUBLIC: OwnAddress = "public"
OWN_STATIC: OwnAddress = "static"
OWN_RPA: OwnAddress = "rpa"
SERVICE_CHANGED = UUID.from_16_bits(0x2A05)
DATABASE_HASH = UUID.from_16_bits(0x2B2A)
GATT_SERVICE = UUID.from_16_bits(0x1801)


def _linux_bluetooth_constants() -> None:
    """The two socket constants Bumble's hci-socket transport needs (see the module)."""
    if not hasattr(socket, "AF_BLUETOOTH"):
        socket.AF_BLUETOOTH = 31  # type: ignore[attr-defined]
        socket.BTPROTO_HCI = 1  # type: ignore[attr-defined]


class AttError(Exception):
    """An ATT Error Response: ``code`` for ``request`` (opcode) on ``handle``."""

    def __init__(self, code: int, request: int, handle: int) -> None:
        super().__init__(f"ATT error 0x{code:02x} for opcode 0x{request:02x} handle 0x{handle:04x}")
        self.code = code
        self.request = request
        self.handle = handle


class RawRequest(att.ATT_PDU):
    """An ATT request Bumble has no class for: opcode and parameters as given."""

    def __init__(self, opcode: int, params: bytes = b"") -> None:
        super().__init__()
        self.op_code = opcode
        self.name = f"ATT_RAW_0x{opcode:02X}_REQUEST"
        self.payload = params


class PasskeyKeyboard(PairingDelegate):
    """A phone's user typing the passkey the Pi shows: ``passkey()`` is polled until it
    gives the digits (the peripheral displays them while the pairing runs)."""

    def __init__(self, passkey: Callable[[], int | None], timeout: float = 20.0) -> None:
        super().__init__(io_capability=PairingDelegate.KEYBOARD_INPUT_ONLY)
        self.passkey = passkey
        self.timeout = timeout
        self.typed: int | None = None

    async def get_number(self) -> int | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while (digits := self.passkey()) is None:
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(0.1)
        self.typed = digits
        return digits


class BumbleCentral:
    """Bumble on controller ``index`` (taken from bluetoothd while open)."""

    def __init__(self, index: int, snoop: Path) -> None:
        self.index = index
        self.snoop = snoop
        self.transport: Transport | None = None
        self.device: Device | None = None
        self._snoop_file: Any = None

    async def open(self) -> None:
        """Open ``hci-socket:N`` (the controller must be powered off for bluetoothd)."""
        _linux_bluetooth_constants()
        self.transport = await open_transport(f"hci-socket:{self.index}")
        device = Device.with_hci(
            "mushpi-bumble",
            Address(STATIC_RANDOM, Address.RANDOM_DEVICE_ADDRESS),
            self.transport.source,
            self.transport.sink,
        )
        self._snoop_file = self.snoop.open("wb")
        device.host.snooper = BtSnooper(self._snoop_file)
        await device.power_on()
        self.device = device
        log.info(
            "bumble %s on hci%d, public address %s",
            BUMBLE_VERSION,
            self.index,
            device.public_address,
        )

    @property
    def address(self) -> str:
        """The controller's public address, as bluetoothd names devices (upper case)."""
        assert self.device is not None
        return str(self.device.public_address).split("/")[0].upper()

    async def _use_random_address(self, address: Address) -> None:
        """The controller's random address for the next connection (no advertising or
        connecting is under way between links)."""
        assert self.device is not None
        await self.device.send_sync_command(
            hci.HCI_LE_Set_Random_Address_Command(random_address=address)
        )
        self.device.random_address = address

    async def connect(
        self, address: str, *, mtu: int = 23, timeout: float = 30.0, own: OwnAddress = OWN_PUBLIC
    ) -> Link:
        """Connect to ``address`` (public) with this server MTU maximum; no MTU request.
        ``own``: which of Bumble's addresses the link comes from (``OWN_*``); with
        ``OWN_RPA`` a new resolvable private address from Bumble's IRK each time."""
        assert self.device is not None, "open() first"
        self.device.gatt_server.max_mtu = mtu
        if own == OWN_PUBLIC:
            own_type, own_address = OwnAddressType.PUBLIC, self.address
        else:
            if own not in (OWN_STATIC, OWN_RPA):
                raise ValueError(f"own address {own!r}: one of public, static, rpa")
            random = (
                Address(STATIC_RANDOM, Address.RANDOM_DEVICE_ADDRESS)
                if own == OWN_STATIC
                else Address.generate_private_address(self.device.irk)
            )
            await self._use_random_address(random)
            own_type, own_address = OwnAddressType.RANDOM, str(random).split("/")[0].upper()
        connection = await self.device.connect(
            Address(address, Address.PUBLIC_DEVICE_ADDRESS),
            own_address_type=own_type,
            timeout=timeout,
        )
        link = Link(connection)
        link.own_address = own_address
        log.info(
            "bumble connected to %s from %s (handle 0x%04x)",
            address,
            link.own_address,
            connection.handle,
        )
        return link

    async def forget_bonds(self) -> None:
        """Drop every key Bumble keeps (its keystore lives in memory)."""
        assert self.device is not None and self.device.keystore is not None
        await self.device.keystore.delete_all()

    async def close(self) -> None:
        if self.device is not None:
            device, self.device = self.device, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(device.power_off(), 5)
        if self.transport is not None:
            transport, self.transport = self.transport, None
            await transport.close()
        if self._snoop_file is not None:
            self._snoop_file.close()
            self._snoop_file = None


class Link:
    """One connection: GATT client requests as raw ATT PDUs, subscriptions, pairing."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.own_address = ""
        """The address bluetoothd knows this end by."""
        self.peer = Peer(connection)
        self.client = connection.gatt_client
        self.disconnected = asyncio.Event()
        connection.on("disconnection", lambda _reason: self.disconnected.set())
        self.service: ServiceProxy | None = None
        self.chars: dict[str, CharacteristicProxy[bytes]] = {}
        self.values: dict[int, asyncio.Queue[bytes]] = {}
        self.indications: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        """Every indication of the link, (handle, value), whoever subscribed: one that
        comes as the link starts (a Service Changed pending for a bonded phone) arrives
        before any subscription of this link."""
        confirm = self.client.on_att_handle_value_indication

        def indicated(indication: att.ATT_Handle_Value_Indication) -> None:
            self.indications.put_nowait(
                (int(indication.attribute_handle), bytes(indication.attribute_value))
            )
            confirm(indication)

        self.client.on_att_handle_value_indication = indicated

    @property
    def mtu(self) -> int:
        return int(self.client.mtu)

    async def discover(self, service_uuid: str, names: dict[str, str]) -> ServiceProxy:
        """Primary services, then the MushPi service's characteristics and descriptors;
        ``names``: characteristic UUID -> name."""
        await self.peer.discover_services()
        (service,) = await self.peer.discover_service(UUID(service_uuid))
        await service.discover_characteristics()
        for char in service.characteristics:
            await char.discover_descriptors()
            name = names.get(str(char.uuid).lower())  # 128-bit: the UUID in upper case
            if name is not None:
                self.chars[name] = char
        self.service = service
        return service

    async def service_changed(self) -> tuple[int, int]:
        """The GATT service's Service Changed characteristic: (value handle, its CCC)."""
        (service,) = await self.peer.discover_service(GATT_SERVICE)
        await service.discover_characteristics()
        (char,) = [c for c in service.characteristics if c.uuid == SERVICE_CHANGED]
        await char.discover_descriptors()
        descriptor = char.get_descriptor(CCC)
        assert descriptor is not None, "Service Changed without a CCC"
        return int(char.handle), int(descriptor.handle)

    async def next_indication(self, timeout: float) -> tuple[int, bytes]:
        return await asyncio.wait_for(self.indications.get(), timeout)

    def handles(self) -> dict[str, int]:
        """The discovered MushPi characteristics' value handles, by name."""
        return {name: int(char.handle) for name, char in self.chars.items()}

    async def request(self, pdu: att.ATT_PDU) -> att.ATT_PDU:
        """Send one request; its response (an Error Response raises AttError)."""
        response: att.ATT_PDU = await self.client.send_request(pdu)
        if response.op_code == att.Opcode.ATT_ERROR_RESPONSE:
            raise AttError(
                response.error_code,
                response.request_opcode_in_error,
                response.attribute_handle_in_error,
            )
        return response

    async def command(self, pdu: att.ATT_PDU) -> None:
        await self.client.send_command(pdu)

    async def read(self, handle: int) -> bytes:
        """One Read Request (no blobs after it)."""
        response = await self.request(att.ATT_Read_Request(attribute_handle=handle))
        return bytes(response.attribute_value)

    async def read_blob(self, handle: int, offset: int) -> bytes:
        response = await self.request(
            att.ATT_Read_Blob_Request(attribute_handle=handle, value_offset=offset)
        )
        return bytes(response.part_attribute_value)

    async def read_long(self, handle: int) -> tuple[bytes, int]:
        """Read, then Read Blob by offset while parts come full; (value, requests sent)."""
        value = await self.read(handle)
        requests = 1
        while len(value) % (self.mtu - 1) == 0 and value:
            part = await self.read_blob(handle, len(value))
            requests += 1
            value += part
            if len(part) < self.mtu - 1:
                break
        return value, requests

    async def read_by_type(self, uuid: str | UUID) -> list[tuple[int, bytes]]:
        """Read By Type over the whole database: (handle, value) pairs of the first answer."""
        response = await self.request(
            att.ATT_Read_By_Type_Request(
                starting_handle=0x0001,
                ending_handle=0xFFFF,
                attribute_type=uuid if isinstance(uuid, UUID) else UUID(uuid),
            )
        )
        return [(int(h), bytes(v)) for h, v in response.attributes]

    async def write(self, handle: int, value: bytes) -> None:
        await self.request(att.ATT_Write_Request(attribute_handle=handle, attribute_value=value))

    async def write_command(self, handle: int, value: bytes) -> None:
        await self.command(att.ATT_Write_Command(attribute_handle=handle, attribute_value=value))

    async def prepare(self, handle: int, offset: int, part: bytes) -> tuple[int, int, bytes]:
        """Prepare Write Request; the response's (handle, offset, value) echo."""
        response = await self.request(
            att.ATT_Prepare_Write_Request(
                attribute_handle=handle, value_offset=offset, part_attribute_value=part
            )
        )
        return (
            int(response.attribute_handle),
            int(response.value_offset),
            bytes(response.part_attribute_value),
        )

    async def execute(self, write: bool) -> None:
        """Execute Write Request: 0x01 writes the queue, 0x00 cancels it."""
        await self.request(att.ATT_Execute_Write_Request(flags=1 if write else 0))

    async def long_write(self, handle: int, value: bytes, offset: int = 0) -> list[bytes]:
        """Prepare the value in MTU-5 pieces, then execute; the echoed pieces."""
        step = self.mtu - 5
        echoes = []
        for at in range(0, len(value), step):
            _, _, echo = await self.prepare(handle, offset + at, value[at : at + step])
            echoes.append(echo)
        await self.execute(True)
        return echoes

    async def subscribe(self, name: str, *, notify: bool = True) -> asyncio.Queue[bytes]:
        """Write the CCC (0x0001 notify, 0x0002 indicate); values land in the queue
        from then on (an indication is confirmed by Bumble's client)."""
        char = self.chars[name]
        queue: asyncio.Queue[bytes] = self.values.setdefault(char.handle, asyncio.Queue())
        subscribers = (
            self.client.notification_subscribers if notify else self.client.indication_subscribers
        )
        subscribers.setdefault(char.handle, set()).add(queue.put_nowait)
        await self.write(self.ccc(name), struct.pack("<H", 1 if notify else 2))
        return queue

    async def unsubscribe(self, name: str) -> None:
        await self.write(self.ccc(name), b"\x00\x00")

    def ccc(self, name: str) -> int:
        descriptor = self.chars[name].get_descriptor(CCC)
        assert descriptor is not None, f"{name} has no CCC"
        return int(descriptor.handle)

    async def next_value(self, name: str, timeout: float) -> bytes:
        return await asyncio.wait_for(self.values[self.chars[name].handle].get(), timeout)

    def drain(self, name: str) -> list[bytes]:
        queue = self.values[self.chars[name].handle]
        out = []
        while not queue.empty():
            out.append(queue.get_nowait())
        return out

    async def send_raw(self, *pdus: att.ATT_PDU) -> None:
        """Send PDUs as they are, waiting for no response (a central breaking ATT's
        one-request-at-a-time rule)."""
        for pdu in pdus:
            self.client.send_gatt_pdu(bytes(pdu))

    async def wait_disconnected(self, timeout: float) -> None:
        await asyncio.wait_for(self.disconnected.wait(), timeout)

    async def request_mtu(self, mtu: int) -> int:
        return int(await self.peer.request_mtu(mtu))

    async def pair(self, *, delegate: PairingDelegate | None = None, mitm: bool = False) -> None:
        """LE Secure Connections from Bumble's side (Just Works unless ``delegate``
        says otherwise); bonding, so bluetoothd stores the keys."""
        device = self.connection.device
        factory: Callable[[Connection], PairingConfig] = lambda _c: PairingConfig(  # noqa: E731
            sc=True, mitm=mitm, bonding=True, delegate=delegate or PairingDelegate()
        )
        device.pairing_config_factory = factory
        await self.connection.pair()

    @property
    def encrypted(self) -> bool:
        return bool(self.connection.is_encrypted)

    async def disconnect(self) -> None:
        if not self.disconnected.is_set():
            with contextlib.suppress(Exception):
                await self.connection.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.disconnected.wait(), 10)
