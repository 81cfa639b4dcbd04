"""The HTTP transport of an agent's connection: one ``POST /v1/responses`` per turn, read as SSE.

Most servers that implement the Responses API have no WebSocket mode (vLLM, Ollama, LM
Studio, OpenRouter, llama.cpp's server, SGLang): they take the same create as the body of an
HTTP request with ``stream: true`` and answer with server-sent events. Over HTTP there is no
socket holding the conversation, so a turn either continues a *stored* response by
``previous_response_id`` (``store=true``) or resends the whole transcript (``store=false``):
that is what HTTP costs, and why WebSocket mode is the default where it exists
(docs/protocol.md#over-http).

:meth:`HttpTransport.post` sends one create and reads its events through the same sans-I/O
decoder and :class:`~orchestrator.core.protocol.turn.TurnAssembler` as the WebSocket path.
An attempt that does not end in a response is returned as one of the recovery policy's
outcomes (:mod:`orchestrator.core.protocol.recovery`), so retries, back-off,
``Retry-After`` and the rule that no tool ever runs from a partial stream are decided in
one place for both transports.

The HTTP itself is httpx2 (pydantic's maintained httpx, the official SDK's client), which
runs on trio and parses SSE. It is imported when a connection first uses HTTP, so the
WebSocket path never loads it.
"""

from __future__ import annotations

import functools
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from orchestrator.core.failpoints import crash_point
from orchestrator.core.protocol.codec import decode_server_event
from orchestrator.core.protocol.events import ErrorDetail
from orchestrator.core.protocol.recovery import Lost, Outcome, Refused, Rejected, Unreachable
from orchestrator.core.protocol.sse import SseDecoder
from orchestrator.core.protocol.turn import RequestError, Response, TurnAssembler
from orchestrator.core.redaction import redact
from orchestrator.core.rules import retry_after_seconds
from orchestrator.errors import (
    AuthenticationError,
    ConnectionLost,
    HandshakeRejected,
    RemoteProtocolError,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Callable, Sequence

    import httpcore2
    import httpx2

    from orchestrator.core.endpoint import Connector
    from orchestrator.core.protocol.events import ResponseCreate

__all__ = ["HttpTransport", "encode_body", "http_url", "request_error"]

# msgspec writes a tagged struct's tag first: over HTTP the body is the create without the
# WebSocket envelope's ``type``, with ``stream: true``.
_ENVELOPE: Final = b'{"type":"response.create",'
_STREAMING: Final = b'{"stream":true,'
# How much of an error body is read and quoted, and how much is read after the terminal
# event (and for how long) to keep the connection for the next request.
_ERROR_BODY_LIMIT: Final = 64 * 1024
_DRAIN_SECONDS: Final = 5.0


def http_url(websocket_url: str) -> str:
    """The ``https://`` (or ``http://``) URL of the endpoint a ``wss://`` (``ws://``) URL names."""
    scheme, sep, rest = websocket_url.partition("://")
    return {"wss": "https", "ws": "http"}.get(scheme, scheme) + sep + rest


def encode_body(create: ResponseCreate) -> bytes:
    """The HTTP body of ``create``: its fields, ``stream: true``, no ``type`` envelope."""
    data = msgspec.json.encode(create)
    if data.startswith(_ENVELOPE):
        return _STREAMING + data[len(_ENVELOPE) :]
    # Cannot happen with msgspec (the tag comes first); kept correct rather than fast.
    fields = msgspec.json.decode(data)
    del fields["type"]
    fields["stream"] = True
    return msgspec.json.encode(fields)


class _ErrorBody(msgspec.Struct, frozen=True):
    """An HTTP error body: ``{"error": {...}}``, ``{"error": "text"}`` or the fields flat."""

    error: ErrorDetail | str | None = None
    code: str | None = None
    message: str | None = None
    param: str | None = None


def request_error(status: int | None, body: bytes, headers: dict[str, str]) -> RequestError | None:
    """The error an HTTP error answer reports, or ``None`` when its body says nothing usable."""
    try:
        decoded = msgspec.json.decode(body, type=_ErrorBody)
    except msgspec.DecodeError:
        return None
    error = decoded.error
    if isinstance(error, ErrorDetail):
        code, message = error.code, error.message
        param, kind = error.param, error.type
    elif isinstance(error, str) or decoded.message is not None:
        code, param, kind = decoded.code, decoded.param, None
        message = error if isinstance(error, str) else decoded.message or ""
    else:
        return None
    return RequestError(
        code=code if isinstance(code, str) else None,
        message=message,
        status=status,
        param=param if isinstance(param, str) else None,
        error_type=kind if isinstance(kind, str) else None,
        headers=headers,
    )


class HttpTransport:
    """Posts an agent's turns to one ``/responses`` URL. Create it with :meth:`open`.

    ``idle_timeout`` bounds the wait for the next *event* of a stream, as the idle deadline
    does over WebSocket (comments and keep-alive bytes do not count);
    ``connect_timeout`` bounds connecting and sending the request; ``max_event_size``
    bounds one event.
    """

    def __init__(
        self,
        url: str,
        headers: Sequence[tuple[str, str]],
        client: httpx2.AsyncClient,
        *,
        idle_timeout: float,
        max_event_size: int,
        key_fingerprint: str = "",
    ) -> None:
        self.url = url
        self.headers = tuple(headers)
        self._client = client
        self.idle_timeout = idle_timeout
        self.max_event_size = max_event_size
        self.opened_at = trio.current_time()
        self.requests = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.events_received = 0
        self.key_fingerprint = key_fingerprint  # names the key in an authentication error

    def __repr__(self) -> str:
        return f"HttpTransport({self.url!r}, requests={self.requests})"

    @classmethod
    def open(
        cls,
        url: str,
        headers: Sequence[tuple[str, str]],
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_event_size: int = 64 * 1024 * 1024,
        connector: Connector | None = None,
        key_fingerprint: str = "",
    ) -> HttpTransport:
        """A transport for ``url``.

        httpx2 connects (TLS, and the proxies of ``HTTPS_PROXY``/``ALL_PROXY``), unless a
        ``connector`` is given: its streams (in-memory ones, say) are then the connections,
        as they are, with no TLS over them.
        """
        import httpx2

        # The read timeout backs up the per-event idle deadline of _read_events.
        timeout = httpx2.Timeout(
            connect=connect_timeout, read=idle_timeout, write=connect_timeout, pool=None
        )
        if connector is None:
            client = httpx2.AsyncClient(timeout=timeout, verify=_ssl_context(), trust_env=True)
        else:
            transport = httpx2.AsyncHTTPTransport(verify=_ssl_context(), retries=0)
            transport._pool = _pool_over(connector)  # no public hook in httpx2
            client = httpx2.AsyncClient(timeout=timeout, transport=transport)
            url = url.replace("https://", "http://", 1)
        return cls(
            url,
            headers,
            client,
            idle_timeout=idle_timeout,
            max_event_size=max_event_size,
            key_fingerprint=key_fingerprint,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def age(self) -> float:
        return trio.current_time() - self.opened_at

    async def post(
        self,
        create: ResponseCreate,
        on_event: Callable[[Any], object] | None,
        *,
        replayed: bool,
    ) -> Response | Outcome:
        """Send ``create`` and read its events to the terminal one.

        Returns:
            The response, or the outcome of an attempt that did not end in one: the
            endpoint unreachable, an error status (``Refused``; ``Rejected`` when its body
            carries an error), the stream cut or silent for ``idle_timeout`` (``Lost``).

        Raises:
            RemoteProtocolError: a 200 that is not an event stream, or garbage events.
        """
        import httpx2

        body = encode_body(create)
        self.requests += 1
        try:
            async with self._client.stream(
                "POST", self.url, content=body, headers=self.headers
            ) as answer:
                crash_point("request_sent")
                self.bytes_sent += len(body)
                if answer.status_code != 200:
                    return await self._refused(answer, replayed=replayed)
                return await self._read_events(answer, on_event, replayed=replayed)
        except httpx2.ConnectTimeout:
            error = HandshakeRejected(0, f"no answer from {self.url} within the connect timeout")
            return Refused.of(error)
        except (httpx2.ConnectError, httpx2.UnsupportedProtocol) as exc:
            return Unreachable(ConnectionLost(1006, f"cannot connect to {self.url}: {exc}"))
        except httpx2.ReadTimeout:
            lost = ConnectionLost(1006, "no event within the idle timeout (idle deadline)")
            return Lost(lost, connection_age=self.age())
        except httpx2.TransportError as exc:
            # Cut mid-stream: reset, closed without completing the body, a broken chunk.
            lost = ConnectionLost(1006, f"stream cut: {exc or type(exc).__name__}")
            return Lost(lost, connection_age=self.age())

    async def _read_events(
        self,
        answer: httpx2.Response,
        on_event: Callable[[Any], object] | None,
        *,
        replayed: bool,
    ) -> Response | Outcome:
        kind = answer.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "text/event-stream":
            raise RemoteProtocolError(
                f"{self.url} answered a streaming request with {kind or 'no content type'}, "
                "not text/event-stream"
            )
        assembler = TurnAssembler()
        decoder = SseDecoder(self.max_event_size)
        idle, clock = self.idle_timeout, trio.current_time
        # The deadline moves with every event, not with every byte: a stream kept alive by
        # comments alone is as dead as a silent one. (A read cancelled here ends the body,
        # unlike a WebSocket's: so the deadline moves, it is not re-armed.)
        with trio.CancelScope(deadline=clock() + idle) as idle_scope:
            async with aclosing(answer.aiter_bytes()) as chunks:
                async for chunk in chunks:
                    self.bytes_received += len(chunk)
                    for data in decoder.feed(chunk):
                        if not data or data == b"[DONE]":
                            continue
                        self.events_received += 1
                        idle_scope.deadline = clock() + idle
                        result = self._receive(assembler, data, on_event)
                        if result is not None:
                            await self._drain(chunks)
                            if isinstance(result, RequestError):
                                return Rejected(
                                    result, replayed=replayed, connection_age=self.age()
                                )
                            return result
        if idle_scope.cancelled_caught:
            lost = ConnectionLost(1006, f"no event for {idle:g} s (idle deadline)")
        else:
            lost = ConnectionLost(1006, "the event stream ended before the response did")
        return Lost(lost, connection_age=self.age())

    @staticmethod
    def _receive(
        assembler: TurnAssembler, data: bytes, on_event: Callable[[Any], object] | None
    ) -> Response | RequestError | None:
        """One event's data into the turn: the result once it ends the request.

        Data that is only an error (``{"error": {...}}`` with no ``type``, as some servers
        stream it) ends the request as that error, as the official SDK reads it.

        Raises:
            RemoteProtocolError: data that is neither an event nor an error.
        """
        try:
            event = decode_server_event(data)
        except RemoteProtocolError:
            error = request_error(None, data, {})
            if error is None:
                raise
            return error
        crash_point("mid_stream")
        result = assembler.receive(event)
        if on_event is not None:
            on_event(event)
        return result

    async def _drain(self, chunks: AsyncIterator[bytes]) -> None:
        """Read what follows the terminal event (normally only the body's end) so the HTTP
        connection goes back to the pool for the next turn instead of being closed. A server
        that goes on sending, or stays silent, only costs the connection."""
        import httpx2

        read = 0
        with trio.move_on_after(_DRAIN_SECONDS):
            try:
                async for chunk in chunks:
                    read += len(chunk)
                    if read > _ERROR_BODY_LIMIT:
                        return
            except httpx2.TransportError:
                return  # the response is complete; only the connection is lost

    async def _refused(self, answer: httpx2.Response, *, replayed: bool) -> Outcome:
        status = answer.status_code
        body = b""
        async with aclosing(answer.aiter_bytes()) as chunks:
            async for chunk in chunks:
                body += chunk
                if len(body) >= _ERROR_BODY_LIMIT:
                    break
        self.bytes_received += len(body)
        headers = {k.lower(): v for k, v in answer.headers.items()}
        if status in (401, 403):
            refusal = AuthenticationError.refused(status, self.url, self.key_fingerprint)
            return Refused.of(refusal)
        error = request_error(status, body, headers)
        if error is not None:
            return Rejected(error, replayed=replayed, connection_age=self.age(), refused=True)
        text = redact(body[:512].decode("utf-8", "replace"))
        rejected = HandshakeRejected(status, f"HTTP {status} from {self.url}: {text}")
        return Refused(status, rejected, retry_after_seconds(headers.get("retry-after")))


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every agent: building one loads the CA bundle (about 50 ms of
    blocking work), so it is done once per process, not once per agent."""
    import httpx2

    return httpx2.create_ssl_context()


def _pool_over(connector: Connector) -> httpcore2.AsyncConnectionPool:
    """An httpcore2 pool whose connections are the streams ``connector`` opens."""
    import httpcore2

    class _Stream(httpcore2.AsyncNetworkStream):
        def __init__(self, stream: trio.abc.Stream) -> None:
            self._stream = stream

        async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
            try:
                with trio.fail_after(timeout if timeout is not None else float("inf")):
                    return bytes(await self._stream.receive_some(max_bytes))
            except trio.TooSlowError as exc:
                raise httpcore2.ReadTimeout(str(exc)) from exc
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise httpcore2.ReadError(str(exc)) from exc

        async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
            try:
                with trio.fail_after(timeout if timeout is not None else float("inf")):
                    await self._stream.send_all(buffer)
            except trio.TooSlowError as exc:
                raise httpcore2.WriteTimeout(str(exc)) from exc
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise httpcore2.WriteError(str(exc)) from exc

        async def aclose(self) -> None:
            await self._stream.aclose()

        def get_extra_info(self, info: str) -> Any:
            return None

    class _Backend(httpcore2.AsyncNetworkBackend):
        async def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,  # noqa: ASYNC109 (httpcore2's signature)
            local_address: str | None = None,
            socket_options: Any = None,
        ) -> httpcore2.AsyncNetworkStream:
            try:
                with trio.fail_after(timeout if timeout is not None else float("inf")):
                    return _Stream(await connector())
            except trio.TooSlowError as exc:
                raise httpcore2.ConnectTimeout(str(exc)) from exc
            except OSError as exc:
                raise httpcore2.ConnectError(str(exc)) from exc

        async def sleep(self, seconds: float) -> None:
            await trio.sleep(seconds)

    return httpcore2.AsyncConnectionPool(network_backend=_Backend())
