"""Conformance: the official ``openai`` SDK drives the embedded server (docs/protocol.md).

Every scenario connects with ``AsyncOpenAI(base_url=..., api_key=...)`` and
``client.responses.connect()``, exactly as an application would against the service. Every
frame the SDK receives is validated strictly against the SDK's own typed models
(:class:`StrictWire`), in addition to what each scenario asserts about the protocol.
"""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import sys
import threading
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import attrs
import pydantic
import pytest
from openai import AsyncOpenAI, OpenAIError, omit
from openai.lib.responses_websocket import (
    AsyncResponsesWebSocketSession,
    ResponsesWebSocketError,
    ResponsesWebSocketLimits,
)
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import (
    FunctionTool,
    FunctionToolParam,
    Response,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseSteerAcceptedEvent,
    ResponseSteerFailedEvent,
    ResponseSteerPendingEvent,
)
from openai.types.responses.responses_server_event import (
    ResponseContentPartWsAdded,
    ResponseContentPartWsDone,
    ResponseFunctionCallArgumentsWsDelta,
    ResponseFunctionCallArgumentsWsDone,
    ResponseInWsProgress,
    ResponseOutputItemWsAdded,
    ResponseOutputItemWsDone,
    ResponseReasoningSummaryPartWsAdded,
    ResponseReasoningSummaryPartWsDone,
    ResponseReasoningSummaryTextWsDelta,
    ResponseReasoningSummaryTextWsDone,
    ResponseReasoningTextWsDelta,
    ResponseReasoningTextWsDone,
    ResponseRefusalWsDelta,
    ResponseRefusalWsDone,
    ResponsesServerEvent,
    ResponseTextWsDelta,
    ResponseTextWsDone,
    ResponseWsCompleted,
    ResponseWsCreated,
    ResponseWsError,
    ResponseWsFailed,
    ResponseWsIncomplete,
    ResponseWsQueued,
)
from websockets.exceptions import InvalidStatus

from orchestrator.core.server import Fault, LatencyModel
from orchestrator.core.server.generic import LEAD_IN

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable

    from openai.resources.responses.responses import AsyncResponsesConnection

    from orchestrator.core.server import RunningServer

pytestmark = pytest.mark.timeout(30)

SCENARIO_TIMEOUT: Final = 10.0
SHUTDOWN_TIMEOUT: Final = 1.0
MODEL: Final = "local-generic-1"  # any name without "echo"/"scripted" picks the generic model
ECHO_MODEL: Final = "local-echo-1"

LIST_FILES: Final[FunctionToolParam] = {
    "type": "function",
    "name": "list_files",
    "description": "List files under a directory.",
    "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
        "additionalProperties": False,
    },
    "strict": True,
}

TERMINAL_TYPES: Final = frozenset(
    {"response.completed", "response.failed", "response.incomplete", "error"}
)

# The class the SDK must build for each event type the server can send: its typed
# WebSocket model, never a fallback.
SDK_CLASSES: Final[dict[str, type[pydantic.BaseModel]]] = {
    "response.created": ResponseWsCreated,
    "response.queued": ResponseWsQueued,
    "response.in_progress": ResponseInWsProgress,
    "response.output_item.added": ResponseOutputItemWsAdded,
    "response.output_item.done": ResponseOutputItemWsDone,
    "response.content_part.added": ResponseContentPartWsAdded,
    "response.content_part.done": ResponseContentPartWsDone,
    "response.output_text.delta": ResponseTextWsDelta,
    "response.output_text.done": ResponseTextWsDone,
    "response.function_call_arguments.delta": ResponseFunctionCallArgumentsWsDelta,
    "response.function_call_arguments.done": ResponseFunctionCallArgumentsWsDone,
    "response.refusal.delta": ResponseRefusalWsDelta,
    "response.refusal.done": ResponseRefusalWsDone,
    "response.reasoning_summary_part.added": ResponseReasoningSummaryPartWsAdded,
    "response.reasoning_summary_part.done": ResponseReasoningSummaryPartWsDone,
    "response.reasoning_summary_text.delta": ResponseReasoningSummaryTextWsDelta,
    "response.reasoning_summary_text.done": ResponseReasoningSummaryTextWsDone,
    "response.reasoning_text.delta": ResponseReasoningTextWsDelta,
    "response.reasoning_text.done": ResponseReasoningTextWsDone,
    "response.completed": ResponseWsCompleted,
    "response.failed": ResponseWsFailed,
    "response.incomplete": ResponseWsIncomplete,
    "response.steer.accepted": ResponseSteerAcceptedEvent,
    "response.steer.pending": ResponseSteerPendingEvent,
    "response.steer.failed": ResponseSteerFailedEvent,
    "error": ResponseWsError,
}

TEXT_TURN: Final = (
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",  # one or more, collapsed by collapse_deltas()
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
)

FUNCTION_CALL_TURN: Final = (
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
)

# -- strict validation --------------------------------------------------------------------------

# The SDK tags ``ResponsesServerEvent`` with its own ``PropertyInfo(discriminator="type")``,
# which only its lenient ``construct`` path reads. Rebuilding the union with pydantic's
# discriminator validates each frame against exactly the member the SDK would pick (and
# rejects unknown types), with precise errors instead of one per union member.
_MEMBERS: Final = typing.get_args(typing.get_args(ResponsesServerEvent)[0])
_DISCRIMINATED: Final[Any] = Annotated[
    typing.Union[_MEMBERS],  # noqa: UP007
    pydantic.Field(discriminator="type"),
]
STRICT_EVENT: Final = pydantic.TypeAdapter[Any](_DISCRIMINATED)

# Keys the SDK's models do not declare (they pass as pydantic "extra") but that the wire
# contract documents: the response object's ``store`` (docs/protocol.md#the-response-object) and the
# ``name`` of ``function_call_arguments.done`` (docs/protocol.md#a-function-call-answer). Anything
# else is a server invention.
ALLOWED_EXTRAS: Final = frozenset(
    {
        *(
            (kind, "response.store")
            for kind in (
                "response.created",
                "response.in_progress",
                "response.completed",
                "response.failed",
                "response.incomplete",
            )
        ),
        ("response.function_call_arguments.done", "name"),
    }
)


def validate_strictly(data: bytes | str) -> pydantic.BaseModel:
    """The frame as the SDK's typed model, validated in strict mode; raises if it is not one.

    ``validate_json`` in strict mode refuses every coercion the JSON would need (a string
    for an int, a number for a string, a missing required key...). One widening remains
    legal in strict mode: a JSON integer for a ``float`` field such as ``created_at``. The
    service itself sends whole-second integers there (docs/protocol.md#the-response-object), so the
    server does too.
    """
    event = STRICT_EVENT.validate_json(data, strict=True)
    unexpected = {path for path in _extras(event) if (event.type, path) not in ALLOWED_EXTRAS}
    assert set() == unexpected
    return typing.cast("pydantic.BaseModel", event)


def _extras(value: Any, path: str = "") -> list[str]:
    """Dotted paths of every undeclared key, at any depth."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        for name in value.model_extra or {}:
            found.append(f"{path}{name}")
        for name in type(value).model_fields:
            found.extend(_extras(getattr(value, name), f"{path}{name}."))
    elif isinstance(value, list):
        for item in value:
            found.extend(_extras(item, path))
    elif isinstance(value, dict):
        for key, item in value.items():
            found.extend(_extras(item, f"{path}{key}."))
    return found


def assert_same_models(expected: Any, actual: Any, path: str = "event") -> None:
    """``actual`` (the SDK's lenient parse) has the classes of ``expected`` (the strict one).

    A lenient ``construct`` never fails: on a shape it does not recognise it silently keeps
    a dict or picks another union member. Comparing classes at every depth proves the SDK
    saw the typed objects the strict validation found.
    """
    if isinstance(expected, pydantic.BaseModel):
        assert type(expected) is type(actual), f"{path}: {type(actual).__name__}"
        for name in type(expected).model_fields:
            assert_same_models(getattr(expected, name), getattr(actual, name), f"{path}.{name}")
        assert (expected.model_extra or {}) == (actual.model_extra or {}), path
    elif isinstance(expected, list):
        assert isinstance(actual, list), path
        assert len(expected) == len(actual), path
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            assert_same_models(left, right, f"{path}[{index}]")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), path
        assert expected.keys() == actual.keys(), path
        for key in expected:
            assert_same_models(expected[key], actual[key], f"{path}.{key}")
    else:
        # Scalars: strict validation turns an integer ``created_at`` into a float, while
        # ``construct`` keeps the int; equal values are what matters.
        assert expected == actual, path


@attrs.define(eq=False)
class StrictWire:
    """Sees every frame an SDK connection receives, and checks it on arrival.

    ``recv()``, ``async for``, ``dispatch_events()`` and the session helper all read through
    the connection's public ``recv_bytes()`` and ``parse_event()``; wrapping those two on the
    instance covers every way the SDK receives, without replacing any of them. Each frame
    must validate strictly, and the SDK's own (lenient) parse of it must be the typed event
    of ``SDK_CLASSES`` with the same classes at every depth.
    """

    frames: list[dict[str, Any]] = attrs.field(factory=list)
    parsed: int = 0

    def attach(self, connection: AsyncResponsesConnection) -> AsyncResponsesConnection:
        receive_bytes = connection.recv_bytes
        parse_event = connection.parse_event

        async def recv_bytes() -> bytes:
            data = await receive_bytes()
            validate_strictly(data)
            self.frames.append(json.loads(data))
            return data

        def parse(data: str | bytes) -> ResponsesServerEvent:
            event = parse_event(data)
            assert SDK_CLASSES[event.type] is type(event)
            assert_same_models(validate_strictly(data), event)
            self.parsed += 1
            return event

        connection.recv_bytes = recv_bytes  # type: ignore[method-assign]
        connection.parse_event = parse  # type: ignore[method-assign]
        return connection


# -- helpers ------------------------------------------------------------------------------------


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an asyncio scenario to completion, bounded by ``SCENARIO_TIMEOUT``."""

    async def bounded() -> None:
        await asyncio.wait_for(scenario(), SCENARIO_TIMEOUT)

    asyncio.run(bounded())


def client_for(running: RunningServer, *, api_key: str | None = None) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=running.base_url, api_key=api_key or running.token, max_retries=0)


async def receive_response(connection: AsyncResponsesConnection) -> list[ResponsesServerEvent]:
    """The SDK's events up to and including the next terminal event (or ``error``)."""
    events: list[ResponsesServerEvent] = []
    while True:
        event = await connection.recv()
        events.append(event)
        if event.type in TERMINAL_TYPES:
            return events


async def drain(connection: AsyncResponsesConnection) -> list[ResponsesServerEvent]:
    """Every event until the connection closes (``async for`` over the SDK connection)."""
    return [event async for event in connection]


def collapse_deltas(types: Iterable[str]) -> tuple[str, ...]:
    """Event types with each run of identical delta types collapsed to one."""
    collapsed: list[str] = []
    for kind in types:
        if not (kind.endswith(".delta") and collapsed and collapsed[-1] == kind):
            collapsed.append(kind)
    return tuple(collapsed)


def frames_of(frames: list[dict[str, Any]], response_id: str) -> list[dict[str, Any]]:
    """The frames of one response: from its ``response.created`` to its terminal event."""
    start = next(
        index
        for index, frame in enumerate(frames)
        if frame["type"] == "response.created" and frame["response"]["id"] == response_id
    )
    lane = frames[start].get("stream_id")
    selected: list[dict[str, Any]] = []
    for frame in frames[start:]:
        if frame.get("stream_id") != lane:
            continue
        selected.append(frame)
        if frame["type"] in TERMINAL_TYPES:
            return selected
    raise AssertionError(f"no terminal event for {response_id}")


def final_response(events: list[ResponsesServerEvent]) -> Response:
    """The response of a completed turn, after checking the whole stream assembles to it.

    Every event, deltas and setup events included, goes through the SDK's own streaming
    accumulator (the one behind ``client.responses.stream()``), which raises on any break of
    the ordering invariants of docs/protocol.md#event-order-rules and parses strict tools' arguments
    as JSON.
    """
    terminal = events[-1]
    assert isinstance(terminal, ResponseWsCompleted)
    tools = [tool for tool in terminal.response.tools if isinstance(tool, FunctionTool)]
    state = ResponseStreamState[Any](
        input_tools=[
            typing.cast("FunctionToolParam", tool.model_dump(exclude_none=True)) for tool in tools
        ],
        text_format=omit,
    )
    assembled: list[Any] = []
    for event in events:
        assembled.extend(state.handle_event(typing.cast("Any", event)))
    completed = assembled[-1]
    assert "response.completed" == completed.type
    assert terminal.response.output_text == completed.response.output_text
    for item in completed.response.output:
        if item.type == "function_call":
            assert json.loads(item.arguments) == item.parsed_arguments
    return terminal.response


# -- scenarios ----------------------------------------------------------------------------------


def test_text_turn(local_server: RunningServer) -> None:
    """A plain text turn yields the canonical sequence (docs/protocol.md#a-text-answer): created,
    in_progress, output_item.added, content_part.added, output_text.delta x N, output_text.done,
    content_part.done, output_item.done, completed; sequence numbers 0..n; no stream_id on
    the default lane; usage on completed; the final text is the joined deltas."""
    wire = StrictWire()

    async def scenario() -> None:
        async with client_for(local_server) as client, client.responses.connect() as connection:
            wire.attach(connection)
            await connection.response.create(model=MODEL, input="Summarise the quarterly report")
            events = await receive_response(connection)

        assert len(wire.frames) == wire.parsed
        assert TEXT_TURN == collapse_deltas([event.type for event in events])
        assert list(range(len(events))) == [frame["sequence_number"] for frame in wire.frames]
        assert [] == [frame for frame in wire.frames if "stream_id" in frame]
        created, in_progress, added, part_added = events[:4]
        text_done, part_done, item_done, completed = events[-4:]
        deltas = [event for event in events if isinstance(event, ResponseTextWsDelta)]
        assert isinstance(created, ResponseWsCreated)
        assert isinstance(in_progress, ResponseInWsProgress)
        assert isinstance(completed, ResponseWsCompleted)
        response = completed.response
        assert {response.id} == {created.response.id, in_progress.response.id}
        assert ("in_progress", "in_progress", "completed") == (
            created.response.status,
            in_progress.response.status,
            response.status,
        )
        assert ([], None) == (created.response.output, created.response.usage)
        assert response.completed_at is not None
        assert isinstance(added, ResponseOutputItemWsAdded)
        assert isinstance(added.item, ResponseOutputMessage)
        assert ("in_progress", []) == (added.item.status, added.item.content)
        assert isinstance(part_added, ResponseContentPartWsAdded)
        assert isinstance(text_done, ResponseTextWsDone)
        assert isinstance(part_done, ResponseContentPartWsDone)
        assert isinstance(item_done, ResponseOutputItemWsDone)
        item_id = added.item.id
        assert {item_id} == {
            part_added.item_id,
            text_done.item_id,
            part_done.item_id,
            *(delta.item_id for delta in deltas),
        }
        assert ("resp_", "msg_") == (response.id[:5], item_id[:4])
        text = "".join(delta.delta for delta in deltas)
        assert "Answer to: Summarise the quarterly report" == text
        assert text == text_done.text
        assert isinstance(part_done.part, ResponseOutputText)
        assert text == part_done.part.text
        assert isinstance(item_done.item, ResponseOutputMessage)
        assert (item_id, "completed") == (item_done.item.id, item_done.item.status)
        assert [item_done.item] == response.output
        assert text == response.output_text
        usage = response.usage
        assert usage is not None
        assert 0 < usage.input_tokens
        assert len(deltas) == usage.output_tokens
        assert usage.input_tokens + usage.output_tokens == usage.total_tokens

    run(scenario)


def test_function_call_turn_continued_with_store_false(local_server: RunningServer) -> None:
    """The generic model calls an offered function tool with schema-valid arguments
    (docs/protocol.md#a-function-call-answer); a continuation by ``previous_response_id`` with
    ``store: false`` carrying the one ``function_call_output`` completes with a text answer served
    from the connection cache (``cached_tokens > 0``)."""
    wire = StrictWire()

    async def scenario() -> None:
        async with client_for(local_server) as client, client.responses.connect() as connection:
            wire.attach(connection)
            await connection.response.create(
                model=MODEL,
                input="List the files under Reports",
                tools=[LIST_FILES],
                store=False,
            )
            first = await receive_response(connection)
            call_response = final_response(first)
            assert FUNCTION_CALL_TURN == collapse_deltas([event.type for event in first])
            [call] = call_response.output
            assert isinstance(call, ResponseFunctionToolCall)
            await connection.response.create(
                model=MODEL,
                previous_response_id=call_response.id,
                store=False,
                tools=[LIST_FILES],
                input=[
                    {
                        "type": "function_call_output",
                        "call_id": call.call_id,
                        "output": '{"files": ["a.log", "b.log"]}',
                    }
                ],
            )
            second = await receive_response(connection)

        arguments = json.loads(call.arguments)
        assert ("list_files", "completed") == (call.name, call.status)
        assert ["path"] == list(arguments)
        assert isinstance(arguments["path"], str)
        done = next(e for e in first if isinstance(e, ResponseFunctionCallArgumentsWsDone))
        deltas = [e for e in first if isinstance(e, ResponseFunctionCallArgumentsWsDelta)]
        assert call.arguments == done.arguments == "".join(delta.delta for delta in deltas)
        assert {call.id} == {done.item_id, *(delta.item_id for delta in deltas)}
        assert call.id is not None
        assert (True, True) == (call.id.startswith("fc_"), call.call_id.startswith("call_"))

        assert TEXT_TURN == collapse_deltas([event.type for event in second])
        answer = final_response(second)
        assert call_response.id == answer.previous_response_id
        assert answer.output_text.startswith(LEAD_IN)
        assert "a.log" in answer.output_text
        first_usage, usage = call_response.usage, answer.usage
        assert first_usage is not None
        assert usage is not None
        assert 0 == first_usage.input_tokens_details.cached_tokens
        assert 0 < usage.input_tokens_details.cached_tokens
        assert [False, False] == [
            frame["response"]["store"]
            for frame in wire.frames
            if frame["type"] == "response.completed"
        ]

    run(scenario)


def test_warm_up_then_continuation(local_server: RunningServer) -> None:
    """A warm-up (``generate: false``) with instructions, tools and input answers
    created, in_progress, completed with an empty output and ``output_tokens`` 0
    (docs/protocol.md#warm-ups); a continuation from its id then runs the model on the prepared
    state, from the cache."""

    async def scenario() -> None:
        async with client_for(local_server) as client, client.responses.connect() as connection:
            StrictWire().attach(connection)
            await connection.response.create(
                model=MODEL,
                generate=False,
                store=False,
                instructions="You are the librarian.",
                tools=[LIST_FILES],
                input=[{"role": "user", "content": "Which files are under Archive?"}],
            )
            warm_up = await receive_response(connection)
            await connection.response.create(
                model=MODEL,
                previous_response_id=final_response(warm_up).id,
                store=False,
                instructions="You are the librarian.",
                tools=[LIST_FILES],
                input=[],
            )
            continuation = await receive_response(connection)

        assert ("response.created", "response.in_progress", "response.completed") == tuple(
            event.type for event in warm_up
        )
        prepared = final_response(warm_up)
        assert ("completed", [], "You are the librarian.") == (
            prepared.status,
            prepared.output,
            prepared.instructions,
        )
        assert ["list_files"] == [tool.name for tool in prepared.tools]  # type: ignore[union-attr]
        assert prepared.usage is not None
        assert 0 == prepared.usage.output_tokens
        assert 0 < prepared.usage.input_tokens == prepared.usage.total_tokens
        assert FUNCTION_CALL_TURN == collapse_deltas([event.type for event in continuation])
        answer = final_response(continuation)
        assert prepared.id == answer.previous_response_id
        [call] = answer.output
        assert isinstance(call, ResponseFunctionToolCall)
        assert {"path": "Archive"} == json.loads(call.arguments)
        assert answer.usage is not None
        assert prepared.usage.input_tokens <= answer.usage.input_tokens_details.cached_tokens

    run(scenario)


def test_unknown_previous_response_id(local_server: RunningServer) -> None:
    """An unknown ``previous_response_id`` is answered with exactly one ``error`` event
    (status 400, ``invalid_request_error``, ``previous_response_not_found``, param
    ``previous_response_id``; docs/protocol.md#error-codes) that the SDK returns as its typed
    ``ResponseWsError`` from ``recv()`` and raises as ``OpenAIError`` from ``dispatch_events()``
    without a handler; the connection stays usable for the next turn."""
    wire = StrictWire()

    async def scenario() -> None:
        async with client_for(local_server) as client, client.responses.connect() as connection:
            wire.attach(connection)
            await connection.response.create(
                model=MODEL, previous_response_id="resp_unknown", input="Go on.", store=False
            )
            [error] = await receive_response(connection)
            await connection.response.create(
                model=MODEL, previous_response_id="resp_unknown", input="Go on."
            )
            with pytest.raises(OpenAIError, match="previous_response_not_found"):
                await connection.dispatch_events()
            await connection.response.create(model=MODEL, input="Start again")
            after = await receive_response(connection)

        assert isinstance(error, ResponseWsError)
        assert {
            "type": "error",
            "status": 400,
            "error": {
                "type": "invalid_request_error",
                "code": "previous_response_not_found",
                "message": "Previous response with id 'resp_unknown' not found.",
                "param": "previous_response_id",
            },
        } == wire.frames[0]
        assert wire.frames[0] == wire.frames[1]
        assert (400, "previous_response_not_found", "previous_response_id") == (
            error.status,
            error.error.code,
            error.error.param,
        )
        assert "Answer to: Start again" == final_response(after).output_text

    run(scenario)


def test_named_lanes_through_the_session_helper(local_server: RunningServer) -> None:
    """On named lanes (``stream_id``) every event carries its lane
    (docs/protocol.md#sequence-numbers-and-lanes), lanes run concurrently with per-response sequence
    numbers from 0, the SDK's session helper routes them and ``lane.get_final_response()`` returns
    each ``Response``; a fork on another lane continues from a lane's latest response with
    ``store: false`` (docs/protocol.md#forks)."""
    wire = StrictWire()
    limits = ResponsesWebSocketLimits(
        max_lanes=4,
        max_events_per_lane=256,
        max_events=1024,
        max_bytes_per_lane=1 << 20,
        max_bytes=4 << 20,
    )

    async def scenario() -> None:
        async with client_for(local_server) as client, client.responses.connect() as connection:
            wire.attach(connection)
            async with AsyncResponsesWebSocketSession(connection, limits=limits) as session:
                north, south = session.lane("north"), session.lane("south.2")
                await north.send(
                    {"type": "response.create", "model": MODEL, "input": "Northern route"}
                )
                await south.send(
                    {"type": "response.create", "model": MODEL, "input": "Southern route"}
                )
                north_final, south_final = await asyncio.gather(
                    north.get_final_response(), south.get_final_response()
                )
                await south.send(
                    {
                        "type": "response.create",
                        "model": MODEL,
                        "store": False,
                        "previous_response_id": north_final.id,
                        "input": "Compare both",
                    }
                )
                fork = await south.get_final_response()

        assert len(wire.frames) == wire.parsed
        assert [] == [frame for frame in wire.frames if "stream_id" not in frame]
        for response, lane in ((north_final, "north"), (south_final, "south.2"), (fork, "south.2")):
            assert isinstance(response, Response)
            frames = frames_of(wire.frames, response.id)
            assert {lane} == {frame["stream_id"] for frame in frames}
            assert list(range(len(frames))) == [frame["sequence_number"] for frame in frames]
            assert TEXT_TURN == collapse_deltas([frame["type"] for frame in frames])
        assert "Answer to: Northern route" == north_final.output_text
        assert "Answer to: Southern route" == south_final.output_text
        assert "Answer to: Compare both" == fork.output_text
        assert north_final.id == fork.previous_response_id
        assert fork.usage is not None
        assert 0 < fork.usage.input_tokens_details.cached_tokens

    run(scenario)


def test_named_lane_error_reaches_its_lane(local_server: RunningServer) -> None:
    """A request-scoped error on a named lane echoes its ``stream_id``
    (docs/protocol.md#error-codes), so the session helper raises it from that lane's
    ``get_final_response()``; the lane then runs the next response."""
    wire = StrictWire()
    limits = ResponsesWebSocketLimits(
        max_lanes=2,
        max_events_per_lane=64,
        max_events=64,
        max_bytes_per_lane=1 << 20,
        max_bytes=1 << 20,
    )

    async def scenario() -> None:
        async with client_for(local_server) as client, client.responses.connect() as connection:
            wire.attach(connection)
            async with AsyncResponsesWebSocketSession(connection, limits=limits) as session:
                lane = session.lane("east")
                await lane.send(
                    {
                        "type": "response.create",
                        "model": MODEL,
                        "previous_response_id": "resp_gone",
                        "input": "Resume",
                    }
                )
                with pytest.raises(ResponsesWebSocketError) as raised:
                    await lane.get_final_response()
                await lane.send({"type": "response.create", "model": MODEL, "input": "Restart"})
                final = await lane.get_final_response()

        error = raised.value.event
        assert isinstance(error, ResponseWsError)
        assert ("east", 400, "previous_response_not_found") == (
            error.stream_id,
            error.status,
            error.error.code,
        )
        assert "Answer to: Restart" == final.output_text
        assert {"east"} == {frame["stream_id"] for frame in wire.frames}

    run(scenario)


@pytest.mark.parametrize("close_code", [1000, 1001])
def test_expired_connection_is_closed(serve: Callable[..., RunningServer], close_code: int) -> None:
    """At the connection age limit an idle socket receives the connection-scoped
    ``websocket_connection_limit_reached`` error (no ``stream_id``) and is then closed with
    the configured code (docs/protocol.md#connection-age), which ends the SDK's ``async for``
    without an error."""
    running = serve(max_connection_age=0.5, expiry_close_code=close_code)
    wire = StrictWire()

    async def scenario() -> None:
        async with client_for(running) as client, client.responses.connect() as connection:
            wire.attach(connection)
            events = await drain(connection)
            assert close_code == connection._connection.close_code

        [error] = events
        assert isinstance(error, ResponseWsError)
        assert {
            "type": "error",
            "status": 400,
            "error": {
                "type": "invalid_request_error",
                "code": "websocket_connection_limit_reached",
                "message": "Responses websocket connection limit reached (60 minutes). "
                "Create a new websocket connection to continue.",
                "param": None,
            },
        } == wire.frames[0]

    run(scenario)


def test_expired_connection_left_open_refuses_new_responses(
    serve: Callable[..., RunningServer],
) -> None:
    """With ``expiry_close_code=None`` the socket stays open after the limit error, and a
    ``response.create`` sent afterwards is answered with the same error
    (docs/protocol.md#connection-age)."""
    running = serve(max_connection_age=0.3, expiry_close_code=None)
    wire = StrictWire()

    async def scenario() -> None:
        async with client_for(running) as client, client.responses.connect() as connection:
            wire.attach(connection)
            [unprompted] = await receive_response(connection)
            await connection.response.create(model=MODEL, input="One more?", stream_id="late")
            [answer] = await receive_response(connection)

        assert isinstance(unprompted, ResponseWsError)
        assert isinstance(answer, ResponseWsError)
        assert "websocket_connection_limit_reached" == unprompted.error.code
        assert wire.frames[0] == wire.frames[1]

    run(scenario)


def test_expiry_waits_for_the_response_in_flight(serve: Callable[..., RunningServer]) -> None:
    """A response still running at the age limit finishes first; the limit error and the
    close follow its terminal event (docs/protocol.md#connection-age, local rule)."""
    running = serve(max_connection_age=0.3, latency=LatencyModel(time_to_first_token=0.6))

    async def scenario() -> None:
        async with client_for(running) as client, client.responses.connect() as connection:
            StrictWire().attach(connection)
            await connection.response.create(model=MODEL, input="Slow question")
            events = await drain(connection)
            assert 1000 == connection._connection.close_code

        assert ("response.completed", "error") == (events[-2].type, events[-1].type)
        assert isinstance(events[-1], ResponseWsError)
        assert "websocket_connection_limit_reached" == events[-1].error.code

    run(scenario)


def test_wrong_key_is_refused_at_the_handshake(local_server: RunningServer) -> None:
    """A wrong API key is refused during the handshake with HTTP 401 and the JSON error
    body; the SDK raises ``websockets.exceptions.InvalidStatus`` from ``connect()``
    (docs/protocol.md#refused-handshakes)."""

    async def scenario() -> None:
        async with client_for(local_server, api_key="sk-wrong") as client:
            with pytest.raises(InvalidStatus) as raised:
                async with client.responses.connect():
                    pass  # pragma: no cover - the handshake must fail

        response = raised.value.response
        assert 401 == response.status_code
        assert "application/json" == response.headers["content-type"]
        body = json.loads(response.body or b"")
        assert {
            "type": "invalid_request_error",
            "code": "invalid_api_key",
            "param": None,
        } == {key: body["error"][key] for key in ("type", "code", "param")}
        assert isinstance(body["error"]["message"], str)

    run(scenario)


def test_default_lane_is_fifo(local_server: RunningServer) -> None:
    """Two creates sent back to back on the default lane are answered one after the other,
    in order and without interleaving (docs/protocol.md#lanes-and-limits)."""
    wire = StrictWire()

    async def scenario() -> None:
        async with client_for(local_server) as client, client.responses.connect() as connection:
            wire.attach(connection)
            await connection.response.create(model=ECHO_MODEL, input="first in line")
            await connection.response.create(model=ECHO_MODEL, input="second in line")
            first = await receive_response(connection)
            second = await receive_response(connection)

        assert "first in line" == final_response(first).output_text
        assert "second in line" == final_response(second).output_text
        numbers = [frame["sequence_number"] for frame in wire.frames]
        assert [*range(len(first)), *range(len(second))] == numbers

    run(scenario)


def test_steering_is_refused_by_the_local_models(serve: Callable[..., RunningServer]) -> None:
    """``response.steer`` on a running response is answered with ``response.steer.failed``
    (``steering_not_supported``, the original input returned) numbered in that response's
    sequence (docs/protocol.md#steering), and the response then completes undisturbed."""
    running = serve(latency=LatencyModel(time_to_first_token=0.3))
    wire = StrictWire()

    async def scenario() -> None:
        async with client_for(running) as client, client.responses.connect() as connection:
            wire.attach(connection)
            await connection.response.create(model=MODEL, input="Plan the trip")
            created = await connection.recv()
            assert isinstance(created, ResponseWsCreated)
            await connection.response.steer(
                previous_response_id=created.response.id, input="Include the return leg"
            )
            events = [created, *await receive_response(connection)]

        steer = next(e for e in events if isinstance(e, ResponseSteerFailedEvent))
        assert ("steering_not_supported", "invalid_request_error") == (
            steer.error.code,
            steer.error.type,
        )
        assert (created.response.id, "Include the return leg") == (
            steer.steer.previous_response_id,
            steer.steer.input,
        )
        types = [event.type for event in events if event is not steer]
        assert TEXT_TURN == collapse_deltas(types)
        assert list(range(len(events))) == [frame["sequence_number"] for frame in wire.frames]
        assert "Answer to: Plan the trip" == final_response(events).output_text

    run(scenario)


def test_admission_errors_keep_the_socket_open(serve: Callable[..., RunningServer]) -> None:
    """Requests refused before they start get one ``error`` each, with the codes of
    docs/protocol.md#error-codes, ``stream_id`` echoed only when it names a valid lane, and the
    socket keeps working; the server also answers on ``/responses`` (a base URL without ``/v1``,
    docs/protocol.md#handshake)."""
    running = serve(max_named_lanes=1)
    wire = StrictWire()

    async def scenario() -> None:
        base_url = running.base_url.removesuffix("/v1")
        async with (
            AsyncOpenAI(base_url=base_url, api_key=running.token, max_retries=0) as client,
            client.responses.connect() as connection,
        ):
            wire.attach(connection)
            await connection.response.create(model=MODEL, input="Hi", stream_id="")
            [empty_lane] = await receive_response(connection)
            await connection.response.create(model=MODEL, input="Hi", stream_id="only")
            only = await receive_response(connection)
            await connection.response.create(model=MODEL, input="Hi", stream_id="one-too-many")
            [too_many] = await receive_response(connection)
            await connection.send_raw("{not json")
            [not_json] = await receive_response(connection)
            await connection.send_raw('{"type": "response.cancel"}')
            [unknown] = await receive_response(connection)
            await connection.response.create(model=MODEL, input="Hi", background=True)
            [background] = await receive_response(connection)
            await connection.response.create(model=MODEL, input="Still there")
            last = await receive_response(connection)

        refused = [frame for frame in wire.frames if frame["type"] == "error"]
        assert 5 * [ResponseWsError] == [
            type(event) for event in (empty_lane, too_many, not_json, unknown, background)
        ]
        assert [
            ("invalid_stream_id", "stream_id", None),
            ("websocket_stream_limit_reached", "stream_id", "one-too-many"),
            ("invalid_json", None, None),
            ("unknown_event_type", "type", None),
            ("invalid_value", "background", None),
        ] == [
            (frame["error"]["code"], frame["error"]["param"], frame.get("stream_id"))
            for frame in refused
        ]
        assert {(400, "invalid_request_error")} == {
            (frame["status"], frame["error"]["type"]) for frame in refused
        }
        assert [] == [frame for frame in refused if "sequence_number" in frame]
        assert "Answer to: Hi" == final_response(only).output_text
        assert "Answer to: Still there" == final_response(last).output_text

    run(scenario)


def test_pings_are_answered_while_streaming(serve: Callable[..., RunningServer]) -> None:
    """The server answers WebSocket pings promptly even in the middle of a response
    (docs/protocol.md#frames-sizes-and-keepalive): the response stalls for good after its first
    delta, and a ping sent then still gets its pong while the response is running."""
    # Events 0-4 are created, in_progress, output_item.added, content_part.added and the
    # first delta; then the stream stops for good (TCP and pings alive). A pong can only
    # come from a server that answers pings mid-response.
    running = serve(faults=(Fault("stall", after_events=5),))

    async def scenario() -> None:
        async with client_for(running) as client, client.responses.connect() as connection:
            StrictWire().attach(connection)
            await connection.response.create(
                model=MODEL, input="Tell me about the long and winding road ahead"
            )
            while (await connection.recv()).type != "response.output_text.delta":
                pass
            pong = await connection._connection.ping()
            await pong  # bounded by SCENARIO_TIMEOUT
            # The server is idle in the stall: its counters stay still while we read them.
            statistics = running.statistics()

        assert (1, 1, 0) == (
            statistics.faults_fired,
            statistics.responses_started,
            statistics.responses_completed,
        )

    run(scenario)


def test_failed_turn_keeps_its_response_object(serve: Callable[..., RunningServer]) -> None:
    """A model failure ends the response with ``response.failed``
    (docs/protocol.md#terminal-events-and-usage): the same response object as at
    ``response.created`` (id and ``created_at``) with status ``failed`` and ``error.code``; the
    socket stays usable for the next turn."""
    # The failure comes a full second after response.created, so a timestamp taken anew
    # for the failed object would show.
    running = serve(
        script={"turns": [{"failed": {"code": "server_error", "message": "The model broke."}}]},
        latency=LatencyModel(time_to_first_token=1.0),
    )

    async def scenario() -> None:
        async with client_for(running) as client, client.responses.connect() as connection:
            StrictWire().attach(connection)
            await connection.response.create(model="local-scripted-1", input="Try")
            events = await receive_response(connection)
            await connection.response.create(model=MODEL, input="Try again")
            after = await receive_response(connection)

        created, failed = events[0], events[-1]
        assert isinstance(created, ResponseWsCreated)
        assert isinstance(failed, ResponseWsFailed)
        assert ["response.created", "response.in_progress", "response.failed"] == [
            event.type for event in events
        ]
        assert (created.response.id, created.response.created_at) == (
            failed.response.id,
            failed.response.created_at,
        )
        assert ("failed", None) == (failed.response.status, failed.response.completed_at)
        assert failed.response.error is not None
        assert ("server_error", "The model broke.") == (
            failed.response.error.code,
            failed.response.error.message,
        )
        assert "Answer to: Try again" == final_response(after).output_text

    run(scenario)


def test_store_true_outlives_the_connection(local_server: RunningServer) -> None:
    """A ``store: true`` response can be continued from another connection, while a
    ``store: false`` one is gone with its socket: ``previous_response_not_found``
    (docs/protocol.md#continuing-a-chain)."""

    async def scenario() -> None:
        async with client_for(local_server) as client:
            async with client.responses.connect() as first:
                StrictWire().attach(first)
                await first.response.create(model=MODEL, input="Remember Lisbon", store=True)
                stored = final_response(await receive_response(first))
                await first.response.create(model=MODEL, input="Forget Oslo", store=False)
                unstored = final_response(await receive_response(first))
            async with client.responses.connect() as second:
                StrictWire().attach(second)
                await second.response.create(
                    model=MODEL, previous_response_id=stored.id, input="Where was it"
                )
                hydrated = final_response(await receive_response(second))
                await second.response.create(
                    model=MODEL, previous_response_id=unstored.id, input="And this one"
                )
                [error] = await receive_response(second)

        assert stored.id == hydrated.previous_response_id
        assert "Answer to: Where was it" == hydrated.output_text
        assert isinstance(error, ResponseWsError)
        assert ("previous_response_not_found", "previous_response_id") == (
            error.error.code,
            error.error.param,
        )

    run(scenario)


# -- the `orchestrator serve` command -----------------------------------------------------------

ORCHESTRATOR: Final = Path(sys.executable).with_name("orchestrator")


@attrs.define(eq=False)
class _Lines:
    """Lines of a pipe, read by a thread so that waiting for one can time out."""

    lines: queue.Queue[str | None] = attrs.field(factory=queue.Queue)
    _thread: threading.Thread | None = None

    def follow(self, pipe: Any) -> None:
        def read() -> None:
            for line in pipe:
                self.lines.put(line.rstrip("\n"))
            self.lines.put(None)

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()

    def next(self) -> str | None:
        return self.lines.get(timeout=SCENARIO_TIMEOUT)

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join(SCENARIO_TIMEOUT)


def _drive_serve_command(process: subprocess.Popen[str], stdout: _Lines, token: str | None) -> None:
    """Read where ``orchestrator serve`` listens, run a turn there, then press Ctrl-C."""
    serving, base_url = stdout.next(), stdout.next()
    assert serving is not None
    assert base_url is not None
    assert serving.startswith("serving ws://127.0.0.1:")
    assert serving.endswith("/v1/responses")
    port = serving.removeprefix("serving ws://127.0.0.1:").removesuffix("/v1/responses")
    assert f"base_url http://127.0.0.1:{port}/v1" == base_url
    if token is None:
        line = stdout.next()
        assert line is not None
        assert line.startswith("token ")
        key = line.removeprefix("token ")
        assert 20 < len(key)
    else:
        key = token

    async def scenario() -> None:
        base = base_url.removeprefix("base_url ")
        async with (
            AsyncOpenAI(base_url=base, api_key=key, max_retries=0) as client,
            client.responses.connect() as connection,
        ):
            StrictWire().attach(connection)
            await connection.response.create(model=MODEL, input="Are you there")
            events = await receive_response(connection)
            process.send_signal(signal.SIGINT)
            # Promptly: not after the server's 5 s close timeout.
            assert [] == await asyncio.wait_for(drain(connection), SHUTDOWN_TIMEOUT)
            assert 1001 == connection._connection.close_code
        assert "Answer to: Are you there" == final_response(events).output_text

    run(scenario)


@pytest.mark.parametrize("token", [None, "tok-conformance-1"])
def test_serve_command(token: str | None) -> None:
    """``orchestrator serve --port 0`` prints ``serving ws://...`` once it listens, then its
    ``base_url`` and, only when ``--token`` is not given, the random token; the SDK runs a
    turn against it; Ctrl-C (SIGINT) closes the open connection with 1001 "going away"
    (docs/protocol.md#close-codes) and stops the server cleanly with exit status 0."""
    command = [str(ORCHESTRATOR), "serve", "--port", "0", "--seed", "1"]
    if token is not None:
        command += ["--token", token]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        stdout = _Lines()
        stdout.follow(process.stdout)
        try:
            _drive_serve_command(process, stdout, token)
            process.wait(SCENARIO_TIMEOUT)
            stdout.join()
        finally:
            if process.poll() is None:  # pragma: no cover - only when the test already failed
                process.kill()
                process.wait()
        assert process.stderr is not None
        errors = process.stderr.read()
    assert 0 == process.returncode, errors
    assert None is stdout.next()  # nothing more was printed: the URL came once
    assert "stopping" in errors


def test_hosted_tools_validate_against_the_sdks_models(local_server: RunningServer) -> None:
    """Every simulated hosted tool's item (web_search_call, file_search_call,
    code_interpreter_call, image_generation_call, mcp_list_tools, mcp_approval_request, and
    the mcp_call made once the SDK approves it) parses strictly as the SDK's own model, with
    no field the SDK does not know."""
    wire = StrictWire()
    mcp = {
        "type": "mcp",
        "server_label": "docs",
        "server_url": "https://mcp.example.org/mcp",
        "require_approval": "always",
    }
    tools: Any = [
        {"type": "web_search"},
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "image_generation"},
        mcp,
    ]

    async def scenario() -> None:
        async with client_for(local_server) as client, client.responses.connect() as connection:
            wire.attach(connection)
            await connection.response.create(
                model=MODEL, input="What is 6 * 7?", tools=tools, store=False
            )
            first = (await receive_response(connection))[-1]
            assert isinstance(first, ResponseWsCompleted)
            request = first.response.output[-1]
            assert "mcp_approval_request" == request.type
            await connection.response.create(
                model=MODEL,
                input=[
                    {
                        "type": "mcp_approval_response",
                        "approval_request_id": request.id,
                        "approve": True,
                    }
                ],
                previous_response_id=first.response.id,
                tools=tools,
                store=False,
            )
            second = (await receive_response(connection))[-1]
        assert isinstance(second, ResponseWsCompleted)
        assert [
            "web_search_call",
            "file_search_call",
            "code_interpreter_call",
            "image_generation_call",
            "mcp_list_tools",
            "mcp_approval_request",
        ] == [item.type for item in first.response.output]
        assert ["mcp_call", "message"] == [item.type for item in second.response.output]
        assert "42" in second.response.output_text
        assert len(wire.frames) == wire.parsed

    run(scenario)
