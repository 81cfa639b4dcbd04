"""Model settings in plans: [settings] defaults, [agents.settings] overrides, precise errors."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import PlanError
from plans import ModelOptions, PlanBuilder, Reasoning, check_plan, load_plan

SOURCE = "plans/team.toml"


def base() -> dict[str, Any]:
    return {
        "name": "team",
        "settings": {"model": "gpt-5-mini"},
        "agents": [
            {"name": "planner", "role": "planner"},
            {"name": "writer", "tools": ["tests.plans.fixture_tools:search"]},
            {"name": "critic"},
        ],
    }


def lines(data: dict[str, Any]) -> list[str]:
    return [str(issue) for issue in check_plan(data, source=SOURCE).issues]


def test_every_setting_loads_from_a_toml_file(tmp_path):
    """Every model setting of the issue reads from [settings] and [agents.settings]."""
    path = tmp_path / "plan.toml"
    path.write_text(
        """
name = "team"
goal = "g"
[settings]
model = "gpt-5-mini"
reasoning = { effort = "low", summary = "auto" }
temperature = 0.2
top_p = 0.9
max_output_tokens = 4000
max_tool_calls = 8
tool_choice = "auto"
parallel_tool_calls = false
truncation = "auto"
service_tier = "flex"
verbosity = "low"
metadata = { team = "trip" }
prompt_cache_key = "trip-v1"

[[agents]]
name = "planner"
role = "planner"
[agents.settings]
reasoning = { effort = "high" }
tool_choice = "finish"
metadata = { role = "lead" }
""",
        encoding="utf-8",
    )
    plan = load_plan(path)
    planner = plan.agent("planner")
    assert ModelOptions(
        reasoning=Reasoning(effort="high", summary="auto"),
        temperature=0.2,
        top_p=0.9,
        max_output_tokens=4000,
        max_tool_calls=8,
        tool_choice="finish",
        parallel_tool_calls=False,
        truncation="auto",
        service_tier="flex",
        verbosity="low",
        metadata={"team": "trip", "role": "lead"},
        prompt_cache_key="trip-v1",
    ) == plan.settings_for(planner)


def test_an_agent_setting_overrides_the_plan_default_field_by_field():
    """Agent settings win where they say something; the plan fills the rest."""
    data = base()
    data["settings"].update(temperature=0.5, top_p=0.5, reasoning={"summary": "concise"})
    data["agents"][2]["settings"] = {"temperature": 1.5, "reasoning": {"effort": "minimal"}}
    plan = check_plan(data).raise_for_errors()
    assert ModelOptions(
        temperature=1.5, top_p=0.5, reasoning=Reasoning(effort="minimal", summary="concise")
    ) == plan.settings_for(plan.agent("critic"))
    assert ModelOptions(
        temperature=0.5, top_p=0.5, reasoning=Reasoning(summary="concise")
    ) == plan.settings_for(plan.agent("writer"))


def test_a_misspelt_setting_suggests_the_closest_name():
    """An unknown setting is named with the closest valid one, in [settings] and per agent."""
    data = base()
    data["settings"]["temprature"] = 0.2
    data["agents"][1]["settings"] = {"max_output_token": 100, "reasoning": {"efort": "low"}}
    assert [
        f"error[plan.schema]: {SOURCE}: $.agents[1].settings: unknown field 'max_output_token'"
        " (did you mean 'max_output_tokens'?)",
        f"error[plan.schema]: {SOURCE}: $.agents[1].settings.reasoning: unknown field 'efort'"
        " (did you mean 'effort'?)",
        f"error[plan.schema]: {SOURCE}: $.settings: unknown field 'temprature'"
        " (did you mean 'temperature'?)",
    ] == lines(data)


def test_a_wrong_choice_names_the_valid_ones():
    """Enumerated settings list their values and suggest the closest."""
    data = base()
    data["settings"].update(
        reasoning={"effort": "hihg"}, truncation="on", service_tier="priorty", verbosity=3
    )
    assert [
        f"error[plan.schema]: {SOURCE}: $.settings.reasoning.effort: expected one of 'none', "
        "'minimal', 'low', 'medium', 'high', 'xhigh', got 'hihg' (did you mean 'high'?)",
        f"error[plan.schema]: {SOURCE}: $.settings.service_tier: expected one of 'auto', "
        "'default', 'flex', 'priority', 'scale', got 'priorty' (did you mean 'priority'?)",
        f"error[plan.schema]: {SOURCE}: $.settings.truncation: expected one of 'auto', "
        "'disabled', got 'on'",
        f"error[plan.schema]: {SOURCE}: $.settings.verbosity: expected one of 'low', 'medium', "
        "'high', got 3",
    ] == lines(data)


def test_out_of_range_settings_are_plan_values():
    """Numbers outside what the API accepts are refused, never clamped."""
    data = base()
    data["settings"].update(temperature=2.5, top_p=-0.1, max_output_tokens=8)
    data["agents"][1]["settings"] = {"max_tool_calls": 0}
    assert [
        f"error[plan.value]: {SOURCE}: $.agents[1].settings.max_tool_calls: must be in "
        "1..1000, got 0",
        f"error[plan.value]: {SOURCE}: $.settings.max_output_tokens: must be in 16..1000000, got 8",
        f"error[plan.value]: {SOURCE}: $.settings.temperature: must be in 0..2, got 2.5",
        f"error[plan.value]: {SOURCE}: $.settings.top_p: must be in 0..1, got -0.1",
    ] == lines(data)


def test_metadata_limits_are_checked():
    """At most 16 pairs, keys up to 64 characters, values up to 512."""
    data = base()
    data["settings"]["metadata"] = {f"k{i}": "v" for i in range(17)}
    data["agents"][1]["settings"] = {"metadata": {"k" * 65: "v", "note": "x" * 513}}
    assert [
        f"error[plan.value]: {SOURCE}: $.agents[1].settings.metadata.{'k' * 65}: metadata keys "
        "must be 1 to 64 characters",
        f"error[plan.value]: {SOURCE}: $.agents[1].settings.metadata.note: at most 512 "
        "characters, got 513",
        f"error[plan.value]: {SOURCE}: $.settings.metadata: at most 16 pairs, got 17",
    ] == lines(data)


def test_tool_choice_must_name_a_tool_the_agent_has():
    """A named tool_choice is checked against the agent's tools, the runtime's included."""
    data = base()
    data["agents"][0]["settings"] = {"tool_choice": "delegate_to_writer"}  # a runtime tool
    data["agents"][1]["settings"] = {"tool_choice": "serch"}
    assert [
        f"error[plan.tool]: {SOURCE}: $.agents[1].settings.tool_choice: tool_choice names "
        "'serch', which agent 'writer' cannot call; its tools: search (did you mean 'search'?)"
    ] == lines(data)


def test_tool_choice_that_cannot_be_met_is_refused():
    """required (or a tool name) on an agent without tools could never be met; a tool name
    plan-wide is refused, since not every agent has it."""
    data = base()
    data["agents"][2]["settings"] = {"tool_choice": "required"}
    data["agents"][1]["settings"] = {"tool_choice": {"type": "function", "name": "search"}}
    assert [
        f"error[plan.value]: {SOURCE}: $.agents[2].settings.tool_choice: agent 'critic' has no "
        "tools, so tool_choice 'required' can never be met; give it tools, or use 'auto' or "
        "'none'"
    ] == lines(data)
    data = base()
    data["settings"]["tool_choice"] = "search"
    assert [
        f"error[plan.value]: {SOURCE}: $.settings.tool_choice: tool_choice 'search' names a "
        "tool, which not every agent has; set it in the settings of the agent that has the "
        "tool, or use auto | none | required"
    ] == lines(data)


def test_a_misspelt_plan_wide_mode_suggests_it():
    """tool_choice = "requird" in [settings] is taken for a tool name, and the closest mode
    is suggested."""
    data = base()
    data["settings"]["tool_choice"] = "requird"
    assert ["did you mean 'required'?"] == [i.suggestion for i in check_plan(data).issues]


def test_plan_wide_required_reports_the_agents_without_tools_there():
    """A plan-wide 'required' is reported at $.settings for each agent that has no tools."""
    data = base()
    data["settings"]["tool_choice"] = "required"
    assert [
        f"error[plan.value]: {SOURCE}: $.settings.tool_choice: agent 'critic' has no tools, so "
        "tool_choice 'required' can never be met; give it tools, or use 'auto' or 'none'"
    ] == lines(data)


def test_malformed_tool_choice_is_refused():
    """A tool_choice object must be {type = "function", name = ...}; a string is a mode or a
    name."""
    data = base()
    data["agents"][1]["settings"] = {"tool_choice": {"type": "web_search"}}
    data["agents"][2]["settings"] = {"tool_choice": "requird!"}
    issues = check_plan(data).issues
    assert ["plan.value", "plan.value"] == [issue.code for issue in issues]
    assert "tool_choice {'type': 'web_search'} is not supported" == issues[0].message
    assert "did you mean 'required'?" == issues[1].suggestion


def test_run_wide_fields_in_agent_settings_say_where_they_belong():
    """model, context, store in an agent's settings: the error says where they go."""
    data = base()
    data["agents"][1]["settings"] = {"model": "gpt-5", "store": True}
    assert [
        ("unknown field 'model'", "set model on the agent itself, next to its name"),
        ("unknown field 'store'", "store is run-wide: set it in [settings]"),
    ] == [(issue.message, issue.suggestion) for issue in check_plan(data).issues]


def test_the_builder_writes_the_same_settings_as_a_file():
    """PlanBuilder.settings and settings= give the plan data a file would hold."""
    plan = (
        PlanBuilder("team", goal="g", model="gpt-5-mini")
        .settings(temperature=0.3, reasoning=Reasoning(effort="low"), context="agent")
        .planner("planner", settings=ModelOptions(max_output_tokens=500))
        .worker("critic", settings={"verbosity": "high", "metadata": {"a": "b"}})
        .build()
    )
    assert "agent" == plan.settings.context
    assert ModelOptions(
        temperature=0.3, reasoning=Reasoning(effort="low"), max_output_tokens=500
    ) == plan.settings_for(plan.agent("planner"))
    assert ModelOptions(
        temperature=0.3, reasoning=Reasoning(effort="low"), verbosity="high", metadata={"a": "b"}
    ) == plan.settings_for(plan.agent("critic"))


def test_the_builder_reports_setting_errors_like_a_file():
    """A misspelt keyword is a PlanError with the closest name, as in a file."""
    builder = PlanBuilder("team", goal="g", model="m").settings(temperture=0.2)
    builder.planner("planner")
    with pytest.raises(PlanError) as caught:
        builder.build()
    assert [("$.settings", "did you mean 'temperature'?")] == [
        (issue.location, issue.suggestion) for issue in caught.value.issues
    ]
