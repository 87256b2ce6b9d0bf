"""Simulated centrals: phones talking ATT to the adapter's GATT database.

Each operation is translated the way bluetoothd translates the ATT request
into calls on the application (``src/gatt-database.c``,
``src/shared/gatt-server.c``):

* Read / Read Blob → ``ReadValue({device, offset?, link, mtu})``; the reply
  is cut to 512 bytes, then to MTU - 1;
* Write Request → ``WriteValue(value, {device, link, mtu})``; on a
  characteristic flagged ``write-without-response`` bluetoothd sends it
  without waiting for the reply and acks at once, errors ignored;
* a value longer than MTU - 3 (or any write at an offset) is a prepared
  write: pieces of MTU - 5 bytes are queued (each sent to the app with
  ``prepare-authorize: true`` only while an ``authorize`` characteristic is
  not yet authorized), then executed; bluetoothd's gatt-server merges
  contiguous pieces, so the app sees one ``WriteValue`` with the whole
  value at the first offset (``merge_prepared_writes=False`` sends each
  piece instead);
* enabling the CCC calls ``StartNotify()`` (no reply expected) per
  enabling device, or ``AcquireNotify`` when the characteristic has a
  ``NotifyAcquired`` property; disabling it (or disconnecting) calls
  ``StopNotify()`` when the last subscriber goes, or closes that phone's
  notify socket;
* a notify socket is read as fast as the phone's link allows
  (``notify_read_delay``, ``pause_notifications``); an indication read from
  it is confirmed with a byte 0x01 written back (5.80+) or ``Confirm()``
  (``Config.notify_confirm_on_socket``); with
  ``Config.close_wrong_notify_socket`` a disconnecting phone also closes the
  first other phone's socket (bluez/bluez#1452);
* a notification that came as a signal waits for a slow phone in an
  unbounded queue, as in bluetoothd (``air_peak``).
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from mushpi_ble.dbus import NO_REPLY, CallTimeout, DBusError

from . import att
from .att import AttError, att_code_for_dbus_error, check_permissions
from .gatt_db import Characteristic, Descriptor
from .gatt_manager import MAX_VALUE_LEN, Application
from .names import AGENT, FAILED, GATT_CHARACTERISTIC, GATT_DESCRIPTOR
from .pairing import Pairing, PairingResult, TypedPasskey
from .runtime import Runtime
from .uuids import normalize_uuid

if TYPE_CHECKING:
    from .adapter import FakeAdapter

log = logging.getLogger(__name__)

MIN_MTU = 23
LE, BR_EDR = "LE", "BR/EDR"
TRANSPORTS = (LE, BR_EDR)


class NotConnected(RuntimeError):
    """The central is no longer connected."""


@attrs.frozen
class Notification:
    """One notification (or indication) as the central received it."""

    value: bytes
    timestamp: float
    indication: bool = False


@attrs.frozen
class CharacteristicInfo:
    """What a central learns about a characteristic by discovery."""

    uuid: str
    path: str
    flags: tuple[str, ...]
    handle: int
    service_uuid: str
    sender: str
    descriptors: tuple[str, ...]


@attrs.define(eq=False)
class _Acquired:
    sock: socket.socket
    scope: trio.CancelScope


class FakeCentral:
    """A connected phone. Obtain one from :meth:`FakeBluez.connect_central`."""

    def __init__(self, runtime: Runtime, adapter: FakeAdapter, address: str, mtu: int, *,
                 security: str = "low", trusted: bool = False, transport: str = LE) -> None:
        if security not in att.SECURITY_LEVELS:
            raise ValueError(f"security must be one of {sorted(att.SECURITY_LEVELS)}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}")
        self.transport = transport
        """LE, or BR/EDR: bluetoothd serves the same GATT database over BR/EDR ATT and
        says so in the ``link`` option of every call."""
        self._runtime = runtime
        self.adapter = adapter
        self.address = address.upper()
        self.mtu = max(MIN_MTU, min(mtu, runtime.config.server_mtu))
        self.security = security
        self.trusted = trusted
        self.connected = True
        self.device_path = ""
        self._ccc: dict[Characteristic, int] = {}
        self._acquired: dict[Characteristic, _Acquired] = {}
        self._received: dict[str, list[Notification]] = {}
        self._taken: dict[str, int] = {}
        self._arrived = trio.Event()
        self._reads_open = trio.Event()
        self._reads_open.set()
        self.notify_read_delay = 0.0
        self._air: deque[tuple[Characteristic, bytes, bool]] = deque()
        self._air_draining = False
        self.air_peak = 0
        """Most notifications queued in bluetoothd for this phone at once (signal path)."""
        """Seconds this phone's link takes per notification from a notify socket: a
        slow phone (the socket backs up towards the application)."""

    def __repr__(self) -> str:
        return f"<FakeCentral {self.address} on {self.adapter.id} mtu={self.mtu}>"

    # -- discovery -------------------------------------------------------------
    def _lookup(self, uuid: str) -> tuple[Application, Characteristic]:
        if not self.connected:
            raise NotConnected(f"{self.address} is not connected")
        wanted = normalize_uuid(uuid)
        for app in self.adapter.gatt.registered():
            for chrc in app.characteristics():
                if chrc.uuid == wanted:
                    return app, chrc
        raise AttError(att.INVALID_HANDLE, dbus_message=f"no characteristic {uuid} in the "
                       "database")

    def characteristic(self, uuid: str) -> CharacteristicInfo:
        """Discover a characteristic by UUID (KeyError when the database lacks it)."""
        try:
            app, chrc = self._lookup(uuid)
        except AttError:
            raise KeyError(uuid) from None
        service = next(s for s in app.services if s.path == chrc.service_path)
        return CharacteristicInfo(chrc.uuid, chrc.path, chrc.flags, chrc.handle, service.uuid,
                                  app.sender, tuple(d.uuid for d in chrc.descriptors))

    def _options(self, offset: int = 0, prepare_authorize: bool = False) -> dict[str, Any]:
        """bluetoothd's ``append_options``: the keys and their order."""
        options: dict[str, Any] = {"device": ("o", self.device_path)}
        if offset:
            options["offset"] = ("q", offset)
        options["link"] = ("s", self.transport)
        if prepare_authorize:
            options["prepare-authorize"] = ("b", True)
        options["mtu"] = ("q", self.mtu)
        return options

    async def _call_app(self, app: Application, path: str, interface: str, member: str,
                        signature: str, body: tuple[Any, ...], *, write: bool) -> tuple[Any, ...]:
        try:
            return await self._runtime.call(app.sender, path, interface, member, signature, body)
        except CallTimeout as exc:
            raise AttError(att.UNLIKELY, dbus_error=NO_REPLY, dbus_message=exc.text) from None
        except DBusError as exc:
            code = att_code_for_dbus_error(exc.name, exc.text, write=write)
            log.info("att error central=%s member=%s path=%s code=0x%02X dbus_error=%s",
                     self.address, member, path, code, exc.name)
            raise AttError(code, dbus_error=exc.name, dbus_message=exc.text) from None

    # -- reads ---------------------------------------------------------------
    async def read(self, uuid: str, offset: int = 0) -> bytes:
        """One ATT Read (offset 0) or Read Blob; the answer is cut to MTU - 1."""
        app, chrc = self._lookup(uuid)
        return await self._read_value(app, chrc.path, GATT_CHARACTERISTIC, chrc.perm,
                                      chrc.removed, offset)

    async def _read_value(self, app: Application, path: str, interface: str, perm: int,
                          removed: bool, offset: int) -> bytes:
        code = check_permissions(perm, write=False, security=att.SECURITY_LEVELS[self.security])
        if code:
            raise AttError(code)
        if removed:
            raise AttError(att.UNLIKELY, dbus_message="the object was removed")
        reply = await self._call_app(app, path, interface, "ReadValue", "a{sv}",
                                     (self._options(offset),), write=False)
        if not reply or not isinstance(reply[0], bytes):
            raise AttError(att.REQUEST_NOT_SUPPORTED, dbus_message="ReadValue answered no 'ay'")
        value = reply[0][:MAX_VALUE_LEN][: self.mtu - 1]
        log.debug("read central=%s path=%s offset=%d bytes=%d", self.address, path, offset,
                  len(value))
        return value

    async def read_long(self, uuid: str) -> bytes:
        """Read, then Read Blob at growing offsets until a short answer, like a phone."""
        data = await self.read(uuid)
        piece = data
        while len(piece) == self.mtu - 1 and len(data) < MAX_VALUE_LEN:
            try:
                piece = await self.read(uuid, offset=len(data))
            except AttError as exc:
                if exc.code in (att.INVALID_OFFSET, att.ATTRIBUTE_NOT_LONG):
                    break
                raise
            if not piece:
                break
            data += piece
        return data

    def _descriptor(self, uuid: str, descriptor_uuid: str) -> tuple[Application, Descriptor,
                                                                      Characteristic]:
        app, chrc = self._lookup(uuid)
        wanted = normalize_uuid(descriptor_uuid)
        for desc in chrc.descriptors:
            if desc.uuid == wanted:
                return app, desc, chrc
        raise AttError(att.INVALID_HANDLE, dbus_message=f"no descriptor {descriptor_uuid}")

    async def read_descriptor(self, uuid: str, descriptor_uuid: str, offset: int = 0) -> bytes:
        """Read an application descriptor of the characteristic ``uuid``."""
        app, desc, chrc = self._descriptor(uuid, descriptor_uuid)
        return await self._read_value(app, desc.path, GATT_DESCRIPTOR, desc.perm, chrc.removed,
                                      offset)

    async def write_descriptor(self, uuid: str, descriptor_uuid: str, value: bytes) -> None:
        """Write Request to an application descriptor."""
        app, desc, chrc = self._descriptor(uuid, descriptor_uuid)
        code = check_permissions(desc.perm, write=True,
                                 security=att.SECURITY_LEVELS[self.security])
        if code:
            raise AttError(code)
        if chrc.removed:
            raise AttError(att.UNLIKELY)
        reply = await self._call_app(app, desc.path, GATT_DESCRIPTOR, "WriteValue", "aya{sv}",
                                     (bytes(value), self._options()), write=True)
        if reply:
            raise AttError(att.REQUEST_NOT_SUPPORTED)

    # -- writes --------------------------------------------------------------
    async def write(self, uuid: str, value: bytes, with_response: bool = True, *,
                    offset: int = 0) -> None:
        """Write Request (or Write Command with ``with_response=False``).

        Longer than MTU - 3 bytes, or at ``offset``, it becomes a prepared write.
        A Write Command never reports errors, as in ATT.
        """
        app, chrc = self._lookup(uuid)
        value = bytes(value)
        if offset + len(value) > MAX_VALUE_LEN:
            raise ValueError("a phone refuses to write more than 512 bytes")
        security = att.SECURITY_LEVELS[self.security]
        if not with_response:
            if offset or len(value) > self.mtu - 3:
                raise ValueError(f"a Write Command carries at most MTU - 3 = {self.mtu - 3} "
                                 "bytes at offset 0")
            if check_permissions(chrc.perm, write=True, security=security):
                log.info("write command dropped central=%s path=%s reason=not-permitted",
                         self.address, chrc.path)
                return
            if chrc.removed:
                return
            if chrc.write_without_response or chrc.write_acquired or chrc.write_socket:
                await self._write_ignoring_errors(app, chrc, value)
            else:
                self._runtime.spawn(self._write_ignoring_errors, app, chrc, value)
            return
        if offset == 0 and len(value) <= self.mtu - 3:
            code = check_permissions(chrc.perm, write=True, security=security)
            if code:
                raise AttError(code)
            await self._write_request(app, chrc, value, 0, prepare_authorize=False)
            return
        await self._prepared_write(app, chrc, value, offset, security)

    async def _write_ignoring_errors(self, app: Application, chrc: Characteristic,
                                     value: bytes) -> None:
        try:
            await self._write_request(app, chrc, value, 0, prepare_authorize=False)
        except AttError as exc:
            log.info("write command error ignored central=%s path=%s code=0x%02X",
                     self.address, chrc.path, exc.code)

    async def _write_request(self, app: Application, chrc: Characteristic, value: bytes,
                             offset: int, *, prepare_authorize: bool) -> None:
        if chrc.removed:
            raise AttError(att.UNLIKELY, dbus_message="the object was removed")
        if not prepare_authorize and chrc.write_socket is not None:
            try:
                chrc.write_socket.send(value, socket.MSG_NOSIGNAL)
            except OSError as exc:
                chrc.write_socket.close()
                chrc.write_socket = None
                raise AttError(att.UNLIKELY, dbus_message=f"write socket: {exc}") from None
            return
        if not prepare_authorize and chrc.write_acquired:
            if await self._acquire_write(app, chrc, value):
                return
            await self._send_write(app, chrc, value, 0, False, wait=False)
            return
        await self._send_write(app, chrc, value, offset, prepare_authorize,
                               wait=not chrc.write_without_response)

    async def _acquire_write(self, app: Application, chrc: Characteristic, value: bytes) -> bool:
        """AcquireWrite, then send ``value`` over the socket; False means fall back.

        An error that maps to something other than Unlikely Error is the
        answer; anything else makes bluetoothd retry with WriteValue.
        """
        try:
            reply = await self._runtime.call(app.sender, chrc.path, GATT_CHARACTERISTIC,
                                             "AcquireWrite", "a{sv}", (self._options(),))
        except DBusError as exc:
            code = (att.UNLIKELY if isinstance(exc, CallTimeout)
                    else att_code_for_dbus_error(exc.name, exc.text, write=True))
            if code != att.UNLIKELY:
                raise AttError(code, dbus_error=exc.name, dbus_message=exc.text) from None
            log.info("acquire write failed, retrying with WriteValue central=%s path=%s "
                     "error=%s", self.address, chrc.path, exc.name)
            return False
        if len(reply) != 2 or not hasattr(reply[0], "to_socket"):
            for item in reply:
                if hasattr(item, "close"):
                    item.close()
            return False
        sock = reply[0].to_socket()
        sock.setblocking(False)
        chrc.write_socket = sock
        log.info("write acquired central=%s path=%s mtu=%s", self.address, chrc.path, reply[1])
        try:
            sock.send(value, socket.MSG_NOSIGNAL)
        except OSError:
            return False
        return True

    async def _send_write(self, app: Application, chrc: Characteristic, value: bytes,
                          offset: int, prepare_authorize: bool, *, wait: bool) -> None:
        body = (value, self._options(offset, prepare_authorize))
        if not wait:
            try:
                await self._runtime.call(app.sender, chrc.path, GATT_CHARACTERISTIC,
                                         "WriteValue", "aya{sv}", body, no_reply=True)
            except DBusError as exc:
                log.debug("write not sent path=%s error=%s", chrc.path, exc)
            log.debug("write acked at once central=%s path=%s bytes=%d", self.address,
                      chrc.path, len(value))
            return
        reply = await self._call_app(app, chrc.path, GATT_CHARACTERISTIC, "WriteValue",
                                     "aya{sv}", body, write=True)
        if reply:
            raise AttError(att.REQUEST_NOT_SUPPORTED, dbus_message="WriteValue returned a value")
        log.debug("write central=%s path=%s offset=%d bytes=%d", self.address, chrc.path,
                  offset, len(value))

    async def _prepared_write(self, app: Application, chrc: Characteristic, value: bytes,
                              offset: int, security: int) -> None:
        size = self.mtu - 5
        pieces = [(offset + i, value[i : i + size]) for i in range(0, len(value), size)]
        pieces = pieces or [(offset, b"")]
        for piece_offset, piece in pieces:
            code = check_permissions(chrc.perm, write=True, security=security)
            if code:
                raise AttError(code)
            if chrc.authorize and not chrc.prep_authorized and not self.trusted:
                await self._write_request(app, chrc, piece, piece_offset, prepare_authorize=True)
                if not chrc.write_without_response:
                    chrc.prep_authorized = True
        chrc.prep_authorized = False
        if self._runtime.config.merge_prepared_writes:
            pieces = [(offset, value)]
        for piece_offset, piece in pieces:
            await self._write_request(app, chrc, piece, piece_offset, prepare_authorize=False)

    # -- notifications -----------------------------------------------------------
    def ccc_value(self, chrc: Characteristic) -> int:
        return self._ccc.get(chrc, 0)

    async def subscribe(self, uuid: str, *, indicate: bool | None = None) -> None:
        """Write the CCC: notifications when the characteristic can notify, else indications."""
        app, chrc = self._lookup(uuid)
        if chrc.ccc_handle is None:
            raise ValueError(f"{uuid} has no Client Characteristic Configuration descriptor")
        if indicate is None:
            indicate = not chrc.can_notify
        value = 0x0002 if indicate else 0x0001
        await self._write_ccc(app, chrc, value)

    async def unsubscribe(self, uuid: str) -> None:
        app, chrc = self._lookup(uuid)
        if chrc.ccc_handle is None:
            raise ValueError(f"{uuid} has no Client Characteristic Configuration descriptor")
        await self._write_ccc(app, chrc, 0)

    async def _write_ccc(self, app: Application, chrc: Characteristic, value: int) -> None:
        code = check_permissions(att.PERM_READ | att.PERM_WRITE | chrc.ccc_perm, write=True,
                                 security=att.SECURITY_LEVELS[self.security])
        if code:
            raise AttError(code)
        old = self._ccc.get(chrc, 0)
        if value == old:
            return
        if value == 0:
            self._ccc.pop(chrc, None)
            await self._disable(app, chrc)
            return
        if (value == 1 and not chrc.can_notify) or (value == 2 and not chrc.can_indicate):
            raise AttError(att.CCC_IMPROPERLY_CONFIGURED)
        self._ccc[chrc] = value
        if old:
            return
        await self._enable(app, chrc)

    async def _enable(self, app: Application, chrc: Characteristic) -> None:
        per_device = self._runtime.config.notify_socket_per_device
        if chrc.notify_acquired and not chrc.removed and not per_device \
                and chrc.shared_notify is not None:
            chrc.notify_count += 1  # before 5.69: the socket already acquired serves us too
            return
        if chrc.notify_acquired and not chrc.removed:
            body = (self._options(),)
            try:
                reply = await self._runtime.call(app.sender, chrc.path, GATT_CHARACTERISTIC,
                                                 "AcquireNotify", "a{sv}", body)
            except DBusError as exc:
                if isinstance(exc, CallTimeout) or exc.name in (NO_REPLY, FAILED):
                    log.info("acquire notify failed central=%s path=%s error=%s",
                             self.address, chrc.path, exc.name)
                    return
                reply = ()
            if len(reply) == 2 and hasattr(reply[0], "to_socket"):
                sock = reply[0].to_socket()
                sock.setblocking(False)
                scope = trio.CancelScope()
                if per_device:
                    self._acquired[chrc] = _Acquired(sock, scope)
                else:
                    chrc.shared_notify = _Acquired(sock, scope)
                chrc.notify_count += 1
                self._runtime.spawn(self._read_acquired, app, chrc, sock, scope)
                log.info("notify acquired central=%s path=%s mtu=%s", self.address, chrc.path,
                         reply[1])
                return
            for item in reply:
                if hasattr(item, "close"):
                    item.close()
            log.info("acquire notify unusable, falling back central=%s path=%s", self.address,
                     chrc.path)
        chrc.notify_count += 1
        await self._call_no_reply(app, chrc, "StartNotify")

    async def _disable(self, app: Application, chrc: Characteristic, *,
                       leaving: bool = False) -> None:
        if not chrc.notify_count:
            return
        chrc.notify_count -= 1
        shared = chrc.shared_notify
        if shared is not None:
            if chrc.notify_count == 0:
                chrc.shared_notify = None
                shared.scope.cancel()
                shared.sock.close()
            return
        acquired = self._acquired.pop(chrc, None)
        if acquired is not None:
            if leaving and self._runtime.config.close_wrong_notify_socket:
                self._close_first_socket(chrc)
            acquired.scope.cancel()
            acquired.sock.close()
            return
        if chrc.notify_count == 0:
            await self._call_no_reply(app, chrc, "StopNotify")

    def _close_first_socket(self, chrc: Characteristic) -> None:
        """bluez/bluez#1452: close the first other phone's socket; its CCC stays on."""
        for other in self.adapter.centrals.values():
            if other is self:
                continue
            acquired = other._acquired.pop(chrc, None)
            if acquired is not None:
                log.info("notify socket of another central closed (bluez#1452) central=%s "
                         "path=%s", other.address, chrc.path)
                acquired.scope.cancel()
                acquired.sock.close()
                return

    def pause_notifications(self) -> None:
        """Stop reading notify sockets: the phone's link is stalled."""
        if self._reads_open.is_set():
            self._reads_open = trio.Event()

    def resume_notifications(self) -> None:
        self._reads_open.set()

    async def _call_no_reply(self, app: Application, chrc: Characteristic, member: str) -> None:
        if chrc.removed:
            return
        try:
            await self._runtime.call(app.sender, chrc.path, GATT_CHARACTERISTIC, member,
                                     no_reply=True)
        except DBusError as exc:
            log.debug("%s not sent path=%s error=%s", member, chrc.path, exc)
        log.info("%s central=%s path=%s subscribers=%d", member, self.address, chrc.path,
                 chrc.notify_count)

    async def _read_acquired(self, app: Application, chrc: Characteristic, sock: socket.socket,
                             scope: trio.CancelScope) -> None:
        """Read the application's notifications for this device from its socket."""
        with scope:
            while True:
                await self._reads_open.wait()
                if self.notify_read_delay:
                    await trio.sleep(self.notify_read_delay)
                await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(MAX_VALUE_LEN)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                shared = chrc.shared_notify is not None and chrc.shared_notify.sock is sock
                if not data:
                    log.info("notify socket closed central=%s path=%s", self.address, chrc.path)
                    if self._acquired.get(chrc) is not None and self._acquired[chrc].sock is sock:
                        del self._acquired[chrc]
                    if shared:
                        chrc.shared_notify = None
                    sock.close()
                    return
                chrc.socket_reads += 1
                self.adapter.notify(app, chrc, data, only=None if shared else self, via=sock)

    def over_the_air(self, chrc: Characteristic, value: bytes, *, indication: bool) -> None:
        """A notification bluetoothd got as a signal: on a slow phone (``notify_read_delay``)
        it waits in bluetoothd's queue towards that phone, which has no bound."""
        if not self.notify_read_delay:
            self.receive(chrc, value, indication=indication)
            return
        self._air.append((chrc, value, indication))
        self.air_peak = max(self.air_peak, len(self._air))
        if not self._air_draining:
            self._air_draining = True
            self._runtime.spawn(self._drain_air)

    async def _drain_air(self) -> None:
        try:
            while self._air and self.connected:
                await trio.sleep(self.notify_read_delay)
                chrc, value, indication = self._air.popleft()
                self.receive(chrc, value, indication=indication)
        finally:
            self._air_draining = False

    def receive(self, chrc: Characteristic, value: bytes, *, indication: bool) -> None:
        self._received.setdefault(chrc.uuid, []).append(
            Notification(value, time.monotonic(), indication))
        self._arrived.set()
        self._arrived = trio.Event()
        self._runtime.changed()

    def notifications(self, uuid: str) -> list[Notification]:
        """Everything received so far for ``uuid``, oldest first."""
        return list(self._received.get(normalize_uuid(uuid), []))

    async def next_notification(self, uuid: str, timeout: float = 2.0) -> Notification:
        """The next notification not yet returned by this method (TooSlowError on timeout)."""
        key = normalize_uuid(uuid)
        with trio.fail_after(timeout):
            while True:
                received = self._received.get(key, [])
                taken = self._taken.get(key, 0)
                if taken < len(received):
                    self._taken[key] = taken + 1
                    return received[taken]
                await self._arrived.wait()

    # -- pairing ------------------------------------------------------------------
    async def pair(self, *, io_capability: str = "NoInputNoOutput", mitm: bool = False,
                   secure_connections: bool = True, bonding: bool = True,
                   passkey: int | TypedPasskey | None = None,
                   keys_after: trio.Event | None = None) -> PairingResult:
        """The phone sends an SMP Pairing Request; bluetoothd asks its default agent.

        Defaults are a phone's Just Works request (NoInputNoOutput, no MITM,
        Secure Connections, bonding). ``passkey`` is what the user types or
        compares (None: the right one; an async function: what the user types once
        they have read it). A failed pairing drops the link. ``keys_after`` holds
        the end of the pairing (key distribution, then ``Paired``) until it is set:
        a slow phone whose pairing overlaps another's. On BR/EDR (SSP) the same
        choice is made; the kernel accepts Just Works there without asking anyone.
        """
        if not self.connected:
            raise NotConnected(f"{self.address} is not connected")
        return await Pairing(self._runtime, self._runtime.agents, self,
                             io_capability=io_capability, mitm=mitm,
                             secure_connections=secure_connections, bonding=bonding,
                             passkey=passkey, keys_after=keys_after).run()

    async def connect_profile(self, uuid: str) -> bool:
        """A BR/EDR profile connection (e.g. HID): bluetoothd asks the default agent
        ``AuthorizeService(device, uuid)`` unless the device is trusted; True if allowed.
        LE never asks (GATT over LE is not a profile connection)."""
        if not self.connected:
            raise NotConnected(f"{self.address} is not connected")
        if self.transport != BR_EDR:
            raise ValueError("AuthorizeService is asked for BR/EDR profiles only")
        if self.trusted:
            return True
        agent = self._runtime.agents.default
        if agent is None:
            log.info("service authorization refused central=%s uuid=%s reason=no-agent",
                     self.address, uuid)
            return False
        try:
            await self._runtime.call(agent.owner, agent.path, AGENT, "AuthorizeService", "os",
                                     (self.device_path, uuid))
        except DBusError as exc:
            log.info("service authorization refused central=%s uuid=%s error=%s",
                     self.address, uuid, exc.name)
            return False
        log.info("service authorized central=%s uuid=%s", self.address, uuid)
        return True

    @property
    def paired(self) -> bool:
        return self.adapter.is_paired(self.address)

    # -- connection ---------------------------------------------------------------
    def restore_ccc(self) -> None:
        """A bonded phone is back: the CCC values bluetoothd kept are its again."""
        kept = self.adapter.kept_ccc.pop(self.address, {})
        self._ccc.update({chrc: value for chrc, value in kept.items() if not chrc.removed})

    def forget(self, chars: Iterable[Characteristic]) -> None:
        """Characteristics left the database: drop their CCC state, close sockets."""
        for chrc in chars:
            self._ccc.pop(chrc, None)
            acquired = self._acquired.pop(chrc, None)
            if acquired is not None:
                acquired.scope.cancel()
                acquired.sock.close()

    def drop_link(self, reason: str) -> None:
        """The link is gone without bluetoothd calling anyone (restart, adapter removed)."""
        if not self.connected:
            return
        self.forget(list(self._ccc) + list(self._acquired))
        self.connected = False
        self.adapter.centrals.pop(self.address, None)
        log.info("central disconnected adapter=%s address=%s reason=%s", self.adapter.id,
                 self.address, reason)
        self._arrived.set()

    async def disconnect(self, reason: str = "remote-user") -> None:
        """The phone goes away; a disconnect counts as disabling every CCC (but a bonded
        phone's CCC values stay with bluetoothd under ``keep_bonded_ccc``: on the signal
        path and the shared socket of bluetoothd before 5.69 nothing is told; its own
        socket of 5.69+ is closed)."""
        if not self.connected:
            return
        keep = (self._runtime.config.keep_bonded_ccc
                and self.address in self.adapter.bonded_devices)
        kept: dict[Characteristic, int] = {}
        for app in self.adapter.gatt.registered():
            for chrc in app.characteristics():
                if chrc in self._ccc:
                    value = self._ccc.pop(chrc)
                    if keep:
                        kept[chrc] = value
                        if chrc not in self._acquired:
                            continue  # no StopNotify: bluetoothd still counts it
                        # 5.69+: the phone's own socket closes with its link; the CCC
                        # stays, and enabling it again asks for no new socket (5.82)
                    await self._disable(app, chrc, leaving=True)
        if kept:
            self.adapter.kept_ccc[self.address] = kept
        self.drop_link(reason)
        self.adapter.device_disconnected(self.address)
