"""Every example plan validates cleanly and every tool it lists can be offered to a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.tools import ToolSpec, resolve_tool
from plans import check_plan_file, load_plan

EXAMPLES = Path(__file__).parents[2] / "orchestrator" / "examples"
PLANS = {
    "trip": EXAMPLES / "trip" / "plan.toml",
    "bugfix": EXAMPLES / "bugfix" / "plan.yaml",
    "longrun": EXAMPLES / "longrun" / "plan.json",
    "triage": EXAMPLES / "triage" / "plan.toml",
    "support": EXAMPLES / "support" / "plan.toml",
    "research": EXAMPLES / "research" / "plan.toml",
}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_plan_has_no_issues(name):
    """The plan file validates with no error and no warning, tool imports included."""
    report = check_plan_file(PLANS[name])
    assert [] == [str(issue) for issue in report.issues]
    assert report.plan is not None
    assert name == report.plan.name
    assert report.plan.goal


def test_examples_use_every_loader():
    """One example per file format, so the examples exercise every loader."""
    assert {".toml", ".yaml", ".json"} == {path.suffix for path in PLANS.values()}


def test_plans_stay_inside_the_examples_package():
    """Tools come from orchestrator.examples only: the allow-list check passes too."""
    for path in PLANS.values():
        report = check_plan_file(path, allowed_modules=["orchestrator.examples"])
        assert report.ok, report.issues


@pytest.mark.parametrize("name", sorted(PLANS))
def test_every_tool_builds_read_only_with_a_description(name):
    """Each tool becomes a function tool with a described schema; none has side effects."""
    plan = load_plan(PLANS[name])
    for agent in plan.agents:
        tools = plan.tools_for(agent)
        if agent.role == "worker" and plan.name not in ("support", "research"):
            assert 1 <= len(tools) <= 3, agent.name
        for tool_name, config in tools.items():
            spec = ToolSpec.from_callable(
                resolve_tool(config.path),
                name=tool_name,
                timeout=config.timeout,
                max_output=config.max_output,
                side_effect=config.side_effect,
            )
            assert "read_only" == spec.side_effect
            assert spec.description, tool_name
            assert False is spec.parameters["additionalProperties"]
            for parameter, schema in spec.parameters["properties"].items():
                assert schema.get("description"), f"{tool_name}.{parameter}"


@pytest.mark.parametrize("name", sorted(PLANS))
def test_workers_are_described_for_the_planner(name):
    """A planner is told what each worker does; every agent has instructions."""
    plan = load_plan(PLANS[name])
    for agent in plan.agents:
        assert agent.instructions.strip(), agent.name
        if agent.role == "worker":
            assert agent.description, agent.name
