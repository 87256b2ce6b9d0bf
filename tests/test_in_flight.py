"""InFlight: the requests being answered per phone, and the phones that left first."""

from __future__ import annotations

from mushpi_ble.gatt.in_flight import InFlight

A, B = "/org/bluez/hci0/dev_A", "/org/bluez/hci0/dev_B"


def test_a_phone_that_leaves_with_nothing_open_is_not_counted() -> None:
    flight = InFlight()
    with flight.answering(A):
        pass
    assert flight.device_left(A) == 0
    assert (flight.phones_left_waiting, flight.requests_outlived_link) == (0, 0)


def test_a_phone_that_leaves_with_requests_open_counts_once_with_each_request() -> None:
    flight = InFlight()
    with flight.answering(A), flight.answering(A), flight.answering(B):
        assert flight.device_left(A) == 2
        assert (flight.phones_left_waiting, flight.requests_outlived_link) == (1, 2)
    assert flight.open == {}  # answered late all the same, nothing left behind
    assert flight.device_left(A) == 0  # a second departure finds nothing open
    assert flight.device_left(B) == 0


def test_a_request_naming_no_phone_is_not_tracked() -> None:
    flight = InFlight()
    with flight.answering(""):
        assert flight.open == {}
        assert flight.device_left("") == 0


def test_a_failing_answer_still_closes_its_request() -> None:
    flight = InFlight()
    try:
        with flight.answering(A):
            raise RuntimeError("the controller failed")
    except RuntimeError:
        pass
    assert flight.open == {}
