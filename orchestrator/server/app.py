"""The embedded Responses-WebSocket server: handshake, lanes, cache, generation, faults.

One :class:`LocalServer` serves any number of connections. Each connection runs in its own
nursery and is isolated: an unexpected error in one closes that one with 1011 and nothing
else (an uncaught error in a trio-websocket handler would otherwise cancel every
connection).

The server accepts any trio stream (:meth:`LocalServer.handle_stream`), so the same code
serves real TCP (:func:`open_local_server`, ``orchestrator serve``) and in-memory stream pairs
driven by trio's MockClock in tests.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import socket
import struct
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
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream
from wsproto.frame_protocol import CloseReason

from orchestrator.errors import ConfigurationError, RemoteProtocolError
from orchestrator.protocol.codec import DECODE_ERRORS, decode_client_event, encode_text, raw
from orchestrator.protocol.events import (
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
    Usage,
)

from .config import Fault, ServerConfig
from .models import (
    ModelReply,
    ModelRequest,
    Policy,
    Script,
    count_tokens,
    item_text,
    load_script,
    select_policy,
    split_arguments,
    split_text,
)
from .state import CachedResponse, IdFactory, ResponseStore, call_ids_in

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

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
    """A snapshot of what the server has done since it started."""

    connections_opened: int
    connections_active: int
    handshakes_rejected: int
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


@attrs.define
class _Counters:
    connections_opened: int = 0
    connections_active: int = 0
    handshakes_rejected: int = 0
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


@attrs.define(eq=False)
class _FaultPlan:
    """Faults waiting to fire, with how many times each may still fire."""

    _entries: list[list[Any]] = attrs.field(factory=list)  # [fault, remaining]

    def add(self, fault: Fault) -> None:
        self._entries.append([fault, fault.times])

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
            return fault  # type: ignore[no-any-return]
        return None


_REQUEST_FAULTS: Final = frozenset({"error", "fail"})


class _Stop(Exception):
    """Internal: this connection is finished (closed or aborted by a fault)."""


@attrs.define(eq=False)
class _FaultableStream(trio.abc.Stream):
    """Wraps a connection's transport so faults can abort it or turn it into a black hole."""

    _stream: trio.abc.Stream
    _frozen: bool = False

    def freeze(self) -> None:
        """Stop answering: writes block forever, reads are discarded until EOF."""
        self._frozen = True

    async def abort(self) -> None:
        """Drop the connection without a WebSocket close frame (the peer sees 1006)."""
        sock = getattr(self._stream, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # already gone is fine too
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self._stream.aclose()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._frozen:
            await trio.sleep_forever()
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        while True:
            data = await self._stream.receive_some(max_bytes)
            if not self._frozen or not data:
                return data

    async def aclose(self) -> None:
        await self._stream.aclose()


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
        c = self._counters
        return ServerStatistics(
            connections_opened=c.connections_opened,
            connections_active=c.connections_active,
            handshakes_rejected=c.handshakes_rejected,
            responses_started=c.responses_started,
            responses_completed=c.responses_completed,
            responses_failed=c.responses_failed,
            responses_incomplete=c.responses_incomplete,
            warmups=c.warmups,
            errors_sent=dict(c.errors_sent),
            messages_received=c.messages_received,
            events_sent=c.events_sent,
            bytes_received=c.bytes_received,
            bytes_sent=c.bytes_sent,
            expiries=c.expiries,
            faults_fired=c.faults_fired,
            cache_hits=c.cache_hits,
            store_hydrations=c.store_hydrations,
            connection_errors=c.connection_errors,
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
        transport = _FaultableStream(stream)
        log = logger.bind(server_connection=index)
        try:
            async with trio.open_nursery() as nursery:
                # trio-websocket's reader task completes the closing handshake. It runs in a
                # nursery that a server shutdown does not cancel, so the 1001 close is
                # answered at once instead of waiting out close_timeout with nobody reading.
                websocket_nursery: trio.Nursery = await nursery.start(_open_shielded_nursery)
                try:
                    await self._serve(websocket_nursery, transport, index, log)
                finally:
                    websocket_nursery.cancel_scope.cancel()
                    nursery.cancel_scope.cancel()
        except* _Stop:
            pass  # already reported where it happened
        except* Exception as group:
            # Isolation: whatever went wrong stays in this connection.
            self._counters.connection_errors += 1
            log.opt(exception=group).warning("connection {} failed: {!r}", index, group)
        finally:
            with trio.CancelScope(shield=True):
                await transport.aclose()

    # -- per connection -----------------------------------------------------------------------

    async def _serve(
        self, nursery: trio.Nursery, transport: _FaultableStream, index: int, log: Any
    ) -> None:
        config = self.config
        with trio.move_on_after(config.handshake_timeout) as handshake_scope:
            request = await wrap_server_stream(
                nursery,
                transport,
                message_queue_size=64,
                max_message_size=config.max_message_size,
                receive_buffer_size=65536,
            )
        if handshake_scope.cancelled_caught:
            return
        fault = self._faults.take(index, None, None, handshake=True)
        if fault is not None:
            self._counters.faults_fired += 1
            if fault.kind == "delay_handshake":
                await trio.sleep(fault.duration or 0)
            elif fault.kind == "reject":
                headers = []
                if fault.retry_after is not None:
                    headers.append((b"retry-after", str(fault.retry_after).encode()))
                await self._reject(
                    request, fault.status, fault.error_code, fault.message or "rejected", headers
                )
                return
        path = urlsplit(request.path).path
        if path not in RESPONSES_PATHS:
            await self._reject(
                request, 404, "not_found", f"no WebSocket endpoint at {path}; use /v1/responses"
            )
            return
        request_headers = {name.lower(): value for name, value in request.headers}
        origin = request_headers.get(b"origin")
        if origin is not None and origin.decode("latin-1") not in config.allowed_origins:
            await self._reject(request, 403, "origin_not_allowed", "this Origin is not allowed")
            return
        if not self._authorised(request_headers.get(b"authorization")):
            await self._reject(
                request,
                401,
                "invalid_api_key",
                "Incorrect API key provided. The embedded server expects the token it printed "
                "at start-up.",
            )
            return
        ws = await request.accept()
        self._counters.connections_opened += 1
        self._counters.connections_active += 1
        connection = _ServerConnection(self, ws, transport, index, log)
        self._connections.add(connection)
        # 1001 "going away" when the server shuts down; 1011 when this connection broke.
        close_code = 1001
        try:
            await connection.run()
        except Exception as exc:
            close_code = 1011
            self._counters.connection_errors += 1
            log.opt(exception=exc).warning("connection {} failed: {!r}", index, exc)
            raise _Stop from exc
        finally:
            self._connections.discard(connection)
            self._counters.connections_active -= 1
            with trio.move_on_after(config.close_timeout, shield=True):
                await ws.aclose(close_code)

    def _authorised(self, header: bytes | None) -> bool:
        if header is None:
            return False
        scheme, _, credentials = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self.token.encode())

    async def _reject(
        self,
        request: Any,
        status: int,
        code: str,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self._counters.handshakes_rejected += 1
        body = json.dumps(
            {
                "error": {
                    "message": message,
                    "type": error_type(status),
                    "code": code,
                    "param": None,
                }
            }
        ).encode()
        await request.reject(
            status,
            extra_headers=[(b"content-type", b"application/json"), *(headers or [])],
            body=body,
        )


@attrs.define(eq=False)
class _Request:
    create: ResponseCreate
    lane: str | None
    # The tools exactly as the client sent them: echoed in the response object (spec 4.3)
    # without decoding and re-encoding them every turn.
    tools_raw: msgspec.Raw


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
    # ``created_at`` of the response object, fixed at ``response.created``: every lifecycle
    # event of one response carries the same object, the terminal one included.
    created_at: int | None = None

    def next_sequence(self) -> int:
        number = self.sequence
        self.sequence += 1
        return number

    async def emit(self, event_type: Any, **fields: Any) -> None:
        """Send the next event of this response, after firing the faults due before it."""
        await self.connection.before_event(self)
        # No checkpoint between numbering and sending: events of concurrent senders (a steer
        # answer, say) reach the socket in sequence order.
        event: ServerEvent = event_type(
            sequence_number=self.next_sequence(), stream_id=self.stream_id, **fields
        )
        await self.connection.send(event)


@attrs.define(eq=False)
class _ServerConnection:
    server: LocalServer
    ws: WebSocketConnection
    transport: _FaultableStream
    index: int
    log: Any
    _lanes: dict[str | None, _Lane] = attrs.field(factory=dict)
    _named_lanes: int = 0
    _responses: int = 0
    _busy: int = 0
    _idle: trio.Event = attrs.field(factory=trio.Event)
    _expired: bool = False
    _expire_now: trio.Event = attrs.field(factory=trio.Event)
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
                nursery.start_soon(self._expiry_timer)
                await self._read_loop()
                nursery.cancel_scope.cancel()
        except* _Stop:
            pass
        except* ConnectionClosed:
            pass

    async def _read_loop(self) -> None:
        while True:
            try:
                message = await self.ws.get_message()
            except ConnectionClosed:
                return
            self.counters.messages_received += 1
            self.counters.bytes_received += len(message)
            await self._on_message(message)

    def drop_cache(self) -> None:
        for lane in self._lanes.values():
            lane.latest = None

    # -- sending ------------------------------------------------------------------------------

    async def send(self, event: ServerEvent) -> None:
        text = encode_text(event)
        self.counters.events_sent += 1
        self.counters.bytes_sent += len(text)
        if isinstance(event, ErrorEvent):
            self.counters.errors_sent[event.code_value or "unknown"] += 1
        try:
            await self.ws.send_message(text)
        except ConnectionClosed as exc:
            raise _Stop from exc

    async def send_error(
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
        await self.send(
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
        if kind == "close":
            code: int = fault.code
            if code == 1005:
                code = CloseReason.NO_STATUS_RCVD  # sent as a close frame without a code
            with trio.move_on_after(self.server.config.close_timeout):
                await self.ws.aclose(code, fault.message)
            raise _Stop
        if kind == "abort":
            await self.transport.abort()
            raise _Stop
        if kind == "stall":
            if fault.duration is None:
                await trio.sleep_forever()
            await trio.sleep(fault.duration)
        elif kind == "blackhole":
            self.transport.freeze()
            await trio.sleep_forever()
        elif kind == "error":
            headers: dict[str, str] | UnsetType = UNSET
            if fault.retry_after is not None:
                headers = {"retry-after": str(fault.retry_after)}
            connection_scoped = fault.error_code == "websocket_connection_limit_reached"
            default_message = LIMIT_MESSAGE if connection_scoped else "injected error"
            await self.send_error(
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
            self._expire_now.set()
        elif kind == "send_raw":
            await self.ws.send_message(fault.payload)
        elif kind == "oversize":
            padding = max(0, fault.size - 40)
            await self.ws.send_message('{"type":"response.padding","pad":"' + "x" * padding + '"}')

    # -- expiry -------------------------------------------------------------------------------

    async def _expiry_timer(self) -> None:
        with trio.move_on_after(self.server.config.max_connection_age):
            await self._expire_now.wait()
        self._expired = True
        self.counters.expiries += 1
        await self._idle.wait()
        await self.send_error(400, "websocket_connection_limit_reached", LIMIT_MESSAGE)
        code = self.server.config.expiry_close_code
        if code is not None:
            with trio.move_on_after(self.server.config.close_timeout):
                await self.ws.aclose(code)
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

    async def _on_message(self, message: str | bytes) -> None:
        try:
            event = decode_client_event(message)
        except RemoteProtocolError as exc:
            await self._on_bad_message(message, exc)
            return
        if self.server.config.record_messages and len(self.server.received) < _RECORD_LIMIT:
            self.server.received.append((self.index, event))
        if isinstance(event, ResponseCreate):
            await self._on_create(event, _tools_of(event, message))
        elif isinstance(event, ResponseSteer):
            await self._on_steer(event)
        elif isinstance(event, UnknownEvent):
            await self.send_error(
                400,
                "unknown_event_type",
                f"Unknown client event type {event.type!r}; expected 'response.create' or "
                "'response.steer'.",
                param="type",
            )

    async def _on_bad_message(self, message: str | bytes, exc: RemoteProtocolError) -> None:
        text = str(exc)
        try:
            obj = _any_json.decode(message)
        except DECODE_ERRORS:
            await self.send_error(400, "invalid_json", f"Invalid JSON message: {text}")
            return
        if not isinstance(obj, dict):
            await self.send_error(
                400, "invalid_value", f"A client event is a JSON object, not {type(obj).__name__}."
            )
            return
        if "type" not in obj:
            await self.send_error(
                400,
                "missing_required_parameter",
                "Missing required parameter: 'type'.",
                param="type",
            )
            return
        param, code = _param_from(text)
        await self.send_error(400, code, f"Invalid client event: {text}", param=param)

    async def _on_create(self, create: ResponseCreate, tools_raw: msgspec.Raw) -> None:
        config = self.server.config
        stream_id = create.stream_id
        if isinstance(stream_id, str) and not _valid_lane_id(stream_id):
            await self.send_error(
                400,
                "invalid_stream_id",
                "stream_id must be 1 to 256 characters of [A-Za-z0-9_.-].",
                param="stream_id",
            )
            return
        lane_key = stream_id if isinstance(stream_id, str) else None
        if create.background is True:
            await self.send_error(
                400,
                "invalid_value",
                "background responses are not supported over WebSocket.",
                param="background",
                stream_id=stream_id,
            )
            return
        if not isinstance(create.model, str) or not create.model:
            await self.send_error(
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
            await self.send_error(
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
                await self.send_error(
                    400,
                    "websocket_stream_limit_reached",
                    f"This connection already uses {config.max_named_lanes} stream ids.",
                    param="stream_id",
                    stream_id=stream_id,
                )
                return
            lane = self._open_lane(lane_key)
        if config.strict_single_flight and lane.busy:
            await self.send_error(
                409,
                "response_already_in_flight",
                "A response is already in flight on this lane; wait for its terminal event.",
                stream_id=stream_id,
            )
            return
        self._mark_busy(lane)
        try:
            lane.send.send_nowait(_Request(create, lane_key, tools_raw))
        except trio.WouldBlock:
            self._mark_done(lane)
            await self.send_error(
                429,
                "too_many_queued_requests",
                "Too many queued responses on this lane.",
                stream_id=stream_id,
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

    async def _on_steer(self, steer: ResponseSteer) -> None:
        stream = self._active_responses.get(steer.previous_response_id)
        code = "steering_not_supported" if stream is not None else "response_not_found"
        message = (
            "The local models do not support steering."
            if stream is not None
            else "The target response is not active on this connection."
        )
        sequence = stream.next_sequence() if stream is not None else 0
        await self.send(
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
        async for request in lane.receive:
            try:
                async with self._active:
                    await self._process(request.create, lane, request.tools_raw)
            finally:
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
            await self.send_error(400, "websocket_connection_limit_reached", LIMIT_MESSAGE)
            return
        parent: CachedResponse | None = None
        parent_lane: _Lane | None = None
        previous = create.previous_response_id
        if isinstance(previous, str):
            parent, parent_lane = self._lookup(previous)
            if parent is None or parent.status == "failed":
                self._evict(previous, lane)
                await self.send_error(
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
        new_input = _input_items(create.input)
        parent_context = parent.context() if parent is not None else []
        problem = self._check_tool_outputs(parent, parent_context, new_input)
        if problem is not None:
            if parent is not None and parent_lane is lane:
                self._evict(parent.id, lane)
            await self.send_error(400, "invalid_value", problem, param="input", stream_id=stream_id)
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
                parent_context,
                new_input,
                tools_raw,
            )
        except _EndResponse as end:
            if end.evict and parent is not None and parent_lane is lane:
                self._evict(parent.id, lane)
            if end.failed is not None:
                # Reached only from a "fail" fault before the terminal event was sent. A
                # response must exist before it can fail: announce it first if needed.
                if stream.sequence == 0:
                    created_at = stream.created_at = int(time.time())
                    base = self._response_object(
                        create,
                        response_id,
                        status="in_progress",
                        created_at=created_at,
                        tools_raw=tools_raw,
                    )
                    await self.send(
                        ResponseCreated(
                            sequence_number=stream.next_sequence(),
                            response=base,
                            stream_id=stream.stream_id,
                        )
                    )
                await self._send_failed(
                    create, stream, response_id, end.failed, end.message, tools_raw=tools_raw
                )
        finally:
            self._active_responses.pop(response_id, None)

    def _check_tool_outputs(
        self, parent: CachedResponse | None, parent_context: list[Item], new_input: list[Item]
    ) -> str | None:
        calls, outputs = call_ids_in(new_input)
        parent_calls, _ = call_ids_in(parent_context)
        context_calls = calls | parent_calls
        dangling = sorted(outputs - context_calls)
        if dangling:
            return f"No tool call found for function call output with call_id '{dangling[0]}'."
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
        parent_context: list[Item],
        new_input: list[Item],
        tools_raw: msgspec.Raw,
    ) -> None:
        config = self.server.config
        latency = config.latency
        created_at = stream.created_at = int(time.time())
        tools = tuple(create.tools) if isinstance(create.tools, list) else ()
        store = create.store is not False
        base = self._response_object(
            create, response_id, status="in_progress", created_at=created_at, tools_raw=tools_raw
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
        if generate:
            context = (*parent_context, *new_input)
            request = ModelRequest(
                model=base.model,
                instructions=instructions or None,
                tools=tools,
                context=context,
                parallel_tool_calls=create.parallel_tool_calls is not False,
                tool_choice=_or(create.tool_choice, "auto"),
            )
            reply = self.server.policy_for(base.model).respond(request)
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
            output_tokens = await self._stream_output(
                reply, stream, output, latency.tokens_per_second
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
            await self._send_failed(
                create,
                stream,
                response_id,
                reply.failed,
                reply.message,
                output,
                usage,
                tools_raw=tools_raw,
            )
            raise _EndResponse(evict=True)
        if reply.incomplete is not None:
            final = self._response_object(
                create,
                response_id,
                status="incomplete",
                created_at=created_at,
                output=output,
                usage=usage,
                incomplete=IncompleteDetails(reason=reply.incomplete),
                tools_raw=tools_raw,
            )
            await stream.emit(ResponseIncomplete, response=final)
            self.counters.responses_incomplete += 1
            status = "incomplete"
        else:
            final = self._response_object(
                create,
                response_id,
                status="completed",
                created_at=created_at,
                output=output,
                usage=usage,
                tools_raw=tools_raw,
            )
            await stream.emit(ResponseCompleted, response=final)
            self.counters.responses_completed += 1
            status = "completed"
        cached_response = CachedResponse.create(
            response_id, parent, tuple(new_input), tuple(output), status, store=store
        )
        lane.latest = cached_response
        if store:
            self.server._store.put(cached_response)
        # A fault may be due right after the terminal event ("completed, then the socket died").
        await self.before_event(stream, ended=True)

    async def _send_failed(
        self,
        create: ResponseCreate,
        stream: _ResponseStream,
        response_id: str,
        code: str,
        message: str | None,
        output: list[Item] | None = None,
        usage: Usage | None = None,
        *,
        tools_raw: msgspec.Raw,
    ) -> None:
        final = self._response_object(
            create,
            response_id,
            status="failed",
            created_at=stream.created_at if stream.created_at is not None else int(time.time()),
            output=output,
            usage=usage,
            error=ResponseError(code=code, message=message or "The model failed to respond."),
            tools_raw=tools_raw,
        )
        self.counters.responses_failed += 1
        await stream.connection.send(
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
    ) -> int:
        pace = 1.0 / tokens_per_second if tokens_per_second else 0.0
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
            for piece in split_text(summary):
                if pace:
                    await trio.sleep(pace)
                await stream.emit(
                    ReasoningSummaryTextDelta,
                    item_id=item_id,
                    output_index=index,
                    summary_index=0,
                    delta=piece,
                )
                tokens += 1
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
                id=item_id, summary=[SummaryPart(text=summary)], status="completed"
            )
            await stream.emit(OutputItemDone, output_index=index, item=raw(done_reasoning))
            output.append(done_reasoning)
        if reply.text is not None:
            index = len(output)
            item_id = self._ids.message()
            text = reply.text
            deltas = list(reply.text_deltas) if reply.text_deltas is not None else split_text(text)
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
            for piece in deltas:
                if pace:
                    await trio.sleep(pace)
                await stream.emit(
                    OutputTextDelta,
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    delta=piece,
                )
            tokens += len(deltas)
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
            for piece in pieces:
                if pace:
                    await trio.sleep(pace)
                await stream.emit(
                    FunctionCallArgumentsDelta, item_id=item_id, output_index=index, delta=piece
                )
            tokens += max(1, len(pieces))
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


async def _open_shielded_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    """Provide a nursery that outside cancellation does not reach; cancel its scope to end it."""
    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            await trio.sleep_forever()


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


def _or(value: Any, default: Any) -> Any:
    return default if isinstance(value, UnsetType) else value


class _ToolsOnly(msgspec.Struct):
    tools: msgspec.Raw = _NO_TOOLS


_tools_decoder: Final = msgspec.json.Decoder(_ToolsOnly)


def _tools_of(create: ResponseCreate, message: str | bytes) -> msgspec.Raw:
    """The ``tools`` of a create exactly as sent (msgspec skips everything else quickly)."""
    if not isinstance(create.tools, list) or not create.tools:
        return _NO_TOOLS
    return _tools_decoder.decode(message).tools


def _valid_lane_id(value: str) -> bool:
    return 1 <= len(value) <= 256 and all(c in _LANE_ID_CHARS for c in value)


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
