"""The central's own pairing agent (``org.bluez.Agent1``), as a phone has its own.

One bluetoothd serves both controllers in the VM. It asks the *default*
agent about every incoming pairing request and about pairing the kernel
starts on its own (EATT on an unencrypted link), on either adapter. Our
peripheral is the one that must answer the requests arriving on hci0, so the
central never becomes the default agent: it registers an agent on a D-Bus
connection of its own, never calls ``RequestDefaultAgent``, and calls
``Device1.Pair()`` on that same connection. bluetoothd then uses the caller's
agent for that outgoing pairing; for Just Works it accepts on the central's
side without asking (the caller showed its intent), so what happens next is
decided by the peripheral's side alone.

One more guard, learnt in the VM: while no agent is the default, bluetoothd
asked this agent about the request arriving on hci0 as well (5.66 and 5.82).
It refuses every request about a device that is not on the central's own
adapter, so it can never answer in the peripheral's place.

No ``from __future__ import annotations`` here: dbus-fast reads the D-Bus
signatures from the live annotations.
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from dbus_fast import BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusStr, DBusUInt16, DBusUInt32
from dbus_fast.service import ServiceInterface, method

log = logging.getLogger("tests_vm.central_agent")

AGENT_PATH = "/mushpi/tests/central_agent"
REJECTED = "org.bluez.Error.Rejected"


class _Agent1(ServiceInterface):
    """Accepts Just Works and confirmation, refuses what needs a keyboard; logs every call."""

    def __init__(self, calls: list[tuple[str, tuple[Any, ...]]], adapter: str,
                 passkey: Callable[[], int | None] | None = None) -> None:
        super().__init__("org.bluez.Agent1")
        self.calls = calls
        self.devices = f"/org/bluez/{adapter}/"
        self.passkey = passkey

    def _seen(self, name: str, *args: Any) -> None:
        log.info("agent call %s%s", name, args)
        self.calls.append((name, args))
        if args and isinstance(args[0], str) and not args[0].startswith(self.devices):
            raise DBusError(REJECTED, f"{args[0]} is not on the central's adapter")

    @method()
    def Release(self) -> None:
        self._seen("Release")

    @method()
    def RequestConfirmation(self, device: DBusObjectPath, passkey: DBusUInt32) -> None:
        self._seen("RequestConfirmation", device, passkey)

    @method()
    def RequestAuthorization(self, device: DBusObjectPath) -> None:
        self._seen("RequestAuthorization", device)

    @method()
    def AuthorizeService(self, device: DBusObjectPath, uuid: DBusStr) -> None:
        self._seen("AuthorizeService", device, uuid)

    @method()
    async def RequestPasskey(self, device: DBusObjectPath) -> DBusUInt32:
        """The user types what the peripheral shows (``passkey`` polls for it)."""
        self._seen("RequestPasskey", device)
        if self.passkey is None:
            raise DBusError(REJECTED, "the central has no keyboard")
        for _ in range(200):
            typed = self.passkey()
            if typed is not None:
                log.info("typing passkey %06d", typed)
                return typed
            await asyncio.sleep(0.1)
        raise DBusError(REJECTED, "no passkey was shown to type")

    @method()
    def RequestPinCode(self, device: DBusObjectPath) -> DBusStr:
        self._seen("RequestPinCode", device)
        raise DBusError(REJECTED, "the central has no keyboard")

    @method()
    def DisplayPasskey(self, device: DBusObjectPath, passkey: DBusUInt32,
                       entered: DBusUInt16) -> None:
        self._seen("DisplayPasskey", device, passkey, entered)

    @method()
    def DisplayPinCode(self, device: DBusObjectPath, pincode: DBusStr) -> None:
        self._seen("DisplayPinCode", device, pincode)

    @method()
    def Cancel(self) -> None:
        self._seen("Cancel")


class PairingFailed(Exception):
    """``Device1.Pair()`` answered with a D-Bus error (``name``: e.g. AuthenticationFailed)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


class CentralAgent:
    """The central's agent on a connection of its own; ``pair`` pairs through it."""

    def __init__(self, adapter: str = "hci1", capability: str = "NoInputNoOutput",
                 passkey: Callable[[], int | None] | None = None) -> None:
        self.adapter = adapter
        self.capability = capability
        self.passkey = passkey
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.bus: MessageBus | None = None

    async def _call(self, path: str, interface: str, member: str, signature: str = "",
                    body: list[Any] | None = None, timeout: float = 10.0) -> Message:
        assert self.bus is not None, "start() first"
        reply = await asyncio.wait_for(self.bus.call(Message(
            destination="org.bluez", path=path, interface=interface, member=member,
            signature=signature, body=body or [])), timeout)
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise PairingFailed(str(reply.error_name), " ".join(str(b) for b in reply.body))
        return reply

    async def start(self) -> None:
        self.bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        self.bus.export(AGENT_PATH, _Agent1(self.calls, self.adapter, self.passkey))
        await self._call("/org/bluez", "org.bluez.AgentManager1", "RegisterAgent", "os",
                         [AGENT_PATH, self.capability])
        log.info("central agent registered (%s), not the default", self.capability)

    async def pair(self, device_path: str, timeout: float = 40.0) -> None:
        """``Device1.Pair()`` from this connection; raises PairingFailed on refusal."""
        await self._call(device_path, "org.bluez.Device1", "Pair", timeout=timeout)

    async def stop(self) -> None:
        bus, self.bus = self.bus, None
        if bus is None:
            return
        try:
            reply = await asyncio.wait_for(bus.call(Message(
                destination="org.bluez", path="/org/bluez",
                interface="org.bluez.AgentManager1", member="UnregisterAgent",
                signature="o", body=[AGENT_PATH])), 5)
            if reply is not None and reply.message_type == MessageType.ERROR:
                log.info("UnregisterAgent: %s", reply.error_name)
        finally:
            bus.disconnect()
