"""Model settings in runs: an agent's own over the plan's [settings] over run()'s
model_settings, sent verbatim; a forcing tool_choice on a task's first turn only; the
settings the embedded server applies changing what a run does
(docs/architecture.md#delegation-and-steps)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import trio

from orchestrator.core.observe import ToolStarted, TurnFinished
from orchestrator.core.protocol.events import MessageItem, ReasoningConfig
from orchestrator.core.session import ModelSettings
from orchestrator.runner import EmbeddedServer, RunResult, run
from orchestrator.runner.team import team_for_fingerprints
from orchestrator.testing import capture_logs
from plans import Plan, PlanBuilder

GOAL = "Weather in Lisbon? Top 3."


async def lookup(city: str) -> str:
    """Look a city's weather up.

    Args:
        city: the city.
    """
    await trio.lowlevel.checkpoint()
    return f"{city}: sunny, 21 C"


async def forecast(city: str, days: int = 3) -> str:
    """A short forecast for a city.

    Args:
        city: the city.
        days: how many days.
    """
    await trio.lowlevel.checkpoint()
    return f"{city}: {days} days of sun"


async def run_memory(plan: Plan, **options: Any) -> RunResult:
    options.setdefault("store", None)
    with trio.fail_after(3600):
        return await run(plan, embedded=EmbeddedServer(transport="memory"), **options)


def wire(plan: Plan, agent: str, model_settings: ModelSettings | None = None) -> dict[str, Any]:
    """The JSON of ``agent``'s first create, as the connection sends it."""
    session = team_for_fingerprints(plan, model_settings).actors[agent].session
    create = session.request([MessageItem.user("go")], socket=None).create
    return json.loads(msgspec.json.encode(create))


# The fields of a create that are not model settings.
NOT_SETTINGS = {"type", "model", "store", "input", "instructions", "tools", "include"}


def layered_plan() -> Plan:
    return (
        PlanBuilder("layers", goal=GOAL, model="gpt-5-mini")
        .settings(
            temperature=0.5,
            reasoning={"summary": "auto"},
            metadata={"team": "weather"},
            verbosity="low",
        )
        .planner("planner")
        .worker(
            "north",
            tools=[lookup],
            settings={
                "temperature": 0.1,
                "reasoning": {"effort": "high"},
                "tool_choice": "lookup",
                "metadata": {"role": "north"},
            },
        )
        .worker("south", tools=[forecast])
        .build()
    )


def test_an_agent_overrides_the_plan_which_overrides_run():
    """Per field: the agent's settings, else the plan's [settings], else run()'s; reasoning
    and metadata merge; a tool name becomes {type: function}; verbosity goes in text."""
    base = ModelSettings(
        temperature=0.9,
        top_p=0.7,
        reasoning=ReasoningConfig(effort="low"),
        metadata={"run": "r1", "team": "run"},
        service_tier="flex",
    )
    north = wire(layered_plan(), "north", model_settings=base)
    south = wire(layered_plan(), "south", model_settings=base)
    assert {
        "temperature": 0.1,
        "top_p": 0.7,
        "reasoning": {"effort": "high", "summary": "auto"},
        "metadata": {"run": "r1", "team": "weather", "role": "north"},
        "tool_choice": {"type": "function", "name": "lookup"},
        "service_tier": "flex",
        "text": {"verbosity": "low"},
    } == {key: value for key, value in north.items() if key not in NOT_SETTINGS}
    assert (0.5, {"effort": "low", "summary": "auto"}, "auto") == (
        south["temperature"],
        south["reasoning"],
        south.get("tool_choice", "auto"),
    )


async def test_a_named_tool_choice_forces_the_first_turn_of_each_task_only(autojump_clock):
    """tool_choice = "lookup": the first turn calls lookup alone; the next turn is sent with
    auto, so the worker goes on (forecast) and then answers."""
    plan = (
        PlanBuilder("forced", goal=GOAL, model="gpt-5-mini")
        .worker("both", tools=[lookup, forecast], settings={"tool_choice": "lookup"})
        .step("ask", agent="both", task="{{goal}}")
        .build()
    )
    started: list[tuple[str, int]] = []
    turns = 0

    def watch(event: Any) -> None:
        nonlocal turns
        if isinstance(event, TurnFinished):
            turns += 1
        elif isinstance(event, ToolStarted):
            started.append((event.tool, turns))

    result = await run_memory(plan, events=watch)
    assert "completed" == result.status, result.reason
    assert [("lookup", 1), ("forecast", 2)] == started
    assert 3 == result.agent("both").turns


async def test_parallel_tool_calls_false_makes_one_call_per_turn(autojump_clock):
    """With parallel_tool_calls = false in [settings], the worker calls its two tools in two
    turns instead of one."""

    def plan(parallel: bool) -> Plan:
        return (
            PlanBuilder("serial", goal=GOAL, model="gpt-5-mini")
            .settings(parallel_tool_calls=parallel)
            .worker("both", tools=[lookup, forecast])
            .step("ask", agent="both", task="{{goal}}")
            .build()
        )

    assert 2 == (await run_memory(plan(True))).agent("both").turns
    assert 3 == (await run_memory(plan(False))).agent("both").turns


async def test_tool_choice_none_answers_without_tools(autojump_clock):
    """tool_choice = "none": the worker answers at once, its tools never called."""
    plan = (
        PlanBuilder("none", goal=GOAL, model="gpt-5-mini")
        .worker("both", tools=[lookup], settings={"tool_choice": "none"})
        .step("ask", agent="both", task="{{goal}}")
        .build()
    )
    result = await run_memory(plan)
    assert (1, 0) == (result.agent("both").turns, result.agent("both").tool_calls)
    assert f"Answer to: {GOAL}" == result.answer


async def test_max_output_tokens_cuts_the_answer_and_says_so(autojump_clock):
    """max_output_tokens = 16: the embedded server cuts the answer (response.incomplete),
    the run keeps the cut text, and the agent logs that it was cut."""
    long_goal = " ".join(["Tell me about the trams of Lisbon and their many routes."] * 4)
    plan = (
        PlanBuilder("short", goal=long_goal, model="gpt-5-mini")
        .settings(max_output_tokens=16)
        .worker("writer")
        .step("ask", agent="writer", task="{{goal}}")
        .build()
    )
    with capture_logs("WARNING") as lines:
        result = await run_memory(plan)
    assert "completed" == result.status
    assert 16 == len((result.answer or "").split())
    assert any("cut off at max_output_tokens" in line for line in lines)
