"""The WebSocket side of the embedded server: the upgrade's handshake, then one
:class:`WebSocketConnection` (docs/protocol.md#lanes-and-limits): its read loop, lanes and their
workers, the connection-local cache, the age limit, steering and injected faults.

The socket itself is :class:`~orchestrator.core.server.transport.ServerWebSocket` (wsproto,
one read loop and one buffered writer per connection): the events a response produces
between two checkpoints leave in one write. Sending an event is therefore synchronous
(:meth:`WebSocketConnection.send`); producers await only for pacing, faults and
backpressure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs
import msgspec
import trio
from msgspec import UNSET

from orchestrator.core.protocol.codec import decode_client_event, encode
from orchestrator.core.protocol.events import (
    ErrorDetail,
    ErrorEvent,
    ResponseCreate,
    ResponseSteer,
    ServerEvent,
    SteerFailed,
    SteerInfo,
    UnknownEvent,
)
from orchestrator.errors import RemoteProtocolError

from .checks import EXPIRED, QUEUE_FULL, check_create, check_lane, check_message, unknown_event
from .connection import (
    RECORD_LIMIT,
    RESPONSES_PATHS,
    TRANSPORT_FAULTS,
    BaseConnection,
    EndResponse,
    ResponseStream,
    Slot,
    StopConnection,
    error_body,
    input_count,
    tools_of,
    unset_or,
)
from .transport import ServerWebSocket, TransportClosed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from wsproto.events import Request

    # Annotations only: attrs does not evaluate them (postponed, never resolved), and a
    # real import would be circular (app imports this module to serve connections).
    from .app import LocalServer  # noqa: TC004
    from .config import Fault
    from .state import CachedResponse

__all__ = ["WebSocketConnection", "serve_websocket"]


async def serve_websocket(
    server: LocalServer,
    stream: trio.abc.Stream,
    head: bytes,
    deadline: float,
    index: int,
    log: Any,
) -> None:
    """Answer the upgrade whose request (``head``, and whatever followed it) was read by
    ``deadline``, then serve the WebSocket. Never raises ``Exception``."""
    config = server.config
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
                await _serve(server, transport, index, log, head, deadline)
            finally:
                writer_scope.cancel()
                nursery.cancel_scope.cancel()
    except* (StopConnection, TransportClosed):
        pass  # already reported where it happened
    except* Exception as group:
        # Isolation: whatever went wrong stays in this connection.
        server._counters.connection_errors += 1
        log.opt(exception=group).warning("connection {} failed: {!r}", index, group)
    finally:
        await transport.close_stream()


async def _serve(
    server: LocalServer,
    transport: ServerWebSocket,
    index: int,
    log: Any,
    head: bytes,
    deadline: float,
) -> None:
    """The handshake, then the connection until it ends, then the closing handshake."""
    counters = server._counters
    peer = transport.peer
    accepted = False
    counters.handshakes_pending += 1
    try:
        with trio.CancelScope(deadline=deadline) as scope:
            handshake = _Handshake(server, transport, index, log, peer)
            accepted = await handshake.run(head, scope)
    finally:
        counters.handshakes_pending -= 1
    if scope.cancelled_caught:
        server._timed_out(index, log, peer)
        return
    if not accepted:
        return
    counters.connections_opened += 1
    counters.connections_active += 1
    connection = WebSocketConnection(server=server, transport=transport, index=index, log=log)
    transport.on_give_up = connection.on_give_up
    server._connections.add(connection)
    log.info("connection {} from {} opened", index, peer)
    # 1001 "going away" when the server shuts down; 1011 when this connection broke.
    close_code = 1001
    try:
        await connection.run()
    except Exception as exc:
        close_code = 1011
        counters.connection_errors += 1
        log.opt(exception=exc).warning("connection {} failed: {!r}", index, exc)
        raise StopConnection from exc
    finally:
        server._connections.discard(connection)
        counters.connections_active -= 1
        counters.peak_buffered_bytes = max(counters.peak_buffered_bytes, transport.peak_buffered)
        counters.peak_request_bytes = max(
            counters.peak_request_bytes, connection.peak_request_bytes
        )
        with trio.move_on_after(server.config.close_timeout, shield=True):
            await transport.aclose(close_code)
        _log_closed(transport, index, log, peer)


def _log_closed(transport: ServerWebSocket, index: int, log: Any, peer: str) -> None:
    """Say how the connection ended: closed by which side with which code, or lost."""
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


@attrs.define(eq=False)
class _Handshake:
    """Answering one upgrade request: the checks in their order, and the refusals."""

    server: LocalServer
    transport: ServerWebSocket
    index: int
    log: Any
    peer: str

    async def run(self, head: bytes, deadline: trio.CancelScope) -> bool:
        """Read the upgrade request (from ``head``, the bytes already read, on) and answer
        it; whether the connection was accepted. ``deadline``: the handshake's scope (a
        ``delay_handshake`` fault moves it)."""
        transport = self.transport
        request = await transport.receive_request(head)
        if request is None:
            # Gone, or not a WebSocket upgrade (answered with wsproto's 400 or 426).
            if transport.refused_status is not None:
                self.server._counters.handshakes_rejected += 1
                self.log.info(
                    "connection {} from {}: handshake refused with {}: not a WebSocket "
                    "upgrade request",
                    self.index,
                    self.peer,
                    transport.refused_status,
                )
            return False
        if not self.server.config.websocket:
            # An HTTP-only endpoint, the way Ollama answers: before anything else, since
            # nothing else about the request matters (docs/protocol.md#an-http-only-server).
            await self._reject(
                426,
                "websocket_not_supported",
                "This server does not speak WebSocket mode: send HTTP POST /v1/responses "
                "(stream: true for server-sent events) instead.",
            )
            return False
        if not await self._injected_fault(deadline):
            return False
        refusal = self._check(request)
        if refusal is not None:
            await self._reject(*refusal)
            return False
        transport.accept()
        return True

    async def _injected_fault(self, deadline: trio.CancelScope) -> bool:
        """Carry out a handshake fault due on this connection; whether the handshake goes
        on (a ``reject`` fault refuses it)."""
        server = self.server
        fault = server._faults.take(self.index, None, None, handshake=True)
        if fault is None:
            return True
        server._counters.faults_fired += 1
        if fault.kind == "delay_handshake":
            # An injected slow server, not a slow client: the deadline moves with it.
            deadline.deadline += fault.duration or 0
            await trio.sleep(fault.duration or 0)
        elif fault.kind == "reject":
            headers = []
            if fault.retry_after is not None:
                headers.append((b"retry-after", str(fault.retry_after).encode()))
            await self._reject(fault.status, fault.error_code, fault.message or "rejected", headers)
            return False
        return True

    def _check(self, request: Request) -> tuple[int, str, str] | None:
        """Why the upgrade ``request`` is refused (status, code, message), if it is: the
        path, then the Origin, then the token."""
        path = urlsplit(request.target).path
        if path not in RESPONSES_PATHS:
            return 404, "not_found", f"no WebSocket endpoint at {path}; use /v1/responses"
        request_headers = {
            bytes(name).lower(): bytes(value) for name, value in request.extra_headers
        }
        origin = request_headers.get(b"origin")
        if (
            origin is not None
            and origin.decode("latin-1") not in self.server.config.allowed_origins
        ):
            return 403, "origin_not_allowed", "this Origin is not allowed"
        if not self.server._authorised(request_headers.get(b"authorization")):
            return (
                401,
                "invalid_api_key",
                "Incorrect API key provided. The embedded server expects the token it printed "
                "at start-up.",
            )
        return None

    async def _reject(
        self,
        status: int,
        code: str,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Refuse the upgrade with ``status`` and a JSON error body (never echoing headers,
        so never the token)."""
        self.server._counters.handshakes_rejected += 1
        # No colon after the code: "invalid_api_key: ..." would read as a secret to redact.
        self.log.info(
            "connection {} from {}: handshake refused with {} {} ({})",
            self.index,
            self.peer,
            status,
            code,
            message,
        )
        await self.transport.reject(
            status,
            [(b"content-type", b"application/json"), *(headers or [])],
            error_body(status, code, message),
        )


@attrs.define(eq=False)
class _Request:
    create: ResponseCreate
    lane: str | None
    # The tools exactly as the client sent them: echoed in the response object
    # (docs/protocol.md#function-tools) without decoding and re-encoding them every turn.
    tools_raw: msgspec.Raw
    size: int  # of the message, counted against max_request_bytes until the response ends


@attrs.define(eq=False, kw_only=True)
class _Lane(Slot):
    """A WebSocket lane: its slot, and the creates waiting for it."""

    send: trio.MemorySendChannel[_Request]
    receive: trio.MemoryReceiveChannel[_Request]
    busy: int = 0


@attrs.define(eq=False, kw_only=True)
class WebSocketConnection(BaseConnection):
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
        except* (StopConnection, TransportClosed):
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

    async def _fire(self, fault: Fault, stream: ResponseStream) -> None:
        self.counters.faults_fired += 1
        self.log.debug("fault {} on response {}", fault.kind, stream.index)
        kind = fault.kind
        transport = self.transport
        if kind in TRANSPORT_FAULTS:
            # Exactly ``after_events`` events reach the client before the fault: what is
            # still buffered goes out first.
            await transport.flush()
        if kind == "close":
            # 1005 goes out as a close frame without a code. The handshake completes in
            # _serve's aclose, after this connection's tasks are gone.
            transport.start_close(fault.code, fault.message)
            raise StopConnection
        if kind == "abort":
            await transport.abort()
            raise StopConnection
        if kind == "stall":
            if fault.duration is None:
                await trio.sleep_forever()
            await trio.sleep(fault.duration)
        elif kind == "blackhole":
            transport.freeze()
            await trio.sleep_forever()
        elif kind == "error":
            self._injected_error(fault, stream)
            raise EndResponse(evict=True)
        elif kind == "fail":
            raise EndResponse(evict=True, failed=fault.error_code, message=fault.message)
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
            raise StopConnection
        self._expired = True
        self.counters.expiries += 1
        await self._idle.wait()
        self.refuse(EXPIRED)
        code = self.server.config.expiry_close_code
        if code is not None:
            # The handshake completes in _serve's aclose, after this connection's tasks.
            self.transport.start_close(code)
            raise StopConnection

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
        if self.server.config.record_messages and len(self.server.received) < RECORD_LIMIT:
            self.server.received.append((self.index, event))
        if isinstance(event, ResponseCreate):
            self._on_create(event, tools_of(event, message), len(message))
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
            input_count(create.input),
            unset_or(create.previous_response_id, None),
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


async def _shielded(scope: trio.CancelScope, function: Callable[[], Awaitable[object]]) -> None:
    """Run ``function`` inside ``scope``: out of outside cancellation's reach, ended by
    ``scope.cancel()`` (also when that comes before this task first runs)."""
    with scope:
        await function()


def _builtins_hook(obj: Any) -> Any:
    data = getattr(obj, "data", None)
    if isinstance(data, dict):
        return data
    raise NotImplementedError
