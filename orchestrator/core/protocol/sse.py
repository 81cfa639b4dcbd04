"""Server-sent events, decoded from bytes without I/O (the HTTP transport's event stream).

Over HTTP a response's events arrive as an ``text/event-stream`` body: each event is one or
more ``data:`` lines ended by a blank line (the WHATWG HTML standard, "server-sent
events"). :class:`SseDecoder` takes the body's bytes as they arrive, cut anywhere, and
returns the data of every complete event, which the codec then decodes exactly as it
decodes a WebSocket message. Only ``data`` matters here: the ``event`` field repeats the
JSON's ``type``, and ``id``/``retry`` serve browsers that reconnect, which a turn never
does. Comments (``:``) and unknown fields are ignored, as the standard says.

Lines end in ``\\n``, ``\\r\\n`` or ``\\r``; a ``\\r`` that ends a chunk ends its line at once,
and a ``\\n`` that begins the next chunk is then the rest of that line ending. An event
still open when the body ends is dropped (the standard's rule: only a blank line
dispatches). One event may not grow past ``max_event_size`` bytes: a peer that never ends
its event cannot exhaust memory.
"""

from __future__ import annotations

from typing import Final

from orchestrator.errors import RemoteProtocolError

__all__ = ["SseDecoder"]

_BOM: Final = b"\xef\xbb\xbf"


class SseDecoder:
    """Bytes in, the data of each complete event out. Create one per event stream."""

    __slots__ = ("_data", "_first", "_max", "_pending", "_size", "_skip_lf")

    def __init__(self, max_event_size: int = 64 * 1024 * 1024) -> None:
        self._max = max_event_size
        self._pending = b""  # an unfinished line
        self._data: list[bytes] = []  # the data lines of the event being read
        self._size = 0
        self._first = True
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event that ``chunk`` completes (possibly none).

        Raises:
            RemoteProtocolError: one event grew past ``max_event_size``.
        """
        if self._first and chunk:
            self._first = False
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        buffer = self._pending + chunk if self._pending else chunk
        events: list[bytes] = []
        start = 0
        size = len(buffer)
        while start < size:
            lf = buffer.find(b"\n", start)
            cr = buffer.find(b"\r", start, lf if lf != -1 else size)
            if cr != -1:
                if cr == size - 1:
                    self._skip_lf = True  # its \n, if any, begins the next chunk
                end, after = cr, cr + 2 if buffer[cr + 1 : cr + 2] == b"\n" else cr + 1
            elif lf != -1:
                end, after = lf, lf + 1
            else:
                break
            self._line(buffer[start:end], events)
            start = after
        self._pending = buffer[start:]
        if self._size + len(self._pending) > self._max:
            raise RemoteProtocolError(f"a server-sent event exceeds {self._max} bytes")
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data = []
                self._size = 0
            return
        name, colon, value = line.partition(b":")
        if name != b"data":
            return  # a comment (empty name), event, id, retry or an unknown field
        if colon and value.startswith(b" "):
            value = value[1:]
        self._size += len(value) + 1
        if self._size > self._max:
            raise RemoteProtocolError(f"a server-sent event exceeds {self._max} bytes")
        self._data.append(value)
