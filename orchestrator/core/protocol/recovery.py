"""Recovery: what a turn does when an attempt does not end in a response (sans-I/O).

A turn must end in exactly one committed response. When an attempt ends otherwise (the
connection could not be opened, it was lost, the server reported an error, the response
failed), the transport describes what happened as an *outcome* and the turn's
:class:`TurnRecovery` answers with a *decision*: :class:`Retry` (on the same connection or
a new one, continuing the chain or replaying the transcript, at once or after a wait) or
:class:`Fail` (with which error). The transport only carries the decision out.

Like h11's state machines this knows no I/O: no sockets, no clock (the caller passes the
connection's age), no logging, and randomness only through the ``random.Random`` the caller
passes, so a seeded generator gives the same delays every run.

The outcomes speak of connections and requests, not of WebSocket frames: a refused upgrade
and an HTTP request answered with 429 are both :class:`Refused`; a socket closed mid-stream
and an SSE body cut short are both :class:`Lost`; an ``error`` event and an error body
are both :class:`Rejected`. So every transport follows the same
rules (docs/protocol.md#how-the-client-uses-it, docs/recovery.md#the-matrix):

==============================================  =============================================
outcome                                         decision
==============================================  =============================================
Unreachable (refused, reset, DNS, TLS)          back off, retry
Refused 0 (no answer in time), 408, 429, 5xx    back off (``Retry-After`` when given), retry
Refused: no WebSocket mode (``fallback`` on)    go on over HTTP at once (once per turn)
Refused 401, 403, other 4xx                     fail with the refusal
Lost before the request went out, old conn.     retry at once on a new connection (stale)
Lost with 1000, first time in the turn          back off, retry on a new connection
Lost with a recoverable code (1001, 1006...)    back off, retry on a new connection
Lost with any other code (1008, 1009...)        fail with the close code
Rejected on ``type`` (``fallback`` on)          go on over HTTP at once (once per turn)
Rejected previous_response_not_found            replay at once on the same connection, once
Rejected websocket_connection_limit_reached     new connection (back off if it is fresh)
Rejected response_already_in_flight             report a bug, back off, new connection
Rejected retryable (server_error, 408/429/5xx)  back off (``Retry-After``), replay unless
                                                refused by an HTTP status (chain intact)
Rejected anything else                          fail with the server's error
Failed with a retryable code                    back off, replay
Failed with any other code                      fail with the server's error
==============================================  =============================================

An endpoint without WebSocket mode (most servers that implement the HTTP API: vLLM, Ollama,
LM Studio...) answers the upgrade with 426, 404 or 405 (or 400), or rejects the WebSocket
envelope's fields. When the policy may fall back (transport ``auto``, still on WebSocket),
such an outcome is not a failure: the decision is :class:`Retry` with ``fallback`` set, at
once and without counting an attempt, and the transport carries the turn on over HTTP.

Every back-off counts against ``max_attempts`` for the whole turn (connecting included);
when they run out the turn fails with :class:`~orchestrator.errors.TurnFailed`. The partial
output of an abandoned attempt is void: the decision says so (``abandon``) and the transport
tells its observers, so no tool ever runs from a partial stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs

from orchestrator.errors import (
    ConnectionLost,
    HandshakeRejected,
    OrchestratorError,
    ServerError,
    TurnFailed,
)

from .turn import RequestError

if TYPE_CHECKING:
    import random

    from .turn import Response

__all__ = [
    "NO_WEBSOCKET_STATUSES",
    "RETRYABLE_ERROR_CODES",
    "WEBSOCKET_ONLY_FIELDS",
    "Backoff",
    "Decision",
    "Fail",
    "Failed",
    "Lost",
    "Outcome",
    "RecoveryPolicy",
    "Refused",
    "Rejected",
    "Retry",
    "TurnRecovery",
    "Unreachable",
    "error_code",
]

# Server-reported failures worth retrying (docs/recovery.md#server-errors-and-rate-limits;
# openai-agents retries the first two).
RETRYABLE_ERROR_CODES: Final = frozenset(
    {"server_error", "server_is_overloaded", "rate_limit_exceeded", "overloaded_error"}
)
# Statuses of a refused connection worth another try: no answer in time (0), request
# timeout, rate limit, and every server-side failure.
_RETRYABLE_STATUSES: Final = frozenset({0, 408, 429})
# Answers to a WebSocket upgrade that mean "this endpoint has no WebSocket mode": upgrade
# required (Ollama), no such route / method not allowed (servers with only POST
# /v1/responses), and a bare bad request (a server whose HTTP stack refuses the GET).
NO_WEBSOCKET_STATUSES: Final = frozenset({400, 404, 405, 426})
# Fields a turn sends that exist only in WebSocket mode: the event envelope's ``type``. An
# endpoint that bridges the socket to its HTTP handler rejects it. (Warm-up's ``generate``
# is WebSocket-only too, but a failed warm-up only costs the next turn a replay.)
WEBSOCKET_ONLY_FIELDS: Final = frozenset({"type"})
# Codes that no wait can fix, whatever status came with them (the service sends
# insufficient_quota with 429).
_FINAL_ERROR_CODES: Final = frozenset({"insufficient_quota", "invalid_api_key"})
# Gateways that report an unknown previous_response_id by message only, with no code.
_NOT_FOUND_MESSAGES: Final = frozenset({"invalid previous_response_id."})


def error_code(code: str | None, message: str) -> str | None:
    """The code of a server error, also when the server sent only a known message.

    ``"Invalid previous_response_id."`` with no code (seen from endpoints that implement
    the HTTP API) means ``previous_response_not_found``.
    """
    if code is None and message.strip().lower() in _NOT_FOUND_MESSAGES:
        return "previous_response_not_found"
    return code


# -- outcomes: what happened ---------------------------------------------------------------------


@attrs.frozen
class Unreachable:
    """No connection could be opened and no server answered (refused, reset, DNS, TLS)."""

    error: ConnectionLost


@attrs.frozen
class Refused:
    """The server answered the attempt to connect with an HTTP status and no event stream.

    A refused WebSocket upgrade, or an HTTP request answered with an error status before
    any event. ``status`` 0 means no answer arrived within the connect timeout.
    ``error`` is what the caller sees if the turn fails here.
    """

    status: int
    error: HandshakeRejected
    retry_after: float | None = None
    #: the refusal's body was an error saying why; a bare one (empty, HTML) was not.
    explained: bool = True

    @classmethod
    def of(cls, error: HandshakeRejected) -> Refused:
        return cls(error.status, error, error.retry_after, error.explained)


@attrs.frozen
class Lost:
    """The connection ended while the request was going out or its events coming in.

    Args:
        error: the close code and reason (1006 when the connection simply dropped).
        request_sent: false when the connection was already gone before the request left:
            a stale connection, not a failed attempt.
        connection_age: seconds since the connection opened.
    """

    error: ConnectionLost
    request_sent: bool = True
    connection_age: float = 0.0


@attrs.frozen
class Rejected:
    """The server ended the request with an error instead of a response.

    Args:
        error: the error as the turn assembler read it (an ``error`` event, or an error
            body over HTTP).
        replayed: the request carried the whole transcript as a new chain (it did not
            continue a ``previous_response_id``).
        connection_age: seconds since the connection opened.
        refused: an HTTP error status answered the request before any event: nothing was
            processed, so a stored chain it continued is intact (no replay needed).
    """

    error: RequestError
    replayed: bool = False
    connection_age: float = 0.0
    refused: bool = False


@attrs.frozen
class Failed:
    """The response ended with status ``failed``."""

    code: str | None
    message: str

    @classmethod
    def of(cls, response: Response) -> Failed:
        error = response.error
        if error is None:
            return cls(None, "response failed")
        return cls(error.code, error.message)


Outcome = Unreachable | Refused | Lost | Rejected | Failed


# -- decisions: what to do -----------------------------------------------------------------------


@attrs.frozen
class Backoff:
    """Wait ``delay`` seconds before the next attempt.

    ``attempt`` counts the turn's back-offs so far (1 for the first); ``reason`` and
    ``code`` (a close code) say why, for logs and events.
    """

    attempt: int
    delay: float
    reason: str
    code: int | None = None


@attrs.frozen(kw_only=True)
class Decision:
    """What every decision may ask for before retrying or failing, in this order.

    Attributes:
        drop: close the connection (this is why): it is broken, expired or untrustworthy.
            A retry then opens a new one.
        anomaly: the server and we disagree about the protocol's state, which this client
            never causes: worth an error-level report (docs/recovery.md#response-already-in-flight).
        abandon: the attempt's partial output, if any, is void (this is why); observers
            must discard it. ``None`` when no attempt was made.
        server_retry: the server reported a retryable error (counted in statistics).
    """

    drop: str | None = None
    anomaly: str | None = None
    abandon: str | None = None
    server_retry: bool = False


@attrs.frozen(kw_only=True)
class Retry(Decision):
    """Try again: after ``wait`` if set, replaying the whole transcript if ``replay``.

    The retry runs on the same connection unless ``drop`` closed it. ``fallback`` (why) says
    the endpoint has no WebSocket mode: the turn and every later one go over HTTP.
    """

    wait: Backoff | None = None
    replay: bool = False
    fallback: str | None = None


@attrs.frozen(kw_only=True)
class Fail(Decision):
    """Give the turn up: raise ``error`` from ``cause``.

    ``gave_up`` is the number of attempts made when the bounded retries ran out (``reason``
    is the last failure), ``None`` when retrying could not help at all.
    """

    error: OrchestratorError
    cause: BaseException | None = None
    gave_up: int | None = None
    reason: str = ""


# -- the policy ----------------------------------------------------------------------------------


@attrs.frozen
class RecoveryPolicy:
    """The settings of recovery, shared by every turn of a connection.

    Args:
        max_attempts: back-offs allowed per turn (connecting and retrying together); the
            one that reaches it fails the turn instead.
        backoff_initial: the first back-off is drawn from ``[0, backoff_initial]``.
        backoff_max: later back-offs double up to this cap, jittered to ``[cap/2, cap]``.
        fresh_age: a connection younger than this that reports expiry did not expire:
            back off instead of reconnecting at once; a connection older than this found
            closed before the request left was merely stale.
        fallback: the transport may switch to HTTP when the endpoint shows it has no
            WebSocket mode (transport ``auto`` while still on WebSocket).
    """

    max_attempts: int = 6
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    fresh_age: float = 5.0
    fallback: bool = False

    def start(self, name: str = "turn") -> TurnRecovery:
        """The recovery state of one turn; ``name`` (the agent) prefixes its errors."""
        return TurnRecovery(self, name)

    def backoff_delay(self, attempt: int, rng: random.Random) -> float:
        """Jittered exponential backoff; the first retry is spread over ``[0, initial]``."""
        initial = self.backoff_initial
        if attempt <= 1:
            return rng.uniform(0.0, initial)
        ceiling: float = min(self.backoff_max, initial * 2 ** (attempt - 1))
        return ceiling * rng.uniform(0.5, 1.0)


@attrs.define(eq=False)
class TurnRecovery:
    """What one turn has been through, and the decisions that follow from it.

    Call :meth:`begin` before each attempt and :meth:`decide` with each outcome that is not
    a response. Decisions are final: a :class:`Fail` ends the turn.
    """

    policy: RecoveryPolicy
    name: str = "turn"
    #: attempts begun (requests about to be sent), for events.
    attempts: int = 0
    #: back-offs taken (failures counted against ``max_attempts``).
    failures: int = 0
    _replayed_for_not_found: bool = False
    _clean_close_retried: bool = False
    _fell_back: bool = False

    def begin(self) -> int:
        """Count a new attempt; returns its number (1 for the first)."""
        self.attempts += 1
        return self.attempts

    def decide(self, outcome: Outcome, rng: random.Random) -> Retry | Fail:
        """What to do after ``outcome``; ``rng`` draws the back-off jitter."""
        fallback = self._fallback(outcome)
        if fallback is not None:
            return fallback
        if isinstance(outcome, Lost):
            return self._lost(outcome, rng)
        if isinstance(outcome, Rejected):
            return self._rejected(outcome, rng)
        if isinstance(outcome, Failed):
            return self._failed(outcome, rng)
        if isinstance(outcome, Refused):
            if outcome.status in _RETRYABLE_STATUSES or outcome.status >= 500:
                reason = f"handshake: {outcome.error}"
                return self._back_off(
                    rng, reason, retry_after=outcome.retry_after, cause=outcome.error
                )
            return Fail(error=outcome.error)
        error = outcome.error
        return self._back_off(rng, str(error), code=error.code, cause=error)

    # -- per outcome ------------------------------------------------------------------------------

    def _fallback(self, outcome: Outcome) -> Retry | None:
        """Switch to HTTP, once per turn, when the outcome says WebSocket mode is missing."""
        if not self.policy.fallback or self._fell_back:
            return None
        if isinstance(outcome, Refused) and _no_websocket(outcome):
            reason = f"the WebSocket upgrade was answered with HTTP {outcome.status}"
            self._fell_back = True
            return Retry(fallback=reason)
        if isinstance(outcome, Rejected) and outcome.error.param in WEBSOCKET_ONLY_FIELDS:
            reason = f"the endpoint rejected the WebSocket-only field {outcome.error.param!r}"
            self._fell_back = True
            return Retry(fallback=reason, drop="no WebSocket mode", abandon=reason)
        return None

    def _lost(self, outcome: Lost, rng: random.Random) -> Retry | Fail:
        error = outcome.error
        drop = error.reason or f"close code {error.code}"
        if not outcome.request_sent and outcome.connection_age >= self.policy.fresh_age:
            return Retry(drop=drop)  # an old connection was already gone: just take a new one
        reason = str(error)
        if error.code == 1000 and not self._clean_close_retried:
            # A clean close before the terminal event: one retry, then it counts as final.
            self._clean_close_retried = True
        elif not error.retryable:
            return Fail(error=error, drop=drop, abandon=reason)
        return self._back_off(rng, reason, code=error.code, cause=error, drop=drop, abandon=reason)

    def _rejected(self, outcome: Rejected, rng: random.Random) -> Retry | Fail:
        error = outcome.error
        code = error_code(error.code, error.message)
        if code == "previous_response_not_found":
            abandon = "previous_response_not_found"
            if outcome.replayed or self._replayed_for_not_found:
                # The fresh chain was not found either: replaying again would loop
                # (docs/recovery.md#lost-cache).
                return Fail(error=_server_error(error, code), abandon=abandon)
            self._replayed_for_not_found = True
            return Retry(abandon=abandon, replay=True)
        if code == "websocket_connection_limit_reached":
            drop = "expired (websocket_connection_limit_reached)"
            abandon = "connection limit reached"
            if outcome.connection_age < self.policy.fresh_age:
                # A connection that expires as soon as it opens did not expire: back off
                # instead of reconnecting in a hot loop (docs/recovery.md#expired-connections).
                reason = "expiry reported by a fresh socket"
                return self._back_off(rng, reason, drop=drop, abandon=abandon)
            return Retry(drop=drop, abandon=abandon)
        if code == "response_already_in_flight":
            # Impossible from this client (docs/recovery.md#response-already-in-flight): the server
            # and we disagree about the connection's state, so stop trusting it.
            reason = "response_already_in_flight"
            return self._back_off(
                rng,
                reason,
                drop=reason,
                anomaly="server reports a response already in flight",
                abandon=reason,
            )
        if _retryable(code, error.status):
            reason = f"server error {code or error.status}"
            # A failed continuation evicted its parent (docs/protocol.md#eviction): replay,
            # unless the request was refused before anything ran (the chain is intact).
            return self._back_off(
                rng,
                reason,
                retry_after=error.retry_after,
                cause=_server_error(error, code),
                abandon=reason,
                server_retry=True,
                replay=not outcome.refused,
            )
        return Fail(error=_server_error(error, code))

    def _failed(self, outcome: Failed, rng: random.Random) -> Retry | Fail:
        code = outcome.code
        if _retryable(code, None):
            reason = f"response failed: {code}"
            return self._back_off(rng, reason, abandon=reason, server_retry=True, replay=True)
        return Fail(error=ServerError(code, outcome.message, status=None))

    # -- backing off ------------------------------------------------------------------------------

    def _back_off(
        self,
        rng: random.Random,
        reason: str,
        *,
        code: int | None = None,
        retry_after: float | None = None,
        cause: BaseException | None = None,
        drop: str | None = None,
        anomaly: str | None = None,
        abandon: str | None = None,
        server_retry: bool = False,
        replay: bool = False,
    ) -> Retry | Fail:
        self.failures += 1
        attempt = self.failures
        if attempt >= self.policy.max_attempts:
            return Fail(
                error=TurnFailed(f"{self.name}: gave up after {attempt} attempts: {reason}"),
                cause=cause,
                gave_up=attempt,
                reason=reason,
                drop=drop,
                anomaly=anomaly,
                abandon=abandon,
                server_retry=server_retry,
            )
        delay = retry_after if retry_after is not None else self.policy.backoff_delay(attempt, rng)
        return Retry(
            wait=Backoff(attempt, delay, reason, code),
            replay=replay,
            drop=drop,
            anomaly=anomaly,
            abandon=abandon,
            server_retry=server_retry,
        )


def _no_websocket(outcome: Refused) -> bool:
    """A refused upgrade that means "no WebSocket mode here": 400, 404, 405, 426, or any
    other 4xx but a timeout or rate limit that does not say why (Starlette answers an
    upgrade it has no route for with a bare 403, through uvicorn). A bad key then fails
    over HTTP, with the endpoint's own explanation."""
    status = outcome.status
    if status in NO_WEBSOCKET_STATUSES:
        return True
    return 400 <= status < 500 and status not in _RETRYABLE_STATUSES and not outcome.explained


def _retryable(code: str | None, status: int | None) -> bool:
    """A retryable code, or a status that says "later" (408, 429, 5xx) whatever the code a
    gateway put with it, unless the code says retrying cannot help (no quota left)."""
    if code in RETRYABLE_ERROR_CODES:
        return True
    if status is None or code in _FINAL_ERROR_CODES:
        return False
    return status >= 500 or status in (408, 429)


def _server_error(error: RequestError, code: str | None) -> ServerError:
    return ServerError(
        code,
        error.message,
        status=error.status,
        param=error.param,
        error_type=error.error_type,
        retry_after=error.retry_after,
    )
