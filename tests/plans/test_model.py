"""The plan model's helpers: rendering tasks, scheduling steps, resolving agents' tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import PlanError
from plans import (
    Agent,
    Plan,
    Settings,
    Step,
    ToolConfig,
    load_plan,
    render_task,
    result_steps,
    scheduled_steps,
    task_references,
)

FILES = Path(__file__).parent / "files"


def test_render_task_replaces_goal_and_dependency_results():
    """{{goal}} and {{steps.X.result}} (spaces allowed) become the goal and the results."""
    step = Step(
        id="r", agent="w", task="Goal: {{goal}}. A={{steps.a.result}} B={{ steps.b.result }}"
    )
    assert "Goal: go. A=1 B=2" == render_task(step, {"a": "1", "b": "2"}, goal="go")


def test_render_task_never_expands_results_again():
    """A result that contains placeholders is inserted verbatim (no second pass, no injection)."""
    step = Step(id="r", agent="w", task="{{steps.a.result}}")
    assert "{{goal}} {{steps.a.result}}" == render_task(
        step, {"a": "{{goal}} {{steps.a.result}}"}, goal="secret goal"
    )


@pytest.mark.parametrize(
    ("task", "results", "goal", "message"),
    [
        ("{{steps.a.result}}", {}, None, "references the result of 'a', which is not available"),
        ("{{goal}}", {}, None, "references {{goal}} but no goal was given"),
        ("{{steps.a.output}}", {"a": "x"}, None, "invalid reference '{{steps.a.output}}'"),
    ],
)
def test_render_task_refuses_what_it_cannot_fill(task, results, goal, message):
    """Missing results, a missing goal or an invalid placeholder raise PlanError (a caller bug)."""
    with pytest.raises(PlanError, match=message.replace("{", r"\{").replace("(", r"\(")):
        render_task(Step(id="s", agent="w", task=task), results, goal=goal)


def test_task_references_classifies_placeholders():
    """Placeholders are found in order and classified as goal, step or invalid."""
    refs = task_references("{{goal}} {{steps.a.result}} {{x}}")
    assert [("goal", None), ("step", "a"), ("invalid", None)] == [(r.kind, r.step) for r in refs]


def test_scheduled_steps_orders_dependencies_first_keeping_plan_order():
    """Independent steps keep plan order; each step comes after its dependencies."""
    plan = Plan(
        name="p",
        steps=(
            Step(id="report", agent="w", task="t", depends_on=("b", "a")),
            Step(id="a", agent="w", task="t"),
            Step(id="b", agent="w", task="t", depends_on=("a",)),
            Step(id="c", agent="w", task="t"),
        ),
    )
    assert ["a", "c", "b", "report"] == [s.id for s in scheduled_steps(plan)]
    assert ["report", "c"] == [s.id for s in result_steps(plan)]


def test_final_step_limits_scheduling_to_what_it_needs():
    """With final_step, only it and its ancestors are scheduled, and it alone is the result."""
    plan = load_plan(FILES / "pipeline.toml")
    assert ["fetch_a", "fetch_b", "report"] == [s.id for s in scheduled_steps(plan)]
    narrowed = Plan(name="p", final_step="fetch_b", steps=plan.steps)
    assert ["fetch_b"] == [s.id for s in scheduled_steps(narrowed)]
    assert ["fetch_b"] == [s.id for s in result_steps(narrowed)]


def test_scheduled_steps_refuses_a_cycle():
    """An unvalidated cyclic plan raises instead of looping."""
    plan = Plan(
        name="p",
        steps=(
            Step(id="a", agent="w", task="t", depends_on=("b",)),
            Step(id="b", agent="w", task="t", depends_on=("a",)),
        ),
    )
    with pytest.raises(PlanError, match="cycle"):
        scheduled_steps(plan)


def test_tools_for_maps_model_names_to_options():
    """[tools] names keep their options; import paths get defaults under the function's name."""
    plan = load_plan(FILES / "trip.toml")
    tools = plan.tools_for(plan.agent("flights"))
    assert ["web_search", "search_hotels"] == list(tools)
    assert 10 == tools["web_search"].timeout
    assert ToolConfig(path="tests.plans.fixture_tools:search_hotels") == tools["search_hotels"]


def test_agent_lookup_and_models():
    """planner, workers, agent() and model_for() read the plan as the runtime needs."""
    plan = load_plan(FILES / "trip.toml")
    assert "planner" == (plan.planner.name if plan.planner else None)
    assert ["flights"] == [a.name for a in plan.workers]
    assert "gpt-5-mini" == plan.model_for(plan.agent("planner"))
    assert "gpt-5" == plan.model_for(plan.agent("flights"))
    with pytest.raises(KeyError):
        plan.agent("nobody")
    with pytest.raises(PlanError, match="has no model"):
        Plan(name="p", settings=Settings()).model_for(Agent(name="a"))
