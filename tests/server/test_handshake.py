"""The upgrade (docs/protocol.md#handshake; docs/faults.md#clients-of-the-embedded-server), over
real TCP."""

from __future__ import annotations

import pytest
import trio

from orchestrator.core.server import Fault, LocalServer, ServerConfig, open_local_server

from .wire import HttpAnswer, auth, http_upgrade, loopback_client, memory_client


async def _rejected(running, path="/v1/responses", headers=None) -> HttpAnswer:
    if headers is None:
        headers = auth(running.token)
    return await http_upgrade(running.port, path, headers)


@pytest.mark.parametrize("path", ["/v1/responses", "/responses", "/v1/responses?x=1"])
async def test_both_paths_are_served(path):
    """docs/protocol.md#handshake: /v1/responses (the SDK's URL for base_url .../v1) and /responses
    upgrade."""
    async with open_local_server(seed=1) as running:
        with trio.fail_after(10):
            async with loopback_client(running, path=path) as client:
                events = await client.turn(input="hello")
    assert "hello" == events[-1]["response"]["output"][0]["content"][0]["text"]
    assert 1 == running.statistics().connections_opened


@pytest.mark.parametrize("path", ["/", "/v1/chat", "/v1/responses/extra"])
async def test_other_paths_get_404_with_a_json_error_body(path):
    """docs/protocol.md#handshake: an unknown path is refused at the handshake with 404 and a JSON
    error body."""
    async with open_local_server() as running:
        with trio.fail_after(10):
            rejected = await _rejected(running, path=path)
    assert 404 == rejected.status
    error = rejected.json()["error"]
    assert isinstance(error, dict)
    assert "not_found" == error["code"]
    assert "invalid_request_error" == error["type"]
    assert 1 == running.statistics().handshakes_rejected
    assert 0 == running.statistics().connections_opened


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"authorization", b"Bearer wrong-token")],
        [(b"authorization", b"Basic dXNlcjpwYXNz")],
        [(b"authorization", b"Bearer")],
    ],
    ids=["missing", "wrong", "not-bearer", "empty"],
)
async def test_bad_bearer_is_refused_with_401_before_the_upgrade(headers):
    """docs/protocol.md#refused-handshakes / docs/faults.md#clients-of-the-embedded-server: HTTP 401
    with the exact JSON body, never a 101."""
    async with open_local_server(token="the-token") as running:
        with trio.fail_after(10):
            rejected = await _rejected(running, headers=headers)
    assert 401 == rejected.status
    body = rejected.json()
    assert ["error"] == list(body)
    error = body["error"]
    assert isinstance(error, dict)
    assert {"message", "type", "code", "param"} == error.keys()
    assert "invalid_request_error" == error["type"]
    assert "invalid_api_key" == error["code"]
    assert error["param"] is None
    assert 0 == running.statistics().connections_opened


async def test_bearer_scheme_is_case_insensitive():
    """RFC 6750 auth schemes are case-insensitive: ``bearer <token>`` is accepted."""
    async with open_local_server(token="the-token") as running:
        with trio.fail_after(10):
            async with loopback_client(
                running, headers=[(b"Authorization", b"bearer the-token")]
            ) as client:
                events = await client.turn(input="hi")
    assert "response.completed" == events[-1]["type"]


async def test_disallowed_origin_gets_403():
    """docs/faults.md#clients-of-the-embedded-server: a browser Origin not on the allow-list is
    refused with 403 (CSWSH)."""
    async with open_local_server(allowed_origins=frozenset({"http://ok.example"})) as running:
        evil = [*auth(running.token), (b"origin", b"http://evil.example")]
        good = [*auth(running.token), (b"origin", b"http://ok.example")]
        with trio.fail_after(10):
            rejected = await _rejected(running, headers=evil)
            async with loopback_client(running, headers=good) as client:
                events = await client.turn(input="hi")
    assert 403 == rejected.status
    error = rejected.json()["error"]
    assert isinstance(error, dict)
    assert "invalid_request_error" == error["type"]
    assert "response.completed" == events[-1]["type"]


async def test_unknown_headers_are_ignored():
    """docs/protocol.md#handshake: every header the server does not understand (SDK, Codex, beta) is
    ignored."""
    async with open_local_server() as running:
        headers = [
            *auth(running.token),
            (b"openai-beta", b"responses_websockets=2026-02-06"),
            (b"openai-organization", b"org-x"),
            (b"x-stainless-lang", b"python"),
            (b"user-agent", b"AsyncOpenAI/Python 3.57.0"),
            (b"x-anything", b"\xff\xfe"),
        ]
        with trio.fail_after(10):
            async with loopback_client(running, headers=headers) as client:
                events = await client.turn(input="hi")
    assert "response.completed" == events[-1]["type"]


async def test_no_subprotocol_is_selected():
    """docs/protocol.md#handshake: the server never picks a subprotocol, even when one is
    offered."""
    async with open_local_server() as running:
        with trio.fail_after(10):
            async with loopback_client(running, subprotocols=["chat", "json"]) as client:
                assert client.ws.subprotocol is None
                events = await client.turn(input="hi")
    assert "response.completed" == events[-1]["type"]


async def test_reject_fault_answers_with_its_status_headers_and_body():
    """Fault ``reject``: the handshake fails with the configured status, a JSON body and
    ``retry-after``; the next connection is served normally."""
    fault = Fault("reject", status=429, error_code="rate_limit_exceeded", retry_after=2.5)
    async with open_local_server(faults=(fault,)) as running:
        with trio.fail_after(10):
            rejected = await _rejected(running)
            async with loopback_client(running) as client:
                events = await client.turn(input="hi")
    assert 429 == rejected.status
    assert (b"retry-after", b"2.5") in rejected.headers.items()
    error = rejected.json()["error"]
    assert isinstance(error, dict)
    assert "rate_limit_exceeded" == error["code"]
    assert "requests" == error["type"]
    assert "response.completed" == events[-1]["type"]
    assert 1 == running.statistics().faults_fired


async def test_reject_fault_with_5xx_is_a_server_error():
    """Fault ``reject`` with 503: the body's type is ``server_error``."""
    fault = Fault("reject", status=503, error_code="server_is_overloaded")
    async with open_local_server(faults=(fault,)) as running:
        with trio.fail_after(10):
            rejected = await _rejected(running)
    assert 503 == rejected.status
    error = rejected.json()["error"]
    assert isinstance(error, dict)
    assert "server_error" == error["type"]


async def test_delay_handshake_fault_holds_the_101(autojump_clock):
    """Fault ``delay_handshake``: the upgrade is answered only after ``duration`` seconds."""
    server = LocalServer.from_config(
        ServerConfig(faults=(Fault("delay_handshake", duration=30, connection=1),))
    )
    with trio.fail_after(60):
        started = trio.current_time()
        async with memory_client(server) as client:
            accepted = trio.current_time()
            events = await client.turn(input="hi")
    assert 30 == accepted - started
    assert "response.completed" == events[-1]["type"]


async def test_silent_client_is_dropped_after_the_handshake_timeout(autojump_clock):
    """A peer that never sends its upgrade request is dropped after handshake_timeout."""
    server = LocalServer.from_config(ServerConfig(handshake_timeout=7))
    client_stream, server_stream = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        started = trio.current_time()
        await server.handle_stream(server_stream)
        assert 7 == trio.current_time() - started
        assert b"" == await client_stream.receive_some()
    assert 0 == server.statistics().connections_opened
    assert 0 == server.statistics().connection_errors


async def test_plain_get_is_an_http_request_refused_with_405():
    """A GET without the upgrade headers is a plain HTTP request (docs/protocol.md#over-http):
    it gets 405 (the endpoint takes POST), not a hang or a crash."""
    async with open_local_server() as running:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            async with stream:
                await stream.send_all(
                    b"GET /v1/responses HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                answer = b""
                while chunk := await stream.receive_some():
                    answer += chunk
    assert answer.startswith(b"HTTP/1.1 405 ")
    assert 0 == running.statistics().connection_errors
