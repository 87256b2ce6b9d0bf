"""``org.bluez.AgentManager1`` at ``/org/bluez``: who answers pairing requests.

As ``src/agent.c``: one agent per bus connection (``AlreadyExists`` for a
second, whatever its path); the capability is matched as bluetoothd's
``mgmt_parse_io_capability`` does (a prefix of a known name; "" means
KeyboardDisplay; anything else ``InvalidArguments``). The first agent
registered becomes the default; ``RequestDefaultAgent`` moves one to the
front. Unregister and RequestDefaultAgent answer ``DoesNotExist`` for a
caller without an agent or a path that is not its agent's. An agent whose
connection leaves the bus is dropped silently; a clean shutdown sends
``Release()`` (no reply expected) to every agent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs

from mushpi_ble.dbus import CallContext, DBusError, Interface, Method

from .names import (
    AGENT,
    AGENT_MANAGER,
    ALREADY_EXISTS,
    DOES_NOT_EXIST,
    FAILED,
    INVALID_ARGUMENTS,
    TEXT_ALREADY_EXISTS,
    TEXT_DOES_NOT_EXIST,
    TEXT_INVALID_ARGUMENTS,
)

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

AGENT_MANAGER_PATH = "/org/bluez"
# src/shared/mgmt.c iocap_arguments, in its order (the prefix match takes the first)
IO_CAPABILITIES = ("DisplayOnly", "DisplayYesNo", "KeyboardOnly", "NoInputNoOutput",
                   "KeyboardDisplay")


def parse_io_capability(text: str) -> str | None:
    """bluetoothd's parser: "" → KeyboardDisplay, a prefix of a name → that name, else None."""
    if text == "":
        return "KeyboardDisplay"
    return next((name for name in IO_CAPABILITIES if name.startswith(text)), None)


@attrs.define(eq=False)
class Agent:
    """A registered agent: who, where, and its IO capability."""

    owner: str
    path: str
    capability: str


class AgentManager:
    """The agents bluetoothd knows, and which one is the default."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._agents: dict[str, Agent] = {}
        self._defaults: list[Agent] = []

    # -- views -------------------------------------------------------------------
    @property
    def agents(self) -> list[Agent]:
        return list(self._agents.values())

    @property
    def default(self) -> Agent | None:
        """The agent incoming pairing requests go to (bluetoothd's ``agent_get(NULL)``)."""
        return self._defaults[0] if self._defaults else None

    def agent_of(self, owner: str) -> Agent | None:
        return self._agents.get(owner)

    @property
    def io_capability(self) -> str:
        """What the adapter tells the kernel: the default's, NoInputNoOutput without one."""
        default = self.default
        return default.capability if default is not None else "NoInputNoOutput"

    # -- D-Bus -------------------------------------------------------------------
    def interface(self) -> Interface:
        return Interface(AGENT_MANAGER, methods=[
            Method("RegisterAgent", "os", "", handler=self._register,
                   arg_names=["agent", "capability"]),
            Method("UnregisterAgent", "o", "", handler=self._unregister, arg_names=["agent"]),
            Method("RequestDefaultAgent", "o", "", handler=self._request_default,
                   arg_names=["agent"]),
        ])

    def _refuse_if_asked(self, member: str) -> None:
        fault = self._runtime.faults.take_refusal(member)
        if fault is not None:
            raise DBusError(*fault)

    def _register(self, ctx: CallContext, path: str, capability: str) -> None:
        self._refuse_if_asked("RegisterAgent")
        if ctx.sender in self._agents:
            raise DBusError(ALREADY_EXISTS, TEXT_ALREADY_EXISTS)
        parsed = parse_io_capability(capability)
        if parsed is None:
            raise DBusError(INVALID_ARGUMENTS, TEXT_INVALID_ARGUMENTS)
        agent = Agent(ctx.sender, path, parsed)
        self._agents[ctx.sender] = agent
        self._defaults.append(agent)
        log.info("agent registered sender=%s path=%s capability=%s default=%s", ctx.sender,
                 path, parsed, self.default is agent)
        self._runtime.changed()

    def _mine(self, ctx: CallContext, path: str) -> Agent:
        agent = self._agents.get(ctx.sender)
        if agent is None or agent.path != path:
            raise DBusError(DOES_NOT_EXIST, TEXT_DOES_NOT_EXIST)
        return agent

    def _unregister(self, ctx: CallContext, path: str) -> None:
        self._refuse_if_asked("UnregisterAgent")
        agent = self._mine(ctx, path)
        self._drop(agent, "unregistered")

    def _request_default(self, ctx: CallContext, path: str) -> None:
        self._refuse_if_asked("RequestDefaultAgent")
        agent = self._mine(ctx, path)
        if agent not in self._defaults:
            raise DBusError(FAILED, "Failed to set as default")
        self._defaults.remove(agent)
        self._defaults.insert(0, agent)
        log.info("default agent sender=%s path=%s", agent.owner, agent.path)
        self._runtime.changed()

    # -- lifetime ------------------------------------------------------------------
    def _drop(self, agent: Agent, reason: str) -> None:
        self._agents.pop(agent.owner, None)
        if agent in self._defaults:
            self._defaults.remove(agent)
        log.info("agent dropped sender=%s path=%s reason=%s", agent.owner, agent.path, reason)
        self._runtime.changed()

    def drop_sender(self, sender: str) -> None:
        """The agent's connection left the bus: forgotten, no Release."""
        agent = self._agents.get(sender)
        if agent is not None:
            self._drop(agent, "owner-left")

    async def release_all(self) -> None:
        """bluetoothd exits cleanly: ``Release()`` to every agent, then forget them."""
        agents = list(self._agents.values())
        self._agents.clear()
        self._defaults.clear()
        for agent in agents:
            try:
                await self._runtime.call(agent.owner, agent.path, AGENT, "Release",
                                         no_reply=True)
            except DBusError as exc:
                log.debug("release not sent path=%s error=%s", agent.path, exc)
            log.info("agent released sender=%s path=%s", agent.owner, agent.path)
        self._runtime.changed()

    def forget_all(self) -> None:
        """bluetoothd died: every registration is gone, nobody is told."""
        self._agents.clear()
        self._defaults.clear()
