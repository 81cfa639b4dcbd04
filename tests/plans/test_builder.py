"""Building plans in Python: same data, same validation as files."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import PlanError
from plans import Budget, PlanBuilder, import_path_of, load_plan

from . import fixture_tools

FILES = Path(__file__).parent / "files"


def trip_builder() -> PlanBuilder:
    return (
        PlanBuilder(
            "trip",
            goal="Plan a 3-day trip to Lisbon",
            model="gpt-5-mini",
            base_url="http://127.0.0.1:8765/v1",
        )
        .budgets(max_turns=200, max_tokens=500000, wall_clock=600)
        .tool(
            fixture_tools.search,
            name="web_search",
            timeout=10,
            max_output=4096,
            side_effect="read_only",
            description="Search the web for travel information.",
        )
        .planner(
            "planner",
            instructions="Split the goal, delegate, then answer.",
            limits=Budget(max_turns=50),
        )
        .worker(
            "flights",
            description="Finds flights.",
            model="gpt-5",
            instructions="You find flights.",
            tools=[fixture_tools.search, fixture_tools.search_hotels],
        )
    )


def test_builder_produces_the_same_plan_as_the_file():
    """Functions become import paths; a function defined with tool() is listed by its name."""
    assert load_plan(FILES / "trip.toml") == trip_builder().build()


def test_builder_steps_and_final_step():
    """Steps and final_step go through the same validation."""
    plan = (
        PlanBuilder("p", model="m")
        .worker("w")
        .step("a", agent="w", task="{{goal}}")
        .step("b", agent="w", task="{{steps.a.result}}", depends_on=["a"])
        .final_step("b")
        .build()
    )
    assert ("a",) == plan.step("b").depends_on
    assert "b" == plan.final_step


def test_builder_reports_every_issue_like_a_file():
    """build() raises PlanError with all issues, located in the plan's data."""
    builder = PlanBuilder("p", model="m").worker("w").step("a", agent="ghost", task="t")
    builder.step("a", agent="w", task="t", depends_on=["a"])
    with pytest.raises(PlanError) as caught:
        builder.build()
    assert [
        "error[plan.unknown_agent]: $.steps[0].agent: step 'a' uses agent 'ghost'; "
        "defined agents: w",
        "error[plan.duplicate]: $.steps[1]: step id 'a' defined twice ($.steps[0], $.steps[1])",
        "error[plan.cycle]: $.steps[1].depends_on[0]: step 'a' depends on itself",
    ] == str(caught.value).splitlines()


def test_functions_without_an_import_path_are_refused():
    """A nested function or lambda cannot be stored in a plan: refused at once."""

    def local_tool(x: int) -> int:
        return x

    with pytest.raises(PlanError, match=r"error\[plan.tool\]: tool .*local_tool.* cannot be"):
        PlanBuilder("p").worker("w", tools=[local_tool])
    with pytest.raises(PlanError, match="define it at module level"):
        import_path_of(lambda: None)


def test_import_path_of_module_level_function():
    """A module-level function maps to module:qualname."""
    assert "tests.plans.fixture_tools:fetch" == import_path_of(fixture_tools.fetch)


def test_to_dict_is_plain_data():
    """to_dict() is what a JSON plan file would hold (no functions, no Structs)."""
    data = trip_builder().to_dict()
    assert ["web_search", "tests.plans.fixture_tools:search_hotels"] == data["agents"][1]["tools"]
    assert {"max_turns": 50} == data["agents"][0]["limits"]
