"""The adapter we serve on: found, kept powered, and its state reported.

Not a registration of its own: the supervisor's *finding-adapter* state asks
:meth:`AdapterKeeper.find` for the configured adapter, and the keeper
watches it for the rest of the session (``MUSHPI_BLE_ADAPTER_RECOVERY``:
power on, lift rfkill soft blocks), announcing each power change to the
steps. A powered-off or blocked adapter does not stop registration:
bluetoothd takes the application and the advert on a powered-off adapter and
serves them once it powers on.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from ..dbus import Connection
from ..errors import AdapterNotFound
from ..gatt import (
    AdapterCondition,
    AdapterRecovery,
    Recovery,
    Rfkill,
    managed_objects,
    pick_adapter,
)
from .step import PowerChanged, StepHost

log = logging.getLogger(__name__)

RECOVERIES_KEPT = 20


class AdapterKeeper:
    """Finds the configured adapter each session and keeps it powered."""

    def __init__(self, *, wanted: str, recovery_allowed: bool, timeout: float) -> None:
        self._wanted = wanted
        self._recovery_allowed = recovery_allowed
        self._timeout = timeout
        self.rfkill = Rfkill()
        """Where rfkill switches are read and lifted (tests point it at a directory)."""
        self.reset_run()

    def reset_run(self) -> None:
        self.adapter: str | None = None
        self.state = "unknown"
        """bluetoothd's PowerState ("on", "off", "off-enabling", "on-disabling",
        "off-blocked"), or "removed" while the adapter is gone."""
        self.rfkill_state = "unknown"
        self.recoveries: deque[dict[str, Any]] = deque(maxlen=RECOVERIES_KEPT)
        self.recovery_totals: dict[str, int] = {}
        """"action:result" → how often, since start."""
        self.forget()

    def forget(self) -> None:
        """The session ended: the next one finds (and watches) the adapter anew."""
        self.removed = False
        self._recovery: AdapterRecovery | None = None
        self._host: StepHost | None = None

    def record(self, step: Recovery) -> None:
        self.recoveries.append(step.as_dict())
        key = f"{step.action}:{step.result}"
        self.recovery_totals[key] = self.recovery_totals.get(key, 0) + 1
        if self._host is not None:
            self._host.changed()

    async def find(self, conn: Connection, host: StepHost) -> str:
        """The configured adapter, watched and (when allowed) powered on for the session."""
        self._host = host
        objects = await managed_objects(conn, timeout=self._timeout)
        adapter = pick_adapter(objects, self._wanted)
        if adapter is None:
            found = sorted(p.rsplit("/", 1)[-1] for p in objects if p.count("/") == 3)
            raise AdapterNotFound(
                f"adapter {self._wanted!r} not found (MUSHPI_BLE_ADAPTER); "
                f"bluetoothd has: {', '.join(found) or 'no adapters'}"
            )
        if self.state == "removed":
            self.record(Recovery(time.time(), "wait", "ok", "adapter returned"))
            log.info("adapter returned adapter=%s", adapter)
        self.adapter = adapter
        if self._recovery is None:
            recovery = AdapterRecovery(
                conn, adapter, allowed=self._recovery_allowed, rfkill=self.rfkill,
                timeout=self._timeout, on_step=self.record,
                on_condition=lambda condition: self._condition(host, condition))
            await recovery.recover()
            self._recovery = recovery
            await host.start_in_session(recovery.run)
        return adapter

    def _condition(self, host: StepHost, condition: AdapterCondition) -> None:
        was, self.state = self.state, condition.state
        self.rfkill_state = condition.rfkill.describe()
        host.announce(PowerChanged(was, condition))
        host.changed()

    def removed_now(self, path: str) -> bool:
        """bluetoothd removed ``path``: True when it is ours (the session is over)."""
        if path != self.adapter:
            return False
        log.warning("adapter removed adapter=%s", path)
        self.state = "removed"
        self.record(Recovery(time.time(), "wait", "waiting",
                             "adapter removed; waiting for it to return"))
        self.removed = True
        return True

    def snapshot(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "adapter_state": self.state,
            "rfkill": self.rfkill_state,
            "recoveries": list(self.recoveries),
            "recovery_totals": dict(self.recovery_totals),
        }
