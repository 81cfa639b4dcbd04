"""One agent's connection to ``/v1/responses``: one sequential socket, rotated and recovered.

:func:`open_connection` yields a :class:`Connection` that owns at most one socket in use
(plus, briefly, a warm standby during a planned rotation). :meth:`Connection.run_turn` sends
one ``response.create`` built by the agent's :class:`~orchestrator.core.session.Session`, streams
the events to an optional observer as they arrive, and returns the assembled response, having
committed it to the session. Whatever happens to the socket meanwhile is handled here
(docs/protocol.md#how-the-client-uses-it, docs/recovery.md#the-matrix):

* **Planned rotation, make-before-break.** Once a socket is ``max_age - margin - lead`` old,
  a background task opens a new socket and warms it with ``generate: false`` carrying the
  transcript. The next turn boundary switches to it and continues from the warm-up's id, so
  no turn is cut and the first turn on the new socket pays no extra latency. From
  ``max_age - margin`` on, the old socket is never used for a new turn.
* **Recovery.** What to do after a failed attempt is decided by the sans-I/O
  :class:`~orchestrator.core.protocol.recovery.TurnRecovery`; this module only carries it out.
  ``previous_response_not_found`` replays the transcript as a new chain on the same socket,
  once. ``websocket_connection_limit_reached``, recoverable close codes, network errors,
  missed pings and the idle deadline between events drop the socket and re-issue the turn
  from a full replay on a new one, after a jittered exponential backoff with bounded
  attempts. Partial output of a lost turn is discarded: only a terminal event commits.
* **Failing clearly.** 401/403 at the handshake raise :class:`AuthenticationError` at once;
  1009 and other final close codes raise :class:`ConnectionLost` naming the code; errors the
  server reports raise :class:`ServerError` with their code (``server_error`` and rate limits
  are retried first, honouring ``retry-after``).
* **Cancellation** of a turn discards the socket and leaves the session as it was.
* **Over HTTP.** With ``transport="http"`` each turn is one ``POST /v1/responses`` read as
  server-sent events (:mod:`orchestrator.core.http_transport`); with ``"auto"`` (the default
  for any endpoint but the OpenAI service) the connection starts on WebSocket and, when the
  endpoint shows it has no WebSocket mode (426, 404 or 405 to the upgrade...), goes on over
  HTTP for the rest of its life, without losing the turn. The same recovery policy decides
  for both.

Where to connect (the endpoint, the key, the transport to start with) is resolved before
any socket opens, in :mod:`orchestrator.core.endpoint`; the names are re-exported here.
"""

from __future__ import annotations

import math
import os
import random
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from loguru import logger
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from orchestrator.core.endpoint import (
    DEFAULT_URL as DEFAULT_URL,
    SERVICE_HOST as SERVICE_HOST,
    Connector as Connector,
    Endpoint as Endpoint,
    resolve_api_key as resolve_api_key,
    resolve_endpoint as resolve_endpoint,
    resolve_transport as resolve_transport,
    tcp_connector,
)
from orchestrator.core.failpoints import crash_point
from orchestrator.core.http_transport import HttpTransport, http_url, request_error
from orchestrator.core.logging import Secret
from orchestrator.core.observe import (
    ConnectionClosed as ConnectionClosedEvent,
    ConnectionFailed,
    ConnectionOpened,
    ConnectionReconnecting,
    ConnectionRotated,
    EventBus,
    RuntimeEvent,
    TranscriptReplayed,
    TransportFellBack,
    TurnFinished,
    TurnRetried,
    TurnStarted,
    WarmupFinished,
    capped,
)
from orchestrator.core.protocol.codec import decode_server_event, encode_text
from orchestrator.core.protocol.lifecycle import ConnectionLifecycle
from orchestrator.core.protocol.recovery import (
    Backoff,
    Fail,
    Failed,
    Lost,
    Outcome,
    RecoveryPolicy,
    Refused,
    Rejected,
    Retry,
    TurnRecovery,
    Unreachable,
)
from orchestrator.core.protocol.turn import RequestError, Response, TurnAssembler
from orchestrator.core.rules import TRANSPORTS, Transport, retry_after_seconds
from orchestrator.core.session import Session
from orchestrator.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLost,
    HandshakeRejected,
    RemoteProtocolError,
    ServerError,
    TurnFailed,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from orchestrator.core.protocol.events import Item, ResponseCreate, ServerEvent, UnknownEvent
    from orchestrator.core.session import TurnRequest

__all__ = [
    "DEFAULT_URL",
    "AttemptAbandoned",
    "Connection",
    "ConnectionSettings",
    "ConnectionStatistics",
    "Connector",
    "Endpoint",
    "Transport",
    "open_connection",
    "resolve_api_key",
    "resolve_endpoint",
    "resolve_transport",
]

USER_AGENT: Final = "orchestrator/0.1 (trio)"

# Backoff jitter of connections given no rng of their own. One generator for all: a
# Mersenne Twister holds 2.5 KB of state, a tenth of an idle agent's memory.
_JITTER: Final = random.Random()


def _masked_close_frame(code: int) -> bytes:
    """A client close frame (RFC 6455 5.5.1): FIN + opcode 8, masked 2-byte payload."""
    mask = os.urandom(4)
    payload = code.to_bytes(2, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x88, 0x80 | len(payload)]) + mask + masked


@attrs.frozen
class ConnectionSettings:
    """Explicit transport settings of an agent's connection.

    Args:
        max_message_size: largest server message accepted (at least 64 MiB by default: a
            ``response.completed`` can be large; trio-websocket's 1 MiB default is too small).
        message_queue_size: messages buffered between trio-websocket's reader and the turn.
        connect_timeout: seconds for TCP, TLS and the WebSocket handshake together.
        idle_timeout: longest silence between two events of a turn before the socket is
            considered dead (the turn is then re-issued on a new socket).
        ping_interval: seconds between keepalive pings; ``None`` disables them.
        ping_timeout: a pong must arrive within this many seconds.
        max_age: the server's connection limit (3600 s on the service).
        rotation_margin: never start a turn on a socket older than ``max_age - margin``;
            ``None`` disables planned rotation. Make it longer than your longest turn.
        warmup_lead: how long before that point the standby socket is prepared.
        warmup: warm the new socket with ``generate: false`` (else the first turn replays).
        max_attempts: connection attempts and turn retries allowed per turn.
        backoff_initial, backoff_max: the jittered exponential backoff, in seconds.
        close_timeout: how long a graceful close may take before the socket is dropped.
        allow_insecure: allow ``ws://`` to a host that is not loopback.
        transport: ``websocket``, ``http`` (one ``POST`` per turn, events as SSE), or
            ``auto`` (WebSocket, going on over HTTP when the endpoint has no WebSocket
            mode); ``None`` means ``websocket`` for the OpenAI service and ``auto`` for any
            other endpoint (see :func:`resolve_transport`).
    """

    max_message_size: int = 64 * 1024 * 1024
    message_queue_size: int = 8
    receive_buffer_size: int = 64 * 1024
    connect_timeout: float = 15.0
    idle_timeout: float = 300.0
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    max_age: float = 3600.0
    rotation_margin: float | None = 300.0
    warmup_lead: float = 30.0
    warmup: bool = True
    max_attempts: int = 6
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    close_timeout: float = 2.0
    allow_insecure: bool = False
    organization: str | None = None
    project: str | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()
    transport: Transport | None = None

    def __attrs_post_init__(self) -> None:
        if self.transport is not None and self.transport not in TRANSPORTS:
            raise ConfigurationError(
                f"transport must be one of websocket, http, auto; got {self.transport!r}",
                code="config.transport",
            )
        if not 1024 <= self.max_message_size <= 2**31:
            raise ConfigurationError(
                f"max_message_size must be in 1 KiB..2 GiB, got {self.max_message_size}"
            )
        for name in ("connect_timeout", "idle_timeout", "ping_timeout", "max_age"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be > 0 seconds")
        if self.rotation_margin is not None and not 0 <= self.rotation_margin < self.max_age:
            raise ConfigurationError("rotation_margin must be in [0, max_age)")
        if self.max_attempts < 1 or self.message_queue_size < 1:
            raise ConfigurationError("max_attempts and message_queue_size must be >= 1")


@attrs.frozen
class AttemptAbandoned:
    """Given to a turn's ``on_event`` observer when the events so far must be discarded.

    The turn goes on (on a new socket, or as a replay); its earlier partial output is void.
    """

    reason: str


@attrs.frozen
class ConnectionStatistics:
    """A snapshot of one agent connection."""

    agent: str
    socket: int | None
    age: float
    turns: int
    sockets_opened: int
    rotations: int
    warmups: int
    reconnects: int
    replays: int
    retries: int
    failures: int
    bytes_sent: int
    bytes_received: int
    events_received: int
    transport: str = "websocket"
    http_requests: int = 0


@attrs.define(eq=False)
class _Socket:
    """One WebSocket and what we know about it."""

    id: int
    ws: WebSocketConnection
    stream: trio.abc.Stream
    lifecycle: ConnectionLifecycle
    done: trio.Event = attrs.field(factory=trio.Event)
    dead_reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.dead_reason is None and self.ws.closed is None and not self.done.is_set()


@attrs.define(eq=False)
class _Standby:
    socket: _Socket
    session: Session | None
    response_id: str | None
    covers: int


class _FellBack(Exception):
    """Internal: the endpoint has no WebSocket mode; the turn goes on over HTTP."""


class _Lost(Exception):
    """Internal: the socket broke during a turn; carries the ConnectionLost to report.

    ``sent`` is false when the socket was already closed before the create went out: a
    stale socket, not a failed turn.
    """

    def __init__(self, error: ConnectionLost, *, sent: bool = True) -> None:
        super().__init__(str(error))
        self.error = error
        self.sent = sent


@attrs.define(eq=False)
class Connection:
    """An agent's connection. Create it with :func:`open_connection`."""

    agent: str
    endpoint: Endpoint
    settings: ConnectionSettings
    _api_key: Secret = attrs.field(repr=False, alias="api_key")
    _connector: Connector = attrs.field(repr=False, alias="connector")
    _nursery: trio.Nursery = attrs.field(repr=False, alias="nursery")
    _events: EventBus | None = attrs.field(default=None, repr=False, alias="events")
    _rng: random.Random = attrs.field(default=_JITTER, repr=False, alias="rng")
    # How turns travel (resolved: never None) and, for HTTP, the streams to use instead of
    # TCP/TLS (an in-memory embedded server); None lets httpx2 connect.
    transport: Transport = "websocket"
    _http_connector: Connector | None = attrs.field(
        default=None, repr=False, alias="http_connector"
    )
    _http: HttpTransport | None = attrs.field(default=None, init=False, repr=False)
    _current: _Socket | None = attrs.field(default=None, init=False, repr=False)
    _standby: _Standby | None = attrs.field(default=None, init=False, repr=False)
    _standby_ready: trio.Event | None = attrs.field(default=None, init=False, repr=False)
    _session: Session | None = attrs.field(default=None, init=False, repr=False)
    _busy: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _timer_scope: trio.CancelScope | None = attrs.field(default=None, init=False, repr=False)
    _socket_count: int = attrs.field(default=0, init=False)
    _turns: int = attrs.field(default=0, init=False)
    _rotations: int = attrs.field(default=0, init=False)
    _warmups: int = attrs.field(default=0, init=False)
    _reconnects: int = attrs.field(default=0, init=False)
    _replays: int = attrs.field(default=0, init=False)
    _retries: int = attrs.field(default=0, init=False)
    _failures: int = attrs.field(default=0, init=False)
    _bytes_sent: int = attrs.field(default=0, init=False)
    _bytes_received: int = attrs.field(default=0, init=False)
    _events_received: int = attrs.field(default=0, init=False)
    _log: Any = attrs.field(init=False, repr=False)
    _policy: RecoveryPolicy = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._log = logger.bind(agent=self.agent)
        settings = self.settings
        self._policy = RecoveryPolicy(
            settings.max_attempts,
            settings.backoff_initial,
            settings.backoff_max,
            fallback=self.transport == "auto",
        )
        if self.transport == "http":
            self._use_http()

    # -- public API ---------------------------------------------------------------------------

    async def run_turn(
        self,
        session: Session,
        new_items: Sequence[Item],
        *,
        on_event: Callable[[ServerEvent | UnknownEvent | AttemptAbandoned], object] | None = None,
    ) -> Response:
        """Run one turn: send the new items, stream the events, commit and return the response.

        Args:
            session: the conversation; it is changed only when the turn succeeds.
            new_items: what this turn adds (a user message, function call outputs...).
            on_event: called synchronously with each server event as it arrives, and with
                :class:`AttemptAbandoned` when partial output must be discarded.

        Returns:
            The completed (or incomplete) response, already committed to ``session``.

        Raises:
            trio.BusyResourceError: another turn is in flight on this connection (a bug).
            AuthenticationError: the server refused the API key (never retried).
            ConnectionLost: the socket closed with a final code (1009, 1008...).
            ServerError: the server reported an error that retrying cannot fix.
            RemoteProtocolError: the server sent a malformed or out-of-order stream.
            TurnFailed: the bounded reconnect/retry attempts ran out.
        """
        if self._busy:
            raise trio.BusyResourceError(f"turn in flight on {self.agent}")
        if self._closed:
            raise trio.ClosedResourceError(f"connection of {self.agent} is closed")
        self._busy = True
        self._session = session
        try:
            return await self._run_turn(session, tuple(new_items), on_event)
        finally:
            self._busy = False
            standby = self._standby
            if standby is not None and standby.socket.usable and not self._closed:
                # A standby finished warming during the turn: switch now, between turns.
                self._switch(session, standby)

    async def warm_up(self, session: Session) -> str:
        """Prepare the current socket with ``generate: false`` (no model output).

        Returns:
            The warm-up response id, now the session's chain head.
        """
        if self._busy:
            raise trio.BusyResourceError(f"turn in flight on {self.agent}")
        if self._http is not None:
            # Nothing to warm over HTTP: no socket holds the conversation.
            return session.last_response_id or ""
        self._busy = True
        self._session = session
        try:
            try:
                socket = await self._socket_for_turn(session, self._policy.start(self.agent))
            except _FellBack:
                return session.last_response_id or ""
            covers = session.snapshot_length()
            request = session.warmup(socket=socket.id)
            response_id = await self._warm(socket, request)
            session.adopt_warmup(response_id, socket=socket.id, covers=covers)
            return response_id
        finally:
            self._busy = False

    def statistics(self) -> ConnectionStatistics:
        now = trio.current_time()
        current = self._current
        http = self._http
        return ConnectionStatistics(
            agent=self.agent,
            socket=current.id if current is not None else None,
            age=current.lifecycle.age(now) if current is not None else 0.0,
            turns=self._turns,
            sockets_opened=self._socket_count,
            rotations=self._rotations,
            warmups=self._warmups,
            reconnects=self._reconnects,
            replays=self._replays,
            retries=self._retries,
            failures=self._failures,
            bytes_sent=self._bytes_sent + (http.bytes_sent if http else 0),
            bytes_received=self._bytes_received + (http.bytes_received if http else 0),
            events_received=self._events_received + (http.events_received if http else 0),
            transport="http" if http is not None else "websocket",
            http_requests=http.requests if http is not None else 0,
        )

    async def aclose(self) -> None:
        """Close every socket (gracefully, within ``close_timeout``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._timer_scope is not None:
            self._timer_scope.cancel()
        sockets = [self._current, self._standby.socket if self._standby else None]
        self._current = None
        self._standby = None
        with trio.CancelScope(shield=True):
            for socket in sockets:
                if socket is not None:
                    await self._close_socket(socket, "connection closed")
            if self._http is not None:
                await self._http.aclose()

    # -- observability ------------------------------------------------------------------------

    def _emit(self, event: RuntimeEvent) -> None:
        if self._events is not None:
            self._events.emit(event)

    @property
    def _observed(self) -> bool:
        return self._events is not None and self._events.active

    # -- sockets ------------------------------------------------------------------------------

    def _use_http(self) -> None:
        """From now on, every turn is an HTTP request."""
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self._headers()]
        headers += [("accept", "text/event-stream"), ("content-type", "application/json")]
        self._http = HttpTransport.open(
            http_url(self.endpoint.url),
            headers,
            connect_timeout=self.settings.connect_timeout,
            idle_timeout=self.settings.idle_timeout,
            max_event_size=self.settings.max_message_size,
            connector=self._http_connector,
            key_fingerprint=self._api_key.fingerprint,
        )

    async def _fall_back(self, reason: str) -> None:
        """The endpoint has no WebSocket mode: go on over HTTP (logged once, reported)."""
        self._log.warning(
            "{} has no WebSocket mode ({}); going on over HTTP", self.endpoint.url, reason
        )
        if self._observed:
            self._emit(
                TransportFellBack(
                    time=trio.current_time(),
                    agent=self.agent,
                    url=self.endpoint.url,
                    reason=reason,
                )
            )
        self._policy = attrs.evolve(self._policy, fallback=False)
        self._use_http()
        if self._timer_scope is not None:
            self._timer_scope.cancel()
        sockets = [self._current, self._standby.socket if self._standby else None]
        self._current = None
        self._standby = None
        for socket in sockets:
            if socket is not None:
                await self._discard(socket, "the endpoint has no WebSocket mode")

    def _headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"authorization", b"Bearer " + self._api_key.reveal().encode()),
            (b"user-agent", USER_AGENT.encode()),
        ]
        if self.settings.organization:
            headers.append((b"openai-organization", self.settings.organization.encode()))
        if self.settings.project:
            headers.append((b"openai-project", self.settings.project.encode()))
        headers.extend((k.encode(), v.encode()) for k, v in self.settings.extra_headers)
        return headers

    async def _open_socket(self, reason: str) -> _Socket:
        self._socket_count += 1
        index = self._socket_count
        started = trio.current_time()
        socket: _Socket = await self._nursery.start(self._socket_task, index)
        duration = trio.current_time() - started
        self._log.info("socket {} open ({}, {:.3f} s)", index, reason, duration)
        if self._observed:
            self._emit(
                ConnectionOpened(
                    time=trio.current_time(),
                    agent=self.agent,
                    connection=index,
                    url=self.endpoint.url,
                    reason=reason,
                    duration=duration,
                )
            )
        return socket

    async def _socket_task(self, index: int, task_status: trio.TaskStatus[_Socket]) -> None:
        """Owns one socket: its trio-websocket reader and its keepalive, until discarded."""
        settings = self.settings
        started = False
        stream: trio.abc.Stream | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(settings.connect_timeout):
                    stream = await self._connector()
                    ws = await self._handshake(nursery, stream)
                lifecycle = ConnectionLifecycle(
                    trio.current_time(), settings.max_age, settings.rotation_margin
                )
                socket = _Socket(index, ws, stream, lifecycle)
                if settings.ping_interval is not None:
                    nursery.start_soon(self._keepalive, socket)
                started = True
                task_status.started(socket)
                await socket.done.wait()
                nursery.cancel_scope.cancel()
        except* ConnectionRejected as group:
            raise self._rejected(_first(group, ConnectionRejected)) from None
        except* trio.TooSlowError:
            raise HandshakeRejected(
                0,
                f"no WebSocket handshake from {self.endpoint.url} within "
                f"{settings.connect_timeout:g} s",
            ) from None
        except* (OSError, HandshakeError, ConnectionClosed) as group:
            if started:
                # The socket already serves turns, which see it as lost; nothing to raise here.
                self._log.debug("socket {} ended: {!r}", index, group)
            else:
                raise ConnectionLost(
                    1006, f"cannot connect to {self.endpoint.url}: {_first(group, Exception)}"
                ) from None
        finally:
            if not started and stream is not None:
                # A refused or failed handshake: nobody else will ever close this stream.
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _handshake(
        self, nursery: trio.Nursery, stream: trio.abc.Stream
    ) -> WebSocketConnection:
        """The WebSocket handshake on ``stream``, trio-websocket's reader started in
        ``nursery``, with our sizes set explicitly (docs/protocol.md#frames-sizes-and-keepalive)."""
        settings = self.settings
        return await wrap_client_stream(
            nursery,
            stream,  # type: ignore[arg-type]
            f"{self.endpoint.host}:{self.endpoint.port}",
            self.endpoint.resource,
            extra_headers=self._headers(),
            message_queue_size=settings.message_queue_size,
            max_message_size=settings.max_message_size,
            receive_buffer_size=settings.receive_buffer_size,
        )

    def _rejected(self, exc: ConnectionRejected) -> HandshakeRejected:
        status = exc.status_code
        raw = exc.body or b""
        body = raw[:512].decode("utf-8", "replace")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in exc.headers}
        explained = request_error(status, raw, headers) is not None
        if status in (401, 403):
            fingerprint = self._api_key.fingerprint
            return AuthenticationError.refused(
                status, self.endpoint.url, fingerprint, explained=explained
            )
        retry_after = retry_after_seconds(headers.get("retry-after"))
        return HandshakeRejected(
            status,
            f"WebSocket handshake refused with HTTP {status} by {self.endpoint.url}: {body}",
            retry_after=retry_after,
            explained=explained,
        )

    async def _keepalive(self, socket: _Socket) -> None:
        interval = self.settings.ping_interval
        assert interval is not None
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(self.settings.ping_timeout) as scope:
                try:
                    await socket.ws.ping()
                except ConnectionClosed:
                    return
            if scope.cancelled_caught:
                self._log.warning("socket {}: keepalive ping unanswered, dropping it", socket.id)
                socket.dead_reason = "keepalive ping timed out"
                # Closing the transport wakes a turn blocked in get_message() with 1006.
                with trio.CancelScope(shield=True):
                    await socket.stream.aclose()
                return

    async def _close_socket(self, socket: _Socket, reason: str, *, graceful: bool = True) -> None:
        if socket.done.is_set():
            return
        if socket.dead_reason is None:
            socket.dead_reason = reason
        age = socket.lifecycle.age(trio.current_time())
        try:
            if graceful and socket.ws.closed is None:
                if trio.current_effective_deadline() == -math.inf:
                    # We are being cancelled: trio-websocket's reader is gone with us, so a
                    # close handshake could only time out. Say "going away" and leave.
                    with trio.move_on_after(self.settings.close_timeout, shield=True):
                        await socket.stream.send_all(_masked_close_frame(1001))
                else:
                    with trio.move_on_after(self.settings.close_timeout):
                        await socket.ws.aclose(1000)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # already gone: closing the stream below is all that is left
        finally:
            with trio.CancelScope(shield=True):
                await socket.stream.aclose()
            socket.done.set()
        self._log.debug("socket {} closed: {}", socket.id, reason)
        if self._observed:
            self._emit(
                ConnectionClosedEvent(
                    time=trio.current_time(),
                    agent=self.agent,
                    connection=socket.id,
                    reason=reason,
                    age=age,
                )
            )

    async def _discard(self, socket: _Socket, reason: str) -> None:
        """Drop a socket at once (no close handshake): it can no longer be trusted."""
        if self._current is socket:
            self._current = None
        with trio.CancelScope(shield=True):
            await self._close_socket(socket, reason, graceful=False)

    # -- choosing the socket for a turn --------------------------------------------------------

    def _rotation_point(self) -> float | None:
        margin = self.settings.rotation_margin
        return None if margin is None else self.settings.max_age - margin

    async def _socket_for_turn(self, session: Session, recovery: TurnRecovery) -> _Socket:
        standby = self._standby
        if standby is not None:
            if standby.socket.usable:
                return self._switch(session, standby)
            self._standby = None
        current = self._current
        if current is not None and current.usable:
            if not current.lifecycle.rotation_due(trio.current_time()):
                return current
            # Rotation is due and no standby is ready: wait for one being prepared, else
            # open a fresh socket now (the turn then replays instead of continuing).
            if self._standby_ready is not None:
                await self._standby_ready.wait()
                if self._standby is not None and self._standby.socket.usable:
                    return self._switch(session, self._standby)
            old = current
            self._current = None
            try:
                socket = await self._connect("rotation", recovery)
            except BaseException:
                # No successor (the endpoint went HTTP-only, refused us, or we were
                # cancelled): the expiring socket is nobody's now, so it is closed here.
                await self._discard(old, "rotation found no successor")
                raise
            self._rotations += 1
            self._nursery.start_soon(self._close_socket, old, "rotated")
            return socket
        if current is not None:
            await self._discard(current, current.dead_reason or "closed by peer")
        return await self._connect("reconnect" if self._socket_count else "open", recovery)

    def _switch(self, session: Session | None, standby: _Standby) -> _Socket:
        """Make the warm standby the current socket; close the old one in the background."""
        old = self._current
        self._standby = None
        self._current = standby.socket
        if standby.response_id is not None and session is not None and standby.session is session:
            session.adopt_warmup(
                standby.response_id, socket=standby.socket.id, covers=standby.covers
            )
        self._rotations += 1
        if old is not None:
            self._nursery.start_soon(self._close_socket, old, "rotated")
            age = old.lifecycle.age(trio.current_time())
            self._log.info(
                "rotated socket {} -> {} at age {:.0f} s", old.id, standby.socket.id, age
            )
            if self._observed:
                self._emit(
                    ConnectionRotated(
                        time=trio.current_time(),
                        agent=self.agent,
                        old=old.id,
                        new=standby.socket.id,
                        age=age,
                        duration=trio.current_time() - standby.socket.lifecycle.opened_at,
                    )
                )
        self._schedule_rotation()
        return standby.socket

    async def _connect(self, reason: str, recovery: TurnRecovery) -> _Socket:
        """Open a socket, retrying as ``recovery`` (the turn's, with its shared budget) decides.

        Raises:
            _FellBack: the endpoint has no WebSocket mode; the connection now uses HTTP.
        """
        while True:
            try:
                socket = await self._open_socket(reason)
            except HandshakeRejected as exc:  # AuthenticationError included
                outcome: Outcome = Refused.of(exc)
            except ConnectionLost as exc:
                outcome = Unreachable(exc)
            else:
                if reason != "open":
                    self._reconnects += 1
                self._current = socket
                self._schedule_rotation()
                return socket
            await self._follow(recovery.decide(outcome, self._rng))
            if self._http is not None:
                raise _FellBack

    # -- planned rotation -----------------------------------------------------------------------

    def _schedule_rotation(self) -> None:
        point = self._rotation_point()
        if point is None or self._closed or self._current is None:
            return
        if self._timer_scope is not None:
            self._timer_scope.cancel()
        scope = trio.CancelScope()
        self._timer_scope = scope
        prepare_at = self._current.lifecycle.opened_at + max(0.0, point - self.settings.warmup_lead)
        self._nursery.start_soon(self._rotation_timer, scope, prepare_at)

    async def _rotation_timer(self, scope: trio.CancelScope, prepare_at: float) -> None:
        with scope:
            await trio.sleep_until(prepare_at)
            await self._prepare_standby()

    async def _prepare_standby(self) -> None:
        """Open the next socket and warm it while the current one keeps serving turns."""
        if self._standby is not None or self._closed:
            return
        ready = trio.Event()
        self._standby_ready = ready
        started = trio.current_time()
        session = self._session
        try:
            socket = await self._open_socket("rotation")
            crash_point("rotation")
            response_id: str | None = None
            covers = 0
            if session is not None and self.settings.warmup and len(session) > 0:
                covers = session.snapshot_length()
                try:
                    response_id = await self._warm(socket, session.warmup(socket=socket.id))
                except (_Lost, ConnectionLost, ServerError, RemoteProtocolError, TurnFailed) as exc:
                    # _Lost too: the standby broke mid-warm-up. Escaping, it would crash the
                    # connection's nursery, and with it the agent using the current socket.
                    self._log.warning("warm-up on socket {} failed: {}", socket.id, exc)
                    await self._discard(socket, f"warm-up failed: {exc}")
                    return
                except BaseException:
                    # Cancelled (a reconnect rescheduled rotation, or aclose): nobody else
                    # knows this socket yet, so it must be closed here.
                    await self._discard(socket, "standby abandoned")
                    raise
            standby = _Standby(socket, session, response_id, covers)
            self._log.debug(
                "standby socket {} ready in {:.3f} s", socket.id, trio.current_time() - started
            )
            if self._busy:
                self._standby = standby  # the next turn boundary switches to it
            else:
                self._switch(session, standby)
        except (HandshakeRejected, ConnectionLost) as exc:
            # The current socket still serves; the next turn boundary will try again.
            self._log.warning("could not prepare the next socket: {}", exc)
        finally:
            ready.set()
            if self._standby_ready is ready:
                self._standby_ready = None

    async def _warm(self, socket: _Socket, request: TurnRequest) -> str:
        started = trio.current_time()
        result = await self._exchange(socket, request.create, None)
        if isinstance(result, RequestError):
            raise result.to_exception()
        if result.status != "completed":
            raise ServerError(
                result.error.code if result.error else None,
                f"warm-up ended {result.status}",
            )
        self._warmups += 1
        duration = trio.current_time() - started
        if self._observed:
            self._emit(
                WarmupFinished(
                    time=trio.current_time(),
                    agent=self.agent,
                    connection=socket.id,
                    response_id=result.id,
                    items=len(request.create.input)
                    if isinstance(request.create.input, list)
                    else 0,
                    duration=duration,
                )
            )
        return result.id

    # -- one exchange on one socket ----------------------------------------------------------------

    async def _exchange(
        self,
        socket: _Socket,
        create: ResponseCreate,
        on_event: Callable[[Any], object] | None,
    ) -> Response | RequestError:
        """Send one create and read its events to the terminal one.

        Raises:
            _Lost: the socket broke (close, network error, idle deadline).
            RemoteProtocolError: garbage or out-of-order events.
        """
        ws = socket.ws
        text = encode_text(create)
        socket.lifecycle.start_turn(self.agent)
        try:
            try:
                await ws.send_message(text)
            except ConnectionClosed as exc:
                raise _Lost(_lost_from(exc, socket), sent=False) from exc
            crash_point("request_sent")
            self._bytes_sent += len(text)
            assembler = TurnAssembler()
            idle = self.settings.idle_timeout
            clock = trio.current_time
            last_event = clock()
            # The idle deadline is `idle` after the last event. Moving a cancel scope's
            # deadline at every event costs more than decoding the event, so the scope
            # keeps its deadline and, when it expires, a new one starts from the last event
            # unless that one was `idle` ago. get_message() is cancel-safe: nothing is lost.
            while True:
                with trio.CancelScope(deadline=last_event + idle):
                    while True:
                        try:
                            message = await ws.get_message()
                        except ConnectionClosed as exc:
                            raise _Lost(_lost_from(exc, socket)) from exc
                        last_event = clock()
                        self._events_received += 1
                        self._bytes_received += len(message)
                        if isinstance(message, bytes):
                            raise RemoteProtocolError("binary frame on a text protocol")
                        event = decode_server_event(message)
                        crash_point("mid_stream")
                        result = assembler.receive(event)
                        if on_event is not None:
                            on_event(event)
                        if result is not None:
                            return result
                # The same sum as the deadline: a difference could round below `idle`
                # at the very deadline and loop forever on a mock clock.
                if last_event + idle <= clock():
                    break
            socket.dead_reason = f"no event for {idle:g} s"
            raise _Lost(ConnectionLost(1006, f"no event for {idle:g} s (idle deadline)"))
        finally:
            socket.lifecycle.end_turn()

    # -- the turn loop -----------------------------------------------------------------------------

    async def _run_turn(
        self,
        session: Session,
        new_items: tuple[Item, ...],
        on_event: Callable[[Any], object] | None,
    ) -> Response:
        recovery = self._policy.start(self.agent)
        turn = session.turns + 1
        started = trio.current_time()
        replay = False
        while True:
            recovery.begin()
            http = self._http
            socket: _Socket | None = None
            if http is None:
                try:
                    socket = await self._socket_for_turn(session, recovery)
                except _FellBack:
                    continue
                attempt = (new_items, replay, turn)
                request, outcome = await self._attempt(session, attempt, on_event, socket)
            else:
                request = session.request(new_items, socket=None, replay=replay)
                self._starting(session, request, None, turn, replay, len(new_items))
                outcome = await http.post(request.create, on_event, replayed=request.replay)
            if isinstance(outcome, Response):
                if outcome.status != "failed":
                    self._finished(session, request, outcome, socket, turn, started)
                    return outcome
                outcome = Failed.of(outcome)
            decision = recovery.decide(outcome, self._rng)
            abandon = partial(self._abandon, on_event, turn=turn, attempt=recovery.attempts)
            replay = await self._follow(decision, socket, abandon)
            if replay:
                session.forget_chain()

    async def _attempt(
        self,
        session: Session,
        attempt: tuple[tuple[Item, ...], bool, int],
        on_event: Callable[[Any], object] | None,
        socket: _Socket,
    ) -> tuple[TurnRequest, Response | Outcome]:
        """One attempt of a turn (new items, replay, turn number) on a socket: its request
        and the response or what happened."""
        new_items, replay, turn = attempt
        request = session.request(new_items, socket=socket.id, replay=replay)
        self._starting(session, request, socket, turn, replay, len(new_items))
        try:
            result = await self._exchange(socket, request.create, on_event)
        except _Lost as lost:
            age = socket.lifecycle.age(trio.current_time())
            return request, Lost(lost.error, request_sent=lost.sent, connection_age=age)
        except BaseException:
            # Protocol garbage, cancellation, anything: the socket's stream is no longer
            # trustworthy, and the session has not changed.
            await self._discard(socket, "turn abandoned")
            raise
        if isinstance(result, RequestError):
            age = socket.lifecycle.age(trio.current_time())
            return request, Rejected(result, replayed=request.replay, connection_age=age)
        return request, result

    def _starting(
        self,
        session: Session,
        request: TurnRequest,
        socket: _Socket | None,
        turn: int,
        replay: bool,
        new_items: int,
    ) -> None:
        """Count and report an attempt about to be sent (``socket`` is None over HTTP, where a
        full transcript is the normal request with ``store=false``, not a replay)."""
        if request.replay and len(session) and (replay or socket is not None):
            self._replays += 1
            reason = "replay requested" if replay else "socket does not hold the chain"
            where = f"socket {socket.id}" if socket is not None else "HTTP"
            self._log.info("replaying {} items on {} ({})", len(session), where, reason)
            if self._observed:
                self._emit(
                    TranscriptReplayed(
                        time=trio.current_time(),
                        agent=self.agent,
                        reason=reason,
                        items=len(session),
                    )
                )
        if self._observed:
            self._emit(
                TurnStarted(
                    time=trio.current_time(),
                    agent=self.agent,
                    turn=turn,
                    connection=socket.id if socket is not None else 0,
                    new_items=new_items,
                )
            )

    def _finished(
        self,
        session: Session,
        request: TurnRequest,
        result: Response,
        socket: _Socket | None,
        turn: int,
        started: float,
    ) -> None:
        """Commit a turn's response and report it."""
        session.commit(request, result, socket=socket.id if socket is not None else None)
        self._turns += 1
        if self._observed:
            usage = result.usage
            self._emit(
                TurnFinished(
                    time=trio.current_time(),
                    agent=self.agent,
                    turn=turn,
                    status=result.status,
                    response_id=result.id,
                    duration=trio.current_time() - started,
                    input_tokens=usage.input_tokens if usage else 0,
                    output_tokens=usage.output_tokens if usage else 0,
                    function_calls=len(result.function_calls),
                    text=capped(result.text),
                )
            )

    async def _follow(
        self,
        decision: Retry | Fail,
        socket: _Socket | None = None,
        abandon: Callable[[str], None] | None = None,
    ) -> bool:
        """Carry out a recovery decision: drop the socket, report, then fail or wait.

        ``abandon`` tells the turn's observers that the attempt's output is void.

        Returns:
            Whether the next attempt replays the whole transcript.

        Raises:
            OrchestratorError: the decision's error, when it is to fail.
        """
        if decision.drop is not None and socket is not None:
            await self._discard(socket, decision.drop)
        if decision.anomaly is not None:
            self._log.error("{} on socket {}", decision.anomaly, socket.id if socket else None)
        if decision.abandon is not None and abandon is not None:
            abandon(decision.abandon)
        if decision.server_retry:
            self._retries += 1
        if isinstance(decision, Retry) and decision.fallback is not None:
            await self._fall_back(decision.fallback)
            return False
        if isinstance(decision, Fail):
            self._failures += 1
            if decision.gave_up is not None:
                self._report_gave_up(decision.gave_up, decision.reason)
            raise decision.error from decision.cause
        if decision.wait is not None:
            await self._back_off(decision.wait)
        return decision.replay

    def _report_gave_up(self, attempts: int, reason: str) -> None:
        self._log.warning("giving up after {} attempts: {}", attempts, reason)
        if self._observed:
            self._emit(
                ConnectionFailed(
                    time=trio.current_time(), agent=self.agent, reason=reason, attempts=attempts
                )
            )

    async def _back_off(self, wait: Backoff) -> None:
        self._log.info(
            "attempt {} failed ({}); retrying in {:.2f} s", wait.attempt, wait.reason, wait.delay
        )
        if self._observed:
            self._emit(
                ConnectionReconnecting(
                    time=trio.current_time(),
                    agent=self.agent,
                    attempt=wait.attempt,
                    delay=wait.delay,
                    reason=wait.reason,
                    code=wait.code,
                )
            )
        await trio.sleep(wait.delay)

    def _abandon(
        self, on_event: Callable[[Any], object] | None, reason: str, *, turn: int, attempt: int
    ) -> None:
        if on_event is not None:
            on_event(AttemptAbandoned(reason))
        if self._observed:
            self._emit(
                TurnRetried(
                    time=trio.current_time(),
                    agent=self.agent,
                    turn=turn,
                    attempt=attempt,
                    reason=reason,
                )
            )


def _lost_from(exc: ConnectionClosed, socket: _Socket) -> ConnectionLost:
    reason = exc.reason
    if socket.dead_reason is not None:
        return ConnectionLost(1006, socket.dead_reason)
    if reason is None:
        return ConnectionLost(1006, "connection closed without a close frame")
    return ConnectionLost(reason.code, reason.reason or reason.name)


def _first(group: BaseExceptionGroup[Any], kind: type[Any]) -> Any:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _first(exc, kind)
            if found is not None:
                return found
        elif isinstance(exc, kind):
            return exc
    return None


@asynccontextmanager
async def open_connection(
    url: str | None = None,
    api_key: str | Secret | None = None,
    *,
    settings: ConnectionSettings | None = None,
    agent: str = "agent",
    events: EventBus | None = None,
    connector: Connector | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[Connection]:
    """Open an agent's connection for the duration of the ``async with``.

    Args:
        url: ``wss://.../v1/responses`` or an SDK-style base URL (``https://host/v1``);
            default ``OPENAI_BASE_URL`` or the service.
        api_key: default ``OPENAI_API_KEY``. Never logged; ``repr`` shows a fingerprint.
        settings: transport settings (timeouts, sizes, rotation, backoff).
        agent: the name used in logs, events and errors.
        events: where to report opens, rotations, reconnects, replays and turns.
        connector: opens the byte stream (tests pass in-memory streams); default TCP/TLS.
        rng: randomness for backoff jitter (seed it for reproducible tests).

    The first socket opens lazily, at the first turn. ``settings.transport`` chooses
    WebSocket mode, HTTP, or ``auto`` (see :func:`resolve_transport`); over HTTP the
    ``connector``, if given, carries the HTTP requests too.

    Raises:
        ConfigurationError: a bad URL, an insecure URL, a missing or malformed key.
    """
    settings = settings if settings is not None else ConnectionSettings()
    endpoint = resolve_endpoint(url, allow_insecure=settings.allow_insecure)
    secret = resolve_api_key(api_key)
    async with trio.open_nursery() as nursery:
        connection = Connection(
            agent=agent,
            endpoint=endpoint,
            settings=settings,
            api_key=secret,
            connector=connector if connector is not None else tcp_connector(endpoint),
            nursery=nursery,
            events=events,
            rng=rng if rng is not None else _JITTER,
            transport=resolve_transport(settings.transport, endpoint),
            http_connector=connector,
        )
        try:
            yield connection
        finally:
            await connection.aclose()
            nursery.cancel_scope.cancel()
