"""The advert's duty, decision by decision: every race the rule met is a row."""

from __future__ import annotations

import pytest

from mushpi_ble.session.advert_duty import (
    NOTHING,
    REFUSED_WHILE_CONNECTED,
    AdvertEvent,
    AdvertFacts,
    CentralCame,
    CentralWent,
    Duty,
    Gone,
    PowerSeen,
    Registered,
    Released,
    RetryDue,
    decide,
    expected_registration,
    refusal_problem,
    retry_delay,
)

ON_AIR = AdvertFacts(done=True, advertising=True)
REGISTERING = AdvertFacts(done=True, registering=True)
"""The step is done from its register call on, while the call is in flight."""
ALIAS_ONLY = AdvertFacts(done=True)
"""Refused (or disabled): the step is done, nothing is on the air."""
STOPPING = AdvertFacts(done=True, advertising=True, stopping=True)
LOST = AdvertFacts(done=False)
"""Already being registered again (redo cleared done), or the session is gone."""

CONNECT_AGAIN = "a central connected; the controller stopped advertising"

ROWS: list[tuple[str, AdvertFacts, AdvertEvent, Duty]] = [
    ("a phone connects while on the air: the controller stopped advertising",
     ON_AIR, CentralCame(), Duty(CONNECT_AGAIN, look=True)),
    ("a phone connects during the registration (45abf17): still registered again",
     REGISTERING, CentralCame(), Duty(CONNECT_AGAIN, look=True)),
    ("a phone connects while alias-only: the refusal's own retry brings it back",
     ALIAS_ONLY, CentralCame(), Duty(look=True)),
    ("a phone connects while stopping: nothing is registered again",
     STOPPING, CentralCame(), Duty(look=True)),
    ("a phone connects before the step ran this session",
     LOST, CentralCame(), Duty(look=True)),
    ("a phone leaves: only a look (some controllers stop on either edge)",
     ON_AIR, CentralWent(), Duty(look=True)),
    ("registered: look that it is on the air",
     ON_AIR, Registered(), Duty(look=True)),
    ("powered on again from off: the controller may have lost its sets",
     ON_AIR, PowerSeen("off", True), Duty("the adapter is on again (was off)")),
    ("powered on again during the registration (45abf17)",
     REGISTERING, PowerSeen("off-blocked", True),
     Duty("the adapter is on again (was off-blocked)")),
    ("the session's first look at the power is no power cycle",
     ON_AIR, PowerSeen("unknown", True), NOTHING),
    ("an adapter that came back starts a new session anyway",
     ON_AIR, PowerSeen("removed", True), NOTHING),
    ("still on: nothing happened",
     ON_AIR, PowerSeen("on", True), NOTHING),
    ("powered off: the advert comes back with the power",
     ON_AIR, PowerSeen("on", False), NOTHING),
    ("powered on while alias-only: the retry is already due",
     ALIAS_ONLY, PowerSeen("off", True), NOTHING),
    ("released by bluetoothd: register again",
     ON_AIR, Released(), Duty("advertisement released")),
    ("a Release that overtakes the registration's reply still counts",
     REGISTERING, Released(), Duty("advertisement released")),
    ("released while stopping: stays gone",
     STOPPING, Released(), NOTHING),
    ("released after the session ended: the next session registers anyway",
     LOST, Released(), NOTHING),
    ("dropped without a Release (bluez/bluez #1015)",
     ON_AIR, Gone(), Duty("advertisement dropped by bluetoothd")),
    ("a refused advert's retry is due",
     ALIAS_ONLY, RetryDue(), Duty("retrying the refused advertisement")),
    ("a retry due after the session ended does nothing",
     LOST, RetryDue(), NOTHING),
]


@pytest.mark.parametrize(("why", "facts", "event", "duty"), ROWS, ids=[r[0] for r in ROWS])
def test_decision(why: str, facts: AdvertFacts, event: AdvertEvent, duty: Duty) -> None:
    assert decide(facts, event) == duty, why


@pytest.mark.parametrize(("facts", "expected"), [
    (ON_AIR, 7),
    # 72211a0: an answer read while registering again is about the advert just unregistered
    (REGISTERING, None),
    (ALIAS_ONLY, None),
    (STOPPING, None),
    (AdvertFacts(done=False, advertising=True), None),
])
def test_the_monitor_checks_only_the_registration_on_the_air(facts: AdvertFacts,
                                                             expected: int | None) -> None:
    assert expected_registration(facts, 7) == expected


def test_on_duty_is_registered_or_being_registered_and_not_stopping() -> None:
    assert ON_AIR.on_duty and REGISTERING.on_duty
    assert not ALIAS_ONLY.on_duty and not STOPPING.on_duty and not LOST.on_duty


def test_refused_adverts_back_off_from_half_a_second_to_a_minute() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 8, 50)] == [0.5, 1.0, 2.0, 60.0, 60.0]


def test_a_refusal_while_a_phone_is_connected_is_explained_as_such() -> None:
    problem = refusal_problem("kernel mismatch", "org.bluez.Error.Failed: x", connected=True,
                              previous=None)
    assert problem.startswith(REFUSED_WHILE_CONNECTED) and "org.bluez.Error.Failed" in problem
    again = refusal_problem("kernel mismatch", "e", connected=True, previous=problem)
    assert again.startswith(REFUSED_WHILE_CONNECTED)


def test_a_refusal_that_was_already_a_mismatch_stays_one() -> None:
    assert refusal_problem("kernel mismatch", "e", connected=True,
                           previous="kernel mismatch") == "kernel mismatch"
    assert refusal_problem("kernel mismatch", "e", connected=False,
                           previous=None) == "kernel mismatch"
