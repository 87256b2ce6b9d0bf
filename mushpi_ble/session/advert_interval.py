"""How often the advert goes on the air: fast for a while, then slow, as pure decisions.

A phone finds an advertiser sooner the more often it advertises: Apple's accessory
guidelines ask for 20 ms during the first 30 s, then one of a list of longer
intervals; Android's low-power scan listens 512 ms in every 5120 ms, so an
advertiser slower than that window can be missed for a whole cycle. So the advert
is fast for ``fast_s`` seconds after the start, after every disconnect (the grower
is still in the room) and whenever a pairing window opens, and slow otherwise.

bluetoothd takes ``MinInterval``/``MaxInterval`` (ms) on ``LEAdvertisement1``: stable
from 5.77, before that only with ``-E`` (experimental) and silently ignored without
it — such a bluetoothd also hides ``SupportedCapabilities``, so the advertiser knows
and asks for nothing ("ignored"). A bluetoothd (or kernel) that refuses them gets the
advert without them once, and the reason is kept: :func:`fallback_reason`. No trio,
no D-Bus: :mod:`.advertiser` executes these decisions.
"""

from __future__ import annotations

import attrs

APPLE_SLOW_MS = (152.5, 211.25, 318.75, 417.5, 546.25, 760, 852.5, 1022.5, 1285)
"""The longer intervals Apple's accessory design guidelines list, in ms."""
UNIT_MS = 0.625
"""bluetoothd turns ms into controller units of 0.625 ms, rounding down."""


@attrs.frozen
class IntervalSettings:
    """MUSHPI_BLE_ADVERT_INTERVALS, _FAST_MS, _FAST_S, _SLOW_MS."""

    enabled: bool = True
    fast_ms: int = 20
    fast_s: float = 30.0
    slow_ms: int = 418


@attrs.frozen
class Interval:
    """What to ask bluetoothd for: ``ms`` as both MinInterval and MaxInterval, or None
    (its default, about 1.28 s on Linux)."""

    phase: str
    """"fast", "slow", "default" (switched off), "ignored" (this bluetoothd would drop
    them) or "fallback" (refused: bluetoothd's own)."""
    ms: int | None = None

    @property
    def on_air_ms(self) -> float | None:
        """The interval the controller gets: whole units of 0.625 ms, rounded down."""
        return None if self.ms is None else int(self.ms / UNIT_MS) * UNIT_MS


# -- events -----------------------------------------------------------------------------------
@attrs.frozen
class Began:
    """The advert is registered for the first time in this run (a start)."""

    now: float


@attrs.frozen
class CentralWent:
    """A central left: the grower may still be near, looking again."""

    now: float


@attrs.frozen
class WindowOpened:
    """A pairing window opened: a new phone is about to look for the Pi."""

    now: float


IntervalEvent = Began | CentralWent | WindowOpened


def fast_until(settings: IntervalSettings, current: float | None, event: IntervalEvent
               ) -> float | None:
    """When the fast period ends after ``event`` (None: no fast period). Every event
    starts one anew; an event never shortens one already running."""
    if not settings.enabled or settings.fast_s <= 0:
        return None
    until = event.now + settings.fast_s
    return until if current is None else max(current, until)


def interval_at(settings: IntervalSettings, until: float | None, now: float,
                fallback: str | None, *, honoured: bool = True) -> Interval:
    """The interval to register the advert with at ``now``; ``honoured``: bluetoothd
    passes the intervals on (see :attr:`AdvertisingCapabilities.honours_intervals`)."""
    if not settings.enabled:
        return Interval("default")
    if not honoured:
        return Interval("ignored")
    if fallback is not None:
        return Interval("fallback")
    if until is not None and now < until:
        return Interval("fast", settings.fast_ms)
    return Interval("slow", settings.slow_ms)


INTERVAL_REFUSALS = ("org.bluez.Error.InvalidArguments", "org.bluez.Error.Failed")
"""What bluetoothd answers when it cannot take the intervals: a parse error, or the
kernel refusing the advertising parameters. Anything else (AlreadyExists after a
registration that overran its deadline, NotPermitted for no free instance) is
about the advert, not its interval."""


def fallback_reason(asked: Interval, error_name: str, error_text: str = "") -> str | None:
    """A refused registration that asked for an interval: why the advert goes without
    one from now on (None: the refusal is not about the interval)."""
    if asked.ms is None or error_name not in INTERVAL_REFUSALS:
        return None
    error = f"{error_name}: {error_text}" if error_text else error_name
    return (f"bluetoothd refused the advertisement with MinInterval/MaxInterval "
            f"{asked.ms} ms ({error}); advertising at bluetoothd's default interval instead")


def in_force(interval: Interval) -> str:
    """The interval in plain words, for ``get_status()``, the live view and ``check``."""
    if interval.ms is None:
        why = {"default": "switched off",
               "ignored": "this bluetoothd ignores MinInterval/MaxInterval: before 5.77 "
                          "they need bluetoothd -E"}.get(interval.phase,
                                                         "the interval was refused")
        return f"bluetoothd's default (about 1.28 s; {why})"
    return f"{interval.phase} {interval.on_air_ms:g} ms"
