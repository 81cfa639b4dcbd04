"""ConnectionLifecycle: the age and turn bookkeeping of one socket, with time as a parameter.

The server closes a connection at ``max_age`` (60 minutes on the real service). The client
rotates at the first turn boundary once the socket is ``max_age - margin`` old, so a planned
rotation never cuts a turn (docs/protocol.md#connection-age, docs/recovery.md#planned-rotation).
Only the trio glue reads the clock.
"""

from __future__ import annotations

import attrs

from orchestrator.errors import ConfigurationError, LocalProtocolError

__all__ = ["DEFAULT_MAX_AGE", "DEFAULT_ROTATION_MARGIN", "ConnectionLifecycle"]

DEFAULT_MAX_AGE = 3600.0
DEFAULT_ROTATION_MARGIN = 300.0


@attrs.define
class ConnectionLifecycle:
    """Tracks one socket: when it opened, whether a turn is in flight, when to rotate.

    Args:
        opened_at: the clock reading when the socket opened.
        max_age: the server's connection limit in seconds.
        margin: rotate this many seconds before ``max_age``; ``None`` disables rotation.
    """

    opened_at: float
    max_age: float = DEFAULT_MAX_AGE
    margin: float | None = DEFAULT_ROTATION_MARGIN
    turns: int = 0
    _in_flight: bool = False

    def __attrs_post_init__(self) -> None:
        if not self.max_age > 0:  # also rejects NaN, which would never expire
            raise ConfigurationError(f"max_age must be positive, got {self.max_age}")
        if self.margin is not None and not 0 <= self.margin < self.max_age:
            raise ConfigurationError(f"margin must be in [0, max_age), got {self.margin}")

    @property
    def in_flight(self) -> bool:
        return self._in_flight

    def age(self, now: float) -> float:
        return now - self.opened_at

    def rotation_due(self, now: float) -> bool:
        """True when the next turn should go to a fresh socket (only asked between turns)."""
        if self.margin is None:
            return False
        return self.age(now) >= self.max_age - self.margin

    def expired(self, now: float) -> bool:
        """True when the server has (or will have) closed this socket for age."""
        return self.age(now) >= self.max_age

    def start_turn(self, description: str = "connection") -> None:
        """Mark a turn as started.

        Raises:
            LocalProtocolError: a turn is already in flight (one response per socket).
        """
        if self._in_flight:
            raise LocalProtocolError(f"turn already in flight on {description}")
        self._in_flight = True

    def end_turn(self) -> None:
        if not self._in_flight:
            raise LocalProtocolError("end_turn() without a turn in flight")
        self._in_flight = False
        self.turns += 1
