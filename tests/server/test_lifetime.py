"""Connection lifetime, size limit, keepalive and isolation (docs/protocol.md#connection-age,
docs/protocol.md#frames-sizes-and-keepalive, docs/protocol.md#close-codes;
docs/faults.md#clients-of-the-embedded-server)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from orchestrator.core.server import (
    Fault,
    LatencyModel,
    LocalServer,
    ServerConfig,
    open_local_server,
    serve_local_server,
)
from orchestrator.core.server.models import EchoPolicy

from .wire import assert_error, loopback_client, memory_client

LIMIT_MESSAGE = (
    "Responses websocket connection limit reached (60 minutes). Create a new websocket "
    "connection to continue."
)


def _server(**options: Any) -> LocalServer:
    return LocalServer.from_config(ServerConfig(model="echo", seed=1, **options))


def _assert_limit(event: dict[str, Any]) -> None:
    """docs/protocol.md#error-codes: the connection limit error is connection-scoped, param null."""
    assert_error(event, 400, "websocket_connection_limit_reached", None)
    assert LIMIT_MESSAGE == event["error"]["message"]


# -- the age limit (docs/protocol.md#connection-age) -------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001])
async def test_idle_connection_expires_with_the_error_then_a_close(autojump_clock, code):
    """docs/protocol.md#connection-age (the embedded server's choice): at the limit an idle
    connection gets the error, then close ``expiry_close_code``."""
    server = _server(max_connection_age=60, expiry_close_code=code)
    async with memory_client(server) as client:
        with trio.fail_after(120):
            started = trio.current_time()
            _assert_limit(await client.receive())
            assert 60 == trio.current_time() - started
            assert code == await client.closed()
    assert 1 == server.statistics().expiries


async def test_expiry_without_a_close_keeps_refusing_creates(autojump_clock):
    """docs/protocol.md#connection-age (the embedded server's choice): with
    ``expiry_close_code=None`` the socket stays open and every later create gets the same error."""
    server = _server(max_connection_age=60, expiry_close_code=None)
    async with memory_client(server) as client:
        with trio.fail_after(120):
            _assert_limit(await client.receive())
            # Connection-scoped: no stream_id, even for a create on a named lane.
            await client.create(input="too late", stream_id="lane")
            _assert_limit(await client.receive())
            await client.create(input="still too late")
            _assert_limit(await client.receive())
    assert 0 == server.statistics().responses_started


async def test_response_in_flight_finishes_before_the_expiry(autojump_clock):
    """docs/protocol.md#connection-age (the embedded server's choice): a response running at the
    limit finishes; then error and close."""
    server = _server(max_connection_age=10, latency=LatencyModel(time_to_first_token=15))
    async with memory_client(server) as client:
        with trio.fail_after(120):
            events = await client.turn(input="slow")
            finished = trio.current_time()
            _assert_limit(await client.receive())
            assert 15 == trio.current_time()
            assert 1000 == await client.closed()
    assert "response.completed" == events[-1]["type"]
    assert 15 == finished


async def test_queued_create_after_expiry_gets_the_error(autojump_clock):
    """docs/protocol.md#connection-age: a create that starts after the limit is refused with the
    limit error."""
    server = _server(
        max_connection_age=10, expiry_close_code=None, latency=LatencyModel(time_to_first_token=15)
    )
    async with memory_client(server) as client:
        with trio.fail_after(120):
            await client.create(input="slow")
            await client.create(input="queued")
            first = await client.response()
            rest = [await client.receive(), await client.receive()]
    assert "response.completed" == first[-1]["type"]
    for event in rest:
        _assert_limit(event)


async def test_expire_fault_reaches_the_limit_now(autojump_clock):
    """Fault ``expire``: the limit is reached at once; the response finishes first."""
    server = _server(faults=(Fault("expire", response=1, after_events=2),))
    async with memory_client(server) as client:
        with trio.fail_after(120):
            events = await client.turn(input="hi")
            _assert_limit(await client.receive())
            assert 1000 == await client.closed()
    assert 0 == trio.current_time()
    assert "response.completed" == events[-1]["type"]
    assert 1 == server.statistics().faults_fired


# -- size limit and keepalive (docs/protocol.md#frames-sizes-and-keepalive) --------------------


def _create_of_size(size: int) -> str:
    head = '{"type":"response.create","model":"local-echo","input":"'
    return head + "x" * (size - len(head) - 2) + '"}'


async def test_oversized_message_closes_with_1009(autojump_clock):
    """docs/protocol.md#frames-sizes-and-keepalive, docs/protocol.md#close-codes: a message above
    max_message_size closes the socket with 1009 and no error event; one exactly at the limit is
    served."""
    server = _server(max_message_size=4096)
    async with memory_client(server) as client:
        with trio.fail_after(60):
            at_limit = _create_of_size(4096)
            assert 4096 == len(at_limit)
            await client.send(at_limit)
            events = await client.response()
            await client.send(_create_of_size(4097))
            assert 1009 == await client.closed()
    assert "response.completed" == events[-1]["type"]
    assert ["response.completed"] == [
        e["type"] for e in client.received if "completed" in e["type"]
    ]


async def test_oversized_fragmented_message_closes_with_1009():
    """The limit applies to the whole message, also when it arrives in many frames."""
    server = _server(max_message_size=1000)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_stream)
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        with trio.fail_after(10):
            await client_stream.send_all(
                ws.send(
                    Request(
                        host="x",
                        target="/v1/responses",
                        extra_headers=[(b"authorization", f"Bearer {server.token}".encode())],
                    )
                )
            )
            while not any(isinstance(e, AcceptConnection) for e in ws.events()):
                ws.receive_data(bytes(await client_stream.receive_some()))
            for _ in range(5):
                await client_stream.send_all(
                    ws.send(TextMessage("x" * 300, message_finished=False))
                )
            codes: list[int] = []
            while not codes:
                data = await client_stream.receive_some()
                assert data
                ws.receive_data(bytes(data))
                codes = [e.code for e in ws.events() if isinstance(e, CloseConnection)]
    assert [1009] == codes


async def test_ping_is_answered_while_a_response_streams(autojump_clock):
    """docs/protocol.md#frames-sizes-and-keepalive: pings are answered at once, even during a paced
    response."""
    server = _server(latency=LatencyModel(tokens_per_second=0.1))
    async with memory_client(server) as client:
        with trio.fail_after(120):
            await client.create(input="one two three")
            assert "response.created" == (await client.receive())["type"]
            await client.ws.ping(b"are you there")
            assert 0 == trio.current_time()
            events = await client.response()
    assert 30 == trio.current_time()
    assert "response.completed" == events[-1]["type"]


async def test_ping_is_answered_over_tcp():
    """docs/protocol.md#frames-sizes-and-keepalive over real TCP: a ping gets its pong."""
    async with open_local_server() as running, loopback_client(running) as client:
        with trio.fail_after(10):
            await client.ws.ping()
            events = await client.turn(input="after ping")
    assert "response.completed" == events[-1]["type"]


async def test_client_close_is_answered(autojump_clock):
    """A close from the client gets its close reply; the server counts the connection gone."""
    server = _server()
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.turn(input="x")
            await client.ws.aclose(1000, "bye")
            assert client.ws.closed is not None
            assert 1000 == client.ws.closed.code
    await trio.testing.wait_all_tasks_blocked()
    assert 0 == server.statistics().connections_active


# -- isolation (docs/faults.md#clients-of-the-embedded-server) ---------------------------------


async def test_failing_handler_closes_only_its_connection_with_1011(monkeypatch):
    """docs/faults.md#clients-of-the-embedded-server: an unexpected error in one connection closes
    it with 1011; another connection, mid-response, is unaffected; the statistics count it."""
    original = EchoPolicy.respond

    def respond(self, request):
        if request.model == "local-echo-boom":
            raise RuntimeError("policy bug")
        return original(self, request)

    monkeypatch.setattr(EchoPolicy, "respond", respond)
    config = ServerConfig(model="echo", latency=LatencyModel(tokens_per_second=50))
    async with open_local_server(config) as running:
        with trio.fail_after(10):
            async with loopback_client(running) as healthy, loopback_client(running) as doomed:
                await healthy.create(input="a b c d e f g h i j", model="local-echo")
                assert "response.created" == (await healthy.receive())["type"]
                await doomed.create(model="local-echo-boom", input="x")
                assert 1011 == await doomed.closed()
                events = await healthy.response()
                again = await healthy.turn(input="still fine")
        statistics = running.statistics()
    assert "response.completed" == events[-1]["type"]
    assert "a b c d e f g h i j" == events[-1]["response"]["output"][0]["content"][0]["text"]
    assert "response.completed" == again[-1]["type"]
    assert 1 == statistics.connection_errors
    assert 2 == statistics.connections_opened
    assert 0 == statistics.connections_active


async def test_failure_in_memory_is_isolated_too(autojump_clock, monkeypatch):
    """Isolation holds for in-memory streams: ``handle_stream`` never raises."""
    monkeypatch.setattr(EchoPolicy, "respond", lambda self, request: 1 / 0)
    server = _server()
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.create(input="x")
            assert 1011 == await client.closed()
    assert 1 == server.statistics().connection_errors


async def test_statistics_count_the_traffic(autojump_clock):
    """Statistics: connections, responses, messages, events and bytes in both directions."""
    server = _server()
    async with memory_client(server) as client:
        with trio.fail_after(60):
            events = await client.turn(input="hello")
            await client.send("garbage")
            await client.receive()
    statistics = server.statistics()
    assert 1 == statistics.connections_opened
    assert 2 == statistics.messages_received
    assert len(events) + 1 == statistics.events_sent
    assert 1 == statistics.responses_started
    assert 1 == statistics.responses_completed
    assert {"invalid_json": 1} == statistics.errors_sent
    assert statistics.bytes_received > len("garbage")
    assert statistics.bytes_sent > 500


async def test_server_shutdown_closes_with_1001_at_once():
    """docs/protocol.md#close-codes (the embedded server's choice): when the server stops, a
    connected client gets close 1001 and the closing handshake completes at once (no close_timeout
    wait)."""
    server_scope = trio.CancelScope()

    async def run_server(*, task_status: Any) -> None:
        with server_scope:
            await serve_local_server(ServerConfig(close_timeout=30), task_status=task_status)

    # The deadline is a third of close_timeout: a server that waited out its close timeout
    # instead of completing the handshake would miss it.
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            running = await nursery.start(run_server)
            async with loopback_client(running) as client:
                await client.turn(input="x")
                server_scope.cancel()
                assert 1001 == await client.closed()


async def test_a_connection_cancelled_as_it_is_accepted_ends_at_once():
    """Shutdown right after an accept: the cancelled handler returns instead of hanging in
    its shielded writer (trio keeps a task that calls started() in a cancelled start
    nursery there, so a shielded helper started that way would never end)."""
    server = _server()
    _client_stream, server_stream = trio.testing.memory_stream_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_stream)
            nursery.cancel_scope.cancel()
