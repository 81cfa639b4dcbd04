"""Falling back to HTTP: which outcomes mean "this endpoint has no WebSocket mode" (issue 15).

With transport ``auto`` the policy may fall back: a refused upgrade with 400, 404, 405 or 426,
or an error naming a WebSocket-only field, becomes a retry over HTTP, at once, once per turn,
without spending the turn's attempt budget. Without ``fallback`` the same outcomes fail as
before (transport ``websocket`` forced), and over HTTP nothing falls back again.
"""

# Asserts read ``expected == actual``, the expected constant first (docs/faults.md#test-hygiene).

from __future__ import annotations

import random

import pytest

from orchestrator.core.http_transport import encode_body, http_url, request_error
from orchestrator.core.protocol.events import MessageItem, ResponseCreate
from orchestrator.core.protocol.recovery import (
    Fail,
    RecoveryPolicy,
    Refused,
    Rejected,
    Retry,
)
from orchestrator.core.protocol.turn import RequestError
from orchestrator.errors import HandshakeRejected

AUTO = RecoveryPolicy(max_attempts=3, fallback=True)
FORCED = RecoveryPolicy(max_attempts=3, fallback=False)


def _refused(status: int) -> Refused:
    return Refused.of(HandshakeRejected(status, f"refused with {status}"))


def _rejected(param: str | None, code: str | None = "unknown_parameter") -> Rejected:
    return Rejected(RequestError(code, f"Unknown parameter: '{param}'.", status=400, param=param))


@pytest.mark.parametrize("status", [400, 404, 405, 426])
def test_a_refused_upgrade_that_means_no_websocket_falls_back_at_once(status):
    """426 (Ollama), 404/405 (an HTTP-only route) and 400: go on over HTTP, no wait, no
    attempt spent, nothing to abandon (no request went out)."""
    recovery = AUTO.start("agent")
    decision = recovery.decide(_refused(status), random.Random(0))
    assert isinstance(decision, Retry)
    assert (f"the WebSocket upgrade was answered with HTTP {status}", None, 0, None) == (
        decision.fallback,
        decision.wait,
        recovery.failures,
        decision.abandon,
    )


@pytest.mark.parametrize("param", ["type"])
def test_an_error_naming_a_websocket_only_field_falls_back_dropping_the_socket(param):
    """An endpoint that bridged the socket to its HTTP handler rejects the envelope's fields:
    the socket is dropped, the attempt's output abandoned, the turn goes on over HTTP."""
    decision = AUTO.start().decide(_rejected(param), random.Random(0))
    assert isinstance(decision, Retry)
    assert decision.fallback is not None
    assert param in decision.fallback
    assert decision.drop is not None
    assert decision.abandon is not None


@pytest.mark.parametrize("status", [400, 404, 405, 426])
def test_without_fallback_the_same_refusals_fail(status):
    """A forced ``websocket`` transport fails with the refusal, as it always did."""
    decision = FORCED.start().decide(_refused(status), random.Random(0))
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, HandshakeRejected)
    assert status == decision.error.status


def test_other_refusals_and_errors_do_not_fall_back():
    """401, 403, 429, 5xx and errors on ordinary fields follow the usual matrix."""
    for status in (401, 403, 429, 500, 503):
        decision = AUTO.start().decide(_refused(status), random.Random(0))
        assert getattr(decision, "fallback", None) is None, status
    decision = AUTO.start().decide(_rejected("temperature", "invalid_value"), random.Random(0))
    assert isinstance(decision, Fail)


def test_a_turn_falls_back_once():
    """A second no-WebSocket answer in the same turn (now over HTTP) is a real failure."""
    recovery = AUTO.start()
    first = recovery.decide(_refused(404), random.Random(0))
    second = recovery.decide(_refused(404), random.Random(0))
    assert isinstance(first, Retry)
    assert first.fallback is not None
    assert isinstance(second, Fail)


def test_http_body_is_the_create_with_stream_and_no_envelope():
    """Over HTTP the body is the create's fields plus ``stream: true``; the WebSocket
    envelope's ``type`` is not sent (the HTTP API rejects unknown parameters)."""
    create = ResponseCreate(model="m", input=[MessageItem.user("hi")], store=False)
    body = encode_body(create)
    assert body.startswith(b'{"stream":true,"model":"m",')
    assert b'"type":"response.create"' not in body
    assert b'"type":"message"' in body


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://api.example.com/v1/responses", "https://api.example.com/v1/responses"),
        ("ws://127.0.0.1:8080/v1/responses", "http://127.0.0.1:8080/v1/responses"),
    ],
)
def test_http_url_of_a_websocket_url(url, expected):
    """The same endpoint, over HTTP."""
    assert expected == http_url(url)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"error":{"message":"Previous response not found.","type":"invalid_request_error",'
            b'"param":"previous_response_id","code":"previous_response_not_found"}}',
            ("previous_response_not_found", "Previous response not found.", "previous_response_id"),
        ),
        (
            b'{"error":"Invalid previous_response_id."}',
            (None, "Invalid previous_response_id.", None),
        ),
        (
            b'{"code":"rate_limit_exceeded","message":"slow down","param":null}',
            ("rate_limit_exceeded", "slow down", None),
        ),
        (b"<html>bad gateway</html>", None),
        (b'{"detail":"Not Found"}', None),
    ],
)
def test_http_error_bodies_in_the_shapes_seen_in_the_wild(body, expected):
    """The service's nested error, a bare string (gateways), flat fields; anything else is
    no error body at all (the status alone then decides)."""
    error = request_error(429, body, {"retry-after": "2"})
    if expected is None:
        assert error is None
        return
    assert error is not None
    assert expected == (error.code, error.message, error.param)
    assert (429, 2.0) == (error.status, error.retry_after)


@pytest.mark.parametrize(
    ("status", "explained", "falls_back"),
    [
        (403, False, True),
        (401, False, True),
        (403, True, False),
        (401, True, False),
        (429, False, False),
        (408, False, False),
    ],
)
def test_a_bare_refusal_falls_back_an_explained_one_does_not(status, explained, falls_back):
    """Starlette (vLLM, SGLang, LiteLLM) answers an upgrade it has no route for with a bare
    403: that is "no WebSocket mode", not a bad key; over HTTP a bad key then fails with the
    endpoint's own explanation. A 401/403 whose body is an error, and the statuses that say
    "later", keep their usual meaning."""
    refused = Refused.of(HandshakeRejected(status, "refused", explained=explained))
    decision = AUTO.start().decide(refused, random.Random(0))
    assert falls_back == (getattr(decision, "fallback", None) is not None)


@pytest.mark.parametrize(
    ("code", "status", "retried"),
    [
        ("bad_gateway", 502, True),
        ("service_unavailable", 503, True),
        ("request_timeout", 408, True),
        ("429", 429, True),
        ("insufficient_quota", 429, False),
        ("invalid_prompt", 400, False),
    ],
)
def test_a_status_that_says_later_is_retried_whatever_its_code(code, status, retried):
    """Gateways put their own codes on 408, 429 and 5xx answers: the status decides,
    unless the code says no wait can help."""
    outcome = Rejected(RequestError(code, "m", status=status), refused=True)
    decision = FORCED.start().decide(outcome, random.Random(0))
    assert retried == isinstance(decision, Retry)


def test_an_http_refusal_keeps_the_stored_chain():
    """A request refused with 429 before anything ran evicted nothing: the retry continues
    the chain instead of resending the transcript (which would spend more tokens exactly
    when rate-limited). An error event inside a stream still replays."""
    limited = RequestError("rate_limit_exceeded", "slow down", status=429)
    refused = FORCED.start().decide(Rejected(limited, refused=True), random.Random(0))
    streamed = FORCED.start().decide(Rejected(limited), random.Random(0))
    assert isinstance(refused, Retry)
    assert isinstance(streamed, Retry)
    assert (False, True) == (refused.replay, streamed.replay)
