"""Model settings on the embedded server: every setting accepted and echoed, and the ones
that mean something offline applied (tool_choice, parallel_tool_calls, max_tool_calls,
max_output_tokens, text.format)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the test extras
import pytest
import trio
from hypothesis import given, settings, strategies as st

from orchestrator.core.protocol.events import FunctionCallItem, FunctionTool, MessageItem
from orchestrator.core.server import LocalServer, ServerConfig
from orchestrator.core.server.generic import answer_for_schema
from orchestrator.core.server.models import (
    CallSpec,
    GenericPolicy,
    ModelReply,
    ModelRequest,
    limit_output,
)

from .test_models import SEARCH, _names, _request, _validator, tool_schemas
from .wire import LOOKUP_TOOL, calls_of, memory_client, output_for

REPORT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "high_c": {"type": "number"},
        "conditions": {"type": "array", "items": {"type": "string"}},
        "summary": {"type": "string"},
        "level": {"enum": ["low", "high"]},
    },
    "required": ["city", "high_c", "conditions", "summary", "level"],
    "additionalProperties": False,
}
TEXT_FORMAT: dict[str, Any] = {
    "format": {"type": "json_schema", "name": "Report", "schema": REPORT, "strict": True}
}
EVERY_SETTING: dict[str, Any] = {
    "reasoning": {"effort": "low", "summary": "auto"},
    "temperature": 0.2,
    "top_p": 0.9,
    "max_output_tokens": 500,
    "max_tool_calls": 4,
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "truncation": "auto",
    "service_tier": "flex",
    "metadata": {"team": "trip"},
    "prompt_cache_key": "trip-v1",
    "safety_identifier": "user-1",
    "text": {"verbosity": "low", "format": {"type": "text"}},
}


def text_of(events: list[dict[str, Any]]) -> str:
    return events[-1]["response"]["output"][-1]["content"][0]["text"]


async def test_every_setting_is_accepted_and_echoed(autojump_clock):
    """A create carrying every setting completes, and the response object echoes each."""
    server = LocalServer.from_config(ServerConfig(seed=1))
    async with memory_client(server) as client:
        with trio.fail_after(10):
            events = await client.turn(model="local-generic", input="Hello", **EVERY_SETTING)
    response = events[-1]["response"]
    assert "response.completed" == events[-1]["type"]
    for name, value in EVERY_SETTING.items():
        assert value == response[name], name


async def test_a_json_schema_answer_is_valid_and_uses_the_tool_results(autojump_clock):
    """With text.format json_schema the generic model answers JSON valid against the schema;
    a field named like one a tool returned takes its value, free text gets the prose."""
    server = LocalServer.from_config(ServerConfig(seed=1))
    async with memory_client(server) as client:
        with trio.fail_after(10):
            first = await client.turn(
                model="local-generic",
                input="Weather in Lisbon?",
                tools=[LOOKUP_TOOL],
                text=TEXT_FORMAT,
            )
            result = {"city": "Lisbon", "high_c": 24.5, "conditions": ["sunny"], "level": "max"}
            second = await client.turn(
                model="local-generic",
                input=[output_for(call, json.dumps(result)) for call in calls_of(first)],
                previous_response_id=first[-1]["response"]["id"],
                tools=[LOOKUP_TOOL],
                text=TEXT_FORMAT,
            )
    answer = json.loads(text_of(second))
    jsonschema.validate(answer, REPORT)
    assert ("Lisbon", 24.5, ["sunny"], "low") == (
        answer["city"],
        answer["high_c"],
        answer["conditions"],
        answer["level"],  # "max" is not in the enum: drawn instead
    )
    assert answer["summary"].startswith("Written by the local model")


async def test_a_json_object_answer_wraps_the_prose(autojump_clock):
    """text.format json_object: the answer is an object holding the prose."""
    server = LocalServer.from_config(ServerConfig(seed=1))
    async with memory_client(server) as client:
        with trio.fail_after(10):
            events = await client.turn(
                model="local-generic", input="Hi", text={"format": {"type": "json_object"}}
            )
    assert {"answer": "Answer to: Hi"} == json.loads(text_of(events))


@settings(max_examples=60, deadline=None)
@given(schema=tool_schemas, text=st.text(max_size=80))
def test_json_schema_answers_always_validate(schema, text):
    """Whatever the schema and the question, the answer validates, every property filled."""
    request = _request(
        tools=(),
        context=(MessageItem.user(text),),
        text_format={"type": "json_schema", "name": "out", "schema": schema, "strict": False},
    )
    answer = json.loads(GenericPolicy().respond(request).text or "")
    _validator(schema).validate(answer)
    assert set(schema.get("properties", {})) == set(answer)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | st.floats(-1e3, 1e3) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_names, children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(schema=tool_schemas, known=st.dictionaries(_names, _json, max_size=8))
def test_tool_results_are_used_only_where_they_fit(schema, known):
    """Values the tools returned fill same-named fields only when they validate there."""
    answer = json.loads(answer_for_schema(schema, "a question", prose="prose", known=known))
    _validator(schema).validate(answer)


def test_tool_choice_required_forces_a_call_even_after_every_tool_ran():
    """required: the model calls a tool although each was called since the question (the
    runtime sends auto after a task's first turn, so an agent can still answer)."""
    called = (
        MessageItem.user("Weather in Faro?"),
        FunctionCallItem(call_id="c1", name="lookup", arguments="{}"),
        FunctionCallItem(call_id="c2", name="search", arguments="{}"),
    )
    policy = GenericPolicy()
    assert policy.respond(_request(context=called)).calls == ()
    forced = policy.respond(_request(context=called, tool_choice="required"))
    assert ["lookup"] == [call.name for call in forced.calls]
    named = policy.respond(
        _request(context=called, tool_choice={"type": "function", "name": "search"})
    )
    assert ["search"] == [call.name for call in named.calls]


def test_max_tool_calls_caps_the_calls_of_a_response():
    """max_tool_calls: at most that many calls in one response."""
    reply = GenericPolicy().respond(_request(max_tool_calls=1))
    assert ["lookup"] == [call.name for call in reply.calls]


def test_limit_output_cuts_text_at_a_word_and_drops_calls_that_do_not_fit():
    """max_output_tokens counts what the server streams: words of text, pieces of call
    arguments; a reply that does not fit is cut and marked incomplete."""
    reply = ModelReply(text="one two three four five")
    assert reply is limit_output(reply, 5)
    cut = limit_output(reply, 3)
    assert ("one two three", "max_output_tokens") == (cut.text, cut.incomplete)
    calls = ModelReply(
        calls=(CallSpec("a", '{"x":1}'), CallSpec("b", '{"query":"a long query here"}'))
    )
    kept = limit_output(calls, 2)
    assert (["a"], "max_output_tokens") == ([c.name for c in kept.calls], kept.incomplete)
    failed = ModelReply(failed="server_error")
    assert failed is limit_output(failed, 1)


async def test_max_output_tokens_ends_the_response_incomplete(autojump_clock):
    """An answer longer than max_output_tokens ends response.incomplete with reason
    max_output_tokens, its message cut and marked incomplete, usage counting what was sent."""
    server = LocalServer.from_config(ServerConfig(seed=1))
    question = (
        "Tell me everything about the old trams of Lisbon, their routes through Alfama and "
        "Graça, the hills they climb, the timetables in winter and summer, and the fares"
    )
    async with memory_client(server) as client:
        with trio.fail_after(10):
            events = await client.turn(model="local-generic", input=question, max_output_tokens=16)
            whole = await client.turn(model="local-generic", input=question)
    final = events[-1]
    assert "response.incomplete" == final["type"]
    response = final["response"]
    assert ("incomplete", {"reason": "max_output_tokens"}) == (
        response["status"],
        response["incomplete_details"],
    )
    message = response["output"][0]
    assert "incomplete" == message["status"]
    assert text_of(whole).startswith(message["content"][0]["text"])
    assert 16 == response["usage"]["output_tokens"]
    assert whole[-1]["response"]["usage"]["output_tokens"] > 16


@pytest.mark.parametrize("parallel", [True, False])
async def test_parallel_tool_calls_on_the_wire(autojump_clock, parallel):
    """parallel_tool_calls false: one call per response; true: every tool at once."""
    server = LocalServer.from_config(ServerConfig(seed=1))
    async with memory_client(server) as client:
        with trio.fail_after(10):
            events = await client.turn(
                model="local-generic",
                input="Weather in Faro? Top 3.",
                tools=[LOOKUP_TOOL, SEARCH],
                parallel_tool_calls=parallel,
            )
    assert (["lookup", "search"] if parallel else ["lookup"]) == [
        call["name"] for call in calls_of(events)
    ]


def test_a_typed_terminal_tool_gets_a_schema_valid_answer():
    """A finish tool whose answer is an object (a typed planner) gets the schema filled."""
    finish = FunctionTool(
        "finish",
        {
            "type": "object",
            "properties": {"answer": REPORT},
            "required": ["answer"],
            "additionalProperties": False,
        },
    )
    reply = GenericPolicy().respond(
        ModelRequest(
            model="local-generic",
            instructions=None,
            tools=(finish,),
            context=(MessageItem.user("Weather in Porto?"),),
        )
    )
    (call,) = reply.calls
    jsonschema.validate(json.loads(call.arguments)["answer"], REPORT)
