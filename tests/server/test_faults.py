"""Fault injection (docs/faults.md#fault-injection): each fault fires exactly
after ``after_events`` events of the matching response, seen from a raw client."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from orchestrator.core.server import Fault, LocalServer, ServerConfig, open_local_server

from .wire import assert_error, loopback_client, memory_client, types_of


def _server(*faults: Fault, **options: Any) -> LocalServer:
    return LocalServer.from_config(ServerConfig(model="echo", seed=1, faults=faults, **options))


async def _until_closed(client) -> tuple[list[str], int | None]:
    code = await client.closed()
    return types_of(client.received), code


@pytest.mark.parametrize("after_events", [0, 1, 4, 9])
@pytest.mark.parametrize("code", [1000, 1001, 1011, 1012, 4000])
async def test_close_fault_sends_exactly_n_events_then_the_code(autojump_clock, after_events, code):
    """Fault ``close``: the client sees exactly ``after_events`` events, then close ``code``
    (after the terminal event, 9, the response is complete)."""
    server = _server(Fault("close", code=code, response=1, after_events=after_events))
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.create(input="hello")
            types, closed = await _until_closed(client)
    assert after_events == len(types)
    assert code == closed


async def test_close_fault_with_1005_sends_no_code(autojump_clock):
    """Fault ``close`` with 1005: a close frame without a code, reported as 1005."""
    server = _server(Fault("close", code=1005, response=1, after_events=2))
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.create(input="hello")
            types, closed = await _until_closed(client)
    assert 2 == len(types)
    assert 1005 == closed


@pytest.mark.parametrize("after_events", [0, 3, 9])
async def test_abort_fault_drops_tcp_after_n_events(after_events):
    """Fault ``abort`` over real TCP: exactly ``after_events`` events, then no close frame
    (the client reports 1006)."""
    fault = Fault("abort", response=1, after_events=after_events)
    async with open_local_server(model="echo", faults=(fault,)) as running:
        with trio.fail_after(10):
            async with loopback_client(running) as client:
                await client.create(input="hello")
                types, closed = await _until_closed(client)
    assert after_events == len(types)
    assert 1006 == closed


async def test_error_fault_ends_the_request_with_retry_after(autojump_clock):
    """Fault ``error``: an error event after N events, with the status's type and
    ``retry-after`` in ``error.headers``; the socket stays usable."""
    fault = Fault(
        "error", status=429, error_code="rate_limit_exceeded", retry_after=3, after_events=2
    )
    server = _server(fault)
    async with memory_client(server) as client:
        with trio.fail_after(60):
            events = await client.turn(input="x", stream_id="s")
            after = await client.turn(input="y")
    assert ["response.created", "response.in_progress", "error"] == types_of(events)
    error = events[-1]
    assert_error(error, 429, "rate_limit_exceeded", stream_id="s", error_type="requests")
    assert {"retry-after": "3"} == error["error"]["headers"]
    assert 2 == error["sequence_number"]
    assert "response.completed" == after[-1]["type"]


async def test_error_fault_before_created_is_an_admission_error(autojump_clock):
    """Fault ``error`` at 0 events: no response.created, no sequence number."""
    server = _server(Fault("error", status=500, error_code="server_error"))
    async with memory_client(server) as client:
        with trio.fail_after(60):
            events = await client.turn(input="x")
    assert 1 == len(events)
    assert_error(events[0], 500, "server_error", error_type="server_error")
    assert "sequence_number" not in events[0]


@pytest.mark.parametrize("after_events", [0, 3, 8])
async def test_fail_fault_ends_with_response_failed(autojump_clock, after_events):
    """Fault ``fail``: ``response.failed`` with the code; a response that had not started
    is announced first (created before failed); one due right before the terminal event
    (8) fails the response instead of completing it."""
    server = _server(Fault("fail", error_code="server_error", after_events=after_events))
    async with memory_client(server) as client:
        with trio.fail_after(60):
            events = await client.turn(input="x")
    assert "response.created" == events[0]["type"]
    assert "response.failed" == events[-1]["type"]
    assert "response.completed" not in types_of(events)
    assert max(after_events, 1) + 1 == len(events)
    assert list(range(len(events))) == [e["sequence_number"] for e in events]
    assert "server_error" == events[-1]["response"]["error"]["code"]
    assert events[0]["response"]["created_at"] == events[-1]["response"]["created_at"]
    assert 1 == server.statistics().responses_failed


async def test_send_raw_and_oversize_faults_go_out_in_order(autojump_clock):
    """Faults ``send_raw`` and ``oversize`` put their frame exactly after N events."""
    server = _server(
        Fault("send_raw", payload='{"type":"response.mystery"}', after_events=1),
        Fault("oversize", size=4096, after_events=3),
    )
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.create(input="x")
            types = types_of(await client.response())
    assert "response.mystery" == types[1]
    assert "response.padding" == types[4]
    padding = client.received[4]
    assert 4096 >= len(str(padding)) > 4000
    assert "response.completed" == types[-1]


async def test_drop_cache_fault_forgets_the_lane(autojump_clock):
    """Fault ``drop_cache``: a ``store: false`` continuation then gets not-found."""
    server = _server(Fault("drop_cache", response=1, after_events=9))
    async with memory_client(server) as client:
        with trio.fail_after(60):
            first = await client.turn(input="x", store=False)
            again = await client.turn(
                input="y", store=False, previous_response_id=first[-1]["response"]["id"]
            )
    assert_error(again[0], 400, "previous_response_not_found", "previous_response_id")


async def test_stall_fault_pauses_the_stream(autojump_clock):
    """Fault ``stall``: N events, then nothing for ``duration`` seconds, then the rest."""
    server = _server(Fault("stall", duration=30, after_events=3))
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.create(input="x")
            for _ in range(3):
                await client.receive()
            assert 0 == trio.current_time()
            events = await client.response()
    assert 30 == trio.current_time()
    assert "response.completed" == events[-1]["type"]


async def test_blackhole_fault_leaves_pings_unanswered(autojump_clock):
    """Fault ``blackhole``: N events, then nothing at all, not even a pong."""
    server = _server(Fault("blackhole", after_events=2))
    async with memory_client(server) as client:
        await client.create(input="x")
        with trio.fail_after(60):
            await client.receive()
            await client.receive()
        with trio.move_on_after(100) as scope:
            await client.ws.ping()
    assert scope.cancelled_caught


async def test_fault_for_another_connection_waits_for_it(autojump_clock):
    """``connection``/``response`` match by index; ``times`` bounds the firings."""
    server = _server(Fault("close", code=4001, connection=2, response=2, after_events=1, times=1))
    with trio.fail_after(60):
        async with memory_client(server) as one:
            await one.turn(input="a")
            await one.turn(input="b")
        async with memory_client(server) as two:
            first = await two.turn(input="a")
            await two.create(input="b")
            assert 4001 == await two.closed()
    assert len(first) + 1 == len(two.received)
    assert 1 == server.statistics().faults_fired


async def test_injected_fault_fires_on_the_next_response():
    """``RunningServer.inject`` adds a fault at run time."""
    async with open_local_server(model="echo") as running:
        with trio.fail_after(10):
            async with loopback_client(running) as client:
                await client.turn(input="before")
                running.inject(Fault("close", code=4002, after_events=1))
                await client.create(input="after")
                code = await client.closed()
    assert 4002 == code
