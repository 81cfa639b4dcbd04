"""The agent connection: turns, rotation before expiry, recovery after loss
(docs/recovery.md#the-matrix)."""

from __future__ import annotations

import msgspec
import pytest
import trio
import trio.testing
import trio_websocket

from orchestrator.core.connection import AttemptAbandoned, ConnectionSettings, open_connection
from orchestrator.core.endpoint import resolve_api_key, resolve_endpoint
from orchestrator.core.logging import Secret
from orchestrator.core.observe import (
    ConnectionClosed,
    ConnectionOpened,
    ConnectionReconnecting,
    ConnectionRotated,
    EventBus,
    TranscriptReplayed,
    TurnFinished,
    TurnStarted,
    WarmupFinished,
)
from orchestrator.core.protocol.codec import decode_client_event, encode_text, raw
from orchestrator.core.protocol.events import (
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    OutputTextDelta,
    ResponseCompleted,
    ResponseCreate,
    ResponseCreated,
    ResponseObject,
)
from orchestrator.core.server import (
    Fault,
    LatencyModel,
    LocalServer,
    ServerConfig,
    open_local_server,
)
from orchestrator.core.session import Session
from orchestrator.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLost,
    RemoteProtocolError,
    ServerError,
    TurnFailed,
)
from orchestrator.testing import capture_logs

from .helpers import (
    LOCAL_URL,
    PROMPTS,
    SCRIPT,
    Recorder,
    converse,
    memory_agent,
    normalised,
    scripted_session,
)

FAST = ConnectionSettings(backoff_initial=0.1, backoff_max=1.0, max_attempts=8)


async def golden_transcript() -> list[tuple[object, ...]]:
    executed: list[str] = []
    session = scripted_session()
    async with memory_agent(settings=FAST) as (_server, connection, _events):
        await converse(connection, session, PROMPTS, executed)
    return normalised(session.transcript)


# -- basics over real TCP ----------------------------------------------------------------------


async def test_turns_over_loopback_continue_by_id():
    """A tool round trip over TCP sends only the new items with previous_response_id."""
    async with open_local_server(record_messages=True, script=SCRIPT) as running:
        async with open_connection(running.url, running.token, agent="a1") as connection:
            session = scripted_session()
            executed: list[str] = []
            with trio.fail_after(10):
                await converse(connection, session, PROMPTS[:1], executed)
        creates = [e for _, e in running.server.received if isinstance(e, ResponseCreate)]
    assert 2 == len(creates)
    first, second = creates
    assert msgspec.UNSET == first.previous_response_id
    call = session.transcript[1]
    assert isinstance(call, FunctionCallItem)
    assert executed[0] == call.call_id
    assert isinstance(second.input, list)
    assert 1 == len(second.input)  # only the function_call_output
    assert isinstance(second.previous_response_id, str)
    answer = session.transcript[-1]
    assert isinstance(answer, MessageItem)
    assert "Lisbon is sunny and 21 degrees today." == answer.text
    assert 1 == running.statistics().connections_opened
    assert 2 == connection.statistics().turns


async def test_every_create_resends_model_instructions_and_tools():
    """Instructions and tools are not inherited by previous_response_id: sent every turn."""
    async with open_local_server(record_messages=True, script=SCRIPT) as running:
        async with open_connection(running.url, running.token) as connection:
            await converse(connection, scripted_session(), PROMPTS[:1], [])
        creates = [e for _, e in running.server.received if isinstance(e, ResponseCreate)]
    assert creates
    for create in creates:
        assert "local-scripted" == create.model
        assert "Answer about the weather." == create.instructions
        assert isinstance(create.tools, list)
        assert ["lookup"] == [tool.name for tool in create.tools]
        assert create.store is False


async def test_second_concurrent_turn_is_refused_at_once(autojump_clock):
    """One response in flight per socket: a concurrent run_turn raises BusyResourceError."""
    config = ServerConfig(model="echo", latency=LatencyModel(time_to_first_token=5.0))
    async with memory_agent(config) as (_server, connection, _events):
        session = Session(model="echo")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run_turn, session, (MessageItem.user("slow"),))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError, match="turn in flight on agent"):
                await connection.run_turn(session, [MessageItem.user("second")])
    assert 2 == len(session.transcript)


# -- planned rotation ----------------------------------------------------------------------------


async def test_ten_virtual_hours_rotate_at_turn_boundaries_without_expiry(autojump_clock):
    """With the real 3600 s limit, a 10-hour conversation rotates about ten times, only
    between turns, and the server never has to send its expiry error
    (docs/recovery.md#planned-rotation)."""
    config = ServerConfig(model="echo", max_connection_age=3600, seed=3)
    settings = ConnectionSettings(rotation_margin=300, warmup_lead=30)
    async with memory_agent(config, settings) as (server, connection, recorder):
        session = Session(model="echo")
        turn_sockets: list[int] = []
        while trio.current_time() < 36_000:
            with trio.fail_after(60):
                await connection.run_turn(session, [MessageItem.user("tick")])
            turn_sockets.append(connection.statistics().socket or 0)
            await trio.sleep(240)
        rotations = recorder.of(ConnectionRotated)
    assert 10 <= len(rotations) <= 11
    assert "websocket_connection_limit_reached" not in server.statistics().errors_sent
    assert 0 == server.statistics().expiries
    assert all(3600 - 300 - 30 <= rotation.age < 3600 - 300 for rotation in rotations)
    # Every warm-up was adopted: no turn after a rotation had to replay the transcript.
    assert [] == recorder.of(TranscriptReplayed)
    assert len(rotations) == len(recorder.of(WarmupFinished))
    assert 2 * len(turn_sockets) == len(session.transcript)
    # Rotations never cut a turn: every TurnStarted has its TurnFinished on the same socket.
    assert len(recorder.of(TurnStarted)) == len(recorder.of(TurnFinished))


async def test_without_rotation_every_expiry_is_recovered(autojump_clock):
    """With planned rotation off, the server's expiry errors are all recovered by replay."""
    config = ServerConfig(model="echo", max_connection_age=3600, seed=3)
    settings = ConnectionSettings(rotation_margin=None, backoff_initial=0.1)
    async with memory_agent(config, settings) as (server, connection, recorder):
        session = Session(model="echo")
        turns = 0
        while trio.current_time() < 36_000:
            with trio.fail_after(60):
                response = await connection.run_turn(session, [MessageItem.user(f"n{turns}")])
            assert f"n{turns}" == response.text
            turns += 1
            await trio.sleep(290)
    assert server.statistics().expiries >= 9
    assert [] == recorder.of(ConnectionRotated)
    assert len(recorder.of(TranscriptReplayed)) >= 9
    assert 2 * turns == len(session.transcript)


async def test_long_turn_is_never_cut_by_rotation(autojump_clock):
    """A 10-minute turn straddling the rotation point finishes on its socket
    (docs/recovery.md#planned-rotation)."""
    config = ServerConfig(
        model="echo",
        max_connection_age=3600,
        latency=LatencyModel(tokens_per_second=1 / 60),  # one word a minute
    )
    settings = ConnectionSettings(rotation_margin=900, warmup_lead=60, idle_timeout=600)
    async with memory_agent(config, settings) as (server, connection, recorder):
        session = Session(model="echo")
        index = 0
        while trio.current_time() < 3 * 3600:
            with trio.fail_after(4000):
                await connection.run_turn(
                    session, [MessageItem.user(f"turn {index} takes nine words of streaming")]
                )
            index += 1
    assert 0 == server.statistics().expiries
    assert len(recorder.of(ConnectionRotated)) >= 3
    assert [] == [e for e in recorder.events if type(e).__name__ == "TurnRetried"]


ROTATING = ConnectionSettings(rotation_margin=300, warmup_lead=30, backoff_initial=0.1)


async def test_standby_lost_during_its_warm_up_does_not_crash_the_connection(autojump_clock):
    """A standby socket that breaks while warming up is dropped with a warning; the error
    stays out of the connection's nursery and the next turn rotates to a fresh socket."""
    fault = Fault("abort", connection=2, response=1, after_events=1)
    config = ServerConfig(model="echo", max_connection_age=3600, faults=(fault,))
    async with memory_agent(config, ROTATING) as (server, connection, _recorder):
        session = Session(model="echo")
        await connection.run_turn(session, [MessageItem.user("one")])
        await trio.sleep(3300)  # the standby was prepared at 3270 s and lost
        response = await connection.run_turn(session, [MessageItem.user("two")])
    assert "two" == response.text
    assert 4 == len(session.transcript)
    assert 1 == server.statistics().faults_fired


def _unclosed(recorder: Recorder) -> list[int]:
    """The sockets reported opened but never reported closed."""
    closed = {event.connection for event in recorder.of(ConnectionClosed)}
    return [
        event.connection
        for event in recorder.of(ConnectionOpened)
        if event.connection not in closed
    ]


async def test_standby_abandoned_mid_warm_up_is_closed(autojump_clock):
    """A reconnect while a standby is still warming up cancels its preparation, and the
    half-prepared socket is closed rather than left open until the connection ends."""
    faults = (
        Fault("stall", connection=2, response=1, after_events=1),  # the warm-up hangs
        Fault("abort", connection=1, response=2, after_events=1),  # the turn loses socket 1
    )
    config = ServerConfig(model="echo", max_connection_age=3600, faults=faults)
    async with memory_agent(config, ROTATING) as (server, connection, recorder):
        session = Session(model="echo")
        await connection.run_turn(session, [MessageItem.user("one")])
        await trio.sleep(3280)  # the standby (socket 2) is warming up since 3270 s
        response = await connection.run_turn(session, [MessageItem.user("two")])
        await trio.testing.wait_all_tasks_blocked()
        open_during = _unclosed(recorder)
    assert "two" == response.text
    assert 2 == server.statistics().faults_fired
    assert [3] == open_during
    assert [] == _unclosed(recorder)


# -- recovery matrix -----------------------------------------------------------------------------


def _first_turn_events() -> int:
    # created, in_progress, item.added, 3 argument deltas, arguments.done, item.done, completed
    return 9


@pytest.mark.parametrize("after_events", [0, 1, 4, _first_turn_events() - 1])
async def test_abort_mid_turn_is_recovered_by_replay(autojump_clock, after_events):
    """docs/recovery.md#lost-sockets: a TCP abort (1006) after k events: reconnect, replay, exactly
    one answer."""
    golden = await golden_transcript()
    config = ServerConfig(
        script=SCRIPT,
        seed=1,
        faults=(Fault("abort", connection=1, response=1, after_events=after_events),),
    )
    async with memory_agent(config, FAST) as (server, connection, _recorder):
        session = scripted_session()
        executed: list[str] = []
        await converse(connection, session, PROMPTS, executed)
    assert golden == normalised(session.transcript)
    assert 1 == connection.statistics().reconnects
    assert 2 == server.statistics().connections_opened
    assert len(executed) == len(set(executed))
    calls = [item.call_id for item in session.transcript if isinstance(item, FunctionCallItem)]
    assert sorted(calls) == sorted(executed)


async def test_abort_after_completed_is_survived(autojump_clock):
    """docs/recovery.md#lost-sockets: the socket dies right after response.completed: that turn
    counts, the next replays."""
    golden = await golden_transcript()
    config = ServerConfig(
        script=SCRIPT,
        seed=1,
        faults=(Fault("abort", connection=1, response=1, after_events=_first_turn_events()),),
    )
    async with memory_agent(config, FAST) as (_server, connection, recorder):
        session = scripted_session()
        await converse(connection, session, PROMPTS, [])
    assert golden == normalised(session.transcript)
    assert 1 == len(recorder.of(TranscriptReplayed))


@pytest.mark.parametrize("code", [1001, 1005, 1011, 1012, 1013])
async def test_recoverable_close_codes_mid_turn(autojump_clock, code):
    """docs/recovery.md#lost-sockets: closes with recoverable codes mid-stream reconnect and
    replay."""
    golden = await golden_transcript()
    config = ServerConfig(
        script=SCRIPT,
        seed=1,
        faults=(Fault("close", code=code, connection=1, response=2, after_events=3),),
    )
    async with memory_agent(config, FAST) as (_server, connection, recorder):
        session = scripted_session()
        await converse(connection, session, PROMPTS, [])
    assert golden == normalised(session.transcript)
    reconnecting = recorder.of(ConnectionReconnecting)
    assert [code] == [event.code for event in reconnecting]


@pytest.mark.parametrize("code", [1002, 1003, 1007, 1008, 4000])
async def test_final_close_codes_fail_the_turn_naming_the_code(autojump_clock, code):
    """docs/recovery.md#final-close-codes: final close codes fail the turn with a typed error; no
    reconnect loop."""
    config = ServerConfig(
        script=SCRIPT,
        seed=1,
        faults=(Fault("close", code=code, connection=1, response=1, after_events=2),),
    )
    async with memory_agent(config, FAST) as (server, connection, _recorder):
        session = scripted_session()
        with pytest.raises(ConnectionLost) as caught:
            await connection.run_turn(session, [MessageItem.user("hi")])
    assert code == caught.value.code
    assert str(code) in str(caught.value)
    assert 1 == server.statistics().connections_opened
    assert 0 == len(session.transcript)


async def test_clean_close_before_terminal_is_retried_once(autojump_clock):
    """docs/recovery.md#final-close-codes: a 1000 close before the terminal event gets one retry, a
    second fails the turn."""
    once = ServerConfig(
        script=SCRIPT, seed=1, faults=(Fault("close", code=1000, response=1, after_events=2),)
    )
    async with memory_agent(once, FAST) as (_server, connection, _recorder):
        session = scripted_session()
        await connection.run_turn(session, [MessageItem.user("hi")])
    assert 2 == len(session.transcript)
    twice = ServerConfig(
        script=SCRIPT,
        seed=1,
        faults=(Fault("close", code=1000, response=1, after_events=2, times=2),),
    )
    async with memory_agent(twice, FAST) as (server, connection, _recorder):
        session = scripted_session()
        with pytest.raises(ConnectionLost, match="1000"):
            await connection.run_turn(session, [MessageItem.user("hi")])
    assert 2 == server.statistics().connections_opened


async def test_oversized_server_message_fails_with_1009(autojump_clock):
    """docs/recovery.md#final-close-codes: a message above max_message_size closes with 1009; not
    retried as is."""
    settings = ConnectionSettings(max_message_size=64 * 1024)
    config = ServerConfig(
        script=SCRIPT,
        seed=1,
        faults=(Fault("oversize", size=200 * 1024, response=1, after_events=1),),
    )
    async with memory_agent(config, settings) as (server, connection, _recorder):
        with pytest.raises(ConnectionLost) as caught:
            await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
    assert 1009 == caught.value.code
    assert 1 == server.statistics().connections_opened


async def test_message_at_the_size_limit_passes(autojump_clock):
    """docs/recovery.md#final-close-codes: oversize(cap) itself is fine: only strictly larger
    messages are refused."""
    settings = ConnectionSettings(max_message_size=64 * 1024)
    config = ServerConfig(
        script=SCRIPT,
        seed=1,
        faults=(Fault("oversize", size=64 * 1024, response=1, after_events=1),),
    )
    async with memory_agent(config, settings) as (_server, connection, _recorder):
        response = await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
    assert 1 == len(response.function_calls)


async def test_previous_response_not_found_replays_once_on_the_same_socket(autojump_clock):
    """docs/recovery.md#lost-cache: a cache loss is recovered by one full replay on the same
    socket."""
    golden = await golden_transcript()
    async with memory_agent(ServerConfig(script=SCRIPT, seed=1), FAST) as (
        server,
        connection,
        recorder,
    ):
        session = scripted_session()
        response = await connection.run_turn(session, [MessageItem.user(PROMPTS[0])])
        server.drop_caches()
        call = response.function_calls[0]
        await connection.run_turn(
            session,
            [
                FunctionCallOutputItem(
                    call_id=call.call_id, output=f"{call.name} -> {call.arguments}"
                )
            ],
        )
        await converse(connection, session, PROMPTS[1:], [])
    assert golden == normalised(session.transcript)
    assert 1 == server.statistics().errors_sent["previous_response_not_found"]
    assert 1 == server.statistics().connections_opened
    assert 1 == len(recorder.of(TranscriptReplayed))


async def test_second_not_found_on_a_fresh_chain_fails_clearly(autojump_clock):
    """docs/recovery.md#lost-cache: previous_response_not_found on the replayed chain too fails,
    without looping."""
    config = ServerConfig(
        script={"turns": [{"error": {"code": "previous_response_not_found", "status": 400}}]},
        model="scripted",
    )
    async with memory_agent(config, FAST) as (server, connection, _recorder):
        session = scripted_session()
        with pytest.raises(ServerError) as caught:
            await connection.run_turn(session, [MessageItem.user("hi")])
    assert "previous_response_not_found" == caught.value.code
    assert 1 == server.statistics().errors_sent["previous_response_not_found"]


@pytest.mark.parametrize("after_events", [0, 3])
async def test_connection_limit_error_rotates_and_replays(autojump_clock, after_events):
    """docs/recovery.md#expired-connections: websocket_connection_limit_reached at turn start or
    mid-turn: new socket, replay."""
    golden = await golden_transcript()
    fault = Fault(
        "error",
        error_code="websocket_connection_limit_reached",
        status=400,
        connection=1,
        response=2,
        after_events=after_events,
    )
    async with memory_agent(ServerConfig(script=SCRIPT, seed=1, faults=(fault,)), FAST) as (
        server,
        connection,
        _recorder,
    ):
        await trio.sleep(60)  # not a fresh socket: no backoff expected
        session = scripted_session()
        await converse(connection, session, PROMPTS, [])
    assert golden == normalised(session.transcript)
    assert 2 == server.statistics().connections_opened


async def test_connection_limit_on_every_fresh_socket_backs_off_then_fails(autojump_clock):
    """docs/recovery.md#expired-connections: expiry reported again and again by fresh sockets backs
    off, then gives up."""
    fault = Fault("error", error_code="websocket_connection_limit_reached", status=400, times=100)
    settings = ConnectionSettings(max_attempts=4, backoff_initial=1.0, backoff_max=8.0)
    async with memory_agent(ServerConfig(script=SCRIPT, seed=1, faults=(fault,)), settings) as (
        server,
        connection,
        recorder,
    ):
        with pytest.raises(TurnFailed, match="gave up after 4 attempts"):
            await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
    delays = [event.delay for event in recorder.of(ConnectionReconnecting)]
    assert 3 == len(delays)
    assert delays[1] < delays[2]
    assert 4 == server.statistics().connections_opened


async def test_stall_hits_the_idle_deadline_and_recovers(autojump_clock):
    """docs/recovery.md#silent-peers: a silent server mid-stream is dropped after exactly
    idle_timeout, then replayed."""
    settings = ConnectionSettings(idle_timeout=30, ping_interval=None, backoff_initial=0.0001)
    config = ServerConfig(
        script=SCRIPT, seed=1, faults=(Fault("stall", connection=1, response=1, after_events=3),)
    )
    async with memory_agent(config, settings) as (_server, connection, recorder):
        started = trio.current_time()
        response = await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
        elapsed = trio.current_time() - started
    assert 1 == len(response.function_calls)
    assert 30 <= elapsed < 30.01
    assert "idle deadline" in recorder.of(ConnectionReconnecting)[0].reason


async def test_half_open_peer_is_detected_by_keepalive(autojump_clock):
    """docs/recovery.md#silent-peers: a peer that stops answering pings is dropped within ping
    interval + timeout."""
    settings = ConnectionSettings(
        idle_timeout=3600, ping_interval=20, ping_timeout=10, backoff_initial=0.0001
    )
    config = ServerConfig(
        script=SCRIPT,
        seed=1,
        faults=(Fault("blackhole", connection=1, response=1, after_events=3),),
    )
    async with memory_agent(config, settings) as (_server, connection, recorder):
        started = trio.current_time()
        response = await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
        elapsed = trio.current_time() - started
    assert 1 == len(response.function_calls)
    assert elapsed <= 20 + 10 + 0.01
    assert "keepalive" in recorder.of(ConnectionReconnecting)[0].reason


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_rejection_fails_fast_without_retry(autojump_clock, status):
    """docs/recovery.md#handshake-failures: 401/403 at the handshake: a clear auth error and exactly
    one attempt."""
    fault = Fault("reject", status=status, error_code="invalid_api_key", times=10)
    async with memory_agent(ServerConfig(script=SCRIPT, faults=(fault,)), FAST) as (
        server,
        connection,
        _r,
    ):
        with pytest.raises(AuthenticationError) as caught:
            await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
    assert status == caught.value.status
    assert f"HTTP {status}" in str(caught.value)
    assert 1 == server.statistics().handshakes_rejected


async def test_wrong_key_is_rejected_with_a_fingerprint_only(autojump_clock, canary_key):
    """docs/recovery.md#handshake-failures, docs/faults.md#keys-and-endpoints: a wrong key gets 401
    and an error naming only its fingerprint."""
    async with memory_agent(token=canary_key) as (server, connection, _recorder):
        with pytest.raises(AuthenticationError) as caught:
            await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
    message = str(caught.value)
    assert canary_key not in message
    assert canary_key[-4:] in message
    assert "server rejected the API key (HTTP 401)" in message
    assert 1 == server.statistics().handshakes_rejected


@pytest.mark.parametrize(("status", "retry_after"), [(503, None), (429, 7.0)])
async def test_transient_handshake_failures_are_retried(autojump_clock, status, retry_after):
    """docs/recovery.md#handshake-failures: 5xx and 429 at the handshake are retried; Retry-After is
    honoured."""
    fault = Fault("reject", status=status, retry_after=retry_after, times=2)
    async with memory_agent(ServerConfig(script=SCRIPT, faults=(fault,)), FAST) as (
        server,
        connection,
        recorder,
    ):
        started = trio.current_time()
        await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
        elapsed = trio.current_time() - started
    assert 2 == server.statistics().handshakes_rejected
    assert 1 == server.statistics().connections_opened
    if retry_after is not None:
        assert [e.delay for e in recorder.of(ConnectionReconnecting)] == [retry_after, retry_after]
        assert elapsed >= 2 * retry_after


async def test_refused_connections_give_up_after_bounded_attempts(autojump_clock):
    """docs/recovery.md#handshake-failures: connection refused is retried with backoff, then the
    turn fails clearly."""
    attempts = 0

    async def refuse() -> trio.abc.Stream:
        nonlocal attempts
        attempts += 1
        raise OSError(111, "Connection refused")

    settings = ConnectionSettings(max_attempts=5, backoff_initial=0.5, backoff_max=4)
    async with open_connection(
        LOCAL_URL, "sk-test-key-123456", settings=settings, connector=refuse
    ) as connection:
        with pytest.raises(TurnFailed, match="gave up after 5 attempts") as caught:
            await connection.run_turn(Session(model="echo"), [MessageItem.user("hi")])
    assert 5 == attempts
    assert isinstance(caught.value.__cause__, ConnectionLost)


async def test_slow_handshake_times_out_and_is_retried(autojump_clock):
    """docs/recovery.md#handshake-failures: a handshake slower than connect_timeout is abandoned and
    retried."""
    fault = Fault("delay_handshake", duration=60, connection=1)
    settings = ConnectionSettings(connect_timeout=5, backoff_initial=0.0001)
    async with memory_agent(ServerConfig(script=SCRIPT, faults=(fault,)), settings) as (
        _server,
        connection,
        recorder,
    ):
        started = trio.current_time()
        await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
    assert trio.current_time() - started >= 5
    [retry] = recorder.of(ConnectionReconnecting)
    assert "no WebSocket handshake" in retry.reason
    assert 2 == connection.statistics().sockets_opened


@pytest.mark.parametrize(("kind", "code"), [("error", "server_error"), ("fail", "server_error")])
async def test_server_errors_are_retried_with_backoff(autojump_clock, kind, code):
    """docs/recovery.md#server-errors-and-rate-limits: server_error (as an error event or
    response.failed) is retried from a replay."""
    golden = await golden_transcript()
    fault = Fault(kind, error_code=code, status=500, response=2, after_events=4)
    async with memory_agent(ServerConfig(script=SCRIPT, seed=1, faults=(fault,)), FAST) as (
        _s,
        connection,
        _r,
    ):
        session = scripted_session()
        await converse(connection, session, PROMPTS, [])
    assert golden == normalised(session.transcript)
    assert 1 == connection.statistics().retries


async def test_rate_limit_error_honours_retry_after(autojump_clock):
    """docs/recovery.md#server-errors-and-rate-limits: a rate-limit error event waits retry-after
    seconds before retrying."""
    fault = Fault(
        "error", error_code="rate_limit_exceeded", status=429, retry_after=12.5, response=1
    )
    async with memory_agent(ServerConfig(script=SCRIPT, seed=1, faults=(fault,)), FAST) as (
        _s,
        connection,
        _r,
    ):
        started = trio.current_time()
        await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
    assert trio.current_time() - started >= 12.5


async def test_non_retryable_failure_is_surfaced_with_its_code(autojump_clock):
    """response.failed with a non-retryable code raises ServerError; the session is intact."""
    config = ServerConfig(
        model="scripted", script={"turns": [{"failed": {"code": "invalid_prompt"}}]}
    )
    async with memory_agent(config, FAST) as (_server, connection, _recorder):
        session = scripted_session()
        with pytest.raises(ServerError) as caught:
            await connection.run_turn(session, [MessageItem.user("hi")])
    assert "invalid_prompt" == caught.value.code
    assert 0 == len(session.transcript)


async def test_request_errors_are_surfaced_with_status_and_code(autojump_clock):
    """A non-retryable error event surfaces with status and code; the socket stays usable."""
    script = {
        "turns": [
            {"error": {"code": "context_length_exceeded", "status": 400, "message": "too long"}},
        ]
    }
    async with memory_agent(ServerConfig(model="scripted", script=script), FAST) as (
        server,
        connection,
        _recorder,
    ):
        session = scripted_session()
        with pytest.raises(ServerError) as caught:
            await connection.run_turn(session, [MessageItem.user("hi")])
        assert 0 == len(session.transcript)
        with pytest.raises(ServerError):
            await connection.run_turn(session, [MessageItem.user("again")])
    assert (400, "context_length_exceeded") == (caught.value.status, caught.value.code)
    assert "too long" in str(caught.value)
    assert 1 == server.statistics().connections_opened


async def test_garbage_frame_fails_the_turn_and_drops_the_socket(autojump_clock):
    """docs/recovery.md#malformed-and-unknown-events: one malformed frame fails the turn with
    RemoteProtocolError; nothing is committed and the next turn runs on a fresh socket."""
    fault = Fault(
        "send_raw",
        payload='{"type": "response.output_text.delta", "oops',
        response=1,
        after_events=2,
    )
    async with memory_agent(ServerConfig(script=SCRIPT, seed=1, faults=(fault,)), FAST) as (
        server,
        connection,
        _r,
    ):
        session = scripted_session()
        with pytest.raises(RemoteProtocolError):
            await connection.run_turn(session, [MessageItem.user("hi")])
        assert 0 == len(session.transcript)
        await connection.run_turn(session, [MessageItem.user("hi")])
    assert 2 == server.statistics().connections_opened
    assert 2 == len(session.transcript)


async def test_unknown_events_are_ignored(autojump_clock):
    """docs/recovery.md#malformed-and-unknown-events: an unknown event type mid-stream is skipped;
    the turn completes."""
    fault = Fault(
        "send_raw",
        payload='{"type":"response.new_thing","sequence_number":3}',
        response=1,
        after_events=3,
    )
    async with memory_agent(ServerConfig(script=SCRIPT, seed=1, faults=(fault,)), FAST) as (
        _s,
        connection,
        _r,
    ):
        response = await connection.run_turn(scripted_session(), [MessageItem.user("hi")])
    assert 1 == len(response.function_calls)


# -- cancellation -------------------------------------------------------------------------------


async def test_cancelled_turn_leaves_the_session_untouched(autojump_clock):
    """Cancelling mid-stream discards the socket and keeps the session as it was."""
    config = ServerConfig(model="echo", latency=LatencyModel(tokens_per_second=1))
    async with memory_agent(config) as (server, connection, _recorder):
        session = Session(model="echo")
        await connection.run_turn(session, [MessageItem.user("first")])
        before = list(session.transcript)
        seen: list[object] = []
        with trio.CancelScope() as scope:

            def on_event(event: object) -> None:
                seen.append(event)
                if isinstance(event, OutputTextDelta):
                    scope.cancel()

            await connection.run_turn(session, [MessageItem.user("a b c d e f")], on_event=on_event)
        assert scope.cancelled_caught
        assert before == list(session.transcript)
        response = await connection.run_turn(session, [MessageItem.user("third")])
    assert "third" == response.text
    assert 2 == server.statistics().connections_opened
    assert 4 == len(session.transcript)


async def test_observer_is_told_to_discard_partial_output(autojump_clock):
    """Partial output of a lost attempt is followed by AttemptAbandoned, then the new stream."""
    config = ServerConfig(
        script=SCRIPT, seed=1, faults=(Fault("abort", response=1, after_events=5),)
    )
    seen: list[object] = []
    async with memory_agent(config, FAST) as (_server, connection, _recorder):
        await connection.run_turn(
            scripted_session(), [MessageItem.user("hi")], on_event=seen.append
        )
    markers = [index for index, event in enumerate(seen) if isinstance(event, AttemptAbandoned)]
    assert 1 == len(markers)
    assert 5 == markers[0]


# -- configuration and secrets --------------------------------------------------------------------


def test_endpoints_resolve_like_the_sdk():
    """Base URLs map to /responses as the SDK derives them; ws:// to remote hosts is refused."""
    assert "wss://api.openai.com/v1/responses" == resolve_endpoint("https://api.openai.com/v1").url
    assert "ws://127.0.0.1:8765/v1/responses" == resolve_endpoint("http://127.0.0.1:8765/v1").url
    assert "wss://gw.example/responses" == resolve_endpoint("wss://gw.example/responses").url
    endpoint = resolve_endpoint("wss://gw.example:9443/v1/responses?x=1")
    assert (9443, "/v1/responses?x=1", True) == (endpoint.port, endpoint.resource, endpoint.secure)
    with pytest.raises(ConfigurationError, match="refusing ws:// to remote host") as caught:
        resolve_endpoint("ws://10.0.0.8/v1")
    assert "config.insecure" == caught.value.code
    assert "10.0.0.8" == resolve_endpoint("ws://10.0.0.8/v1", allow_insecure=True).host
    with pytest.raises(ConfigurationError, match="credentials in the URL"):
        resolve_endpoint("wss://user:pw@gw.example/v1")


def test_endpoint_names_are_still_importable_from_the_connection_module():
    """The names that moved to orchestrator.core.endpoint are the same objects when imported
    from orchestrator.core.connection, where programs found them before."""
    from orchestrator.core import connection, endpoint

    moved = ["DEFAULT_URL", "SERVICE_HOST", "Connector", "Endpoint"]
    moved += ["resolve_api_key", "resolve_endpoint", "resolve_transport"]
    for name in moved:
        assert getattr(endpoint, name) is getattr(connection, name)
    assert set(connection.__all__) <= set(dir(connection))


def test_default_endpoint_is_the_service(monkeypatch):
    """Without a URL, the service (or OPENAI_BASE_URL) is used."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert "wss://api.openai.com/v1/responses" == resolve_endpoint().url
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:9/v1")
    assert "ws://localhost:9/v1/responses" == resolve_endpoint().url


def test_api_key_errors_never_echo_the_key(monkeypatch):
    """Missing and malformed keys fail with auth.* codes; the key never appears."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY is not set") as missing:
        resolve_api_key()
    assert "auth.missing" == missing.value.code
    with pytest.raises(ConfigurationError) as malformed:
        resolve_api_key("sk-abc def-secret")
    assert "auth.malformed" == malformed.value.code
    assert "secret" not in str(malformed.value)
    key = resolve_api_key("sk-live-1234567890abcd")
    assert "Secret('sk-…abcd')" == repr(key)


async def test_canary_key_never_reaches_logs_events_or_reprs(autojump_clock, canary_key):
    """docs/faults.md#secrets: with the canary as the key, no log line, event, error or repr
    contains it."""
    config = ServerConfig(
        script=SCRIPT,
        seed=1,
        token=canary_key,
        faults=(
            Fault("abort", response=2, after_events=2),
            Fault("reject", status=503, connection=3),
        ),
    )
    server = LocalServer.from_config(config)
    with capture_logs() as lines:
        async with memory_agent(server=server, settings=FAST) as (_server, connection, recorder):
            await converse(connection, scripted_session(), PROMPTS[:2], [])
            texts = [repr(connection), repr(connection.statistics())]
        async with memory_agent(server=server, token=canary_key[:-1] + "x") as (_s, other, _r):
            with pytest.raises(AuthenticationError) as caught:
                await other.run_turn(scripted_session(), [MessageItem.user("hi")])
            texts.append(str(caught.value))
    texts.extend(lines)
    texts.extend(msgspec.json.encode(event).decode() for event in recorder.events)
    assert lines, "the logs were captured"
    assert [] == [text for text in texts if canary_key in text]


async def test_statistics_count_sockets_turns_and_bytes(autojump_clock):
    """statistics() reports age, turns, sockets, rotations, reconnects, replays and bytes."""
    config = ServerConfig(
        script=SCRIPT, seed=1, faults=(Fault("abort", response=2, after_events=2),)
    )
    async with memory_agent(config, FAST) as (_server, connection, _recorder):
        await converse(connection, scripted_session(), PROMPTS[:1], [])
        await trio.sleep(10)
        stats = connection.statistics()
    assert (2, 2, 1, 1) == (stats.turns, stats.sockets_opened, stats.reconnects, stats.replays)
    assert stats.bytes_received > stats.bytes_sent > 0
    assert 10 <= stats.age < 11


async def test_secret_is_not_picklable():
    """Secrets cannot leak through pickling into files."""
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(Secret("sk-do-not-write-me-anywhere"))


async def test_explicit_warm_up_prepares_the_chain(autojump_clock):
    """warm_up() sends generate:false with the transcript; the next turn continues from it."""
    config = ServerConfig(model="echo", record_messages=True)
    async with memory_agent(config) as (server, connection, recorder):
        session = Session(model="echo", transcript=[MessageItem.user("earlier")])
        warm_id = await connection.warm_up(session)
        assert warm_id == session.last_response_id
        response = await connection.run_turn(session, [MessageItem.user("now")])
    creates = [e for _, e in server.received if isinstance(e, ResponseCreate)]
    assert [False, msgspec.UNSET] == [create.generate for create in creates]
    assert warm_id == creates[1].previous_response_id
    assert "now" == response.text
    assert 1 == server.statistics().warmups
    assert 1 == len(recorder.of(WarmupFinished))


# -- error shapes of HTTP gateways (issue 15 item 3) ---------------------------------------------


def _answer(create: ResponseCreate, number: int) -> list[str]:
    """What a terse gateway sends: the string-shaped error for any continuation, else a
    created and a completed text response."""
    if isinstance(create.previous_response_id, str):
        return ['{"type":"error","error":"Invalid previous_response_id."}']
    response_id = f"resp_{number}"
    base = ResponseObject(id=response_id, created_at=0, status="in_progress", model="m")
    answer = MessageItem(
        id=f"msg_{number}",
        role="assistant",
        status="completed",
        content=[ContentPart.output_text("ok")],
    )
    done = msgspec.structs.replace(base, status="completed", output=raw([answer]))
    return [
        encode_text(ResponseCreated(sequence_number=0, response=base)),
        encode_text(ResponseCompleted(sequence_number=1, response=done)),
    ]


async def test_gateway_string_error_without_code_replays_once(autojump_clock):
    """A gateway's ``{"error": "Invalid previous_response_id."}`` (no code, error a string)
    is a lost chain: the turn replays the transcript once, on the same socket."""
    creates: list[ResponseCreate] = []
    sockets: list[int] = []

    async def gateway(stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            request = await trio_websocket.wrap_server_stream(nursery, stream)
            ws = await request.accept()
            while True:
                try:
                    message = await ws.get_message()
                except trio_websocket.ConnectionClosed:
                    return
                create = decode_client_event(message)
                assert isinstance(create, ResponseCreate)
                creates.append(create)
                for frame in _answer(create, len(creates)):
                    await ws.send_message(frame)

    async with trio.open_nursery() as nursery:

        async def connect() -> trio.abc.Stream:
            client, server_side = trio.testing.memory_stream_pair()
            sockets.append(len(sockets) + 1)
            nursery.start_soon(gateway, server_side)
            return client

        recorder = Recorder()
        bus = EventBus()
        bus.add_listener(recorder)
        with trio.fail_after(10):
            async with open_connection(
                LOCAL_URL, "sk-gateway-test-key", connector=connect, events=bus
            ) as connection:
                session = Session(model="m")
                await connection.run_turn(session, [MessageItem.user("first")])
                response = await connection.run_turn(session, [MessageItem.user("second")])
        nursery.cancel_scope.cancel()
    assert "ok" == response.text
    assert [1] == sockets
    assert ["resp_1", msgspec.UNSET] == [create.previous_response_id for create in creates[1:]]
    assert ["first", "ok", "second"] == [item.text for item in creates[2].input]  # type: ignore[union-attr]
    assert 1 == len(recorder.of(TranscriptReplayed))
