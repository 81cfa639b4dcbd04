"""The embedded server's request checks, as pure functions (no sockets, no clock).

Each check takes a client message, or a create and what the connection holds, and returns
``None`` (go ahead) or the :class:`Refusal` to answer with: an ``error`` event's status,
code, message and ``param`` (docs/protocol.md#the-error-event,
docs/faults.md#clients-of-the-embedded-server). ``app.py`` asks them in order and sends what they
say; nothing here knows how.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs
import msgspec

from orchestrator.core.protocol.codec import DECODE_ERRORS

from .state import call_ids_in

if TYPE_CHECKING:
    from orchestrator.core.protocol.events import Item, ResponseCreate, UnknownEvent
    from orchestrator.errors import RemoteProtocolError

    from .config import ServerConfig
    from .state import CachedResponse

__all__ = [
    "EXPIRED",
    "LIMIT_MESSAGE",
    "QUEUE_FULL",
    "Refusal",
    "check_body",
    "check_continuation",
    "check_create",
    "check_http_create",
    "check_lane",
    "check_message",
    "check_tool_outputs",
    "unknown_event",
]

LIMIT_MESSAGE: Final = (
    "Responses websocket connection limit reached (60 minutes). Create a new websocket "
    "connection to continue."
)
_any_json: Final = msgspec.json.Decoder()
_LANE_ID_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
)


@attrs.frozen
class Refusal:
    """The ``error`` event a request gets instead of a response.

    ``lane``: the error concerns the create's own lane and echoes its ``stream_id``; false
    for errors about the message or the connection as a whole.
    """

    status: int
    code: str
    message: str
    param: str | None = None
    lane: bool = True


EXPIRED: Final = Refusal(400, "websocket_connection_limit_reached", LIMIT_MESSAGE, lane=False)
QUEUE_FULL: Final = Refusal(
    429, "too_many_queued_requests", "Too many queued responses on this lane."
)


def check_message(message: str | bytes, error: RemoteProtocolError) -> Refusal:
    """The refusal of a client message the codec could not decode as an event (``error``)."""
    text = str(error)
    try:
        parsed = _any_json.decode(message)
    except DECODE_ERRORS:
        return Refusal(400, "invalid_json", f"Invalid JSON message: {text}", lane=False)
    if not isinstance(parsed, dict):
        return Refusal(
            400,
            "invalid_value",
            f"A client event is a JSON object, not {type(parsed).__name__}.",
            lane=False,
        )
    if "type" not in parsed:
        return Refusal(
            400,
            "missing_required_parameter",
            "Missing required parameter: 'type'.",
            param="type",
            lane=False,
        )
    param, code = _param_from(text)
    return Refusal(400, code, f"Invalid client event: {text}", param=param, lane=False)


def check_body(body: bytes, error: RemoteProtocolError) -> Refusal:
    """The refusal of a ``POST /v1/responses`` body the codec could not decode (``error``)."""
    text = str(error)
    try:
        parsed = _any_json.decode(body)
    except DECODE_ERRORS:
        return Refusal(
            400,
            "invalid_json",
            f"We could not parse the JSON body of your request: {text}",
            lane=False,
        )
    if not isinstance(parsed, dict):
        return Refusal(
            400,
            "invalid_value",
            f"The request body is a JSON object of parameters, not {type(parsed).__name__}.",
            lane=False,
        )
    param, code = _param_from(text)
    return Refusal(400, code, f"Invalid request body: {text}", param=param, lane=False)


# Fields of a create that only WebSocket mode has; over HTTP the service does not know them.
_WEBSOCKET_ONLY: Final = ("generate", "stream_id")


def check_http_create(create: ResponseCreate, *, envelope: bool = False) -> Refusal | None:
    """What a create sent over HTTP may not ask for (docs/protocol.md#over-http): the
    WebSocket-only fields (the envelope's ``type``, ``generate``, ``stream_id``) are unknown
    parameters there, and background responses are not served; then whatever
    :func:`check_create` refuses. ``envelope``: the body had a top-level ``type``."""
    present = [name for name in _WEBSOCKET_ONLY if getattr(create, name) is not msgspec.UNSET]
    unknown = ["type", *present] if envelope else present
    if unknown:
        name = unknown[0]
        return Refusal(
            400,
            "unknown_parameter",
            f"Unknown parameter: '{name}'. ({name} exists in WebSocket mode only.)",
            param=name,
            lane=False,
        )
    if create.background is True:
        return Refusal(
            400,
            "invalid_value",
            "background responses are not supported by the embedded server.",
            param="background",
            lane=False,
        )
    return check_create(create)


def unknown_event(event: UnknownEvent) -> Refusal:
    """The refusal of a client event of a type the protocol does not have."""
    return Refusal(
        400,
        "unknown_event_type",
        f"Unknown client event type {event.type!r}; expected 'response.create' or "
        "'response.steer'.",
        param="type",
        lane=False,
    )


def check_create(create: ResponseCreate) -> Refusal | None:
    """What a create may not ask for, whatever the connection's state."""
    stream_id = create.stream_id
    if isinstance(stream_id, str) and not valid_lane_id(stream_id):
        return Refusal(
            400,
            "invalid_stream_id",
            "stream_id must be 1 to 256 characters of [A-Za-z0-9_.-].",
            param="stream_id",
            lane=False,
        )
    if create.background is True:
        return Refusal(
            400,
            "invalid_value",
            "background responses are not supported over WebSocket.",
            param="background",
        )
    if not isinstance(create.model, str) or not create.model:
        return Refusal(
            400, "missing_required_parameter", "Missing required parameter: 'model'.", param="model"
        )
    if isinstance(create.conversation, str | dict) and isinstance(create.previous_response_id, str):
        return Refusal(
            400,
            "invalid_value",
            "previous_response_id cannot be combined with conversation.",
            param="conversation",
        )
    return None


def check_lane(
    config: ServerConfig,
    *,
    new_named_lane: bool,
    named_lanes: int,
    lane_busy: bool,
    held: int,
    size: int,
) -> Refusal | None:
    """Whether the connection can take a create of ``size`` bytes on its lane now.

    Args:
        new_named_lane: the create opens a named lane the connection has not used yet.
        named_lanes: how many named lanes the connection already uses.
        lane_busy: the lane has a response queued or running.
        held: bytes of creates the connection holds (queued or running).
    """
    if new_named_lane and named_lanes >= config.max_named_lanes:
        return Refusal(
            400,
            "websocket_stream_limit_reached",
            f"This connection already uses {config.max_named_lanes} stream ids.",
            param="stream_id",
        )
    if config.strict_single_flight and lane_busy:
        return Refusal(
            409,
            "response_already_in_flight",
            "A response is already in flight on this lane; wait for its terminal event.",
        )
    if held and held + size > config.max_request_bytes:
        return Refusal(
            429,
            "too_many_queued_requests",
            f"This connection already holds {held} bytes of requests and this one has "
            f"{size} (limit {config.max_request_bytes}); wait for a response to finish.",
        )
    return None


def check_continuation(previous: str, parent: CachedResponse | None) -> Refusal | None:
    """A ``previous_response_id`` must name a response the server still has, not failed."""
    if parent is None or parent.status == "failed":
        return Refusal(
            400,
            "previous_response_not_found",
            f"Previous response with id '{previous}' not found.",
            param="previous_response_id",
        )
    return None


def check_tool_outputs(
    parent: CachedResponse | None, new_input: list[Item], *, require_all: bool
) -> Refusal | None:
    """Every function call output must answer a call of the chain; with ``require_all``,
    every call of the parent response must be answered."""
    calls, outputs = call_ids_in(new_input)
    for call_id in sorted(outputs - calls):
        if parent is None or not parent.has_call(call_id):
            return _invalid_input(
                f"No tool call found for function call output with call_id '{call_id}'."
            )
    if require_all and parent is not None:
        missing = sorted(parent.pending_call_ids() - outputs)
        if missing:
            return _invalid_input(f"No tool output found for function call '{missing[0]}'.")
    return None


def valid_lane_id(value: str) -> bool:
    return 1 <= len(value) <= 256 and all(c in _LANE_ID_CHARS for c in value)


def _invalid_input(message: str) -> Refusal:
    return Refusal(400, "invalid_value", message, param="input")


def _param_from(text: str) -> tuple[str | None, str]:
    """``param`` and error code for a schema violation message from msgspec."""
    code = "missing_required_parameter" if "missing required field" in text else "invalid_value"
    marker = "at `$."
    start = text.find(marker)
    if start == -1:
        field = text.rsplit("`", 2)[-2] if text.count("`") >= 2 else None
        return field, code
    path = text[start + len(marker) :].split("`", 1)[0]
    return path.split("[", 1)[0].split(".", 1)[0] or None, code
