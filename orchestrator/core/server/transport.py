"""The server side of one WebSocket, directly on wsproto, built for throughput.

trio-websocket gives every connection a reader task that hands each message over a channel,
and writes every message with its own ``send_all`` through a lock. A response is a dozen
small events produced back to back, so that costs a syscall and several task switches per
event. Here instead:

* **Reading** is done by whoever calls :meth:`ServerWebSocket.receive_message` (one task per
  connection): it reads bytes, feeds wsproto, answers pings and the closing handshake, and
  returns whole messages, enforcing the size limit with close 1009.
* **Writing** goes through one buffer. :meth:`ServerWebSocket.send_text` frames a message
  into it synchronously; a writer task (:meth:`ServerWebSocket.serve_writes`) sends whatever
  has accumulated with one ``send_all``. Events produced without an intervening checkpoint
  therefore leave in one write, and the writer runs as soon as the producer reaches a
  checkpoint. Producers call :meth:`~ServerWebSocket.wait_writable` so the buffer stays
  bounded when the peer reads slowly, and :meth:`~ServerWebSocket.flush` when bytes must be
  on the wire before something else happens (a fault that drops the connection).
* **Limits.** What a connection holds for a client that does not read is bounded: producers
  wait while more than :attr:`~ServerWebSocket.high_water` bytes are buffered (each may add
  one message past it), a client whose socket accepts nothing for ``send_timeout`` seconds
  while output waits, or whose pings alone fill the buffer past ``max_buffered``, is given
  up: the unsent whole messages are dropped, the message on the wire is finished and a close
  frame (1008 and the reason) follows it, for a client that reads again within the close
  grace. The writer hands bytes to a socket with ``socket.send``, which is cancel-safe and
  reports partial progress, so a stall is measured without breaking a frame.

Frames the server sends are unmasked and uncompressed (no extension is ever accepted), so
text frames are framed here directly from the encoded JSON, without a ``str`` round trip;
wsproto frames everything else (handshake answers, pongs, close frames) and parses
everything the client sends.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Final, cast

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CLOSE_NOT_READING",
    "DEFAULT_MAX_BUFFERED",
    "RECEIVE_SIZE",
    "WRITE_HIGH_WATER",
    "ServerWebSocket",
    "TransportClosed",
    "peer_name",
]

RECEIVE_SIZE: Final = 65536
# Producers wait once this many bytes are buffered and not yet handed to the stream.
WRITE_HIGH_WATER: Final = 256 * 1024
DEFAULT_MAX_BUFFERED: Final = 4 * 1024 * 1024
#: The close code for a client given up for not reading (RFC 6455 "policy violation").
CLOSE_NOT_READING: Final = 1008

_OPEN: Final = ConnectionState.OPEN
_TEXT_FIN: Final = 0x81
_HEADER_16: Final = struct.Struct("!BBH")
_HEADER_64: Final = struct.Struct("!BBQ")


class TransportClosed(Exception):
    """Internal: this WebSocket cannot send any more (closing, closed, broken or aborted)."""


def _new_event() -> trio.Event:
    return trio.Event()


def peer_name(stream: trio.abc.Stream) -> str:
    """``host:port`` of the other end of ``stream``, or ``-`` when it is not a socket."""
    if not isinstance(stream, trio.SocketStream):
        return "-"
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "-"
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address) or "-"


def _close_frame(code: int, reason: str) -> bytes:
    """An unmasked close frame (a server's), for when wsproto's state has moved on."""
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    return bytes((0x88, len(payload))) + payload


@attrs.define(eq=False)
class ServerWebSocket:
    """One server-side WebSocket on a trio stream.

    Only the writer task (:meth:`serve_writes`) sends; only one task at a time reads (the
    handshake, then the connection's read loop, then :meth:`aclose`).

    Args:
        max_message_size: incoming message limit, enforced with close 1009.
        max_buffered: outgoing bytes a client may leave waiting through its pings alone;
            producers wait at ``high_water`` (a quarter of it, at most ``WRITE_HIGH_WATER``).
        send_timeout: seconds output may wait without the socket accepting a byte before
            the client is given up; ``None`` waits for ever.
        on_give_up: called with the reason when the client is given up for not reading.
    """

    _stream: trio.abc.Stream
    max_message_size: int
    max_buffered: int = DEFAULT_MAX_BUFFERED
    send_timeout: float | None = None
    on_give_up: Callable[[str], None] | None = None
    high_water: int = attrs.field(init=False)
    #: The close code of the closing handshake (ours or the peer's), 1006 for a lost peer.
    close_code: int | None = attrs.field(default=None, init=False)
    #: Who started the closing handshake: "server", "client", or None (none, or lost).
    closed_by: str | None = attrs.field(default=None, init=False)
    #: Why the client was given up for not reading, if it was.
    gave_up: str | None = attrs.field(default=None, init=False)
    #: The most bytes that waited for the socket at once.
    peak_buffered: int = attrs.field(default=0, init=False)
    #: The HTTP status :meth:`receive_request` answered a bad upgrade request with.
    refused_status: int | None = attrs.field(default=None, init=False)
    _ws: WSConnection = attrs.field(factory=lambda: WSConnection(ConnectionType.SERVER), init=False)
    _out: bytearray = attrs.field(factory=bytearray, init=False)
    _appended: int = attrs.field(default=0, init=False)  # bytes ever put in _out
    _written: int = attrs.field(default=0, init=False)  # bytes the stream accepted
    _wakeup: trio.Event = attrs.field(factory=_new_event, init=False)
    _progress: trio.Event = attrs.field(factory=_new_event, init=False)
    _writer_running: bool = attrs.field(default=False, init=False)
    # Messages may be sent: accepted, no close frame either way, not broken. A plain flag,
    # because send_text runs for every event.
    _open: bool = attrs.field(default=False, init=False)
    _broken: bool = attrs.field(default=False, init=False)
    _frozen: bool = attrs.field(default=False, init=False)
    _readable: bool = attrs.field(default=True, init=False)
    _stream_closed: bool = attrs.field(default=False, init=False)
    _incoming: deque[str | bytes] = attrs.field(factory=deque, init=False)
    _parts: list[str | bytes] = attrs.field(factory=list, init=False)
    _message_size: int = attrs.field(default=0, init=False)
    _socket: trio.socket.SocketType | None = attrs.field(default=None, init=False)
    # The batch the writer is sending: its first byte is at _batch_start (in _appended
    # terms), _batch_sent of it went out. Frames start at _frames_from (after the HTTP answer).
    _batch: bytearray = attrs.field(factory=bytearray, init=False)
    _batch_start: int = attrs.field(default=0, init=False)
    _batch_sent: int = attrs.field(default=0, init=False)
    _frames_from: int = attrs.field(default=-1, init=False)  # -1: not accepted yet
    _progress_at: float = attrs.field(default=0.0, init=False)
    _give_up_reason: str | None = attrs.field(default=None, init=False)
    _send_scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _close_end: int | None = attrs.field(default=None, init=False)  # after our close frame

    def __attrs_post_init__(self) -> None:
        self.high_water = min(WRITE_HIGH_WATER, max(1, self.max_buffered // 4))
        if isinstance(self._stream, trio.SocketStream):
            self._socket = self._stream.socket

    @property
    def peer(self) -> str:
        """``host:port`` of the client, or ``-`` when the stream is not a socket."""
        return peer_name(self._stream)

    @property
    def buffered(self) -> int:
        """Bytes framed for the client and not yet accepted by the stream."""
        return self._appended - self._written

    # -- handshake ----------------------------------------------------------------------------

    async def receive_request(self, data: bytes = b"") -> Request | None:
        """Read the upgrade request, starting with ``data`` (bytes already read from the
        stream: the server reads a request's head before it knows it is an upgrade).

        Returns:
            The request, or ``None`` when the peer left or sent something that is not a
            WebSocket upgrade (answered with wsproto's HTTP error, e.g. 400).
        """
        while True:
            if not data:
                for event in self._ws.events():
                    if isinstance(event, Request):
                        return event
                data = await self._receive()
                if not data:
                    return None
            try:
                self._ws.receive_data(data)
            except RemoteProtocolError as exc:
                if isinstance(exc.event_hint, RejectConnection):
                    self.refused_status = exc.event_hint.status_code
                    with contextlib.suppress(LocalProtocolError):
                        self._append(self._ws.send(exc.event_hint))
                        await self.flush()
                return None
            data = b""

    def accept(self) -> None:
        """Answer the upgrade with 101: no subprotocol, no extension (no compression)."""
        self._append(self._ws.send(AcceptConnection()))
        self._frames_from = self._appended
        self._open = True

    async def reject(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Refuse the upgrade with an HTTP ``status``, ``headers`` and ``body``, then flush."""
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        self._append(
            self._ws.send(RejectConnection(status_code=status, headers=headers, has_body=True))
        )
        self._append(self._ws.send(RejectData(data=body)))
        await self.flush()

    # -- sending ------------------------------------------------------------------------------

    def send_text(self, payload: bytes) -> None:
        """Buffer one text message (``payload`` is UTF-8); the writer sends it soon.

        Raises:
            TransportClosed: the connection is closing, closed or broken.
        """
        if not self._open:
            raise TransportClosed
        out = self._out
        if not out:
            self._wakeup.set()
        size = len(payload)
        if size < 126:
            out.append(_TEXT_FIN)
            out.append(size)
            self._appended += size + 2
        elif size < 65536:
            out += _HEADER_16.pack(_TEXT_FIN, 126, size)
            self._appended += size + 4
        else:
            out += _HEADER_64.pack(_TEXT_FIN, 127, size)
            self._appended += size + 10
        out += payload
        pending = self._appended - self._written
        if pending > self.peak_buffered:
            self.peak_buffered = pending

    def _append(self, data: bytes) -> None:
        if data:
            if not self._out:
                self._wakeup.set()
            self._out += data
            self._appended += len(data)
            pending = self._appended - self._written
            if pending > self.peak_buffered:
                self.peak_buffered = pending

    @property
    def must_wait(self) -> bool:
        """More is buffered than the high-water mark: call :meth:`wait_writable`."""
        return self._appended - self._written > self.high_water

    async def wait_writable(self) -> None:
        """Wait until the buffer is below the high-water mark (backpressure).

        Raises:
            TransportClosed: the stream broke, or the client was given up, while waiting.
        """
        while self._appended - self._written > self.high_water:
            if self._broken or self.gave_up is not None:
                raise TransportClosed
            if not self._writer_running:
                await self._write_directly()
                continue
            await self._progress.wait()

    async def flush(self) -> None:
        """Wait until every byte buffered so far has been handed to the stream.

        Raises:
            TransportClosed: the stream broke before that.
        """
        target = self._appended
        # A client given up for not reading loses what was buffered: _appended shrinks.
        while self._written < min(target, self._appended):
            if self._broken:
                raise TransportClosed
            if not self._writer_running:
                await self._write_directly()
                continue
            await self._progress.wait()
        await trio.lowlevel.checkpoint()

    async def serve_writes(self) -> None:
        """The writer: send everything buffered, one batch at a time, until cancelled.

        Run it in a scope that outside cancellation does not reach, so the closing handshake
        can still be written while the connection shuts down; cancel it last.
        """
        self._writer_running = True
        try:
            while not self._broken:
                if self._give_up_reason is not None:
                    self._close_for_not_reading(sending=False)
                    continue
                if not self._out or self._frozen:
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                    continue
                await self._send_batch()
        finally:
            self._writer_running = False
            self._notify()

    async def _write_directly(self) -> None:
        while self._out and not self._broken and not self._frozen:
            await self._send_batch()
        if self._frozen:
            await trio.sleep_forever()

    async def _send_batch(self) -> None:
        """Send what is buffered: the writer's one batch, until it is out or given up."""
        self._batch, self._out = self._out, bytearray()
        self._batch_start = self._written
        self._batch_sent = 0
        self._progress_at = trio.current_time()
        try:
            while self._batch_sent < len(self._batch):
                if self._give_up_reason is not None:
                    self._close_for_not_reading(sending=True)
                    if self._broken or self._batch_sent == len(self._batch):
                        return
                timeout = self.send_timeout
                deadline = (
                    self._progress_at + timeout
                    if timeout is not None and self.gave_up is None
                    else math.inf
                )
                with trio.CancelScope(deadline=deadline) as scope:
                    self._send_scope = scope
                    sent = await self._send_some()
                self._send_scope = None
                if scope.cancelled_caught:
                    if self._give_up_reason is None:
                        self._give_up_reason = (
                            f"client not reading: no output accepted for {timeout:g} s"
                        )
                    if self._broken:  # a stream other than a socket, cut mid-write
                        self.gave_up, self._give_up_reason = self._give_up_reason, None
                        if self.on_give_up is not None:
                            self.on_give_up(self.gave_up)
                        return
                    continue
                self._batch_sent += sent
                self._written += sent
                self._progress_at = trio.current_time()
                self._notify()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._broken = True
            self._open = False
        except BaseException:
            # Cancelled halfway: part of a frame may be out, nothing may follow it.
            self._broken = True
            self._open = False
            raise
        finally:
            self._send_scope = None
            self._batch = bytearray()
            self._notify()

    async def _send_some(self) -> int:
        """Hand the rest of the batch to the stream; how many bytes it took.

        On a socket, ``send`` takes what fits and, if cancelled, has sent nothing: a stall
        can be given up without cutting a frame. Other streams (in-memory ones in tests)
        take the whole rest with ``send_all``; cancelling that breaks the stream.
        """
        sock = self._socket
        with memoryview(self._batch) as view, view[self._batch_sent :] as rest:
            if sock is not None:
                return await sock.send(rest)
            try:
                await self._stream.send_all(rest)
            except trio.Cancelled:
                self._broken = True
                raise
            return len(rest)

    def give_up(self, reason: str) -> None:
        """Stop sending to a client that does not read: drop the unsent whole messages,
        finish the one on the wire, then a close frame (1008, ``reason``). Idempotent.

        The writer carries it out (it owns the batch); a send blocked on the socket is
        interrupted, which loses nothing.
        """
        if self.gave_up is not None or self._give_up_reason is not None or self._broken:
            return
        self._give_up_reason = reason
        self._open = False
        scope = self._send_scope
        if scope is not None and self._socket is not None:
            scope.cancel()
        self._wakeup.set()

    def _close_for_not_reading(self, *, sending: bool) -> None:
        """The writer's half of :meth:`give_up`, between two sends.

        Whole messages not yet on the wire are dropped; what is on the wire (the rest of the
        frame being sent, or an HTTP answer not yet sent) is kept, and our close frame
        follows it. ``sending``: the writer is in :meth:`_send_batch` and the close frame
        joins its batch; else it goes through ``_out`` like any message.
        """
        reason = self._give_up_reason or "client not reading"
        self._give_up_reason = None
        self.gave_up = reason
        self._open = False
        if self._frames_from < 0:
            self._broken = True  # still in the handshake: no frame can be sent; just stop
        else:
            if sending:
                del self._batch[self._frame_end_after(self._batch_sent) :]
                kept_until = self._batch_start + len(self._batch)
                self._out = bytearray()
            else:
                # Nothing is on the wire; only a 101 not yet sent must go before a frame.
                del self._out[max(0, self._frames_from - self._written) :]
                kept_until = self._written + len(self._out)
            close = b""
            if self._ws.state is _OPEN:
                close = self._ws.send(CloseConnection(code=CLOSE_NOT_READING, reason=reason))
                self.close_code = CLOSE_NOT_READING
                self.closed_by = "server"
            elif self._close_end is not None and self._close_end > kept_until:
                # Our close frame (or answer to the client's) was among the dropped bytes.
                close = _close_frame(CLOSE_NOT_READING, reason)
            if sending:
                self._batch += close
            else:
                self._out += close
            self._appended = kept_until + len(close)
            if close:
                self._close_end = self._appended
        if self.on_give_up is not None:
            self.on_give_up(reason)
        self._notify()

    def _frame_end_after(self, offset: int) -> int:
        """The end of the batch's frame that byte ``offset`` belongs to (``offset`` itself
        when a frame starts there). Server frames are unmasked: a header is 2, 4 or 10
        bytes. Bytes before ``_frames_from`` are the HTTP answer, kept whole."""
        batch = self._batch
        position = max(0, self._frames_from - self._batch_start)
        while position < offset:
            length = batch[position + 1] & 0x7F
            header = 2
            if length == 126:
                length, header = int.from_bytes(batch[position + 2 : position + 4], "big"), 4
            elif length == 127:
                length, header = int.from_bytes(batch[position + 2 : position + 10], "big"), 10
            position += header + length
        return min(position, len(batch))

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # -- receiving ----------------------------------------------------------------------------

    async def receive_message(self) -> str | bytes | None:
        """The next whole message from the client.

        Pings are answered and the closing handshake is completed on the way.

        Returns:
            The message (``str`` for text, ``bytes`` for binary frames), or ``None`` once
            the connection is closed: closing handshake done, peer gone, message over the
            size limit (close 1009 sent) or protocol violation (its close code sent).
        """
        while not self._incoming:
            if not self._readable:
                return None
            data = await self._receive()
            if not data:
                # Gone without a close frame: there is nobody to send ours to.
                self._readable = False
                self._open = False
                if self.close_code is None:
                    self.close_code = CloseReason.ABNORMAL_CLOSURE
                return None
            if self._frozen:
                continue  # a black hole reads and forgets
            self._ws.receive_data(data)
            self._process_events()
            if self._give_up_reason is not None or self.gave_up is not None:
                return None
        return self._incoming.popleft()

    def _process_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                self._message_size += len(event.data)
                if self._message_size > self.max_message_size:
                    self.start_close(CloseReason.MESSAGE_TOO_BIG, "message too big")
                    self._readable = False
                    return
                data = event.data if isinstance(event.data, str) else bytes(event.data)
                if not event.message_finished:
                    self._parts.append(data)
                    continue
                if self._parts:
                    self._parts.append(data)
                    joined = (
                        "".join(self._parts)  # type: ignore[arg-type]
                        if isinstance(data, str)
                        else b"".join(self._parts)  # type: ignore[arg-type]
                    )
                    self._parts.clear()
                    self._incoming.append(joined)
                else:
                    self._incoming.append(data)
                self._message_size = 0
            elif isinstance(event, Ping):
                if self._ws.state is _OPEN:  # no pong after a close frame
                    self._append(self._ws.send(event.response()))
                    # Pongs are the only output nobody waits for: a client that pings and
                    # never reads would otherwise grow the buffer without end.
                    if self._appended - self._written > self.max_buffered:
                        self.give_up(
                            f"client not reading: over {self.max_buffered} bytes of output waiting"
                        )
                        return
            elif isinstance(event, CloseConnection):
                self._open = False
                if self.close_code is None:
                    self.close_code = event.code
                    self.closed_by = "client"
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._append(self._ws.send(event.response()))
                    self._close_end = self._appended
                elif self._ws.state is _OPEN:
                    # wsproto reports a protocol violation (bad UTF-8, bad frame) as a close
                    # it made up: send it to the peer with that code.
                    self.start_close(event.code, event.reason)
                self._readable = False
                return

    async def _receive(self) -> bytes:
        """The next bytes from the peer; ``b""`` at EOF or when the stream broke."""
        try:
            data = await self._stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
        # Memory streams return a bytearray, which wsproto takes as well.
        return cast("bytes", data)

    # -- closing ------------------------------------------------------------------------------

    def start_close(self, code: int, reason: str | None = None) -> None:
        """Buffer our close frame (1005: a frame without a code); nothing is sent after it.

        A client given up for not reading gets its 1008 frame from the writer instead.
        """
        self._open = False
        if self._give_up_reason is not None or self.gave_up is not None:
            return
        if self.close_code == CloseReason.ABNORMAL_CLOSURE:
            return  # the peer left without a close frame
        if self._ws.state is _OPEN and not self._broken:
            self.close_code = code
            if code == CloseReason.NO_STATUS_RCVD:
                # wsproto recognises the enum member only, and a reason needs a code.
                code, reason = CloseReason.NO_STATUS_RCVD, None
            self.closed_by = "server"
            self._append(self._ws.send(CloseConnection(code=code, reason=reason)))
            self._close_end = self._appended

    def freeze(self) -> None:
        """Become a black hole: send nothing more, read and discard until the peer leaves."""
        self._frozen = True

    async def abort(self) -> None:
        """Drop the TCP connection without a close frame (the peer sees 1006)."""
        self._broken = True
        self._open = False
        sock = getattr(self._stream, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # already gone is fine too
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.close_stream()

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the WebSocket: our close frame (unless one went out), flush, wait for the
        peer's close frame, then close the stream. Bound it with a cancel scope; it closes
        the stream even when cancelled. Call it when nothing else reads any more.
        """
        try:
            if not self._broken and not self._frozen:
                if self._ws.connection is not None:  # the upgrade was accepted
                    self.start_close(code, reason)
                await self.flush()
                while self._ws.state is ConnectionState.LOCAL_CLOSING and self._readable:
                    data = await self._receive()
                    if not data:
                        break
                    self._ws.receive_data(data)
                    self._process_events()
        except TransportClosed:
            pass
        finally:
            await self.close_stream()

    async def close_stream(self) -> None:
        """Close the underlying stream (idempotent; never blocks for long)."""
        if not self._stream_closed:
            self._stream_closed = True
            self._readable = False
            self._open = False
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
