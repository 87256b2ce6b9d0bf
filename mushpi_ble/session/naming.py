"""The naming step: the adapter alias, ``{prefix}-{Species}{Stage}`` or a pinned name."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..controller import ControllerFailure, ControllerTimeout
from ..dbus import DBusError
from ..gatt import ADAPTER_IFACE, set_property
from ..naming import advertised_name
from .step import Step

log = logging.getLogger(__name__)

StageAsker = Callable[[], Awaitable[object | None]]
"""Asks the controller's stage getter (in a worker thread, under the handler deadline);
None when there is no getter; raises ``ControllerTimeout``/``ControllerFailure``."""


class Naming(Step):
    """Owns the advertised name; the alias follows it live."""

    name = "alias"

    def __init__(self, *, prefix: str, timeout: float, ask_stage: StageAsker) -> None:
        super().__init__()
        self._prefix = prefix
        self._timeout = timeout
        self._ask_stage = ask_stage
        self.current = advertised_name(prefix, None)
        self.fixed: str | None = None
        """Pins the name until the next refresh without one."""
        self.applied = ""
        """The alias bluetoothd last took."""
        self._adapter: str | None = None

    def detach(self) -> None:
        super().detach()
        self.applied = ""
        self._adapter = None

    async def register(self, adapter: str) -> None:
        self._adapter = adapter
        self.current = await self.compute()
        log.info("advertised name name=%s", self.current)
        await self._apply_alias()

    def forget(self) -> None:
        self._adapter = None

    async def compute(self) -> str:
        """The pinned name, or ``{prefix}-{Species}{Stage}`` from the stage getter (on
        failure the name stays)."""
        if self.fixed is not None:
            return self.fixed
        try:
            stage = await self._ask_stage()
        except (ControllerTimeout, ControllerFailure) as exc:
            log.warning("advertised name not recomputed error=%s", exc)
            return self.current
        return advertised_name(self._prefix, stage)

    async def rename(self, name: str) -> bool:
        """Apply ``name`` to the alias live; True when it changed while registered."""
        if name == self.current:
            return False
        self.current = name
        log.info("advertised name name=%s", name)
        if not self.done or self._adapter is None:
            return False
        await self._apply_alias()
        return True

    async def _apply_alias(self) -> None:
        assert self._adapter is not None
        try:
            await set_property(self.host.conn, self._adapter, ADAPTER_IFACE, "Alias", "s",
                               self.current, timeout=self._timeout)
            self.applied = self.current
            self.host.changed()
        except DBusError as exc:
            log.warning("setting the adapter alias failed error=%s", exc)

    def snapshot(self) -> dict[str, Any]:
        return {"advertised_name": self.applied}
