"""The bonds and pairing-agent steps: who bonded, and our agent answering pairings.

Both act on the run's :class:`Pairing`, which the agent step makes when a run
begins and hands to :class:`RoomAccess` (the access gate and bond management
read it there).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ..access import RoomAccess
from ..gatt import Pairing, PasskeyShown, agent_path
from .step import Step, StepHost


class Bonds(Step):
    """Follows bluetoothd's bonded devices of our adapter for the session."""

    name = "bonds"

    def __init__(self, access: RoomAccess, *, timeout: float) -> None:
        super().__init__()
        self._access = access
        self._timeout = timeout

    async def register(self, adapter: str) -> None:
        pairing = self._access.pairing
        assert pairing is not None
        self._access.adapter_ready(adapter)
        await self.host.start_in_session(partial(pairing.run_bonds, adapter,
                                                 timeout=self._timeout))

    def snapshot(self) -> dict[str, Any]:
        return {"access": self._access.snapshot()}


class Agent(Step):
    """Our pairing agent, registered after every bluetoothd (re)start; a refusal is
    shown in the status, not retried."""

    name = "pairing agent"

    def __init__(self, access: RoomAccess, *, mode: str, app_root: str, timeout: float,
                 on_passkey: PasskeyShown) -> None:
        super().__init__()
        self._access = access
        self._mode = mode
        self._path = agent_path(app_root)
        self._timeout = timeout
        self._on_passkey = on_passkey
        self.pairing: Pairing | None = None

    def attach(self, host: StepHost) -> None:
        super().attach(host)
        self.pairing = Pairing(host.conn, self._path, self._mode, window=self._access.window,
                               on_passkey=self._on_passkey, on_bond=self._access.bond_made)
        self._access.attach(host.conn, self.pairing, host.spawn)

    def detach(self) -> None:
        super().detach()
        self.pairing = None
        self._access.detach()

    async def register(self, adapter: str) -> None:
        assert self.pairing is not None
        await self.pairing.register(timeout=self._timeout, adapter_path=adapter)

    async def unregister(self, timeout: float) -> None:
        if self.pairing is not None:
            await self.pairing.unregister(timeout=timeout)

    def forget(self) -> None:
        if self.pairing is not None:
            self.pairing.forget()

    def snapshot(self) -> dict[str, Any]:
        return {"pairing": (self.pairing.snapshot() if self.pairing is not None
                            else Pairing.idle_snapshot(self._mode, self._access.window))}
