"""Settings of the embedded server: limits, latency model, fault injection."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs

from orchestrator.core.rules import is_loopback
from orchestrator.errors import ConfigurationError

__all__ = ["Fault", "FaultKind", "LatencyModel", "ServerConfig"]

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
HARD_MAX_MESSAGE_SIZE = 1024 * 1024 * 1024
DEFAULT_MAX_BUFFERED_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
MIN_BUFFERED_BYTES = 4096

FaultKind = Literal[
    "close",  # close with `code` after `after_events` events
    "abort",  # drop the TCP connection without a close frame (the client sees 1006)
    "stall",  # stop sending (TCP and pings stay alive) for `duration` seconds, None = forever
    "blackhole",  # stop reading and writing the socket: pings go unanswered (half-open peer)
    "error",  # send an `error` event with `error_code`/`status`, ending the request
    "fail",  # end the response with `response.failed` carrying `error_code`
    "drop_cache",  # forget this connection's cached responses
    "expire",  # reach the connection age limit now
    "send_raw",  # send `payload` as a text frame (garbage, unknown events...)
    "oversize",  # send an unknown event padded to `size` bytes
    "reject",  # refuse the WebSocket handshake (or answer the POST) with HTTP `status`
    "delay_handshake",  # wait `duration` seconds before answering the handshake (or POST)
]

_HANDSHAKE_FAULTS = frozenset({"reject", "delay_handshake"})
# 1006 and 1015 are reserved for "no close frame" / "TLS failure" (RFC 6455 7.4.1). 1005 is
# sendable: it goes out as a close frame without a code, which the peer reports as 1005.
_UNSENDABLE_CLOSE_CODES = frozenset({1006, 1015})


@attrs.frozen
class Fault:
    """One injected fault (the "nemesis" of docs/faults.md#fault-injection).

    Matching: ``connection`` is the 1-based index of the connection in the server's life
    (``None``: any connection); ``response`` is the 1-based index of the response on that
    connection, warm-ups included (``None``: the next one). The fault fires once
    ``after_events`` events of that response have been sent (for handshake faults, at the
    handshake), and at most ``times`` times in all.

    Over HTTP (docs/faults.md#fault-injection) a TCP connection is a connection and the n-th
    ``POST /v1/responses`` on it is response n; ``reject`` and ``delay_handshake`` act on
    that POST's answer, ``abort`` and ``close`` drop the TCP connection, ``drop_cache`` and
    ``expire`` do nothing.
    """

    kind: FaultKind
    after_events: int = 0
    connection: int | None = None
    response: int | None = None
    code: int = 1011
    status: int = 500
    error_code: str = "server_error"
    message: str | None = None
    duration: float | None = None
    payload: str = ""
    size: int = 0
    retry_after: float | None = None
    times: int = 1

    def __attrs_post_init__(self) -> None:
        if self.after_events < 0:
            raise ConfigurationError(f"fault after_events must be >= 0, got {self.after_events}")
        if self.times < 1:
            raise ConfigurationError(f"fault times must be >= 1, got {self.times}")
        if self.kind == "close" and (
            not 1000 <= self.code <= 4999 or self.code in _UNSENDABLE_CLOSE_CODES
        ):
            raise ConfigurationError(
                f"close code {self.code} cannot be sent in a close frame; use kind='abort' "
                "for an abnormal closure (1006)"
            )

    @property
    def at_handshake(self) -> bool:
        return self.kind in _HANDSHAKE_FAULTS


@attrs.frozen
class LatencyModel:
    """How long the local model "thinks", so benchmarks show a real server's cost structure.

    Every cost is zero by default (docs/protocol.md#determinism-and-latency). A response
    first pays for its request (before ``response.created``): the fixed API work, parsing
    the tokens the request carries and loading the chain it continues from the store. Then,
    after ``response.in_progress``, the model reads the input it has not cached and thinks
    until the first token; the deltas follow at ``tokens_per_second``.

    Args:
        time_to_first_token: seconds between reading the input and the first output.
        tokens_per_second: pace of output deltas; ``None`` sends them as fast as possible.
        seconds_per_input_token: processing cost of every input token not served from a
            cache: the connection-local cache of a WebSocket (what a warm-up or a
            continuation saves), or over HTTP the prompt cache, unless it missed.
        http_request_seconds: fixed API work per HTTP request (auth, routing, loading
            state).
        websocket_request_seconds: fixed work per ``response.create`` on a WebSocket.
        seconds_per_sent_token: parsing and tokenising each input token the request
            carries (instructions, tools and ``input``), on both transports: a WebSocket
            continuation carries only its new items, an HTTP request without
            ``previous_response_id`` the whole conversation.
        seconds_per_rehydrated_token: loading a stored chain by ``previous_response_id``
            when it is not in a connection-local cache, per token of the chain (HTTP
            always; a WebSocket only when it continues from the store).
        cache_miss_rate: the probability (0 to 1) that an HTTP request's prompt prefix
            misses the prompt cache, so every context token pays
            ``seconds_per_input_token``, not only the new ones. Drawn from a generator
            seeded by ``ServerConfig.seed`` (or 0), so runs repeat. A WebSocket
            continuation is served from the connection's memory and never misses.
    """

    time_to_first_token: float = 0.0
    tokens_per_second: float | None = None
    seconds_per_input_token: float = 0.0
    http_request_seconds: float = 0.0
    websocket_request_seconds: float = 0.0
    seconds_per_sent_token: float = 0.0
    seconds_per_rehydrated_token: float = 0.0
    cache_miss_rate: float = 0.0

    def __attrs_post_init__(self) -> None:
        costs = {
            "time_to_first_token": self.time_to_first_token,
            "seconds_per_input_token": self.seconds_per_input_token,
            "http_request_seconds": self.http_request_seconds,
            "websocket_request_seconds": self.websocket_request_seconds,
            "seconds_per_sent_token": self.seconds_per_sent_token,
            "seconds_per_rehydrated_token": self.seconds_per_rehydrated_token,
        }
        for name, value in costs.items():
            if not value >= 0:
                raise ConfigurationError(f"latency model: {name} must be >= 0, got {value}")
        if self.tokens_per_second is not None and not self.tokens_per_second > 0:
            raise ConfigurationError("tokens_per_second must be > 0 (or None for no pacing)")
        if not 0 <= self.cache_miss_rate <= 1:
            raise ConfigurationError(
                f"latency model: cache_miss_rate must be in 0..1, got {self.cache_miss_rate}"
            )

    @property
    def is_zero(self) -> bool:
        """No cost at all: nothing waits (cache misses still change the usage reported)."""
        return (
            self.time_to_first_token == 0
            and self.tokens_per_second is None
            and self.seconds_per_input_token == 0
            and self.http_request_seconds == 0
            and self.websocket_request_seconds == 0
            and self.seconds_per_sent_token == 0
            and self.seconds_per_rehydrated_token == 0
        )

    def request_seconds(self, *, http: bool, sent_tokens: int, rehydrated_tokens: int) -> float:
        """The API work before a response starts: the request's fixed cost, parsing the
        ``sent_tokens`` it carries, loading ``rehydrated_tokens`` of a stored chain."""
        fixed = self.http_request_seconds if http else self.websocket_request_seconds
        return (
            fixed
            + sent_tokens * self.seconds_per_sent_token
            + rehydrated_tokens * self.seconds_per_rehydrated_token
        )

    def input_seconds(self, uncached_tokens: int, *, generate: bool) -> float:
        """Reading the ``uncached_tokens`` of the input, then the time to the first token
        (none for a warm-up, which generates nothing)."""
        delay = uncached_tokens * self.seconds_per_input_token
        return delay + self.time_to_first_token if generate else delay


@attrs.frozen
class ServerConfig:
    """Everything the embedded server can be told.

    Args:
        host: interface to bind; anything but loopback requires an explicit ``token``.
        port: TCP port, 0 for any free one.
        token: the bearer token clients must present; ``None`` generates a random one.
        model: the local policy for every model name (``generic``, ``echo``, ``scripted``);
            ``None`` picks by model name (names containing ``echo`` or ``scripted`` choose
            those policies, anything else is ``generic``).
        script: the scripted policy's turns: a path to a JSON/YAML file or the decoded data.
        max_connection_age: seconds before ``websocket_connection_limit_reached``
            (docs/protocol.md#connection-age).
        expiry_close_code: close code sent after the expiry error; ``None`` leaves it open.
        max_message_size: incoming message limit, enforced with close 1009.
        max_active_responses: responses running at once per connection
            (docs/protocol.md#lanes-and-limits).
        max_named_lanes: distinct ``stream_id`` values per connection
            (docs/protocol.md#lanes-and-limits).
        max_queued_requests: creates waiting on one lane; more get 429
            ``too_many_queued_requests``.
        max_request_bytes: bytes of creates one connection holds at once, waiting or
            running; a create past it gets 429 ``too_many_queued_requests`` (a create is
            always taken when the connection holds none).
        max_buffered_bytes: outgoing bytes one connection may hold for a client. Producers
            wait at a quarter of it (at most 256 KiB); a client whose pings alone push the
            buffer past it is closed with 1008.
        send_timeout: seconds output may wait without the client's socket taking a byte;
            then the client is closed with 1008 (the unsent messages are dropped). ``None``
            waits for ever.
        max_pending_handshakes: connections still in their handshake (not yet
            authenticated) at once; more are refused at once with HTTP 503.
        handshake_timeout: seconds from the TCP connection to the handshake's answer; a
            slower client is dropped. Over HTTP: to the first request's head, and for each
            request's body once its head arrived (a slower body gets ``408``).
        close_timeout: seconds a closing handshake may take before the socket is dropped.
        keep_alive_timeout: seconds an HTTP connection may wait for its next request
            (docs/protocol.md#over-http); then the server closes it.
        websocket: serve WebSocket mode; ``False`` refuses every upgrade with ``426
            Upgrade Required`` (``websocket_not_supported``), like an endpoint that speaks
            only HTTP (docs/protocol.md#an-http-only-server).
        http: serve ``POST /v1/responses``; ``False`` leaves plain HTTP requests to the
            WebSocket handshake, which refuses them with ``400`` (a WebSocket-only endpoint).
        strict_single_flight: answer a create on a busy lane with 409 instead of queueing.
        require_tool_outputs: refuse a continuation that leaves function calls unanswered.
        latency: the latency model; zero by default.
        faults: faults applied by connection/response index (see :class:`Fault`).
        seed: makes ids deterministic; ``None`` draws them at random.
        allowed_origins: browser ``Origin`` values accepted; any other Origin gets 403.
        store_capacity: responses kept by the process-wide ``store: true`` store.
        record_messages: keep every decoded client message for test assertions.
    """

    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = attrs.field(default=None, repr=False)
    model: Literal["generic", "echo", "scripted"] | None = None
    script: Path | str | dict[str, Any] | list[Any] | None = None
    max_connection_age: float = 3600.0
    expiry_close_code: int | None = 1000
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_active_responses: int = 16
    max_named_lanes: int = 32
    max_queued_requests: int = 256
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES
    send_timeout: float | None = 30.0
    max_pending_handshakes: int = 1024
    strict_single_flight: bool = False
    require_tool_outputs: bool = True
    latency: LatencyModel = LatencyModel()
    faults: tuple[Fault, ...] = ()
    seed: int | None = None
    allowed_origins: frozenset[str] = frozenset()
    store_capacity: int = 10_000
    record_messages: bool = False
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    keep_alive_timeout: float = 60.0
    websocket: bool = True
    http: bool = True

    def __attrs_post_init__(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ConfigurationError(
                f"binding {self.host} requires a token (--token): the server would accept "
                "anyone on the network",
                code="server.auth",
            )
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ConfigurationError("token must be non-empty and contain no whitespace")
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port must be in 0..65535, got {self.port}")
        if self.max_connection_age <= 0:
            raise ConfigurationError("max_connection_age must be > 0 seconds")
        if not 1 <= self.max_message_size <= HARD_MAX_MESSAGE_SIZE:
            raise ConfigurationError(
                f"max_message_size must be in 1..{HARD_MAX_MESSAGE_SIZE}, "
                f"got {self.max_message_size}"
            )
        if self.max_active_responses < 1 or self.max_named_lanes < 0:
            raise ConfigurationError("lane caps must be positive")
        if self.max_queued_requests < 1:
            raise ConfigurationError(
                f"max_queued_requests must be >= 1, got {self.max_queued_requests}"
            )
        if self.max_request_bytes < 1:
            raise ConfigurationError(
                f"max_request_bytes must be >= 1, got {self.max_request_bytes}"
            )
        if self.max_buffered_bytes < MIN_BUFFERED_BYTES:
            raise ConfigurationError(
                f"max_buffered_bytes must be >= {MIN_BUFFERED_BYTES}, got {self.max_buffered_bytes}"
            )
        if self.send_timeout is not None and not self.send_timeout > 0:
            raise ConfigurationError(
                f"send_timeout must be > 0 seconds (or None), got {self.send_timeout}"
            )
        if self.max_pending_handshakes < 1:
            raise ConfigurationError(
                f"max_pending_handshakes must be >= 1, got {self.max_pending_handshakes}"
            )
        if not self.handshake_timeout > 0:
            raise ConfigurationError(
                f"handshake_timeout must be > 0 seconds, got {self.handshake_timeout}"
            )
        if not self.close_timeout >= 0:
            raise ConfigurationError(
                f"close_timeout must be >= 0 seconds, got {self.close_timeout}"
            )
        if not (self.websocket or self.http):
            raise ConfigurationError(
                "websocket=False and http=False: the server would serve nothing; keep at least one"
            )
        if not self.keep_alive_timeout > 0:
            raise ConfigurationError(
                f"keep_alive_timeout must be > 0 seconds, got {self.keep_alive_timeout}"
            )
        if self.expiry_close_code is not None and not 1000 <= self.expiry_close_code <= 4999:
            raise ConfigurationError(f"invalid expiry close code {self.expiry_close_code}")
