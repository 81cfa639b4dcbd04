"""Fault injection over HTTP (docs/faults.md#fault-injection, docs/protocol.md#over-http): each
fault kind that means something for a POST fires on the matching request, seen from a raw
HTTP client. A TCP connection is a connection; the n-th POST on it is response n."""

from __future__ import annotations

from typing import Any

import h11
import pytest
import trio

from orchestrator.core.server import Fault, LocalServer, ServerConfig, open_local_server

from .wire import HttpClient, http_client, memory_http_client

ECHO: dict[str, Any] = {"model": "local-echo", "input": "one two three"}
HELLO: dict[str, Any] = {**ECHO, "stream": True}
# created, in_progress, item added, part added, 3 deltas, text done, part done, item done,
# completed: 11 events for HELLO.
HELLO_EVENTS = 11


async def _events_until_cut(client: HttpClient) -> tuple[list[dict[str, Any]], str]:
    """The events of the streamed answer being read, and how it ended: ``complete`` (its
    last chunk came), ``cut`` (the connection closed mid-body) or ``reset``."""
    events = []
    try:
        while (event := await client.event()) is not None:
            events.append(event.json())
    except h11.RemoteProtocolError:
        return events, "cut"
    except trio.BrokenResourceError:
        return events, "reset"
    return events, "complete"


async def _cut_stream(fault: Fault) -> tuple[int, list[dict[str, Any]], str]:
    async with open_local_server(faults=(fault,)) as running, http_client(running) as client:
        with trio.fail_after(10):
            await client.send_request(body=HELLO)
            head = await client.head()
            events, ending = await _events_until_cut(client)
            assert await client.closed()
    assert 0 == running.statistics().connection_errors
    return head.status_code, events, ending


@pytest.mark.parametrize("after_events", [1, 4, HELLO_EVENTS])
@pytest.mark.parametrize("kind", ["abort", "close"])
async def test_abort_and_close_cut_the_stream_after_n_events(kind, after_events):
    """Faults ``abort`` (a reset) and ``close`` (an orderly TCP close) over real TCP: exactly
    ``after_events`` SSE events arrive, then the connection ends without the body's last
    chunk (after the terminal event too: the answer is still incomplete)."""
    status, events, ending = await _cut_stream(Fault(kind, after_events=after_events))
    assert 200 == status
    assert after_events == len(events)
    assert list(range(after_events)) == [event["sequence_number"] for event in events]
    assert ending in ({"cut", "reset"} if kind == "abort" else {"cut"})


async def test_abort_before_the_first_event_drops_the_request():
    """Fault ``abort`` at 0 events: the connection drops before any answer, streamed or
    not."""
    fault = Fault("abort", times=2)
    async with open_local_server(faults=(fault,)) as running:
        for stream in (True, False):
            async with http_client(running) as client:
                with trio.fail_after(10):
                    await client.send_request(body={**HELLO, "stream": stream})
                    with pytest.raises((h11.RemoteProtocolError, trio.BrokenResourceError)):
                        await client.head()
    assert 2 == running.statistics().faults_fired


@pytest.mark.parametrize("stream", [True, False])
async def test_reject_answers_the_post_with_its_status_and_retry_after(stream):
    """Fault ``reject``: the POST gets the fault's status, ``retry-after`` and a JSON error
    body (rate-limit type for 429); the next POST on the connection is served."""
    fault = Fault("reject", status=429, error_code="rate_limit_exceeded", retry_after=2.5)
    async with open_local_server(faults=(fault,)) as running, http_client(running) as client:
        with trio.fail_after(10):
            rejected = await client.request(body={**HELLO, "stream": stream})
            served = await client.request(body={**HELLO, "stream": stream})
    assert 429 == rejected.status
    assert b"2.5" == rejected.headers[b"retry-after"]
    error = rejected.json()["error"]
    assert ("rate_limit_exceeded", "requests") == (error["code"], error["type"])
    assert 200 == served.status
    assert (1, 1) == (running.statistics().faults_fired, running.statistics().responses_started)


async def test_faults_match_the_connection_and_the_post_by_index():
    """``connection`` is the TCP connection's index, ``response`` the POST's on it: a
    rejection for the second POST of the second connection fires there and nowhere else."""
    fault = Fault("reject", status=503, error_code="server_is_overloaded", connection=2, response=2)
    async with open_local_server(faults=(fault,)) as running:
        statuses = []
        for _ in range(2):
            async with http_client(running) as client:
                with trio.fail_after(10):
                    for _ in range(3):
                        statuses.append((await client.request(body=HELLO)).status)
    assert [200, 200, 200, 200, 503, 200] == statuses


@pytest.mark.parametrize("stream", [True, False])
async def test_an_error_before_the_stream_is_the_http_status(autojump_clock, stream):
    """Fault ``error`` at 0 events: nothing has started, so the answer is the error's HTTP
    status with ``retry-after`` as a header and the service's error body."""
    fault = Fault("error", status=503, error_code="server_is_overloaded", retry_after=7)
    server = LocalServer.from_config(ServerConfig(faults=(fault,)))
    async with memory_http_client(server) as client:
        with trio.fail_after(10):
            reply = await client.request(body={**HELLO, "stream": stream})
    assert 503 == reply.status
    assert b"7" == reply.headers[b"retry-after"]
    error = reply.json()["error"]
    assert ("server_is_overloaded", "server_error", "injected error") == (
        error["code"],
        error["type"],
        error["message"],
    )


async def test_an_error_in_the_stream_is_an_error_event(autojump_clock):
    """Fault ``error`` after 3 events: the stream's fourth event is ``error`` in the HTTP
    API's SSE shape (``code``, ``message``, ``param`` at the top, sequence 3), the answer ends
    properly, the connection goes on."""
    fault = Fault(
        "error", after_events=3, status=429, error_code="rate_limit_exceeded", retry_after=1
    )
    server = LocalServer.from_config(ServerConfig(faults=(fault,)))
    async with memory_http_client(server) as client:
        with trio.fail_after(10):
            events = await client.stream_events(**ECHO)
            after = await client.stream_events(**ECHO)
    assert 4 == len(events)
    assert {
        "type": "error",
        "sequence_number": 3,
        "code": "rate_limit_exceeded",
        "message": "injected error",
        "param": None,
    } == events[-1]
    assert "response.completed" == after[-1]["type"]


@pytest.mark.parametrize("after_events", [0, 5])
async def test_fail_ends_with_response_failed(autojump_clock, after_events):
    """Fault ``fail``: the stream ends with ``response.failed`` carrying the code (at 0
    events, ``response.created`` first); not streamed, the answer is the failed response."""
    fault = Fault("fail", after_events=after_events, error_code="server_error", times=2)
    server = LocalServer.from_config(ServerConfig(faults=(fault,)))
    async with memory_http_client(server) as client:
        with trio.fail_after(10):
            events = await client.stream_events(**ECHO)
            whole = await client.post(input="x")
    assert "response.failed" == events[-1]["type"]
    assert max(after_events, 1) + 1 == len(events)
    assert "server_error" == events[-1]["response"]["error"]["code"]
    assert ("failed", "server_error") == (whole.json()["status"], whole.json()["error"]["code"])


async def test_stall_pauses_the_stream(autojump_clock):
    """Fault ``stall``: N events, then nothing for ``duration`` seconds, then the rest."""
    server = LocalServer.from_config(
        ServerConfig(faults=(Fault("stall", after_events=4, duration=9),))
    )
    async with memory_http_client(server) as client:
        with trio.fail_after(60):
            await client.send_request(body=HELLO)
            start = trio.current_time()
            await client.head()
            times = []
            while await client.event() is not None:
                times.append(trio.current_time() - start)
    assert [0] * 4 + [9] * (HELLO_EVENTS - 4) == times


async def test_delay_handshake_holds_the_answers_head(autojump_clock):
    """Fault ``delay_handshake``: the POST's answer begins ``duration`` seconds late; the
    next POST is answered at once."""
    server = LocalServer.from_config(ServerConfig(faults=(Fault("delay_handshake", duration=12),)))
    async with memory_http_client(server) as client:
        with trio.fail_after(60):
            waits = []
            for _ in range(2):
                await client.send_request(body=HELLO)
                start = trio.current_time()
                await client.head()
                waits.append(trio.current_time() - start)
                await client.body()
    assert [12, 0] == waits


async def test_send_raw_and_oversize_go_on_the_stream_in_order(autojump_clock):
    """Faults ``send_raw`` (its payload as one event's data, verbatim: malformed SSE is the
    point) and ``oversize`` (an unknown event of ``size`` bytes) come exactly after N
    events."""
    faults = (
        Fault("send_raw", after_events=2, payload="{not json"),
        Fault("oversize", after_events=2, size=5000),
    )
    server = LocalServer.from_config(ServerConfig(faults=faults))
    async with memory_http_client(server) as client:
        with trio.fail_after(10):
            reply = await client.request(body=HELLO)
    events = reply.events()
    assert [None, "{not json"] == [events[2].name, events[2].data]
    assert "response.padding" == events[3].name
    assert 4990 <= len(events[3].data) <= 5000
    assert "response.completed" == events[-1].name
    assert HELLO_EVENTS + 2 == len(events)


async def test_blackhole_sends_nothing_more_until_the_client_leaves(autojump_clock):
    """Fault ``blackhole``: N events, then nothing at all; when the client gives up and
    closes, the server ends the connection without an error."""
    server = LocalServer.from_config(ServerConfig(faults=(Fault("blackhole", after_events=3),)))
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = HttpClient(client_stream, server.token)
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_stream)
            await client.send_request(body=HELLO)
            await client.head()
            events = [await client.event() for _ in range(3)]
            with trio.move_on_after(300) as waited:
                await client.event()
            await client_stream.aclose()
    assert 3 == len(events)
    assert waited.cancelled_caught
    assert (1, 0) == (server.statistics().faults_fired, server.statistics().connection_errors)
