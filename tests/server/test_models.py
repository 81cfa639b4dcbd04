"""The local models (docs/protocol.md#determinism-and-latency): generic tool arguments valid against
any schema a tool can have, summaries and terminal tools; scripted turns from JSON and YAML files;
echo."""

from __future__ import annotations

import json
import string
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the test extras
import pytest
import trio
from hypothesis import example, given, settings, strategies as st

from orchestrator.core.protocol.events import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    MessageItem,
)
from orchestrator.core.server import LocalServer, ServerConfig
from orchestrator.core.server.generic import LEAD_IN
from orchestrator.core.server.models import GenericPolicy, ModelRequest, arguments_for
from orchestrator.errors import ConfigurationError

from .wire import LOOKUP_TOOL, calls_of, memory_client, output_for

# -- JSON schemas of the kinds a tool can have ---------------------------------------------------

_names = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12)


@st.composite
def _string_schema(draw: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    low = draw(st.none() | st.integers(0, 20))
    high = draw(st.none() | st.integers(low or 0, 40))
    if low is not None:
        schema["minLength"] = low
    if high is not None:
        schema["maxLength"] = high
    if draw(st.booleans()):
        schema["description"] = draw(st.text(max_size=20))
    if draw(st.integers(0, 5)) == 0:
        return {"type": "string", "format": "date"}  # a date has no other length
    return schema


@st.composite
def _integer_schema(draw: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    low = draw(st.none() | st.integers(-1000, 1000))
    high = draw(st.none() | st.integers(low if low is not None else -1000, 2000))
    exclusive = draw(st.booleans())
    if low is not None and high is not None and exclusive and high - low < 2:
        high = low + 2
    if low is not None:
        schema["exclusiveMinimum" if exclusive else "minimum"] = low
    if high is not None:
        schema["exclusiveMaximum" if exclusive else "maximum"] = high
    if low is None and high is None and draw(st.booleans()):
        schema["multipleOf"] = draw(st.integers(1, 12))
    return schema


@st.composite
def _number_schema(draw: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number"}
    low = draw(st.none() | st.floats(-1e6, 1e6, allow_nan=False))
    high = draw(st.none() | st.floats(low if low is not None else -1e6, 2e6, allow_nan=False))
    exclusive = draw(st.booleans())
    if low is not None and high is not None and exclusive and high - low < 1:
        high = low + 1
    if low is not None:
        schema["exclusiveMinimum" if exclusive else "minimum"] = low
    if high is not None:
        schema["exclusiveMaximum" if exclusive else "maximum"] = high
    return schema


_enum_schema = st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=5, unique=True).map(
    lambda options: {"type": "string", "enum": options}
)
_leaf = st.one_of(
    _string_schema(),
    _integer_schema(),
    _number_schema(),
    st.just({"type": "boolean"}),
    _enum_schema,
    st.just({"type": "null"}),
    st.integers().map(lambda value: {"const": value}),
)


def _nullable(schema: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Optional values the way Pydantic and our tool registry spell them."""
    return schema.map(lambda inner: {"anyOf": [inner, {"type": "null"}]})


@st.composite
def _array_schema(draw: Any, items: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": draw(items)}
    low = draw(st.none() | st.integers(0, 4))
    high = draw(st.none() | st.integers(max(low or 0, 1), 6))
    if low is not None:
        schema["minItems"] = low
    if high is not None:
        schema["maxItems"] = high
    return schema


@st.composite
def _object_schema(draw: Any, values: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    properties = draw(st.dictionaries(_names, values, max_size=6))
    required = [name for name in properties if draw(st.booleans())]
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


_value_schemas = st.recursive(
    _leaf,
    lambda children: st.one_of(
        _array_schema(children),
        _object_schema(children),
        _nullable(children),
    ),
    max_leaves=12,
)
tool_schemas = _object_schema(_value_schemas)


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


@settings(max_examples=300)
@given(schema=tool_schemas, text=st.text(max_size=80))
def test_generic_arguments_validate_against_the_tool_schema(schema, text):
    """Generic model: arguments for any tool schema (strings with length limits and formats,
    integers and numbers with inclusive/exclusive bounds and multiples, booleans, enums,
    consts, arrays with item counts, nested objects, optional and anyOf-null properties)
    validate against that schema, whatever the conversation says."""
    arguments = arguments_for(FunctionTool("tool", schema), text)
    _validator(schema).validate(json.loads(arguments))


@settings(max_examples=100)
@given(schema=tool_schemas, text=st.text(max_size=80))
@example(  # a multiple of an integer past 2**53, once computed in floats
    schema={
        "type": "object",
        "properties": {"n": {"type": "array", "items": {"type": "integer", "multipleOf": 3}}},
    },
    text="10000000000000003 apples",
)
def test_terminal_tool_arguments_validate_too(schema, text):
    """Generic model: a terminal tool's arguments (the answer text) validate as well."""
    arguments = arguments_for(FunctionTool("finish", schema), text, prefer_text=True)
    _validator(schema).validate(json.loads(arguments))


def test_generic_arguments_resolve_refs():
    """Generic model: ``$ref`` to ``$defs`` (Pydantic's nested models) is followed."""
    schema = {
        "type": "object",
        "$defs": {
            "Place": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            }
        },
        "properties": {
            "place": {"$ref": "#/$defs/Place"},
            "days": {"type": "integer", "minimum": 1},
        },
        "required": ["place", "days"],
    }
    arguments = json.loads(arguments_for(FunctionTool("plan", schema), "Trip to Lisbon for 3 days"))
    _validator(schema).validate(arguments)
    assert {"place": {"city": "Lisbon"}, "days": 3} == arguments


# -- generic: turns --------------------------------------------------------------------------

FINISH: dict[str, Any] = {
    "type": "function",
    "name": "finish",
    "parameters": {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    },
}
SEARCH: dict[str, Any] = {
    "type": "function",
    "name": "search",
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "maximum": 5}},
        "required": ["query", "limit"],
    },
}


async def test_generic_calls_tools_then_summarises_their_outputs():
    """Generic model: first every offered tool (in parallel), then a summary of the outputs."""
    server = LocalServer.from_config(ServerConfig(seed=1))
    async with memory_client(server) as client:
        with trio.fail_after(10):
            first = await client.turn(
                model="local-generic",
                input="Weather in Lisbon? Top 3.",
                tools=[LOOKUP_TOOL, SEARCH],
            )
            calls = calls_of(first)
            outputs = [output_for(call, f"{call['name']} says sunny") for call in calls]
            second = await client.turn(
                model="local-generic",
                input=outputs,
                previous_response_id=first[-1]["response"]["id"],
                tools=[LOOKUP_TOOL, SEARCH],
            )
    assert ["lookup", "search"] == [call["name"] for call in calls]
    assert {"city": "Lisbon"} == json.loads(calls[0]["arguments"])
    assert {"query": "Weather in Lisbon? Top 3.", "limit": 3} == json.loads(calls[1]["arguments"])
    text = second[-1]["response"]["output"][0]["content"][0]["text"]
    assert f"{LEAD_IN}\nlookup: lookup says sunny\nsearch: search says sunny" == text


async def test_generic_calls_terminal_tools_last_with_the_summary():
    """Generic model: ``finish`` waits until every other tool answered, and gets the
    summary as its answer."""
    server = LocalServer.from_config(ServerConfig(seed=1))
    tools = [FINISH, LOOKUP_TOOL]
    async with memory_client(server) as client:
        with trio.fail_after(10):
            first = await client.turn(model="local-generic", input="Weather in Porto?", tools=tools)
            second = await client.turn(
                model="local-generic",
                input=[output_for(call, "rainy") for call in calls_of(first)],
                previous_response_id=first[-1]["response"]["id"],
                tools=tools,
            )
            third = await client.turn(
                model="local-generic",
                input=[output_for(call, "done") for call in calls_of(second)],
                previous_response_id=second[-1]["response"]["id"],
                tools=tools,
            )
    assert ["lookup"] == [call["name"] for call in calls_of(first)]
    (finish,) = calls_of(second)
    assert "finish" == finish["name"]
    assert {"answer": f"{LEAD_IN}\nlookup: rainy"} == json.loads(finish["arguments"])
    assert "message" == third[-1]["response"]["output"][0]["type"]


def _request(**fields: Any) -> ModelRequest:
    base: dict[str, Any] = {
        "model": "local-generic",
        "instructions": None,
        "tools": (
            FunctionTool("lookup", LOOKUP_TOOL["parameters"]),
            FunctionTool("search", SEARCH["parameters"]),
        ),
        "context": (MessageItem.user("Weather in Faro?"),),
    }
    return ModelRequest(**{**base, **fields})


def test_generic_respects_tool_choice_and_parallel_calls():
    """Generic model: ``tool_choice`` none/function and ``parallel_tool_calls: false``."""
    policy = GenericPolicy()
    assert policy.respond(_request(tool_choice="none")).calls == ()
    only = policy.respond(_request(tool_choice={"type": "function", "name": "search"}))
    assert ["search"] == [call.name for call in only.calls]
    one = policy.respond(_request(parallel_tool_calls=False))
    assert ["lookup"] == [call.name for call in one.calls]
    call = FunctionCallItem(call_id="c1", name="lookup", arguments="{}")
    next_one = policy.respond(
        _request(
            parallel_tool_calls=False,
            context=(
                MessageItem.user("Weather in Faro?"),
                call,
                FunctionCallOutputItem(call_id="c1", output="hot"),
            ),
        )
    )
    assert ["search"] == [call.name for call in next_one.calls]


def test_generic_without_tools_answers_the_question():
    """Generic model: no tools, a plain answer; nothing asked, ``Ready.``."""
    policy = GenericPolicy()
    assert "Answer to: Weather in Faro?" == policy.respond(_request(tools=())).text
    assert "Ready." == policy.respond(_request(tools=(), context=())).text


# -- scripted --------------------------------------------------------------------------------

TURNS = [{"text": "one"}, {"text": "two"}]


def _write(tmp_path, name: str, data: Any) -> str:
    path = tmp_path / name
    if name.endswith((".yaml", ".yml")):
        import yaml

        path.write_text(yaml.safe_dump(data))
    else:
        path.write_text(json.dumps(data))
    return str(path)


async def _texts(server: LocalServer, model: str, count: int) -> list[str]:
    """Run ``count`` turns of one chain; the text (or failure code) of each."""
    texts: list[str] = []
    previous: dict[str, Any] = {}
    async with memory_client(server) as client:
        with trio.fail_after(10):
            for _ in range(count):
                events = await client.turn(model=model, input="next", **previous)
                response = events[-1]["response"]
                if response["status"] == "failed":
                    texts.append("failed:" + response["error"]["code"])
                    break
                texts.append(response["output"][0]["content"][0]["text"])
                previous = {"previous_response_id": response["id"]}
    return texts


@pytest.mark.parametrize("name", ["script.json", "script.yaml", "script.yml"])
async def test_scripted_from_a_file(tmp_path, name):
    """Scripted model: turns from a JSON or YAML file, in order; a bare list is ``turns``."""
    path = _write(tmp_path, name, {"turns": TURNS, "on_exhausted": "cycle"})
    server = LocalServer.from_config(ServerConfig(model="scripted", script=path))
    assert ["one", "two", "one"] == await _texts(server, "anything", 3)
    bare = _write(tmp_path, "bare" + name[6:], TURNS)
    server = LocalServer.from_config(ServerConfig(script=bare))
    assert ["one", "two"] == await _texts(server, "local-scripted", 2)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("repeat_last", ["one", "two", "two", "two"]),
        ("cycle", ["one", "two", "one", "two"]),
        ("fail", ["one", "two", "failed:server_error"]),
    ],
)
async def test_scripted_on_exhausted(mode, expected):
    """Scripted model: what follows the last turn: repeat it, cycle, or fail the response."""
    server = LocalServer.from_config(ServerConfig(script={"turns": TURNS, "on_exhausted": mode}))
    assert expected == await _texts(server, "local-scripted", 4)


async def test_scripted_per_model_scripts():
    """Scripted model: ``models`` keyed by model name, ``default`` for the others."""
    script = {
        "models": {"local-scripted-a": [{"text": "A"}], "default": [{"text": "D"}]},
        "on_exhausted": "repeat_last",
    }
    server = LocalServer.from_config(ServerConfig(script=script))
    assert ["A", "A"] == await _texts(server, "local-scripted-a", 2)
    assert ["D"] == await _texts(server, "local-scripted-b", 1)


async def test_scripted_with_no_turns_fails_the_response():
    """Scripted model: an empty script fails every response with ``server_error``."""
    server = LocalServer.from_config(ServerConfig(script={"turns": []}))
    assert ["failed:server_error"] == await _texts(server, "local-scripted", 1)


async def test_scripted_turn_follows_a_replayed_history():
    """Scripted model: the turn is the number of model turns in the context, so a full
    replay on a new socket resumes at the right turn."""
    server = LocalServer.from_config(ServerConfig(script={"turns": [*TURNS, {"text": "three"}]}))
    history = [
        {"role": "user", "content": "a"},
        {"type": "message", "role": "assistant", "content": "one"},
        {"role": "user", "content": "b"},
        {"type": "message", "role": "assistant", "content": "two"},
        {"role": "user", "content": "c"},
    ]
    async with memory_client(server) as client:
        with trio.fail_after(10):
            events = await client.turn(model="local-scripted", input=history)
    assert "three" == events[-1]["response"]["output"][0]["content"][0]["text"]


@pytest.mark.parametrize(
    ("content", "match"),
    [("{not json", "malformed"), ('{"turns": [{"txt": "typo"}]}', "txt"), ("", "malformed")],
)
def test_bad_script_files_are_configuration_errors(tmp_path, content, match):
    """A malformed script or an unknown key is a ConfigurationError naming the problem."""
    path = tmp_path / "script.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=match):
        LocalServer.from_config(ServerConfig(script=path))


def test_missing_script_is_a_configuration_error(tmp_path):
    """A script path that does not exist, or model scripted without one, is refused."""
    with pytest.raises(ConfigurationError, match="script"):
        LocalServer.from_config(ServerConfig(script=tmp_path / "nope.json"))
    with pytest.raises(ConfigurationError, match="script"):
        LocalServer.from_config(ServerConfig(model="scripted"))


# -- echo ------------------------------------------------------------------------------------


async def test_echo_repeats_the_last_user_message_or_the_tool_outputs():
    """Echo model: the last user message; after tool outputs, the outputs one per line."""
    server = LocalServer.from_config(ServerConfig())
    history = [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "hot"}],
        },
    ]
    async with memory_client(server) as client:
        with trio.fail_after(10):
            plain = await client.turn(model="local-echo", input="repeat me")
            outputs = await client.turn(model="local-echo", input=history)
    assert "repeat me" == plain[-1]["response"]["output"][0]["content"][0]["text"]
    assert "sunny\nhot" == outputs[-1]["response"]["output"][0]["content"][0]["text"]


def test_policy_is_chosen_by_model_name():
    """Without ``model``, names containing echo/scripted pick those; others are generic."""
    server = LocalServer.from_config(ServerConfig(script={"turns": TURNS}))
    assert "echo" == server.policy_for("my-ECHO-model").name
    assert "scripted" == server.policy_for("local-scripted-2").name
    assert "generic" == server.policy_for("gpt-5").name
    forced = LocalServer.from_config(ServerConfig(model="echo"))
    assert "echo" == forced.policy_for("gpt-5").name
