"""TurnRecovery: what a turn does after each kind of failed attempt, without sockets.

The table names every row of the recovery matrix (docs/recovery.md#the-matrix) with
the decision expected on a fresh turn; the sequence tests and properties check what only
shows over several attempts: the shared attempt budget, one replay per cache loss, one retry
for a clean close, jitter bounds and determinism under a seeded generator, and that no retry
ever keeps the output of an abandoned attempt. The wire tests feed the error shapes seen from
HTTP gateways (issue 15) through the codec and the turn assembler into the policy.
"""

# Asserts read ``expected == actual``, the expected constant first (docs/faults.md#test-hygiene).

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from orchestrator.core.protocol.codec import decode_server_event
from orchestrator.core.protocol.events import ResponseError
from orchestrator.core.protocol.recovery import (
    Backoff,
    Fail,
    Failed,
    Lost,
    Outcome,
    RecoveryPolicy,
    Refused,
    Rejected,
    Retry,
    TurnRecovery,
    Unreachable,
    error_code,
)
from orchestrator.core.protocol.turn import RequestError, Response, TurnAssembler
from orchestrator.errors import (
    AuthenticationError,
    ConnectionLost,
    HandshakeRejected,
    ServerError,
    TurnFailed,
)

POLICY = RecoveryPolicy(max_attempts=6, backoff_initial=0.5, backoff_max=8.0, fresh_age=5.0)


class Midpoint(random.Random):
    """Every draw is 0.5: ``uniform(a, b)`` is the middle of the range."""

    def random(self) -> float:
        return 0.5


def _lost(code: int, reason: str | None = "gone", **fields: Any) -> Lost:
    return Lost(ConnectionLost(code, reason), **fields)


def _rejected(
    code: str | None, status: int | None = 400, message: str = "m", **fields: Any
) -> Rejected:
    headers = fields.pop("headers", {})
    return Rejected(RequestError(code, message, status=status, headers=headers), **fields)


def _refused(status: int, retry_after: float | None = None) -> Refused:
    error_class = AuthenticationError if status in (401, 403) else HandshakeRejected
    return Refused.of(error_class(status, f"refused with {status}", retry_after=retry_after))


def _decide(outcome: Outcome, recovery: TurnRecovery | None = None) -> Retry | Fail:
    recovery = recovery if recovery is not None else POLICY.start("agent-1")
    return recovery.decide(outcome, Midpoint())


def _shape(decision: Retry | Fail) -> dict[str, Any]:
    """A decision as plain data (errors by type and message) for comparisons."""
    shape: dict[str, Any] = {
        "drop": decision.drop,
        "anomaly": decision.anomaly,
        "abandon": decision.abandon,
        "server_retry": decision.server_retry,
    }
    if isinstance(decision, Retry):
        shape.update(retry=True, wait=decision.wait, replay=decision.replay)
    else:
        cause = decision.cause
        shape.update(
            retry=False,
            error=(type(decision.error).__name__, str(decision.error)),
            cause=None if cause is None else (type(cause).__name__, str(cause)),
            gave_up=decision.gave_up,
        )
    return shape


# -- the matrix, row by row --------------------------------------------------------------------

FIRST = 0.25  # the first back-off under Midpoint: the middle of [0, backoff_initial]

LOST_1006 = "connection lost with close code 1006: gone"
RETRY_ROWS: list[tuple[str, Outcome, Retry]] = [
    (
        "unreachable: back off and retry",
        Unreachable(ConnectionLost(1006, "cannot connect")),
        Retry(wait=Backoff(1, FIRST, "connection lost with close code 1006: cannot connect", 1006)),
    ),
    (
        "handshake 503: back off and retry",
        _refused(503),
        Retry(wait=Backoff(1, FIRST, "handshake: refused with 503")),
    ),
    (
        "handshake without an answer in time (status 0): retry",
        _refused(0),
        Retry(wait=Backoff(1, FIRST, "handshake: refused with 0")),
    ),
    (
        "handshake 408: retry",
        _refused(408),
        Retry(wait=Backoff(1, FIRST, "handshake: refused with 408")),
    ),
    (
        "handshake 429 with Retry-After: wait exactly that long",
        _refused(429, retry_after=7.0),
        Retry(wait=Backoff(1, 7.0, "handshake: refused with 429")),
    ),
    (
        "lost-sockets: lost mid-stream (1006): drop, abandon, back off",
        _lost(1006),
        Retry(drop="gone", abandon=LOST_1006, wait=Backoff(1, FIRST, LOST_1006, 1006)),
    ),
    (
        "lost-sockets: lost without a reason: the drop names the code",
        _lost(1006, None),
        Retry(
            drop="close code 1006",
            abandon="connection lost with close code 1006",
            wait=Backoff(1, FIRST, "connection lost with close code 1006", 1006),
        ),
    ),
    (
        "stale: an old connection gone before the request left is replaced at once",
        _lost(1006, request_sent=False, connection_age=60.0),
        Retry(drop="gone"),
    ),
    (
        "a fresh connection gone before the request left is a failure like any other",
        _lost(1006, request_sent=False, connection_age=1.0),
        Retry(drop="gone", abandon=LOST_1006, wait=Backoff(1, FIRST, LOST_1006, 1006)),
    ),
    (
        "final-close-codes: a clean close (1000) before the terminal event is retried once",
        _lost(1000),
        Retry(
            drop="gone",
            abandon="connection lost with close code 1000: gone",
            wait=Backoff(1, FIRST, "connection lost with close code 1000: gone", 1000),
        ),
    ),
    (
        "lost-cache: previous_response_not_found replays at once on the same connection",
        _rejected("previous_response_not_found"),
        Retry(abandon="previous_response_not_found", replay=True),
    ),
    (
        "issue 15: 'Invalid previous_response_id.' with no code is a cache loss",
        _rejected(None, message="Invalid previous_response_id."),
        Retry(abandon="previous_response_not_found", replay=True),
    ),
    (
        "expired-connections: connection limit on an old connection: new connection at once",
        _rejected("websocket_connection_limit_reached", connection_age=60.0),
        Retry(
            drop="expired (websocket_connection_limit_reached)",
            abandon="connection limit reached",
        ),
    ),
    (
        "expired-connections: connection limit on a fresh connection: back off first",
        _rejected("websocket_connection_limit_reached", connection_age=1.0),
        Retry(
            drop="expired (websocket_connection_limit_reached)",
            abandon="connection limit reached",
            wait=Backoff(1, FIRST, "expiry reported by a fresh socket"),
        ),
    ),
    (
        "response-already-in-flight: response_already_in_flight: report, drop, back off",
        _rejected("response_already_in_flight", status=409),
        Retry(
            drop="response_already_in_flight",
            anomaly="server reports a response already in flight",
            abandon="response_already_in_flight",
            wait=Backoff(1, FIRST, "response_already_in_flight"),
        ),
    ),
    (
        "server-errors: server_error: back off, replay",
        _rejected("server_error", status=500),
        Retry(
            abandon="server error server_error",
            server_retry=True,
            replay=True,
            wait=Backoff(1, FIRST, "server error server_error"),
        ),
    ),
    (
        "server-errors: rate limit with retry-after: wait exactly that long",
        _rejected("rate_limit_exceeded", status=429, headers={"retry-after": "12.5"}),
        Retry(
            abandon="server error rate_limit_exceeded",
            server_retry=True,
            replay=True,
            wait=Backoff(1, 12.5, "server error rate_limit_exceeded"),
        ),
    ),
    (
        "an error with no code and status 503 is retried",
        _rejected(None, status=503),
        Retry(
            abandon="server error 503",
            server_retry=True,
            replay=True,
            wait=Backoff(1, FIRST, "server error 503"),
        ),
    ),
    (
        "response.failed with server_error: back off, replay",
        Failed("server_error", "boom"),
        Retry(
            abandon="response failed: server_error",
            server_retry=True,
            replay=True,
            wait=Backoff(1, FIRST, "response failed: server_error"),
        ),
    ),
]


@pytest.mark.parametrize(("outcome", "expected"), [row[1:] for row in RETRY_ROWS],
                         ids=[row[0] for row in RETRY_ROWS])  # fmt: skip
def test_matrix_rows_that_retry(outcome, expected):
    """Each retryable outcome, on a fresh turn, gets exactly its documented decision."""
    assert expected == _decide(outcome)


@pytest.mark.parametrize("code", [1001, 1005, 1011, 1012, 1013, 1015])
def test_recoverable_close_codes_reconnect(code):
    """lost-sockets: the recoverable close codes drop the connection, abandon and back off."""
    decision = _decide(_lost(code))
    assert isinstance(decision, Retry)
    assert decision.wait is not None
    assert (code, "gone") == (decision.wait.code, decision.drop)
    assert decision.abandon is not None
    assert not decision.replay  # a new connection holds no chain: the session replays anyway


@pytest.mark.parametrize("code", [1002, 1003, 1007, 1008, 1009, 4000])
def test_final_close_codes_fail_naming_the_code(code):
    """final-close-codes: any other close code fails the turn with that ConnectionLost, no retry."""
    outcome = _lost(code, "why")
    decision = _decide(outcome)
    assert isinstance(decision, Fail)
    assert outcome.error is decision.error
    assert decision.cause is None
    assert "why" == decision.drop
    assert f"connection lost with close code {code}: why" == decision.abandon
    assert decision.gave_up is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 426])
def test_final_refusals_fail_with_the_refusal(status):
    """401/403 (and any 4xx but 408 and 429) fail at once with the refusal itself
    (docs/recovery.md#handshake-failures)."""
    outcome = _refused(status)
    decision = _decide(outcome)
    assert isinstance(decision, Fail)
    assert outcome.error is decision.error
    assert (None, None) == (decision.abandon, decision.drop)


@pytest.mark.parametrize(
    ("outcome", "code", "status"),
    [
        (_rejected("context_length_exceeded", status=400), "context_length_exceeded", 400),
        (_rejected(None, status=400), None, 400),
        (_rejected("invalid_value", status=None), "invalid_value", None),
    ],
)
def test_final_request_errors_fail_with_the_servers_error(outcome, code, status):
    """An error the server reports that retrying cannot fix fails as ServerError, the
    connection kept (it is healthy) and nothing to abandon."""
    decision = _decide(outcome)
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, ServerError)
    assert (code, status) == (decision.error.code, decision.error.status)
    assert (None, None) == (decision.drop, decision.abandon)


def test_request_error_keeps_param_type_and_retry_after():
    """The failing ServerError carries what the server said: param, type, retry-after."""
    error = RequestError(
        "invalid_value",
        "bad",
        status=400,
        param="input",
        error_type="invalid_request_error",
        headers={"retry-after": "3"},
    )
    decision = _decide(Rejected(error))
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, ServerError)
    assert ("input", "invalid_request_error", 3.0) == (
        decision.error.param,
        decision.error.error_type,
        decision.error.retry_after,
    )


def test_failed_response_with_a_final_code_fails_with_its_message():
    """response.failed with a code retrying cannot fix raises ServerError(code, message)."""
    decision = _decide(Failed("invalid_prompt", "no"))
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, ServerError)
    assert ("invalid_prompt", "no", None) == (
        decision.error.code,
        decision.error.message,
        decision.error.status,
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ResponseError(code="server_error", message="boom"), Failed("server_error", "boom")),
        (None, Failed(None, "response failed")),
    ],
)
def test_failed_outcome_reads_the_responses_error(error, expected):
    """Failed.of takes the code and message of response.error, or says "response failed"."""
    response = Response(id="resp_1", status="failed", model="m", output=(), error=error)
    assert expected == Failed.of(response)


# -- over several attempts ---------------------------------------------------------------------


def test_replayed_request_not_found_fails_without_looping():
    """lost-cache: previous_response_not_found on a request that was already a replay fails."""
    decision = _decide(_rejected("previous_response_not_found", replayed=True))
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, ServerError)
    assert "previous_response_not_found" == decision.error.code
    assert "previous_response_not_found" == decision.abandon


def test_second_not_found_in_a_turn_fails_even_on_a_continuation():
    """lost-cache: one replay per turn; a second cache loss fails the turn (no loop)."""
    recovery = POLICY.start()
    assert isinstance(_decide(_rejected("previous_response_not_found"), recovery), Retry)
    decision = _decide(_rejected("previous_response_not_found"), recovery)
    assert isinstance(decision, Fail)
    assert 0 == recovery.failures  # no back-off was spent on either


def test_message_only_not_found_fails_with_the_normalised_code():
    """Issue 15: the code-less 'Invalid previous_response_id.' fails, the second time, as
    previous_response_not_found, so callers can tell it from other errors."""
    recovery = POLICY.start()
    outcome = _rejected(None, message="Invalid previous_response_id.")
    _decide(outcome, recovery)
    decision = _decide(outcome, recovery)
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, ServerError)
    assert "previous_response_not_found" == decision.error.code


def test_second_clean_close_in_a_turn_fails():
    """One retry for a 1000 close before the terminal event, the second is final
    (docs/recovery.md#final-close-codes)."""
    recovery = POLICY.start()
    assert isinstance(_decide(_lost(1000), recovery), Retry)
    decision = _decide(_lost(1000), recovery)
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, ConnectionLost)
    assert 1000 == decision.error.code


def test_budget_is_shared_by_connecting_and_retrying():
    """Back-offs of the handshake and of the turn count against one max_attempts; the one
    that reaches it fails with TurnFailed naming the agent, chained to the last error."""
    recovery = RecoveryPolicy(max_attempts=3).start("agent-7")
    assert isinstance(_decide(_refused(503), recovery), Retry)
    assert isinstance(_decide(_lost(1006), recovery), Retry)
    last = _rejected("server_error", status=500)
    decision = _decide(last, recovery)
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, TurnFailed)
    assert "agent-7: gave up after 3 attempts: server error server_error" == str(decision.error)
    assert isinstance(decision.cause, ServerError)
    assert (3, "server error server_error") == (decision.gave_up, decision.reason)
    # What the attempt itself asked for still holds: its output is void, it was a retry.
    assert ("server error server_error", True) == (decision.abandon, decision.server_retry)


def test_retries_at_once_spend_no_budget():
    """A stale connection and a cache loss retry without a back-off: the budget is intact."""
    recovery = RecoveryPolicy(max_attempts=1).start()
    assert Retry(drop="gone") == _decide(
        _lost(1006, request_sent=False, connection_age=60), recovery
    )
    assert isinstance(_decide(_rejected("previous_response_not_found"), recovery), Retry)
    assert 0 == recovery.failures


def test_attempts_are_numbered_from_one():
    """begin() numbers the attempts of a turn."""
    recovery = POLICY.start()
    assert [1, 2, 3] == [recovery.begin() for _ in range(3)]
    assert 3 == recovery.attempts


def test_backoff_doubles_to_the_cap():
    """Under mid-range draws the waits are 0.25, 0.75, 1.5, 3, 6, 6 (cap 8: [4, 8])."""
    recovery = RecoveryPolicy(max_attempts=10, backoff_initial=0.5, backoff_max=8.0).start()
    delays = []
    for _ in range(6):
        decision = _decide(_lost(1006), recovery)
        assert isinstance(decision, Retry)
        assert decision.wait is not None
        delays.append(decision.wait.delay)
    assert [0.25, 0.75, 1.5, 3.0, 6.0, 6.0] == delays


# -- properties ----------------------------------------------------------------------------------

close_codes = st.sampled_from([1000, 1001, 1002, 1006, 1008, 1009, 1011, 1012, 1013, 4000])
error_codes = st.sampled_from(
    [
        None,
        "previous_response_not_found",
        "websocket_connection_limit_reached",
        "response_already_in_flight",
        "server_error",
        "rate_limit_exceeded",
        "context_length_exceeded",
        "invalid_value",
    ]
)
ages = st.floats(min_value=0.0, max_value=4000.0)
retry_after = st.none() | st.floats(min_value=0.0, max_value=120.0)


@st.composite
def _rejections(draw: st.DrawFn) -> Rejected:
    wait = draw(retry_after)
    headers = {} if wait is None else {"retry-after": repr(wait)}
    message = draw(st.sampled_from(["m", "Invalid previous_response_id."]))
    status = draw(st.sampled_from([None, 400, 409, 429, 500, 503]))
    error = RequestError(draw(error_codes), message, status=status, headers=headers)
    return Rejected(error, replayed=draw(st.booleans()), connection_age=draw(ages))


outcomes: st.SearchStrategy[Outcome] = st.one_of(
    st.builds(
        lambda code: Unreachable(ConnectionLost(code, "cannot connect")),
        st.sampled_from([1006]),
    ),
    st.builds(_refused, st.sampled_from([0, 401, 403, 404, 408, 429, 500, 503]), retry_after),
    st.builds(
        lambda code, sent, age: _lost(code, request_sent=sent, connection_age=age),
        close_codes,
        st.booleans(),
        ages,
    ),
    _rejections(),
    st.builds(Failed, error_codes, st.just("m")),
)


def _run(policy: RecoveryPolicy, sequence: list[Outcome], seed: int) -> list[Retry | Fail]:
    """Decide every outcome in turn, up to and including the first Fail."""
    recovery = policy.start("agent")
    rng = random.Random(seed)
    decisions: list[Retry | Fail] = []
    for outcome in sequence:
        decisions.append(recovery.decide(outcome, rng))
        if isinstance(decisions[-1], Fail):
            break
    return decisions


@settings(max_examples=300)
@given(
    st.lists(outcomes, max_size=12),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=0, max_value=2**32),
)
def test_no_turn_backs_off_more_than_its_budget(sequence, max_attempts, seed):
    """However attempts fail, a turn waits at most max_attempts - 1 times; the back-off that
    reaches the budget is a Fail(TurnFailed) that says how many attempts were made."""
    policy = RecoveryPolicy(max_attempts=max_attempts)
    decisions = _run(policy, sequence, seed)
    waits = [d for d in decisions if isinstance(d, Retry) and d.wait is not None]
    assert len(waits) <= max_attempts - 1
    assert [w.wait.attempt for w in waits if w.wait] == list(range(1, len(waits) + 1))
    for decision in decisions:
        if isinstance(decision, Fail) and decision.gave_up is not None:
            assert max_attempts == decision.gave_up
            assert isinstance(decision.error, TurnFailed)


@settings(max_examples=300)
@given(st.lists(outcomes, max_size=12), st.integers(min_value=0, max_value=2**32))
def test_jitter_stays_in_its_window(sequence, seed):
    """Without Retry-After the n-th wait lies in [0, initial] (n = 1) or in [c/2, c] with
    c = min(cap, initial * 2**(n-1)); with it, the wait is exactly Retry-After."""
    policy = RecoveryPolicy(max_attempts=10, backoff_initial=0.5, backoff_max=8.0)
    for outcome, decision in zip(sequence, _run(policy, sequence, seed), strict=False):
        if not isinstance(decision, Retry) or decision.wait is None:
            continue
        wait = decision.wait
        given_after = _retry_after(outcome)
        if given_after is not None:
            assert given_after == wait.delay
        elif wait.attempt == 1:
            assert 0.0 <= wait.delay <= 0.5
        else:
            ceiling = min(8.0, 0.5 * 2 ** (wait.attempt - 1))
            assert ceiling / 2 <= wait.delay <= ceiling


def _retry_after(outcome: Outcome) -> float | None:
    if isinstance(outcome, Refused):
        return outcome.retry_after
    if isinstance(outcome, Rejected) and error_code(
        outcome.error.code, outcome.error.message
    ) not in ("websocket_connection_limit_reached", "response_already_in_flight"):
        return outcome.error.retry_after
    return None


@settings(max_examples=200)
@given(st.lists(outcomes, max_size=12), st.integers(min_value=0, max_value=2**32))
def test_same_seed_same_decisions(sequence, seed):
    """The policy is deterministic: the same outcomes and seed give the same decisions."""
    first = [_shape(d) for d in _run(POLICY, sequence, seed)]
    assert first == [_shape(d) for d in _run(POLICY, sequence, seed)]


@settings(max_examples=300)
@given(st.lists(outcomes, max_size=12), st.integers(min_value=0, max_value=2**32))
def test_no_retry_keeps_partial_output(sequence, seed):
    """Never run a tool from a partial stream: every retry after a request went out voids
    the attempt (abandon); connecting failures abandon nothing and never replay; only the
    server's own errors replay, and only a broken or expired connection is dropped."""
    for outcome, decision in zip(sequence, _run(POLICY, sequence, seed), strict=False):
        sent = isinstance(outcome, Rejected | Failed) or (
            isinstance(outcome, Lost) and outcome.request_sent
        )
        if isinstance(decision, Retry) and sent:
            assert decision.abandon is not None
        if isinstance(outcome, Refused | Unreachable):
            assert (None, None) == (decision.abandon, decision.drop)
            assert not (isinstance(decision, Retry) and decision.replay)
        if isinstance(decision, Retry) and decision.replay:
            assert isinstance(outcome, Rejected | Failed)
        if isinstance(outcome, Lost):
            assert decision.drop is not None


@settings(max_examples=200)
@given(st.lists(outcomes, max_size=12), st.integers(min_value=0, max_value=2**32))
def test_at_most_one_replay_for_a_lost_chain(sequence, seed):
    """lost-cache: at most one replay per turn answers previous_response_not_found."""
    decisions = _run(POLICY, sequence, seed)
    not_found_retries = [
        decision
        for outcome, decision in zip(sequence, decisions, strict=False)
        if isinstance(outcome, Rejected)
        and error_code(outcome.error.code, outcome.error.message) == "previous_response_not_found"
        and isinstance(decision, Retry)
    ]
    assert len(not_found_retries) <= 1


# -- error shapes from the wire (issue 15 item 3) ----------------------------------------------


def _wire_outcome(frame: str) -> Rejected:
    """An error frame through the codec and the turn assembler, as a transport reads it."""
    result = TurnAssembler().receive(decode_server_event(frame))
    assert isinstance(result, RequestError)
    return Rejected(result)


@pytest.mark.parametrize(
    ("frame", "expected_replay"),
    [
        ('{"type":"error","error":"Invalid previous_response_id."}', True),
        ('{"type":"error","message":"Invalid previous_response_id.","code":null}', True),
        ('{"type":"error","code":"previous_response_not_found","message":"gone"}', True),
        ('{"type":"error","error":{"message":"Invalid previous_response_id."}}', True),
        ('{"type":"error","error":"Invalid previous_response_id. Try again"}', False),
    ],
)
def test_cache_loss_shapes_replay(frame, expected_replay):
    """A string ``error``, fields at the top level, and the code-less message all read as
    previous_response_not_found; other messages do not."""
    decision = _decide(_wire_outcome(frame))
    assert expected_replay == (isinstance(decision, Retry) and decision.replay)


def test_string_error_keeps_its_message():
    """An ``error`` that is only a string becomes the error's message."""
    outcome = _wire_outcome('{"type":"error","error":"Upstream timed out","status":504}')
    assert ("Upstream timed out", None, 504) == (
        outcome.error.message,
        outcome.error.code,
        outcome.error.status,
    )
    decision = _decide(outcome)
    assert isinstance(decision, Retry)  # no code, status 5xx: retried
    assert decision.replay


def test_top_level_error_fields_are_read():
    """Error fields at the top level of the event (no nested ``error``) are read: code,
    message and param, with status_code and headers (Retry-After) beside them."""
    outcome = _wire_outcome(
        '{"type":"error","code":"rate_limit_exceeded","message":"slow down","param":null,'
        '"status_code":429,"headers":{"Retry-After":"4"}}'
    )
    assert ("rate_limit_exceeded", "slow down", 429, 4.0) == (
        outcome.error.code,
        outcome.error.message,
        outcome.error.status,
        outcome.error.retry_after,
    )
    decision = _decide(outcome)
    assert isinstance(decision, Retry)
    assert decision.wait is not None
    assert 4.0 == decision.wait.delay


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (None, "Invalid previous_response_id.", "previous_response_not_found"),
        (None, "  invalid previous_response_id.\n", "previous_response_not_found"),
        ("invalid_value", "Invalid previous_response_id.", "invalid_value"),
        (None, "Invalid model.", None),
    ],
)
def test_error_code_reads_the_known_message_only_without_a_code(code, message, expected):
    """error_code: a code the server sent wins; the known message stands in only for none."""
    assert expected == error_code(code, message)
