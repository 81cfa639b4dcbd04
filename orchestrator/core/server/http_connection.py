"""The plain HTTP side of the embedded server: one :class:`HttpConnection` per connection,
its requests one after the other (keep-alive), each ``POST /v1/responses`` answered with the
same events a WebSocket would carry, as server-sent events or as the final response object
(docs/protocol.md#over-http). The bytes are :class:`~.http_transport.ServerHttp`'s (h11).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import urlsplit

import attrs
import h11
import trio

from orchestrator.core.protocol.codec import decode_create_body, encode, has_envelope
from orchestrator.core.protocol.events import (
    ErrorEvent,
    FunctionCallItem,
    Item,
    MessageItem,
    ReasoningItem,
    ResponseCompleted,
    ResponseCreate,
    ResponseFailed,
    ResponseIncomplete,
    ResponseLifecycleEvent,
    ServerEvent,
)
from orchestrator.errors import RemoteProtocolError

from .checks import Refusal, check_body, check_http_create
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
from .http_transport import BodyTooLarge, ServerHttp
from .models import count_tokens, item_text
from .transport import TransportClosed

if TYPE_CHECKING:
    import msgspec

    from .app import LocalServer
    from .config import Fault
    from .http_transport import Head
    from .state import CachedResponse

__all__ = ["HttpConnection", "serve_http"]


async def serve_http(
    server: LocalServer, stream: trio.abc.Stream, head: Head, index: int, log: Any
) -> None:
    """Serve plain HTTP requests on ``stream``, the first one's ``head`` already read.
    Never raises ``Exception``."""
    config = server.config
    counters = server._counters
    transport = ServerHttp(
        stream,
        head.connection,
        max_buffered=config.max_buffered_bytes,
        send_timeout=config.send_timeout,
    )
    connection = HttpConnection(server=server, transport=transport, index=index, log=log)
    transport.on_give_up = connection.on_give_up
    counters.http_connections += 1
    server._connections.add(connection)
    log.debug("connection {} from {}: HTTP", index, transport.peer)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.serve_writes)
            try:
                await connection.run(head)
            finally:
                nursery.cancel_scope.cancel()
    except* (StopConnection, TransportClosed):
        pass  # the client left, or a fault cut the connection
    except* Exception as group:
        # Isolation: whatever went wrong stays in this connection.
        counters.connection_errors += 1
        log.opt(exception=group).warning("connection {} failed: {!r}", index, group)
    finally:
        server._connections.discard(connection)
        counters.peak_buffered_bytes = max(counters.peak_buffered_bytes, transport.peak_buffered)
        counters.peak_request_bytes = max(
            counters.peak_request_bytes, connection.peak_request_bytes
        )
        await transport.close_stream()
        log.debug("connection {} from {}: HTTP connection closed", index, transport.peer)


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
class HttpConnection(BaseConnection):
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
        self.counters.http_requests += 1
        method = self._method = request.method.decode("ascii", "replace")
        path = urlsplit(request.target.decode("latin-1")).path
        headers = {bytes(name): bytes(value) for name, value in request.headers}
        body = await self._read_body(headers)
        if body is None:
            return False
        self.counters.bytes_received += len(body)
        if not self._routed(method, path):
            return True
        # Each POST is a response for fault matching, answered or refused.
        self._posts += 1
        if not await self._admitted(headers):
            return True
        create = self._decode(body)
        if create is None:
            return True
        server = self.server
        if server.config.record_messages and len(server.received) < RECORD_LIMIT:
            server.received.append((self.index, create))
        self.log.debug(
            "connection {} POST {}: model {}, {} input items, previous_response_id {}, "
            "store {}, stream {}",
            self.index,
            path,
            create.model,
            input_count(create.input),
            unset_or(create.previous_response_id, None),
            create.store is not False,
            create.stream is True,
        )
        await self._create(create, tools_of(create, body), len(body))
        return True

    async def _read_body(self, headers: dict[bytes, bytes]) -> bytes | None:
        """The current request's body; or ``None``: it was too large, malformed or too slow
        (answered so, and the connection is to close)."""
        config = self.server.config
        limit = config.max_message_size
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            self._too_large(int(length), limit)
            return None
        try:
            with trio.move_on_after(config.handshake_timeout) as reading:
                body = await self.transport.read_body(limit)
        except BodyTooLarge:
            self._too_large(None, limit)
            return None
        except h11.RemoteProtocolError as exc:
            self._bad_request(exc)
            return None
        if reading.cancelled_caught:
            self._answer_error(
                408,
                "request_timeout",
                f"The request body did not arrive within {config.handshake_timeout:g} s.",
                close=True,
            )
            return None
        return body

    def _routed(self, method: str, path: str) -> bool:
        """Whether the request is a ``POST`` to the responses endpoint (else answered with
        404 or 405)."""
        if path not in RESPONSES_PATHS:
            self._answer_error(
                404,
                "not_found",
                f"No endpoint at {path}: POST /v1/responses (or /responses) creates a response.",
            )
            return False
        if method != "POST":
            self._answer_error(
                405,
                "method_not_allowed",
                f"{method} {path} is not served: POST creates a response.",
                headers=[(b"allow", b"POST")],
            )
            return False
        return True

    async def _admitted(self, headers: dict[bytes, bytes]) -> bool:
        """Whether the POST is let in: a handshake fault due on it carried out (``reject``
        refuses it), then its Origin and its token checked (else answered 403 or 401)."""
        server = self.server
        fault = server._faults.take(self.index, self._posts, None, handshake=True)
        if fault is not None:
            self.counters.faults_fired += 1
            if fault.kind == "delay_handshake":
                await trio.sleep(fault.duration or 0)
            elif fault.kind == "reject":
                extra = []
                if fault.retry_after is not None:
                    extra.append((b"retry-after", str(fault.retry_after).encode()))
                self._answer_error(
                    fault.status, fault.error_code, fault.message or "rejected", headers=extra
                )
                return False
        origin = headers.get(b"origin")
        if origin is not None and origin.decode("latin-1") not in server.config.allowed_origins:
            self._answer_error(403, "origin_not_allowed", "this Origin is not allowed")
            return False
        if not server._authorised(headers.get(b"authorization")):
            self._answer_error(
                401,
                "invalid_api_key",
                "Incorrect API key provided. The embedded server expects the token it printed "
                "at start-up.",
            )
            return False
        return True

    def _decode(self, body: bytes) -> ResponseCreate | None:
        """The create a POST's ``body`` carries; or ``None``: it is not a valid one
        (answered with the HTTP error its check decided on)."""
        try:
            create = decode_create_body(body)
        except RemoteProtocolError as exc:
            self._refuse_request(check_body(body, exc))
            return None
        refusal = check_http_create(create, envelope=has_envelope(body))
        if refusal is not None:
            self._refuse_request(refusal)
            return None
        return create

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
                    await self._process(create, Slot(None), tools_raw)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self.request_bytes = 0
        if self._client_gone:
            self.log.debug("connection {}: the client left during a response", self.index)
            raise StopConnection
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
            body = error_body(status, code, detail.message, param)
            transport.respond(status, [_JSON, *headers], body)
        elif isinstance(outcome, ResponseLifecycleEvent):
            body = encode(outcome.response)
            self.counters.bytes_sent += len(body)
            transport.respond(200, [_JSON], body)
        else:  # pragma: no cover - every response ends with a terminal or an error event
            transport.respond(500, [_JSON], error_body(500, None, "no response was produced"))

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
        body = error_body(refusal.status, refusal.code, refusal.message, refusal.param)
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
        body = error_body(status, code, message)
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

    def _lookup(self, response_id: str) -> tuple[CachedResponse | None, Slot | None]:
        # No connection-local cache over HTTP: the store or nothing.
        return self.server._store.get(response_id), None

    def _cached_tokens(
        self,
        parent: CachedResponse | None,
        parent_lane: Slot | None,
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

    async def _fire(self, fault: Fault, stream: ResponseStream) -> None:
        self.counters.faults_fired += 1
        self.log.debug("fault {} on response {}", fault.kind, stream.index)
        kind = fault.kind
        transport = self.transport
        if kind in TRANSPORT_FAULTS:
            # Exactly ``after_events`` events reach the client before the fault.
            await transport.flush()
        if kind == "abort":
            await transport.abort()
            raise StopConnection
        if kind == "close":
            await transport.close_stream()
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
