"""Raw WebSocket clients for the server's own tests: hand-written JSON in, decoded JSON out.

Nothing here uses the orchestrator's client, so the tests check the wire, not our client:
frames are sent as text (or bytes) exactly as written, and what comes back is plain
``json.loads`` output.

Two transports, one interface (:class:`Client`):

* :func:`loopback_client` opens real TCP to a server started with ``open_local_server``;
* :func:`memory_client` serves an in-memory stream pair with ``LocalServer.handle_stream``,
  so trio's MockClock drives both sides (``autojump_clock``).
"""

from __future__ import annotations

import contextlib
import json
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, cast

import attrs
import h11
import trio
import trio.testing
import trio_websocket
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from orchestrator.core.server import LocalServer, RunningServer

TERMINAL: Final = frozenset(
    {"response.completed", "response.failed", "response.incomplete", "error"}
)
# Every key of a response object (docs/protocol.md#the-response-object): the server sends the full
# set, null where unset.
RESPONSE_KEYS: Final = frozenset(
    {
        "id",
        "object",
        "created_at",
        "status",
        "completed_at",
        "model",
        "output",
        "error",
        "incomplete_details",
        "instructions",
        "previous_response_id",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "metadata",
        "usage",
        "store",
        "temperature",
        "top_p",
        "max_output_tokens",
        "reasoning",
        "text",
        "truncation",
        "service_tier",
        "prompt_cache_key",
        "user",
        "background",
    }
)
LOOKUP_TOOL: Final[dict[str, Any]] = {
    "type": "function",
    "name": "lookup",
    "description": "Look a city up.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
QUEUE: Final = 4096
MAX_MESSAGE: Final = 64 * 2**20


@attrs.define(eq=False)
class Client:
    """One raw WebSocket client; ``received`` keeps every decoded event in order."""

    ws: trio_websocket.WebSocketConnection
    received: list[dict[str, Any]] = attrs.field(factory=list)
    # Events of other lanes read while waiting for one lane's response, not yet consumed.
    _backlog: list[dict[str, Any]] = attrs.field(factory=list)

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        """Send a dict as JSON text, or a str/bytes frame exactly as given."""
        if isinstance(message, dict):
            message = json.dumps(message)
        await self.ws.send_message(message)

    async def create(self, **fields: Any) -> None:
        """Send ``response.create`` with ``fields`` (``model`` defaults to the echo model)."""
        await self.send({"type": "response.create", "model": "local-echo", **fields})

    async def receive(self) -> dict[str, Any]:
        message = await self.ws.get_message()
        assert isinstance(message, str), "servers send text frames only (docs/protocol.md)"
        event: dict[str, Any] = json.loads(message)
        self.received.append(event)
        return event

    async def response(self, stream_id: str | None = None) -> list[dict[str, Any]]:
        """Events up to and including the next terminal event (of lane ``stream_id`` if
        given; events of other lanes are still recorded in ``received``)."""
        events: list[dict[str, Any]] = []
        while True:
            mine = [
                e for e in self._backlog if stream_id is None or e.get("stream_id") == stream_id
            ]
            if mine:
                event = mine[0]
                self._backlog.remove(event)
            else:
                event = await self.receive()
                if stream_id is not None and event.get("stream_id") != stream_id:
                    self._backlog.append(event)
                    continue
            events.append(event)
            if event["type"] in TERMINAL:
                return events

    async def turn(self, **fields: Any) -> list[dict[str, Any]]:
        """Create a response and return its events."""
        await self.create(**fields)
        return await self.response(fields.get("stream_id"))

    async def closed(self) -> int | None:
        """Read until the server closes; return the close code."""
        try:
            while True:
                await self.receive()
        except trio_websocket.ConnectionClosed as exc:
            return exc.reason.code if exc.reason is not None else None


def auth(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


@asynccontextmanager
async def loopback_client(
    running: RunningServer,
    *,
    path: str = "/v1/responses",
    headers: Iterable[tuple[bytes, bytes]] | None = None,
    subprotocols: Iterable[str] | None = None,
) -> AsyncIterator[Client]:
    """A raw client over real TCP; ``headers`` replace the default bearer header."""
    url = f"ws://127.0.0.1:{running.port}{path}"
    async with trio_websocket.open_websocket_url(
        url,
        extra_headers=list(headers) if headers is not None else auth(running.token),
        subprotocols=subprotocols,
        message_queue_size=QUEUE,
        max_message_size=MAX_MESSAGE,
        connect_timeout=5,
        disconnect_timeout=5,
    ) as ws:
        try:
            yield Client(ws)
        finally:
            # trio-websocket 0.12 leaves its client socket open when the *server* closes
            # first (it waits for the TCP close, sees EOF and returns without closing).
            await ws._stream.aclose()


@asynccontextmanager
async def memory_client(
    server: LocalServer,
    *,
    path: str = "/v1/responses",
    headers: Iterable[tuple[bytes, bytes]] | None = None,
) -> AsyncIterator[Client]:
    """A raw client over an in-memory stream pair served by ``server.handle_stream``."""
    async with trio.open_nursery() as nursery:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(server.handle_stream, server_stream)
        ws = await trio_websocket.wrap_client_stream(
            nursery,
            cast("Any", client_stream),
            "127.0.0.1",
            path,
            extra_headers=list(headers) if headers is not None else auth(server.token),
            message_queue_size=QUEUE,
            max_message_size=MAX_MESSAGE,
        )
        try:
            yield Client(ws)
        finally:
            with trio.move_on_after(5, shield=True):
                await ws.aclose()
            nursery.cancel_scope.cancel()


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def output_for(call: dict[str, Any], output: str = "ok") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call["call_id"], "output": output}


def terminal(events: list[dict[str, Any]]) -> dict[str, Any]:
    return events[-1]


def calls_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The function call items of a completed response."""
    return [item for item in events[-1]["response"]["output"] if item["type"] == "function_call"]


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def assert_error(
    event: dict[str, Any],
    status: int,
    code: str,
    param: str | None = None,
    *,
    stream_id: str | None = None,
    error_type: str = "invalid_request_error",
) -> None:
    """An ``error`` event with every key of docs/protocol.md#the-error-event, and ``stream_id`` only
    if expected."""
    assert "error" == event["type"]
    assert status == event["status"]
    detail = event["error"]
    assert {"type", "code", "message", "param"} <= detail.keys()
    assert error_type == detail["type"]
    assert code == detail["code"]
    assert param == detail["param"]
    assert isinstance(detail["message"], str)
    assert detail["message"]
    if stream_id is None:
        assert "stream_id" not in event
    else:
        assert stream_id == event["stream_id"]


@attrs.frozen
class HttpAnswer:
    """The server's answer to a hand-written upgrade request."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> Any:
        assert b"application/json" == self.headers[b"content-type"]
        return json.loads(self.body)


async def http_upgrade(
    port: int, path: str = "/v1/responses", headers: Iterable[tuple[bytes, bytes]] = ()
) -> HttpAnswer:
    """Send a WebSocket upgrade request written by hand and read the answer's head and body
    (up to ``content-length``, or to EOF)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
    ).encode() + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            assert chunk, f"connection closed inside the answer's head: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        fields = {}
        for line in lines:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        length = int(fields.get(b"content-length", b"-1"))
        while len(body) < length or length < 0:
            chunk = await stream.receive_some()
            if not chunk:
                break
            body += chunk
    return HttpAnswer(int(status_line.split()[1]), fields, body)


@attrs.define(eq=False)
class RawClient:
    """A WebSocket client on a bare socket that reads only when told to.

    trio-websocket reads for its user in a background task; this one does not, so a test can
    stop reading while it keeps sending (the server then sees a client that does not read).
    The receive buffer is made small before connecting, so the kernel holds little for it.
    """

    stream: trio.SocketStream
    ws: wsproto.WSConnection = attrs.field(
        factory=lambda: wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    )

    @classmethod
    async def connect(cls, running: RunningServer, *, receive_buffer: int = 4096) -> RawClient:
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, receive_buffer)
        await sock.connect(("127.0.0.1", running.port))
        client = cls(trio.SocketStream(sock))
        request = Request(
            host=f"127.0.0.1:{running.port}",
            target="/v1/responses",
            extra_headers=auth(running.token),
        )
        await client.stream.send_all(client.ws.send(request))
        while True:
            data = await client.stream.receive_some()
            assert data, "the server closed during the handshake"
            client.ws.receive_data(data)
            if any(isinstance(event, AcceptConnection) for event in client.ws.events()):
                return client

    async def send(self, message: dict[str, Any]) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=json.dumps(message))))

    async def ping(self, payload: bytes = b"p" * 125) -> None:
        await self.stream.send_all(self.ws.send(Ping(payload=payload)))

    async def read_until_close(self) -> tuple[int, str, list[dict[str, Any]]]:
        """Read everything the server sends until its close frame (answered); returns the
        close code, its reason and the decoded messages before it."""
        messages: list[dict[str, Any]] = []
        parts: list[str] = []
        while True:
            data = await self.stream.receive_some()
            assert data, "the connection ended without a close frame"
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        messages.append(json.loads("".join(parts)))
                        parts.clear()
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(trio.BrokenResourceError):
                        await self.stream.send_all(self.ws.send(event.response()))
                    return event.code, event.reason, messages

    async def aclose(self) -> None:
        await self.stream.aclose()


# -- plain HTTP ---------------------------------------------------------------------------------


@attrs.frozen
class SseEvent:
    """One server-sent event: its ``event:`` name, its ``data:`` text and that text decoded."""

    name: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


@attrs.frozen
class HttpReply:
    """A whole HTTP answer."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> Any:
        assert b"application/json" == self.headers[b"content-type"]
        return json.loads(self.body)

    def events(self) -> list[SseEvent]:
        """The body as server-sent events (every one must be whole)."""
        assert self.headers[b"content-type"].startswith(b"text/event-stream")
        events, rest = parse_sse(self.body)
        assert b"" == rest, f"a partial event at the end: {rest!r}"
        return events


def parse_sse(data: bytes) -> tuple[list[SseEvent], bytes]:
    """The whole events at the start of ``data``, and what follows them."""
    events = []
    while b"\n\n" in data:
        block, data = data.split(b"\n\n", 1)
        name, lines = None, []
        for line in block.decode().split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            else:
                assert "data" == field, f"unexpected SSE line {line!r}"
                lines.append(value)
        events.append(SseEvent(name, "\n".join(lines)))
    return events, data


@attrs.define(eq=False)
class HttpClient:
    """A raw HTTP/1.1 client on one connection (h11 on the client side): requests are
    written as given, answers are read as they come. Requests go one after the other on the
    same connection (keep-alive)."""

    stream: trio.abc.Stream
    token: str | None = None
    conn: h11.Connection = attrs.field(factory=lambda: h11.Connection(h11.CLIENT))
    _pending: bytes = b""
    _events: list[SseEvent] = attrs.field(factory=list)

    async def send_request(
        self,
        method: str = "POST",
        path: str = "/v1/responses",
        body: dict[str, Any] | bytes | None = None,
        headers: Iterable[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Send a request: ``body`` a dict (sent as JSON) or bytes; ``headers`` replace the
        default bearer header."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
        if headers is None:
            headers = auth(self.token) if self.token is not None else []
        fields = [
            (b"host", b"127.0.0.1"),
            *headers,
            (b"content-length", str(len(data)).encode()),
        ]
        if isinstance(body, dict):
            fields.append((b"content-type", b"application/json"))
        request = h11.Request(method=method, target=path, headers=fields)
        await self.stream.send_all(self.conn.send(request) + self.conn.send(h11.Data(data=data)))
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()) or b"")

    async def _next(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.stream.receive_some(65536))

    async def head(self) -> h11.Response:
        """The head of the next answer (interim 100 answers are skipped)."""
        while True:
            event = await self._next()
            if isinstance(event, h11.Response):
                return event
            assert isinstance(event, h11.InformationalResponse), event

    async def event(self) -> SseEvent | None:
        """The next server-sent event of the body being read; ``None`` at its end."""
        while not self._events:
            event = await self._next()
            if isinstance(event, h11.EndOfMessage):
                assert b"" == self._pending, f"a partial event at the end: {self._pending!r}"
                return None
            assert isinstance(event, h11.Data), event
            events, self._pending = parse_sse(self._pending + bytes(event.data))
            self._events.extend(events)
        return self._events.pop(0)

    async def body(self) -> bytes:
        """The rest of the answer's body."""
        data = b""
        while True:
            event = await self._next()
            if isinstance(event, h11.EndOfMessage):
                return data
            assert isinstance(event, h11.Data), event
            data += bytes(event.data)

    async def request(
        self,
        method: str = "POST",
        path: str = "/v1/responses",
        body: dict[str, Any] | bytes | None = None,
        headers: Iterable[tuple[bytes, bytes]] | None = None,
    ) -> HttpReply:
        """Send a request and read the whole answer."""
        await self.send_request(method, path, body, headers)
        head = await self.head()
        data = await self.body()
        return HttpReply(head.status_code, dict(head.headers), data)

    async def post(self, **fields: Any) -> HttpReply:
        """``POST /v1/responses`` with ``fields`` as the JSON body (``model`` defaults to
        the echo model)."""
        return await self.request(body={"model": "local-echo", **fields})

    async def stream_events(self, **fields: Any) -> list[dict[str, Any]]:
        """A streamed create: its events, decoded, after checking each one's framing."""
        reply = await self.post(stream=True, **fields)
        assert 200 == reply.status, reply.body
        decoded = []
        for event in reply.events():
            data = event.json()
            assert data["type"] == event.name
            decoded.append(data)
        return decoded

    async def closed(self) -> bool:
        """Whether the server closed the connection (reads until EOF)."""
        try:
            return b"" == await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            return True


@asynccontextmanager
async def http_client(running: RunningServer) -> AsyncIterator[HttpClient]:
    """A raw HTTP client over real TCP, with the server's bearer token."""
    stream = await trio.open_tcp_stream("127.0.0.1", running.port)
    async with stream:
        yield HttpClient(stream, running.token)


@asynccontextmanager
async def memory_http_client(server: LocalServer) -> AsyncIterator[HttpClient]:
    """A raw HTTP client over an in-memory stream pair served by ``server.handle_stream``."""
    async with trio.open_nursery() as nursery:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(server.handle_stream, server_stream)
        try:
            yield HttpClient(client_stream, server.token)
        finally:
            with trio.CancelScope(shield=True):
                await client_stream.aclose()
            nursery.cancel_scope.cancel()
