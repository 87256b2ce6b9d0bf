"""When our advert must be registered again: the rule, as pure decisions.

The controller stops advertising behind bluetoothd's back (on a connection,
across a power cycle) while bluetoothd still counts the advert active, and
bluetoothd itself drops or releases adverts. Every such event arrives here
with the advert's facts and gets a :class:`Duty` back: whether to register
again (and why, for the log) and whether to look at ``ActiveInstances``. No
trio, no D-Bus: :mod:`.advertiser` executes the duty, and the unit tests hold
every race the rule met as a row of a table.
"""

from __future__ import annotations

import attrs

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 60.0
REFUSED_WHILE_CONNECTED = ("the controller did not take the advertisement again while a "
                           "phone is connected")


@attrs.frozen
class AdvertFacts:
    """What the rule looks at."""

    done: bool
    """The advertisement step counts as done in this session (from its register call on)."""
    registering: bool = False
    """A registration call is in flight."""
    advertising: bool = False
    """bluetoothd took our last registration and has not let it go."""
    stopping: bool = False

    @property
    def on_duty(self) -> bool:
        """Registered, or being registered: what the controller may silently stop."""
        return (self.advertising or self.registering) and self.done and not self.stopping


# -- events ---------------------------------------------------------------------------------
@attrs.frozen
class CentralCame:
    """A central connected: the controller stopped advertising and the kernel does not
    restart it while the link lasts, yet bluetoothd still counts it active."""


@attrs.frozen
class CentralWent:
    """A central left: some controllers stop advertising on either edge."""


@attrs.frozen
class PowerSeen:
    """The adapter's state was read: ``was`` before, ``powered`` now."""

    was: str
    powered: bool


@attrs.frozen
class Released:
    """bluetoothd called our advert's Release."""


@attrs.frozen
class Gone:
    """The monitor saw no active instance for the registration it expected."""


@attrs.frozen
class RetryDue:
    """A refused advert's back-off ran out."""


@attrs.frozen
class Registered:
    """bluetoothd answered our RegisterAdvertisement."""


AdvertEvent = CentralCame | CentralWent | PowerSeen | Released | Gone | RetryDue | Registered


@attrs.frozen
class Duty:
    """What to do: register again (``reason`` says why) and/or look at ActiveInstances."""

    register_again: str | None = None
    look: bool = False


NOTHING = Duty()


def decide(facts: AdvertFacts, event: AdvertEvent) -> Duty:
    """The one rule for when the advert is registered again."""
    if isinstance(event, CentralCame):
        again = "a central connected; the controller stopped advertising"
        return Duty(register_again=again if facts.on_duty else None, look=True)
    if isinstance(event, (CentralWent, Registered)):
        return Duty(look=True)
    if isinstance(event, PowerSeen):
        # a reset controller may have lost its advertising sets while bluetoothd
        # still counts ours active (kernel 6.1 with an extended-advertising controller)
        on_again = event.powered and event.was not in ("on", "unknown", "removed")
        if on_again and facts.on_duty:
            return Duty(register_again=f"the adapter is on again (was {event.was})")
        return NOTHING
    if not facts.done or facts.stopping:
        return NOTHING
    if isinstance(event, Released):
        return Duty(register_again="advertisement released")
    if isinstance(event, Gone):
        return Duty(register_again="advertisement dropped by bluetoothd")
    return Duty(register_again="retrying the refused advertisement")


def expected_registration(facts: AdvertFacts, registrations: int) -> int | None:
    """Which of our registrations bluetoothd should have on the air, if any (none while
    one is being made, or while stopping): what the monitor checks against."""
    return registrations if facts.advertising and facts.on_duty else None


def retry_delay(refusals_in_a_row: int) -> float:
    """A refused advert's back-off: 0.5 s doubling to 60 s, so bluetoothd's log is not
    flooded."""
    return float(min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** max(0, refusals_in_a_row - 1)))


def refusal_problem(explained: str, error: str, *, connected: bool,
                    previous: str | None) -> str:
    """The plain-words reason for serving alias-only. A refusal while a phone is
    connected, when the advert was on the air before it came, is no kernel/BlueZ
    mismatch: say so instead of ``explained``."""
    if connected and (previous is None or previous.startswith(REFUSED_WHILE_CONNECTED)):
        return (f"{REFUSED_WHILE_CONNECTED} ({error}); a second phone cannot find the Pi "
                "until it leaves. Serving alias only, retrying.")
    return explained
