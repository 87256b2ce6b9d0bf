"""What the application knows about one characteristic at run time.

Plain data, shared by :mod:`.application` (values, StartNotify) and :mod:`.notify_sockets`
(each phone's acquired socket), and read by the status of the layers above.
"""

from __future__ import annotations

import attrs

from .model import Characteristic
from .notify_socket import NotifySocket, SocketStats


@attrs.define
class CharacteristicState:
    """What the application knows about one characteristic at run time."""

    spec: Characteristic
    path: str
    value: bytes = b""
    notifying: bool = False
    start_notify_calls: int = 0
    last_start_notify: float | None = None
    """Loop time of the last StartNotify (a new subscription), for the reconnect look."""
    notifications_sent: int = 0
    last_sent: float | None = None
    """When the last value went out as a signal (trio time): a bonded phone back since
    then has the current value (see :mod:`.resubscribe`)."""
    sockets: dict[str, NotifySocket] = attrs.Factory(dict)
    """Acquired notify sockets by device path."""
    suspects: set[str] = attrs.Factory(set)
    """Devices whose socket closed while they stayed connected (bluez/bluez#1452)."""
    sockets_acquired: int = 0
    sockets_closed: int = 0
    socket_losses: int = 0
    """Sockets closed under a still-connected phone: counted, answered by signals."""
    confirmations: int = 0
    """Indication confirmations: Confirm() calls and 0x01 bytes on the sockets."""
    acquired_since_register: bool = False
    """A socket was acquired since RegisterApplication (see
    ``NotifySockets.flush_left_subscriptions``)."""
    departed: SocketStats = attrs.Factory(SocketStats)
    """The counters of sockets already closed, so the totals never go back."""

    @property
    def subscribed(self) -> bool:
        """Some phone receives this characteristic's notifications: through StartNotify
        (signals) or an acquired socket of its own."""
        return self.notifying or bool(self.sockets)

    @property
    def on_signals(self) -> bool:
        """Notifications go out as one PropertiesChanged (not into the sockets)."""
        return self.notifying or bool(self.suspects)
