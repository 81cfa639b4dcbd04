"""The server's own WebSocket transport (orchestrator/server/transport.py): a turn's events
leave in one write, backpressure bounds the buffer, protocol violations close the socket."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from orchestrator.core.server import LatencyModel, LocalServer, ServerConfig
from orchestrator.core.server.transport import WRITE_HIGH_WATER, ServerWebSocket

from .wire import LOOKUP_TOOL, memory_client

SCRIPT: dict[str, Any] = {
    "on_exhausted": "cycle",
    "turns": [
        {"function_calls": [{"name": "lookup", "arguments": {"city": "Lisbon"}, "deltas": 6}]}
    ],
}


@attrs.define(eq=False)
class CountingStream(trio.abc.Stream):
    """A stream that counts the server's writes."""

    inner: trio.abc.Stream
    writes: list[int] = attrs.field(factory=list)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(len(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_turn_leaves_in_one_write():
    """The 12 events of a function-call turn are produced without a checkpoint and are
    written with one ``send_all``."""
    server = LocalServer.from_config(ServerConfig(script=SCRIPT, seed=1))
    client_stream, server_stream = trio.testing.memory_stream_pair()
    counting = CountingStream(server_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, counting)
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        with trio.fail_after(10):
            await _handshake(client_stream, ws, server.token)
            before = len(counting.writes)
            await client_stream.send_all(
                ws.send(
                    TextMessage(
                        '{"type":"response.create","model":"local-scripted","input":"go",'
                        f'"tools":[{_json(LOOKUP_TOOL)}]}}'
                    )
                )
            )
            messages = await _messages(client_stream, ws, until="response.completed")
            turn_writes = len(counting.writes) - before
            await client_stream.aclose()
    assert 12 == len(messages)
    assert 1 == turn_writes


async def test_paced_events_are_written_as_they_come(autojump_clock):
    """With pacing, each delta goes out at its time (the pace is a checkpoint)."""
    server = LocalServer.from_config(
        ServerConfig(model="echo", latency=LatencyModel(tokens_per_second=1))
    )
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.create(input="a b c")
            times = []
            while True:
                event = await client.receive()
                times.append(trio.current_time())
                if event["type"] == "response.completed":
                    break
    assert [0, 0, 0, 0, 1, 2, 3, 3, 3, 3, 3] == times


async def test_backpressure_bounds_what_a_slow_reader_costs():
    """A client that stops reading makes the producer wait: the server buffers at most about
    twice the high-water mark, and everything arrives once the client reads again."""
    words = 20_000  # about 2.6 MB of delta events, ten times the high-water mark
    server = LocalServer.from_config(ServerConfig(model="echo"))
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_stream)
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        with trio.fail_after(30):
            await _handshake(client_stream, ws, server.token)
            text = " ".join(["w"] * words)
            await client_stream.send_all(
                ws.send(
                    TextMessage(f'{{"type":"response.create","model":"echo","input":"{text}"}}')
                )
            )
            await trio.testing.wait_all_tasks_blocked()
            buffered = server.statistics().bytes_sent
            assert buffered <= 2 * WRITE_HIGH_WATER + 1000
            messages = await _messages(client_stream, ws, until="response.completed")
            await client_stream.aclose()
    assert words + 8 == len(messages)


async def test_invalid_utf8_text_frame_closes_with_1007():
    """A text frame that is not UTF-8 is a protocol violation: close 1007 (RFC 6455)."""
    server = LocalServer.from_config(ServerConfig(model="echo"))
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_stream)
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        with trio.fail_after(10):
            await _handshake(client_stream, ws, server.token)
            # FIN + text, masked, 2 bytes, mask key 0 (the payload goes as is).
            await client_stream.send_all(b"\x81\x82\x00\x00\x00\x00\xff\xfe")
            codes: list[int] = []
            while not codes:
                data = await client_stream.receive_some()
                assert data
                ws.receive_data(bytes(data))
                codes = [e.code for e in ws.events() if isinstance(e, CloseConnection)]
    assert [1007] == codes
    assert 0 == server.statistics().connection_errors


async def test_client_leaving_mid_response_is_not_an_error(autojump_clock):
    """A client that closes while a response streams ends the connection quietly."""
    server = LocalServer.from_config(
        ServerConfig(model="echo", latency=LatencyModel(tokens_per_second=1))
    )
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.create(input="a b c d e f")
            await client.receive()
    await trio.testing.wait_all_tasks_blocked()
    statistics = server.statistics()
    assert 0 == statistics.connection_errors
    assert 0 == statistics.connections_active
    assert 0 == statistics.responses_completed


def _json(value: Any) -> str:
    return json.dumps(value)


async def _handshake(stream: trio.abc.Stream, ws: wsproto.WSConnection, token: str) -> None:
    await stream.send_all(
        ws.send(
            Request(
                host="x",
                target="/v1/responses",
                extra_headers=[(b"authorization", f"Bearer {token}".encode())],
            )
        )
    )
    while True:
        ws.receive_data(bytes(await stream.receive_some()))
        if any(isinstance(event, AcceptConnection) for event in ws.events()):
            return


async def _messages(stream: trio.abc.Stream, ws: wsproto.WSConnection, *, until: str) -> list[str]:
    """Text messages until one starting with ``{"type":"<until>"``."""
    messages: list[str] = []
    parts: list[str] = []
    while True:
        data = await stream.receive_some()
        assert data, "the server closed the connection"
        ws.receive_data(bytes(data))
        for event in ws.events():
            assert isinstance(event, TextMessage)
            parts.append(event.data)
            if event.message_finished:
                messages.append("".join(parts))
                parts.clear()
                if messages[-1].startswith(f'{{"type":"{until}"'):
                    return messages


async def test_giving_up_drops_unsent_messages_but_keeps_the_101_and_closes_with_1008():
    """A client given up before the writer ran: the 101 still goes out (a close frame
    cannot precede it), the message buffered after it is dropped, and the close frame
    carries 1008 and the reason; the hook hears the reason once."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    reasons: list[str] = []
    transport = ServerWebSocket(server_stream, 1 << 20, on_give_up=reasons.append)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(transport.serve_writes)
        with trio.fail_after(10):
            await client_stream.send_all(ws.send(Request(host="x", target="/v1/responses")))
            assert await transport.receive_request() is not None
            transport.accept()
            transport.send_text(b'{"type":"dropped"}')
            transport.give_up("client not reading: test")
            transport.give_up("client not reading: again")  # idempotent
            events: list[object] = []
            while not any(isinstance(event, CloseConnection) for event in events):
                data = await client_stream.receive_some()
                assert data
                ws.receive_data(bytes(data))
                events.extend(ws.events())
        nursery.cancel_scope.cancel()
    assert [AcceptConnection, CloseConnection] == [type(event) for event in events]
    close = events[-1]
    assert isinstance(close, CloseConnection)
    assert (1008, "client not reading: test") == (close.code, close.reason)
    assert ["client not reading: test"] == reasons
    assert (1008, "server") == (transport.close_code, transport.closed_by)


def _distributions_imported(root: Path, folder: str) -> set[frozenset[str]]:
    """The third-party modules the modules under ``folder`` import, each as the set of
    distributions that provide it (``mcp`` comes from ``mcp`` and ``mcp-types``)."""
    modules: set[str] = set()
    for path in (root / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"orchestrator", "actors", "plans"}
    distributions = importlib.metadata.packages_distributions()
    return {
        frozenset(name.lower().replace("_", "-") for name in distributions.get(module, [module]))
        for module in third_party
    }


def _requirement_names(requirements: list[str]) -> set[str]:
    return {
        re.split(r"[^A-Za-z0-9._-]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        for requirement in requirements
    }


def test_the_servers_third_party_imports_are_declared_dependencies():
    """Every distribution the embedded server imports (wsproto for its transport, trio,
    attrs, msgspec, loguru...) is a required dependency in pyproject.toml, and every one the
    product imports anywhere is required or in an extra: an install never works only by way
    of another package's requirements."""
    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    required = _requirement_names(project["dependencies"])
    extras = {
        name
        for group in project["optional-dependencies"].values()
        for name in _requirement_names(group)
    }
    server = _distributions_imported(root, "orchestrator/core/server")
    assert frozenset({"wsproto"}) in server
    assert set() == {module for module in server if not module & required}
    product = set().union(
        *(_distributions_imported(root, folder) for folder in ("orchestrator", "actors", "plans"))
    )
    assert {frozenset({"trio"}), frozenset({"psycopg"})} <= product
    assert set() == {module for module in product if not module & (required | extras)}
