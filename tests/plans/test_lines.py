"""Plan issues carry the line of the file they are on, in every format (``plans.lines``), and
tools that cannot be described to a model are plan errors when validation builds them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from actors.tools import check_definition
from plans import check_plan, check_plan_file
from plans.lines import excerpt, line_finder, location_parts

if TYPE_CHECKING:
    from pathlib import Path

TOML = """\
name = "t"
goal = "g"

[settings]
model = "gpt-5-mini"

[[agents]]
name = "boss"
role = "planner"
instructions = \"\"\"
Several lines
of instructions.\"\"\"

[[agents]]
name = "w"
toolz = ["a"]
tools = [
  "tests.plans.fixture_tools:search",
  "tests.plans.fixture_tools:serch",
]
[agents.limits]
max_turns = 0
"""

YAML = """\
name: t
goal: g
settings:
  model: gpt-5-mini
agents:
  - name: boss
    role: planner
    instructions: |
      Several lines
      of instructions.
  - name: w
    toolz: [a]
    tools:
      - tests.plans.fixture_tools:search
      - tests.plans.fixture_tools:serch
    limits:
      max_turns: 0
"""

JSON = """\
{
  "name": "t",
  "goal": "g",
  "settings": {"model": "gpt-5-mini"},
  "agents": [
    {"name": "boss", "role": "planner",
     "instructions": "Several lines\\nof instructions."},
    {
      "name": "w",
      "toolz": ["a"],
      "tools": [
        "tests.plans.fixture_tools:search",
        "tests.plans.fixture_tools:serch"
      ],
      "limits": {"max_turns": 0}
    }
  ]
}
"""

# (line of toolz, line of the bad tool, line of max_turns) in each spelling.
EXPECTED = {"toml": (16, 19, 22), "yaml": (12, 15, 17), "json": (10, 13, 15)}


@pytest.mark.parametrize(("kind", "text"), [("toml", TOML), ("yaml", YAML), ("json", JSON)])
def test_issues_name_the_line_they_are_on(tmp_path: Path, kind: str, text: str):
    """An unknown key, a tool that is not found and an out-of-range limit each point at
    their own line, in TOML, YAML and JSON alike, as ``FILE:LINE:``."""
    path = tmp_path / f"team.{kind}"
    path.write_text(text)
    report = check_plan_file(path)

    lines = {issue.code: issue.line for issue in report.issues}
    toolz, tool, turns = EXPECTED[kind]
    assert {"plan.schema": toolz, "plan.tool": tool, "plan.value": turns} == lines
    schema = next(issue for issue in report.issues if issue.code == "plan.schema")
    assert str(schema).startswith(f"error[plan.schema]: {path}:{toolz}: $.agents[1]: unknown field")


def test_a_location_without_a_line_of_its_own_gets_its_closest_ancestors():
    """An item of an inline TOML array maps to its key's line; an unknown place to none."""
    find = line_finder('name = "t"\n[[agents]]\nname = "a"\ntools = ["x", "y"]\n', "toml")
    assert 4 == find("$.agents[0].tools[1]")
    assert 2 == find("$.agents[0].limits")
    assert find("$.steps[3]") is None


def test_locations_split_into_parts():
    """Names, indices and quoted keys."""
    assert ("agents", 2, "tools", 0) == location_parts("$.agents[2].tools[0]")
    assert ("tools", "a b", "path") == location_parts('$.tools["a b"].path')


def test_an_excerpt_points_at_the_column():
    """The line, numbered, with a caret under the 1-based column."""
    assert "    2 | b = ]\n      |     ^" == excerpt("a = 1\nb = ]\n", 2, 5)
    assert excerpt("a = 1\n", 5, 1) is None


def test_a_plan_built_in_python_has_no_lines():
    """Without a file there is no line to give."""
    report = check_plan({"name": "t", "agents": [{"name": "w", "toolz": []}]})
    assert {None} == {issue.line for issue in report.issues}


@pytest.mark.parametrize(
    ("tool", "message", "suggestion"),
    [
        (
            "untyped",
            "'tests.plans.fixture_tools:untyped': tool 'untyped': parameter 'query' has no type "
            "hint",
            "annotate it, e.g. `query: str`; use a type msgspec describes: str, int, float, "
            "bool, list[...], dict[str, ...], Literal[...], an Enum, a msgspec.Struct or "
            "dataclass, datetime.date or pathlib.Path",
        ),
        (
            "opaque",
            "'tests.plans.fixture_tools:opaque': tool 'opaque': parameter 'options' has type "
            "object, which cannot be described to the model as JSON",
            "use a type msgspec describes: str, int, float, bool, list[...], dict[str, ...], "
            "Literal[...], an Enum, a msgspec.Struct or dataclass, datetime.date or pathlib.Path",
        ),
    ],
)
def test_a_tool_the_runtime_cannot_describe_is_a_plan_error(tool, message, suggestion):
    """With the runtime's ``check_tool``, a function whose parameters have no type hint or a
    type without a JSON schema is ``plan.tool``, naming the tool, the parameter and the fix;
    without it (or without importing tools) validation cannot know."""
    data = {
        "name": "t",
        "goal": "g",
        "settings": {"model": "gpt-5-mini"},
        "agents": [
            {"name": "boss", "role": "planner"},
            {"name": "w", "tools": [f"tests.plans.fixture_tools:{tool}"]},
        ],
    }
    report = check_plan(data, source="team.toml", check_tool=check_definition)

    assert [("plan.tool", "$.agents[1].tools[0]", message, suggestion)] == [
        (issue.code, issue.location, issue.message, issue.suggestion) for issue in report.issues
    ]
    assert check_plan(data).ok
    assert check_plan(data, check_tool=check_definition, import_tools=False).ok
