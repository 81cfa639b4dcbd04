"""What one connection may hold (issue 10, item 3): requests, outgoing bytes, handshakes.

A client that stops reading is closed with 1008 once its socket takes nothing for
``send_timeout`` seconds, or once its pings alone fill the buffer past
``max_buffered_bytes``; what the server held for it stays within the documented bound
(checked through ``statistics()``), and healthy clients of the same server go on meanwhile.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from loguru import logger

from orchestrator.core.server import LatencyModel, LocalServer, ServerConfig, open_local_server
from orchestrator.core.server.transport import WRITE_HIGH_WATER
from orchestrator.errors import ConfigurationError
from orchestrator.testing import capture_logs

from .wire import RawClient, assert_error, loopback_client, memory_client, user

if TYPE_CHECKING:
    from collections.abc import Iterator

NOT_READING = "closing with 1008"


@contextmanager
def logged(fragment: str) -> Iterator[trio.Event]:
    """An event set when the server logs a line containing ``fragment``."""
    seen = trio.Event()

    def sink(message: Any) -> None:
        if fragment in str(message):
            seen.set()

    with capture_logs("INFO"):
        handler = logger.add(sink, level="INFO", format="{message}")
        try:
            yield seen
        finally:
            logger.remove(handler)


def _words(count: int) -> str:
    return " ".join(f"w{index % 10}" for index in range(count))


async def test_a_client_that_stops_reading_is_closed_with_1008_and_others_go_on():
    """A client that sends a create and never reads: the server waits at the high-water
    mark (its buffer never holds more than that plus one event), closes it with 1008 once
    its socket has taken nothing for send_timeout, and a healthy client on the same server
    completes turns all along. The frame that was on the wire is finished before the close
    frame, so the client, reading again, parses everything up to the close."""
    text = _words(100_000)  # 300 KB of text: ~13 MB of delta events, far past any buffer
    config = ServerConfig(model="echo", send_timeout=0.5, close_timeout=30)
    with logged(NOT_READING) as given_up:
        async with open_local_server(config) as running:
            slow = await RawClient.connect(running)
            await slow.send({"type": "response.create", "model": "echo", "input": text})
            turns = 0
            with trio.fail_after(30):
                async with loopback_client(running) as healthy:
                    while not given_up.is_set() or turns < 3:
                        events = await healthy.turn(input=f"still here {turns}")
                        assert "response.completed" == events[-1]["type"]
                        turns += 1
                    await given_up.wait()
                    code, reason, messages = await slow.read_until_close()
                    after = await healthy.turn(input="and after")
            await slow.aclose()
            statistics = running.statistics()
    assert 1008 == code
    assert "client not reading: no output accepted for 0.5 s" == reason
    assert "response.output_text.delta" == messages[-1]["type"]  # cut between two events
    assert "response.completed" == after[-1]["type"]
    assert 1 == statistics.clients_not_reading
    assert 0 == statistics.connection_errors
    # The lane's producer waited at the high-water mark: one delta event past it at most.
    assert statistics.peak_buffered_bytes <= WRITE_HIGH_WATER + 1024


async def test_pings_from_a_client_that_never_reads_cannot_grow_the_buffer():
    """Pongs are the one output nobody waits for: a client that pings and never reads is
    closed with 1008 as soon as they pass max_buffered_bytes, which is then the most the
    server held for it (plus one pong)."""
    limit = 64 * 1024
    config = ServerConfig(max_buffered_bytes=limit, send_timeout=None, close_timeout=30)
    with logged(NOT_READING) as given_up:
        async with open_local_server(config) as running:
            client = await RawClient.connect(running)
            with trio.fail_after(30):
                while not given_up.is_set():
                    for _ in range(64):
                        await client.ping()
                    await trio.lowlevel.checkpoint()
                code, reason, _ = await client.read_until_close()
            await client.aclose()
            statistics = running.statistics()
    assert 1008 == code
    assert f"client not reading: over {limit} bytes of output waiting" == reason
    assert 1 == statistics.clients_not_reading
    assert limit < statistics.peak_buffered_bytes <= limit + 127


async def test_requests_a_connection_holds_are_bounded_in_bytes(autojump_clock):
    """Creates held by one connection (queued or running) may not pass max_request_bytes:
    the one that would is refused with 429 too_many_queued_requests and nothing else
    changes; once responses finish the bytes are released. A create alone on an idle
    connection is taken whatever its size."""
    first, second, third = (
        json.dumps(
            {"type": "response.create", "model": "echo", "input": [user(f"{name} {_words(600)}")]}
        )
        for name in ("first", "second", "third")
    )
    limit = len(first) + len(second) + 100
    server = LocalServer.from_config(
        ServerConfig(
            model="echo", max_request_bytes=limit, latency=LatencyModel(tokens_per_second=100)
        )
    )
    async with memory_client(server) as client:
        with trio.fail_after(60):
            for message in (first, second, third):
                await client.send(message)
            refused = await client.receive()
            while refused["type"] != "error":  # the first response streams meanwhile
                refused = await client.receive()
            held = server.statistics()
            await client.response()
            await client.response()
            released = server.statistics()
            alone = await client.turn(input=_words(2 * limit // 3))
    assert_error(refused, 429, "too_many_queued_requests", error_type="requests")
    assert f"already holds {len(first) + len(second)} bytes" in refused["error"]["message"]
    assert (len(first) + len(second), 1) == (held.request_bytes, held.queued_requests)
    assert (0, 0) == (released.request_bytes, released.queued_requests)
    assert len(first) + len(second) == released.peak_request_bytes
    assert "response.completed" == alone[-1]["type"]


async def test_connections_still_in_their_handshake_are_capped():
    """At most max_pending_handshakes connections may be in their handshake (not yet
    authenticated) at once: the next one is answered 503 server_busy with Retry-After at
    once, without being read, and the pending ones still complete normally."""
    server = LocalServer.from_config(ServerConfig(max_pending_handshakes=2))
    async with trio.open_nursery() as nursery:
        pending = []
        for _ in range(2):
            client_stream, server_stream = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle_stream, server_stream)
            pending.append(client_stream)
        await trio.testing.wait_all_tasks_blocked()
        assert 2 == server.statistics().handshakes_pending
        refused_stream, server_stream = trio.testing.memory_stream_pair()
        with trio.fail_after(10):
            await server.handle_stream(server_stream)  # returns at once: refused
            answer = b""
            while chunk := await refused_stream.receive_some():
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1" in head.lower()
        assert "server_busy" == json.loads(body)["error"]["code"]
        nursery.cancel_scope.cancel()
    statistics = server.statistics()
    assert (1, 1) == (statistics.handshakes_over_capacity, statistics.handshakes_rejected)
    async with memory_client(server) as client:
        with trio.fail_after(10):
            events = await client.turn(input="after the burst")
    assert "response.completed" == events[-1]["type"]


async def test_the_handshake_deadline_holds_against_a_trickling_client(autojump_clock):
    """A client that sends its upgrade request a byte at a time (slowloris) is dropped at
    handshake_timeout even though bytes keep coming."""
    server = LocalServer.from_config(ServerConfig(handshake_timeout=5))
    client_stream, server_stream = trio.testing.memory_stream_pair()
    request = b"GET /v1/responses HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 100

    async def trickle() -> None:
        for byte in request:
            await client_stream.send_all(bytes([byte]))
            # Off the deadline's beat: no byte is due at the very moment the server closes.
            await trio.sleep(0.7)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            started = trio.current_time()
            await server.handle_stream(server_stream)
            assert 5 == trio.current_time() - started
            nursery.cancel_scope.cancel()
    statistics = server.statistics()
    assert (1, 0) == (statistics.handshakes_timed_out, statistics.handshakes_pending)


@pytest.mark.parametrize(
    "options",
    [
        {"max_request_bytes": 0},
        {"max_buffered_bytes": 1000},
        {"send_timeout": 0},
        {"max_pending_handshakes": 0},
        {"handshake_timeout": 0},
        {"close_timeout": -1},
        {"max_queued_requests": 0},
    ],
)
def test_limits_out_of_range_are_refused(options):
    """Every limit is checked at construction, with a message naming it."""
    name = next(iter(options))
    with pytest.raises(ConfigurationError, match=name):
        ServerConfig(**options)


def test_serve_refuses_a_limit_out_of_range():
    """``orchestrator serve --max-buffered-bytes 10``: exit 2 with config.value naming the
    option's field and its minimum, before anything listens."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "serve",
            "--port",
            "0",
            "--max-buffered-bytes",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert 2 == done.returncode
    assert "error[config.value]: max_buffered_bytes must be >= 4096, got 10" in done.stderr
    assert "" == done.stdout
