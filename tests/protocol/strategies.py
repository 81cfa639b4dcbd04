"""Hypothesis strategies for the wire protocol: JSON, items, client and server events, streams.

Every Struct strategy is declared as ``FIELDS[cls] = (required, optional)``: the required
fields are always set, each optional field is set or left ``UNSET`` independently, so an
example sets *any subset* of the optional fields. ``test_codec`` checks that these tables cover
every field of every Struct, so a field added to ``events.py`` without a strategy fails a test.

:func:`valid_streams` generates whole legal event sequences for one request
(docs/protocol.md#server-events, docs/protocol.md#the-error-event) together with the result they
must assemble into and a :class:`Tag` per event that the reordering oracle of ``test_turn`` reasons
about.
"""

from __future__ import annotations

import itertools
import json
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from hypothesis import strategies as st
from msgspec import UNSET, UnsetType

from orchestrator.core.protocol import codec
from orchestrator.core.protocol.events import (
    CLIENT_EVENT_TYPES,
    ITEM_TYPES,
    SERVER_EVENT_TYPES,
    ContentPart,
    ContentPartAdded,
    ContentPartDone,
    ErrorDetail,
    ErrorEvent,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    FunctionCallItem,
    FunctionCallOutputItem,
    HostedTool,
    IncompleteDetails,
    InputTokensDetails,
    Item,
    ItemReference,
    MessageItem,
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
    OutputTextDone,
    OutputTokensDetails,
    ReasoningConfig,
    ReasoningItem,
    ReasoningSummaryPartAdded,
    ReasoningSummaryPartDone,
    ReasoningSummaryTextDelta,
    ReasoningSummaryTextDone,
    ReasoningTextDelta,
    ReasoningTextDone,
    RefusalDelta,
    RefusalDone,
    ResponseCompleted,
    ResponseCreate,
    ResponseCreated,
    ResponseError,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseObject,
    ResponseQueued,
    ResponseSteer,
    ServerEvent,
    SteerAccepted,
    SteerFailed,
    SteerInfo,
    SteerPending,
    SummaryPart,
    Tool,
    UnknownEvent,
    UnknownItem,
    Usage,
)
from orchestrator.core.protocol.turn import RequestError, Response

T = TypeVar("T")
Strategies = Mapping[str, st.SearchStrategy[Any]]

# --------------------------------------------------------------------------------------------
# Scalars and JSON
# --------------------------------------------------------------------------------------------

# Text without surrogates: msgspec cannot encode a lone surrogate, and the decoder never
# produces one (it rejects the escape), so such strings are not part of the value space.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
short_ascii = st.text(string.ascii_letters + string.digits, min_size=1, max_size=10)
# msgspec encodes integers of 64 bits; finite floats only, because it writes NaN as null.
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
counts = st.integers(min_value=0, max_value=2**31)
floats = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | int64s | floats | texts
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
json_objects = st.dictionaries(texts, json_values, max_size=4)
string_maps = st.dictionaries(texts, texts, max_size=3)
lane_ids = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=16)
statuses = st.sampled_from(["in_progress", "completed", "incomplete", "failed", "queued"])


def ids(prefix: str) -> st.SearchStrategy[str]:
    """Identifiers shaped like the service's (``resp_…``, ``msg_…``)."""
    return short_ascii.map(lambda suffix: prefix + suffix)


def nullable(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    return st.none() | strategy


def unknown_type_names(known: frozenset[str]) -> st.SearchStrategy[str]:
    """Event or item types this version does not know (plausible names and random ones)."""
    plausible = st.sampled_from(
        [
            "response.new_thing",
            "response.web_search_call.searching",
            "response.audio.delta",
            "response.compaction.compacting",
            "web_search_call",
            "computer_call",
            "mcp_call",
            "custom_tool_call",
            "compaction",
        ]
    )
    return (plausible | texts).filter(lambda name: name not in known)


# --------------------------------------------------------------------------------------------
# Struct strategies from field tables
# --------------------------------------------------------------------------------------------

FIELDS: dict[type, tuple[Strategies, Strategies]] = {}


def structs(cls: type[T]) -> st.SearchStrategy[T]:
    """Instances of ``cls`` with its required fields and any subset of its optional ones."""
    required, optional = FIELDS[cls]

    def build(kwargs: dict[str, Any]) -> T:
        return cls(**kwargs)

    return st.fixed_dictionaries(dict(required), optional=dict(optional)).map(build)


def _define(cls: type, required: Strategies, optional: Strategies) -> None:
    FIELDS[cls] = (required, optional)


content_part_types = st.sampled_from(
    ["input_text", "output_text", "refusal", "input_image", "input_file", "summary_text"]
) | unknown_type_names(frozenset())

_define(
    ContentPart,
    {"type": content_part_types},
    {
        "text": texts,
        "annotations": st.lists(json_values, max_size=2),
        "logprobs": st.lists(json_values, max_size=2),
        "refusal": texts,
        "image_url": nullable(texts),
        "file_id": nullable(texts),
        "file_data": texts,
        "filename": texts,
        "detail": st.sampled_from(["auto", "low", "high"]),
    },
)
content_parts = st.deferred(lambda: structs(ContentPart))
contents = texts | st.lists(content_parts, max_size=3)

_define(
    MessageItem,
    {"role": st.sampled_from(["user", "system", "developer", "assistant"]), "content": contents},
    {"id": ids("msg_"), "status": statuses, "phase": st.sampled_from(["commentary", "final"])},
)
_define(
    FunctionCallItem,
    {"call_id": ids("call_"), "name": texts, "arguments": texts},
    {"id": ids("fc_"), "status": statuses, "namespace": texts, "caller": json_values},
)
_define(
    FunctionCallOutputItem,
    {"call_id": ids("call_"), "output": contents},
    {"id": ids("fco_"), "status": statuses},
)
_define(SummaryPart, {}, {"type": st.just("summary_text") | texts, "text": texts})
_define(
    ReasoningItem,
    {},
    {
        "id": ids("rs_"),
        "summary": st.lists(st.deferred(lambda: structs(SummaryPart)), max_size=2),
        "content": st.lists(json_values, max_size=2),
        "encrypted_content": nullable(texts),
        "status": statuses,
    },
)
_define(ItemReference, {"id": ids("msg_")}, {})


def _unknown_item(type_name: str, extra: dict[str, Any]) -> UnknownItem:
    return UnknownItem({"type": type_name, **{k: v for k, v in extra.items() if k != "type"}})


unknown_items = st.builds(_unknown_item, unknown_type_names(ITEM_TYPES), json_objects)
known_items: st.SearchStrategy[Item] = st.one_of(
    structs(MessageItem),
    structs(FunctionCallItem),
    structs(FunctionCallOutputItem),
    structs(ReasoningItem),
    structs(ItemReference),
)
items: st.SearchStrategy[Item] = known_items | unknown_items
item_lists = st.lists(items, max_size=4)

_define(
    Tool,
    {},
    {
        "type": st.just("function"),
        "name": texts,
        "description": nullable(texts),
        "parameters": nullable(json_objects),
        "strict": nullable(st.booleans()),
    },
)
# Any other tool type is a hosted tool, kept verbatim whatever its fields.
hosted_tools = st.builds(
    lambda kind, fields: HostedTool({**fields, "type": kind}),
    st.sampled_from(["web_search", "file_search", "mcp", "code_interpreter"])
    | texts.filter(lambda t: t != "function"),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)
tools = st.deferred(lambda: structs(Tool) | hosted_tools)
_define(
    ReasoningConfig,
    {},
    {
        "effort": nullable(st.sampled_from(["low", "medium", "high"])),
        "summary": nullable(st.sampled_from(["auto", "concise", "detailed"])),
    },
)

# --------------------------------------------------------------------------------------------
# Client events (docs/protocol.md#client-events)
# --------------------------------------------------------------------------------------------

tool_choices = st.sampled_from(["auto", "none", "required"]) | st.fixed_dictionaries(
    {"type": st.just("function"), "name": texts}
)

_define(
    ResponseCreate,
    {},
    {
        "model": texts,
        "input": texts | item_lists,
        "instructions": nullable(texts),
        "tools": st.lists(tools, max_size=2),
        "tool_choice": tool_choices,
        "parallel_tool_calls": nullable(st.booleans()),
        "previous_response_id": nullable(ids("resp_")),
        "store": nullable(st.booleans()),
        "generate": st.booleans(),
        "stream_id": lane_ids,
        "metadata": nullable(string_maps),
        "include": nullable(st.lists(texts, max_size=2)),
        "reasoning": nullable(structs(ReasoningConfig)),
        "text": nullable(json_objects),
        "max_output_tokens": nullable(counts),
        "temperature": nullable(floats),
        "top_p": nullable(floats),
        "truncation": nullable(st.sampled_from(["auto", "disabled"])),
        "top_logprobs": nullable(counts),
        "max_tool_calls": nullable(counts),
        "prompt_cache_key": nullable(texts),
        "prompt_cache_options": nullable(json_objects),
        "prompt_cache_retention": nullable(texts),
        "safety_identifier": nullable(texts),
        "user": nullable(texts),
        "service_tier": nullable(texts),
        "context_management": nullable(st.lists(json_objects, max_size=2)),
        "conversation": nullable(texts | json_objects),
        "stream": nullable(st.booleans()),
        "stream_options": nullable(json_objects),
        "background": nullable(st.booleans()),
    },
)
_define(
    ResponseSteer,
    {"previous_response_id": ids("resp_"), "input": texts | item_lists},
    {},
)
client_events = structs(ResponseCreate) | structs(ResponseSteer)


def unknown_events(known: frozenset[str]) -> st.SearchStrategy[UnknownEvent]:
    """Events of a type outside ``known``, with arbitrary other fields."""

    def build(type_name: str, extra: dict[str, Any]) -> UnknownEvent:
        data = {"type": type_name, **{k: v for k, v in extra.items() if k != "type"}}
        return UnknownEvent(type_name, data)

    return st.builds(build, unknown_type_names(known), json_objects)


# --------------------------------------------------------------------------------------------
# The response object and server events (docs/protocol.md#server-events, docs/protocol.md#errors)
# --------------------------------------------------------------------------------------------

_define(InputTokensDetails, {}, {"cached_tokens": counts, "cache_write_tokens": counts})
_define(OutputTokensDetails, {}, {"reasoning_tokens": counts})
_define(
    Usage,
    {},
    {
        "input_tokens": counts,
        "input_tokens_details": structs(InputTokensDetails),
        "output_tokens": counts,
        "output_tokens_details": structs(OutputTokensDetails),
        "total_tokens": counts,
    },
)
usages = st.deferred(lambda: structs(Usage))
_define(
    ResponseError,
    {},
    {"code": nullable(texts), "message": texts, "type": texts, "param": nullable(texts)},
)
_define(
    IncompleteDetails,
    {},
    {"reason": nullable(st.sampled_from(["max_output_tokens", "content_filter", "steered"]))},
)
_define(
    ResponseObject,
    {"id": ids("resp_"), "created_at": floats, "status": statuses, "model": texts},
    {
        "object": st.just("response"),
        "output": item_lists.map(codec.raw),
        "tools": st.lists(tools, max_size=2).map(codec.raw),
        "tool_choice": json_values,
        "parallel_tool_calls": st.booleans(),
        "completed_at": nullable(floats),
        "error": nullable(st.deferred(lambda: structs(ResponseError))),
        "incomplete_details": nullable(st.deferred(lambda: structs(IncompleteDetails))),
        "instructions": json_values,
        "previous_response_id": nullable(ids("resp_")),
        "metadata": nullable(string_maps),
        "usage": nullable(usages),
        "store": st.booleans(),
        "temperature": nullable(floats),
        "top_p": nullable(floats),
        "max_output_tokens": nullable(counts),
        "max_tool_calls": nullable(counts),
        "reasoning": nullable(structs(ReasoningConfig)),
        "text": nullable(json_objects),
        "truncation": nullable(texts),
        "service_tier": nullable(texts),
        "prompt_cache_key": nullable(texts),
        "safety_identifier": nullable(texts),
        "user": nullable(texts),
        "background": nullable(st.booleans()),
        "top_logprobs": nullable(counts),
    },
)
response_objects = st.deferred(lambda: structs(ResponseObject))

_LANE: Strategies = {"stream_id": lane_ids}
_SEQ: Strategies = {"sequence_number": counts}
_ADDRESS: Strategies = {**_SEQ, "item_id": ids("msg_"), "output_index": counts}
_CONTENT: Strategies = {**_ADDRESS, "content_index": counts}
_SUMMARY: Strategies = {**_ADDRESS, "summary_index": counts}

for _lifecycle_cls in (
    ResponseCreated,
    ResponseInProgress,
    ResponseQueued,
    ResponseCompleted,
    ResponseFailed,
    ResponseIncomplete,
):
    _define(_lifecycle_cls, {**_SEQ, "response": response_objects}, _LANE)
for _item_event in (OutputItemAdded, OutputItemDone):
    _define(
        _item_event,
        {**_SEQ, "output_index": counts, "item": items.map(codec.raw)},
        _LANE,
    )
for _part_event in (ContentPartAdded, ContentPartDone):
    _define(_part_event, {**_CONTENT, "part": content_parts}, _LANE)
_logprobs: Strategies = {"logprobs": st.lists(json_values, max_size=2)}
_define(OutputTextDelta, {**_CONTENT, "delta": texts}, {**_LANE, **_logprobs})
_define(OutputTextDone, {**_CONTENT, "text": texts}, {**_LANE, **_logprobs})
_define(RefusalDelta, {**_CONTENT, "delta": texts}, _LANE)
_define(RefusalDone, {**_CONTENT, "refusal": texts}, _LANE)
_define(FunctionCallArgumentsDelta, {**_ADDRESS, "delta": texts}, _LANE)
_define(FunctionCallArgumentsDone, {**_ADDRESS, "arguments": texts}, {**_LANE, "name": texts})
_summary_parts = st.deferred(lambda: structs(SummaryPart))
_define(ReasoningSummaryPartAdded, {**_SUMMARY, "part": _summary_parts}, _LANE)
_define(ReasoningSummaryPartDone, {**_SUMMARY, "part": _summary_parts}, _LANE)
_define(ReasoningSummaryTextDelta, {**_SUMMARY, "delta": texts}, _LANE)
_define(ReasoningSummaryTextDone, {**_SUMMARY, "text": texts}, _LANE)
_define(ReasoningTextDelta, {**_CONTENT, "delta": texts}, _LANE)
_define(ReasoningTextDone, {**_CONTENT, "text": texts}, _LANE)
_define(
    SteerInfo,
    {},
    {"id": ids("steer_"), "previous_response_id": ids("resp_"), "input": json_values},
)
_steer_infos = st.deferred(lambda: structs(SteerInfo))
_define(SteerAccepted, {"steer": _steer_infos}, {**_LANE, **_SEQ})
_define(
    SteerPending,
    {"steer": _steer_infos, "reason": texts},
    {**_LANE, **_SEQ, "required_input": st.lists(json_objects, max_size=2)},
)
_define(
    ErrorDetail,
    {},
    {
        "message": texts,
        "type": nullable(texts),
        "code": nullable(texts),
        "param": nullable(texts),
        "headers": string_maps,
    },
)
error_details = st.deferred(lambda: structs(ErrorDetail))
_define(SteerFailed, {"error": error_details, "steer": _steer_infos}, {**_LANE, **_SEQ})
_define(
    ErrorEvent,
    {},
    {
        **_LANE,
        **_SEQ,
        "error": error_details,
        "status": nullable(st.integers(100, 599)),
        "code": nullable(texts),
        "message": texts,
        "param": nullable(texts),
        "status_code": st.integers(100, 599),
        "headers": string_maps,
    },
)

SERVER_EVENT_CLASSES: tuple[type[ServerEvent], ...] = tuple(
    cls for cls in FIELDS if issubclass(cls, ServerEvent)
)
server_events: st.SearchStrategy[ServerEvent] = st.one_of(
    [structs(cls) for cls in SERVER_EVENT_CLASSES]
)
unknown_server_events = unknown_events(SERVER_EVENT_TYPES)
unknown_client_events = unknown_events(CLIENT_EVENT_TYPES)

# --------------------------------------------------------------------------------------------
# Valid streams of one request
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tag:
    """What an event is, for the reordering oracle.

    ``kind`` is one of ``created``, ``lifecycle`` (in_progress/queued), ``added``, ``content``
    (any delta/done/part event addressed to an output item), ``done`` (output_item.done),
    ``terminal`` (completed/failed/incomplete), ``error``, ``steer`` and ``unknown``.
    ``index`` is the ``output_index`` for the item events (added, content, done).
    """

    kind: str
    index: int | None = None


Event = ServerEvent | UnknownEvent
# Builds an event from (output_index, sequence_number, stream_id), known only at the end.
Build = Callable[[int, int, str | UnsetType], Event]


@dataclass(frozen=True)
class Template:
    kind: str
    number: int | None  # which item of the stream, for item events
    build: Build


@dataclass(frozen=True)
class Stream:
    """A legal event sequence for one request and what it must assemble into."""

    events: tuple[Event, ...]
    tags: tuple[Tag, ...]
    stream_id: str | None
    expected: Response | RequestError
    # Concatenated text deltas of the message items that end up in the output, in output
    # order: what ``Response.text`` must equal.
    text: str


@dataclass(frozen=True)
class _Script:
    """The events of one output item, before its output_index is known."""

    templates: tuple[Template, ...]
    done_item: Item
    text: str


def _lane(value: str | None) -> str | UnsetType:
    return UNSET if value is None else value


def _event(cls: Callable[..., ServerEvent], **fields: Any) -> Build:
    """An item event of class ``cls``; index, sequence number and lane are filled in later."""

    def build(index: int, sequence: int, lane: str | UnsetType) -> Event:
        return cls(sequence_number=sequence, output_index=index, stream_id=lane, **fields)

    return build


def _unknown_event(
    type_name: str, sequence: int | UnsetType, lane: str | UnsetType, extra: dict[str, Any]
) -> UnknownEvent:
    data: dict[str, Any] = {"type": type_name}
    if not isinstance(sequence, UnsetType):
        data["sequence_number"] = sequence
    if not isinstance(lane, UnsetType):
        data["stream_id"] = lane
    data.update(extra)
    return UnknownEvent(type_name, data)


def _chunks(draw: st.DrawFn, whole: str) -> list[str]:
    """Split ``whole`` into delta pieces at drawn positions (some may be empty)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(whole)), max_size=4)))
    return [whole[a:b] for a, b in itertools.pairwise([0, *cuts, len(whole)])]


def _message_script(draw: st.DrawFn, number: int) -> _Script:
    """An assistant message: output_text parts (and sometimes a refusal) streamed as deltas."""
    item_id = f"msg_{number}_" + draw(short_ascii)
    phase = draw(st.just(UNSET) | st.sampled_from(["commentary", "final_answer"]))
    with_part_events = draw(st.booleans())
    added = MessageItem(id=item_id, role="assistant", status="in_progress", content=[], phase=phase)
    templates = [Template("added", number, _event(OutputItemAdded, item=codec.raw(added)))]

    def content(cls: Callable[..., ServerEvent], **fields: Any) -> None:
        templates.append(Template("content", number, _event(cls, item_id=item_id, **fields)))

    parts: list[ContentPart] = []
    text = ""
    for content_index in range(draw(st.integers(1, 2))):
        refusal = draw(st.integers(0, 4)) == 0
        whole = draw(texts)
        if refusal:
            empty, final = (
                ContentPart(type="refusal", refusal=""),
                ContentPart(type="refusal", refusal=whole),
            )
        else:
            empty, final = ContentPart.output_text(""), ContentPart.output_text(whole)
            text += whole
        parts.append(final)
        if with_part_events:
            content(ContentPartAdded, content_index=content_index, part=empty)
        for piece in _chunks(draw, whole):
            delta_cls = RefusalDelta if refusal else OutputTextDelta
            content(delta_cls, content_index=content_index, delta=piece)
        if refusal:
            content(RefusalDone, content_index=content_index, refusal=whole)
        else:
            content(OutputTextDone, content_index=content_index, text=whole)
        if with_part_events:
            content(ContentPartDone, content_index=content_index, part=final)
    done = MessageItem(id=item_id, role="assistant", status="completed", content=parts, phase=phase)
    templates.append(Template("done", number, _event(OutputItemDone, item=codec.raw(done))))
    return _Script(tuple(templates), done, text)


def _function_call_script(draw: st.DrawFn, number: int) -> _Script:
    """A function call whose JSON arguments arrive as deltas
    (docs/protocol.md#a-function-call-answer)."""
    item_id = f"fc_{number}_" + draw(short_ascii)
    call_id = f"call_{number}_" + draw(short_ascii)
    name = draw(short_ascii)
    arguments = codec.encode_text(draw(json_objects))
    added = FunctionCallItem(
        id=item_id, call_id=call_id, name=name, arguments="", status="in_progress"
    )
    templates = [Template("added", number, _event(OutputItemAdded, item=codec.raw(added)))]
    for piece in _chunks(draw, arguments):
        templates.append(
            Template(
                "content", number, _event(FunctionCallArgumentsDelta, item_id=item_id, delta=piece)
            )
        )
    done_name = draw(st.just(name) | st.just(UNSET))
    templates.append(
        Template(
            "content",
            number,
            _event(FunctionCallArgumentsDone, item_id=item_id, arguments=arguments, name=done_name),
        )
    )
    done = FunctionCallItem(
        id=item_id, call_id=call_id, name=name, arguments=arguments, status="completed"
    )
    templates.append(Template("done", number, _event(OutputItemDone, item=codec.raw(done))))
    return _Script(tuple(templates), done, "")


def _reasoning_script(draw: st.DrawFn, number: int) -> _Script:
    """A reasoning item with summary parts and, sometimes, reasoning text."""
    item_id = f"rs_{number}_" + draw(short_ascii)
    templates = [
        Template(
            "added", number, _event(OutputItemAdded, item=codec.raw(ReasoningItem(id=item_id)))
        )
    ]

    def content(cls: Callable[..., ServerEvent], **fields: Any) -> None:
        templates.append(Template("content", number, _event(cls, item_id=item_id, **fields)))

    summary: list[SummaryPart] = []
    for summary_index in range(draw(st.integers(0, 2))):
        whole = draw(texts)
        summary.append(SummaryPart(text=whole))
        content(ReasoningSummaryPartAdded, summary_index=summary_index, part=SummaryPart())
        for piece in _chunks(draw, whole):
            content(ReasoningSummaryTextDelta, summary_index=summary_index, delta=piece)
        content(ReasoningSummaryTextDone, summary_index=summary_index, text=whole)
        content(ReasoningSummaryPartDone, summary_index=summary_index, part=SummaryPart(text=whole))
    reasoning_content: list[Any] | UnsetType = UNSET
    if draw(st.booleans()):
        whole = draw(texts)
        reasoning_content = [{"type": "reasoning_text", "text": whole}]
        for piece in _chunks(draw, whole):
            content(ReasoningTextDelta, content_index=0, delta=piece)
        content(ReasoningTextDone, content_index=0, text=whole)
    encrypted = draw(st.just(UNSET) | short_ascii)
    done = ReasoningItem(
        id=item_id, summary=summary, content=reasoning_content, encrypted_content=encrypted
    )
    templates.append(Template("done", number, _event(OutputItemDone, item=codec.raw(done))))
    return _Script(tuple(templates), done, "")


def _unknown_item_script(draw: st.DrawFn, number: int) -> _Script:
    """A built-in tool call this version does not model (``web_search_call``)."""
    item_id = f"ws_{number}_" + draw(short_ascii)
    added = UnknownItem({"type": "web_search_call", "id": item_id, "status": "in_progress"})
    done = UnknownItem(
        {
            "type": "web_search_call",
            "id": item_id,
            "status": "completed",
            "action": {"type": "search", "query": draw(texts)},
        }
    )
    templates = [Template("added", number, _event(OutputItemAdded, item=codec.raw(added)))]
    for phase in draw(st.lists(st.sampled_from(["in_progress", "searching"]), max_size=2)):
        # Its progress events are unknown *event* types too: ignored, never checked.
        templates.append(
            Template("unknown", number, _progress(f"response.web_search_call.{phase}", item_id))
        )
    templates.append(Template("done", number, _event(OutputItemDone, item=codec.raw(done))))
    return _Script(tuple(templates), done, "")


def _progress(type_name: str, item_id: str) -> Build:
    def build(index: int, sequence: int, lane: str | UnsetType) -> Event:
        return _unknown_event(
            type_name, sequence, lane, {"output_index": index, "item_id": item_id}
        )

    return build


_SCRIPTS: dict[str, Callable[[st.DrawFn, int], _Script]] = {
    "message": _message_script,
    "function_call": _function_call_script,
    "reasoning": _reasoning_script,
    "web_search_call": _unknown_item_script,
}
_ITEM_KINDS = frozenset({"added", "content", "done"})
OUTCOMES = ("completed", "failed", "incomplete", "error_before", "error_after")


def _error_event(draw: st.DrawFn, sequence: int | UnsetType, lane: str | None) -> ErrorEvent:
    """An ``error`` event in the nested shape (docs/protocol.md#the-error-event), the legacy
    flat one, or the gateways' shape whose ``error`` is only the message."""
    code = draw(nullable(st.sampled_from(["previous_response_not_found", "server_error"])))
    message = draw(texts)
    param = draw(nullable(st.sampled_from(["previous_response_id", "input"])))
    headers: dict[str, str] | UnsetType = draw(
        st.just(UNSET)
        | st.fixed_dictionaries(
            {"Retry-After": st.sampled_from(["0", "1.5", "20", "soon", "-3"])},
            optional={"x-request-id": short_ascii},
        )
    )
    status = draw(st.sampled_from([400, 404, 429, 500]))
    # A request-scoped error on a named lane echoes it; a connection-scoped one carries none.
    stream_id = UNSET if lane is None else draw(st.just(lane) | st.just(UNSET))
    shape = draw(st.sampled_from(["nested", "flat", "string"]))
    if shape == "nested":
        error_type = draw(st.just(UNSET) | st.just("invalid_request_error"))
        detail = ErrorDetail(
            message=message, type=error_type, code=code, param=param, headers=headers
        )
        return ErrorEvent(
            error=detail, status=status, sequence_number=sequence, stream_id=stream_id
        )
    return ErrorEvent(
        error=message if shape == "string" else UNSET,
        code=code,
        message=UNSET if shape == "string" else message,
        param=param,
        status_code=status,
        headers=headers,
        sequence_number=sequence,
        stream_id=stream_id,
    )


def expected_request_error(event: ErrorEvent, response_id: str | None) -> RequestError:
    """What an error event must become, spelled out independently of ``from_event``.

    Only for events that carry their headers in one place (nested or top level).
    """
    nested = event.error if isinstance(event.error, ErrorDetail) else None
    if nested is not None:
        headers, param, code = nested.headers, nested.param, nested.code
        message, error_type, status = nested.message, nested.type, event.status
    else:
        headers, param, code = event.headers, event.param, event.code
        if isinstance(event.error, str):
            message = event.error
        else:
            message = event.message if isinstance(event.message, str) else ""
        error_type, status = UNSET, event.status_code
    if isinstance(headers, UnsetType):
        headers = event.headers if isinstance(event.headers, dict) else {}
    return RequestError(
        code=code if isinstance(code, str) else None,
        message=message,
        status=status if isinstance(status, int) else None,
        param=param if isinstance(param, str) else None,
        error_type=error_type if isinstance(error_type, str) else None,
        headers={key.lower(): value for key, value in headers.items()},
        response_id=response_id,
    )


def _merge(draw: st.DrawFn, scripts: list[_Script], interleave: bool) -> list[Template]:
    """The item events in one order: item after item, or interleaved
    (docs/protocol.md#event-order-rules allows it)."""
    if not interleave:
        return [template for script in scripts for template in script.templates]
    queues = [list(script.templates) for script in scripts]
    merged: list[Template] = []
    while any(queues):
        active = [queue for queue in queues if queue]
        queue = active[draw(st.integers(0, len(active) - 1))]
        merged.append(queue.pop(0))
    return merged


def _lifecycle(kind: str, cls: Callable[..., ServerEvent], response: ResponseObject) -> Template:
    def build(index: int, sequence: int, lane: str | UnsetType) -> Event:
        return cls(sequence_number=sequence, response=response, stream_id=lane)

    return Template(kind, None, build)


def _extra(kind: str, response_id: str) -> Template:
    def build(index: int, sequence: int, lane: str | UnsetType) -> Event:
        if kind == "unknown":
            return _unknown_event("response.new_thing", sequence, lane, {"x": 1})
        steer = SteerInfo(id="steer_1", previous_response_id=response_id)
        return SteerAccepted(sequence_number=sequence, steer=steer, stream_id=lane)

    return Template(kind, None, build)


@st.composite
def valid_streams(
    draw: st.DrawFn,
    outcomes: tuple[str, ...] = OUTCOMES,
    max_items: int = 3,
    extras: bool = True,
) -> Stream:
    """A legal stream for one request, and what it assembles into.

    ``response.created`` (sequence 0), usually ``response.in_progress``, then 0..``max_items``
    output items (messages with text or refusal deltas, function calls with argument deltas,
    reasoning items, an unknown ``web_search_call``), one after the other or interleaved, and
    a terminal event whose ``output`` lists the finished items in output order (or omits
    them, so the assembler must rebuild it). ``failed``/``incomplete``/``error_after`` may cut
    the items short. ``error_before`` is an ``error`` event without ``response.created``.
    With ``extras``, unknown events and steering outcomes are sprinkled in where legal.
    Sequence numbers count every event that carries one, from 0, in stream order, and output
    indices follow the order of the ``output_item.added`` events.
    """
    lane = draw(st.none() | lane_ids)
    lane_value = _lane(lane)
    outcome = draw(st.sampled_from(outcomes))
    response_id = draw(ids("resp_"))
    model = draw(short_ascii)
    created_at = float(draw(st.integers(1_700_000_000, 1_900_000_000)))
    previous = draw(nullable(ids("resp_")))

    def response(status: str, **fields: Any) -> ResponseObject:
        return ResponseObject(
            id=response_id,
            created_at=created_at,
            status=status,
            model=model,
            previous_response_id=previous,
            **fields,
        )

    if outcome == "error_before":
        error = _error_event(draw, UNSET, lane)
        unknown = draw(st.booleans())
        events: list[Event] = [
            _unknown_event("response.new_thing", UNSET, lane_value, {})
        ] * unknown
        tags = [Tag("unknown")] * unknown
        events.append(error)
        tags.append(Tag("error"))
        return Stream(tuple(events), tuple(tags), lane, expected_request_error(error, None), "")

    kinds = draw(st.lists(st.sampled_from(list(_SCRIPTS)), max_size=max_items))
    scripts = [_SCRIPTS[kind](draw, number) for number, kind in enumerate(kinds)]
    body = _merge(draw, scripts, interleave=draw(st.booleans()))
    if outcome != "completed":
        body = body[: draw(st.integers(0, len(body)))]
    head = [_lifecycle("created", ResponseCreated, response("in_progress"))]
    if draw(st.integers(0, 4)) > 0:
        head.append(_lifecycle("lifecycle", ResponseInProgress, response("in_progress")))
    body = head + body
    if extras:
        for _ in range(draw(st.integers(0, 2))):
            # Unknown events are ignored wherever they are; steering outcomes concern another
            # request but take numbers from this response's sequence
            # (docs/protocol.md#sequence-numbers-and-lanes, docs/protocol.md#steering).
            kind = draw(st.sampled_from(["unknown", "steer"]))
            position = draw(st.integers(0 if kind == "unknown" else 1, len(body)))
            body.insert(position, _extra(kind, response_id))

    index_of: dict[int, int] = {}
    for template in body:
        if template.kind == "added" and template.number is not None:
            index_of[template.number] = len(index_of)
    finished = sorted(
        (index_of[t.number], t.number) for t in body if t.kind == "done" and t.number is not None
    )
    output = [scripts[number].done_item for _index, number in finished]
    text = "".join(scripts[number].text for _index, number in finished)

    events = []
    tags = []
    for sequence, template in enumerate(body):
        index = 0 if template.number is None else index_of[template.number]
        events.append(template.build(index, sequence, lane_value))
        tags.append(Tag(template.kind, index if template.kind in _ITEM_KINDS else None))
    sequence = len(body)

    if outcome == "error_after":
        error = _error_event(draw, sequence, lane)
        events.append(error)
        tags.append(Tag("error"))
        return Stream(
            tuple(events), tuple(tags), lane, expected_request_error(error, response_id), text
        )

    # The terminal output lists the finished items, or is left out (missing, null, []) so the
    # assembler has to rebuild it from output_item.done (docs/protocol.md#event-order-rules,
    # rule 6).
    fields: dict[str, Any] = {}
    how = draw(st.sampled_from(["listed", "listed", "missing", "null", "empty"]))
    if how != "missing":
        fields["output"] = {
            "listed": codec.raw(output),
            "null": msgspec.Raw(b"null"),
            "empty": msgspec.Raw(b"[]"),
        }[how]
    fields["usage"] = draw(usages) if outcome == "completed" else draw(nullable(usages))
    terminal_cls: Callable[..., ServerEvent]
    if outcome == "completed":
        terminal_cls = ResponseCompleted
        fields["completed_at"] = created_at + 1
    elif outcome == "failed":
        terminal_cls = ResponseFailed
        fields["error"] = ResponseError(code="server_error", message=draw(texts))
    else:
        terminal_cls = ResponseIncomplete
        fields["incomplete_details"] = IncompleteDetails(reason="max_output_tokens")
    final = response(outcome, **fields)
    events.append(terminal_cls(sequence_number=sequence, response=final, stream_id=lane_value))
    tags.append(Tag("terminal"))
    expected = Response(
        id=response_id,
        status=outcome,
        model=model,
        output=tuple(output),
        usage=final.usage,
        error=final.error,
        incomplete_details=final.incomplete_details,
        previous_response_id=previous,
        created_at=created_at,
        event_count=len(events),
    )
    return Stream(tuple(events), tuple(tags), lane, expected, text)


# --------------------------------------------------------------------------------------------
# Hostile frames: structured mutations of valid ones (docs/recovery.md#malformed-and-unknown-events,
# docs/faults.md#decoder-fuzzing)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """JSON text spliced into a frame as is (``NaN``, a 5000-digit integer...)."""

    text: str


@dataclass(frozen=True)
class Pairs:
    """A JSON object written from a list of pairs, so that a key may repeat."""

    pairs: tuple[tuple[str, Any], ...]


def dump(value: Any, *, ascii_only: bool = False, trailing_comma: bool = False) -> str:
    """Serialise a tree that may hold :class:`Token` and :class:`Pairs` nodes.

    ``ascii_only`` writes non-ASCII text as ``\\u`` escapes (lone surrogates included);
    ``trailing_comma`` ends every non-empty object and array with a comma.
    """

    def write(node: Any) -> str:
        if isinstance(node, Token):
            return node.text
        if isinstance(node, Pairs | dict):
            pairs = node.pairs if isinstance(node, Pairs) else tuple(node.items())
            body = ",".join(f"{write(key)}:{write(item)}" for key, item in pairs)
            return "{" + body + ("," if trailing_comma and pairs else "") + "}"
        if isinstance(node, list):
            body = ",".join(write(item) for item in node)
            return "[" + body + ("," if trailing_comma and node else "") + "]"
        return json.dumps(node, ensure_ascii=ascii_only, allow_nan=False)

    return write(value)


Path = tuple[str | int, ...]


def paths(tree: Any, prefix: Path = ()) -> list[Path]:
    """Every position in a JSON tree, the root included."""
    found = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            found.extend(paths(value, (*prefix, key)))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found.extend(paths(value, (*prefix, index)))
    return found


def replace_at(tree: Any, path: Path, new: Any) -> Any:
    """A copy of ``tree`` with the value at ``path`` replaced by ``new``."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {
            key: replace_at(value, rest, new) if key == head else value
            for key, value in tree.items()
        }
    return [
        replace_at(value, rest, new) if index == head else value for index, value in enumerate(tree)
    ]


def get_at(tree: Any, path: Path) -> Any:
    for step in path:
        tree = tree[step]
    return tree


def _nested(depth: int, leaf: str, kind: str) -> Token:
    if kind == "list":
        return Token("[" * depth + leaf + "]" * depth)
    return Token('{"a":' * depth + leaf + "}" * depth)


def wire_trees(events: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The generic JSON tree of what ``events`` encode to."""
    return events.map(lambda value: msgspec.json.decode(codec.encode(value)))


def _stream_event(stream: Stream) -> st.SearchStrategy[Event]:
    return st.sampled_from(stream.events)


# Valid frames of every kind the decoders see: server events (random and from real-shaped
# streams), client events, single items and item lists.
valid_frames: st.SearchStrategy[Any] = wire_trees(
    st.one_of(
        server_events,
        valid_streams(extras=False).flatmap(_stream_event),
        client_events,
        items,
        item_lists,
    )
)

INVALID_UTF8 = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\x80")
NON_JSON_NUMBERS = ("NaN", "-NaN", "Infinity", "-Infinity", "+1", "01", ".5", "1.", "0x10")


@dataclass(frozen=True)
class Mutant:
    """A mutated frame. ``must_fail``: no decoder may accept it.

    ``depth`` is the nesting added by a ``deep`` mutation. msgspec raises RecursionError once
    nesting exceeds what is left of the interpreter's recursion limit, so whether a given
    depth fails depends on ``sys.getrecursionlimit()`` at decode time (Hypothesis raises it
    while a test runs); such a mutant has ``must_fail`` False and the test decides.
    """

    kind: str
    data: bytes | str
    must_fail: bool
    depth: int = 0


@st.composite
def mutants(draw: st.DrawFn, trees: st.SearchStrategy[Any] = valid_frames) -> Mutant:
    """A valid frame with one structured defect (the defects of docs/faults.md#decoder-fuzzing), as
    bytes or as text."""
    tree = draw(trees)
    kind = draw(
        st.sampled_from(
            [
                "drop_key",
                "retype",
                "truncate",
                "deep",
                "invalid_utf8",
                "lone_surrogate",
                "escaped_surrogate",
                "non_json_number",
                "huge_integer",
                "trailing_comma",
                "duplicate_key",
                "rename_type",
            ]
        )
    )
    position = draw(st.sampled_from(paths(tree)))
    dict_paths = [p for p in paths(tree) if isinstance(get_at(tree, p), dict) and get_at(tree, p)]
    string_paths = [p for p in paths(tree) if isinstance(get_at(tree, p), str)]

    if kind == "drop_key" and dict_paths:
        where = draw(st.sampled_from(dict_paths))
        target = get_at(tree, where)
        key = draw(st.sampled_from(sorted(target)))
        smaller = {k: v for k, v in target.items() if k != key}
        return Mutant(kind, dump(replace_at(tree, where, smaller)).encode(), must_fail=False)
    if kind == "retype":
        new = draw(json_values.filter(lambda v: type(v) is not type(get_at(tree, position))))
        return Mutant(kind, dump(replace_at(tree, position, new)).encode(), must_fail=False)
    if kind == "truncate":
        # A strict prefix of a compact JSON object or array is never a JSON document.
        text = dump(tree).encode()
        cut = draw(st.integers(0, len(text) - 1))
        return Mutant(kind, text[:cut], must_fail=True)
    if kind == "deep":
        # msgspec recurses once per level (and the interpreter's default limit is 1000).
        depth = draw(st.integers(1000, 50_000))
        shape = draw(st.sampled_from(["list", "object"]))
        leaf = draw(st.sampled_from(["1", '"x"', "null", "[]", "{}"]))
        deep = _nested(depth, leaf, shape)
        return Mutant(kind, dump(replace_at(tree, position, deep)).encode(), False, depth)
    if kind == "invalid_utf8":
        text = dump(tree).encode()
        cut = draw(st.integers(0, len(text)))
        bad = draw(st.sampled_from(INVALID_UTF8))
        return Mutant(kind, text[:cut] + bad + text[cut:], must_fail=True)
    if kind == "lone_surrogate" and string_paths:
        # A str frame holding a lone surrogate cannot even be turned into UTF-8.
        where = draw(st.sampled_from(string_paths))
        old = get_at(tree, where)
        cut = draw(st.integers(0, len(old)))
        surrogate = chr(draw(st.integers(0xD800, 0xDFFF)))
        new = old[:cut] + surrogate + old[cut:]
        as_text = dump(replace_at(tree, where, new))
        return Mutant(kind, as_text, must_fail=True)
    if kind == "escaped_surrogate" and string_paths:
        # ``"\ud800"`` escapes are valid JSON syntax but not a Unicode string.
        where = draw(st.sampled_from(string_paths))
        surrogate = chr(draw(st.integers(0xD800, 0xDFFF)))
        new = get_at(tree, where) + surrogate
        return Mutant(kind, dump(replace_at(tree, where, new), ascii_only=True).encode(), True)
    if kind == "non_json_number":
        token = Token(draw(st.sampled_from(NON_JSON_NUMBERS)))
        return Mutant(kind, dump(replace_at(tree, position, token)).encode(), must_fail=True)
    if kind == "huge_integer":
        digits = draw(st.integers(20, 6000))
        sign = draw(st.sampled_from(["", "-"]))
        token = Token(sign + "9" * digits)
        return Mutant(kind, dump(replace_at(tree, position, token)).encode(), must_fail=False)
    if kind == "trailing_comma" and (
        dict_paths
        or any(isinstance(get_at(tree, p), list) and get_at(tree, p) for p in paths(tree))
    ):
        return Mutant(kind, dump(tree, trailing_comma=True).encode(), must_fail=True)
    if kind == "duplicate_key" and dict_paths:
        where = draw(st.sampled_from(dict_paths))
        target = get_at(tree, where)
        key = draw(st.sampled_from(sorted(target)))
        pairs = [*target.items()]
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(json_values)))
        return Mutant(kind, dump(replace_at(tree, where, Pairs(tuple(pairs)))).encode(), False)
    if kind == "rename_type" and isinstance(tree, dict):
        known = sorted(SERVER_EVENT_TYPES | CLIENT_EVENT_TYPES | ITEM_TYPES)
        new_type = draw(st.sampled_from(known) | texts)
        return Mutant(kind, dump({**tree, "type": new_type}).encode(), must_fail=False)
    # The drawn defect does not apply to this frame (no object, no string...): send it intact.
    return Mutant("intact", dump(tree).encode(), must_fail=False)
