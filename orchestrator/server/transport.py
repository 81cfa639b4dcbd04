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

Frames the server sends are unmasked and uncompressed (no extension is ever accepted), so
text frames are framed here directly from the encoded JSON, without a ``str`` round trip;
wsproto frames everything else (handshake answers, pongs, close frames) and parses
everything the client sends.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections import deque
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

__all__ = ["RECEIVE_SIZE", "WRITE_HIGH_WATER", "ServerWebSocket", "TransportClosed"]

RECEIVE_SIZE: Final = 65536
# Producers wait once this many bytes are buffered and not yet handed to the stream.
WRITE_HIGH_WATER: Final = 256 * 1024

_OPEN: Final = ConnectionState.OPEN
_TEXT_FIN: Final = 0x81
_HEADER_16: Final = struct.Struct("!BBH")
_HEADER_64: Final = struct.Struct("!BBQ")


class TransportClosed(Exception):
    """Internal: this WebSocket cannot send any more (closing, closed, broken or aborted)."""


def _new_event() -> trio.Event:
    return trio.Event()


@attrs.define(eq=False)
class ServerWebSocket:
    """One server-side WebSocket on a trio stream.

    Only the writer task (:meth:`serve_writes`) calls ``send_all``; only one task at a time
    reads (the handshake, then the connection's read loop, then :meth:`aclose`).
    """

    _stream: trio.abc.Stream
    max_message_size: int
    high_water: int = WRITE_HIGH_WATER
    #: The close code of the closing handshake (ours or the peer's), 1006 for a lost peer.
    close_code: int | None = attrs.field(default=None, init=False)
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

    # -- handshake ----------------------------------------------------------------------------

    async def receive_request(self) -> Request | None:
        """Read the upgrade request.

        Returns:
            The request, or ``None`` when the peer left or sent something that is not a
            WebSocket upgrade (answered with wsproto's HTTP error, e.g. 400).
        """
        while True:
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
                    with contextlib.suppress(LocalProtocolError):
                        self._append(self._ws.send(exc.event_hint))
                        await self.flush()
                return None

    def accept(self) -> None:
        """Answer the upgrade with 101: no subprotocol, no extension (no compression)."""
        self._append(self._ws.send(AcceptConnection()))
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

    def _append(self, data: bytes) -> None:
        if data:
            if not self._out:
                self._wakeup.set()
            self._out += data
            self._appended += len(data)

    @property
    def must_wait(self) -> bool:
        """More is buffered than the high-water mark: call :meth:`wait_writable`."""
        return len(self._out) > self.high_water

    async def wait_writable(self) -> None:
        """Wait until the buffer is below the high-water mark (backpressure).

        Raises:
            TransportClosed: the stream broke while waiting.
        """
        while len(self._out) > self.high_water:
            if self._broken:
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
        while self._written < target:
            if self._broken:
                raise TransportClosed
            if not self._writer_running:
                await self._write_directly()
                continue
            await self._progress.wait()
        await trio.lowlevel.checkpoint()

    async def serve_writes(self) -> None:
        """The writer: send everything buffered, one ``send_all`` per batch, until cancelled.

        Run it in a scope that outside cancellation does not reach, so the closing handshake
        can still be written while the connection shuts down; cancel it last.
        """
        self._writer_running = True
        try:
            while not self._broken:
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
        data = self._out
        self._out = bytearray()
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._broken = True
            self._open = False
        except BaseException:
            # Cancelled halfway: part of a frame may be out, nothing may follow it.
            self._broken = True
            self._open = False
            raise
        else:
            self._written += len(data)
        finally:
            self._notify()

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
                self._readable = False
                if self.close_code is None:
                    self.close_code = CloseReason.ABNORMAL_CLOSURE
                return None
            if self._frozen:
                continue  # a black hole reads and forgets
            self._ws.receive_data(data)
            self._process_events()
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
            elif isinstance(event, CloseConnection):
                self._open = False
                if self.close_code is None:
                    self.close_code = event.code
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._append(self._ws.send(event.response()))
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
        """Buffer our close frame (1005: a frame without a code); nothing is sent after it."""
        self._open = False
        if self._ws.state is _OPEN and not self._broken:
            self.close_code = code
            if code == CloseReason.NO_STATUS_RCVD:
                # wsproto recognises the enum member only, and a reason needs a code.
                code, reason = CloseReason.NO_STATUS_RCVD, None
            self._append(self._ws.send(CloseConnection(code=code, reason=reason)))

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
