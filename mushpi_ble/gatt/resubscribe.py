"""A bonded phone back for a second visit: does it get the current value at once?

bluetoothd keeps a bonded device's CCC values when it leaves (seen on 5.66 and
5.82): no StopNotify for it, and when it comes back and enables notifications
again, bluetoothd answers the CCC write itself, with no StartNotify. The phone
is subscribed again but never gets the "current value at once" a first
subscribe gets. So when a bonded central connects, each notifying
characteristic bluetoothd still counts as subscribed (``Notifying``) gets the
first subscribe's treatment once, after ``REPLAY_SETTLE_S`` — unless a
StartNotify came meanwhile (a phone subscribing anew already got it) or a value
went out since the connect (one published while the phone was away may leave
just after it came back: it has the current value). Pure: the
application runs it.
"""

from __future__ import annotations

REPLAY_SETTLE_S = 1.0
"""How long after the connect: the phone re-encrypts, reads its cached database and
enables notifications again (its app only listens from then on)."""


def replay_on_reconnect(*, bonded: bool, notifying: bool, subscribed_since: bool,
                        sent_since: bool = False) -> bool:
    """Whether a characteristic gets its subscribe push for a central that just connected.

    ``bonded``: bluetoothd keeps the central's CCC values (an unbonded one's go with the
    link, so it subscribes anew and bluetoothd calls StartNotify). ``notifying``:
    bluetoothd still counts a subscriber. ``subscribed_since``: a StartNotify came since
    the connect (its push was made: none twice). ``sent_since``: a value went out as a
    notification since the connect (the phone has the current value)."""
    return bonded and notifying and not subscribed_since and not sent_since
