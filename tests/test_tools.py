"""Tools: schemas from type hints, and every case of docs/faults.md#tool-calls-from-the-model.

The model is untrusted: whatever it sends, the executor answers with a function_call_output
(or, past the repair budget, ToolRepairBudgetExceeded), never with another exception.
"""

# docs/faults.md#test-hygiene: asserts read ``expected == actual``, so the expected constant comes
# first.

from __future__ import annotations

import enum
import socket  # noqa: TC003 - tool signatures are read at run time
import threading
from pathlib import Path  # noqa: TC003 - tool signatures are read at run time
from typing import Annotated, Any, Literal

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings, strategies as st
from loguru import logger

from actors.tools import (
    DEFAULT_MAX_OUTPUT,
    ArgumentsRejected,
    PathOutsideWorkspace,
    ToolContext,
    ToolDefinitionError,
    ToolExecutor,
    ToolRegistry,
    ToolRepairBudgetExceeded,
    ToolSpec,
    confine,
    resolve_tool,
    tool,
)
from orchestrator.core.observe import EventBus, RuntimeEvent, ToolFinished, ToolStarted
from orchestrator.core.protocol.events import FunctionCallItem, FunctionCallOutputItem, Tool

# -- tools under test --------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(msgspec.Struct):
    """A point on the map."""

    x: int
    y: int = 0


async def search(
    query: str,
    limit: Annotated[int, msgspec.Meta(ge=1, le=50)] = 5,
    mode: Literal["web", "news"] = "web",
    color: Color = Color.RED,
    near: Point | None = None,
) -> list[str]:
    """Search the web.

    Only public pages are searched.

    Args:
        query: what to look for,
            in plain words.
        limit: how many results.
    """
    return [f"{query} #{i}" for i in range(limit)]


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


async def sleepy() -> str:
    """Never returns."""
    await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


def boom(x: int) -> str:
    """Always fails."""
    raise ValueError(f"bad x={x}; api_key=sk-abcdefghij0123456789 Bearer abc.def.ghi")


def unencodable() -> object:
    """Returns something JSON cannot hold."""
    return object()


def big(n: int) -> str:
    """Returns n two-byte characters."""
    return "é" * n


def read_file(path: Path, context: ToolContext) -> str:
    """Reads a file in the workspace."""
    assert context.workspace is not None
    return path.read_text()


def whoami(context: ToolContext) -> dict[str, Any]:
    """Tells which thread ran it and with which context."""
    return {"thread": threading.get_ident(), "call_id": context.call_id, "agent": context.agent}


class Node(msgspec.Struct):
    value: int
    children: list[Node] = []


def walk(tree: Node) -> int:
    """Walks a tree."""
    return tree.value


def count(payload: list[Any]) -> int:
    """Counts the items of any list."""
    return len(payload)


async def now() -> str:
    """No parameters."""
    return "noon"


@pytest.fixture
def registry() -> ToolRegistry:
    registry = ToolRegistry()
    for function in (search, add, sleepy, boom, unencodable, big, read_file, whoami, now):
        registry.add(function)
    return registry


def call(name: str, arguments: str = "{}", call_id: str = "call_1") -> FunctionCallItem:
    return FunctionCallItem(call_id=call_id, name=name, arguments=arguments)


def error_of(item: FunctionCallOutputItem) -> dict[str, Any]:
    assert isinstance(item.output, str)
    decoded = msgspec.json.decode(item.output)
    assert isinstance(decoded, dict)
    return decoded


@pytest.fixture
def warnings_logged():
    """Records of WARNING and above from our packages while the test runs."""
    records: list[Any] = []
    logger.enable("actors")
    handler = logger.add(lambda message: records.append(message.record), level="WARNING")
    yield records
    logger.remove(handler)
    logger.disable("actors")


# -- schemas -----------------------------------------------------------------------------------


def test_schema_from_type_hints_and_docstring():
    """Constraints, Literal, enums, defaults, Struct params and docstring text become schema."""
    spec = ToolSpec.from_callable(search)
    assert "search" == spec.name
    assert "Search the web." == spec.description
    assert {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "what to look for, in plain words."},
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": 50,
                "default": 5,
                "description": "how many results.",
            },
            "mode": {"enum": ["news", "web"], "default": "web"},
            "color": {"enum": ["blue", "red"], "default": "red"},
            "near": {
                "anyOf": [
                    {
                        "type": "object",
                        "description": "A point on the map.",
                        "properties": {
                            "x": {"type": "integer"},
                            "y": {"type": "integer", "default": 0},
                        },
                        "required": ["x"],
                        "additionalProperties": False,
                    },
                    {"type": "null"},
                ],
                "default": None,
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    } == spec.parameters
    assert spec.strict is False  # optional parameters rule out strict mode


def test_a_schema_with_only_required_fields_is_strict():
    """All-required parameters qualify for strict mode; the wire tool says so."""
    spec = ToolSpec.from_callable(add)
    assert (
        Tool(
            type="function",
            name="add",
            description="Add two numbers.",
            parameters={
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
            strict=True,
        )
        == spec.to_wire()
    )


def test_tool_without_parameters_has_an_empty_object_schema():
    """A parameterless tool still sends properties and required, as strict mode wants."""
    assert {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": False,
    } == ToolSpec.from_callable(now).parameters


def test_context_parameters_stay_out_of_the_schema():
    """A ToolContext parameter is injected, never offered to the model."""
    assert ["path"] == list(ToolSpec.from_callable(read_file).parameters["properties"])


def test_recursive_structs_keep_valid_refs():
    """A recursive type cannot be inlined: $defs stay and the refs point into them."""

    schema = ToolSpec.from_callable(walk).parameters
    assert {"$ref": "#/$defs/Node"} == schema["properties"]["tree"]
    assert {"$ref": "#/$defs/Node"} == schema["$defs"]["Node"]["properties"]["children"]["items"]


def test_decorator_options_and_overrides():
    """@tool sets defaults; explicit options (like a plan's [tools] entry) win."""

    @tool(name="lookup", timeout=5, side_effect="idempotent_write", description="Look up.")
    def find(key: str) -> str:
        return key

    spec = ToolSpec.from_callable(find)
    assert ("lookup", 5, "idempotent_write", "Look up.") == (
        spec.name,
        spec.timeout,
        spec.side_effect,
        spec.description,
    )
    assert 9 == ToolSpec.from_callable(find, timeout=9).timeout
    assert "read_only" == ToolSpec.from_callable(add).side_effect


def test_functions_that_cannot_be_tools_are_refused():
    """No hints, *args, unsupported types, bad names and impossible strict mode fail early."""

    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    def star(*args: int) -> int:
        return 0

    def sock(s: socket.socket) -> None:
        return None

    cases = [
        (untyped, {}, "parameter 'x' has no type hint"),
        (star, {}, "*args and **kwargs"),
        (sock, {}, "socket"),
        (add, {"name": "bad name"}, "must match"),
        (search, {"strict": True}, "strict=True needs every parameter required"),
        (add, {"max_output": 10}, "max_output must be >= 256"),
    ]
    for function, options, message in cases:
        with pytest.raises(ToolDefinitionError, match=message.replace("*", r"\*")):
            ToolSpec.from_callable(function, **options)


def test_registry_refuses_a_second_function_under_one_name(registry):
    """Names are unique; re-adding the same function is harmless."""
    assert registry.add(add).function is add
    with pytest.raises(ToolDefinitionError, match="already taken"):
        registry.add(boom, name="add")


# -- resolving import paths --------------------------------------------------------------------


def test_resolve_tool_finds_functions_by_path(registry):
    """A module:function path imports the function; the registry accepts paths."""
    assert add is resolve_tool("tests.test_tools:add")
    assert "search_hotels" == registry.add("tests.plans.fixture_tools:search_hotels").name


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("tests.test_tools", "is not an import path"),
        ("no_such_module_abc:f", "not found: no module named 'no_such_module_abc'"),
        (
            "tests.test_tools:ad",
            "'tests.test_tools:ad' not found (did you mean 'tests.test_tools:add'?)",
        ),
        ("tests.plans.fixture_tools:NOT_CALLABLE", "is not callable (it is a int)"),
    ],
)
def test_resolve_tool_errors(path, message):
    """Bad paths raise ToolDefinitionError saying what is wrong."""
    with pytest.raises(ToolDefinitionError) as caught:
        resolve_tool(path)
    assert message in str(caught.value)


# -- executing calls: docs/faults.md#tool-calls-from-the-model ----------------------------------


async def test_a_valid_call_runs_and_returns_json(registry):
    """Arguments are decoded by the schema; a non-str result is JSON-encoded."""
    executor = registry.executor("w")
    item = await executor.execute(call("search", '{"query": "lisbon", "limit": 2}', "c9"))
    assert FunctionCallOutputItem(call_id="c9", output='["lisbon #0","lisbon #1"]') == item


async def test_str_results_pass_through(registry):
    """A str result is sent as it is, not JSON-quoted."""
    assert "noon" == (await registry.executor("w").execute(call("now", ""))).output


async def test_unknown_tool(registry):
    """'unknown tool' (docs/faults.md#tool-calls-from-the-model): not executed; the output lists
    what this agent may call."""
    executor = registry.executor("w", allowed={"add", "search"})
    item = await executor.execute(call("delete_everything"))
    assert {
        "error": "unknown_tool",
        "tool": "delete_everything",
        "message": "no tool named 'delete_everything'",
        "allowed": ["search", "add"],
    } == error_of(item)


async def test_tool_not_permitted_is_refused_and_logged(registry, warnings_logged):
    """'tool not allowed for this agent' (docs/faults.md#tool-calls-from-the-model): not executed,
    warning with agent and tool."""
    executor = registry.executor("writer", allowed={"search"})
    outcome = await executor.run(call("boom", '{"x": 1}'))
    assert (False, "tool_not_permitted") == (outcome.ok, outcome.error)
    assert "tool 'boom' is not available to agent 'writer'" == error_of(outcome.item)["message"]
    assert [("writer", "boom")] == [
        (r["extra"]["agent"], r["extra"]["tool"]) for r in warnings_logged
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ('{"query": "x",', "Input data was truncated"),
        ('{"query": "x"} trailing', "JSON is malformed: trailing characters (byte 16)"),
        ("not json at all", "JSON is malformed: invalid character (byte 4)"),
        ("", "Input data was truncated"),
    ],
)
async def test_invalid_json(registry, arguments, message):
    """'arguments not valid JSON / truncated' (docs/faults.md#tool-calls-from-the-model): msgspec's
    message, arguments not echoed."""
    outcome = await registry.executor("w").run(call("search", arguments))
    assert {"error": "invalid_json", "tool": "search", "message": message} == error_of(outcome.item)


async def test_deeply_nested_arguments_are_invalid_json():
    """RecursionError while decoding is reported as invalid_json, not raised."""
    registry = ToolRegistry()
    registry.add(count)
    arguments = '{"payload": ' + "[" * 20_000 + "]" * 20_000 + "}"
    item = await registry.executor("w").execute(call("count", arguments))
    assert {"error": "invalid_json", "tool": "count", "message": "JSON is nested too deeply"} == (
        error_of(item)
    )


async def test_invalid_json_never_echoes_the_arguments(registry):
    """A secret in malformed arguments does not come back in the output."""
    item = await registry.executor("w").execute(call("search", '{"query": "SECRET-123" oops'))
    assert "SECRET-123" not in str(item.output)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ('{"query": 5}', "Expected str, got int - at $.query"),
        ("{}", "Object missing required field query"),
        ('{"query": "x", "extra": 1}', "Object contains unknown field extra"),
        ('{"query": "x", "limit": 0}', "Expected int >= 1 - at $.limit"),
        ('{"query": "x", "limit": 51}', "Expected int <= 50 - at $.limit"),
        ('{"query": "x", "mode": "images"}', "Invalid enum value 'images' - at $.mode"),
        ('{"query": "x", "near": {"x": "1"}}', "Expected int, got str - at $.near.x"),
        ("[1, 2]", "Expected object, got array"),
    ],
)
async def test_invalid_arguments_name_the_json_path(registry, arguments, message):
    """'arguments violate the schema' (docs/faults.md#tool-calls-from-the-model): wrong type,
    missing, extra, range, enum, nested."""
    item = await registry.executor("w").execute(call("search", arguments))
    assert {"error": "invalid_arguments", "tool": "search", "message": message} == error_of(item)


async def test_oversized_arguments_are_refused_before_decoding(registry):
    """'oversized arguments' (docs/faults.md#tool-calls-from-the-model): over 64 KiB, the call is
    refused unread."""
    arguments = '{"query": "' + "x" * (64 * 1024) + '"}'
    item = await registry.executor("w").execute(call("search", arguments))
    assert {
        "error": "arguments_too_large",
        "tool": "search",
        "message": "arguments are 65549 bytes, limit 65536",
    } == error_of(item)


async def test_path_arguments_are_confined_to_the_workspace(registry, tmp_path):
    """'path arguments escaping the workspace' (docs/faults.md#tool-calls-from-the-model): ../,
    absolute and symlinks are refused."""
    workspace = tmp_path / "work"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text("outside")
    (workspace / "link").symlink_to(tmp_path / "secret.txt")
    executor = registry.executor("w", workspace=workspace)

    inside = await executor.execute(call("read_file", '{"path": "notes.txt"}'))
    assert "inside" == inside.output
    for escape in ("../secret.txt", str(tmp_path / "secret.txt"), "link"):
        outcome = await executor.run(
            call("read_file", msgspec.json.encode({"path": escape}).decode())
        )
        assert "path_outside_workspace" == outcome.error, escape
        executor.reset_repairs()


def test_confine_helper(tmp_path):
    """confine() resolves relative paths in the workspace and raises for escapes."""
    assert tmp_path.resolve() / "a" / "b" == confine("a/./b", tmp_path)
    with pytest.raises(PathOutsideWorkspace, match="outside the workspace"):
        confine("a/../../x", tmp_path)
    with pytest.raises(PathOutsideWorkspace, match="invalid path"):
        confine("a\0b", tmp_path)


async def test_repair_budget_stops_repeated_invalid_calls(registry):
    """'same invalid call repeated > repair budget' (docs/faults.md#tool-calls-from-the-model): the
    third raises tool.repair_budget."""
    executor = registry.executor("w", repair_budget=2)
    first = await executor.execute(call("search", "{}", "c1"))
    second = await executor.execute(call("search", "{}", "c2"))
    assert ["invalid_arguments"] * 2 == [error_of(first)["error"], error_of(second)["error"]]
    with pytest.raises(ToolRepairBudgetExceeded) as caught:
        await executor.execute(call("search", "{}", "c3"))
    error = caught.value
    assert ("tool.repair_budget", "search", "c3", 3, 2, "invalid_arguments") == (
        error.code,
        error.tool,
        error.call_id,
        error.attempts,
        error.budget,
        error.error,
    )
    assert str(error).startswith("error[tool.repair_budget]: tool 'search' was called wrongly 3")
    assert ["c3"] == [o.call_id for o in error.outputs]


async def test_a_valid_call_resets_the_repair_count(registry):
    """Invalid, invalid, valid, invalid, invalid: never over the budget."""
    executor = registry.executor("w", repair_budget=2)
    for arguments in ("{}", "{}", '{"query": "ok"}', "{}", "{}"):
        await executor.execute(call("search", arguments))
    assert {"search": 2} == executor.repairs


async def test_unknown_tools_count_toward_the_budget(registry):
    """'unknown tool' (docs/faults.md#tool-calls-from-the-model) also counts toward the repair
    budget."""
    executor = registry.executor("w", repair_budget=1)
    await executor.execute(call("ghost"))
    with pytest.raises(ToolRepairBudgetExceeded):
        await executor.execute(call("ghost"))


async def test_async_tool_timeout(registry, autojump_clock):
    """'tool hangs', async (docs/faults.md#tools-that-hang-or-fail): cancelled at the deadline,
    structured timeout output."""
    registry.add(sleepy, name="sleepy_fast", timeout=2.5)
    outcome = await registry.executor("w").run(call("sleepy_fast"))
    assert {
        "error": "timeout",
        "tool": "sleepy_fast",
        "message": "tool 'sleepy_fast' did not finish within 2.5 s",
    } == error_of(outcome.item)
    assert 2.5 == outcome.duration


async def test_sync_tool_timeout_abandons_the_thread(autojump_clock):
    """'tool hangs', sync (docs/faults.md#tools-that-hang-or-fail): a blocked thread is abandoned at
    the deadline; the actor moves on."""
    release = threading.Event()

    def stuck() -> str:
        """Blocks until released."""
        release.wait()
        return "late"

    registry = ToolRegistry()
    registry.add(stuck, timeout=10)
    try:
        outcome = await registry.executor("w").run(call("stuck"))
    finally:
        release.set()
    assert ("timeout", 10) == (outcome.error, outcome.duration)


async def test_tool_exception_becomes_a_redacted_error(registry):
    """'tool raises' (docs/faults.md#tools-that-hang-or-fail): type and message, no traceback,
    secrets redacted."""
    item = await registry.executor("w").execute(call("boom", '{"x": 7}'))
    assert {
        "error": "tool_failed",
        "tool": "boom",
        "message": "bad x=7; api_key=[REDACTED] Bearer [REDACTED]",
        "type": "ValueError",
    } == error_of(item)


async def test_unencodable_output_is_an_error_result(registry):
    """'non-serializable data' (docs/faults.md#tools-that-hang-or-fail): a tool bug, reported to the
    model, not a crash."""
    outcome = await registry.executor("w").run(call("unencodable"))
    assert "invalid_output" == outcome.error
    assert error_of(outcome.item)["message"].startswith(
        "tool returned a object that cannot be sent"
    )


async def test_huge_output_is_cut_with_a_marker(registry):
    """'huge output' (docs/faults.md#tools-that-hang-or-fail): capped in bytes at a character
    boundary, with a marker."""
    outcome = await registry.executor("w").run(call("big", '{"n": 100000}'))
    assert isinstance(outcome.item.output, str)
    encoded = outcome.item.output.encode()
    assert outcome.truncated
    assert len(encoded) <= DEFAULT_MAX_OUTPUT
    assert outcome.item.output.endswith(
        f"\n[truncated: output was 200000 bytes, limit {DEFAULT_MAX_OUTPUT}]"
    )
    small = await registry.executor("w").run(call("big", '{"n": 10}'))
    assert ("é" * 10, False) == (small.item.output, small.truncated)


async def test_sync_tools_run_off_the_event_loop(registry):
    """A sync tool runs in a worker thread and receives its context."""
    output = (await registry.executor("w").execute(call("whoami", "", "c5"))).output
    assert isinstance(output, str)
    result = msgspec.json.decode(output)
    assert threading.get_ident() != result["thread"]
    assert ("c5", "w") == (result["call_id"], result["agent"])


async def test_events_are_emitted_for_each_call(registry):
    """Every call emits ToolStarted then ToolFinished with ok and the error code."""
    events: list[RuntimeEvent] = []
    bus = EventBus()
    bus.add_listener(events.append)
    executor = registry.executor("w", bus=bus)
    await executor.execute(call("add", '{"a": 1, "b": 2}', "c1"))
    await executor.execute(call("add", '{"a": "x"}', "c2"))
    assert [
        (ToolStarted, "c1", None, None),
        (ToolFinished, "c1", True, None),
        (ToolStarted, "c2", None, None),
        (ToolFinished, "c2", False, "invalid_arguments"),
    ] == [
        (type(e), getattr(e, "call_id", None), getattr(e, "ok", None), getattr(e, "error", None))
        for e in events
    ]


async def test_parallel_calls_run_concurrently_and_keep_their_order():
    """execute_all runs one response's calls in a nursery; outputs come back in call order."""
    first_started, second_started = trio.Event(), trio.Event()

    async def first() -> str:
        first_started.set()
        await second_started.wait()  # deadlocks unless both run at once
        return "first"

    async def second() -> str:
        second_started.set()
        await first_started.wait()
        return "second"

    registry = ToolRegistry()
    registry.add(first)
    registry.add(second)
    with trio.fail_after(5):
        items = await registry.executor("w").execute_all(
            [call("second", "", "b"), call("first", "", "a")]
        )
    assert [("b", "second"), ("a", "first")] == [(i.call_id, i.output) for i in items]


async def test_execute_all_raises_after_running_when_the_budget_is_spent(registry):
    """A batch with too many invalid calls raises once, carrying every output."""
    executor = registry.executor("w", repair_budget=1)
    calls = [
        call("search", "{}", "c1"),
        call("add", '{"a": 1, "b": 1}', "c2"),
        call("search", "{}", "c3"),
    ]
    with pytest.raises(ToolRepairBudgetExceeded) as caught:
        await executor.execute_all(calls)
    assert ["c1", "c2", "c3"] == [o.call_id for o in caught.value.outputs]
    assert "2" == caught.value.outputs[1].output


async def test_wire_tools_follow_the_allow_list(registry):
    """An executor offers the model exactly the tools it may call."""
    executor = registry.executor("w", allowed={"add", "now", "missing"})
    assert ["add", "now"] == [t.name for t in executor.tools()]


def test_decode_arguments_raises_a_typed_error():
    """The lower-level API raises ArgumentsRejected (a ToolArgumentsInvalid) with its code."""
    spec = ToolSpec.from_callable(add)
    with pytest.raises(ArgumentsRejected) as caught:
        spec.decode_arguments('{"a": 1}', call_id="c1")
    assert ("invalid_arguments", "add", "c1") == (
        caught.value.code,
        caught.value.tool,
        caught.value.call_id,
    )


@settings(max_examples=300)
@given(arguments=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
async def test_any_arguments_give_an_output_never_an_exception(arguments):
    """Fuzz: any arguments text gives a function_call_output: a result or a structured error."""
    registry = ToolRegistry()
    registry.add(search)
    executor = registry.executor("w", repair_budget=10**9)
    item = await executor.execute(call("search", arguments))
    assert isinstance(item.output, str)
    if not item.output.startswith("["):
        assert error_of(item)["error"] in {"invalid_json", "invalid_arguments"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["query", "limit", "mode", "near", "x", "y"]), children)
    ),
    max_leaves=10,
)


@settings(max_examples=300)
@given(
    arguments=st.dictionaries(
        st.sampled_from(["query", "limit", "mode", "color", "near", "z"]), json_values
    )
)
async def test_any_json_object_validates_or_is_rejected_with_a_path(arguments):
    """Fuzz: any JSON object either runs the tool or is invalid_arguments, never a crash."""
    registry = ToolRegistry()
    registry.add(search)
    executor: ToolExecutor = registry.executor("w", repair_budget=10**9)
    outcome = await executor.run(call("search", msgspec.json.encode(arguments).decode()))
    assert outcome.ok or "invalid_arguments" == outcome.error


async def test_hung_tool_does_not_block_other_tasks(autojump_clock):
    """While a tool hangs, the actor's other tasks keep running (the loop is not blocked)."""
    release = threading.Event()

    def stuck() -> str:
        release.wait()
        return "late"

    registry = ToolRegistry()
    registry.add(stuck, timeout=60)
    pings: list[float] = []

    async def ping() -> None:
        for _ in range(3):
            await trio.sleep(1)
            pings.append(trio.current_time())

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ping)
            outcome = await registry.executor("w").run(call("stuck"))
    finally:
        release.set()
    assert "timeout" == outcome.error
    assert 3 == len(pings)
