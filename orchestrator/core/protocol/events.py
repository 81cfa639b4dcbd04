"""Typed wire shapes of the Responses API WebSocket mode (docs/protocol.md).

Every client and server message is one JSON object tagged by ``type``. Both directions are
msgspec Structs so the hot path never builds dicts:

* Optional fields default to ``UNSET`` and ``UNSET`` is never encoded, so the encoder sends
  exactly the fields the caller set (docs/protocol.md#creating-a-response: the server applies *its*
  defaults otherwise).
* Fields the service always sends (``error: null`` in a response object) default to ``None``
  and are encoded, because the official SDK's models require the keys.
* Decoding tolerates unknown fields. Unknown event and item *types* are kept as
  :class:`UnknownEvent` / :class:`UnknownItem` by :mod:`orchestrator.core.protocol.codec`.

The same Structs serve the client (``orchestrator.core.connection``) and the embedded server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

__all__ = [
    "CLIENT_EVENT_TYPES",
    "ITEM_TYPES",
    "LIFECYCLE_EVENT_TYPES",
    "SERVER_EVENT_TYPES",
    "TERMINAL_EVENT_TYPES",
    "ClientEvent",
    "ClientItem",
    "ContentPart",
    "ContentPartAdded",
    "ContentPartDone",
    "ErrorDetail",
    "ErrorEvent",
    "FunctionCallArgumentsDelta",
    "FunctionCallArgumentsDone",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "HostedTool",
    "IncompleteDetails",
    "InputTokensDetails",
    "Item",
    "ItemReference",
    "KnownItem",
    "MessageItem",
    "OutputItemAdded",
    "OutputItemDone",
    "OutputTextDelta",
    "OutputTextDone",
    "OutputTokensDetails",
    "ReasoningConfig",
    "ReasoningItem",
    "ReasoningSummaryPartAdded",
    "ReasoningSummaryPartDone",
    "ReasoningSummaryTextDelta",
    "ReasoningSummaryTextDone",
    "ReasoningTextDelta",
    "ReasoningTextDone",
    "RefusalDelta",
    "RefusalDone",
    "ResponseCompleted",
    "ResponseCreate",
    "ResponseCreated",
    "ResponseError",
    "ResponseFailed",
    "ResponseInProgress",
    "ResponseIncomplete",
    "ResponseLifecycleEvent",
    "ResponseObject",
    "ResponseQueued",
    "ResponseSteer",
    "ServerEvent",
    "SteerAccepted",
    "SteerFailed",
    "SteerInfo",
    "SteerPending",
    "SummaryPart",
    "Tool",
    "ToolDefinition",
    "UnknownEvent",
    "UnknownItem",
    "Usage",
]


# --------------------------------------------------------------------------------------------
# Items (docs/protocol.md#input-items, docs/protocol.md#the-response-object): the same shapes travel
# as input and as output.
# --------------------------------------------------------------------------------------------


class ContentPart(Struct, frozen=True, kw_only=True):
    """One part of a message's content.

    Deliberately one permissive Struct instead of a tagged union: the part types keep growing
    (``input_text``, ``output_text``, ``refusal``, ``input_image``, ``input_file``...) and an
    unknown part must never fail a whole event.
    """

    type: str
    text: str | UnsetType = UNSET
    annotations: list[Any] | UnsetType = UNSET
    logprobs: list[Any] | UnsetType = UNSET
    refusal: str | UnsetType = UNSET
    image_url: str | UnsetType | None = UNSET
    file_id: str | UnsetType | None = UNSET
    file_data: str | UnsetType = UNSET
    filename: str | UnsetType = UNSET
    detail: str | UnsetType = UNSET

    @classmethod
    def input_text(cls, text: str) -> ContentPart:
        return cls(type="input_text", text=text)

    @classmethod
    def output_text(cls, text: str) -> ContentPart:
        return cls(type="output_text", text=text, annotations=[])


class _Item(Struct, tag_field="type", frozen=True, kw_only=True):
    """Base of the known item types; ``type`` is the tag."""


class MessageItem(_Item, tag="message", frozen=True, kw_only=True):
    """A message from the user, developer, system or (replayed) assistant."""

    role: str
    content: str | list[ContentPart]
    id: str | UnsetType = UNSET
    status: str | UnsetType = UNSET
    phase: str | UnsetType = UNSET

    @classmethod
    def user(cls, text: str) -> MessageItem:
        """A user message in the long form, ``content`` as one ``input_text`` part."""
        return cls(role="user", content=[ContentPart.input_text(text)])

    @property
    def text(self) -> str:
        """The concatenated text of the message (``input_text``/``output_text`` parts)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p.text, str))


class FunctionCallItem(_Item, tag="function_call", frozen=True, kw_only=True):
    """A call of a client-side function tool, made by the model."""

    call_id: str
    name: str
    arguments: str
    id: str | UnsetType = UNSET
    status: str | UnsetType = UNSET
    namespace: str | UnsetType = UNSET
    caller: Any | UnsetType = UNSET


class FunctionCallOutputItem(_Item, tag="function_call_output", frozen=True, kw_only=True):
    """The result of a function call, sent back by the client."""

    call_id: str
    output: str | list[ContentPart]
    id: str | UnsetType = UNSET
    status: str | UnsetType = UNSET


class SummaryPart(Struct, frozen=True, kw_only=True):
    type: str = "summary_text"
    text: str = ""


class ReasoningItem(_Item, tag="reasoning", frozen=True, kw_only=True):
    """A reasoning item; replay it only from ``output_item.done`` (docs/protocol.md#input-items)."""

    id: str | UnsetType = UNSET
    summary: list[SummaryPart] = msgspec.field(default_factory=list)
    content: list[Any] | UnsetType = UNSET
    encrypted_content: str | UnsetType | None = UNSET
    status: str | UnsetType = UNSET


class ItemReference(_Item, tag="item_reference", frozen=True, kw_only=True):
    """A pointer to a stored item (only meaningful with ``store: true``)."""

    id: str


class UnknownItem:
    """An item whose ``type`` this version does not know, kept verbatim for replay.

    ``data`` is the complete JSON object as received; the codec encodes it back unchanged.
    (A plain class on purpose: msgspec encodes attrs classes field by field, and this one
    must encode as ``data`` itself.)
    """

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnknownItem) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"UnknownItem(type={self.type!r})"

    @property
    def type(self) -> str:
        value = self.data.get("type")
        return value if isinstance(value, str) else ""


KnownItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem | ItemReference
Item = KnownItem | UnknownItem
# What a client may put in ``input``. Typed the same as Item; named for readability.
ClientItem = Item

if TYPE_CHECKING:
    _ItemList = list[Item]
else:
    # msgspec cannot decode a union of tagged Structs plus a catch-all, so decoders see only
    # the known items. Unknown item types take the codec's slow path and become UnknownItem,
    # which the codec's enc_hook encodes back verbatim.
    _ItemList = list[KnownItem]

ITEM_TYPES: Final = frozenset(
    {"message", "function_call", "function_call_output", "reasoning", "item_reference"}
)


# --------------------------------------------------------------------------------------------
# Tools and request settings (docs/protocol.md#creating-a-response, docs/protocol.md#function-tools)
# --------------------------------------------------------------------------------------------


class Tool(Struct, frozen=True, kw_only=True):
    """A function tool definition (``{"type": "function", ...}``).

    Every other tool type (the service's hosted tools: ``web_search``, ``file_search``,
    ``code_interpreter``, ``image_generation``, ``mcp``...) is a :class:`HostedTool`, kept
    verbatim: their fields keep growing and must all reach the service.
    """

    type: str = "function"
    name: str | UnsetType = UNSET
    description: str | UnsetType | None = UNSET
    parameters: dict[str, Any] | UnsetType | None = UNSET
    strict: bool | UnsetType | None = UNSET


class HostedTool:
    """A tool the service runs itself (any ``type`` but ``function``), kept verbatim.

    ``data`` is the complete JSON object; the codec encodes it back unchanged, and the
    embedded server decodes such tools into this class with every field intact. ``label``
    is what to fingerprint instead of ``data`` when ``data`` holds values taken from the
    environment (a remote MCP server's headers): a resumed job must not depend on a token
    that was rotated, and no hash of a secret is journaled. (A plain class on purpose, as
    :class:`UnknownItem`.)
    """

    __slots__ = ("data", "label")

    def __init__(self, data: dict[str, Any], *, label: dict[str, Any] | None = None) -> None:
        self.data = data
        self.label = data if label is None else label

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HostedTool) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"HostedTool(type={self.type!r})"

    @property
    def type(self) -> str:
        value = self.data.get("type")
        return value if isinstance(value, str) else ""


ToolDefinition = Tool | HostedTool

if TYPE_CHECKING:
    _ToolList = list[ToolDefinition]
else:
    # As for items: decoders see function tools only; the codec turns every other tool
    # type into a HostedTool with its fields intact.
    _ToolList = list[Tool]


def FunctionTool(
    name: str,
    parameters: dict[str, Any],
    description: str | UnsetType = UNSET,
    *,
    strict: bool | UnsetType = UNSET,
) -> Tool:
    """Build a ``{"type": "function", ...}`` tool definition."""
    return Tool(
        type="function", name=name, description=description, parameters=parameters, strict=strict
    )


class ReasoningConfig(Struct, frozen=True, kw_only=True):
    effort: str | UnsetType | None = UNSET
    summary: str | UnsetType | None = UNSET


# --------------------------------------------------------------------------------------------
# Client events (docs/protocol.md#client-events)
# --------------------------------------------------------------------------------------------


class ClientEvent(Struct, tag_field="type", frozen=True, kw_only=True):
    """Base of the two client events."""


class ResponseCreate(ClientEvent, tag="response.create", frozen=True, kw_only=True):
    """Start a response: the body of ``POST /v1/responses`` plus ``type`` and ``stream_id``.

    Every field is optional and only the fields you set are sent.
    """

    model: str | UnsetType = UNSET
    input: str | _ItemList | UnsetType = UNSET
    instructions: str | UnsetType | None = UNSET
    tools: _ToolList | UnsetType = UNSET
    tool_choice: str | dict[str, Any] | UnsetType = UNSET
    parallel_tool_calls: bool | UnsetType | None = UNSET
    previous_response_id: str | UnsetType | None = UNSET
    store: bool | UnsetType | None = UNSET
    generate: bool | UnsetType = UNSET
    stream_id: str | UnsetType = UNSET
    metadata: dict[str, str] | UnsetType | None = UNSET
    include: list[str] | UnsetType | None = UNSET
    reasoning: ReasoningConfig | UnsetType | None = UNSET
    text: dict[str, Any] | UnsetType | None = UNSET
    max_output_tokens: int | UnsetType | None = UNSET
    temperature: float | UnsetType | None = UNSET
    top_p: float | UnsetType | None = UNSET
    truncation: str | UnsetType | None = UNSET
    top_logprobs: int | UnsetType | None = UNSET
    max_tool_calls: int | UnsetType | None = UNSET
    prompt_cache_key: str | UnsetType | None = UNSET
    prompt_cache_options: dict[str, Any] | UnsetType | None = UNSET
    prompt_cache_retention: str | UnsetType | None = UNSET
    safety_identifier: str | UnsetType | None = UNSET
    user: str | UnsetType | None = UNSET
    service_tier: str | UnsetType | None = UNSET
    context_management: list[dict[str, Any]] | UnsetType | None = UNSET
    conversation: str | dict[str, Any] | UnsetType | None = UNSET
    stream: bool | UnsetType | None = UNSET
    stream_options: dict[str, Any] | UnsetType | None = UNSET
    background: bool | UnsetType | None = UNSET


class ResponseSteer(ClientEvent, tag="response.steer", frozen=True, kw_only=True):
    """Queue user input into a running response (GPT-6 family). Exactly three keys."""

    previous_response_id: str
    input: str | _ItemList


CLIENT_EVENT_TYPES: Final = frozenset({"response.create", "response.steer"})


# --------------------------------------------------------------------------------------------
# The response object (docs/protocol.md#the-response-object)
# --------------------------------------------------------------------------------------------


class InputTokensDetails(Struct, frozen=True, kw_only=True):
    cached_tokens: int = 0
    cache_write_tokens: int | UnsetType = UNSET


class OutputTokensDetails(Struct, frozen=True, kw_only=True):
    reasoning_tokens: int = 0


class Usage(Struct, frozen=True, kw_only=True):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class ResponseError(Struct, frozen=True, kw_only=True):
    """``response.error`` of a failed response."""

    code: str | None = None
    message: str = ""
    type: str | UnsetType = UNSET
    param: str | UnsetType | None = UNSET


class IncompleteDetails(Struct, frozen=True, kw_only=True):
    reason: str | None = None


_EMPTY_LIST: Final = Raw(b"[]")


class ResponseObject(Struct, frozen=True, kw_only=True):
    """The full response object carried by the lifecycle events.

    ``output`` and ``tools`` stay as raw JSON while decoding the event: lifecycle events arrive
    three times per turn and only the terminal one's output is needed
    (``codec.decode_items``). Fields that HTTP always returns default to ``None`` so the
    embedded server sends them as ``null`` like the service does.
    """

    id: str
    object: str = "response"
    created_at: float
    status: str
    model: str
    output: Raw = _EMPTY_LIST
    tools: Raw = _EMPTY_LIST
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    completed_at: float | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: Any = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    usage: Usage | None = None
    store: bool | UnsetType = UNSET
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    reasoning: ReasoningConfig | None = None
    text: dict[str, Any] | None = None
    truncation: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    user: str | None = None
    background: bool | None = None
    top_logprobs: int | None = None


# --------------------------------------------------------------------------------------------
# Server events (docs/protocol.md#server-events, docs/protocol.md#errors)
# --------------------------------------------------------------------------------------------


class ServerEvent(Struct, tag_field="type", frozen=True, kw_only=True):
    """Base of every server event. ``stream_id`` is present only on named lanes."""

    stream_id: str | UnsetType = UNSET


class ResponseLifecycleEvent(ServerEvent, frozen=True, kw_only=True):
    """An event carrying the whole response object."""

    sequence_number: int
    response: ResponseObject


class ResponseCreated(ResponseLifecycleEvent, tag="response.created", frozen=True, kw_only=True):
    pass


class ResponseInProgress(
    ResponseLifecycleEvent, tag="response.in_progress", frozen=True, kw_only=True
):
    pass


class ResponseQueued(ResponseLifecycleEvent, tag="response.queued", frozen=True, kw_only=True):
    pass


class ResponseCompleted(
    ResponseLifecycleEvent, tag="response.completed", frozen=True, kw_only=True
):
    pass


class ResponseFailed(ResponseLifecycleEvent, tag="response.failed", frozen=True, kw_only=True):
    pass


class ResponseIncomplete(
    ResponseLifecycleEvent, tag="response.incomplete", frozen=True, kw_only=True
):
    pass


class OutputItemAdded(ServerEvent, tag="response.output_item.added", frozen=True, kw_only=True):
    sequence_number: int
    output_index: int
    item: Raw


class OutputItemDone(ServerEvent, tag="response.output_item.done", frozen=True, kw_only=True):
    sequence_number: int
    output_index: int
    item: Raw


class ContentPartAdded(ServerEvent, tag="response.content_part.added", frozen=True, kw_only=True):
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart


class ContentPartDone(ServerEvent, tag="response.content_part.done", frozen=True, kw_only=True):
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: ContentPart


class OutputTextDelta(ServerEvent, tag="response.output_text.delta", frozen=True, kw_only=True):
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputTextDone(ServerEvent, tag="response.output_text.done", frozen=True, kw_only=True):
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class RefusalDelta(ServerEvent, tag="response.refusal.delta", frozen=True, kw_only=True):
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str


class RefusalDone(ServerEvent, tag="response.refusal.done", frozen=True, kw_only=True):
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    refusal: str


class FunctionCallArgumentsDelta(
    ServerEvent, tag="response.function_call_arguments.delta", frozen=True, kw_only=True
):
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDone(
    ServerEvent, tag="response.function_call_arguments.done", frozen=True, kw_only=True
):
    sequence_number: int
    item_id: str
    output_index: int
    arguments: str
    # Older API docs list ``name`` here; send it, never rely on it
    # (docs/protocol.md#a-function-call-answer).
    name: str | UnsetType = UNSET


class ReasoningSummaryPartAdded(
    ServerEvent, tag="response.reasoning_summary_part.added", frozen=True, kw_only=True
):
    sequence_number: int
    item_id: str
    output_index: int
    summary_index: int
    part: SummaryPart


class ReasoningSummaryPartDone(
    ServerEvent, tag="response.reasoning_summary_part.done", frozen=True, kw_only=True
):
    sequence_number: int
    item_id: str
    output_index: int
    summary_index: int
    part: SummaryPart


class ReasoningSummaryTextDelta(
    ServerEvent, tag="response.reasoning_summary_text.delta", frozen=True, kw_only=True
):
    sequence_number: int
    item_id: str
    output_index: int
    summary_index: int
    delta: str


class ReasoningSummaryTextDone(
    ServerEvent, tag="response.reasoning_summary_text.done", frozen=True, kw_only=True
):
    sequence_number: int
    item_id: str
    output_index: int
    summary_index: int
    text: str


class ReasoningTextDelta(
    ServerEvent, tag="response.reasoning_text.delta", frozen=True, kw_only=True
):
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningTextDone(ServerEvent, tag="response.reasoning_text.done", frozen=True, kw_only=True):
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str


class SteerInfo(Struct, frozen=True, kw_only=True):
    id: str | UnsetType = UNSET
    previous_response_id: str | UnsetType = UNSET
    input: Any | UnsetType = UNSET


class SteerAccepted(ServerEvent, tag="response.steer.accepted", frozen=True, kw_only=True):
    sequence_number: int | UnsetType = UNSET
    steer: SteerInfo


class SteerPending(ServerEvent, tag="response.steer.pending", frozen=True, kw_only=True):
    sequence_number: int | UnsetType = UNSET
    steer: SteerInfo
    reason: str
    required_input: list[dict[str, Any]] = msgspec.field(default_factory=list)


class ErrorDetail(Struct, frozen=True, kw_only=True):
    """``error`` of an ``error`` event. Clients accept missing ``type``/``code``/``param``."""

    message: str = ""
    type: str | UnsetType | None = UNSET
    code: str | UnsetType | None = UNSET
    param: str | UnsetType | None = UNSET
    headers: dict[str, str] | UnsetType = UNSET


class SteerFailed(ServerEvent, tag="response.steer.failed", frozen=True, kw_only=True):
    sequence_number: int | UnsetType = UNSET
    error: ErrorDetail
    steer: SteerInfo


class ErrorEvent(ServerEvent, tag="error", frozen=True, kw_only=True):
    """An ``error`` event (docs/protocol.md#the-error-event).

    ``error`` is the nested shape the service sends. The flat pre-2026-08 shape (``code``,
    ``message``, ``param`` at top level), an ``error`` that is only a message string (some
    HTTP gateways) and Codex's ``status_code``/``headers`` aliases are accepted too; use
    :meth:`detail` to read whichever arrived.
    """

    error: ErrorDetail | str | UnsetType = UNSET
    status: int | UnsetType | None = UNSET
    sequence_number: int | UnsetType = UNSET
    # Tolerated legacy / gateway shapes; the flat one is also the HTTP API's SSE shape, which
    # the embedded server sends over HTTP (docs/protocol.md#over-http).
    code: str | UnsetType | None = UNSET
    message: str | UnsetType = UNSET
    param: str | UnsetType | None = UNSET
    status_code: int | UnsetType = UNSET
    headers: dict[str, str] | UnsetType = UNSET

    def detail(self) -> ErrorDetail:
        """The error detail, whichever shape the server used."""
        error = self.error
        if isinstance(error, ErrorDetail):
            return error
        if isinstance(error, str):
            # {"error": "message"}: the message is nested, anything else sits at the top.
            message = error
        else:
            message = self.message if isinstance(self.message, str) else ""
        return ErrorDetail(message=message, code=self.code, param=self.param, headers=self.headers)

    @property
    def code_value(self) -> str | None:
        code = self.detail().code
        return code if isinstance(code, str) else None

    @property
    def http_status(self) -> int | None:
        if isinstance(self.status, int):
            return self.status
        if isinstance(self.status_code, int):
            return self.status_code
        return None

    @property
    def header_map(self) -> dict[str, str]:
        """Headers from ``error.headers`` or the top-level ``headers`` (Codex)."""
        merged: dict[str, str] = {}
        if isinstance(self.headers, dict):
            merged.update(self.headers)
        detail = self.detail()
        if isinstance(detail.headers, dict):
            merged.update(detail.headers)
        return {k.lower(): v for k, v in merged.items()}


class UnknownEvent:
    """A server (or client) event whose ``type`` this version does not know.

    Kept verbatim (``data`` is the whole JSON object) so that observers can still see it and
    so that it re-encodes unchanged.
    """

    __slots__ = ("data", "type")

    def __init__(self, type: str, data: dict[str, Any]) -> None:
        self.type = type
        self.data = data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnknownEvent) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"UnknownEvent(type={self.type!r})"

    @property
    def sequence_number(self) -> int | None:
        value = self.data.get("sequence_number")
        return value if type(value) is int else None

    @property
    def stream_id(self) -> str | None:
        value = self.data.get("stream_id")
        return value if isinstance(value, str) else None


ServerEventUnion = (
    ResponseCreated
    | ResponseInProgress
    | ResponseQueued
    | ResponseCompleted
    | ResponseFailed
    | ResponseIncomplete
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | OutputTextDelta
    | OutputTextDone
    | RefusalDelta
    | RefusalDone
    | FunctionCallArgumentsDelta
    | FunctionCallArgumentsDone
    | ReasoningSummaryPartAdded
    | ReasoningSummaryPartDone
    | ReasoningSummaryTextDelta
    | ReasoningSummaryTextDone
    | ReasoningTextDelta
    | ReasoningTextDone
    | SteerAccepted
    | SteerPending
    | SteerFailed
    | ErrorEvent
)

ClientEventUnion = ResponseCreate | ResponseSteer


def _tags(union: Any) -> frozenset[str]:
    return frozenset(t.__struct_config__.tag for t in union.__args__)


SERVER_EVENT_TYPES: Final = _tags(ServerEventUnion)

LIFECYCLE_EVENT_TYPES: Final = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.completed",
        "response.failed",
        "response.incomplete",
    }
)
TERMINAL_EVENT_TYPES: Final = frozenset(
    {"response.completed", "response.failed", "response.incomplete"}
)

ResponseStatus = Literal["completed", "failed", "incomplete", "in_progress", "queued", "cancelled"]
