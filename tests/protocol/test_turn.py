"""TurnAssembler: legal streams assemble, illegal ones are rejected
(docs/protocol.md#event-order-rules, docs/protocol.md#the-error-event;
docs/recovery.md#malformed-and-unknown-events).

The property tests feed generated legal streams (``strategies.valid_streams``) whole, event by
event, through the codec, cut short and reordered. The table-driven tests name the invariant
of docs/protocol.md#event-order-rules (rules 1 to 7) that each hand-written stream breaks or
exercises.
"""

# docs/faults.md#test-hygiene: asserts read ``expected == actual``, so the expected constant comes
# first.

from __future__ import annotations

import itertools
from typing import Any

import hypothesis
import msgspec
import pytest
from hypothesis import assume, given, settings, strategies as st
from msgspec import UNSET, UnsetType

from orchestrator.core.protocol import codec
from orchestrator.core.protocol.codec import decode_server_event, encode_text
from orchestrator.core.protocol.events import (
    ContentPart,
    ContentPartAdded,
    ErrorDetail,
    ErrorEvent,
    FunctionCallArgumentsDelta,
    FunctionCallItem,
    IncompleteDetails,
    Item,
    MessageItem,
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
    ReasoningItem,
    ResponseCompleted,
    ResponseCreated,
    ResponseError,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseObject,
    ResponseQueued,
    ServerEvent,
    SteerAccepted,
    SteerFailed,
    SteerInfo,
    UnknownEvent,
    Usage,
)
from orchestrator.core.protocol.turn import (
    RequestError,
    Response,
    TurnAssembler,
    TurnState,
    assemble,
)
from orchestrator.errors import LocalProtocolError, RemoteProtocolError, ServerError

from . import strategies as s
from .strategies import Event, Stream, Tag

# --------------------------------------------------------------------------------------------
# Hand-written events
# --------------------------------------------------------------------------------------------

RID = "resp_1"
MSG_ADDED = MessageItem(id="msg_1", role="assistant", status="in_progress", content=[])
MSG = MessageItem(
    id="msg_1", role="assistant", status="completed", content=[ContentPart.output_text("Hi")]
)
MSG_2 = MessageItem(
    id="msg_2", role="assistant", status="completed", content=[ContentPart.output_text("!")]
)
CALL_ADDED = FunctionCallItem(
    id="fc_1", call_id="call_1", name="list_files", arguments="", status="in_progress"
)
CALL = FunctionCallItem(
    id="fc_1", call_id="call_1", name="list_files", arguments='{"p":1}', status="completed"
)
USAGE = Usage(input_tokens=5, output_tokens=2, total_tokens=7)


def response(status: str = "in_progress", rid: str = RID, **fields: Any) -> ResponseObject:
    return ResponseObject(id=rid, created_at=1.0, status=status, model="m", **fields)


def created(seq: int = 0, rid: str = RID, lane: str | UnsetType = UNSET) -> ResponseCreated:
    return ResponseCreated(sequence_number=seq, response=response(rid=rid), stream_id=lane)


def in_progress(seq: int = 1, rid: str = RID) -> ResponseInProgress:
    return ResponseInProgress(sequence_number=seq, response=response(rid=rid))


def added(seq: int, index: int, item: Item, lane: str | UnsetType = UNSET) -> OutputItemAdded:
    return OutputItemAdded(
        sequence_number=seq, output_index=index, item=codec.raw(item), stream_id=lane
    )


def done(seq: int, index: int, item: Item) -> OutputItemDone:
    return OutputItemDone(sequence_number=seq, output_index=index, item=codec.raw(item))


def delta(seq: int, index: int, text: str, item_id: str = "msg_1") -> OutputTextDelta:
    return OutputTextDelta(
        sequence_number=seq, item_id=item_id, output_index=index, content_index=0, delta=text
    )


def args(seq: int, index: int, text: str, item_id: str = "fc_1") -> FunctionCallArgumentsDelta:
    return FunctionCallArgumentsDelta(
        sequence_number=seq, item_id=item_id, output_index=index, delta=text
    )


def completed(
    seq: int, output: list[Item] | None = None, rid: str = RID, **fields: Any
) -> ResponseCompleted:
    if output is not None:
        fields["output"] = codec.raw(output)
    return ResponseCompleted(
        sequence_number=seq, response=response("completed", rid=rid, usage=USAGE, **fields)
    )


def failed(seq: int, output: list[Item] | None = None, rid: str = RID) -> ResponseFailed:
    error = ResponseError(code="server_error", message="boom")
    fields: dict[str, Any] = {"error": error}
    if output is not None:
        fields["output"] = codec.raw(output)
    return ResponseFailed(sequence_number=seq, response=response("failed", rid=rid, **fields))


def incomplete(seq: int, output: list[Item] | None = None, rid: str = RID) -> ResponseIncomplete:
    fields: dict[str, Any] = {"incomplete_details": IncompleteDetails(reason="max_output_tokens")}
    if output is not None:
        fields["output"] = codec.raw(output)
    return ResponseIncomplete(
        sequence_number=seq, response=response("incomplete", rid=rid, **fields)
    )


def error_event(
    seq: int | UnsetType = UNSET,
    lane: str | UnsetType = UNSET,
    headers: dict[str, str] | UnsetType = UNSET,
) -> ErrorEvent:
    detail = ErrorDetail(
        type="invalid_request_error",
        code="previous_response_not_found",
        message="Previous response with id 'resp_0' not found.",
        param="previous_response_id",
        headers=headers,
    )
    return ErrorEvent(error=detail, status=400, sequence_number=seq, stream_id=lane)


UNKNOWN = UnknownEvent("response.new_thing", {"type": "response.new_thing", "sequence_number": 9})

# The canonical text answer of docs/protocol.md#a-text-answer, without content_part events
# (docs/protocol.md#a-text-answer: clients do not depend on them).
TEXT_STREAM: list[Event] = [
    created(0),
    in_progress(1),
    added(2, 0, MSG_ADDED),
    delta(3, 0, "H"),
    delta(4, 0, "i"),
    done(5, 0, MSG),
    completed(6, [MSG]),
]


def feed(events: list[Event], stream_id: str | None = None) -> TurnAssembler:
    """Feed all but the last event, which must each return None; return the assembler."""
    assembler = TurnAssembler(stream_id=stream_id)
    for event in events[:-1]:
        assert assembler.receive(event) is None
    return assembler


# --------------------------------------------------------------------------------------------
# Legal streams assemble into the terminal's result
# --------------------------------------------------------------------------------------------


@settings(max_examples=400)
@given(s.valid_streams())
def test_valid_stream_assembles_event_by_event_and_whole(stream: Stream) -> None:
    """Fed one by one, a legal stream returns None until its last event, which returns the
    result: the terminal's output, status, usage and error, or the RequestError; ``assemble``
    gives the same, and ``finish`` returns it again."""
    assembler = feed(list(stream.events), stream.stream_id)
    result = assembler.receive(stream.events[-1])
    assert stream.expected == result
    assert TurnState.DONE == assembler.state
    assert result is assembler.finish()
    assert stream.expected == assemble(stream.events, stream_id=stream.stream_id)
    unknown = sum(isinstance(event, UnknownEvent) for event in stream.events)
    assert unknown == assembler.unknown_events
    assert len(stream.events) == assembler.event_count


@settings(max_examples=300)
@given(s.valid_streams(outcomes=("completed", "failed", "incomplete")))
def test_response_text_and_function_calls(stream: Stream) -> None:
    """``text`` is the concatenated text deltas of the message items in output order and
    ``function_calls`` the function-call items of the output, in order."""
    result = assemble(stream.events, stream_id=stream.stream_id)
    assert isinstance(result, Response)
    assert stream.text == result.text
    calls = tuple(item for item in result.output if isinstance(item, FunctionCallItem))
    assert calls == result.function_calls
    assert all(isinstance(call, FunctionCallItem) for call in result.function_calls)


@settings(max_examples=200)
@given(s.valid_streams(outcomes=("completed",)))
def test_live_text_matches_final_text(stream: Stream) -> None:
    """After a completed stream, the live ``TurnAssembler.text`` (deltas so far) equals the
    final ``Response.text``, also when items were interleaved."""
    assembler = feed(list(stream.events), stream.stream_id)
    result = assembler.receive(stream.events[-1])
    assert isinstance(result, Response)
    assert result.text == assembler.text


@settings(max_examples=200)
@given(s.valid_streams())
def test_recorded_stream_assembles_the_same(stream: Stream) -> None:
    """A stream recorded as text frames and decoded again assembles into the same result."""
    frames = [encode_text(event) for event in stream.events]
    decoded = [decode_server_event(frame) for frame in frames]
    assert stream.expected == assemble(decoded, stream_id=stream.stream_id)


# --------------------------------------------------------------------------------------------
# Truncated and reordered streams (docs/recovery.md#malformed-and-unknown-events)
# --------------------------------------------------------------------------------------------


@settings(max_examples=200)
@given(s.valid_streams())
def test_truncated_stream_is_rejected_by_finish(stream: Stream) -> None:
    """Every strict prefix of a legal stream is accepted event by event, but ``finish`` raises
    RemoteProtocolError (no terminal event: docs/protocol.md#event-order-rules, rule 7) and leaves
    the assembler in ERROR; ``assemble`` of the prefix raises too."""
    for cut in range(len(stream.events)):
        prefix = list(stream.events[:cut])
        assembler = TurnAssembler(stream_id=stream.stream_id)
        for event in prefix:
            assert assembler.receive(event) is None
        with pytest.raises(RemoteProtocolError):
            assembler.finish()
        assert TurnState.ERROR == assembler.state
        with pytest.raises(RemoteProtocolError):
            assemble(prefix, stream_id=stream.stream_id)


def legal(events: list[Event], tags: list[Tag]) -> bool:
    """The oracle: is this order of a legal stream's events still legal?

    Written from the rules, not from the assembler:

    * docs/protocol.md#event-order-rules, rule 7: the terminal
      (completed/failed/incomplete/``error``) is the last event;
    * item 1: ``response.created`` precedes every event that needs a running response
      (lifecycle, item and terminal events); ``error``, steering outcomes and unknown events
      do not need one;
    * item 3: per output index, ``output_item.added`` precedes its deltas and other content
      events; we also hold that they precede its ``output_item.done`` (a done item is final,
      item 6), so content after done is illegal;
    * docs/protocol.md#sequence-numbers-and-lanes: the sequence numbers of the known events strictly
      increase (unknown events are not checked: docs/recovery.md#malformed-and-unknown-events
      ignores them entirely).

    Item 5 (completed with unfinished items) cannot break on its own: in a legal stream
    every item is done before completed, and the terminal stays last.
    """
    last = len(tags) - 1
    if any(
        tag.kind in ("terminal", "error") and position != last for position, tag in enumerate(tags)
    ):
        return False
    started = [position for position, tag in enumerate(tags) if tag.kind == "created"]
    for position, tag in enumerate(tags):
        if tag.kind in ("lifecycle", "added", "content", "done", "terminal") and (
            not started or position < started[0]
        ):
            return False
    for index in {tag.index for tag in tags if tag.index is not None}:
        kinds = [tag.kind for tag in tags if tag.index == index]
        if kinds[0] != "added" or ("done" in kinds and kinds[-1] != "done"):
            return False
    numbers = [
        number
        for event in events
        if not isinstance(event, UnknownEvent)
        and isinstance(number := getattr(event, "sequence_number", None), int)
    ]
    return all(a < b for a, b in itertools.pairwise(numbers))


def renumber(events: list[Event]) -> list[Event]:
    """Give every event that has a sequence number its position's number, so a reordering
    is judged on the order of the events and not on their numbers."""
    numbered: list[Event] = []
    for position, event in enumerate(events):
        if isinstance(event, UnknownEvent):
            if "sequence_number" in event.data:
                event = UnknownEvent(event.type, {**event.data, "sequence_number": position})
        elif isinstance(getattr(event, "sequence_number", UNSET), int):
            event = msgspec.structs.replace(event, sequence_number=position)
        numbered.append(event)
    return numbered


def _signature(event: Event, tag: Tag) -> tuple[str, int | None]:
    return (event.type if isinstance(event, UnknownEvent) else type(event).__name__, tag.index)


def _swap(stream: Stream, data: Any) -> tuple[list[Event], list[Tag]]:
    """Two events of different types or output indices, swapped."""
    pairs = [
        (i, j)
        for i, j in itertools.combinations(range(len(stream.events)), 2)
        if _signature(stream.events[i], stream.tags[i])
        != _signature(stream.events[j], stream.tags[j])
    ]
    assume(pairs)
    i, j = data.draw(st.sampled_from(pairs))
    events, tags = list(stream.events), list(stream.tags)
    events[i], events[j] = events[j], events[i]
    tags[i], tags[j] = tags[j], tags[i]
    return events, tags


def _check_reordered(stream: Stream, events: list[Event], tags: list[Tag]) -> None:
    verdict = legal(events, tags)
    hypothesis.event(f"reordered stream {'legal' if verdict else 'illegal'}")
    if verdict:
        assert stream.expected == assemble(events, stream_id=stream.stream_id)
    else:
        with pytest.raises(RemoteProtocolError):
            assemble(events, stream_id=stream.stream_id)


@settings(max_examples=300)
@given(s.valid_streams(), st.data())
def test_swapping_two_events_is_rejected_by_sequence_numbers(stream: Stream, data: Any) -> None:
    """Swapping two events of a legal stream puts a higher sequence number first, which is
    rejected (docs/protocol.md#sequence-numbers-and-lanes); only swaps involving unknown events with
    no known event in between stay legal, and then assemble to the same result."""
    events, tags = _swap(stream, data)
    _check_reordered(stream, events, tags)


@settings(max_examples=400)
@given(s.valid_streams(), st.data())
def test_swapping_two_events_then_renumbering(stream: Stream, data: Any) -> None:
    """With sequence numbers rewritten to follow the new order, a swap is legal exactly when
    the oracle's rules of docs/protocol.md#event-order-rules hold (it then assembles to the same
    result) and is rejected with RemoteProtocolError otherwise."""
    events, tags = _swap(stream, data)
    _check_reordered(stream, renumber(events), tags)


@settings(max_examples=100)
@given(s.valid_streams(outcomes=("completed",), max_items=2, extras=False))
def test_every_swap_of_a_small_stream(stream: Stream) -> None:
    """Exhaustively: every swap of two events of a small stream, renumbered, is judged like
    the oracle judges it."""
    for i, j in itertools.combinations(range(len(stream.events)), 2):
        events, tags = list(stream.events), list(stream.tags)
        events[i], events[j] = events[j], events[i]
        tags[i], tags[j] = tags[j], tags[i]
        _check_reordered(stream, renumber(events), tags)


def test_oracle_agrees_with_the_canonical_stream() -> None:
    """Sanity check of the oracle on the docs/protocol.md#a-text-answer stream: of the 21 swaps only
    two stay legal, the two deltas (same type and index: the swap tests skip such pairs) and
    in_progress with the first output_item.added (docs/protocol.md#event-order-rules does not order
    lifecycle and item events)."""
    tags = [
        Tag("created"),
        Tag("lifecycle"),
        Tag("added", 0),
        Tag("content", 0),
        Tag("content", 0),
        Tag("done", 0),
        Tag("terminal"),
    ]
    legal_swaps = []
    for i, j in itertools.combinations(range(len(TEXT_STREAM)), 2):
        events, swapped = list(TEXT_STREAM), list(tags)
        events[i], events[j] = events[j], events[i]
        swapped[i], swapped[j] = swapped[j], swapped[i]
        if legal(renumber(events), swapped):
            legal_swaps.append((i, j))
    assert [(1, 2), (3, 4)] == legal_swaps


# --------------------------------------------------------------------------------------------
# docs/protocol.md#event-order-rules, invariant by invariant: streams whose last event breaks the
# invariant
# --------------------------------------------------------------------------------------------

OTHER = "resp_other"
VIOLATIONS = [
    # 1. The first event of a response is response.created.
    pytest.param([in_progress(0)], id="1-in_progress-first"),
    pytest.param([ResponseQueued(sequence_number=0, response=response())], id="1-queued-first"),
    pytest.param([added(0, 0, MSG_ADDED)], id="1-item-added-first"),
    pytest.param([delta(0, 0, "x")], id="1-delta-first"),
    pytest.param([completed(0, [])], id="1-completed-first"),
    pytest.param([failed(0)], id="1-failed-first"),
    pytest.param([incomplete(0)], id="1-incomplete-first"),
    pytest.param([UNKNOWN, in_progress(0)], id="1-unknown-does-not-start-it"),
    pytest.param([created(0), created(1)], id="1-second-created"),
    # 2. All lifecycle events of one response carry the same response.id.
    pytest.param([created(0), in_progress(1, rid=OTHER)], id="2-in_progress-other-id"),
    pytest.param([created(0), completed(1, [], rid=OTHER)], id="2-completed-other-id"),
    pytest.param([created(0), failed(1, rid=OTHER)], id="2-failed-other-id"),
    pytest.param([created(0), incomplete(1, rid=OTHER)], id="2-incomplete-other-id"),
    # 3. output_item.added precedes the item's events; an index is added at most once.
    pytest.param([created(0), delta(1, 0, "x")], id="3-delta-before-added"),
    pytest.param([created(0), args(1, 0, "{")], id="3-arguments-before-added"),
    pytest.param([created(0), done(1, 0, MSG)], id="3-done-before-added"),
    pytest.param(
        [
            created(0),
            ContentPartAdded(
                sequence_number=1,
                item_id="msg_1",
                output_index=0,
                content_index=0,
                part=ContentPart.output_text(""),
            ),
        ],
        id="3-content-part-before-added",
    ),
    pytest.param([created(0), added(1, 0, MSG_ADDED), delta(2, 1, "x")], id="3-other-index"),
    pytest.param(
        [created(0), added(1, 0, MSG_ADDED), added(2, 0, CALL_ADDED)], id="3-index-added-twice"
    ),
    pytest.param(
        [created(0), added(1, 0, MSG_ADDED), delta(2, 0, "x", item_id="msg_9")],
        id="3-delta-names-another-item",
    ),
    pytest.param(
        [created(0), added(1, 0, MSG_ADDED), done(2, 0, MSG), delta(3, 0, "x")],
        id="3-delta-after-done",
    ),
    # 4. output_item.done has the type, id and call_id of its .added.
    pytest.param([created(0), added(1, 0, MSG_ADDED), done(2, 0, CALL)], id="4-other-type"),
    pytest.param(
        [created(0), added(1, 0, MSG_ADDED), done(2, 0, msgspec.structs.replace(MSG, id="msg_9"))],
        id="4-other-id",
    ),
    pytest.param(
        [
            created(0),
            added(1, 0, CALL_ADDED),
            done(2, 0, msgspec.structs.replace(CALL, call_id="call_9")),
        ],
        id="4-other-call-id",
    ),
    pytest.param(
        [created(0), added(1, 0, MSG_ADDED), done(2, 0, MSG), done(3, 0, MSG)], id="4-done-twice"
    ),
    # 5. Every added item is done, or listed in the terminal output, before completed.
    pytest.param([created(0), added(1, 0, MSG_ADDED), completed(2, [])], id="5-unfinished"),
    pytest.param(
        [created(0), added(1, 0, MSG_ADDED), completed(2, [MSG_2])], id="5-listed-with-other-id"
    ),
    pytest.param(
        [created(0), added(1, 0, MSG_ADDED), added(2, 1, CALL_ADDED), completed(3, [MSG])],
        id="5-one-of-two-unfinished",
    ),
    # Envelope (docs/protocol.md#sequence-numbers-and-lanes): lanes and sequence numbers.
    pytest.param([created(0, lane="main")], id="lane-on-default-lane"),
    pytest.param([created(0), added(1, 0, MSG_ADDED, lane="main")], id="lane-mid-stream"),
    pytest.param([created(0), in_progress(0)], id="sequence-repeated"),
    pytest.param([created(5), in_progress(4)], id="sequence-decreasing"),
    pytest.param([created(0), error_event(seq=0)], id="sequence-error-repeats"),
    pytest.param(
        [created(0), SteerAccepted(sequence_number=0, steer=SteerInfo(id="steer_1"))],
        id="sequence-steer-repeats",
    ),
]


@pytest.mark.parametrize("events", VIOLATIONS)
def test_ordering_violation_is_rejected(events: list[Event]) -> None:
    """Each stream breaks the docs/protocol.md#event-order-rules invariant (or an envelope rule of
    docs/protocol.md#sequence-numbers-and-lanes) its id names, with its last event: receive raises
    RemoteProtocolError there and the assembler is in ERROR."""
    assembler = feed(events)
    with pytest.raises(RemoteProtocolError):
        assembler.receive(events[-1])
    assert TurnState.ERROR == assembler.state
    with pytest.raises(RemoteProtocolError):
        assemble(events)


NAMED_LANE_VIOLATIONS = [
    pytest.param([created(0)], id="lane-missing"),
    pytest.param([created(0, lane="other")], id="lane-other"),
    pytest.param([created(0, lane="main"), in_progress(1)], id="lane-dropped-mid-stream"),
    pytest.param([created(0, lane="main"), error_event(lane="other")], id="error-other-lane"),
]


@pytest.mark.parametrize("events", NAMED_LANE_VIOLATIONS)
def test_named_lane_violation_is_rejected(events: list[Event]) -> None:
    """On lane ``main`` every event carries ``stream_id: "main"``
    (docs/protocol.md#sequence-numbers-and-lanes), except connection-scoped errors, which carry
    none."""
    assembler = feed(events, stream_id="main")
    with pytest.raises(RemoteProtocolError):
        assembler.receive(events[-1])
    assert TurnState.ERROR == assembler.state


def test_after_a_violation_the_assembler_stays_in_error() -> None:
    """After a RemoteProtocolError every receive raises LocalProtocolError (feeding a broken
    stream on is a caller bug), and finish raises RemoteProtocolError."""
    assembler = TurnAssembler()
    with pytest.raises(RemoteProtocolError):
        assembler.receive(delta(0, 0, "x"))
    for event in TEXT_STREAM:
        with pytest.raises(LocalProtocolError):
            assembler.receive(event)
    with pytest.raises(LocalProtocolError):
        assembler.receive(UNKNOWN)
    assert TurnState.ERROR == assembler.state
    with pytest.raises(RemoteProtocolError):
        assembler.finish()


# 7. Exactly one terminal event or one error ends the request; nothing follows it.
AFTER_TERMINAL = [
    pytest.param([*TEXT_STREAM, completed(7, [MSG])], id="7-completed-twice"),
    pytest.param([*TEXT_STREAM, failed(7)], id="7-failed-after-completed"),
    pytest.param([*TEXT_STREAM, delta(7, 0, "x")], id="7-delta-after-completed"),
    pytest.param([*TEXT_STREAM, UNKNOWN], id="7-unknown-after-completed"),
    pytest.param([*TEXT_STREAM, error_event()], id="7-error-after-completed"),
    pytest.param([error_event(), created(0)], id="7-created-after-error"),
    pytest.param([created(0), error_event(1), error_event(2)], id="7-error-twice"),
    pytest.param([created(0), failed(1), created(2, rid="resp_2")], id="7-successor-in-same-turn"),
]


@pytest.mark.parametrize("events", AFTER_TERMINAL)
def test_events_after_the_terminal_event(events: list[Event]) -> None:
    """docs/protocol.md#event-order-rules, rule 7: after the terminal event (or ``error``) nothing
    of the request follows. ``assemble`` rejects the stream with RemoteProtocolError; fed one by
    one, the extra event is a caller bug (LocalProtocolError): the caller must stop at the returned
    result."""
    with pytest.raises(RemoteProtocolError):
        assemble(events)
    assembler = TurnAssembler()
    results = [assembler.receive(event) for event in events[:-1]]
    assert results[-1] is not None
    with pytest.raises(LocalProtocolError):
        assembler.receive(events[-1])
    assert TurnState.DONE == assembler.state


# --------------------------------------------------------------------------------------------
# Legal corner cases
# --------------------------------------------------------------------------------------------


def test_canonical_text_stream() -> None:
    """The docs/protocol.md#a-text-answer stream (without content_part events, which clients must
    not depend on) assembles into the completed response, its text and usage."""
    result = assemble(TEXT_STREAM)
    assert (
        Response(
            id=RID,
            status="completed",
            model="m",
            output=(MSG,),
            usage=USAGE,
            created_at=1.0,
            event_count=7,
        )
        == result
    )
    assert isinstance(result, Response)
    assert "Hi" == result.text
    assert () == result.function_calls


@pytest.mark.parametrize("status", ["failed", "incomplete"])
def test_failed_or_incomplete_may_leave_items_unfinished(status: str) -> None:
    """docs/protocol.md#event-order-rules, rule 5 binds response.completed only: failed and
    incomplete may end with an item still open; their error / incomplete_details are carried."""
    terminal = failed(3, []) if status == "failed" else incomplete(3, [])
    result = assemble([created(0), added(1, 0, MSG_ADDED), delta(2, 0, "H"), terminal])
    assert isinstance(result, Response)
    assert status == result.status
    assert () == result.output
    if status == "failed":
        assert ResponseError(code="server_error", message="boom") == result.error
    else:
        assert IncompleteDetails(reason="max_output_tokens") == result.incomplete_details


def test_unfinished_item_listed_in_terminal_output_may_complete() -> None:
    """docs/protocol.md#event-order-rules, rule 5: an item never done but present (compatible id) in
    the terminal output lets the response complete; the output is the terminal's."""
    result = assemble([created(0), added(1, 0, MSG_ADDED), delta(2, 0, "Hi"), completed(3, [MSG])])
    assert isinstance(result, Response)
    assert (MSG,) == result.output


@pytest.mark.parametrize(
    "output", [None, msgspec.Raw(b"null"), msgspec.Raw(b"[]")], ids=["missing", "null", "empty"]
)
def test_omitted_terminal_output_is_rebuilt_from_done_items(output: msgspec.Raw | None) -> None:
    """docs/protocol.md#event-order-rules, rule 6: a terminal without output is rebuilt from
    output_item.done, in output_index order even when the items finished in another order."""
    fields: dict[str, Any] = {} if output is None else {"output": output}
    events: list[Event] = [
        created(0),
        added(1, 0, MSG_ADDED),
        added(2, 1, CALL_ADDED),
        done(3, 1, CALL),
        done(4, 0, MSG),
        ResponseCompleted(sequence_number=5, response=response("completed", **fields)),
    ]
    result = assemble(events)
    assert isinstance(result, Response)
    assert (MSG, CALL) == result.output
    assert (CALL,) == result.function_calls
    assert "Hi" == result.text


def test_terminal_output_wins_over_done_items() -> None:
    """When the terminal event lists an output, that is the response's output."""
    final = msgspec.structs.replace(MSG, status="incomplete")
    result = assemble([created(0), added(1, 0, MSG_ADDED), done(2, 0, MSG), incomplete(3, [final])])
    assert isinstance(result, Response)
    assert (final,) == result.output


def test_warm_up_response_has_no_output() -> None:
    """docs/protocol.md#warm-ups: generate=false gives created, in_progress, completed with
    ``output: []``."""
    result = assemble([created(0), in_progress(1), completed(2, [])])
    assert isinstance(result, Response)
    assert () == result.output
    assert "" == result.text


def test_unknown_events_are_counted_and_ignored() -> None:
    """docs/recovery.md#malformed-and-unknown-events: unknown event types, before created and
    mid-stream, are counted and skipped."""
    events: list[Event] = [UNKNOWN, *TEXT_STREAM[:3], UNKNOWN, *TEXT_STREAM[3:]]
    assembler = feed(events)
    result = assembler.receive(events[-1])
    assert isinstance(result, Response)
    assert 2 == assembler.unknown_events
    assert 9 == result.event_count
    assert (MSG,) == result.output


def test_steering_outcomes_do_not_end_the_request() -> None:
    """docs/protocol.md#steering: steer events concern another request; they never end this one."""
    steer = SteerInfo(id="steer_1", previous_response_id=RID)
    error = ErrorDetail(type="invalid_request_error", code="response_not_active", message="no")
    events: list[Event] = [
        created(0),
        SteerAccepted(sequence_number=1, steer=steer),
        SteerFailed(error=error, steer=steer),
        completed(2, []),
    ]
    result = assemble(events)
    assert isinstance(result, Response)
    assert "completed" == result.status


def test_sequence_numbers_may_have_gaps() -> None:
    """Only strict increase is required (numbers are not contiguous across lanes,
    docs/protocol.md#sequence-numbers-and-lanes)."""
    result = assemble([created(3), in_progress(10), completed(11, [])])
    assert isinstance(result, Response)


def test_interleaved_items_assemble() -> None:
    """docs/protocol.md#event-order-rules does not forbid items to overlap: a call streams while a
    message does."""
    events: list[Event] = [
        created(0),
        added(1, 0, MSG_ADDED),
        added(2, 1, CALL_ADDED),
        delta(3, 0, "H"),
        args(4, 1, '{"p":1}'),
        delta(5, 0, "i"),
        done(6, 1, CALL),
        done(7, 0, MSG),
        completed(8, [MSG, CALL]),
    ]
    result = assemble(events)
    assert isinstance(result, Response)
    assert (MSG, CALL) == result.output
    assert "Hi" == result.text


def test_named_lane_stream_assembles() -> None:
    """On a named lane every event carries its stream_id; a connection-scoped error (no
    stream_id) still ends the request (docs/protocol.md#the-error-event)."""
    lane = "main"
    events: list[Event] = [
        created(0, lane=lane),
        msgspec.structs.replace(in_progress(1), stream_id=lane),
        error_event(2),
    ]
    result = assemble(events, stream_id=lane)
    assert isinstance(result, RequestError)
    assert RID == result.response_id


def test_reasoning_item_round_trips_through_the_stream() -> None:
    """A reasoning item's final copy (with encrypted content) is the one in the output."""
    started = ReasoningItem(id="rs_1")
    final = ReasoningItem(id="rs_1", encrypted_content="opaque")
    result = assemble([created(0), added(1, 0, started), done(2, 0, final), completed(3)])
    assert isinstance(result, Response)
    assert (final,) == result.output


# --------------------------------------------------------------------------------------------
# error events: RequestError (docs/protocol.md#the-error-event)
# --------------------------------------------------------------------------------------------


def test_error_before_created() -> None:
    """An error before response.created is the request's terminal event, with no response."""
    assembler = TurnAssembler()
    result = assembler.receive(error_event())
    assert (
        RequestError(
            code="previous_response_not_found",
            message="Previous response with id 'resp_0' not found.",
            status=400,
            param="previous_response_id",
            error_type="invalid_request_error",
        )
        == result
    )
    assert TurnState.DONE == assembler.state
    assert result is assembler.finish()


def test_error_after_created_names_the_response() -> None:
    """An error ending a started stream carries that response's id."""
    result = assemble([created(0), in_progress(1), added(2, 0, MSG_ADDED), error_event(3)])
    assert isinstance(result, RequestError)
    assert RID == result.response_id
    assert "previous_response_not_found" == result.code


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.5", 1.5),
        ("0", 0.0),
        ("20", 20.0),
        ("300", 300.0),
        ("86400", 300.0),  # capped: a server cannot park a client for a day
        ("soon", None),
        ("-3", None),
        ("", None),
        ("nan", None),
        ("inf", None),
        ("Infinity", None),
        ("1e999", None),
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),
    ],
)
def test_retry_after_from_error_headers(value: str, expected: float | None) -> None:
    """``retry_after`` reads a finite, non-negative ``Retry-After`` (any case) from
    ``error.headers``; anything else is ignored (regression: ``inf`` made a client that
    honours it sleep forever)."""
    result = assemble([error_event(headers={"Retry-After": value})])
    assert isinstance(result, RequestError)
    assert expected == result.retry_after
    assert expected == result.to_exception().retry_after


def test_flat_error_shape_and_codex_aliases() -> None:
    """The legacy flat shape (code/message/param at top level) with Codex's ``status_code``
    and top-level ``headers`` gives the same RequestError fields
    (docs/protocol.md#the-error-event)."""
    event = ErrorEvent(
        code="rate_limit_exceeded",
        message="Slow down.",
        param=None,
        status_code=429,
        headers={"retry-after": "2"},
    )
    result = assemble([event])
    assert (
        RequestError(
            code="rate_limit_exceeded",
            message="Slow down.",
            status=429,
            headers={"retry-after": "2"},
        )
        == result
    )
    assert isinstance(result, RequestError)
    assert 2.0 == result.retry_after


def test_request_error_to_exception() -> None:
    """``to_exception`` gives the ServerError a caller raises, with every field."""
    result = assemble([error_event(headers={"retry-after": "3"})])
    assert isinstance(result, RequestError)
    exc = result.to_exception()
    assert isinstance(exc, ServerError)
    assert ("previous_response_not_found", 400, "previous_response_id", 3.0) == (
        exc.code,
        exc.status,
        exc.param,
        exc.retry_after,
    )
    assert "invalid_request_error" == exc.error_type


def test_error_without_detail_fields() -> None:
    """Clients accept an error missing ``type``, ``code`` and ``param``
    (docs/protocol.md#the-error-event)."""
    result = assemble([ErrorEvent(error=ErrorDetail(message="limit"), status=400)])
    assert RequestError(code=None, message="limit", status=400) == result


def test_finish_without_events_is_truncation() -> None:
    """An assembler that saw nothing has no result: finish raises RemoteProtocolError."""
    assembler = TurnAssembler()
    with pytest.raises(RemoteProtocolError):
        assembler.finish()
    assert TurnState.ERROR == assembler.state


def test_assembler_accepts_server_events_only_once_per_request() -> None:
    """One assembler per request: after its result, receive is a LocalProtocolError."""
    assembler = feed(TEXT_STREAM)
    assert assembler.receive(TEXT_STREAM[-1]) is not None
    with pytest.raises(LocalProtocolError):
        assembler.receive(created(0, rid="resp_2"))


def _is_server_event(value: object) -> bool:
    return isinstance(value, ServerEvent)


def test_hand_written_streams_are_server_events() -> None:
    """The tables above are built from real event Structs (guards the helpers)."""
    for case in [*VIOLATIONS, *AFTER_TERMINAL]:
        events = case.values[0]
        assert isinstance(events, list)
        assert all(_is_server_event(e) or isinstance(e, UnknownEvent) for e in events)
