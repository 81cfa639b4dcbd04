"""Typed outputs in runs: text.format on the wire, the decoded value in RunResult.output, a
worker's JSON reaching the planner, one repair turn, then OutputInvalid
(docs/architecture.md#delegation-and-steps)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import pytest
import trio

from actors.agent import AgentActor
from orchestrator.core.protocol.events import FunctionCallOutputItem, MessageItem
from orchestrator.runner import EmbeddedServer, RunResult, run
from orchestrator.runner.team import team_for_fingerprints
from plans import Plan, PlanBuilder

if TYPE_CHECKING:
    from collections.abc import Mapping


class Weather(msgspec.Struct, frozen=True):
    """A city's weather (an output type the plans below name by import path)."""

    city: str
    high_c: float
    conditions: list[str]


class Outlook(msgspec.Struct, frozen=True):
    """The planner's typed answer."""

    summary: str
    cities: list[str]
    risk: Literal["low", "high"]


GOAL = "What is the weather in Lisbon?"


async def weather(city: str) -> str:
    """Today's weather in a city, as JSON.

    Args:
        city: the city.
    """
    await trio.lowlevel.checkpoint()
    return json.dumps({"city": city, "high_c": 24.5, "conditions": ["sunny", "breezy"]})


async def run_memory(
    plan: Plan, *, server: Mapping[str, Any] | None = None, **options: Any
) -> RunResult:
    options.setdefault("store", None)
    with trio.fail_after(3600):
        embedded = EmbeddedServer(config=server or {}, transport="memory")
        return await run(plan, embedded=embedded, **options)


def steps_plan(model: str = "gpt-5-mini", output: Any = Weather) -> Plan:
    return (
        PlanBuilder("typed", goal=GOAL, model=model)
        .worker("meteo", tools=[weather], output_type=output)
        .step("ask", agent="meteo", task="{{goal}}")
        .build()
    )


async def test_a_typed_step_answers_the_typed_value(autojump_clock):
    """Offline, the worker answers JSON of its type: RunResult.output is a Weather whose
    fields come from the tool's result, and answer (and the step result) its JSON."""
    result = await run_memory(steps_plan())
    assert "completed" == result.status, result.reason
    assert Weather(city="Lisbon", high_c=24.5, conditions=["sunny", "breezy"]) == result.output
    assert result.output == msgspec.json.decode(result.answer or "", type=Weather)
    assert result.answer == result.steps[0].result


async def test_a_plan_json_schema_answers_plain_data(autojump_clock):
    """An output_type written as a JSON Schema gives plain JSON data as the output."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "high_c": {"type": "number"}},
        "required": ["city", "high_c"],
        "additionalProperties": False,
    }
    result = await run_memory(steps_plan(output=schema))
    assert {"city": "Lisbon", "high_c": 24.5} == result.output


def test_text_format_goes_on_the_wire_strict():
    """The agent's creates carry text.format json_schema, strict, with the type's schema."""
    team = team_for_fingerprints(steps_plan())
    create = team.actors["meteo"].session.request([MessageItem.user("go")], socket=None).create
    wire = json.loads(msgspec.json.encode(create))
    text_format = wire["text"]["format"]
    assert ("json_schema", "Weather", True) == (
        text_format["type"],
        text_format["name"],
        text_format["strict"],
    )
    assert ["city", "high_c", "conditions"] == text_format["schema"]["required"]


def team_plan() -> Plan:
    return (
        PlanBuilder("outlook", goal=GOAL, model="gpt-5-mini")
        .planner("planner", instructions="Delegate, then finish.", output_type=Outlook)
        .worker("meteo", description="Weather.", tools=[weather], output_type=Weather)
        .build()
    )


async def test_a_typed_worker_reaches_the_planner_as_json_and_the_planner_answers_typed(
    autojump_clock,
):
    """The planner reads the worker's JSON as its delegation's output, and its typed finish
    becomes RunResult.output; the delegation tool tells the planner the worker's type."""
    result = await run_memory(team_plan())
    assert "completed" == result.status, result.reason
    planner = result.agent("planner")
    (delegated,) = [i.output for i in planner.transcript if isinstance(i, FunctionCallOutputItem)][
        :1
    ]
    assert Weather("Lisbon", 24.5, ["sunny", "breezy"]) == msgspec.json.decode(
        delegated, type=Weather
    )
    assert isinstance(result.output, Outlook)
    assert result.output == msgspec.json.decode(result.answer or "", type=Outlook)
    team = team_for_fingerprints(team_plan())
    tools = {str(tool.name): tool for tool in team.actors["planner"].session.tools}
    assert "It answers with JSON (Weather)." in str(tools["delegate_to_meteo"].description)
    assert "Outlook" == tools["finish"].parameters["properties"]["answer"]["title"]


def scripted(*texts: str) -> dict[str, Any]:
    return {"server": {"script": {"turns": [{"text": text} for text in texts]}}}


async def test_one_repair_turn_carries_the_validation_error(autojump_clock):
    """A first answer that is not of the type gets one repair turn, a user message saying
    where and why; the corrected answer is the output."""
    good = '{"city": "Porto", "high_c": 19, "conditions": ["rain"]}'
    result = await run_memory(
        steps_plan("local-scripted", output=Weather),
        **scripted('{"city": "Porto", "high_c": "warm", "conditions": []}', good),
    )
    assert "completed" == result.status, result.reason
    assert Weather("Porto", 19.0, ["rain"]) == result.output
    users = [
        i.text
        for i in result.agent("meteo").transcript
        if isinstance(i, MessageItem) and i.role == "user"
    ]
    assert [
        GOAL,
        "Your answer does not match the required output 'Weather': $.high_c: expected float, "
        "got str. Answer again with only the corrected JSON, nothing else.",
    ] == users


async def test_a_second_mismatch_fails_the_run_clearly(autojump_clock):
    """After the repair turn, a second answer not of the type ends the run: failed, code
    output.invalid, the reason naming the agent, the type and the problem."""
    result = await run_memory(
        steps_plan("local-scripted"), **scripted("It is sunny.", "Still sunny, honestly.")
    )
    assert ("failed", "output.invalid") == (result.status, result.code)
    assert (
        "agent 'meteo' answered with output that does not match 'Weather', also after a repair "
        "turn: not valid JSON: invalid character (byte 0)"
    ) == result.reason
    assert result.output is None
    assert 2 == result.agent("meteo").turns


async def test_a_typed_finish_that_does_not_match_gets_its_error_as_the_call_output(
    autojump_clock,
):
    """The planner's finish with an answer not of its type is refused in the call's output
    (the repair); a corrected finish ends the run with the typed value."""
    script = {
        "turns": [
            {"function_calls": [{"name": "finish", "arguments": {"answer": {"summary": "x"}}}]},
            {
                "function_calls": [
                    {
                        "name": "finish",
                        "arguments": {
                            "answer": {"summary": "Sunny.", "cities": ["Faro"], "risk": "low"}
                        },
                    }
                ]
            },
        ]
    }
    plan = (
        PlanBuilder("outlook", goal=GOAL, model="local-scripted")
        .planner("planner", output_type=Outlook)
        .worker("meteo", tools=[weather])
        .build()
    )
    result = await run_memory(plan, server={"script": script})
    assert "completed" == result.status, result.reason
    assert Outlook("Sunny.", ["Faro"], "low") == result.output
    refused = next(
        json.loads(i.output)
        for i in result.agent("planner").transcript
        if isinstance(i, FunctionCallOutputItem)
    )
    assert {
        "error": "invalid_output",
        "message": "Your answer does not match the required output 'Outlook': object missing "
        "required field cities. Answer again with only the corrected JSON, nothing else.",
    } == refused


@pytest.mark.parametrize("cut", [False, True])
def test_the_repair_message_says_when_the_answer_was_cut(cut):
    """An answer cut at max_output_tokens says so in the repair message."""
    from actors.agent import repair_message

    message = repair_message("Weather", "$: truncated", cut=cut)
    assert ("cut off at max_output_tokens" in message) is cut


def test_agents_without_a_declared_output_send_no_format():
    """An untyped agent sends no text.format (the service's default, text)."""
    plan = PlanBuilder("plain", goal=GOAL, model="m").worker("w").step("s", agent="w", task="t")
    team = team_for_fingerprints(plan.build())
    actor = team.actors["w"]
    assert isinstance(actor, AgentActor)
    assert actor.output is None
    create = actor.session.request([MessageItem.user("go")], socket=None).create
    assert "text" not in json.loads(msgspec.json.encode(create))
