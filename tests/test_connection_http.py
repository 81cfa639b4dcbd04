"""The HTTP transport and the fallback to it (issue 15), against the embedded server.

Every test runs the same scripted conversation as the WebSocket tests (``tests/helpers.py``)
over in-memory streams, with trio's MockClock where time matters. ``executed`` is the ledger
of tool calls: a call that appears twice there ran twice, and a call from a partial stream
would appear with an id no returned response carried.
"""

# Asserts read ``expected == actual``, the expected constant first (docs/faults.md#test-hygiene).

from __future__ import annotations

import subprocess
import sys

import pytest
import trio

from orchestrator.core.connection import ConnectionSettings
from orchestrator.core.observe import (
    ConnectionReconnecting,
    TransportFellBack,
    TurnRetried,
)
from orchestrator.core.protocol import MessageItem
from orchestrator.core.server import Fault, ServerConfig
from orchestrator.core.session import Session
from orchestrator.errors import (
    AuthenticationError,
    HandshakeRejected,
    RemoteProtocolError,
    ServerError,
)

from .helpers import PROMPTS, SCRIPT, converse, memory_agent, normalised, scripted_session

HTTP = ConnectionSettings(transport="http", backoff_initial=0.1)
AUTO = ConnectionSettings(transport="auto", backoff_initial=0.1)


async def _conversation(
    config: ServerConfig, settings: ConnectionSettings, *, store: bool = False
) -> tuple[list[tuple[object, ...]], list[str], object, object]:
    """Run the scripted conversation; its transcript, tool ledger and statistics."""
    executed: list[str] = []
    with trio.fail_after(120):
        async with memory_agent(config, settings) as (server, connection, recorder):
            session = scripted_session()
            session.store = store
            await converse(connection, session, PROMPTS, executed)
            statistics = connection.statistics()
    return normalised(session.transcript), executed, statistics, (server, recorder)


async def test_http_runs_the_same_conversation_as_websocket(autojump_clock):
    """Tool rounds over HTTP give the same transcript as over WebSocket, each call once, one
    request per turn and no socket."""
    config = ServerConfig(script=SCRIPT, seed=1)
    over_ws, executed_ws, _, _ = await _conversation(config, ConnectionSettings())
    over_http, executed_http, statistics, (server, _) = await _conversation(config, HTTP)
    assert over_ws == over_http
    assert len(executed_ws) == len(executed_http) == len(set(executed_http))
    assert ("http", 0, statistics.turns) == (
        statistics.transport,
        statistics.sockets_opened,
        statistics.http_requests,
    )
    # Each body is read to its end, so one kept-alive HTTP connection carries every turn.
    served = server.statistics()
    assert (1, statistics.turns) == (served.http_connections, served.http_requests)


@pytest.mark.parametrize("store", [False, True])
async def test_http_sends_the_history_or_continues_by_id(autojump_clock, store):
    """``store=false`` resends the whole transcript every turn (nothing holds it between
    requests); ``store=true`` continues the stored chain by ``previous_response_id`` and sends
    only the new items."""
    config = ServerConfig(script=SCRIPT, seed=1, record_messages=True)
    _, _, _, (server, _) = await _conversation(config, HTTP, store=store)
    creates = [event for _, event in server.received]
    assert creates
    previous = [getattr(create, "previous_response_id", None) for create in creates]
    inputs = [len(create.input) for create in creates]
    if store:
        assert all(isinstance(p, str) for p in previous[1:])
        assert max(inputs) <= 3
    else:
        assert all(not isinstance(p, str) for p in previous)
        assert inputs == sorted(inputs)
        assert inputs[-1] > 10


async def test_auto_falls_back_to_http_when_the_endpoint_refuses_websocket(autojump_clock):
    """An endpoint that answers the upgrade with 426 (Ollama's way): the first turn goes on
    over HTTP without a wait or a failed attempt, one event and one log line say so, and the
    whole conversation runs with each tool call once."""
    config = ServerConfig(script=SCRIPT, seed=1, websocket=False)
    reference, _, _, _ = await _conversation(ServerConfig(script=SCRIPT, seed=1), HTTP)
    transcript, executed, statistics, (_server, recorder) = await _conversation(config, AUTO)
    assert reference == transcript
    assert len(executed) == len(set(executed))
    fell_back = recorder.of(TransportFellBack)
    assert 1 == len(fell_back)
    assert "426" in fell_back[0].reason
    assert [] == recorder.of(ConnectionReconnecting)
    # One WebSocket attempt (refused), then HTTP only.
    assert ("http", 1) == (statistics.transport, statistics.sockets_opened)


async def test_a_forced_websocket_transport_does_not_fall_back(autojump_clock):
    """With ``transport="websocket"`` the same 426 fails the turn with the refusal."""
    config = ServerConfig(script=SCRIPT, seed=1, websocket=False)
    settings = ConnectionSettings(transport="websocket")
    with trio.fail_after(60):
        async with memory_agent(config, settings) as (_, connection, recorder):
            with pytest.raises(HandshakeRejected) as caught:
                await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
    assert 426 == caught.value.status
    assert [] == recorder.of(TransportFellBack)


@pytest.mark.parametrize("status", [404, 405, 426])
async def test_fallback_mid_run_keeps_every_turn_exactly_once(autojump_clock, status):
    """A socket lost mid-stream, and the reconnect's upgrade refused (a WebSocket gateway
    replaced by an HTTP-only one): the turn goes on over HTTP, discarding the partial
    output, and the conversation ends as it would have with no fault, each call once."""
    faults = (
        Fault("abort", after_events=4, connection=1, response=3),
        Fault("reject", status=status, connection=2),
    )
    reference, _, _, _ = await _conversation(ServerConfig(script=SCRIPT, seed=1), AUTO)
    config = ServerConfig(script=SCRIPT, seed=1, faults=faults)
    transcript, executed, statistics, (_, recorder) = await _conversation(config, AUTO)
    assert reference == transcript
    assert len(executed) == len(set(executed))
    assert 1 == len(recorder.of(TransportFellBack))
    assert 1 == len(recorder.of(TurnRetried))
    # The socket lost mid-stream, the refused one, then HTTP only.
    assert ("http", 2) == (statistics.transport, statistics.sockets_opened)


# -- faults over HTTP: the WebSocket transport's recovery tests, where they apply ----------------


async def test_http_stream_cut_mid_response_is_retried_without_running_its_calls(autojump_clock):
    """The TCP connection dropped after a few SSE events: the partial output is abandoned,
    the turn is sent again after a back-off, and no call runs from the cut stream."""
    fault = Fault("abort", after_events=5, response=1)
    reference, _, _, _ = await _conversation(ServerConfig(script=SCRIPT, seed=1), HTTP)
    config = ServerConfig(script=SCRIPT, seed=1, faults=(fault,))
    transcript, executed, _, (_, recorder) = await _conversation(config, HTTP)
    assert reference == transcript
    assert len(executed) == len(set(executed))
    assert 1 == len(recorder.of(TurnRetried))
    assert 1 == len(recorder.of(ConnectionReconnecting))


@pytest.mark.parametrize("status", [500, 503])
async def test_http_5xx_is_retried(autojump_clock, status):
    """A request answered with a server error status is retried after a back-off."""
    config = ServerConfig(script=SCRIPT, seed=1, faults=(Fault("reject", status=status),))
    transcript, _, _, (_, recorder) = await _conversation(config, HTTP)
    reference, _, _, _ = await _conversation(ServerConfig(script=SCRIPT, seed=1), HTTP)
    assert reference == transcript
    assert 1 == len(recorder.of(ConnectionReconnecting))


async def test_http_429_waits_exactly_its_retry_after(autojump_clock):
    """A 429 with ``retry-after: 7`` waits 7 s (not the back-off) and then succeeds."""
    fault = Fault("reject", status=429, error_code="rate_limit_exceeded", retry_after=7)
    config = ServerConfig(script=SCRIPT, seed=1, faults=(fault,))
    with trio.fail_after(60):
        async with memory_agent(config, HTTP) as (_, connection, recorder):
            started = trio.current_time()
            response = await connection.run_turn(
                Session(model="local-echo"), [MessageItem.user("hi")]
            )
            waited = trio.current_time() - started
    assert response.text
    assert [7.0] == [event.delay for event in recorder.of(ConnectionReconnecting)]
    assert waited >= 7.0


async def test_http_error_event_mid_stream_is_a_server_error(autojump_clock):
    """An error that is not retryable ends the turn with the server's code, over HTTP as over
    WebSocket."""
    fault = Fault("error", error_code="invalid_prompt", status=400, after_events=2)
    config = ServerConfig(script=SCRIPT, seed=1, faults=(fault,))
    with trio.fail_after(60):
        async with memory_agent(config, HTTP) as (_, connection, _):
            with pytest.raises(ServerError) as caught:
                await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
    assert "invalid_prompt" == caught.value.code


async def test_http_malformed_sse_is_a_protocol_error(autojump_clock):
    """Garbage in the event stream fails the turn with RemoteProtocolError and leaves the
    session as it was."""
    fault = Fault("send_raw", payload="{not json", after_events=1)
    config = ServerConfig(script=SCRIPT, seed=1, faults=(fault,))
    session = scripted_session()
    with trio.fail_after(60):
        async with memory_agent(config, HTTP) as (_, connection, _):
            with pytest.raises(RemoteProtocolError):
                await connection.run_turn(session, [MessageItem.user("hi")])
    assert 0 == len(session)


async def test_http_silent_stream_hits_the_idle_deadline_and_is_retried(autojump_clock):
    """A stream that stalls longer than ``idle_timeout`` is lost; the turn runs again."""
    fault = Fault("stall", after_events=2, duration=None, response=1)
    config = ServerConfig(script=SCRIPT, seed=1, faults=(fault,))
    settings = ConnectionSettings(transport="http", idle_timeout=30, backoff_initial=0.1)
    with trio.fail_after(300):
        async with memory_agent(config, settings) as (_, connection, recorder):
            response = await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
    assert response.function_calls
    reasons = [event.reason for event in recorder.of(TurnRetried)]
    assert 1 == len(reasons)
    assert "idle" in reasons[0]


async def test_http_unknown_previous_response_id_replays_once(autojump_clock):
    """``store=true`` and a chain the server no longer has: one replay of the transcript over
    HTTP, as over WebSocket, and the conversation goes on with each call once."""
    lost = Fault("error", error_code="previous_response_not_found", status=400, response=2)
    config = ServerConfig(script=SCRIPT, seed=1, faults=(lost,), record_messages=True)
    with trio.fail_after(60):
        async with memory_agent(config, HTTP) as (server, connection, recorder):
            session = scripted_session()
            session.store = True
            executed: list[str] = []
            await converse(connection, session, PROMPTS[:2], executed)
    reasons = [event.reason for event in recorder.of(TurnRetried)]
    assert ["previous_response_not_found"] == reasons
    assert len(executed) == len(set(executed))
    creates = [event for _, event in server.received]
    # The replay is a new chain carrying the whole transcript.
    assert not isinstance(creates[2].previous_response_id, str)
    assert len(creates[2].input) > len(creates[1].input)


async def test_cancelling_an_http_turn_leaves_the_session_and_the_connection_usable(
    autojump_clock,
):
    """A turn cancelled mid-stream over HTTP changes nothing in the session; the next turn
    runs normally (a new HTTP connection replaces the abandoned one)."""
    slow = Fault("stall", after_events=3, duration=60, response=1)
    config = ServerConfig(script=SCRIPT, seed=1, faults=(slow,))
    session = scripted_session()
    with trio.fail_after(300):
        async with memory_agent(config, HTTP) as (_, connection, _):
            with trio.move_on_after(5) as scope:
                await connection.run_turn(session, [MessageItem.user("Weather in Lisbon?")])
            assert scope.cancelled_caught
            assert (0, 0) == (len(session), session.turns)
            response = await connection.run_turn(session, [MessageItem.user("Weather in Lisbon?")])
    assert response.function_calls
    assert 1 == session.turns


def test_the_websocket_path_never_imports_the_http_client():
    """httpx2 is loaded only when a connection goes over HTTP: a WebSocket run's process
    never imports it (it stays off the hot path and out of the start-up time)."""
    script = (
        "import sys, trio\n"
        "from orchestrator.lowlevel import MessageItem, Session, open_connection, "
        "open_local_server\n"
        "async def main():\n"
        "    async with open_local_server() as server, open_connection(\n"
        "        server.url, server.token) as connection:\n"
        "        await connection.run_turn(Session(model='local-echo'), "
        "[MessageItem.user('hi')])\n"
        "trio.run(main)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('httpx', 'httpcore'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert 0 == done.returncode, done.stderr
    assert "[]" == done.stdout.strip()


async def test_a_rejected_key_over_http_fails_at_once_naming_only_its_fingerprint(autojump_clock):
    """401 to a POST: AuthenticationError after one request, as at a WebSocket handshake;
    the message names the key by its fingerprint, never the key."""
    key = "sk-wrong-key-0123456789abcdef"
    config = ServerConfig(script=SCRIPT, seed=1)
    with trio.fail_after(60):
        async with memory_agent(config, HTTP, token=key) as (server, connection, _):
            with pytest.raises(AuthenticationError) as caught:
                await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
            requests = server.statistics().http_requests
    assert (401, 1) == (caught.value.status, requests)
    assert "key fingerprint" in str(caught.value)
    assert key not in str(caught.value)
