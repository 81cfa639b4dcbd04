"""Plan validation: docs/faults.md#plan-files, from 'unknown field' on, each with its code and
shape."""

from __future__ import annotations

import copy
import string
from typing import Any

import pytest
from hypothesis import given, strategies as st

from orchestrator.errors import PlanError
from plans import Plan, PlanIssue, PlanReport, check_plan, plan_from_dict

SOURCE = "plans/team.toml"


def base() -> dict[str, Any]:
    """A valid plan in dynamic mode: one planner, one worker with a tool."""
    return {
        "name": "team",
        "settings": {"model": "gpt-5-mini"},
        "agents": [
            {"name": "planner", "role": "planner", "instructions": "Plan."},
            {"name": "writer", "tools": ["tests.plans.fixture_tools:search"]},
        ],
    }


def with_steps(*steps: dict[str, Any]) -> dict[str, Any]:
    data = base()
    data["steps"] = list(steps)
    return data


def step(step_id: str, *depends_on: str, agent: str = "writer", task: str = "Do it.") -> dict:
    return {"id": step_id, "agent": agent, "task": task, "depends_on": list(depends_on)}


def check(data: dict[str, Any], **options: Any) -> PlanReport:
    return check_plan(data, source=SOURCE, **options)


def lines(data: dict[str, Any], **options: Any) -> list[str]:
    return [str(issue) for issue in check(data, **options).issues]


def test_the_base_plan_is_valid():
    """The fixture every test mutates has no issues (so each test sees only its own)."""
    report = check(base())
    assert () == report.issues
    assert isinstance(report.plan, Plan)


# -- schema ------------------------------------------------------------------------------------


def test_unknown_field_suggests_the_closest_name():
    """'unknown field' (docs/faults.md#plan-files): location is the object, suggestion the closest
    valid name."""
    data = with_steps(step("a"), {"id": "b", "agnet": "writer", "agent": "writer", "task": "t"})
    assert [
        f"error[plan.schema]: {SOURCE}: $.steps[1]: unknown field 'agnet' (did you mean 'agent'?)"
    ] == lines(data)


def test_every_unknown_field_is_reported_at_once():
    """msgspec stops at the first unknown field; validation walks them all."""
    data = base()
    data["budget"] = {"max_turns": 3}
    data["agents"][0]["instruction"] = "x"
    data["agents"][1]["tols"] = []
    data["settings"]["modle"] = "x"
    assert [
        "$: unknown field 'budget' (did you mean 'budgets'?)",
        "$.agents[0]: unknown field 'instruction' (did you mean 'instructions'?)",
        "$.agents[1]: unknown field 'tols' (did you mean 'tools'?)",
        "$.settings: unknown field 'modle' (did you mean 'model'?)",
    ] == [f"{i.location}: {i.message} ({i.suggestion})" for i in check(data).issues]


def test_unknown_field_without_a_close_match_has_no_suggestion():
    """A field name unlike any valid one gets no misleading suggestion."""
    data = base()
    data["zzz"] = 1
    (issue,) = check(data).issues
    assert (None, "unknown field 'zzz'") == (issue.suggestion, issue.message)


def test_wrong_type_names_expected_and_actual():
    """'wrong type' (docs/faults.md#plan-files): expected str, got int, at the field."""
    data = with_steps({"id": "a", "agent": 5, "task": "t"})
    assert [f"error[plan.schema]: {SOURCE}: $.steps[0].agent: expected str, got int"] == lines(data)


def test_missing_required_field():
    """'missing required field' (docs/faults.md#plan-files): reported at the object that lacks
    it."""
    data = with_steps({"id": "a", "agent": "writer"})
    assert [f"error[plan.schema]: {SOURCE}: $.steps[0]: missing required field 'task'"] == lines(
        data
    )


def test_wrong_types_everywhere_are_all_reported():
    """Type errors in lists, nested objects and maps are collected, with precise paths."""
    data = base()
    data["agents"][1]["tools"] = ["ok", 3]
    data["budgets"] = {"max_turns": "many", "wall_clock": True}
    data["tools"] = {"t": {"path": "a:b", "timeout": "soon"}}
    data["agents"][0]["role"] = "plannr"
    got = [(i.location, i.message) for i in check(data, import_tools=False).issues]
    assert [
        ("$.agents[0].role", "expected one of 'planner', 'worker', got 'plannr'"),
        ("$.agents[1].tools[1]", "expected str, got int"),
        ("$.budgets.max_turns", "expected int, got str"),
        ("$.budgets.wall_clock", "expected float, got bool"),
        ("$.tools.t.timeout", "expected float, got str"),
    ] == [g for g in got if g[0] != "$.agents[1].tools[0]"]


def test_enum_values_suggest_the_closest_choice():
    """A misspelled role or side-effect class gets a did-you-mean."""
    data = base()
    data["agents"][0]["role"] = "plannr"
    issue = check(data).issues[0]
    assert "did you mean 'planner'?" == issue.suggestion


# -- structure ---------------------------------------------------------------------------------


def test_empty_plan():
    """'empty plan / no steps' (docs/faults.md#plan-files): no agents and no steps is plan.empty."""
    report = check({"name": "x"})
    assert [
        f"error[plan.empty]: {SOURCE}: $: plan defines no agents and no steps; "
        "add an [[agents]] entry"
    ] == [str(i) for i in report.issues]


def test_duplicate_step_ids():
    """'duplicate step ids' (docs/faults.md#plan-files): both places are named."""
    data = with_steps(step("a"), step("b"), step("fetch"), step("c"), step("d"), step("fetch"))
    assert [
        f"error[plan.duplicate]: {SOURCE}: $.steps[5]: step id 'fetch' defined twice "
        "($.steps[2], $.steps[5])"
    ] == lines(data)


def test_duplicate_agent_names():
    """'duplicate agent names' (docs/faults.md#plan-files): counted, with every place."""
    data = base()
    data["agents"] += [{"name": "writer"}, {"name": "writer"}]
    assert [
        f"error[plan.duplicate]: {SOURCE}: $.agents[2]: agent name 'writer' defined 3 times "
        "($.agents[1], $.agents[2], $.agents[3])"
    ] == lines(data)


def test_dependency_cycle_shows_its_path():
    """'cycle in the DAG' (docs/faults.md#plan-files): the cycle reads a → b → c → a ('→' = depends
    on)."""
    data = with_steps(step("a", "b"), step("b", "c"), step("c", "a"))
    assert [
        f"error[plan.cycle]: {SOURCE}: $.steps[0].depends_on[0]: dependency cycle: "
        "a → b → c → a; remove one of these dependencies"
    ] == lines(data)


def test_each_separate_cycle_is_reported():
    """graphlib finds one cycle at a time; validation keeps looking after the first."""
    data = with_steps(step("a", "b"), step("b", "a"), step("x", "y"), step("y", "x"), step("z"))
    messages = [i.message for i in check(data).issues]
    assert ["dependency cycle: a → b → a", "dependency cycle: x → y → x"] == messages


def test_self_dependency():
    """'self-dependency' (docs/faults.md#plan-files)."""
    data = with_steps(step("a", "a"))
    assert [
        f"error[plan.cycle]: {SOURCE}: $.steps[0].depends_on[0]: step 'a' depends on itself"
    ] == lines(data)


def test_dependency_on_unknown_step():
    """'dependency on unknown step' (docs/faults.md#plan-files), with a suggestion when one is
    close."""
    data = with_steps(step("fetch"), step("b", "z"), step("c", "fech"))
    assert [
        f"error[plan.unknown_step]: {SOURCE}: $.steps[1].depends_on[0]: step 'b' depends on "
        "unknown step 'z'",
        f"error[plan.unknown_step]: {SOURCE}: $.steps[2].depends_on[0]: step 'c' depends on "
        "unknown step 'fech' (did you mean 'fetch'?)",
    ] == lines(data)


def test_unknown_agent_lists_the_defined_agents():
    """'unknown agent reference' (docs/faults.md#plan-files)."""
    data = with_steps(step("a"), step("b", agent="writer2"))
    assert [
        f"error[plan.unknown_agent]: {SOURCE}: $.steps[1].agent: step 'b' uses agent "
        "'writer2'; defined agents: planner, writer (did you mean 'writer'?)"
    ] == lines(data)


def test_plan_without_steps_needs_a_planner():
    """Dynamic mode: no steps and no planner is plan.planner."""
    data = base()
    data["agents"][0]["role"] = "worker"
    (issue,) = check(data).issues
    assert ("plan.planner", "$.agents") == (issue.code, issue.location)


def test_a_plan_has_at_most_one_planner():
    """Two planners are an error in either mode, naming both."""
    data = base()
    data["agents"][1]["role"] = "planner"
    assert [
        f"error[plan.planner]: {SOURCE}: $.agents[1].role: 2 agents have role 'planner': "
        "'planner' ($.agents[0]), 'writer' ($.agents[1]); a plan has at most one planner"
    ] == lines(data)


def test_steps_mode_needs_no_planner():
    """With steps, a plan without a planner is valid."""
    data = with_steps(step("a"))
    data["agents"] = [data["agents"][1]]
    assert () == check(data).issues


def test_agent_without_any_model():
    """An agent needs its own model or settings.model."""
    data = base()
    del data["settings"]
    (issue,) = [i for i in check(data).issues if i.location == "$.agents[0]"]
    assert "agent 'planner' has no model" == issue.message


# -- tools -------------------------------------------------------------------------------------


def test_tool_not_registered():
    """'tool not registered' (docs/faults.md#plan-files): a bare name must be defined under
    [tools]."""
    data = base()
    data["agents"][1]["tools"] = ["shell"]
    assert [
        f"error[plan.tool]: {SOURCE}: $.agents[1].tools[0]: agent 'writer' lists tool 'shell' "
        "which is not registered; define it under [tools] or give its import path "
        "'module:function'"
    ] == lines(data)


def test_tool_not_in_the_allow_list_is_never_imported():
    """'tool not allowed' (docs/faults.md#plan-files): with allowed_modules, other modules are
    refused unimported."""
    data = base()
    data["agents"][1]["tools"] = ["tests.plans.broken_tools:anything"]
    assert [
        f"error[plan.tool]: {SOURCE}: $.agents[1].tools[0]: agent 'writer' lists tool "
        "'tests.plans.broken_tools:anything' which is not in the allow-list; allowed modules: "
        "tests.plans.fixture_tools"
    ] == lines(data, allowed_modules=["tests.plans.fixture_tools"])


def test_allow_list_admits_submodules():
    """A module prefix admits its submodules, not modules merely sharing the prefix."""
    data = base()
    assert () == check(data, allowed_modules=["tests.plans"]).issues
    assert 1 == len(check(data, allowed_modules=["tests.plan"]).issues)


def test_misspelled_tool_function_suggests_the_right_one():
    """Bad tool path: the attribute is missing; the closest callable is suggested."""
    data = base()
    data["agents"][1]["tools"] = ["tests.plans.fixture_tools:serch"]
    assert [
        f"error[plan.tool]: {SOURCE}: $.agents[1].tools[0]: 'tests.plans.fixture_tools:serch' "
        "not found (did you mean 'tests.plans.fixture_tools:search'?)"
    ] == lines(data)


def test_misspelled_tool_module_suggests_a_sibling():
    """Bad tool path: the module is missing; a sibling module with a close name is suggested."""
    data = base()
    data["agents"][1]["tools"] = ["tests.plans.fixture_tool:search"]
    (issue,) = check(data).issues
    assert "'tests.plans.fixture_tool:search' not found: no module named " in issue.message
    assert "did you mean 'tests.plans.fixture_tools:search'?" == issue.suggestion


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("tests.plans.fixture_tools:NOT_CALLABLE", "is not callable (it is a int)"),
        ("tests.plans.broken_tools:f", "could not be imported: RuntimeError: database unreachable"),
        ("no_such_top_level_module_xyz:f", "not found: no module named"),
    ],
)
def test_bad_tool_paths(entry, message):
    """Bad tool path: not callable, import raising, module missing: one issue each."""
    data = base()
    data["agents"][1]["tools"] = [entry]
    (issue,) = check(data).issues
    assert ("plan.tool", "$.agents[1].tools[0]") == (issue.code, issue.location)
    assert message in issue.message


def test_tools_table_entries_are_checked_where_defined():
    """A [tools] entry's path is checked at $.tools.NAME.path; its options are range-checked."""
    data = base()
    data["tools"] = {
        "web": {"path": "not a path", "timeout": 0, "max_output": 10},
    }
    data["agents"][1]["tools"] = ["web"]
    assert [
        ("$.tools.web.max_output", "plan.value", "must be in 256..1048576, got 10"),
        ("$.tools.web.path", "plan.tool", "'not a path' is not an import path"),
        ("$.tools.web.timeout", "plan.value", "must be in 0 < x <= 3600, got 0.0"),
    ] == [(i.location, i.code, i.message) for i in check(data).issues]


def test_one_tool_name_cannot_mean_two_functions():
    """Two import paths with the same function name collide in the model's view."""
    data = base()
    data["tools"] = {"search": {"path": "tests.plans.fixture_tools:fetch"}}
    data["agents"][0]["tools"] = ["search"]
    (issue,) = check(data).issues
    assert ("plan.duplicate", "$.agents[1].tools[0]") == (issue.code, issue.location)
    assert "tool name 'search' means both" in issue.message


def test_unused_tool_definition_is_a_warning():
    """A [tools] entry no agent lists is a warning, not an error."""
    data = base()
    data["tools"] = {"fetch": {"path": "tests.plans.fixture_tools:fetch"}}
    report = check(data)
    assert report.ok
    assert [
        f"warning[plan.unused_tool]: {SOURCE}: $.tools.fetch: tool 'fetch' is listed by no agent"
    ] == [str(w) for w in report.warnings]


def test_import_tools_false_checks_syntax_only():
    """import_tools=False skips imports (a missing module passes) but not the path syntax."""
    data = base()
    data["agents"][1]["tools"] = ["nowhere:f", "bad-path:g"]
    (issue,) = check(data, import_tools=False).issues
    assert "'bad-path:g' is not an import path" == issue.message


def test_the_same_tool_twice_in_one_agent():
    """Listing one tool twice is a duplicate; two different tools with one name is a clash."""
    data = base()
    data["agents"][1]["tools"] = ["tests.plans.fixture_tools:search"] * 2
    assert [
        f"error[plan.duplicate]: {SOURCE}: $.agents[1].tools[1]: agent 'writer' lists tool "
        "'search' twice ($.agents[1].tools[0])"
    ] == lines(data)


# -- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "field", "value", "message"),
    [
        ("budgets", "max_turns", 0, "must be in 1..100000, got 0"),
        ("budgets", "max_turns", 100_001, "must be in 1..100000, got 100001"),
        ("budgets", "max_tokens", -5, "must be in 1..1000000000, got -5"),
        ("budgets", "wall_clock", 0, "must be in 0 < x <= 604800, got 0.0"),
        ("budgets", "wall_clock", float("inf"), "must be a finite number, got inf"),
    ],
)
def test_out_of_range_budgets(where, field, value, message):
    """'non-positive timeouts/budgets, limits above hard caps' (docs/faults.md#plan-files)."""
    data = base()
    data[where] = {field: value}
    (issue,) = check(data).issues
    assert ("plan.value", f"$.{where}.{field}", message) == (
        issue.code,
        issue.location,
        issue.message,
    )


def test_out_of_range_rendering_matches_the_catalogue():
    """The rendered line reads like the example in docs/faults.md#plan-files."""
    data = base()
    data["budgets"] = {"max_turns": 0}
    assert [f"error[plan.value]: {SOURCE}: $.budgets.max_turns: must be in 1..100000, got 0"] == (
        lines(data)
    )


def test_agent_limits_names_and_urls_are_checked():
    """Per-agent limits, names, the format version and the endpoint URL are range-checked."""
    data = base()
    data["version"] = 2
    data["agents"][1]["limits"] = {"max_turns": 0}
    data["agents"][1]["name"] = "bad name"
    data["settings"]["base_url"] = "ftp://example.com"
    got = [(i.location, i.code) for i in check(data).issues]
    assert [
        ("$.agents[1].limits.max_turns", "plan.value"),
        ("$.agents[1].name", "plan.value"),
        ("$.settings.base_url", "plan.value"),
        ("$.version", "plan.value"),
    ] == got


# -- steps and references ----------------------------------------------------------------------


def test_unreachable_steps_are_a_warning():
    """'unreachable steps' (docs/faults.md#plan-files): steps final_step does not need are never
    scheduled."""
    data = with_steps(step("a"), step("b"), step("x"), step("y", "x"))
    data["final_step"] = "b"
    report = check(data)
    assert report.ok
    assert [
        f"warning[plan.unreachable]: {SOURCE}: $.steps: steps 'a','x','y' are never scheduled; "
        "final_step 'b' does not depend on them"
    ] == [str(w) for w in report.warnings]


def test_unknown_final_step():
    """final_step must name a step."""
    data = with_steps(step("a"))
    data["final_step"] = "b"
    assert ["plan.unknown_step"] == [i.code for i in check(data).issues]


def test_references_must_name_a_dependency():
    """{{steps.X.result}} needs X among the (transitive) dependencies; other forms are invalid."""
    data = with_steps(
        step("a"),
        step("b", "a", task="{{steps.a.result}} {{ goal }}"),
        step("c", "b", task="{{steps.a.result}} and {{steps.b.result}}"),
        step("d", task="{{steps.a.result}}"),
        step("e", task="{{steps.zz.result}} {{steps.a.output}}"),
    )
    assert [
        (
            "$.steps[3].task",
            "plan.reference",
            "step 'd' uses the result of 'a' but does not depend on it",
        ),
        ("$.steps[4].task", "plan.reference", "invalid reference '{{steps.a.output}}' in step 'e'"),
        ("$.steps[4].task", "plan.unknown_step", "step 'e' references unknown step 'zz'"),
    ] == [(i.location, i.code, i.message) for i in check(data).issues]


def test_workers_no_step_uses_are_a_warning_without_a_planner():
    """In steps mode without a planner, a worker that runs no step is flagged."""
    data = with_steps(step("a"))
    data["agents"][0]["role"] = "worker"
    report = check(data)
    assert report.ok
    assert ["plan.unused_agent"] == [w.code for w in report.warnings]


# -- secrets -----------------------------------------------------------------------------------


def test_api_key_in_the_plan_is_reported_without_echoing_it(canary_key):
    """'API key inside the plan' (docs/faults.md#plan-files): found anywhere, never repeated in the
    message."""
    data = base()
    data["agents"][0]["env"] = canary_key
    data["agents"][1]["instructions"] = f"Use Authorization: Bearer {canary_key[3:]}"
    data["settings"]["api_key"] = "hunter2"
    report = check(data)
    assert [
        ("$.agents[0]", "plan.schema"),
        ("$.agents[0].env", "plan.secret"),
        ("$.agents[1].instructions", "plan.secret"),
        ("$.settings", "plan.schema"),
        ("$.settings.api_key", "plan.secret"),
    ] == [(i.location, i.code) for i in report.issues]
    listing = "\n".join(str(i) for i in report.issues)
    assert canary_key not in listing
    assert canary_key[3:] not in listing
    assert "hunter2" not in listing
    assert (
        f"error[plan.secret]: {SOURCE}: $.agents[0].env: plan contains what looks like an API "
        "key or password; remove it and use OPENAI_API_KEY (or a key file); never put secrets "
        "in plans"
    ) in listing


def test_secret_in_an_enum_field_is_not_echoed(canary_key):
    """A key pasted into a field whose message would echo the value is redacted there too."""
    data = base()
    data["agents"][0]["role"] = canary_key
    listing = "\n".join(str(i) for i in check(data).issues)
    assert canary_key not in listing
    assert "got <redacted>" in listing


def test_ordinary_words_are_not_secrets():
    """'task-management-2024' contains 'sk-' but is not a key."""
    data = base()
    data["agents"][0]["instructions"] = "Use the task-management-2024 board and a token bucket."
    assert () == check(data).issues


# -- the whole report --------------------------------------------------------------------------


def test_issues_are_sorted_by_location_with_numeric_indices():
    """$.steps[2] sorts before $.steps[10]; whole-plan issues first."""
    data = with_steps(*[step(f"s{i}") for i in range(11)])
    data["steps"][10]["agent"] = "nobody"
    data["steps"][2]["agent"] = "nobody"
    data["unknown"] = True
    locations = [i.location for i in check(data).issues]
    assert ["$", "$.steps[2].agent", "$.steps[10].agent"] == locations


def test_plan_error_carries_all_issues_and_the_listing():
    """plan_from_dict raises PlanError: .issues are PlanIssue objects, str is one per line."""
    data = with_steps(step("a", "b"), step("b", "a"), step("c", agent="ghost"))
    data["budgets"] = {"max_turns": 0}
    with pytest.raises(PlanError) as caught:
        plan_from_dict(data, source=SOURCE)
    issues = caught.value.issues
    assert all(isinstance(i, PlanIssue) for i in issues)
    assert ["plan.value", "plan.cycle", "plan.unknown_agent"] == [
        i.code
        for i in issues  # type: ignore[attr-defined]
    ]
    assert [str(i) for i in issues] == str(caught.value).splitlines()


def test_issue_without_a_source_has_no_path_prefix():
    """Plans built from data without a file render as 'error[CODE]: LOCATION: message'."""
    data = base()
    data["budgets"] = {"max_turns": 0}
    (issue,) = check_plan(data).issues
    assert "error[plan.value]: $.budgets.max_turns: must be in 1..100000, got 0" == str(issue)


def test_check_plan_accepts_a_plan_object():
    """A Plan built by hand (never type-checked by msgspec) is validated the same way."""
    plan = plan_from_dict(base())
    assert () == check_plan(plan).issues
    broken = Plan(
        name="x",
        settings=plan.settings,
        agents=plan.agents,
        budgets=plan.budgets.__class__(max_turns=0),
    )
    assert ["plan.value"] == [i.code for i in check_plan(broken).issues]


def test_deeply_broken_data_still_reports_cross_references():
    """A step with a typo still takes part in cycle detection (its valid fields are kept)."""
    data = with_steps(step("a", "b"), step("b", "a"))
    data["steps"][0]["tsk"] = "x"
    codes = [i.code for i in check(data).issues]
    assert ["plan.schema", "plan.cycle"] == codes


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(string.ascii_lowercase + "_", max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)
field_names = st.sampled_from(
    ["name", "agents", "steps", "tools", "budgets", "settings", "goal", "final_step", "x"]
)


@given(st.dictionaries(field_names, json_values, max_size=6))
def test_arbitrary_data_gives_issues_never_exceptions(data):
    """Whatever the data, check_plan returns a report; a report without errors has a plan."""
    report = check_plan(data, import_tools=False)
    if not report.errors:
        assert report.plan is not None
    # (a plan that decoded may still have errors: the report keeps it for the caller)


@given(st.data())
def test_mutated_valid_plans_give_issues_never_exceptions(draw):
    """Replacing any value of a valid plan with junk gives issues, never an exception."""
    data = with_steps(step("a"), step("b", "a", task="{{steps.a.result}}"))
    paths: list[tuple[Any, Any]] = []

    def collect(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            paths.append((node, key))
            if isinstance(value, dict | list):
                collect(value)

    mutated = copy.deepcopy(data)
    collect(mutated)
    container, key = draw.draw(st.sampled_from(paths))
    container[key] = draw.draw(json_values)
    report = check_plan(mutated, import_tools=False)
    assert isinstance(report, PlanReport)
