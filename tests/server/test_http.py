"""The HTTP endpoint (docs/protocol.md#over-http): ``POST /v1/responses`` answered with SSE or
JSON, keep-alive, auth, limits and the store, over real TCP and in-memory streams."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import pytest
import trio
import trio.testing

from orchestrator.core.server import LatencyModel, LocalServer, ServerConfig, open_local_server
from orchestrator.errors import ConfigurationError

from .wire import (
    LOOKUP_TOOL,
    HttpClient,
    auth,
    calls_of,
    http_client,
    http_upgrade,
    loopback_client,
    memory_client,
    memory_http_client,
    output_for,
    types_of,
)

SCRIPT: dict[str, Any] = {
    "turns": [
        {
            "reasoning": "Plan.",
            "function_calls": [{"name": "lookup", "arguments": {"city": "Faro"}}],
        },
        {"text": "Faro is hot."},
        {"error": {"code": "server_error", "status": 500, "message": "the model fell over"}},
    ],
}


def _without_clock(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events with the wall-clock fields (created_at, completed_at) removed."""
    stripped = []
    for event in events:
        if "response" in event:
            response = {k: v for k, v in event["response"].items() if not k.endswith("_at")}
            event = {**event, "response": response}
        stripped.append(event)
    return stripped


def _error_of(reply, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    """The error of a JSON error answer, checked for the service's shape."""
    assert status == reply.status, reply.body
    body = reply.json()
    assert ["error"] == list(body)
    error = body["error"]
    assert {"message", "type", "code", "param"} == error.keys()
    assert code == error["code"]
    assert param == error["param"]
    assert error["message"]
    return error


async def test_a_streamed_answer_carries_the_websocket_event_sequence():
    """The SSE stream of a POST holds exactly the events a WebSocket create gets, in the same
    order, with the same sequence numbers and (with the same seed) the same ids: a text
    turn, and a function-call turn continued by ``previous_response_id``."""
    turns: list[list[dict[str, Any]]] = []
    for over_http in (False, True):
        server = LocalServer.from_config(ServerConfig(script=SCRIPT, seed=3))
        with trio.fail_after(10):
            if over_http:
                async with memory_http_client(server) as client:
                    first = await client.stream_events(
                        model="local-scripted", input="go", tools=[LOOKUP_TOOL]
                    )
                    second = await client.stream_events(
                        model="local-scripted",
                        input=[output_for(call) for call in calls_of(first)],
                        previous_response_id=first[-1]["response"]["id"],
                        tools=[LOOKUP_TOOL],
                    )
            else:
                async with memory_client(server) as ws:
                    first = await ws.turn(model="local-scripted", input="go", tools=[LOOKUP_TOOL])
                    second = await ws.turn(
                        model="local-scripted",
                        input=[output_for(call) for call in calls_of(first)],
                        previous_response_id=first[-1]["response"]["id"],
                        tools=[LOOKUP_TOOL],
                        store=True,
                    )
        turns.append([*first, *second])
    websocket, http = turns
    # The usage too: HTTP's prompt cache holds what the WebSocket's connection cache does.
    assert _without_clock(websocket) == _without_clock(http)
    assert "function_call" in {item["type"] for item in calls_of(http[: len(first)])}
    assert "Faro is hot." == http[-1]["response"]["output"][0]["content"][0]["text"]


async def test_sse_framing_and_headers(running):
    """Each event is ``event: <type>`` then ``data: <json>`` and a blank line, with the
    sequence numbers of the response from 0; the answer is ``200 text/event-stream``."""
    async with http_client(running) as client:
        with trio.fail_after(10):
            reply = await client.post(input="hello there", stream=True)
    assert 200 == reply.status
    assert reply.headers[b"content-type"].startswith(b"text/event-stream")
    assert b"no-cache" == reply.headers[b"cache-control"]
    assert reply.body.startswith(b"event: response.created\ndata: {")
    events = reply.events()
    assert [event.name for event in events] == [event.json()["type"] for event in events]
    assert list(range(len(events))) == [event.json()["sequence_number"] for event in events]
    assert "response.completed" == events[-1].name
    assert "stream_id" not in events[0].json()
    assert 1 == running.statistics().http_streams


async def test_a_json_answer_is_the_final_response_object():
    """Without ``stream: true`` the answer is ``200 application/json``: the response object
    of the ``response.completed`` event the same request gets when streamed."""
    answers = []
    for stream in (True, False):
        server = LocalServer.from_config(ServerConfig(seed=5))
        async with memory_http_client(server) as client:
            with trio.fail_after(10):
                reply = await client.post(model="local-generic", input="Hi", stream=stream)
        assert 200 == reply.status
        if stream:
            answers.append(reply.events()[-1].json()["response"])
        else:
            answers.append(reply.json())
        assert int(stream) == server.statistics().http_streams
    streamed, whole = answers
    assert "completed" == whole["status"]
    assert _without_clock([{"response": streamed}]) == _without_clock([{"response": whole}])


async def test_requests_follow_one_another_on_one_connection(running):
    """Keep-alive: one TCP connection carries a streamed answer, a JSON answer, a refused
    request and a 404, one after the other, and stays open."""
    async with http_client(running) as client:
        with trio.fail_after(10):
            streamed = await client.stream_events(input="one")
            whole = await client.post(input="two")
            refused = await client.post(previous_response_id="resp_nope", input="three")
            missing = await client.request("POST", "/v1/chat/completions", body={})
            last = await client.stream_events(input="four")
    assert "one" == streamed[-1]["response"]["output"][0]["content"][0]["text"]
    assert "two" == whole.json()["output"][0]["content"][0]["text"]
    _error_of(refused, 400, "previous_response_not_found", "previous_response_id")
    _error_of(missing, 404, "not_found")
    assert "response.completed" == last[-1]["type"]
    statistics = running.statistics()
    assert (1, 5, 2) == (
        statistics.http_connections,
        statistics.http_requests,
        statistics.http_streams,
    )
    assert 0 == statistics.connections_opened


@pytest.mark.parametrize("path", ["/v1/responses", "/responses", "/v1/responses?x=1"])
async def test_both_paths_are_served(running, path):
    """``/v1/responses`` (the SDK's path for a base URL ending in ``/v1``) and ``/responses``
    both create responses."""
    async with http_client(running) as client:
        with trio.fail_after(10):
            reply = await client.request("POST", path, body={"model": "m-echo", "input": "hi"})
    assert "hi" == reply.json()["output"][0]["content"][0]["text"]


@pytest.mark.parametrize("path", ["/", "/v1/chat/completions", "/v1/responses/resp_1"])
async def test_other_paths_get_404(running, path):
    """Any other path is answered 404 ``not_found`` with a JSON error body."""
    async with http_client(running) as client:
        with trio.fail_after(10):
            reply = await client.request("POST", path, body={"model": "m", "input": "hi"})
    _error_of(reply, 404, "not_found")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS"])
async def test_other_methods_get_405_with_allow(running, method):
    """Another method on the endpoint is answered 405 with ``allow: POST``; the connection
    takes the next request."""
    async with http_client(running) as client:
        with trio.fail_after(10):
            reply = await client.request(method, "/v1/responses")
            after = await client.post(input="still here")
    _error_of(reply, 405, "method_not_allowed")
    assert b"POST" == reply.headers[b"allow"]
    assert 200 == after.status
    assert 0 == running.statistics().connection_errors


async def test_head_gets_405_without_a_body(running):
    """``HEAD`` gets the 405's head (its content-length included) and no body, and the
    connection takes the next request."""
    async with http_client(running) as client:
        with trio.fail_after(10):
            reply = await client.request("HEAD", "/v1/responses")
            after = await client.post(input="still here")
    assert (405, b"") == (reply.status, reply.body)
    assert 0 < int(reply.headers[b"content-length"])
    assert 200 == after.status
    assert 0 == running.statistics().connection_errors


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
async def test_bad_bearer_gets_401_invalid_api_key(headers):
    """A POST without the right bearer token is answered 401 ``invalid_api_key`` with the
    body the WebSocket handshake refusal has, which never echoes the token sent."""
    async with open_local_server(token="the-token") as running, http_client(running) as client:
        with trio.fail_after(10):
            reply = await client.request(
                body={"model": "m", "input": "hi"},
                headers=[*headers, (b"x-echo", b"wrong-token")],
            )
            accepted = await client.request(
                body={"model": "m", "input": "hi"}, headers=auth("the-token")
            )
    error = _error_of(reply, 401, "invalid_api_key")
    assert "invalid_request_error" == error["type"]
    assert b"wrong-token" not in reply.body
    assert b"the-token" not in reply.body
    assert 200 == accepted.status
    assert 1 == running.statistics().responses_started


async def test_a_body_over_max_message_size_gets_413():
    """A body larger than ``max_message_size`` is answered 413 ``request_too_large`` at once
    (from its content-length, without reading it), and the connection is closed."""
    async with open_local_server(max_message_size=1000) as running:
        with trio.fail_after(10):
            async with http_client(running) as client:
                await client.stream.send_all(
                    b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n"
                    b"authorization: Bearer " + running.token.encode() + b"\r\n\r\n{"
                )
                head = await client.head()
                body = await client.body()
                closed = await client.closed()
            async with http_client(running) as client:
                fits = await client.request(body={"model": "m", "input": "x" * 900})
    assert 413 == head.status_code
    assert b"request_too_large" in body
    assert closed
    assert 200 == fits.status


async def test_a_chunked_body_over_max_message_size_gets_413():
    """A chunked body (no content-length) is cut off with 413 once it passes the limit."""
    async with open_local_server(max_message_size=1000) as running, http_client(running) as client:
        with trio.fail_after(10):
            await client.stream.send_all(
                b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                b"authorization: Bearer " + running.token.encode() + b"\r\n\r\n"
                b"800\r\n" + b"x" * 2048 + b"\r\n"
            )
            head = await client.head()
            await client.body()
            closed = await client.closed()
    assert 413 == head.status_code
    assert closed


async def test_store_true_continues_by_id_and_store_false_cannot(running):
    """Over HTTP ``previous_response_id`` is looked up in the process-wide store only: a
    ``store: true`` response continues (from another connection too), a ``store: false``
    one is ``previous_response_not_found`` (400, param ``previous_response_id``)."""
    async with http_client(running) as client, http_client(running) as other:
        with trio.fail_after(10):
            stored = (await client.post(input="remember me", store=True)).json()
            unstored = (await client.post(input="forget me", store=False)).json()
            continued = await other.post(input="next", previous_response_id=stored["id"])
            refused = await client.post(input="next", previous_response_id=unstored["id"])
    assert 200 == continued.status
    assert stored["id"] == continued.json()["previous_response_id"]
    error = _error_of(refused, 400, "previous_response_not_found", "previous_response_id")
    assert unstored["id"] in error["message"]
    assert 1 == running.statistics().store_hydrations


async def test_a_stored_websocket_response_continues_over_http(running):
    """The store is process-wide: a response created over a WebSocket with ``store: true``
    is continued by a POST, with the whole chain as its context."""
    async with loopback_client(running) as ws, http_client(running) as client:
        with trio.fail_after(10):
            first = await ws.turn(model="local-generic", input="Weather in Faro?", store=True)
            reply = await client.post(
                model="local-echo", input="again", previous_response_id=first[-1]["response"]["id"]
            )
    usage = reply.json()["usage"]
    assert first[-1]["response"]["usage"]["total_tokens"] < usage["input_tokens"]


@pytest.mark.parametrize(
    ("fields", "param"), [({"generate": False}, "generate"), ({"stream_id": "a"}, "stream_id")]
)
async def test_websocket_only_fields_are_unknown_parameters(running, fields, param):
    """``generate`` and ``stream_id`` exist in WebSocket mode only: over HTTP they are
    answered 400 ``unknown_parameter`` naming the field, streamed or not."""
    async with http_client(running) as client:
        with trio.fail_after(10):
            streamed = await client.post(input="hi", stream=True, **fields)
            whole = await client.post(input="hi", **fields)
    for reply in (streamed, whole):
        _error_of(reply, 400, "unknown_parameter", param)
    assert 0 == running.statistics().responses_started


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"[1, 2]", "invalid_value", None),
        (b'{"input": "hi"}', "missing_required_parameter", "model"),
        (b'{"model": "m", "input": 7}', "invalid_value", "input"),
        (b'{"model": "m", "type": "response.steer"}', "invalid_value", "type"),
        (b'{"model": "m", "background": true}', "invalid_value", "background"),
    ],
    ids=["not-json", "not-object", "no-model", "bad-input", "other-type", "background"],
)
async def test_bad_bodies_get_400_naming_the_parameter(running, body, code, param):
    """A body that is not a create is answered 400 with a code and the parameter at fault;
    nothing starts, and the connection takes the next request."""
    async with http_client(running) as client:
        with trio.fail_after(10):
            reply = await client.request(body=body)
            after = await client.post(input="ok")
    _error_of(reply, 400, code, param)
    assert 200 == after.status
    assert 1 == running.statistics().responses_started


async def test_a_websocket_message_posted_as_it_is_is_refused(running):
    """A body with the envelope's ``"type": "response.create"`` (a WebSocket message posted
    as it is) gets 400 ``unknown_parameter`` naming ``type``, as from the service (so a client
    that starts sending it over HTTP fails here too); the connection goes on. A ``type``
    inside the input items is no envelope."""
    async with http_client(running) as client:
        with trio.fail_after(10):
            reply = await client.request(
                body=b'{"type":"response.create","model":"local-echo","input":"same body"}'
            )
            after = await client.post(input=[{"type": "message", "role": "user", "content": "ok"}])
    _error_of(reply, 400, "unknown_parameter", "type")
    assert 200 == after.status


async def test_an_error_after_the_stream_began_is_an_sse_error_event():
    """An error found once the stream began is an ``error`` event on it, in the HTTP API's
    SSE shape (``code``, ``message``, ``param`` at the top level); the stream ends normally
    and the connection goes on. Not streamed, it is the error's HTTP status."""
    script = {"turns": [SCRIPT["turns"][2]], "on_exhausted": "cycle"}
    async with (
        open_local_server(script=script, model="scripted") as running,
        http_client(running) as client,
    ):
        with trio.fail_after(10):
            events = await client.stream_events(input="go")
            whole = await client.post(input="go")
    assert ["response.created", "response.in_progress", "error"] == types_of(events)
    assert {
        "type": "error",
        "sequence_number": 2,
        "code": "server_error",
        "message": "the model fell over",
        "param": None,
    } == events[-1]
    error = _error_of(whole, 500, "server_error")
    assert "server_error" == error["type"]


async def test_a_failed_response_is_answered_with_its_object():
    """``response.failed`` ends a stream like any terminal event; not streamed, the answer is
    200 with the failed response object (``status`` and ``error`` set)."""
    script = {"turns": [{"failed": {"code": "server_error"}}], "on_exhausted": "cycle"}
    async with (
        open_local_server(script=script, model="scripted") as running,
        http_client(running) as client,
    ):
        with trio.fail_after(10):
            events = await client.stream_events(input="go")
            whole = await client.post(input="go")
    assert "response.failed" == events[-1]["type"]
    body = whole.json()
    assert ("failed", "server_error") == (body["status"], body["error"]["code"])


async def test_a_plain_get_is_405_and_an_upgrade_is_still_a_websocket(running):
    """A ``GET /v1/responses`` without ``Upgrade: websocket`` is an HTTP request (405); with
    it, the same path opens a WebSocket."""
    async with http_client(running) as client:
        with trio.fail_after(10):
            reply = await client.request("GET", "/v1/responses")
    async with loopback_client(running) as ws:
        with trio.fail_after(10):
            events = await ws.turn(input="hi")
    assert 405 == reply.status
    assert "response.completed" == events[-1]["type"]
    assert (1, 1) == (running.statistics().connections_opened, running.statistics().http_requests)


async def test_garbage_gets_400_and_a_close(running):
    """Bytes that are not an HTTP request are answered 400 (JSON body) and the connection is
    closed; the server carries on."""
    stream = await trio.open_tcp_stream("127.0.0.1", running.port)
    async with stream:
        with trio.fail_after(10):
            await stream.send_all(b"\x16\x03\x01 hello\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"code": "invalid_request"' in answer
    assert 0 == running.statistics().connection_errors


async def test_expect_100_continue_is_answered(running):
    """A client that waits for ``100 Continue`` before its body gets it, then the answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", running.port)
    async with stream:
        client = HttpClient(stream, running.token)
        body = b'{"model": "m-echo", "input": "after continue"}'
        with trio.fail_after(10):
            await stream.send_all(
                b"POST /v1/responses HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
                b"authorization: Bearer " + running.token.encode() + b"\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
            )
            interim = await stream.receive_some()
            await stream.send_all(body)
            head = await client.head()
            data = await client.body()
    assert interim.startswith(b"HTTP/1.1 100 ")
    assert 200 == head.status_code
    assert b"after continue" in data


async def test_an_idle_connection_is_closed_after_keep_alive_timeout(autojump_clock):
    """A connection waiting for its next request longer than ``keep_alive_timeout`` is
    closed by the server."""
    server = LocalServer.from_config(ServerConfig(keep_alive_timeout=15))
    async with memory_http_client(server) as client:
        with trio.fail_after(60):
            await client.post(input="one")
            answered = trio.current_time()
            assert await client.closed()
            idle = trio.current_time() - answered
    assert 15 == idle


async def test_a_slow_body_gets_408(autojump_clock):
    """A request whose body does not arrive within ``handshake_timeout`` is answered 408
    ``request_timeout`` and the connection closed."""
    server = LocalServer.from_config(ServerConfig(handshake_timeout=5))
    async with memory_http_client(server) as client:
        with trio.fail_after(60):
            await client.stream.send_all(
                b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n{"
            )
            head = await client.head()
            await client.body()
            assert await client.closed()
    assert 408 == head.status_code


async def test_a_client_that_leaves_mid_response_cancels_it(autojump_clock):
    """A client closing the connection while its response is being made cancels the
    response at once: it is neither completed nor stored, the server ends the connection,
    and nothing fails."""
    server = LocalServer.from_config(
        ServerConfig(latency=LatencyModel(time_to_first_token=30), seed=1)
    )
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = HttpClient(client_stream, server.token)
    with trio.fail_after(20):  # virtual time: the response alone would take 30 s
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_stream)
            await client.send_request(body={"model": "m-echo", "input": "hi", "stream": True})
            head = await client.head()
            assert "response.created" == (await client.event()).name
            left = trio.current_time()
            await client_stream.aclose()
        ended = trio.current_time()
    statistics = server.statistics()
    assert 200 == head.status_code
    assert 0 == ended - left
    assert (1, 0) == (statistics.responses_started, statistics.responses_completed)
    assert 0 == statistics.connection_errors


# -- an HTTP-only server, a WebSocket-only server -----------------------------------------------


async def test_websocket_false_refuses_upgrades_with_426_and_serves_http():
    """``websocket=False``: every upgrade is refused with ``426 Upgrade Required`` and the
    service's error body (``websocket_not_supported``, saying to POST instead), whatever its
    path or token; POSTs are served as usual (docs/protocol.md#an-http-only-server)."""
    async with open_local_server(websocket=False) as running:
        with trio.fail_after(10):
            refused = await http_upgrade(running.port, headers=auth(running.token))
            unauthenticated = await http_upgrade(running.port, "/elsewhere")
            async with http_client(running) as client:
                served = await client.post(input="over http")
    for answer in (refused, unauthenticated):
        assert 426 == answer.status
        error = answer.json()["error"]
        assert ("websocket_not_supported", "invalid_request_error", None) == (
            error["code"],
            error["type"],
            error["param"],
        )
        assert "POST /v1/responses" in error["message"]
    assert 200 == served.status
    statistics = running.statistics()
    assert (0, 2) == (statistics.connections_opened, statistics.handshakes_rejected)


async def test_http_false_leaves_posts_to_the_websocket_handshake():
    """``http=False`` (a WebSocket-only endpoint): a POST is refused with 400 by the
    WebSocket handshake, as before the HTTP endpoint existed; upgrades are served."""
    async with open_local_server(http=False) as running:
        with trio.fail_after(10):
            async with http_client(running) as client:
                await client.send_request(body={"model": "m", "input": "hi"})
                head = await client.head()
            async with loopback_client(running) as ws:
                events = await ws.turn(input="hi")
    assert 400 == head.status_code
    assert "response.completed" == events[-1]["type"]
    assert 0 == running.statistics().http_requests


def test_a_server_must_serve_something():
    """``websocket=False`` with ``http=False`` is a configuration error."""
    with pytest.raises(ConfigurationError, match="serve nothing"):
        ServerConfig(websocket=False, http=False)


def test_serve_no_websocket_serves_http_only():
    """``orchestrator serve --no-websocket``: it says it serves HTTP only, at the http://
    URL; upgrades get 426, POSTs are answered."""
    server = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "serve", "--port", "0", "--no-websocket"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith("serving http://127.0.0.1:"), first
        assert "HTTP only" in first
        url = first.split()[1]
        server.stdout.readline()  # base_url
        token = server.stdout.readline().split()[1]  # "token ..."
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])

        async def visit() -> tuple[int, int]:
            with trio.fail_after(10):
                refused = await http_upgrade(port, headers=auth(token))
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    reply = await HttpClient(stream, token).post(input="hi")
            return refused.status, reply.status

        assert (426, 200) == trio.run(visit)
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=10)
