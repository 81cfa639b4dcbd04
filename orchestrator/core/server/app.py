"""The embedded Responses-WebSocket server: handshake, lanes, cache, generation, faults.

One :class:`LocalServer` serves any number of connections. Each connection runs in its own
nursery and is isolated: an unexpected error in one closes that one with 1011 and nothing
else (an uncaught error in a connection handler would otherwise cancel every connection).

The WebSocket itself is :class:`~orchestrator.core.server.transport.ServerWebSocket` (wsproto,
one read loop and one buffered writer per connection): the events a response produces
between two checkpoints leave in one write. Sending an event is therefore synchronous
(:meth:`_ServerConnection.send`); producers await only for pacing, faults and backpressure.

The server accepts any trio stream (:meth:`LocalServer.handle_stream`), so the same code
serves real TCP (:func:`open_local_server`, ``orchestrator serve``) and in-memory stream pairs
driven by trio's MockClock in tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import attrs
import msgspec
import trio
from loguru import logger
from msgspec import UNSET, UnsetType

from orchestrator.core.protocol.codec import DECODE_ERRORS, decode_client_event, encode, raw
from orchestrator.core.protocol.events import (
    ClientEvent,
    ContentPart,
    ContentPartAdded,
    ContentPartDone,
    ErrorDetail,
    ErrorEvent,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    FunctionCallItem,
    IncompleteDetails,
    InputTokensDetails,
    Item,
    MessageItem,
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
    OutputTextDone,
    ReasoningItem,
    ReasoningSummaryPartAdded,
    ReasoningSummaryPartDone,
    ReasoningSummaryTextDelta,
    ReasoningSummaryTextDone,
    ResponseCompleted,
    ResponseCreate,
    ResponseCreated,
    ResponseError,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseObject,
    ResponseSteer,
    ServerEvent,
    SteerFailed,
    SteerInfo,
    SummaryPart,
    UnknownEvent,
    UnknownItem,
    Usage,
)
from orchestrator.errors import ConfigurationError, RemoteProtocolError

from .config import Fault, ServerConfig
from .hosted import check_tools
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
from .state import CachedResponse, IdFactory, ResponseStore, call_ids_in
from .transport import ServerWebSocket, TransportClosed, peer_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

__all__ = [
    "LocalServer",
    "RunningServer",
    "ServerStatistics",
    "open_local_server",
    "serve_local_server",
]

RESPONSES_PATHS: Final = frozenset({"/v1/responses", "/responses"})
LIMIT_MESSAGE: Final = (
    "Responses websocket connection limit reached (60 minutes). Create a new websocket "
    "connection to continue."
)
_LANE_ID_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
)
_RECORD_LIMIT: Final = 100_000
_any_json: Final = msgspec.json.Decoder()
_NO_TOOLS: Final = msgspec.Raw(b"[]")
_QUEUE_SIZE: Final = 256


@attrs.frozen
class ServerStatistics:
    """A snapshot of what the server has done since it started.

    ``handshakes_pending``, ``buffered_bytes``, ``request_bytes`` and ``queued_requests`` are
    what open connections hold now (summed over them); the ``peak_*`` fields are the most
    one connection held at any time.
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
    _connections: set[_ServerConnection] = attrs.field(factory=set, init=False)
    received: list[tuple[int, ClientEvent | UnknownEvent]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        self._store = ResponseStore(self.config.store_capacity)
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

    def policy_for(self, model: str) -> Policy:
        policy = self._policies.get(model)
        if policy is None:
            policy = select_policy(model, self.config.model, self._script)
            self._policies[model] = policy
        return policy

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection on ``stream`` until it ends. Never raises ``Exception``."""
        self._connection_count += 1
        index = self._connection_count
        config = self.config
        log = logger.bind(server_connection=index)
        if self._counters.handshakes_pending >= config.max_pending_handshakes:
            await self._refuse_busy(stream, index, log)
            return
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
                    await self._serve(transport, index, log)
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

    async def _serve(self, transport: ServerWebSocket, index: int, log: Any) -> None:
        config = self.config
        counters = self._counters
        peer = transport.peer
        accepted = False
        counters.handshakes_pending += 1
        try:
            # One deadline for the whole handshake, reading the request to answering it.
            with trio.move_on_after(config.handshake_timeout) as handshake:
                accepted = await self._handshake(transport, index, log, peer, handshake)
        finally:
            counters.handshakes_pending -= 1
        if handshake.cancelled_caught:
            counters.handshakes_timed_out += 1
            log.info(
                "connection {} from {}: dropped, no handshake within {:g} s",
                index,
                peer,
                config.handshake_timeout,
            )
            return
        if not accepted:
            return
        counters.connections_opened += 1
        counters.connections_active += 1
        connection = _ServerConnection(self, transport, index, log)
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
    ) -> bool:
        """Read the upgrade request and answer it; whether the connection was accepted."""
        config = self.config
        request = await transport.receive_request()
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


def _error_body(status: int, code: str, message: str) -> bytes:
    """The JSON body of a refused handshake, shaped like the service's errors."""
    error = {"message": message, "type": error_type(status), "code": code, "param": None}
    return json.dumps({"error": error}).encode()


@attrs.define(eq=False)
class _Request:
    create: ResponseCreate
    lane: str | None
    # The tools exactly as the client sent them: echoed in the response object (spec 4.3)
    # without decoding and re-encoding them every turn.
    tools_raw: msgspec.Raw
    size: int  # of the message, counted against max_request_bytes until the response ends


@attrs.define(eq=False)
class _Lane:
    key: str | None
    send: trio.MemorySendChannel[_Request]
    receive: trio.MemoryReceiveChannel[_Request]
    latest: CachedResponse | None = None
    busy: int = 0


@attrs.define(eq=False)
class _ResponseStream:
    """Sending the events of one response: sequence numbers, stream_id, fault hooks."""

    connection: _ServerConnection
    index: int
    stream_id: str | UnsetType
    sequence: int = 0
    # The response object of ``response.created``: every lifecycle event of one response
    # carries it (created_at included), the terminal one with its outcome replaced.
    base: ResponseObject | None = None

    def next_sequence(self) -> int:
        number = self.sequence
        self.sequence += 1
        return number

    async def emit(self, event_type: Any, **fields: Any) -> None:
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
        event: ServerEvent = event_type(
            sequence_number=self.next_sequence(), stream_id=self.stream_id, **fields
        )
        connection.send(event)


@attrs.define(eq=False)
class _ServerConnection:
    server: LocalServer
    transport: ServerWebSocket
    index: int
    log: Any
    _lanes: dict[str | None, _Lane] = attrs.field(factory=dict)
    _named_lanes: int = 0
    _responses: int = 0
    _busy: int = 0
    _idle: trio.Event = attrs.field(factory=trio.Event)
    _expired: bool = False
    # Wakes the watch task early: the "expire" fault, or a client given up for not reading.
    _wake: trio.Event = attrs.field(factory=trio.Event)
    #: Bytes of the creates this connection holds (queued or running), and the most ever.
    request_bytes: int = 0
    peak_request_bytes: int = 0
    #: Creates waiting for their lane or for an active slot.
    queued_requests: int = 0
    _active: trio.Semaphore = attrs.field(init=False)
    _ids: IdFactory = attrs.field(init=False)
    _nursery: trio.Nursery | None = None
    _active_responses: dict[str, _ResponseStream] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self._active = trio.Semaphore(self.server.config.max_active_responses)
        self._ids = IdFactory(self.server.config.seed, self.index)
        self._idle.set()

    @property
    def counters(self) -> _Counters:
        return self.server._counters

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

    def send_error(
        self,
        status: int,
        code: str | None,
        message: str,
        *,
        param: str | None = None,
        stream_id: str | UnsetType = UNSET,
        sequence_number: int | UnsetType = UNSET,
        headers: dict[str, str] | UnsetType = UNSET,
    ) -> None:
        self.send(
            ErrorEvent(
                status=status,
                error=ErrorDetail(
                    type=error_type(status),
                    code=code,
                    message=message,
                    param=param,
                    headers=headers,
                ),
                stream_id=stream_id,
                sequence_number=sequence_number,
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
            headers: dict[str, str] | UnsetType = UNSET
            if fault.retry_after is not None:
                headers = {"retry-after": str(fault.retry_after)}
            connection_scoped = fault.error_code == "websocket_connection_limit_reached"
            default_message = LIMIT_MESSAGE if connection_scoped else "injected error"
            self.send_error(
                fault.status,
                fault.error_code,
                fault.message or default_message,
                stream_id=UNSET if connection_scoped else stream.stream_id,
                # Before response.created the error is an admission error: no sequence number.
                sequence_number=stream.next_sequence() if stream.sequence else UNSET,
                headers=headers,
            )
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
        self.send_error(400, "websocket_connection_limit_reached", LIMIT_MESSAGE)
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
            self._on_bad_message(message, exc)
            return
        if self.server.config.record_messages and len(self.server.received) < _RECORD_LIMIT:
            self.server.received.append((self.index, event))
        if isinstance(event, ResponseCreate):
            self._on_create(event, _tools_of(event, message), len(message))
        elif isinstance(event, ResponseSteer):
            self._on_steer(event)
        elif isinstance(event, UnknownEvent):
            self.send_error(
                400,
                "unknown_event_type",
                f"Unknown client event type {event.type!r}; expected 'response.create' or "
                "'response.steer'.",
                param="type",
            )

    def _on_bad_message(self, message: str | bytes, exc: RemoteProtocolError) -> None:
        text = str(exc)
        try:
            obj = _any_json.decode(message)
        except DECODE_ERRORS:
            self.send_error(400, "invalid_json", f"Invalid JSON message: {text}")
            return
        if not isinstance(obj, dict):
            self.send_error(
                400, "invalid_value", f"A client event is a JSON object, not {type(obj).__name__}."
            )
            return
        if "type" not in obj:
            self.send_error(
                400,
                "missing_required_parameter",
                "Missing required parameter: 'type'.",
                param="type",
            )
            return
        param, code = _param_from(text)
        self.send_error(400, code, f"Invalid client event: {text}", param=param)

    def _on_create(self, create: ResponseCreate, tools_raw: msgspec.Raw, size: int) -> None:
        config = self.server.config
        stream_id = create.stream_id
        if isinstance(stream_id, str) and not _valid_lane_id(stream_id):
            self.send_error(
                400,
                "invalid_stream_id",
                "stream_id must be 1 to 256 characters of [A-Za-z0-9_.-].",
                param="stream_id",
            )
            return
        lane_key = stream_id if isinstance(stream_id, str) else None
        if create.background is True:
            self.send_error(
                400,
                "invalid_value",
                "background responses are not supported over WebSocket.",
                param="background",
                stream_id=stream_id,
            )
            return
        if not isinstance(create.model, str) or not create.model:
            self.send_error(
                400,
                "missing_required_parameter",
                "Missing required parameter: 'model'.",
                param="model",
                stream_id=stream_id,
            )
            return
        if isinstance(create.conversation, str | dict) and isinstance(
            create.previous_response_id, str
        ):
            self.send_error(
                400,
                "invalid_value",
                "previous_response_id cannot be combined with conversation.",
                param="conversation",
                stream_id=stream_id,
            )
            return
        lane = self._lanes.get(lane_key)
        if lane is None:
            if lane_key is not None and self._named_lanes >= config.max_named_lanes:
                self.send_error(
                    400,
                    "websocket_stream_limit_reached",
                    f"This connection already uses {config.max_named_lanes} stream ids.",
                    param="stream_id",
                    stream_id=stream_id,
                )
                return
            lane = self._open_lane(lane_key)
        if config.strict_single_flight and lane.busy:
            self.send_error(
                409,
                "response_already_in_flight",
                "A response is already in flight on this lane; wait for its terminal event.",
                stream_id=stream_id,
            )
            return
        held = self.request_bytes
        if held and held + size > config.max_request_bytes:
            self.send_error(
                429,
                "too_many_queued_requests",
                f"This connection already holds {held} bytes of requests and this one has "
                f"{size} (limit {config.max_request_bytes}); wait for a response to finish.",
                stream_id=stream_id,
            )
            return
        self._mark_busy(lane)
        try:
            lane.send.send_nowait(_Request(create, lane_key, tools_raw, size))
        except trio.WouldBlock:
            self._mark_done(lane)
            self.send_error(
                429,
                "too_many_queued_requests",
                "Too many queued responses on this lane.",
                stream_id=stream_id,
            )
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
        lane = _Lane(key, send, receive)
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
        sequence = stream.next_sequence() if stream is not None else 0
        self.send(
            SteerFailed(
                sequence_number=sequence,
                error=ErrorDetail(type="invalid_request_error", code=code, message=message),
                steer=SteerInfo(
                    previous_response_id=steer.previous_response_id,
                    input=msgspec.to_builtins(steer.input, enc_hook=_builtins_hook),
                ),
                stream_id=stream.stream_id if stream is not None else UNSET,
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

    def _evict(self, response_id: str, lane: _Lane) -> None:
        if lane.latest is not None and lane.latest.id == response_id:
            lane.latest = None

    async def _process(self, create: ResponseCreate, lane: _Lane, tools_raw: msgspec.Raw) -> None:
        stream_id = create.stream_id
        if self._expired:
            self.send_error(400, "websocket_connection_limit_reached", LIMIT_MESSAGE)
            return
        parent: CachedResponse | None = None
        parent_lane: _Lane | None = None
        previous = create.previous_response_id
        if isinstance(previous, str):
            parent, parent_lane = self._lookup(previous)
            if parent is None or parent.status == "failed":
                self._evict(previous, lane)
                self.send_error(
                    400,
                    "previous_response_not_found",
                    f"Previous response with id '{previous}' not found.",
                    param="previous_response_id",
                    stream_id=stream_id,
                )
                return
            if parent_lane is not None:
                self.counters.cache_hits += 1
            else:
                self.counters.store_hydrations += 1
        unsupported = check_tools(create.tools if isinstance(create.tools, list) else ())
        if unsupported is not None:
            self.send_error(
                400,
                unsupported.code,
                unsupported.message,
                param=unsupported.param,
                stream_id=stream_id,
            )
            return
        new_input = _input_items(create.input)
        problem = self._check_tool_outputs(parent, new_input)
        if problem is not None:
            if parent is not None and parent_lane is lane:
                self._evict(parent.id, lane)
            self.send_error(400, "invalid_value", problem, param="input", stream_id=stream_id)
            return
        self._responses += 1
        stream = _ResponseStream(self, self._responses, stream_id)
        response_id = self._ids.response()
        if parent is not None and parent_lane is lane:
            # The lane's slot moves on to the new response (spec 7.3): with store=false the
            # parent is gone for good once this response starts.
            lane.latest = None
        self._active_responses[response_id] = stream
        try:
            await self._generate(
                create,
                lane,
                stream,
                response_id,
                parent,
                parent_lane,
                new_input,
                tools_raw,
            )
        except _EndResponse as end:
            if end.evict and parent is not None and parent_lane is lane:
                self._evict(parent.id, lane)
            if end.failed is not None:
                # Reached only from a "fail" fault before the terminal event was sent. A
                # response must exist before it can fail: announce it first if needed.
                base = stream.base
                if base is None:
                    base = stream.base = self._response_object(
                        create,
                        response_id,
                        status="in_progress",
                        created_at=int(time.time()),
                        tools_raw=tools_raw,
                    )
                if stream.sequence == 0:
                    self.send(
                        ResponseCreated(
                            sequence_number=stream.next_sequence(),
                            response=base,
                            stream_id=stream.stream_id,
                        )
                    )
                self._send_failed(base, stream, end.failed, end.message)
        finally:
            self._active_responses.pop(response_id, None)

    def _check_tool_outputs(
        self, parent: CachedResponse | None, new_input: list[Item]
    ) -> str | None:
        calls, outputs = call_ids_in(new_input)
        for call_id in sorted(outputs - calls):
            if parent is None or not parent.has_call(call_id):
                return f"No tool call found for function call output with call_id '{call_id}'."
        if self.server.config.require_tool_outputs and parent is not None:
            missing = sorted(parent.pending_call_ids() - outputs)
            if missing:
                return f"No tool output found for function call '{missing[0]}'."
        return None

    def _response_object(
        self,
        create: ResponseCreate,
        response_id: str,
        *,
        status: str,
        created_at: float,
        output: list[Item] | None = None,
        usage: Usage | None = None,
        error: ResponseError | None = None,
        incomplete: IncompleteDetails | None = None,
        tools_raw: msgspec.Raw,
    ) -> ResponseObject:
        return ResponseObject(
            id=response_id,
            created_at=created_at,
            status=status,
            model=create.model if isinstance(create.model, str) else "",
            output=raw(output or []),
            tools=tools_raw,
            tool_choice=_or(create.tool_choice, "auto"),
            parallel_tool_calls=_or(create.parallel_tool_calls, True) is not False,
            completed_at=int(time.time()) if status == "completed" else None,
            error=error,
            incomplete_details=incomplete,
            instructions=_or(create.instructions, None),
            previous_response_id=_or(create.previous_response_id, None),
            metadata=_or(create.metadata, None) or {},
            usage=usage,
            store=_or(create.store, True) is not False,
            temperature=_or(create.temperature, 1.0),
            top_p=_or(create.top_p, 1.0),
            max_output_tokens=_or(create.max_output_tokens, None),
            max_tool_calls=_or(create.max_tool_calls, None),
            reasoning=_or(create.reasoning, None),
            text=_or(create.text, None) or {"format": {"type": "text"}},
            truncation=_or(create.truncation, "disabled"),
            service_tier=_or(create.service_tier, "default"),
            prompt_cache_key=_or(create.prompt_cache_key, None),
            safety_identifier=_or(create.safety_identifier, None),
            user=_or(create.user, None),
            background=False,
            top_logprobs=_or(create.top_logprobs, None),
        )

    async def _generate(
        self,
        create: ResponseCreate,
        lane: _Lane,
        stream: _ResponseStream,
        response_id: str,
        parent: CachedResponse | None,
        parent_lane: _Lane | None,
        new_input: list[Item],
        tools_raw: msgspec.Raw,
    ) -> None:
        config = self.server.config
        latency = config.latency
        tools = tuple(create.tools) if isinstance(create.tools, list) else ()
        store = create.store is not False
        # Built once: created, in_progress and the terminal event share it (the terminal one
        # with its status, output and usage replaced), created_at included.
        base = stream.base = self._response_object(
            create,
            response_id,
            status="in_progress",
            created_at=int(time.time()),
            tools_raw=tools_raw,
        )
        self.counters.responses_started += 1
        await stream.emit(ResponseCreated, response=base)
        await stream.emit(ResponseInProgress, response=base)
        instructions = create.instructions if isinstance(create.instructions, str) else ""
        prefix_tokens = count_tokens(instructions) + (-(-len(tools_raw) // 4) if tools else 0)
        input_tokens = sum(count_tokens(item_text(item)) for item in new_input)
        parent_tokens = parent.context_tokens if parent is not None else 0
        cached = parent_tokens + prefix_tokens if parent_lane is not None else 0
        total_input = parent_tokens + prefix_tokens + input_tokens
        uncached = total_input - cached
        generate = create.generate is not False
        if not latency.is_zero:
            delay = uncached * latency.seconds_per_input_token
            if generate:
                delay += latency.time_to_first_token
            if delay:
                await trio.sleep(delay)
        output: list[Item] = []
        output_tokens = 0
        reply = ModelReply()
        context: tuple[Item, ...] | None = None
        if generate:
            parent_context = parent.context() if parent is not None else ()
            context = (*parent_context, *new_input)
            request = ModelRequest(
                model=base.model,
                instructions=instructions or None,
                tools=tools,
                context=context,
                parallel_tool_calls=create.parallel_tool_calls is not False,
                tool_choice=_or(create.tool_choice, "auto"),
                text_format=_text_format(create.text),
                max_tool_calls=_or(create.max_tool_calls, None),
            )
            hosted, reply = respond_with_hosted(
                self.server.policy_for(base.model), request, self._ids.item
            )
            reply = limit_output(reply, _or(create.max_output_tokens, None))
            if reply.error is not None:
                await stream.emit(
                    ErrorEvent,
                    status=reply.error_status,
                    error=ErrorDetail(
                        type=error_type(reply.error_status),
                        code=reply.error,
                        message=reply.message or "scripted error",
                        param=None,
                    ),
                )
                raise _EndResponse(evict=True)
            for item in hosted:  # the service's own tools ran first, inside this response
                assert isinstance(item, UnknownItem)
                index = len(output)
                await stream.emit(
                    OutputItemAdded,
                    output_index=index,
                    item=raw(
                        {**item.data, "status": "in_progress"} if "status" in item.data else item
                    ),
                )
                await stream.emit(OutputItemDone, output_index=index, item=raw(item))
                output.append(item)
            output_tokens = await self._stream_output(
                reply,
                stream,
                output,
                latency.tokens_per_second,
                encrypt=isinstance(create.include, list)
                and "reasoning.encrypted_content" in create.include,
            )
        else:
            self.counters.warmups += 1
        usage = Usage(
            input_tokens=total_input,
            input_tokens_details=InputTokensDetails(cached_tokens=cached, cache_write_tokens=0),
            output_tokens=output_tokens,
            total_tokens=total_input + output_tokens,
        )
        if reply.failed is not None:
            self._send_failed(base, stream, reply.failed, reply.message, output=output, usage=usage)
            raise _EndResponse(evict=True)
        if reply.incomplete is not None:
            final = msgspec.structs.replace(
                base,
                status="incomplete",
                output=raw(output),
                usage=usage,
                incomplete_details=IncompleteDetails(reason=reply.incomplete),
            )
            await stream.emit(ResponseIncomplete, response=final)
            self.counters.responses_incomplete += 1
            status = "incomplete"
        else:
            final = msgspec.structs.replace(
                base,
                status="completed",
                completed_at=int(time.time()),
                output=raw(output),
                usage=usage,
            )
            await stream.emit(ResponseCompleted, response=final)
            self.counters.responses_completed += 1
            status = "completed"
        self.log.debug(
            "connection {} response {} {}: {} input tokens ({} cached), {} output tokens",
            self.index,
            response_id,
            status,
            total_input,
            cached,
            output_tokens,
        )
        output_items = tuple(output)
        cached_response = CachedResponse.create(
            response_id,
            parent,
            tuple(new_input),
            output_items,
            status,
            store=store,
            tokens=input_tokens + sum(count_tokens(item_text(item)) for item in output_items),
            context=(*context, *output_items) if context is not None else None,
        )
        lane.latest = cached_response
        if store:
            self.server._store.put(cached_response)
        # A fault may be due right after the terminal event ("completed, then the socket died").
        if self.server._faults:
            await self.before_event(stream, ended=True)

    def _send_failed(
        self,
        base: ResponseObject,
        stream: _ResponseStream,
        code: str,
        message: str | None,
        *,
        output: list[Item] | None = None,
        usage: Usage | None = None,
    ) -> None:
        """End ``stream`` with ``response.failed`` (``base``: its response.created object)."""
        final = msgspec.structs.replace(
            base,
            status="failed",
            output=raw(output or []),
            usage=usage,
            error=ResponseError(code=code, message=message or "The model failed to respond."),
        )
        self.counters.responses_failed += 1
        self.log.debug(
            "connection {} response {} failed: {} ({} input tokens, {} output tokens)",
            self.index,
            base.id,
            code,
            usage.input_tokens if usage is not None else 0,
            usage.output_tokens if usage is not None else 0,
        )
        stream.connection.send(
            ResponseFailed(
                sequence_number=stream.next_sequence(), response=final, stream_id=stream.stream_id
            )
        )

    async def _stream_output(
        self,
        reply: ModelReply,
        stream: _ResponseStream,
        output: list[Item],
        tokens_per_second: float | None,
        *,
        encrypt: bool = False,
    ) -> int:
        """Stream ``reply``'s items; ``encrypt``: reasoning items carry ``encrypted_content``
        (what ``include: ["reasoning.encrypted_content"]`` asks of the service, so that a
        ``store: false`` client can replay them)."""
        pace = 1.0 / tokens_per_second if tokens_per_second else 0.0
        # Deltas are due at fixed times from the first one: sleeping `pace` after each would
        # add every wake-up's lateness to the turn (tens of ms per turn with many streams).
        due = trio.current_time()

        async def deltas_of(event_type: Any, pieces: Iterable[str], **fields: Any) -> int:
            """Emit one delta event per piece, paced; returns how many were sent."""
            nonlocal due
            count = 0
            for piece in pieces:
                if pace:
                    due += pace
                    await trio.sleep_until(due)
                await stream.emit(event_type, delta=piece, **fields)
                count += 1
            return count

        tokens = 0
        if reply.reasoning:
            index = len(output)
            item_id = self._ids.reasoning()
            summary = reply.reasoning
            await stream.emit(
                OutputItemAdded,
                output_index=index,
                item=raw(
                    ReasoningItem(id=item_id, summary=[], status="in_progress"),
                ),
            )
            await stream.emit(
                ReasoningSummaryPartAdded,
                item_id=item_id,
                output_index=index,
                summary_index=0,
                part=SummaryPart(text=""),
            )
            tokens += await deltas_of(
                ReasoningSummaryTextDelta,
                iter_text(summary),
                item_id=item_id,
                output_index=index,
                summary_index=0,
            )
            await stream.emit(
                ReasoningSummaryTextDone,
                item_id=item_id,
                output_index=index,
                summary_index=0,
                text=summary,
            )
            await stream.emit(
                ReasoningSummaryPartDone,
                item_id=item_id,
                output_index=index,
                summary_index=0,
                part=SummaryPart(text=summary),
            )
            done_reasoning = ReasoningItem(
                id=item_id,
                summary=[SummaryPart(text=summary)],
                status="completed",
                encrypted_content=_opaque(item_id, summary) if encrypt else msgspec.UNSET,
            )
            await stream.emit(OutputItemDone, output_index=index, item=raw(done_reasoning))
            output.append(done_reasoning)
        if reply.text is not None:
            index = len(output)
            item_id = self._ids.message()
            text = reply.text
            deltas = reply.text_deltas if reply.text_deltas is not None else iter_text(text)
            await stream.emit(
                OutputItemAdded,
                output_index=index,
                item=raw(
                    MessageItem(id=item_id, role="assistant", status="in_progress", content=[]),
                ),
            )
            await stream.emit(
                ContentPartAdded,
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=ContentPart.output_text(""),
            )
            tokens += await deltas_of(
                OutputTextDelta, deltas, item_id=item_id, output_index=index, content_index=0
            )
            await stream.emit(
                OutputTextDone, item_id=item_id, output_index=index, content_index=0, text=text
            )
            await stream.emit(
                ContentPartDone,
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=ContentPart.output_text(text),
            )
            message = MessageItem(
                id=item_id,
                role="assistant",
                # The message of an incomplete response is the one that was cut off.
                status="incomplete" if reply.incomplete is not None else "completed",
                content=[ContentPart.output_text(text)],
            )
            await stream.emit(OutputItemDone, output_index=index, item=raw(message))
            output.append(message)
        for call in reply.calls:
            index = len(output)
            item_id = self._ids.function_call()
            call_id = self._ids.call()
            name = call.name
            arguments = call.arguments
            await stream.emit(
                OutputItemAdded,
                output_index=index,
                item=raw(
                    FunctionCallItem(
                        id=item_id, call_id=call_id, name=name, arguments="", status="in_progress"
                    ),
                ),
            )
            pieces = split_arguments(arguments, call.deltas)
            tokens += max(
                1,
                await deltas_of(
                    FunctionCallArgumentsDelta, pieces, item_id=item_id, output_index=index
                ),
            )
            await stream.emit(
                FunctionCallArgumentsDone,
                item_id=item_id,
                output_index=index,
                arguments=arguments,
                name=name,
            )
            function_call = FunctionCallItem(
                id=item_id, call_id=call_id, name=name, arguments=arguments, status="completed"
            )
            await stream.emit(OutputItemDone, output_index=index, item=raw(function_call))
            output.append(function_call)
        return tokens


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


def error_type(status: int) -> str:
    """The ``error.type`` for an HTTP status, the one rule for every error the server builds.

    5xx is ``server_error``; 429 is ``requests``, the rate-limit class the HTTP API sends with
    ``rate_limit_exceeded`` (spec 6.1 "rate-limit classes"; the SDK maps errors by status
    and never reads the type); every other status is ``invalid_request_error``, including
    401 (spec 2.3) and 409 (spec 6.4).
    """
    if status >= 500:
        return "server_error"
    if status == 429:
        return "requests"
    return "invalid_request_error"


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


def _valid_lane_id(value: str) -> bool:
    return 1 <= len(value) <= 256 and all(c in _LANE_ID_CHARS for c in value)


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


def _param_from(text: str) -> tuple[str | None, str]:
    """``param`` and error code for a schema violation message from msgspec."""
    code = "missing_required_parameter" if "missing required field" in text else "invalid_value"
    marker = "at `$."
    start = text.find(marker)
    if start == -1:
        field = text.rsplit("`", 2)[-2] if text.count("`") >= 2 else None
        return field, code
    path = text[start + len(marker) :].split("`", 1)[0]
    return path.split("[", 1)[0].split(".", 1)[0] or None, code


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
