"""Conformance over HTTP: the official ``openai`` SDK's ``client.responses.create(...)``
(streamed and not) and ``client.responses.stream(...)`` drive the embedded server's
``POST /v1/responses`` (docs/protocol.md#over-http), and the Agents SDK's default model
(``OpenAIResponsesModel``, HTTP) runs a tool agent against it.

Every byte the SDK receives passes through :class:`Recorder`, an httpx transport that keeps a
copy of each answer's body: each server-sent event is validated strictly against the SDK's
``ResponseStreamEvent`` types, and each JSON answer against ``Response``; the SDK's own
(lenient) parse must then be the very same typed objects.
"""

from __future__ import annotations

import asyncio
import json
import typing
from typing import TYPE_CHECKING, Annotated, Any, Final

import attrs
import httpx2
import openai
import pydantic
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI
from openai.types.responses import (
    FunctionToolParam,
    Response,
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseStreamEvent,
)

from .test_openai_sdk import assert_same_models, collapse_deltas

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine

    from orchestrator.core.server import RunningServer

pytestmark = pytest.mark.timeout(60)

SCENARIO_TIMEOUT: Final = 20.0
MODEL: Final = "local-generic-1"
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
TEXT_TURN: Final = (
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
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
_LIFECYCLE: Final = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.failed",
        "response.incomplete",
    }
)

# -- strict validation --------------------------------------------------------------------------

# ``ResponseStreamEvent`` carries the SDK's own discriminator marker, which only its lenient
# ``construct`` reads: rebuilt with pydantic's, each event is validated against exactly the
# member the SDK would pick.
_MEMBERS: Final = typing.get_args(typing.get_args(ResponseStreamEvent)[0])
_DISCRIMINATED: Final[Any] = Annotated[
    typing.Union[_MEMBERS],  # noqa: UP007
    pydantic.Field(discriminator="type"),
]
STRICT_EVENT: Final = pydantic.TypeAdapter[Any](_DISCRIMINATED)


def _extras(value: Any, path: str = "") -> list[str]:
    """Dotted paths of every key the SDK's models do not declare, at any depth."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        found.extend(f"{path}{name}" for name in value.model_extra or {})
        for name in type(value).model_fields:
            found.extend(_extras(getattr(value, name), f"{path}{name}."))
    elif isinstance(value, list):
        for item in value:
            found.extend(_extras(item, path))
    elif isinstance(value, dict):
        for key, item in value.items():
            found.extend(_extras(item, f"{path}{key}."))
    return found


def validate_event(data: str) -> pydantic.BaseModel:
    """One SSE event's data as the SDK's typed event, validated in strict mode.

    The only undeclared keys allowed are the ones docs/protocol.md documents: the response
    object's ``store`` and the ``name`` of ``function_call_arguments.done``.
    """
    event = STRICT_EVENT.validate_json(data, strict=True)
    allowed = {"response.store"} if event.type in _LIFECYCLE else set()
    if event.type == "response.function_call_arguments.done":
        allowed = {"name"}
    assert set() == set(_extras(event)) - allowed
    return typing.cast("pydantic.BaseModel", event)


def validate_response(body: bytes) -> Response:
    """A JSON answer as the SDK's ``Response``, validated in strict mode."""
    response = Response.model_validate_json(body, strict=True)
    assert set() == set(_extras(response)) - {"store"}
    return response


@attrs.frozen
class Answer:
    """One HTTP answer the SDK received: status, content type and the body's bytes."""

    status: int
    content_type: str
    body: bytearray

    def events(self) -> list[tuple[str, str]]:
        """The body's server-sent events: ``(event name, data)`` each."""
        assert self.content_type.startswith("text/event-stream")
        events = []
        for block in bytes(self.body).decode().split("\n\n"):
            if not block:
                continue
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            assert {"event", "data"} == fields.keys()
            events.append((fields["event"], fields["data"]))
        return events


@attrs.define(eq=False)
class Recorder(httpx2.AsyncBaseTransport):
    """An httpx transport that keeps a copy of every answer's body as the SDK reads it."""

    answers: list[Answer] = attrs.field(factory=list)
    _inner: httpx2.AsyncHTTPTransport = attrs.field(factory=httpx2.AsyncHTTPTransport)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        answer = Answer(response.status_code, response.headers.get("content-type", ""), bytearray())
        self.answers.append(answer)
        inner = response.stream
        assert isinstance(inner, httpx2.AsyncByteStream)

        class Tee(httpx2.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for chunk in inner:
                    answer.body.extend(chunk)
                    yield chunk

            async def aclose(self) -> None:
                await inner.aclose()

        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=Tee(),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def client_for(
    running: RunningServer, recorder: Recorder, api_key: str | None = None
) -> AsyncOpenAI:
    """An SDK client on the server's HTTP base URL (``http://.../v1``), reading through
    ``recorder``, without retries (a retried request would hide what the server sent)."""
    return AsyncOpenAI(
        base_url=running.base_url,
        api_key=api_key if api_key is not None else running.token,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(transport=recorder),
    )


def run(scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run an asyncio scenario to completion, bounded by ``SCENARIO_TIMEOUT``."""

    async def bounded() -> Any:
        return await asyncio.wait_for(scenario(), SCENARIO_TIMEOUT)

    return asyncio.run(bounded())


def check_stream(answer: Answer, parsed: list[Any]) -> list[pydantic.BaseModel]:
    """Every event of a streamed answer validates strictly, numbered 0, 1, 2...; the SDK's
    own parse of each (``parsed``, in order) is the same typed object."""
    assert 200 == answer.status
    events = answer.events()
    strict = []
    for number, (name, data) in enumerate(events):
        event = validate_event(data)
        assert (name, number) == (event.type, event.sequence_number)  # type: ignore[attr-defined]
        strict.append(event)
    assert len(strict) == len(parsed)
    for expected, actual in zip(strict, parsed, strict=True):
        assert_same_models(expected, actual)
    return strict


def check_whole(answer: Answer, parsed: Response) -> Response:
    """A JSON answer validates strictly and is what the SDK returned."""
    assert (200, "application/json") == (answer.status, answer.content_type)
    response = validate_response(bytes(answer.body))
    assert_same_models(response, parsed)
    return response


# -- the official SDK ---------------------------------------------------------------------------


def test_a_text_turn_streamed_and_not(local_server: RunningServer) -> None:
    """``responses.create(stream=True)``: the canonical text sequence
    (docs/protocol.md#a-text-answer) as typed stream events; ``responses.create()`` without
    stream: the same final response, as a ``Response``."""
    recorder = Recorder()

    async def scenario() -> tuple[list[Any], Response]:
        async with client_for(local_server, recorder) as client:
            stream = await client.responses.create(
                model=MODEL, input="Summarise the quarterly report", stream=True
            )
            events = [event async for event in stream]
            whole = await client.responses.create(model=MODEL, input="Summarise the budget")
        return events, whole

    events, whole = run(scenario)
    streamed, answered = recorder.answers
    check_stream(streamed, events)
    assert TEXT_TURN == collapse_deltas(event.type for event in events)
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert "Answer to: Summarise the quarterly report" == text == completed.response.output_text
    check_whole(answered, whole)
    assert ("completed", "Answer to: Summarise the budget") == (whole.status, whole.output_text)
    assert whole.usage is not None
    assert whole.usage.total_tokens == whole.usage.input_tokens + whole.usage.output_tokens


def test_a_function_call_turn_continued_by_previous_response_id(
    local_server: RunningServer,
) -> None:
    """The generic model calls the offered tool (streamed); the turn continues with
    ``previous_response_id`` and ``store: true`` (the store is all HTTP has) carrying the
    function output, without streaming, and answers from it."""
    recorder = Recorder()

    async def scenario() -> tuple[list[Any], Response]:
        async with client_for(local_server, recorder) as client:
            stream = await client.responses.create(
                model=MODEL,
                input="List the files under Reports",
                tools=[LIST_FILES],
                store=True,
                stream=True,
            )
            events = [event async for event in stream]
            call = events[-1].response.output[0]
            assert isinstance(call, ResponseFunctionToolCall)
            answer = await client.responses.create(
                model=MODEL,
                previous_response_id=events[-1].response.id,
                store=True,
                tools=[LIST_FILES],
                input=[
                    {
                        "type": "function_call_output",
                        "call_id": call.call_id,
                        "output": '{"files": ["a.log", "b.log"]}',
                    }
                ],
            )
        return events, answer

    events, answer = run(scenario)
    streamed, answered = recorder.answers
    check_stream(streamed, events)
    check_whole(answered, answer)
    assert FUNCTION_CALL_TURN == collapse_deltas(event.type for event in events)
    first = events[-1].response
    [call] = first.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert ("list_files", ["path"]) == (call.name, list(json.loads(call.arguments)))
    assert first.id == answer.previous_response_id
    assert "a.log" in answer.output_text
    assert answer.usage is not None
    assert 0 < answer.usage.input_tokens_details.cached_tokens


def test_the_stream_helper_accumulates_the_final_response(local_server: RunningServer) -> None:
    """``client.responses.stream(...)`` (the SDK's accumulating helper, which checks the
    event order) yields its events and a final response equal to the streamed one."""
    recorder = Recorder()

    async def scenario() -> tuple[list[str], Response]:
        async with (
            client_for(local_server, recorder) as client,
            client.responses.stream(
                model=MODEL, input="List the files under Archive", tools=[LIST_FILES]
            ) as stream,
        ):
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        return kinds, final

    kinds, final = run(scenario)
    [answer] = recorder.answers
    strict = [validate_event(data) for _, data in answer.events()]
    assert [event.type for event in strict] == kinds
    assert FUNCTION_CALL_TURN == collapse_deltas(kinds)
    [call] = final.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert {"path": "Archive"} == json.loads(call.arguments)
    completed = strict[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    assert completed.response.id == final.id


@pytest.mark.parametrize("stream", [True, False])
def test_an_unknown_previous_response_id_is_a_bad_request(
    local_server: RunningServer, stream: bool
) -> None:
    """An unknown ``previous_response_id`` (streamed or not) is HTTP 400 with the service's
    body: the SDK raises ``BadRequestError`` with code ``previous_response_not_found`` and
    param ``previous_response_id``."""
    recorder = Recorder()

    async def scenario() -> openai.BadRequestError:
        async with client_for(local_server, recorder) as client:
            with pytest.raises(openai.BadRequestError) as raised:
                await client.responses.create(
                    model=MODEL, input="Go on.", previous_response_id="resp_unknown", stream=stream
                )
        return raised.value

    error = run(scenario)
    assert (400, "previous_response_not_found", "previous_response_id") == (
        error.status_code,
        error.code,
        error.param,
    )
    assert {
        "type": "invalid_request_error",
        "code": "previous_response_not_found",
        "message": "Previous response with id 'resp_unknown' not found.",
        "param": "previous_response_id",
    } == error.body


def test_a_wrong_key_is_an_authentication_error(local_server: RunningServer) -> None:
    """A wrong API key is HTTP 401: the SDK raises ``AuthenticationError`` with code
    ``invalid_api_key``, and nothing in the answer repeats the key."""
    recorder = Recorder()
    wrong_key = "sk-wrong-0123456789abcdef"

    async def scenario() -> openai.AuthenticationError:
        async with client_for(local_server, recorder, api_key=wrong_key) as client:
            with pytest.raises(openai.AuthenticationError) as raised:
                await client.responses.create(model=MODEL, input="Hello", stream=True)
        return raised.value

    error = run(scenario)
    assert (401, "invalid_api_key", "invalid_request_error") == (
        error.status_code,
        error.code,
        error.type,
    )
    assert wrong_key.encode() not in bytes(recorder.answers[0].body)
    assert 0 == local_server.statistics().responses_started


def test_an_error_in_the_stream_is_the_sdks_error_event(
    serve: Callable[..., RunningServer],
) -> None:
    """An error once the stream began (here a scripted model error) reaches the SDK as its
    typed ``ResponseErrorEvent``, the stream's last event."""
    script = {"turns": [{"error": {"code": "server_error", "message": "the model fell over"}}]}
    running = serve(script=script, model="scripted")
    recorder = Recorder()

    async def scenario() -> list[Any]:
        async with client_for(running, recorder) as client:
            stream = await client.responses.create(model=MODEL, input="Go", stream=True)
            return [event async for event in stream]

    events = run(scenario)
    check_stream(recorder.answers[0], events)
    assert ["response.created", "response.in_progress", "error"] == [e.type for e in events]
    assert ("server_error", "the model fell over") == (events[-1].code, events[-1].message)


# -- the Agents SDK's default model -------------------------------------------------------------


@function_tool
def forecast(city: str) -> str:
    """Today's forecast for a city, as JSON.

    Args:
        city: the city.
    """
    return json.dumps({"city": city, "high_c": 24.5, "conditions": ["sunny", "breezy"]})


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_the_agents_sdks_default_model_runs_a_tool_agent(
    local_server: RunningServer, streamed: bool
) -> None:
    """``OpenAIResponsesModel`` (the Agents SDK's default, over HTTP) runs an agent with a
    function tool: the model calls it, the SDK runs it and sends the history back, the
    model answers from the result. Every answer it read validates strictly."""
    set_tracing_disabled(True)  # tracing would export to the service
    recorder = Recorder()

    async def scenario() -> tuple[str, list[str]]:
        async with client_for(local_server, recorder) as client:
            model = OpenAIResponsesModel(model=MODEL, openai_client=client)
            agent: Agent[Any] = Agent(name="meteo", model=model, tools=[forecast])
            if streamed:
                result = Runner.run_streamed(agent, "Weather in Lisbon?")
                async for _ in result.stream_events():
                    pass
            else:
                result = await Runner.run(agent, "Weather in Lisbon?")
            return str(result.final_output), [item.type for item in result.new_items]

    output, kinds = run(scenario)
    assert ["tool_call_item", "tool_call_output_item", "message_output_item"] == kinds
    assert "Lisbon" in output
    assert "24.5" in output
    assert 2 == len(recorder.answers)
    for answer in recorder.answers:
        if streamed:
            assert [validate_event(data) for _, data in answer.events()]
        else:
            validate_response(bytes(answer.body))
    assert 2 == local_server.statistics().http_requests
