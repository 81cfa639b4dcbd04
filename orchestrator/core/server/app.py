"""The embedded Responses server: WebSocket mode and plain HTTP, lanes, cache, generation,
faults.

One :class:`LocalServer` serves any number of connections. Each begins with a request head
(:func:`~orchestrator.core.server.http_transport.read_head`): a WebSocket upgrade becomes a
:class:`_ServerConnection`, anything else is plain HTTP served by an :class:`_HttpConnection`
(``POST /v1/responses``, answered with SSE or JSON; docs/protocol.md#over-http). Both make
responses the same way (:class:`_Connection`). Each connection runs in its own
nursery and is isolated: an unexpected error in one closes that one with 1011 and nothing
else (an uncaught error in a connection handler would otherwise cancel every connection).

The WebSocket itself is :class:`~orchestrator.core.server.transport.ServerWebSocket` (wsproto,
one read loop and one buffered writer per connection): the events a response produces
between two checkpoints leave in one write. Sending an event is therefore synchronous
(:meth:`_ServerConnection.send`); producers await only for pacing, faults and backpressure.

What to answer is decided by pure code: a request's checks in :mod:`.checks`, the ordered
events of a response in :class:`~orchestrator.core.protocol.writer.ResponseWriter`. This module
is the trio glue around them: sockets, lanes, the latency model's pacing and injected faults.

The server accepts any trio stream (:meth:`LocalServer.handle_stream`), so the same code
serves real TCP (:func:`open_local_server`, ``orchestrator serve``) and in-memory stream pairs
driven by trio's MockClock in tests.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import random
import time
from collections import Counter
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol
from urllib.parse import urlsplit

import attrs
import h11
import msgspec
import trio
from loguru import logger
from msgspec import UNSET, UnsetType

from orchestrator.core.protocol.codec import decode_client_event, decode_create_body, encode
from orchestrator.core.protocol.events import (
    ClientEvent,
    ErrorDetail,
    ErrorEvent,
    FunctionCallItem,
    InputTokensDetails,
    Item,
    MessageItem,
    ReasoningItem,
    ResponseCompleted,
    ResponseCreate,
    ResponseFailed,
    ResponseIncomplete,
    ResponseLifecycleEvent,
    ResponseSteer,
    ServerEvent,
    SteerFailed,
    SteerInfo,
    UnknownEvent,
    UnknownItem,
    Usage,
)
from orchestrator.core.protocol.writer import (
    DELTAS,
    Call,
    Hosted,
    Part,
    Reasoning,
    ResponseWriter,
    Text,
    error_event,
    error_type,
    response_object,
)
from orchestrator.errors import ConfigurationError, RemoteProtocolError

from .checks import (
    EXPIRED,
    LIMIT_MESSAGE,
    QUEUE_FULL,
    Refusal,
    check_body,
    check_continuation,
    check_create,
    check_http_create,
    check_lane,
    check_message,
    check_tool_outputs,
    unknown_event,
)
from .config import Fault, ServerConfig
from .hosted import check_tools
from .http_transport import BodyTooLarge, Head, ServerHttp, is_websocket_upgrade, read_head
from .models import (
    ModelReply,
    ModelRequest,
    Policy,
    Script,
    count_tokens,
    item_text,
    iter_text,
    limit_output,
    load_script,
    respond_with_hosted,
    select_policy,
    split_arguments,
)
from .state import CachedResponse, IdFactory, ResponseStore
from .transport import ServerWebSocket, TransportClosed, peer_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

__all__ = [
    "LocalServer",
    "RunningServer",
    "ServerStatistics",
    "open_local_server",
    "serve_local_server",
]

RESPONSES_PATHS: Final = frozenset({"/v1/responses", "/responses"})
_RECORD_LIMIT: Final = 100_000
_NO_TOOLS: Final = msgspec.Raw(b"[]")
_QUEUE_SIZE: Final = 256


@attrs.frozen
class ServerStatistics:
    """A snapshot of what the server has done since it started.

    ``handshakes_pending``, ``buffered_bytes``, ``request_bytes`` and ``queued_requests`` are
    what open connections hold now (summed over them); the ``peak_*`` fields are the most
    one connection held at any time. ``connections_*`` count WebSockets; ``http_connections``
    the connections that spoke plain HTTP, ``http_requests`` the requests they carried (any
    method and path) and ``http_streams`` the answers streamed as server-sent events;
    ``prompt_cache_misses`` the HTTP requests the latency model's ``cache_miss_rate`` drew.
    """

    connections_opened: int
    connections_active: int
    handshakes_pending: int
    handshakes_rejected: int
    handshakes_timed_out: int
    handshakes_over_capacity: int
    clients_not_reading: int
    responses_started: int
    responses_completed: int
    responses_failed: int
    responses_incomplete: int
    warmups: int
    errors_sent: dict[str, int]
    messages_received: int
    events_sent: int
    bytes_received: int
    bytes_sent: int
    expiries: int
    faults_fired: int
    cache_hits: int
    store_hydrations: int
    connection_errors: int
    buffered_bytes: int
    peak_buffered_bytes: int
    request_bytes: int
    peak_request_bytes: int
    queued_requests: int
    http_connections: int
    http_requests: int
    http_streams: int
    prompt_cache_misses: int


@attrs.define
class _Counters:
    connections_opened: int = 0
    connections_active: int = 0
    handshakes_pending: int = 0
    handshakes_rejected: int = 0
    handshakes_timed_out: int = 0
    handshakes_over_capacity: int = 0
    clients_not_reading: int = 0
    responses_started: int = 0
    responses_completed: int = 0
    responses_failed: int = 0
    responses_incomplete: int = 0
    warmups: int = 0
    errors_sent: Counter[str] = attrs.field(factory=Counter)
    messages_received: int = 0
    events_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    expiries: int = 0
    faults_fired: int = 0
    cache_hits: int = 0
    store_hydrations: int = 0
    connection_errors: int = 0
    http_connections: int = 0
    http_requests: int = 0
    http_streams: int = 0
    prompt_cache_misses: int = 0
    # Peaks of connections already closed (open ones are read at snapshot time).
    peak_buffered_bytes: int = 0
    peak_request_bytes: int = 0


@attrs.define(eq=False)
class _FaultPlan:
    """Faults waiting to fire, with how many times each may still fire."""

    _entries: list[list[Any]] = attrs.field(factory=list)  # [fault, remaining]

    def add(self, fault: Fault) -> None:
        self._entries.append([fault, fault.times])

    def __bool__(self) -> bool:
        """Whether any fault can still fire (exhausted ones are dropped)."""
        return bool(self._entries)

    def take(
        self,
        connection: int,
        response: int | None,
        events: int | None,
        *,
        handshake: bool,
        ended: bool = False,
    ) -> Fault | None:
        for entry in self._entries:
            fault, remaining = entry
            if remaining <= 0 or fault.at_handshake != handshake:
                continue
            if ended and fault.kind in _REQUEST_FAULTS:
                continue
            if fault.connection is not None and fault.connection != connection:
                continue
            # Over HTTP every POST has its "handshake": the response index picks the POST.
            if handshake and response is not None and fault.response not in (None, response):
                continue
            if not handshake:
                if fault.response is not None and fault.response != response:
                    continue
                if fault.after_events != events:
                    continue
            entry[1] = remaining - 1
            if entry[1] == 0:
                self._entries.remove(entry)
            return fault  # type: ignore[no-any-return]
        return None


_REQUEST_FAULTS: Final = frozenset({"error", "fail"})
# Faults that act on the connection itself: whatever is buffered is flushed before them.
_TRANSPORT_FAULTS: Final = frozenset({"close", "abort", "stall", "blackhole"})


class _Stop(Exception):
    """Internal: this connection is finished (closed or aborted by a fault)."""


@attrs.define(eq=False)
class LocalServer:
    """The embedded server's state, shared by all its connections.

    Use :func:`open_local_server` to run it on a TCP port, or feed it streams yourself with
    :meth:`handle_stream` (in-memory transports in tests).
    """

    config: ServerConfig
    token: str = attrs.field(repr=False)
    _store: ResponseStore = attrs.field(init=False)
    _counters: _Counters = attrs.field(factory=_Counters, init=False)
    _faults: _FaultPlan = attrs.field(factory=_FaultPlan, init=False)
    _script: Script | None = attrs.field(default=None, init=False)
    _policies: dict[str, Policy] = attrs.field(factory=dict, init=False)
    _connection_count: int = attrs.field(default=0, init=False)
    _connections: set[_Connection] = attrs.field(factory=set, init=False)
    # Draws the HTTP prompt-cache misses: seeded, so a benchmark's runs repeat.
    _cache_rng: random.Random = attrs.field(init=False)
    received: list[tuple[int, ClientEvent | UnknownEvent]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        self._store = ResponseStore(self.config.store_capacity)
        self._cache_rng = random.Random(self.config.seed or 0)
        for fault in self.config.faults:
            self._faults.add(fault)
        if self.config.script is not None:
            self._script = load_script(self.config.script)
        elif self.config.model == "scripted":
            raise ConfigurationError("model 'scripted' needs a script")

    @classmethod
    def from_config(cls, config: ServerConfig) -> LocalServer:
        token = config.token if config.token is not None else _random_token()
        return cls(config, token)

    # -- public API ---------------------------------------------------------------------------

    def statistics(self) -> ServerStatistics:
        # The counters' fields plus what open connections hold now (a field missing from
        # either side fails here, loudly).
        counters = attrs.asdict(self._counters, recurse=False)
        counters["errors_sent"] = dict(self._counters.errors_sent)
        connections = self._connections
        counters["peak_buffered_bytes"] = max(
            [self._counters.peak_buffered_bytes] + [c.transport.peak_buffered for c in connections]
        )
        counters["peak_request_bytes"] = max(
            [self._counters.peak_request_bytes] + [c.peak_request_bytes for c in connections]
        )
        return ServerStatistics(
            **counters,
            buffered_bytes=sum(c.transport.buffered for c in connections),
            request_bytes=sum(c.request_bytes for c in connections),
            queued_requests=sum(c.queued_requests for c in connections),
        )

    def inject(self, fault: Fault) -> None:
        """Add a fault at run time; it fires on the next response (or connection) it matches."""
        self._faults.add(fault)

    def drop_caches(self) -> None:
        """Forget every connection's cached responses (the store is kept)."""
        for connection in self._connections:
            connection.drop_cache()

    def _prompt_cache_missed(self) -> bool:
        """Whether this HTTP request misses the prompt cache (``cache_miss_rate``)."""
        rate = self.config.latency.cache_miss_rate
        if rate and self._cache_rng.random() < rate:
            self._counters.prompt_cache_misses += 1
            return True
        return False

    def policy_for(self, model: str) -> Policy:
        policy = self._policies.get(model)
        if policy is None:
            policy = select_policy(model, self.config.model, self._script)
            self._policies[model] = policy
        return policy

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection on ``stream`` until it ends: a WebSocket, or HTTP
        requests one after the other (docs/protocol.md#over-http). Never raises ``Exception``.
        """
        self._connection_count += 1
        index = self._connection_count
        config = self.config
        counters = self._counters
        log = logger.bind(server_connection=index)
        if counters.handshakes_pending >= config.max_pending_handshakes:
            await self._refuse_busy(stream, index, log)
            return
        # One deadline for the whole handshake: reading the request's head, then answering
        # the upgrade (over HTTP: the first request's head).
        deadline = trio.current_time() + config.handshake_timeout
        head: Head | None = None
        counters.handshakes_pending += 1
        try:
            with trio.CancelScope(deadline=deadline):
                head = await read_head(stream)
        finally:
            counters.handshakes_pending -= 1
        request = head.request if head is not None else None
        if head is None or (request is None and head.error is None):
            if head is None:
                self._timed_out(index, log, peer_name(stream))
            with trio.CancelScope(shield=True):
                await stream.aclose()
        elif config.http and (request is None or not is_websocket_upgrade(request)):
            await self._serve_http(stream, head, index, log)
        else:
            await self._serve_websocket(stream, head.raw, deadline, index, log)

    def _timed_out(self, index: int, log: Any, peer: str) -> None:
        self._counters.handshakes_timed_out += 1
        log.info(
            "connection {} from {}: dropped, no handshake within {:g} s",
            index,
            peer,
            self.config.handshake_timeout,
        )

    async def _serve_websocket(
        self, stream: trio.abc.Stream, head: bytes, deadline: float, index: int, log: Any
    ) -> None:
        """Answer the upgrade whose request (``head``, and whatever followed it) was read,
        then serve the WebSocket."""
        config = self.config
        transport = ServerWebSocket(
            stream,
            config.max_message_size,
            max_buffered=config.max_buffered_bytes,
            send_timeout=config.send_timeout,
        )
        # The writer runs shielded, so a server shutdown does not cancel it: the 1001 close
        # still goes out (and is answered) while the connection's own tasks are being
        # cancelled; it is cancelled last. (Not a shielded nursery handed out by start():
        # a handler cancelled before start() returned would wait for it for ever.)
        writer_scope = trio.CancelScope(shield=True)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_shielded, writer_scope, transport.serve_writes)
                try:
                    await self._serve(transport, index, log, head, deadline)
                finally:
                    writer_scope.cancel()
                    nursery.cancel_scope.cancel()
        except* (_Stop, TransportClosed):
            pass  # already reported where it happened
        except* Exception as group:
            # Isolation: whatever went wrong stays in this connection.
            self._counters.connection_errors += 1
            log.opt(exception=group).warning("connection {} failed: {!r}", index, group)
        finally:
            await transport.close_stream()

    async def _serve_http(self, stream: trio.abc.Stream, head: Head, index: int, log: Any) -> None:
        """Serve plain HTTP requests on ``stream``, the first one's ``head`` already read."""
        config = self.config
        counters = self._counters
        transport = ServerHttp(
            stream,
            head.connection,
            max_buffered=config.max_buffered_bytes,
            send_timeout=config.send_timeout,
        )
        connection = _HttpConnection(server=self, transport=transport, index=index, log=log)
        transport.on_give_up = connection.on_give_up
        counters.http_connections += 1
        self._connections.add(connection)
        log.debug("connection {} from {}: HTTP", index, transport.peer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.serve_writes)
                try:
                    await connection.run(head)
                finally:
                    nursery.cancel_scope.cancel()
        except* (_Stop, TransportClosed):
            pass  # the client left, or a fault cut the connection
        except* Exception as group:
            # Isolation: whatever went wrong stays in this connection.
            counters.connection_errors += 1
            log.opt(exception=group).warning("connection {} failed: {!r}", index, group)
        finally:
            self._connections.discard(connection)
            counters.peak_buffered_bytes = max(
                counters.peak_buffered_bytes, transport.peak_buffered
            )
            counters.peak_request_bytes = max(
                counters.peak_request_bytes, connection.peak_request_bytes
            )
            await transport.close_stream()
            log.debug("connection {} from {}: HTTP connection closed", index, transport.peer)

    async def _refuse_busy(self, stream: trio.abc.Stream, index: int, log: Any) -> None:
        """Answer 503 at once, without reading: too many connections are in their handshake."""
        counters = self._counters
        counters.handshakes_rejected += 1
        counters.handshakes_over_capacity += 1
        log.info(
            "connection {} from {}: handshake refused with 503 server_busy: {} handshakes "
            "pending (max_pending_handshakes)",
            index,
            peer_name(stream),
            counters.handshakes_pending,
        )
        body = _error_body(
            503,
            "server_busy",
            "Too many connections are opening at once; retry in a moment.",
        )
        answer = (
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        try:
            with trio.move_on_after(self.config.handshake_timeout):
                await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # gone already
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    # -- per connection -----------------------------------------------------------------------

    async def _serve(
        self, transport: ServerWebSocket, index: int, log: Any, head: bytes, deadline: float
    ) -> None:
        config = self.config
        counters = self._counters
        peer = transport.peer
        accepted = False
        counters.handshakes_pending += 1
        try:
            with trio.CancelScope(deadline=deadline) as handshake:
                accepted = await self._handshake(transport, index, log, peer, handshake, head)
        finally:
            counters.handshakes_pending -= 1
        if handshake.cancelled_caught:
            self._timed_out(index, log, peer)
            return
        if not accepted:
            return
        counters.connections_opened += 1
        counters.connections_active += 1
        connection = _ServerConnection(server=self, transport=transport, index=index, log=log)
        transport.on_give_up = connection.on_give_up
        self._connections.add(connection)
        log.info("connection {} from {} opened", index, peer)
        # 1001 "going away" when the server shuts down; 1011 when this connection broke.
        close_code = 1001
        try:
            await connection.run()
        except Exception as exc:
            close_code = 1011
            counters.connection_errors += 1
            log.opt(exception=exc).warning("connection {} failed: {!r}", index, exc)
            raise _Stop from exc
        finally:
            self._connections.discard(connection)
            counters.connections_active -= 1
            counters.peak_buffered_bytes = max(
                counters.peak_buffered_bytes, transport.peak_buffered
            )
            counters.peak_request_bytes = max(
                counters.peak_request_bytes, connection.peak_request_bytes
            )
            with trio.move_on_after(config.close_timeout, shield=True):
                await transport.aclose(close_code)
            if transport.closed_by is None:
                log.info("connection {} from {} lost (no close frame: 1006)", index, peer)
            else:
                log.info(
                    "connection {} from {} closed by the {} with {}",
                    index,
                    peer,
                    transport.closed_by,
                    transport.close_code,
                )

    async def _handshake(
        self,
        transport: ServerWebSocket,
        index: int,
        log: Any,
        peer: str,
        deadline: trio.CancelScope,
        head: bytes,
    ) -> bool:
        """Read the upgrade request (from ``head``, the bytes already read, on) and answer
        it; whether the connection was accepted."""
        config = self.config
        request = await transport.receive_request(head)
        if request is None:
            # Gone, or not a WebSocket upgrade (answered with wsproto's 400 or 426).
            if transport.refused_status is not None:
                self._counters.handshakes_rejected += 1
                log.info(
                    "connection {} from {}: handshake refused with {}: not a WebSocket "
                    "upgrade request",
                    index,
                    peer,
                    transport.refused_status,
                )
            return False
        if not config.websocket:
            # An HTTP-only endpoint, the way Ollama answers: before anything else, since
            # nothing else about the request matters (docs/protocol.md#an-http-only-server).
            await self._reject(
                transport,
                (index, log, peer),
                426,
                "websocket_not_supported",
                "This server does not speak WebSocket mode: send HTTP POST /v1/responses "
                "(stream: true for server-sent events) instead.",
            )
            return False
        fault = self._faults.take(index, None, None, handshake=True)
        if fault is not None:
            self._counters.faults_fired += 1
            if fault.kind == "delay_handshake":
                # An injected slow server, not a slow client: the deadline moves with it.
                deadline.deadline += fault.duration or 0
                await trio.sleep(fault.duration or 0)
            elif fault.kind == "reject":
                headers = []
                if fault.retry_after is not None:
                    headers.append((b"retry-after", str(fault.retry_after).encode()))
                await self._reject(
                    transport,
                    (index, log, peer),
                    fault.status,
                    fault.error_code,
                    fault.message or "rejected",
                    headers,
                )
                return False
        path = urlsplit(request.target).path
        where = (index, log, peer)
        if path not in RESPONSES_PATHS:
            await self._reject(
                transport,
                where,
                404,
                "not_found",
                f"no WebSocket endpoint at {path}; use /v1/responses",
            )
            return False
        request_headers = {
            bytes(name).lower(): bytes(value) for name, value in request.extra_headers
        }
        origin = request_headers.get(b"origin")
        if origin is not None and origin.decode("latin-1") not in config.allowed_origins:
            await self._reject(
                transport, where, 403, "origin_not_allowed", "this Origin is not allowed"
            )
            return False
        if not self._authorised(request_headers.get(b"authorization")):
            await self._reject(
                transport,
                where,
                401,
                "invalid_api_key",
                "Incorrect API key provided. The embedded server expects the token it printed "
                "at start-up.",
            )
            return False
        transport.accept()
        return True

    def _authorised(self, header: bytes | None) -> bool:
        if header is None:
            return False
        scheme, _, credentials = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self.token.encode())

    async def _reject(
        self,
        transport: ServerWebSocket,
        where: tuple[int, Any, str],
        status: int,
        code: str,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Refuse the upgrade with ``status`` and a JSON error body (never echoing headers,
        so never the token)."""
        index, log, peer = where
        self._counters.handshakes_rejected += 1
        # No colon after the code: "invalid_api_key: ..." would read as a secret to redact.
        log.info(
            "connection {} from {}: handshake refused with {} {} ({})",
            index,
            peer,
            status,
            code,
            message,
        )
        await transport.reject(
            status,
            [(b"content-type", b"application/json"), *(headers or [])],
            _error_body(status, code, message),
        )


def _error_body(status: int, code: str | None, message: str, param: str | None = None) -> bytes:
    """The JSON body of a refused handshake or HTTP request, shaped like the service's errors."""
    error = {"message": message, "type": error_type(status), "code": code, "param": param}
    return json.dumps({"error": error}).encode()


@attrs.define(eq=False)
class _Request:
    create: ResponseCreate
    lane: str | None
    # The tools exactly as the client sent them: echoed in the response object
    # (docs/protocol.md#function-tools) without decoding and re-encoding them every turn.
    tools_raw: msgspec.Raw
    size: int  # of the message, counted against max_request_bytes until the response ends


@attrs.define(eq=False)
class _Slot:
    """Where a connection keeps a lane's latest response
    (docs/protocol.md#the-connection-local-cache)."""

    key: str | None
    latest: CachedResponse | None = None


@attrs.define(eq=False, kw_only=True)
class _Lane(_Slot):
    """A WebSocket lane: its slot, and the creates waiting for it."""

    send: trio.MemorySendChannel[_Request]
    receive: trio.MemoryReceiveChannel[_Request]
    busy: int = 0


class _Output(Protocol):
    """What sending a response needs of a connection's transport (both kinds have it)."""

    @property
    def must_wait(self) -> bool: ...

    @property
    def buffered(self) -> int: ...

    @property
    def peak_buffered(self) -> int: ...

    async def wait_writable(self) -> None: ...

    async def flush(self) -> None: ...


@attrs.define(eq=False)
class _ResponseStream:
    """Sending the events of one response: its writer's drafts, after the fault hooks."""

    connection: _Connection
    index: int
    writer: ResponseWriter

    @property
    def sequence(self) -> int:
        """How many events of this response have been numbered."""
        return self.writer.sequence

    async def emit(self, draft: ServerEvent) -> None:
        """Send the next event of this response, after firing the faults due before it.

        Checkpoints only when it has to wait (a fault, or backpressure): the events of a
        turn are produced back to back and leave in one write (see ``transport``).
        """
        connection = self.connection
        if connection.server._faults:
            await connection.before_event(self)
        # Wait *before* adding: each producer adds at most one event past the high-water
        # mark, so the buffer stays bounded however many lanes are streaming.
        if connection.transport.must_wait:
            await connection.transport.wait_writable()
        # No checkpoint between numbering and sending: events of concurrent senders (a steer
        # answer, say) reach the socket in sequence order.
        connection.send(self.writer.take(draft))

    def send_now(self, draft: ServerEvent) -> None:
        """Send an event at once: no fault hook, no backpressure wait."""
        self.connection.send(self.writer.take(draft))


@attrs.frozen
class _InputTokens:
    """The input of a response, in tokens (docs/protocol.md#determinism-and-latency).

    ``total``: all of it; ``cached``: served from a cache; ``sent``: carried by the request
    (instructions, tools, ``input``); ``rehydrated``: the chain loaded from the store;
    ``own``: the request's ``input`` items alone, what this response adds to its chain.
    """

    total: int
    cached: int
    sent: int
    rehydrated: int
    own: int


@attrs.define(eq=False, kw_only=True)
class _Connection:
    """What a connection of either kind does with a create: check it against what the
    server holds, run the model, send the response's events (through :meth:`send`), and
    remember the response. :class:`_ServerConnection` is a WebSocket, :class:`_HttpConnection`
    a plain HTTP connection; each says how an event is sent and where a parent is found.
    """

    server: LocalServer
    index: int
    log: Any
    transport: _Output
    _responses: int = 0
    _expired: bool = False
    #: Bytes of the creates this connection holds (queued or running), and the most ever.
    request_bytes: int = 0
    peak_request_bytes: int = 0
    #: Creates waiting for their lane or for an active slot.
    queued_requests: int = 0
    _ids: IdFactory = attrs.field(init=False)
    _active_responses: dict[str, _ResponseStream] = attrs.field(factory=dict)
    #: Plain HTTP (the latency model charges its request costs), not a WebSocket.
    http: ClassVar[bool] = False

    def __attrs_post_init__(self) -> None:
        self._ids = IdFactory(self.server.config.seed, self.index)

    @property
    def counters(self) -> _Counters:
        return self.server._counters

    # -- what each kind of connection says ------------------------------------------------------

    def send(self, event: ServerEvent) -> None:
        """Send one event of a response to the client (or keep it for the answer).

        Raises:
            TransportClosed: the connection is closing or gone.
        """
        raise NotImplementedError

    async def _fire(self, fault: Fault, stream: _ResponseStream) -> None:
        """Carry out an injected ``fault`` before the next event of ``stream``."""
        raise NotImplementedError

    def _lookup(self, response_id: str) -> tuple[CachedResponse | None, _Slot | None]:
        """The response ``response_id`` names, and the slot whose latest it is (``None``:
        it came from the store, or nowhere)."""
        raise NotImplementedError

    def drop_cache(self) -> None:
        """Forget the responses this connection holds in memory (the store keeps its own)."""

    # -- responses ----------------------------------------------------------------------------

    def refuse(self, refusal: Refusal, stream_id: str | UnsetType = UNSET) -> None:
        """Answer with the ``error`` event a check decided on (``stream_id``: the create's
        lane, echoed when the refusal concerns it)."""
        self.send(
            error_event(
                refusal.status,
                refusal.code,
                refusal.message,
                param=refusal.param,
                stream_id=stream_id if refusal.lane else UNSET,
            )
        )

    async def before_event(self, stream: _ResponseStream, *, ended: bool = False) -> None:
        """Fire the faults due before the next event of ``stream``.

        With ``ended`` (the terminal event is out) only transport faults apply: a second
        terminal event would break the protocol rather than simulate a failure.
        """
        while True:
            fault = self.server._faults.take(
                self.index, stream.index, stream.sequence, handshake=False, ended=ended
            )
            if fault is None:
                return
            await self._fire(fault, stream)

    def _injected_error(self, fault: Fault, stream: _ResponseStream) -> None:
        """Send the ``error`` event of an ``error`` fault, ending ``stream``'s response."""
        headers: dict[str, str] | UnsetType = UNSET
        if fault.retry_after is not None:
            headers = {"retry-after": str(fault.retry_after)}
        connection_scoped = fault.error_code == "websocket_connection_limit_reached"
        default_message = LIMIT_MESSAGE if connection_scoped else "injected error"
        writer = stream.writer
        self.send(
            error_event(
                fault.status,
                fault.error_code,
                fault.message or default_message,
                stream_id=UNSET if connection_scoped else writer.stream_id,
                # Before response.created the error is an admission error: no number.
                sequence_number=writer.next_sequence() if writer.sequence else UNSET,
                headers=headers,
            )
        )

    def _evict(self, response_id: str, lane: _Slot) -> None:
        if lane.latest is not None and lane.latest.id == response_id:
            lane.latest = None

    async def _process(self, create: ResponseCreate, lane: _Slot, tools_raw: msgspec.Raw) -> None:
        stream_id = create.stream_id
        if self._expired:
            self.refuse(EXPIRED)
            return
        parent: CachedResponse | None = None
        parent_lane: _Slot | None = None
        previous = create.previous_response_id
        if isinstance(previous, str):
            parent, parent_lane = self._lookup(previous)
            refusal = check_continuation(previous, parent)
            if refusal is not None:
                self._evict(previous, lane)
                self.refuse(refusal, stream_id)
                return
            if parent_lane is not None:
                self.counters.cache_hits += 1
            else:
                self.counters.store_hydrations += 1
        unsupported = check_tools(create.tools if isinstance(create.tools, list) else ())
        if unsupported is not None:
            self.refuse(
                Refusal(400, unsupported.code, unsupported.message, param=unsupported.param),
                stream_id,
            )
            return
        new_input = _input_items(create.input)
        refusal = check_tool_outputs(
            parent, new_input, require_all=self.server.config.require_tool_outputs
        )
        if refusal is not None:
            if parent is not None and parent_lane is lane:
                self._evict(parent.id, lane)
            self.refuse(refusal, stream_id)
            return
        self._responses += 1
        response_id = self._ids.response()
        # Every lifecycle event of the response carries this object (created_at included),
        # the terminal one with its outcome filled in.
        writer = ResponseWriter(
            response_object(create, response_id, created_at=int(time.time()), tools=tools_raw),
            self._ids,
            stream_id,
            seal=_opaque
            if isinstance(create.include, list) and "reasoning.encrypted_content" in create.include
            else None,
        )
        stream = _ResponseStream(self, self._responses, writer)
        if parent is not None and parent_lane is lane:
            # The lane's slot moves on to the new response (docs/protocol.md#eviction): with
            # store=false the parent is gone for good once this response starts.
            lane.latest = None
        self._active_responses[response_id] = stream
        try:
            await self._generate(create, lane, stream, parent, parent_lane, new_input)
        except _EndResponse as end:
            if end.evict and parent is not None and parent_lane is lane:
                self._evict(parent.id, lane)
            if end.failed is not None:
                # Reached only from a "fail" fault before the terminal event was sent. A
                # response must exist before it can fail: announce it first if needed.
                if writer.sequence == 0:
                    stream.send_now(writer.created())
                self._send_failed(stream, end.failed, end.message)
        finally:
            self._active_responses.pop(response_id, None)

    async def _generate(
        self,
        create: ResponseCreate,
        lane: _Slot,
        stream: _ResponseStream,
        parent: CachedResponse | None,
        parent_lane: _Slot | None,
        new_input: list[Item],
    ) -> None:
        writer = stream.writer
        self.counters.responses_started += 1
        tokens = self._count_input(create, writer.response.tools, parent, parent_lane, new_input)
        latency = self.server.config.latency
        timed = not latency.is_zero
        if timed:
            # The API's work on the request, before the response exists.
            delay = latency.request_seconds(
                http=self.http, sent_tokens=tokens.sent, rehydrated_tokens=tokens.rehydrated
            )
            if delay:
                await trio.sleep(delay)
        for draft in writer.opening():
            await stream.emit(draft)
        total_input, cached = tokens.total, tokens.cached
        if timed:
            # The model reads what is not cached, then thinks until its first token.
            delay = latency.input_seconds(
                total_input - cached, generate=create.generate is not False
            )
            if delay:
                await trio.sleep(delay)
        reply = ModelReply()
        context: tuple[Item, ...] | None = None
        if create.generate is not False:
            context = (*(parent.context() if parent is not None else ()), *new_input)
            hosted, reply = self._respond(create, context)
            if reply.error is not None:
                message = reply.message or "scripted error"
                await stream.emit(writer.error(reply.error_status, reply.error, message))
                raise _EndResponse(evict=True)
            tokens_per_second = self.server.config.latency.tokens_per_second
            # The service's own tools ran first, inside this response.
            parts = (*(Hosted(item) for item in hosted), *_parts(reply))
            await self._stream_output(stream, parts, tokens_per_second)
        else:
            self.counters.warmups += 1
        output_tokens = writer.output_tokens
        usage = Usage(
            input_tokens=total_input,
            input_tokens_details=InputTokensDetails(cached_tokens=cached, cache_write_tokens=0),
            output_tokens=output_tokens,
            total_tokens=total_input + output_tokens,
        )
        if reply.failed is not None:
            self._send_failed(stream, reply.failed, reply.message, usage=usage, output=True)
            raise _EndResponse(evict=True)
        if reply.incomplete is not None:
            status = "incomplete"
            await stream.emit(writer.incomplete(usage, reply.incomplete))
            self.counters.responses_incomplete += 1
        else:
            status = "completed"
            await stream.emit(writer.completed(usage, completed_at=int(time.time())))
            self.counters.responses_completed += 1
        self.log.debug(
            "connection {} response {} {}: {} input tokens ({} cached), {} output tokens",
            self.index,
            writer.response.id,
            status,
            total_input,
            cached,
            output_tokens,
        )
        self._remember(lane, stream, parent, new_input, status, tokens.own, context)
        # A fault may be due right after the terminal event ("completed, then the socket died").
        if self.server._faults:
            await self.before_event(stream, ended=True)

    def _count_input(
        self,
        create: ResponseCreate,
        tools_raw: msgspec.Raw,
        parent: CachedResponse | None,
        parent_lane: _Slot | None,
        new_input: list[Item],
    ) -> _InputTokens:
        """The input tokens of a response: all of them, the cached ones, the ones its
        request carries and the ones of a chain loaded from the store."""
        instructions = create.instructions if isinstance(create.instructions, str) else ""
        tools_bytes = len(tools_raw) if isinstance(create.tools, list) and create.tools else 0
        prefix_tokens = count_tokens(instructions) + -(-tools_bytes // 4)
        input_tokens = sum(count_tokens(item_text(item)) for item in new_input)
        parent_tokens = parent.context_tokens if parent is not None else 0
        return _InputTokens(
            total=parent_tokens + prefix_tokens + input_tokens,
            cached=self._cached_tokens(parent, parent_lane, prefix_tokens, new_input),
            sent=prefix_tokens + input_tokens,
            rehydrated=parent_tokens if parent_lane is None else 0,
            own=input_tokens,
        )

    def _cached_tokens(
        self,
        parent: CachedResponse | None,
        parent_lane: _Slot | None,
        prefix_tokens: int,
        new_input: list[Item],
    ) -> int:
        """The input tokens served from a cache. On a WebSocket: the chain and the prefix
        (instructions, tools) when the parent came from the connection-local cache."""
        if parent is None or parent_lane is None:
            return 0
        return parent.context_tokens + prefix_tokens

    def _respond(
        self, create: ResponseCreate, context: tuple[Item, ...]
    ) -> tuple[list[UnknownItem], ModelReply]:
        """Ask the local model the create names for its reply, the create's hosted tools
        run in between (their output items come first)."""
        model = create.model if isinstance(create.model, str) else ""
        request = ModelRequest(
            model=model,
            instructions=(create.instructions if isinstance(create.instructions, str) else "")
            or None,
            tools=tuple(create.tools) if isinstance(create.tools, list) else (),
            context=context,
            parallel_tool_calls=create.parallel_tool_calls is not False,
            tool_choice=_or(create.tool_choice, "auto"),
            text_format=_text_format(create.text),
            max_tool_calls=_or(create.max_tool_calls, None),
        )
        hosted, reply = respond_with_hosted(self.server.policy_for(model), request, self._ids.item)
        return hosted, limit_output(reply, _or(create.max_output_tokens, None))

    def _remember(
        self,
        lane: _Slot,
        stream: _ResponseStream,
        parent: CachedResponse | None,
        new_input: list[Item],
        status: str,
        input_tokens: int,
        context: tuple[Item, ...] | None,
    ) -> None:
        """Keep a finished response as its lane's latest (and in the store with store=true).

        ``input_tokens`` are those of the request's own ``input`` items: the chain's earlier
        turns are counted by the parent, and instructions and tools by every request."""
        writer = stream.writer
        output_items = tuple(writer.output)
        cached_response = CachedResponse.create(
            writer.response.id,
            parent,
            tuple(new_input),
            output_items,
            status,
            store=writer.response.store is not False,
            tokens=input_tokens + sum(count_tokens(item_text(item)) for item in output_items),
            context=(*context, *output_items) if context is not None else None,
        )
        lane.latest = cached_response
        if cached_response.store:
            self.server._store.put(cached_response)

    def _send_failed(
        self,
        stream: _ResponseStream,
        code: str,
        message: str | None,
        *,
        usage: Usage | None = None,
        output: bool = False,
    ) -> None:
        """End ``stream`` with ``response.failed`` (``output``: with what it produced)."""
        writer = stream.writer
        self.counters.responses_failed += 1
        self.log.debug(
            "connection {} response {} failed: {} ({} input tokens, {} output tokens)",
            self.index,
            writer.response.id,
            code,
            usage.input_tokens if usage is not None else 0,
            usage.output_tokens if usage is not None else 0,
        )
        failed = writer.failed(code, message, usage=usage, output=writer.output if output else ())
        stream.send_now(failed)

    async def _stream_output(
        self, stream: _ResponseStream, parts: Iterable[Part], tokens_per_second: float | None
    ) -> None:
        """Send the events of the reply's output items, deltas paced at ``tokens_per_second``."""
        pace = 1.0 / tokens_per_second if tokens_per_second else 0.0
        # Deltas are due at fixed times from the first one: sleeping `pace` after each would
        # add every wake-up's lateness to the turn (tens of ms per turn with many streams).
        due = trio.current_time()
        for draft in stream.writer.items(parts):
            if pace and type(draft) in DELTAS:
                due += pace
                await trio.sleep_until(due)
            await stream.emit(draft)


@attrs.define(eq=False, kw_only=True)
class _ServerConnection(_Connection):
    """One WebSocket: lanes, the connection-local cache, the age limit, steering."""

    transport: ServerWebSocket
    _lanes: dict[str | None, _Lane] = attrs.field(factory=dict)
    _named_lanes: int = 0
    _busy: int = 0
    _idle: trio.Event = attrs.field(factory=trio.Event)
    # Wakes the watch task early: the "expire" fault, or a client given up for not reading.
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _active: trio.Semaphore = attrs.field(init=False)
    _nursery: trio.Nursery | None = None

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._active = trio.Semaphore(self.server.config.max_active_responses)
        self._idle.set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch)
                await self._read_loop()
                nursery.cancel_scope.cancel()
        except* (_Stop, TransportClosed):
            pass

    async def _read_loop(self) -> None:
        transport = self.transport
        while True:
            message = await transport.receive_message()
            if message is None:
                return  # closed by the peer, or over the size limit (1009 is on its way)
            self.counters.messages_received += 1
            self.counters.bytes_received += len(message)
            self._on_message(message)
            if transport.must_wait:  # a peer that sends and never reads
                await transport.wait_writable()

    def drop_cache(self) -> None:
        for lane in self._lanes.values():
            lane.latest = None

    def on_give_up(self, reason: str) -> None:
        """The transport gave this client up for not reading (its 1008 is on its way)."""
        self.counters.clients_not_reading += 1
        self.log.info(
            "connection {} from {}: closing with 1008, {}", self.index, self.transport.peer, reason
        )
        self._wake.set()

    # -- sending ------------------------------------------------------------------------------

    def send(self, event: ServerEvent) -> None:
        """Queue one event for the client (the writer sends it at the next checkpoint).

        Raises:
            TransportClosed: the connection is closing or gone.
        """
        payload = encode(event)
        counters = self.counters
        counters.events_sent += 1
        counters.bytes_sent += len(payload)
        if isinstance(event, ErrorEvent):
            code = event.code_value or "unknown"
            counters.errors_sent[code] += 1
            detail = event.detail()
            self.log.info(
                "connection {} sent error {} (status {}, param {}): {}",
                self.index,
                code,
                event.http_status,
                detail.param if isinstance(detail.param, str) else None,
                detail.message,
            )
        self.transport.send_text(payload)

    async def _fire(self, fault: Fault, stream: _ResponseStream) -> None:
        self.counters.faults_fired += 1
        self.log.debug("fault {} on response {}", fault.kind, stream.index)
        kind = fault.kind
        transport = self.transport
        if kind in _TRANSPORT_FAULTS:
            # Exactly ``after_events`` events reach the client before the fault: what is
            # still buffered goes out first.
            await transport.flush()
        if kind == "close":
            # 1005 goes out as a close frame without a code. The handshake completes in
            # _serve's aclose, after this connection's tasks are gone.
            transport.start_close(fault.code, fault.message)
            raise _Stop
        if kind == "abort":
            await transport.abort()
            raise _Stop
        if kind == "stall":
            if fault.duration is None:
                await trio.sleep_forever()
            await trio.sleep(fault.duration)
        elif kind == "blackhole":
            transport.freeze()
            await trio.sleep_forever()
        elif kind == "error":
            self._injected_error(fault, stream)
            raise _EndResponse(evict=True)
        elif kind == "fail":
            raise _EndResponse(evict=True, failed=fault.error_code, message=fault.message)
        elif kind == "drop_cache":
            self.drop_cache()
        elif kind == "expire":
            self._wake.set()
        elif kind == "send_raw":
            transport.send_text(fault.payload.encode())
        elif kind == "oversize":
            padding = max(0, fault.size - 40)
            transport.send_text(b'{"type":"response.padding","pad":"' + b"x" * padding + b'"}')

    # -- expiry -------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Expire the connection at its age limit (or an "expire" fault); end it when the
        client was given up for not reading."""
        with trio.move_on_after(self.server.config.max_connection_age):
            await self._wake.wait()
        if self.transport.gave_up is not None:
            raise _Stop
        self._expired = True
        self.counters.expiries += 1
        await self._idle.wait()
        self.refuse(EXPIRED)
        code = self.server.config.expiry_close_code
        if code is not None:
            # The handshake completes in _serve's aclose, after this connection's tasks.
            self.transport.start_close(code)
            raise _Stop

    def _mark_busy(self, lane: _Lane) -> None:
        lane.busy += 1
        self._busy += 1
        if self._busy == 1:
            self._idle = trio.Event()

    def _mark_done(self, lane: _Lane) -> None:
        lane.busy -= 1
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()

    # -- incoming -----------------------------------------------------------------------------

    def _on_message(self, message: str | bytes) -> None:
        try:
            event = decode_client_event(message)
        except RemoteProtocolError as exc:
            self.refuse(check_message(message, exc))
            return
        if self.server.config.record_messages and len(self.server.received) < _RECORD_LIMIT:
            self.server.received.append((self.index, event))
        if isinstance(event, ResponseCreate):
            self._on_create(event, _tools_of(event, message), len(message))
        elif isinstance(event, ResponseSteer):
            self._on_steer(event)
        elif isinstance(event, UnknownEvent):
            self.refuse(unknown_event(event))

    def _on_create(self, create: ResponseCreate, tools_raw: msgspec.Raw, size: int) -> None:
        stream_id = create.stream_id
        lane_key = stream_id if isinstance(stream_id, str) else None
        lane = self._lanes.get(lane_key)
        held = self.request_bytes
        refusal = check_create(create) or check_lane(
            self.server.config,
            new_named_lane=lane is None and lane_key is not None,
            named_lanes=self._named_lanes,
            lane_busy=lane is not None and lane.busy > 0,
            held=held,
            size=size,
        )
        if refusal is not None:
            self.refuse(refusal, stream_id)
            return
        if lane is None:
            lane = self._open_lane(lane_key)
        self._mark_busy(lane)
        try:
            lane.send.send_nowait(_Request(create, lane_key, tools_raw, size))
        except trio.WouldBlock:
            self._mark_done(lane)
            self.refuse(QUEUE_FULL, stream_id)
            return
        self.queued_requests += 1
        self.request_bytes = held = held + size
        if held > self.peak_request_bytes:
            self.peak_request_bytes = held
        self.log.debug(
            "connection {} request on lane {}: model {}, {} input items, "
            "previous_response_id {}, store {}, generate {}",
            self.index,
            lane_key or "default",
            create.model,
            _input_count(create.input),
            _or(create.previous_response_id, None),
            create.store is not False,
            create.generate is not False,
        )

    def _open_lane(self, key: str | None) -> _Lane:
        send, receive = trio.open_memory_channel[_Request](self.server.config.max_queued_requests)
        lane = _Lane(key=key, send=send, receive=receive)
        self._lanes[key] = lane
        if key is not None:
            self._named_lanes += 1
        assert self._nursery is not None
        self._nursery.start_soon(self._lane_worker, lane)
        return lane

    def _on_steer(self, steer: ResponseSteer) -> None:
        stream = self._active_responses.get(steer.previous_response_id)
        code = "steering_not_supported" if stream is not None else "response_not_found"
        message = (
            "The local models do not support steering."
            if stream is not None
            else "The target response is not active on this connection."
        )
        writer = stream.writer if stream is not None else None
        self.send(
            SteerFailed(
                sequence_number=writer.next_sequence() if writer is not None else 0,
                error=ErrorDetail(type="invalid_request_error", code=code, message=message),
                steer=SteerInfo(
                    previous_response_id=steer.previous_response_id,
                    input=msgspec.to_builtins(steer.input, enc_hook=_builtins_hook),
                ),
                stream_id=writer.stream_id if writer is not None else UNSET,
            )
        )

    # -- responses ----------------------------------------------------------------------------

    async def _lane_worker(self, lane: _Lane) -> None:
        active = self._active
        async for request in lane.receive:
            try:
                # Receiving was a checkpoint already: take a free slot without another one.
                try:
                    active.acquire_nowait()
                except trio.WouldBlock:
                    await active.acquire()
                self.queued_requests -= 1
                try:
                    await self._process(request.create, lane, request.tools_raw)
                finally:
                    active.release()
            finally:
                self.request_bytes -= request.size
                self._mark_done(lane)

    def _lookup(self, response_id: str) -> tuple[CachedResponse | None, _Lane | None]:
        for lane in self._lanes.values():
            if lane.latest is not None and lane.latest.id == response_id:
                return lane.latest, lane
        stored = self.server._store.get(response_id)
        return stored, None


_JSON: Final = (b"content-type", b"application/json")
_SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_TERMINAL_EVENTS: Final = frozenset({ResponseCompleted, ResponseIncomplete, ResponseFailed})
_NOT_READING_MESSAGE: Final = "connection {} from {}: dropped, {}"


@attrs.define(eq=False)
class _Exchange:
    """One ``POST /v1/responses`` being answered.

    ``stream``: answered with server-sent events (``stream: true``), else with the final
    response object. ``opened``: the event stream's head is out, so every later event, an
    error included, goes on the stream. ``outcome``: what the answer will be when it is not
    streamed (the terminal event, or the error event of a request refused before it began).
    """

    stream: bool
    opened: bool = False
    outcome: ServerEvent | None = None


@attrs.define(eq=False, kw_only=True)
class _HttpConnection(_Connection):
    """One plain HTTP/1.1 connection: requests one after the other (keep-alive), each
    ``POST /v1/responses`` answered with the same events a WebSocket would carry, as SSE,
    or with the final response object (docs/protocol.md#over-http).

    There is no connection-local cache: ``previous_response_id`` names a stored response
    or nothing. Each POST on the connection is a response for fault matching (the n-th POST
    is response n).
    """

    transport: ServerHttp
    http: ClassVar[bool] = True
    _posts: int = 0
    _exchange: _Exchange = attrs.field(factory=lambda: _Exchange(stream=False))
    _client_gone: bool = False
    _method: str = ""  # of the request being answered

    def on_give_up(self, reason: str) -> None:
        """The transport gave this client up for not reading (the connection is dropped)."""
        self.counters.clients_not_reading += 1
        self.log.info(_NOT_READING_MESSAGE, self.index, self.transport.peer, reason)

    # -- requests -----------------------------------------------------------------------------

    async def run(self, head: Head) -> None:
        """Answer the request of ``head``, then the next ones, until the client closes,
        asks to close, or stays idle for ``keep_alive_timeout``."""
        transport = self.transport
        config = self.server.config
        request, error = head.request, head.error
        while True:
            if error is not None:
                self._bad_request(error)
                break
            if request is None or not await self._handle(request):
                break
            if not transport.next_cycle():
                break
            request = None
            with trio.move_on_after(config.keep_alive_timeout):
                try:
                    request = await transport.next_request()
                except h11.RemoteProtocolError as exc:
                    error = exc
        with trio.move_on_after(config.close_timeout):
            await transport.flush()

    async def _handle(self, request: h11.Request) -> bool:
        """Answer one request; whether the connection can take another one."""
        server = self.server
        config = server.config
        counters = self.counters
        counters.http_requests += 1
        method = self._method = request.method.decode("ascii", "replace")
        path = urlsplit(request.target.decode("latin-1")).path
        headers = {bytes(name): bytes(value) for name, value in request.headers}
        limit = config.max_message_size
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            self._too_large(int(length), limit)
            return False
        try:
            with trio.move_on_after(config.handshake_timeout) as reading:
                body = await self.transport.read_body(limit)
        except BodyTooLarge:
            self._too_large(None, limit)
            return False
        except h11.RemoteProtocolError as exc:
            self._bad_request(exc)
            return False
        if reading.cancelled_caught:
            self._answer_error(
                408,
                "request_timeout",
                f"The request body did not arrive within {config.handshake_timeout:g} s.",
                close=True,
            )
            return False
        counters.bytes_received += len(body)
        if path not in RESPONSES_PATHS:
            self._answer_error(
                404,
                "not_found",
                f"No endpoint at {path}: POST /v1/responses (or /responses) creates a response.",
            )
            return True
        if method != "POST":
            self._answer_error(
                405,
                "method_not_allowed",
                f"{method} {path} is not served: POST creates a response.",
                headers=[(b"allow", b"POST")],
            )
            return True
        self._posts += 1
        fault = server._faults.take(self.index, self._posts, None, handshake=True)
        if fault is not None:
            counters.faults_fired += 1
            if fault.kind == "delay_handshake":
                await trio.sleep(fault.duration or 0)
            elif fault.kind == "reject":
                extra = []
                if fault.retry_after is not None:
                    extra.append((b"retry-after", str(fault.retry_after).encode()))
                self._answer_error(
                    fault.status, fault.error_code, fault.message or "rejected", headers=extra
                )
                return True
        origin = headers.get(b"origin")
        if origin is not None and origin.decode("latin-1") not in config.allowed_origins:
            self._answer_error(403, "origin_not_allowed", "this Origin is not allowed")
            return True
        if not server._authorised(headers.get(b"authorization")):
            self._answer_error(
                401,
                "invalid_api_key",
                "Incorrect API key provided. The embedded server expects the token it printed "
                "at start-up.",
            )
            return True
        try:
            create = decode_create_body(body)
        except RemoteProtocolError as exc:
            self._refuse_request(check_body(body, exc))
            return True
        refusal = check_http_create(create)
        if refusal is not None:
            self._refuse_request(refusal)
            return True
        if config.record_messages and len(server.received) < _RECORD_LIMIT:
            server.received.append((self.index, create))
        self.log.debug(
            "connection {} POST {}: model {}, {} input items, previous_response_id {}, "
            "store {}, stream {}",
            self.index,
            path,
            create.model,
            _input_count(create.input),
            _or(create.previous_response_id, None),
            create.store is not False,
            create.stream is True,
        )
        await self._create(create, _tools_of(create, body), len(body))
        return True

    async def _create(self, create: ResponseCreate, tools_raw: msgspec.Raw, size: int) -> None:
        """Run the response ``create`` asks for and answer with it (streamed or whole)."""
        exchange = self._exchange = _Exchange(stream=create.stream is True)
        # The n-th POST is response n (fault matching), whatever became of the ones before.
        self._responses = self._posts - 1
        self.request_bytes = size
        self.peak_request_bytes = max(self.peak_request_bytes, size)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_client, nursery.cancel_scope)
                try:
                    await self._process(create, _Slot(None), tools_raw)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self.request_bytes = 0
        if self._client_gone:
            self.log.debug("connection {}: the client left during a response", self.index)
            raise _Stop
        self._answer(exchange)

    async def _watch_client(self, scope: trio.CancelScope) -> None:
        """Cancel the response being made when the client closes the connection."""
        await self.transport.wait_gone()
        self._client_gone = True
        scope.cancel()

    def _answer(self, exchange: _Exchange) -> None:
        """Finish the answer to the current request, once its response has ended."""
        transport = self.transport
        if exchange.opened:
            transport.end_stream()
            return
        outcome = exchange.outcome
        if isinstance(outcome, ErrorEvent):
            detail = outcome.detail()
            status = outcome.http_status or 500
            headers = [
                (name.encode(), value.encode()) for name, value in outcome.header_map.items()
            ]
            code = detail.code if isinstance(detail.code, str) else None
            param = detail.param if isinstance(detail.param, str) else None
            body = _error_body(status, code, detail.message, param)
            transport.respond(status, [_JSON, *headers], body)
        elif isinstance(outcome, ResponseLifecycleEvent):
            body = encode(outcome.response)
            self.counters.bytes_sent += len(body)
            transport.respond(200, [_JSON], body)
        else:  # pragma: no cover - every response ends with a terminal or an error event
            transport.respond(500, [_JSON], _error_body(500, None, "no response was produced"))

    # -- answers ------------------------------------------------------------------------------

    def send(self, event: ServerEvent) -> None:
        """An event of the current response: on the event stream, or kept for the answer
        (the terminal event of an answer not streamed; an error before the stream began,
        answered with its HTTP status).

        Raises:
            TransportClosed: the connection is gone.
        """
        exchange = self._exchange
        counters = self.counters
        if isinstance(event, ErrorEvent):
            code = event.code_value or "unknown"
            counters.errors_sent[code] += 1
            detail = event.detail()
            self.log.info(
                "connection {} sent error {} (status {}, param {}): {}",
                self.index,
                code,
                event.http_status,
                detail.param if isinstance(detail.param, str) else None,
                detail.message,
            )
            if not exchange.opened:
                exchange.outcome = event
                return
        if not exchange.stream:
            if type(event) in _TERMINAL_EVENTS:
                exchange.outcome = event
            return
        transport = self.transport
        if not exchange.opened:
            transport.open_stream(_SSE_HEADERS)
            exchange.opened = True
            counters.http_streams += 1
        if isinstance(event, ErrorEvent):
            event = _sse_error(event)
        payload = encode(event)
        counters.events_sent += 1
        counters.bytes_sent += len(payload)
        transport.send_event(_event_type(event), payload)

    def _refuse_request(self, refusal: Refusal) -> None:
        """Answer the current request with the HTTP error a check decided on."""
        self.counters.errors_sent[refusal.code] += 1
        self.log.info(
            "connection {} refused a request with {} {} (param {}): {}",
            self.index,
            refusal.status,
            refusal.code,
            refusal.param,
            refusal.message,
        )
        body = _error_body(refusal.status, refusal.code, refusal.message, refusal.param)
        self.transport.respond(refusal.status, [_JSON], body)

    def _answer_error(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        close: bool = False,
    ) -> None:
        """Answer the current request with ``status`` and a JSON error body (never echoing
        a header, so never the token)."""
        self.counters.errors_sent[code] += 1
        # No colon after the code: "invalid_api_key: ..." would read as a secret to redact.
        self.log.info(
            "connection {} from {}: request refused with {} {} ({})",
            self.index,
            self.transport.peer,
            status,
            code,
            message,
        )
        body = _error_body(status, code, message)
        self.transport.respond(
            status,
            [_JSON, *(headers or [])],
            body,
            close=close,
            head_only=self._method == "HEAD",
        )

    def _too_large(self, length: int | None, limit: int) -> None:
        size = f"{length} bytes" if length is not None else f"over {limit} bytes"
        self._answer_error(
            413,
            "request_too_large",
            f"The request body ({size}) is larger than the server accepts ({limit} bytes).",
            close=True,
        )

    def _bad_request(self, error: h11.RemoteProtocolError) -> None:
        """Answer bytes that are not an HTTP/1.1 request, then close."""
        with contextlib.suppress(h11.LocalProtocolError):  # too broken to answer at all
            self._answer_error(
                error.error_status_hint,
                "invalid_request",
                f"Not a valid HTTP/1.1 request: {error}",
                close=True,
            )

    # -- what an HTTP connection does differently ------------------------------------------

    def _lookup(self, response_id: str) -> tuple[CachedResponse | None, _Slot | None]:
        # No connection-local cache over HTTP: the store or nothing.
        return self.server._store.get(response_id), None

    def _cached_tokens(
        self,
        parent: CachedResponse | None,
        parent_lane: _Slot | None,
        prefix_tokens: int,
        new_input: list[Item],
    ) -> int:
        """Over HTTP, what the prompt cache holds, unless this request misses it: for a
        continuation by id, the chain and the prefix; for a replayed conversation, the
        prefix and the conversation up to the model's last output item (what the previous
        request and its answer put in the cache). Only what follows is new."""
        if parent is not None:
            cacheable = parent.context_tokens + prefix_tokens
        else:
            last = -1
            for position, item in enumerate(new_input):
                if _made_by_the_model(item):
                    last = position
            if last < 0:
                return 0  # a first request: nothing of it was seen before
            replayed = sum(count_tokens(item_text(item)) for item in new_input[: last + 1])
            cacheable = prefix_tokens + replayed
        return 0 if self.server._prompt_cache_missed() else cacheable

    async def _fire(self, fault: Fault, stream: _ResponseStream) -> None:
        self.counters.faults_fired += 1
        self.log.debug("fault {} on response {}", fault.kind, stream.index)
        kind = fault.kind
        transport = self.transport
        if kind in _TRANSPORT_FAULTS:
            # Exactly ``after_events`` events reach the client before the fault.
            await transport.flush()
        if kind == "abort":
            await transport.abort()
            raise _Stop
        if kind == "close":
            await transport.close_stream()
            raise _Stop
        if kind == "stall":
            if fault.duration is None:
                await trio.sleep_forever()
            await trio.sleep(fault.duration)
        elif kind == "blackhole":
            transport.freeze()
            await trio.sleep_forever()
        elif kind == "error":
            self._injected_error(fault, stream)
            raise _EndResponse(evict=True)
        elif kind == "fail":
            raise _EndResponse(evict=True, failed=fault.error_code, message=fault.message)
        elif kind in ("send_raw", "oversize") and self._exchange.stream:
            if kind == "send_raw":
                data = b"data: " + fault.payload.encode() + b"\n\n"
            else:
                padding = max(0, fault.size - 40)
                data = (
                    b"event: response.padding\ndata: "
                    + b'{"type":"response.padding","pad":"'
                    + b"x" * padding
                    + b'"}\n\n'
                )
            exchange = self._exchange
            if not exchange.opened:
                transport.open_stream(_SSE_HEADERS)
                exchange.opened = True
                self.counters.http_streams += 1
            transport.send_data(data)
        # drop_cache and expire concern a WebSocket's cache and age: nothing to do here.


def _sse_error(event: ErrorEvent) -> ErrorEvent:
    """An ``error`` event in the HTTP API's SSE shape: ``code``, ``message`` and ``param`` at
    the top level, no ``status`` (the answer's status is 200 already; docs/protocol.md#over-http).
    """
    detail = event.detail()
    return ErrorEvent(
        code=detail.code if isinstance(detail.code, str) else None,
        message=detail.message,
        param=detail.param if isinstance(detail.param, str) else None,
        sequence_number=event.sequence_number,
    )


def _made_by_the_model(item: Item) -> bool:
    """Whether ``item`` is output of the model replayed as input (a call, reasoning, an
    assistant message)."""
    if isinstance(item, FunctionCallItem | ReasoningItem):
        return True
    return isinstance(item, MessageItem) and item.role == "assistant"


def _event_type(event: ServerEvent) -> str:
    """The ``type`` of an event, its SSE event name."""
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def _parts(reply: ModelReply) -> Iterator[Part]:
    """The output items of a model's reply, in the order they are streamed."""
    if reply.reasoning:
        yield Reasoning(reply.reasoning, iter_text(reply.reasoning))
    if reply.text is not None:
        deltas = reply.text_deltas if reply.text_deltas is not None else iter_text(reply.text)
        # The message of an incomplete response is the one that was cut off.
        yield Text(reply.text, deltas, complete=reply.incomplete is None)
    for call in reply.calls:
        yield Call(call.name, call.arguments, split_arguments(call.arguments, call.deltas))


class _EndResponse(Exception):
    """Internal: the current response ended early (error event, failure)."""

    def __init__(
        self, *, evict: bool, failed: str | None = None, message: str | None = None
    ) -> None:
        super().__init__(failed or "ended")
        self.evict = evict
        self.failed = failed
        self.message = message


async def _shielded(scope: trio.CancelScope, function: Callable[[], Awaitable[object]]) -> None:
    """Run ``function`` inside ``scope``: out of outside cancellation's reach, ended by
    ``scope.cancel()`` (also when that comes before this task first runs)."""
    with scope:
        await function()


def _text_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` of a create, if it is an object."""
    if isinstance(text, dict) and isinstance(text.get("format"), dict):
        return dict(text["format"])
    return None


def _or(value: Any, default: Any) -> Any:
    return default if isinstance(value, UnsetType) else value


class _ToolsOnly(msgspec.Struct):
    tools: msgspec.Raw = _NO_TOOLS


_tools_decoder: Final = msgspec.json.Decoder(_ToolsOnly)


def _tools_of(create: ResponseCreate, message: str | bytes) -> msgspec.Raw:
    """The ``tools`` of a create exactly as sent (msgspec skips everything else quickly)."""
    if not isinstance(create.tools, list) or not create.tools:
        return _NO_TOOLS
    # A copy: the decoded Raw points into the whole message, which it would keep alive.
    return _tools_decoder.decode(message).tools.copy()


def _input_count(value: str | list[Item] | UnsetType) -> int:
    if isinstance(value, str):
        return 1
    return len(value) if isinstance(value, list) else 0


def _input_items(value: str | list[Item] | UnsetType) -> list[Item]:
    if isinstance(value, str):
        return [MessageItem(role="user", content=value)]
    if isinstance(value, list):
        return value
    return []


def _builtins_hook(obj: Any) -> Any:
    data = getattr(obj, "data", None)
    if isinstance(data, dict):
        return data
    raise NotImplementedError


def _random_token() -> str:
    import secrets

    return "local-" + secrets.token_urlsafe(24)


# -- running it ---------------------------------------------------------------------------------


@attrs.frozen
class RunningServer:
    """What :func:`open_local_server` yields: where to connect and how to look inside."""

    url: str
    token: str = attrs.field(repr=False)
    host: str
    port: int
    server: LocalServer

    @property
    def base_url(self) -> str:
        """The HTTP base URL an SDK client takes (``http://host:port/v1``)."""
        return "http" + self.url[2:].removesuffix("/responses")

    def statistics(self) -> ServerStatistics:
        return self.server.statistics()

    def inject(self, fault: Fault) -> None:
        self.server.inject(fault)


async def serve_local_server(
    config: ServerConfig,
    *,
    server: LocalServer | None = None,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve on TCP until cancelled; ``nursery.start`` returns the :class:`RunningServer`.

    Raises:
        ConfigurationError: the port is in use or the address cannot be bound.
    """
    local = server if server is not None else LocalServer.from_config(config)
    listeners = await _listen(config)
    await _serve_listeners(local, listeners, task_status=task_status)


async def _listen(config: ServerConfig) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(config.port, host=config.host)
    except OSError as exc:
        if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise ConfigurationError(
                f"{config.host}:{config.port} already in use", code="server.port"
            ) from exc
        raise ConfigurationError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror}", code="server.port"
        ) from exc


async def _serve_listeners(
    local: LocalServer,
    listeners: list[trio.SocketListener],
    *,
    task_status: trio.TaskStatus[RunningServer],
) -> None:
    sockname = listeners[0].socket.getsockname()
    host, port = sockname[0], sockname[1]
    shown = f"[{host}]" if ":" in host else host
    running = RunningServer(
        url=f"ws://{shown}:{port}/v1/responses",
        token=local.token,
        host=host,
        port=port,
        server=local,
    )
    logger.info("embedded server listening on {}", running.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, local.handle_stream, listeners)
        task_status.started(running)


@asynccontextmanager
async def open_local_server(
    config: ServerConfig | None = None, **options: Any
) -> AsyncIterator[RunningServer]:
    """Run the embedded server in this trio program for the duration of the ``async with``.

    Args:
        config: the settings; or give them as keyword arguments (``ServerConfig`` fields).

    Yields:
        The :class:`RunningServer`: ``url``, ``token``, ``statistics()``, ``inject()``.

    Raises:
        ConfigurationError: invalid settings, a missing script, or a port in use
            (``server.port``), raised as such, not inside an exception group.
    """
    if config is None:
        config = ServerConfig(**options)
    elif options:
        config = attrs.evolve(config, **options)
    local = LocalServer.from_config(config)
    # Bound here, outside the nursery, so a port in use raises ConfigurationError itself
    # rather than inside an exception group.
    listeners = await _listen(config)
    async with trio.open_nursery() as nursery:
        running: RunningServer = await nursery.start(partial(_serve_listeners, local, listeners))
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()


def _opaque(item_id: str, summary: str) -> str:
    """Stand-in for the service's encrypted reasoning: opaque to clients, and the same for
    the same item (a replay must carry it back unchanged)."""
    digest = hashlib.sha256(f"{item_id}\0{summary}".encode()).digest()
    return "gAAAAA" + base64.urlsafe_b64encode(digest * 4).decode()
