"""The embedded Responses server: WebSocket mode and plain HTTP on one port.

One :class:`LocalServer` serves any number of connections, and holds what they share: the
settings, the response store, the local models, the faults still to fire and the
statistics. Each connection begins with a request head
(:func:`~orchestrator.core.server.http_transport.read_head`), which
:meth:`LocalServer.handle_stream` reads and dispatches: a WebSocket upgrade is served by
:func:`~.websocket_connection.serve_websocket`, anything else is plain HTTP served by
:func:`~.http_connection.serve_http` (``POST /v1/responses``, answered with SSE or JSON;
docs/protocol.md#over-http). Both make responses the same way
(:class:`~.connection.BaseConnection`). Each connection runs in its own nursery and is
isolated: an unexpected error in one closes that one with 1011 and nothing else (an
uncaught error in a connection handler would otherwise cancel every connection).

What to answer is decided by pure code: a request's checks in :mod:`.checks`, the ordered
events of a response in :class:`~orchestrator.core.protocol.writer.ResponseWriter`. The
connection modules are the trio glue around them: sockets, lanes, the latency model's
pacing and injected faults.

The server accepts any trio stream (:meth:`LocalServer.handle_stream`), so the same code
serves real TCP (:func:`open_local_server`, ``orchestrator serve``) and in-memory stream pairs
driven by trio's MockClock in tests.
"""

from __future__ import annotations

import hmac
import random
from collections import Counter
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from loguru import logger

from orchestrator.core.protocol.events import ClientEvent, UnknownEvent
from orchestrator.errors import ConfigurationError

from .config import Fault, ServerConfig
from .connection import BaseConnection, error_body
from .http_connection import serve_http
from .http_transport import Head, is_websocket_upgrade, read_head
from .models import Policy, Script, load_script, select_policy
from .state import ResponseStore
from .transport import peer_name
from .websocket_connection import serve_websocket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = [
    "LocalServer",
    "RunningServer",
    "ServerStatistics",
    "open_local_server",
    "serve_local_server",
]


@attrs.frozen
class ServerStatistics:
    """A snapshot of what the server has done since it started.

    ``handshakes_pending``, ``buffered_bytes``, ``request_bytes`` and ``queued_requests`` are
    what open connections hold now (summed over them); the ``peak_*`` fields are the most
    one connection held at any time. ``connections_*`` count WebSockets; ``http_connections``
    the connections that spoke plain HTTP, ``http_requests`` the requests they carried (any
    method and path) and ``http_streams`` the answers streamed as server-sent events;
    ``prompt_cache_misses`` the HTTP requests the latency model's ``cache_miss_rate`` drew.
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
    http_connections: int
    http_requests: int
    http_streams: int
    prompt_cache_misses: int


@attrs.define
class Counters:
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
    http_connections: int = 0
    http_requests: int = 0
    http_streams: int = 0
    prompt_cache_misses: int = 0
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
            # Over HTTP every POST has its "handshake": the response index picks the POST.
            if handshake and response is not None and fault.response not in (None, response):
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


@attrs.define(eq=False)
class LocalServer:
    """The embedded server's state, shared by all its connections.

    Use :func:`open_local_server` to run it on a TCP port, or feed it streams yourself with
    :meth:`handle_stream` (in-memory transports in tests).
    """

    config: ServerConfig
    token: str = attrs.field(repr=False)
    _store: ResponseStore = attrs.field(init=False)
    _counters: Counters = attrs.field(factory=Counters, init=False)
    _faults: _FaultPlan = attrs.field(factory=_FaultPlan, init=False)
    _script: Script | None = attrs.field(default=None, init=False)
    _policies: dict[str, Policy] = attrs.field(factory=dict, init=False)
    _connection_count: int = attrs.field(default=0, init=False)
    _connections: set[BaseConnection] = attrs.field(factory=set, init=False)
    # Draws the HTTP prompt-cache misses: seeded, so a benchmark's runs repeat.
    _cache_rng: random.Random = attrs.field(init=False)
    received: list[tuple[int, ClientEvent | UnknownEvent]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        self._store = ResponseStore(self.config.store_capacity)
        self._cache_rng = random.Random(self.config.seed or 0)
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

    def _prompt_cache_missed(self) -> bool:
        """Whether this HTTP request misses the prompt cache (``cache_miss_rate``)."""
        rate = self.config.latency.cache_miss_rate
        if rate and self._cache_rng.random() < rate:
            self._counters.prompt_cache_misses += 1
            return True
        return False

    def policy_for(self, model: str) -> Policy:
        policy = self._policies.get(model)
        if policy is None:
            policy = select_policy(model, self.config.model, self._script)
            self._policies[model] = policy
        return policy

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection on ``stream`` until it ends: a WebSocket, or HTTP
        requests one after the other (docs/protocol.md#over-http). Never raises ``Exception``.
        """
        self._connection_count += 1
        index = self._connection_count
        config = self.config
        counters = self._counters
        log = logger.bind(server_connection=index)
        if counters.handshakes_pending >= config.max_pending_handshakes:
            await self._refuse_busy(stream, index, log)
            return
        # One deadline for the whole handshake: reading the request's head, then answering
        # the upgrade (over HTTP: the first request's head).
        deadline = trio.current_time() + config.handshake_timeout
        head: Head | None = None
        counters.handshakes_pending += 1
        try:
            with trio.CancelScope(deadline=deadline):
                head = await read_head(stream)
        finally:
            counters.handshakes_pending -= 1
        request = head.request if head is not None else None
        if head is None or (request is None and head.error is None):
            if head is None:
                self._timed_out(index, log, peer_name(stream))
            with trio.CancelScope(shield=True):
                await stream.aclose()
        elif config.http and (request is None or not is_websocket_upgrade(request)):
            await serve_http(self, stream, head, index, log)
        else:
            await serve_websocket(self, stream, head.raw, deadline, index, log)

    def _timed_out(self, index: int, log: Any, peer: str) -> None:
        self._counters.handshakes_timed_out += 1
        log.info(
            "connection {} from {}: dropped, no handshake within {:g} s",
            index,
            peer,
            self.config.handshake_timeout,
        )

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
        body = error_body(
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

    def _authorised(self, header: bytes | None) -> bool:
        if header is None:
            return False
        scheme, _, credentials = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self.token.encode())


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
