"""ResponseWriter: a reply becomes the exact ordered event sequence
(docs/protocol.md#server-events).

The tables spell out the sequence of each kind of output item and of each ending; the
round trip sends generated replies through the writer, the codec and the client's
TurnAssembler, which must rebuild exactly the output the writer produced.
"""

# docs/faults.md#test-hygiene: asserts read ``expected == actual``, so the expected constant comes
# first.

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings, strategies as st
from msgspec import UNSET

from orchestrator.core.protocol.codec import decode_server_event, encode_text
from orchestrator.core.protocol.events import (
    ErrorEvent,
    FunctionCallItem,
    MessageItem,
    ReasoningItem,
    ResponseCreate,
    ServerEvent,
    Usage,
)
from orchestrator.core.protocol.turn import RequestError, Response, TurnAssembler
from orchestrator.core.protocol.writer import (
    DELTAS,
    DRAFT,
    Call,
    Part,
    Reasoning,
    ResponseWriter,
    Text,
    error_event,
    error_type,
    response_object,
)
from orchestrator.errors import LocalProtocolError

from .strategies import lane_ids, texts

USAGE = Usage(input_tokens=3, output_tokens=2, total_tokens=5)

ITEM_EVENTS = {
    "reasoning": [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
    ],
    "message": [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ],
    "call": [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ],
}
PARTS: dict[str, Part] = {
    "reasoning": Reasoning("Think first.", ["Think ", "first."]),
    "message": Text("Two files.", ["Two ", "files."]),
    "call": Call("lookup", '{"city":"Porto"}', ['{"city":', '"Porto"}']),
}
OPENING = ["response.created", "response.in_progress"]


class CountingIds:
    """Ids numbered in the order the writer asks for them."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self._numbers = itertools.count()

    def _next(self, prefix: str) -> str:
        value = f"{prefix}_{next(self._numbers)}"
        self.asked.append(value)
        return value

    def message(self) -> str:
        return self._next("msg")

    def function_call(self) -> str:
        return self._next("fc")

    def call(self) -> str:
        return self._next("call")

    def reasoning(self) -> str:
        return self._next("rs")


def _writer(**fields: Any) -> ResponseWriter:
    create = ResponseCreate(model="m", instructions="Be terse.")
    return ResponseWriter(
        response_object(create, "resp_1", created_at=1.0), CountingIds(), **fields
    )


def _take(writer: ResponseWriter, drafts: Any) -> list[ServerEvent]:
    return [writer.take(draft) for draft in drafts]


def _tag(event: ServerEvent) -> str:
    tag = event.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def _whole(writer: ResponseWriter, parts: list[Part]) -> list[ServerEvent]:
    events = _take(writer, writer.opening())
    events += _take(writer, writer.items(parts))
    events.append(writer.take(writer.completed(USAGE, completed_at=2.0)))
    return events


# -- the sequence, by table ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kinds",
    [["message"], ["call"], ["reasoning", "message"], ["reasoning", "message", "call", "call"]],
)
def test_items_follow_their_canonical_sequences(kinds):
    """docs/protocol.md#a-text-answer: created, in_progress, each item's own sequence in order,
    completed; the output indexes count items from 0 and the events are numbered from 0 without
    gaps."""
    writer = _writer()
    events = _whole(writer, [PARTS[kind] for kind in kinds])
    expected = OPENING + [tag for kind in kinds for tag in ITEM_EVENTS[kind]]
    assert [*expected, "response.completed"] == [_tag(event) for event in events]
    assert list(range(len(events))) == [event.sequence_number for event in events]  # type: ignore[attr-defined]
    indexes: list[int] = [getattr(e, "output_index", -1) for e in events]
    indexes = [index for index in indexes if index >= 0]
    assert sorted(indexes) == indexes
    assert list(range(len(kinds))) == sorted(set(indexes))


def test_ids_are_drawn_as_each_item_is_reached():
    """Item ids are taken from the source only when the writer reaches the item (so ids from
    one seeded source interleave across responses as their streams do)."""
    writer = _writer()
    ids = writer.ids
    assert isinstance(ids, CountingIds)
    drafts = writer.items([PARTS["message"], PARTS["call"]])
    assert [] == ids.asked
    first = next(drafts)
    assert ["msg_0"] == ids.asked
    assert b'"msg_0"' in msgspec.json.encode(writer.take(first))
    _take(writer, drafts)
    assert ["msg_0", "fc_1", "call_2"] == ids.asked


def test_deltas_are_the_paced_events():
    """DELTAS (what a latency model spaces out) are exactly the three delta event types."""
    writer = _writer()
    drafts = [*writer.opening(), *writer.items(PARTS.values())]
    paced = [_tag(draft) for draft in drafts if type(draft) in DELTAS]
    assert 6 == len(paced)
    assert {_tag(d) for d in drafts if _tag(d).endswith(".delta")} == set(paced)


def test_drafts_are_unnumbered_until_taken():
    """A draft carries DRAFT as its number and already its lane; take() returns a numbered
    copy and leaves the draft as it was."""
    writer = _writer(stream_id="lane-1")
    created, _ = writer.opening()
    assert (DRAFT, "lane-1") == (created.sequence_number, created.stream_id)
    taken = writer.take(created)
    assert (0, "lane-1", DRAFT) == (taken.sequence_number, taken.stream_id, created.sequence_number)
    assert msgspec.structs.replace(created, sequence_number=0) == taken


def test_stream_id_is_on_every_event_of_a_named_lane_only():
    """docs/protocol.md#lanes-and-limits: events of a named lane echo its stream_id; the default
    lane's carry none."""
    named = _whole(_writer(stream_id="lane-1"), [PARTS["message"]])
    default = _whole(_writer(), [PARTS["message"]])
    assert {"lane-1"} == {event.stream_id for event in named}
    assert {UNSET} == {event.stream_id for event in default}
    assert all(b"stream_id" not in msgspec.json.encode(event) for event in default)


def test_numbers_taken_outside_the_drafts_keep_the_sequence_whole():
    """A number taken for a steer answer in between is skipped by the response's events."""
    writer = _writer()
    created, in_progress = writer.opening()
    assert 0 == writer.take(created).sequence_number
    assert 1 == writer.next_sequence()
    assert 2 == writer.take(in_progress).sequence_number


def test_lifecycle_events_share_one_response_object():
    """Every lifecycle event carries response.created's object (created_at included); the
    terminal one has status, output, usage and completed_at filled in."""
    writer = _writer()
    events = _whole(writer, [PARTS["message"]])
    created, in_progress, completed = events[0], events[1], events[-1]
    assert created.response is writer.response is in_progress.response  # type: ignore[attr-defined]
    final = completed.response  # type: ignore[attr-defined]
    assert ("completed", 2.0, USAGE, 1.0) == (
        final.status,
        final.completed_at,
        final.usage,
        final.created_at,
    )
    opening = created.response  # type: ignore[attr-defined]
    assert ("in_progress", None, None) == (opening.status, opening.usage, opening.completed_at)


def test_incomplete_response_ends_with_the_cut_off_message():
    """response.incomplete carries the reason; its message item is marked incomplete."""
    writer = _writer()
    _take(writer, writer.opening())
    _take(writer, writer.items([Text("Cut off here", ["Cut ", "off ", "here"], complete=False)]))
    event = writer.take(writer.incomplete(USAGE, "max_output_tokens"))
    assert "response.incomplete" == _tag(event)
    response = event.response
    assert response.incomplete_details is not None
    assert "max_output_tokens" == response.incomplete_details.reason
    [message] = writer.output
    assert isinstance(message, MessageItem)
    assert "incomplete" == message.status


def test_failed_response_says_why():
    """response.failed carries response.error (a default message when none is given) and
    only the output it is given."""
    writer = _writer()
    _take(writer, writer.opening())
    _take(writer, writer.items([PARTS["message"]]))
    event = writer.take(writer.failed("server_error", None, usage=USAGE))
    response = event.response
    assert response.error is not None
    assert ("failed", "server_error", "The model failed to respond.") == (
        response.status,
        response.error.code,
        response.error.message,
    )
    assert b"[]" == bytes(response.output)


def test_error_event_ends_the_request_with_the_statuss_type():
    """A reply's error becomes an ``error`` event (status, code, the status's type) that
    the client assembles as that request's RequestError."""
    writer = _writer(stream_id="s")
    events = _take(writer, writer.opening())
    events.append(writer.take(writer.error(429, "rate_limit_exceeded", "slow down")))
    error = events[-1]
    assert isinstance(error, ErrorEvent)
    assert (429, "requests", 2, "s") == (
        error.status,
        error.detail().type,
        error.sequence_number,
        error.stream_id,
    )
    result = _assemble(events, "s")
    assert isinstance(result, RequestError)
    assert ("rate_limit_exceeded", 429, "resp_1") == (
        result.code,
        result.status,
        result.response_id,
    )


def test_nothing_follows_the_end():
    """After the event that ends the response is taken, drafting or taking more is a bug."""
    writer = _writer()
    _take(writer, writer.opening())
    writer.take(writer.completed(USAGE, completed_at=2.0))
    with pytest.raises(LocalProtocolError):
        writer.completed(USAGE, completed_at=3.0)
    with pytest.raises(LocalProtocolError):
        list(writer.items([PARTS["message"]]))
    with pytest.raises(LocalProtocolError):
        writer.take(writer.created())


def test_an_ending_drafted_but_not_taken_can_be_replaced():
    """A fault may fire before the terminal event leaves: the response then fails instead."""
    writer = _writer()
    _take(writer, writer.opening())
    writer.completed(USAGE, completed_at=2.0)  # drafted, never sent
    event = writer.take(writer.failed("server_error", "injected"))
    assert "response.failed" == _tag(event)


def test_output_tokens_count_deltas_and_at_least_one_per_call():
    """Output tokens: one per delta, and a call with no argument deltas still costs one."""
    writer = _writer()
    _take(writer, writer.items([PARTS["message"], Call("ping", "", []), PARTS["call"]]))
    assert 2 + 1 + 2 == writer.output_tokens


def test_sealed_reasoning_carries_encrypted_content():
    """With a seal, a done reasoning item carries encrypted_content made from id and summary."""
    writer = _writer(seal=lambda item_id, summary: f"sealed:{item_id}:{summary}")
    _take(writer, writer.items([PARTS["reasoning"]]))
    [item] = writer.output
    assert isinstance(item, ReasoningItem)
    assert "sealed:rs_0:Think first." == item.encrypted_content


@pytest.mark.parametrize(
    ("status", "expected"),
    [(400, "invalid_request_error"), (401, "invalid_request_error"), (409, "invalid_request_error"),
     (429, "requests"), (500, "server_error"), (503, "server_error")],
)  # fmt: skip
def test_error_type_follows_the_status(status, expected):
    """docs/protocol.md#the-error-event: 5xx is server_error, 429 requests, anything else
    invalid_request_error."""
    assert expected == error_type(status)
    assert expected == error_event(status, "x", "m").detail().type


def test_response_object_echoes_the_request_with_the_services_defaults():
    """docs/protocol.md#the-response-object: the settings a create sent are echoed; those it left
    out get defaults."""
    create = ResponseCreate(model="m", temperature=0.2, store=False, previous_response_id="r0")
    response = response_object(create, "resp_9", created_at=5.0)
    assert ("resp_9", "in_progress", "m", 0.2, 1.0, False, "r0", "auto", True) == (
        response.id,
        response.status,
        response.model,
        response.temperature,
        response.top_p,
        response.store,
        response.previous_response_id,
        response.tool_choice,
        response.parallel_tool_calls,
    )
    assert ({"format": {"type": "text"}}, "disabled", {}) == (
        response.text,
        response.truncation,
        response.metadata,
    )


# -- round trip: writer -> wire -> TurnAssembler ---------------------------------------------------


def _assemble(events: list[ServerEvent], stream_id: str | None) -> Response | RequestError | None:
    assembler = TurnAssembler(stream_id=stream_id)
    result = None
    for event in events:
        assert result is None, "event after the end"
        result = assembler.receive(decode_server_event(encode_text(event)))
    return result


@st.composite
def _pieces(draw: st.DrawFn, whole: str) -> list[str]:
    """``whole`` cut at random points (no pieces for an empty string)."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(whole) - 1)), max_size=6)))
    bounds = [0, *(c for c in cuts if c < len(whole)), len(whole)]
    return [whole[a:b] for a, b in itertools.pairwise(bounds) if a < b]


@st.composite
def _parts(draw: st.DrawFn) -> Part:
    kind = draw(st.sampled_from(["reasoning", "text", "call"]))
    if kind == "call":
        arguments = msgspec.json.encode(draw(st.dictionaries(texts, texts, max_size=3))).decode()
        return Call(draw(texts), arguments, draw(_pieces(arguments)))
    whole = draw(texts)
    if kind == "reasoning":
        return Reasoning(whole, draw(_pieces(whole)))
    return Text(whole, draw(_pieces(whole)))


@settings(max_examples=300)
@given(
    st.lists(_parts(), max_size=5),
    st.none() | lane_ids,
    st.sampled_from(["completed", "incomplete", "failed"]),
)
def test_assembler_rebuilds_what_the_writer_wrote(parts, lane, ending):
    """Any reply, on any lane, with any ending: the client's assembler accepts the stream as
    is and rebuilds the writer's output (items, text, calls), status and usage, and its live
    text equals the messages' deltas so far."""
    writer = _writer(stream_id=lane if lane is not None else UNSET)
    events = _take(writer, writer.opening())
    assembler = TurnAssembler(stream_id=lane)
    for event in events:
        assert assembler.receive(decode_server_event(encode_text(event))) is None
    streamed: list[str] = []
    for draft in writer.items(parts):
        event = writer.take(draft)
        events.append(event)
        assert assembler.receive(decode_server_event(encode_text(event))) is None
        if _tag(event) == "response.output_text.delta":
            streamed.append(event.delta)  # type: ignore[attr-defined]
        assert "".join(streamed) == assembler.text
    ending_draft: ServerEvent
    if ending == "completed":
        ending_draft = writer.completed(USAGE, completed_at=2.0)
    elif ending == "incomplete":
        ending_draft = writer.incomplete(USAGE, "max_output_tokens")
    else:
        ending_draft = writer.failed("server_error", "boom", usage=USAGE, output=writer.output)
    events.append(writer.take(ending_draft))
    result = assembler.receive(decode_server_event(encode_text(events[-1])))
    assert isinstance(result, Response)
    assert (ending, "resp_1", USAGE, len(events)) == (
        result.status,
        result.id,
        result.usage,
        result.event_count,
    )
    assert tuple(writer.output) == result.output
    texts_written = [part.text for part in parts if isinstance(part, Text)]
    assert "".join(texts_written) == result.text
    calls = [(part.name, part.arguments) for part in parts if isinstance(part, Call)]
    assert calls == [(call.name, call.arguments) for call in result.function_calls]
    assert all(isinstance(call, FunctionCallItem) for call in result.function_calls)
    assert list(range(len(events))) == [event.sequence_number for event in events]  # type: ignore[attr-defined]
