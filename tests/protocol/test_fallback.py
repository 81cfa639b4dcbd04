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


@pytest.mark.parametrize("param", ["type", "generate"])
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
