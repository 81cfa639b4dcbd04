"""The HTTP transport against peers the embedded server does not imitate (issue 15 review):
a framework that refuses an unknown WebSocket route with a bare 403, a stream kept alive by
comments alone, data that is only an error. Each peer is a few bytes written by hand on an
in-memory stream, under trio's MockClock."""

# Asserts read ``expected == actual``, the expected constant first (docs/faults.md#test-hygiene).

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from orchestrator.core.connection import ConnectionSettings, open_connection
from orchestrator.core.observe import EventBus, TransportFellBack, TurnRetried
from orchestrator.core.protocol import MessageItem
from orchestrator.core.server import Fault, LocalServer, ServerConfig
from orchestrator.core.session import Session
from orchestrator.errors import ServerError
from orchestrator.testing import memory_connector

from .helpers import LOCAL_URL, SCRIPT, Recorder, converse, memory_agent, scripted_session

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

BARE_403 = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
CREATED = (
    b'data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1",'
    b'"object":"response","created_at":0,"status":"in_progress","model":"m","output":[]}}\n\n'
)


async def _read_request(stream: trio.abc.Stream) -> bytes:
    """One request's head and its content-length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += await stream.receive_some()
    return head


def _peer(
    nursery: trio.Nursery, serve: Callable[[trio.abc.Stream], Awaitable[None]]
) -> Callable[[], Awaitable[trio.abc.Stream]]:
    async def connect() -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(serve, server)
        await trio.lowlevel.checkpoint()
        return client

    return connect


async def test_a_bare_403_to_the_upgrade_falls_back_to_http(autojump_clock):
    """Starlette with uvicorn (vLLM, SGLang, LiteLLM) refuses an upgrade it has no route for
    with an empty 403: under ``auto`` that is no WebSocket mode, not a bad key. The turn
    goes on over HTTP and the conversation completes."""
    server = LocalServer.from_config(ServerConfig(script=SCRIPT, seed=1))
    recorder = Recorder()
    bus = EventBus()
    bus.add_listener(recorder)
    executed: list[str] = []

    async def refuse(stream: trio.abc.Stream) -> None:
        await _read_request(stream)
        await stream.send_all(BARE_403)
        await stream.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            served = memory_connector(server, nursery)
            opened = 0

            async def connect() -> trio.abc.Stream:
                nonlocal opened
                opened += 1
                return await (_peer(nursery, refuse) if opened == 1 else served)()

            settings = ConnectionSettings(transport="auto")
            async with open_connection(
                LOCAL_URL, server.token, settings=settings, connector=connect, events=bus
            ) as connection:
                session = scripted_session()
                await converse(connection, session, ("Weather in Lisbon?",), executed)
                statistics = connection.statistics()
            nursery.cancel_scope.cancel()
    assert ["the WebSocket upgrade was answered with HTTP 403"] == [
        event.reason for event in recorder.of(TransportFellBack)
    ]
    assert "http" == statistics.transport
    assert 1 == len(executed)


async def test_a_stream_kept_alive_by_comments_still_hits_the_idle_deadline(autojump_clock):
    """A stuck upstream behind a proxy that sends SSE comments every few seconds (OpenRouter
    does) is as dead as a silent one: the idle deadline counts events, not bytes."""

    async def stall(stream: trio.abc.Stream) -> None:
        await _read_request(stream)
        await stream.send_all(SSE_HEAD + CREATED)
        while True:
            await trio.sleep(4)
            await stream.send_all(b": PROCESSING\n\n")

    settings = ConnectionSettings(transport="http", idle_timeout=30, max_attempts=1)
    recorder = Recorder()
    bus = EventBus()
    bus.add_listener(recorder)
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            async with open_connection(
                LOCAL_URL,
                "sk-test",
                settings=settings,
                connector=_peer(nursery, stall),
                events=bus,
                rng=random.Random(0),
            ) as connection:
                started = trio.current_time()
                with pytest.raises(Exception, match="idle deadline"):
                    await connection.run_turn(Session(model="m"), [MessageItem.user("hi")])
                waited = trio.current_time() - started
            nursery.cancel_scope.cancel()
    assert 30 <= waited < 34


async def test_data_that_is_only_an_error_ends_the_turn_as_that_error(autojump_clock):
    """``data: {"error": {...}}`` with no ``type`` (some servers stream errors so) is the
    server's error, with its code, as the official SDK reads it: not a protocol error."""

    async def fail(stream: trio.abc.Stream) -> None:
        await _read_request(stream)
        error = b'data: {"error":{"message":"prompt refused","code":"invalid_prompt"}}\n\n'
        await stream.send_all(SSE_HEAD + CREATED + error)
        await stream.aclose()

    settings = ConnectionSettings(transport="http")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            async with open_connection(
                LOCAL_URL, "sk-test", settings=settings, connector=_peer(nursery, fail)
            ) as connection:
                with pytest.raises(ServerError) as caught:
                    await connection.run_turn(Session(model="m"), [MessageItem.user("hi")])
            nursery.cancel_scope.cancel()
    assert ("invalid_prompt", "prompt refused") == (caught.value.code, caught.value.message)


@pytest.mark.parametrize(("status", "code"), [(502, "bad_gateway"), (429, "429")])
async def test_http_gateway_codes_on_retryable_statuses_are_retried(autojump_clock, status, code):
    """A 502 ``bad_gateway`` or Azure's 429 with code ``"429"``: the status says "later"."""
    fault = Fault("reject", status=status, error_code=code, retry_after=2)
    config = ServerConfig(script=SCRIPT, seed=1, faults=(fault,))
    settings = ConnectionSettings(transport="http", backoff_initial=0.1)
    with trio.fail_after(60):
        async with memory_agent(config, settings) as (_, connection, recorder):
            response = await connection.run_turn(
                scripted_session(), [MessageItem.user("Weather in Lisbon?")]
            )
    assert response.function_calls
    assert 1 == len(recorder.of(TurnRetried))


async def test_a_refused_continuation_keeps_its_stored_chain(autojump_clock):
    """``store=true`` and a 429 answered before anything ran: the retry continues the
    stored chain by id with only the new items, instead of resending the transcript."""
    fault = Fault("reject", status=429, error_code="rate_limit_exceeded", response=2)
    config = ServerConfig(script=SCRIPT, seed=1, faults=(fault,), record_messages=True)
    settings = ConnectionSettings(transport="http", backoff_initial=0.1)
    executed: list[str] = []
    with trio.fail_after(60):
        async with memory_agent(config, settings) as (server, connection, _):
            session = scripted_session()
            session.store = True
            await converse(connection, session, ("Weather in Lisbon?",), executed)
    creates = [event for _, event in server.received]
    # The refused request was never processed, so the server recorded the retry only.
    assert 2 == len(creates)
    assert isinstance(creates[1].previous_response_id, str)
    assert 1 == len(creates[1].input)
    assert 1 == len(executed)


async def test_a_rotation_that_finds_no_websocket_closes_the_old_socket(autojump_clock):
    """Rotation is due and the endpoint now refuses upgrades (426): the turn goes on over
    HTTP and the expiring socket is closed, not left open with its pings."""
    faults = (Fault("reject", status=426, connection=2), Fault("reject", status=426, connection=3))
    config = ServerConfig(script=SCRIPT, seed=1, faults=faults, max_connection_age=100)
    settings = ConnectionSettings(
        transport="auto", max_age=100, rotation_margin=20, warmup_lead=5, backoff_initial=0.1
    )
    with trio.fail_after(600):
        async with memory_agent(config, settings) as (server, connection, recorder):
            session = scripted_session()
            await connection.run_turn(session, [MessageItem.user("Weather in Lisbon?")])
            await trio.sleep(85)
            await connection.run_turn(session, [MessageItem.user("And Porto?")])
            active = server.statistics().connections_active
            transport = connection.statistics().transport
    assert ("http", 0) == (transport, active)
    assert 1 == len(recorder.of(TransportFellBack))


async def test_a_connector_carries_http_turns_to_a_wss_endpoint(autojump_clock):
    """With a connector of its own (in-memory streams, a tunnel), a ``wss://`` endpoint's
    HTTP turns go over the connector's streams as they are: no TLS is started over them."""
    server = LocalServer.from_config(ServerConfig(script=SCRIPT, seed=1))
    settings = ConnectionSettings(transport="http")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            async with open_connection(
                "wss://api.example.com/v1/responses",
                server.token,
                settings=settings,
                connector=memory_connector(server, nursery),
            ) as connection:
                response = await connection.run_turn(
                    scripted_session(), [MessageItem.user("Weather in Lisbon?")]
                )
            nursery.cancel_scope.cancel()
    assert response.function_calls
    assert 1 == server.statistics().http_requests
