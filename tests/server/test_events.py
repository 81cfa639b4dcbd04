"""The events of a response (docs/protocol.md#server-events,
docs/protocol.md#sequence-numbers-and-lanes, docs/protocol.md#the-error-event): exact sequences,
numbering, ids, full response objects, usage, and where ``stream_id`` appears."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from orchestrator.core.server import LocalServer, ServerConfig

from .wire import (
    LOOKUP_TOOL,
    RESPONSE_KEYS,
    assert_error,
    calls_of,
    memory_client,
    output_for,
    types_of,
)

SCRIPTED = "local-scripted"
SCRIPT: dict[str, Any] = {
    "on_exhausted": "cycle",
    "turns": [
        {"deltas": ["Two ", "files."]},
        {
            "function_calls": [
                {"name": "lookup", "arguments": {"city": "Porto"}, "deltas": 2},
                {"name": "lookup", "arguments": {"city": "Faro"}, "deltas": 3},
            ]
        },
        {"reasoning": "Think first.", "text": "Thought about it."},
        {"incomplete": {"reason": "max_output_tokens", "text": "Cut off here"}},
        {"failed": {"code": "server_error", "message": "boom"}},
        {"error": {"code": "rate_limit_exceeded", "status": 429, "message": "slow down"}},
    ],
}
TEXT = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def _server(**options: Any) -> LocalServer:
    return LocalServer.from_config(ServerConfig(script=SCRIPT, seed=1, **options))


def _history(turns: int) -> list[dict[str, Any]]:
    """Input that puts the scripted model at turn ``turns`` (one assistant item per turn)."""
    items: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    for index in range(turns):
        items.append({"type": "message", "role": "assistant", "content": f"turn {index}"})
        items.append({"role": "user", "content": "next"})
    return items


def _assert_envelope(events: list[dict[str, Any]], stream_id: str | None = None) -> None:
    """docs/protocol.md#sequence-numbers-and-lanes, docs/protocol.md#event-order-rules: numbers from
    0 and contiguous, one response id, stream_id rules."""
    assert list(range(len(events))) == [event["sequence_number"] for event in events]
    assert "response.created" == events[0]["type"]
    ids = {event["response"]["id"] for event in events if "response" in event}
    assert 1 == len(ids)
    for event in events:
        if stream_id is None:
            assert "stream_id" not in event
        else:
            assert stream_id == event["stream_id"]
        if "response" in event:
            assert RESPONSE_KEYS <= event["response"].keys()
            usage = event["response"]["usage"]
            if event["type"] in ("response.created", "response.in_progress"):
                # usage only in terminal events (docs/protocol.md#terminal-events-and-usage)
                assert usage is None
            elif event["type"] != "response.failed":
                assert usage is not None


async def test_text_answer_sequence():
    """docs/protocol.md#a-text-answer: the exact canonical sequence of a plain text answer."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            events = await client.turn(model=SCRIPTED, input="go", instructions="Be terse.")
    assert TEXT == types_of(events)
    _assert_envelope(events)
    created, in_progress, added, part_added, d1, d2, text_done, part_done, item_done, done = events
    for lifecycle in (created, in_progress):
        response = lifecycle["response"]
        assert "in_progress" == response["status"]
        assert [] == response["output"]
        assert response["usage"] is None
        assert response["completed_at"] is None
        assert "Be terse." == response["instructions"]
    message_id = added["item"]["id"]
    assert message_id.startswith("msg_")
    assert {
        "type": "message",
        "id": message_id,
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    } == added["item"]
    assert {"type": "output_text", "text": "", "annotations": []} == part_added["part"]
    assert ["Two ", "files."] == [d1["delta"], d2["delta"]]
    for event in (part_added, d1, d2, text_done, part_done):
        assert message_id == event["item_id"]
        assert 0 == event["output_index"]
        assert 0 == event["content_index"]
    assert [] == d1["logprobs"]
    assert "Two files." == text_done["text"]
    final_item = {
        "type": "message",
        "id": message_id,
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Two files.", "annotations": []}],
    }
    assert final_item == item_done["item"]
    response = done["response"]
    assert response["id"].startswith("resp_")
    assert "completed" == response["status"]
    assert isinstance(response["completed_at"], int)
    assert created["response"]["created_at"] == response["created_at"]
    assert [final_item] == response["output"]
    usage = response["usage"]
    assert 2 == usage["output_tokens"]
    assert usage["input_tokens"] + usage["output_tokens"] == usage["total_tokens"]
    assert {"cached_tokens", "cache_write_tokens"} == usage["input_tokens_details"].keys()
    assert {"reasoning_tokens": 0} == usage["output_tokens_details"]


async def test_parallel_function_calls_sequence():
    """docs/protocol.md#a-function-call-answer: steps 1 to 4 for each call at consecutive output
    indexes, then completed."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            events = await client.turn(model=SCRIPTED, input=_history(1), tools=[LOOKUP_TOOL])
    call_events = [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    second = [call_events[0], *[call_events[1]] * 3, *call_events[2:][1:]]
    assert [
        "response.created",
        "response.in_progress",
        *call_events,
        *second,
        "response.completed",
    ] == types_of(events)
    _assert_envelope(events)
    calls = calls_of(events)
    assert ["Porto", "Faro"] == [call["arguments"].split('"')[-2] for call in calls]
    for index, call in enumerate(calls):
        assert call["id"].startswith("fc_")
        assert call["call_id"].startswith("call_")
        assert "completed" == call["status"]
        added = [
            e
            for e in events
            if e["type"] == "response.output_item.added" and e["output_index"] == index
        ]
        assert 1 == len(added)
        assert {**call, "arguments": "", "status": "in_progress"} == added[0]["item"]
        deltas = [
            e["delta"]
            for e in events
            if e["type"] == "response.function_call_arguments.delta" and e["output_index"] == index
        ]
        assert call["arguments"] == "".join(deltas)
        (done,) = [
            e
            for e in events
            if e["type"] == "response.function_call_arguments.done" and e["output_index"] == index
        ]
        assert call["arguments"] == done["arguments"]
        assert call["id"] == done["item_id"]
        assert "lookup" == done["name"]
    assert "completed" == events[-1]["response"]["status"]
    assert [LOOKUP_TOOL] == events[-1]["response"]["tools"]


async def test_reasoning_item_comes_first():
    """docs/protocol.md#a-text-answer, step 3: a reasoning item at output_index 0, the message at
    1."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            events = await client.turn(model=SCRIPTED, input=_history(2))
    _assert_envelope(events)
    assert (
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
            *TEXT[2:5],
            "response.output_text.delta",  # "Thought about it." is three tokens
            *TEXT[5:],
        ]
        == types_of(events)
    )
    reasoning, message = events[-1]["response"]["output"]
    assert "reasoning" == reasoning["type"]
    assert reasoning["id"].startswith("rs_")
    assert [{"type": "summary_text", "text": "Think first."}] == reasoning["summary"]
    assert "message" == message["type"]
    message_added = [e for e in events if e["type"] == "response.output_item.added"][1]
    assert 1 == message_added["output_index"]


async def test_incomplete_response_marks_the_cut_off_message_incomplete():
    """docs/protocol.md#the-response-object, docs/protocol.md#terminal-events-and-usage:
    ``response.incomplete`` carries the reason, usage and output so far; the message that was cut
    off has status ``incomplete`` in output_item.done and the output."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            events = await client.turn(model=SCRIPTED, input=_history(3))
    _assert_envelope(events)
    assert "response.incomplete" == events[-1]["type"]
    response = events[-1]["response"]
    assert "incomplete" == response["status"]
    assert {"reason": "max_output_tokens"} == response["incomplete_details"]
    assert response["usage"] is not None
    (item_done,) = [e for e in events if e["type"] == "response.output_item.done"]
    assert "incomplete" == item_done["item"]["status"]
    assert [item_done["item"]] == response["output"]
    assert "Cut off here" == response["output"][0]["content"][0]["text"]


async def test_failed_response():
    """docs/protocol.md#terminal-events-and-usage: ``response.failed`` with ``response.error`` ends
    the request; the socket stays usable."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            events = await client.turn(model=SCRIPTED, input=_history(4))
            after = await client.turn(model=SCRIPTED, input="go")
    _assert_envelope(events)
    assert ["response.created", "response.in_progress", "response.failed"] == types_of(events)
    response = events[-1]["response"]
    assert "failed" == response["status"]
    assert "server_error" == response["error"]["code"]
    assert "boom" == response["error"]["message"]
    assert response["completed_at"] is None
    assert "response.completed" == after[-1]["type"]


async def test_scripted_error_event_ends_the_request_with_a_sequence_number():
    """docs/protocol.md#the-error-event: an error raised by a running stream carries its sequence
    number, the status's error type, and all four keys."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            events = await client.turn(model=SCRIPTED, input=_history(5), stream_id="lane-1")
    assert ["response.created", "response.in_progress", "error"] == types_of(events)
    assert_error(events[-1], 429, "rate_limit_exceeded", stream_id="lane-1", error_type="requests")
    assert 2 == events[-1]["sequence_number"]
    assert "slow down" == events[-1]["error"]["message"]


async def test_named_lane_events_all_carry_stream_id():
    """docs/protocol.md#sequence-numbers-and-lanes: every event of a named-lane response carries its
    ``stream_id``."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            events = await client.turn(model=SCRIPTED, input=_history(1), stream_id="main")
    _assert_envelope(events, "main")


async def test_default_lane_events_have_no_stream_id_key():
    """docs/protocol.md#sequence-numbers-and-lanes: on the default lane the key is omitted entirely,
    never null."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            events = await client.turn(model=SCRIPTED, input=_history(1))
    assert all("stream_id" not in event for event in events)


async def test_numbering_restarts_for_every_response():
    """docs/protocol.md#sequence-numbers-and-lanes: sequence_number is per response, from 0, even on
    one lane."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            first = await client.turn(model=SCRIPTED, input="go", tools=[LOOKUP_TOOL])
            second = await client.turn(model=SCRIPTED, input="go")
    _assert_envelope(first)
    _assert_envelope(second)


async def test_request_settings_are_echoed():
    """docs/protocol.md#the-response-object: the response object echoes the request's settings,
    defaults otherwise."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            events = await client.turn(
                model="local-echo",
                input="hi",
                metadata={"job": "7"},
                temperature=0.2,
                top_p=0.5,
                max_output_tokens=100,
                tool_choice="none",
                parallel_tool_calls=False,
                store=False,
                truncation="auto",
                user="u1",
            )
            plain = await client.turn(model="local-echo", input="hi")
    response = events[-1]["response"]
    assert {"job": "7"} == response["metadata"]
    assert 0.2 == response["temperature"]
    assert 0.5 == response["top_p"]
    assert 100 == response["max_output_tokens"]
    assert "none" == response["tool_choice"]
    assert response["parallel_tool_calls"] is False
    assert response["store"] is False
    assert "auto" == response["truncation"]
    assert "u1" == response["user"]
    assert response["background"] is False
    defaults = plain[-1]["response"]
    assert {} == defaults["metadata"]
    assert defaults["store"] is True
    assert "auto" == defaults["tool_choice"]
    assert [] == defaults["tools"]
    assert defaults["previous_response_id"] is None
    assert "local-echo" == defaults["model"]
    assert "response" == defaults["object"]


async def test_connection_scoped_errors_carry_no_stream_id():
    """docs/protocol.md#sequence-numbers-and-lanes, docs/protocol.md#error-codes:
    ``invalid_stream_id`` is connection-scoped: no ``stream_id`` key."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            await client.create(input="hi", stream_id="bad id!")
            assert_error(await client.receive(), 400, "invalid_stream_id", "stream_id")


@pytest.mark.parametrize("store", [True, False])
async def test_tool_round_trip_continues_by_id(store):
    """docs/protocol.md#a-function-call-answer: a response ending with calls is completed; the next
    create sends only the outputs with previous_response_id."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            first = await client.turn(
                model=SCRIPTED, input=_history(1), tools=[LOOKUP_TOOL], store=store
            )
            outputs = [output_for(call) for call in calls_of(first)]
            second = await client.turn(
                model=SCRIPTED,
                input=outputs,
                previous_response_id=first[-1]["response"]["id"],
                tools=[LOOKUP_TOOL],
                store=store,
            )
    assert "response.completed" == second[-1]["type"]
    assert first[-1]["response"]["id"] == second[-1]["response"]["previous_response_id"]
