"""ConnectionLifecycle: socket age, planned rotation and one turn in flight
(docs/protocol.md#connection-age, docs/protocol.md#how-the-client-uses-it)."""

# docs/faults.md#test-hygiene: asserts read ``expected == actual``, so the expected constant comes
# first.

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from orchestrator.core.protocol.lifecycle import (
    DEFAULT_MAX_AGE,
    DEFAULT_ROTATION_MARGIN,
    ConnectionLifecycle,
)
from orchestrator.errors import LocalProtocolError

OPENED = 1000.0


def test_defaults_follow_the_service_limit() -> None:
    """By default the socket lives 60 minutes and rotation starts 5 minutes before."""
    lifecycle = ConnectionLifecycle(opened_at=OPENED)
    assert (3600.0, 300.0) == (DEFAULT_MAX_AGE, DEFAULT_ROTATION_MARGIN)
    assert (DEFAULT_MAX_AGE, DEFAULT_ROTATION_MARGIN) == (lifecycle.max_age, lifecycle.margin)


@pytest.mark.parametrize(
    ("age", "rotation_due", "expired"),
    [
        (0.0, False, False),
        (3299.999, False, False),
        (3300.0, True, False),  # exactly max_age - margin: rotate at this turn boundary
        (3599.999, True, False),
        (3600.0, True, True),  # exactly max_age: the server has closed it
        (7200.0, True, True),
    ],
)
def test_rotation_and_expiry_boundaries(age: float, rotation_due: bool, expired: bool) -> None:
    """Rotation is due from ``max_age - margin`` on and the socket is expired from
    ``max_age`` on, both boundaries included."""
    lifecycle = ConnectionLifecycle(opened_at=OPENED, max_age=3600.0, margin=300.0)
    assert age == lifecycle.age(OPENED + age)
    assert rotation_due == lifecycle.rotation_due(OPENED + age)
    assert expired == lifecycle.expired(OPENED + age)


def test_zero_margin_rotates_at_max_age() -> None:
    """A zero margin rotates only once the socket reaches its maximum age."""
    lifecycle = ConnectionLifecycle(opened_at=0.0, max_age=60.0, margin=0.0)
    assert not lifecycle.rotation_due(59.999)
    assert lifecycle.rotation_due(60.0)


def test_no_margin_never_rotates() -> None:
    """``margin=None`` disables planned rotation; expiry is still reported."""
    lifecycle = ConnectionLifecycle(opened_at=0.0, max_age=60.0, margin=None)
    assert not lifecycle.rotation_due(10_000.0)
    assert lifecycle.expired(60.0)


@pytest.mark.parametrize(
    ("max_age", "margin"),
    [
        (0.0, None),
        (-1.0, None),
        (math.nan, None),
        (math.nan, 0.0),
        (60.0, -1.0),
        (60.0, 60.0),
        (60.0, 61.0),
        (60.0, math.nan),
    ],
)
def test_invalid_limits_are_rejected(max_age: float, margin: float | None) -> None:
    """``max_age`` must be positive and ``margin`` in ``[0, max_age)``; NaN is neither
    (regression: a NaN ``max_age`` with no margin was accepted and never expired)."""
    with pytest.raises(ValueError, match="must be"):
        ConnectionLifecycle(opened_at=0.0, max_age=max_age, margin=margin)


@pytest.mark.parametrize(("max_age", "margin"), [(60.0, 0.0), (60.0, 59.999), (0.001, None)])
def test_valid_limits_are_accepted(max_age: float, margin: float | None) -> None:
    """The edges of the valid ranges are accepted."""
    lifecycle = ConnectionLifecycle(opened_at=0.0, max_age=max_age, margin=margin)
    assert (max_age, margin) == (lifecycle.max_age, lifecycle.margin)


@settings(max_examples=300)
@given(
    st.floats(min_value=1.0, max_value=1e6),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    st.floats(min_value=-1e6, max_value=1e7),
    st.floats(min_value=0.0, max_value=1e7),
)
def test_rotation_precedes_expiry(
    max_age: float, fraction: float, first: float, later_by: float
) -> None:
    """Rotation and expiry never switch back off as time passes, and an expired socket is
    always due for rotation, so a planned rotation never waits for the server's close."""
    lifecycle = ConnectionLifecycle(opened_at=0.0, max_age=max_age, margin=max_age * fraction)
    later = first + later_by
    assert not lifecycle.rotation_due(first) or lifecycle.rotation_due(later)
    assert not lifecycle.expired(first) or lifecycle.expired(later)
    assert not lifecycle.expired(first) or lifecycle.rotation_due(first)


def test_one_turn_in_flight() -> None:
    """A second start_turn before end_turn is a caller bug (one response per socket,
    docs/protocol.md#how-the-client-uses-it); ending a turn makes room for the next and counts
    it."""
    lifecycle = ConnectionLifecycle(opened_at=0.0)
    in_flight = [lifecycle.in_flight]
    lifecycle.start_turn()
    in_flight.append(lifecycle.in_flight)
    with pytest.raises(LocalProtocolError, match="agent-7"):
        lifecycle.start_turn("agent-7")
    in_flight.append(lifecycle.in_flight)
    lifecycle.end_turn()
    in_flight.append(lifecycle.in_flight)
    assert [False, True, True, False] == in_flight
    assert 1 == lifecycle.turns
    lifecycle.start_turn()
    lifecycle.end_turn()
    assert 2 == lifecycle.turns


def test_end_turn_without_a_turn_is_a_caller_bug() -> None:
    """end_turn with no turn in flight raises LocalProtocolError and counts nothing."""
    lifecycle = ConnectionLifecycle(opened_at=0.0)
    with pytest.raises(LocalProtocolError):
        lifecycle.end_turn()
    assert 0 == lifecycle.turns
