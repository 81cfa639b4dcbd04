"""The server side of plain HTTP/1.1 connections, on h11: requests in, answers and SSE out.

A connection's first request head is read before anything else (:func:`read_head`), so the
server can tell a WebSocket upgrade (handed to :mod:`.transport` with the bytes already
read) from a ``POST /v1/responses`` served here (docs/protocol.md#over-http).

:class:`ServerHttp` is built like :class:`~orchestrator.core.server.transport.ServerWebSocket`:

* **Reading** is done by the one task serving the connection: :meth:`ServerHttp.next_request`
  and :meth:`ServerHttp.read_body`, one request after the other (keep-alive; a pipelined
  request waits in h11's buffer until the previous answer is out).
* **Writing** goes through one buffer. Answers and SSE events are appended synchronously;
  a writer task (:meth:`ServerHttp.serve_writes`) sends what has accumulated with one
  ``send_all``. The SSE events produced between two checkpoints become one HTTP chunk.
  Producers call :meth:`~ServerHttp.wait_writable` so the buffer stays bounded, and
  :meth:`~ServerHttp.flush` before an injected fault cuts the connection.
* **Limits.** A client whose socket takes no batch for ``send_timeout`` seconds is given up:
  the connection is dropped (HTTP has no close frame to send it).
"""

from __future__ import annotations

import contextlib
import http
import math
import socket
import struct
from collections.abc import Callable
from typing import Final

import attrs
import h11
import trio

from .transport import (
    DEFAULT_MAX_BUFFERED,
    RECEIVE_SIZE,
    WRITE_HIGH_WATER,
    TransportClosed,
    peer_name,
)

__all__ = [
    "MAX_HEAD_SIZE",
    "BodyTooLarge",
    "Head",
    "ServerHttp",
    "is_websocket_upgrade",
    "read_head",
    "reason_phrase",
]

#: The largest request head accepted (h11's default; wsproto uses the same).
MAX_HEAD_SIZE: Final = 16 * 1024


class BodyTooLarge(Exception):
    """Internal: the request body is larger than the limit given to :meth:`ServerHttp.read_body`."""


def _new_event() -> trio.Event:
    return trio.Event()


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of ``status`` (empty for a status without one)."""
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


@attrs.frozen
class Head:
    """The first request head of a connection, read before choosing WebSocket or HTTP.

    Attributes:
        request: the request line and headers; ``None`` when the peer left before sending
            a whole head, or sent something that is not HTTP (then ``error`` says what).
        raw: every byte read from the peer so far: the head and whatever followed it.
        connection: the h11 state that parsed it, ready to read the body.
        error: h11's verdict on bytes that are not an HTTP/1.1 request head.
    """

    request: h11.Request | None
    raw: bytes
    connection: h11.Connection
    error: h11.RemoteProtocolError | None = None


async def read_head(stream: trio.abc.Stream) -> Head:
    """Read from ``stream`` until one whole request head has arrived (at most
    :data:`MAX_HEAD_SIZE` bytes of it); bound it with a cancel scope."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
    raw = bytearray()
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            return Head(None, bytes(raw), connection, exc)
        if isinstance(event, h11.Request):
            return Head(event, bytes(raw), connection)
        if event is not h11.NEED_DATA:
            return Head(None, bytes(raw), connection)  # ConnectionClosed: gone before a head
        data = await _receive(stream)
        raw += data
        connection.receive_data(data)  # b"": the peer closed its side


def is_websocket_upgrade(request: h11.Request) -> bool:
    """Whether ``request`` asks to become a WebSocket (``GET`` with ``Upgrade: websocket``)."""
    if request.method != b"GET":
        return False
    return any(
        name == b"upgrade" and b"websocket" in value.lower() for name, value in request.headers
    )


async def _receive(stream: trio.abc.Stream) -> bytes:
    """The next bytes from the peer; ``b""`` at EOF or when the stream broke."""
    try:
        data = await stream.receive_some(RECEIVE_SIZE)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""
    return bytes(data) if not isinstance(data, bytes) else data


_SSE_PREFIXES: dict[str, bytes] = {}


def _sse_prefix(name: str) -> bytes:
    prefix = _SSE_PREFIXES.get(name)
    if prefix is None:
        prefix = _SSE_PREFIXES[name] = b"event: " + name.encode() + b"\ndata: "
    return prefix


@attrs.define(eq=False)
class ServerHttp:
    """The server side of one HTTP/1.1 connection on a trio stream.

    Only the writer task (:meth:`serve_writes`) sends; only one task at a time reads (the
    task serving the requests, or :meth:`wait_gone` while a request is being answered).

    Args:
        connection: the h11 state, as :func:`read_head` left it (the first head read).
        max_buffered: producers wait while more than a quarter of it (at most
            ``WRITE_HIGH_WATER``) waits for the socket.
        send_timeout: seconds a batch of output may wait for the socket before the client
            is given up (the connection is dropped); ``None`` waits for ever.
        on_give_up: called with the reason when the client is given up for not reading.
    """

    _stream: trio.abc.Stream
    _connection: h11.Connection
    max_buffered: int = DEFAULT_MAX_BUFFERED
    send_timeout: float | None = None
    on_give_up: Callable[[str], None] | None = None
    high_water: int = attrs.field(init=False)
    #: The most bytes that waited for the socket at once.
    peak_buffered: int = attrs.field(default=0, init=False)
    #: Why the client was given up for not reading, if it was.
    gave_up: str | None = attrs.field(default=None, init=False)
    # Bytes ready for the socket (heads, chunks); SSE events of the open stream not yet
    # framed as a chunk; the size of the batch the writer is sending.
    _out: bytearray = attrs.field(factory=bytearray, init=False)
    _events: bytearray = attrs.field(factory=bytearray, init=False)
    _sending: int = attrs.field(default=0, init=False)
    _wakeup: trio.Event = attrs.field(factory=_new_event, init=False)
    _progress: trio.Event = attrs.field(factory=_new_event, init=False)
    _writer_running: bool = attrs.field(default=False, init=False)
    _broken: bool = attrs.field(default=False, init=False)
    _frozen: bool = attrs.field(default=False, init=False)
    _streaming: bool = attrs.field(default=False, init=False)
    _stream_closed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.high_water = min(WRITE_HIGH_WATER, max(1, self.max_buffered // 4))

    @property
    def peer(self) -> str:
        """``host:port`` of the client, or ``-`` when the stream is not a socket."""
        return peer_name(self._stream)

    @property
    def buffered(self) -> int:
        """Bytes of output not yet accepted by the stream."""
        return len(self._out) + len(self._events) + self._sending

    @property
    def broken(self) -> bool:
        """Nothing can be sent any more (the peer left, or the connection was dropped)."""
        return self._broken

    # -- reading ------------------------------------------------------------------------------

    async def next_request(self) -> h11.Request | None:
        """The head of the next request, or ``None`` once the client closed the connection.

        Raises:
            h11.RemoteProtocolError: the client sent something that is not HTTP/1.1.
        """
        connection = self._connection
        while True:
            event = connection.next_event()
            if isinstance(event, h11.Request):
                return event
            if event is h11.NEED_DATA:
                connection.receive_data(await _receive(self._stream))
                continue
            return None  # ConnectionClosed (or PAUSED: the client asked to switch protocols)

    async def read_body(self, limit: int) -> bytes:
        """The body of the current request.

        Raises:
            BodyTooLarge: it is longer than ``limit`` bytes (what was read is dropped).
            h11.RemoteProtocolError: the client broke HTTP/1.1, or left mid-body.
        """
        connection = self._connection
        if connection.they_are_waiting_for_100_continue:
            go_on = h11.InformationalResponse(status_code=100, headers=[])
            self._append(connection.send(go_on) or b"")
        body = bytearray()
        while True:
            event = connection.next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise BodyTooLarge
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            elif event is h11.NEED_DATA:
                connection.receive_data(await _receive(self._stream))
            else:  # pragma: no cover - h11 yields only these while a request body is read
                raise h11.RemoteProtocolError(f"unexpected {event!r} in a request body")

    async def wait_gone(self) -> None:
        """Return when the client closes the connection; run it while a request is being
        answered and cancel it after. Bytes of a pipelined request are kept for
        :meth:`next_request` (and reading stops there: they are answered in turn)."""
        data = await _receive(self._stream)
        if data:
            self._connection.receive_data(data)
            await trio.sleep_forever()

    # -- writing ------------------------------------------------------------------------------

    def respond(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        close: bool = False,
        head_only: bool = False,
    ) -> None:
        """Buffer a whole answer: ``status``, ``headers`` (``content-length`` is added), and
        ``body``; ``close``: ask the client to close the connection after it; ``head_only``:
        the answer to a ``HEAD`` request, which has no body (its length is still given)."""
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        connection = self._connection
        self._append_parts(
            connection.send_with_data_passthrough(
                h11.Response(status_code=status, headers=headers, reason=reason_phrase(status))
            )
        )
        if body and not head_only:
            self._append_parts(connection.send_with_data_passthrough(h11.Data(data=body)))
        self._append(connection.send(h11.EndOfMessage()) or b"")

    def open_stream(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Buffer the head of a ``200`` answer whose body is streamed (chunked)."""
        self._append_parts(
            self._connection.send_with_data_passthrough(
                h11.Response(status_code=200, headers=headers, reason=b"OK")
            )
        )
        self._streaming = True

    def send_event(self, name: str, payload: bytes) -> None:
        """Buffer one server-sent event: ``event: <name>``, ``data: <payload>``.

        Raises:
            TransportClosed: the connection is broken or was given up.
        """
        if self._broken or not self._streaming:
            raise TransportClosed
        events = self._events
        if not events:
            self._wakeup.set()
        events += _sse_prefix(name)
        events += payload
        events += b"\n\n"
        pending = self.buffered
        if pending > self.peak_buffered:
            self.peak_buffered = pending

    def send_data(self, data: bytes) -> None:
        """Buffer ``data`` as part of the streamed body, exactly as given (injected faults).

        Raises:
            TransportClosed: the connection is broken or was given up.
        """
        if self._broken or not self._streaming:
            raise TransportClosed
        self._events += data
        self._wakeup.set()

    def end_stream(self) -> None:
        """Buffer the end of the streamed body; the connection can take the next request."""
        self._seal()
        self._streaming = False
        self._append(self._connection.send(h11.EndOfMessage()) or b"")

    def next_cycle(self) -> bool:
        """Get ready for the next request on this connection; ``False``: it must close
        (the client or the server said ``connection: close``, or HTTP/1.0)."""
        connection = self._connection
        if connection.our_state is h11.DONE and connection.their_state is h11.DONE:
            connection.start_next_cycle()
            return True
        return False

    def _seal(self) -> None:
        """Frame the buffered SSE events as one chunk of the body."""
        if self._events:
            data, self._events = bytes(self._events), bytearray()
            self._append_parts(self._connection.send_with_data_passthrough(h11.Data(data=data)))

    def _append_parts(self, parts: list[bytes] | None) -> None:
        for part in parts or ():
            self._append(part)

    def _append(self, data: bytes) -> None:
        if data:
            self._out += data
            self._wakeup.set()
            pending = self.buffered
            if pending > self.peak_buffered:
                self.peak_buffered = pending

    @property
    def must_wait(self) -> bool:
        """More is buffered than the high-water mark: call :meth:`wait_writable`."""
        return self.buffered > self.high_water

    async def wait_writable(self) -> None:
        """Wait until the buffer is below the high-water mark (backpressure).

        Raises:
            TransportClosed: the stream broke, or the client was given up, while waiting.
        """
        while self.buffered > self.high_water:
            await self._wait_progress()

    async def flush(self) -> None:
        """Wait until every byte buffered so far has been handed to the stream.

        Raises:
            TransportClosed: the stream broke before that.
        """
        while self.buffered:
            await self._wait_progress()
        await trio.lowlevel.checkpoint()

    async def _wait_progress(self) -> None:
        if self._broken:
            raise TransportClosed
        if self._writer_running:
            await self._progress.wait()
        else:
            await self._write_directly()

    async def serve_writes(self) -> None:
        """The writer: send everything buffered, one batch at a time, until cancelled."""
        self._writer_running = True
        try:
            while not self._broken:
                if self._frozen or not (self._out or self._events):
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                    continue
                await self._send_batch()
        finally:
            self._writer_running = False
            self._notify()

    async def _write_directly(self) -> None:
        if self._frozen:
            await trio.sleep_forever()
        while (self._out or self._events) and not self._broken:
            await self._send_batch()

    async def _send_batch(self) -> None:
        self._seal()
        batch, self._out = self._out, bytearray()
        self._sending = len(batch)
        timeout = self.send_timeout if self.send_timeout is not None else math.inf
        try:
            with trio.move_on_after(timeout) as scope:
                await self._stream.send_all(batch)
            if scope.cancelled_caught:
                # Cut mid-write: the stream cannot be used any more.
                self._broken = True
                self.gave_up = f"client not reading: no output accepted for {timeout:g} s"
                if self.on_give_up is not None:
                    self.on_give_up(self.gave_up)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._broken = True
        except BaseException:
            self._broken = True  # cancelled halfway: part of the batch may be out
            raise
        finally:
            self._sending = 0
            self._notify()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # -- closing ------------------------------------------------------------------------------

    def freeze(self) -> None:
        """Send nothing more (an injected black hole); what is buffered stays there."""
        self._frozen = True

    async def abort(self) -> None:
        """Drop the TCP connection with a reset (the client sees the stream cut short)."""
        self._broken = True
        sock = getattr(self._stream, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # already gone is fine too
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.close_stream()

    async def close_stream(self) -> None:
        """Close the underlying stream (idempotent; never blocks for long)."""
        self._broken = True
        if not self._stream_closed:
            self._stream_closed = True
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
