"""A central asks to pair: the kernel's SMP method choice, then bluetoothd's agent calls.

The kernel (``net/bluetooth/smp.c``) picks the association model from both
IO capabilities and the MITM bits; with Secure Connections it always asks
user space to confirm Just Works (``confirm_hint`` 1). bluetoothd
(``src/device.c`` ``device_confirm_passkey``) then, for an incoming request,
calls the *default* agent: ``RequestAuthorization`` for a hinted Just Works,
``RequestConfirmation(passkey)`` for numeric comparison; ``DisplayPasskey``
when we show a passkey the phone types, ``RequestPasskey`` when we type one.
No agent: "No agent available for request type N", the kernel answers
negatively, pairing fails with Authentication Failed (0x05) and the link
drops. A device already paired that re-pairs with Just Works is refused
without asking (main.conf ``JustWorksRepairing = never``). An agent that
does not answer within 60 s gets ``Cancel()``. A non-pairable adapter
refuses a bonding request with Pairing Not Supported.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
import trio

from mushpi_ble.dbus import CallTimeout, DBusError

from .agents import IO_CAPABILITIES, AgentManager
from .names import AGENT
from .runtime import Runtime

if TYPE_CHECKING:
    from .central import FakeCentral

log = logging.getLogger(__name__)

# smp.c association models
JUST_WORKS = "just-works"
JUST_CFM = "just-confirm"
REQ_PASSKEY = "passkey-entry"
CFM_PASSKEY = "numeric-comparison"
DSP_PASSKEY = "passkey-display"
OVERLAP = "overlap"

_J, _C, _R, _F, _D, _O = JUST_WORKS, JUST_CFM, REQ_PASSKEY, CFM_PASSKEY, DSP_PASSKEY, OVERLAP
# [remote io][local io], in IO_CAPABILITIES order (smp.c gen_method / sc_method)
GEN_METHOD = (
    (_J, _C, _R, _J, _R),
    (_J, _C, _R, _J, _R),
    (_F, _F, _R, _J, _F),
    (_J, _C, _J, _J, _C),
    (_F, _F, _R, _J, _O),
)
SC_METHOD = (
    (_J, _C, _R, _J, _R),
    (_J, _F, _R, _J, _F),
    (_D, _D, _R, _J, _D),
    (_J, _C, _J, _J, _C),
    (_D, _F, _R, _J, _F),
)

# src/device.c auth_type_t, as in "No agent available for request type %d"
AUTH_TYPE = {"RequestPasskey": 1, "RequestAuthorization": 2, "RequestConfirmation": 2,
             "DisplayPasskey": 3}

# mgmt status of a failed pairing (smp_failure → mgmt_auth_failed(HCI_ERROR_AUTH_FAILURE))
STATUS_SUCCESS = 0x00
STATUS_AUTH_FAILED = 0x05


@attrs.frozen
class PairingResult:
    """What a pairing attempt came to, as the central and the logs see it."""

    success: bool
    method: str
    agent_call: str | None = None
    error: str | None = None
    status: int = STATUS_SUCCESS
    disconnected: bool = False


def association_model(local_io: str, remote_io: str, *, mitm: bool, secure: bool) -> str:
    """smp.c: JUST_CFM without MITM, else the table; no-IO locals never confirm."""
    if mitm:
        table = SC_METHOD if secure else GEN_METHOD
        method = table[IO_CAPABILITIES.index(remote_io)][IO_CAPABILITIES.index(local_io)]
    else:
        method = JUST_CFM
    if method == JUST_CFM and local_io == "NoInputNoOutput":
        method = JUST_WORKS
    if method == OVERLAP:  # we are the peripheral (slave role): we enter the passkey
        method = REQ_PASSKEY
    return method


TypedPasskey = Callable[[], Awaitable[int]]
"""What the phone's user types, once they have read it somewhere (an LCD, a log)."""


class Pairing:
    """One incoming pairing request from ``central``, played to the end."""

    def __init__(self, runtime: Runtime, agents: AgentManager, central: FakeCentral, *,
                 io_capability: str, mitm: bool, secure_connections: bool, bonding: bool,
                 passkey: int | TypedPasskey | None,
                 keys_after: trio.Event | None = None) -> None:
        if io_capability not in IO_CAPABILITIES:
            raise ValueError(f"io_capability must be one of {IO_CAPABILITIES}")
        self._runtime = runtime
        self._agents = agents
        self._central = central
        self._remote_io = io_capability
        self._mitm = mitm
        self._secure = secure_connections
        self._bonding = bonding
        self._typed = passkey
        self._keys_after = keys_after

    async def run(self) -> PairingResult:
        central, adapter = self._central, self._central.adapter
        if self._bonding and not adapter.pairable:
            return await self._fail(JUST_WORKS, None, "pairing-not-supported",
                                    "adapter not pairable (bondable off)")
        method = association_model(self._agents.io_capability, self._remote_io,
                                   mitm=self._mitm, secure=self._secure)
        call, args, signature = self._agent_request(method)
        if call is None:  # legacy Just Works: the kernel does not ask user space
            return await self._succeed(method, None)
        if method == JUST_WORKS and central.transport == "BR/EDR":
            # hci_user_confirm_request_evt: with no MITM on either side and a local
            # NoInputNoOutput, the kernel accepts BR/EDR SSP Just Works by itself
            log.info("bredr just works accepted by the kernel adapter=%s address=%s",
                     adapter.id, central.address)
            return await self._succeed(method, None)
        if (call == "RequestAuthorization" and adapter.is_paired(central.address)
                and self._runtime.config.just_works_repairing == "never"):
            log.info("just works repairing refused adapter=%s address=%s", adapter.id,
                     central.address)
            return await self._fail(method, None, "repairing-refused",
                                    "JustWorksRepairing=never")
        agent = self._agents.default
        if agent is None:
            log.error("No agent available for request type %d", AUTH_TYPE[call])
            log.error("device_confirm_passkey: Operation not permitted")
            return await self._fail(method, call, "no-agent",
                                    f"No agent available for request type {AUTH_TYPE[call]}")
        log.info("pairing request adapter=%s address=%s method=%s agent=%s%s call=%s",
                 adapter.id, central.address, method, agent.owner, agent.path, call)
        link = self._runtime.require_link()
        await self._runtime.faults.delay(call)
        try:
            reply = await link.conn.call(agent.owner, agent.path, AGENT, call, signature, args,
                                         timeout=self._runtime.config.agent_timeout,
                                         no_reply=call == "DisplayPasskey")
        except CallTimeout:
            log.error("Timed out waiting for reply from agent")
            await link.conn.call(agent.owner, agent.path, AGENT, "Cancel", no_reply=True)
            return await self._fail(method, call, "org.freedesktop.DBus.Error.NoReply",
                                    "agent timeout; Cancel sent")
        except DBusError as exc:
            return await self._fail(method, call, exc.name, exc.text)
        if callable(self._typed):  # the phone's user types what the Pi showed
            try:
                with trio.fail_after(self._runtime.config.agent_timeout):
                    self._typed = await self._typed()
            except trio.TooSlowError:
                return await self._fail(method, call, "passkey-timeout", "nothing typed")
        if not self._passkey_matches(method, args, reply):
            return await self._fail(method, call, "passkey-mismatch", "wrong passkey")
        return await self._succeed(method, call)

    def _agent_request(self, method: str) -> tuple[str | None, tuple[object, ...], str]:
        device = self._central.device_path
        if method == JUST_WORKS:
            return ("RequestAuthorization", (device,), "o") if self._secure else (None, (), "")
        if method == JUST_CFM:
            if not self._secure:
                return "RequestAuthorization", (device,), "o"
            return "RequestConfirmation", (device, secrets.randbelow(1_000_000)), "ou"
        if method == CFM_PASSKEY and self._secure:
            return "RequestConfirmation", (device, secrets.randbelow(1_000_000)), "ou"
        if method in (DSP_PASSKEY, CFM_PASSKEY):
            return "DisplayPasskey", (device, secrets.randbelow(1_000_000), 0), "ouq"
        return "RequestPasskey", (device,), "o"

    def _passkey_matches(self, method: str, args: tuple[object, ...],
                         reply: tuple[object, ...]) -> bool:
        if method in (DSP_PASSKEY, CFM_PASSKEY) and len(args) == 3:
            return self._typed is None or self._typed == args[1]
        if method == REQ_PASSKEY:
            return bool(reply) and (self._typed is None or self._typed == reply[0])
        return True

    async def _succeed(self, method: str, call: str | None) -> PairingResult:
        central = self._central
        if self._keys_after is not None:
            await self._keys_after.wait()
        authenticated = method in (CFM_PASSKEY, DSP_PASSKEY, REQ_PASSKEY)
        central.security = "high" if authenticated else "medium"
        central.adapter.set_paired(central.address, bonded=self._bonding)
        log.info("pairing succeeded adapter=%s address=%s method=%s bonded=%s",
                 central.adapter.id, central.address, method, self._bonding)
        return PairingResult(True, method, call)

    async def _fail(self, method: str, call: str | None, error: str,
                    why: str) -> PairingResult:
        central = self._central
        log.info("pairing failed adapter=%s address=%s method=%s status=0x%02x error=%s (%s)",
                 central.adapter.id, central.address, method, STATUS_AUTH_FAILED, error, why)
        await central.disconnect(reason="auth-failure")
        return PairingResult(False, method, call, error, STATUS_AUTH_FAILED, disconnected=True)
