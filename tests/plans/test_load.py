"""Plan files: decoding, file-level errors (docs/faults.md#plan-files), equal plans per format."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
from loguru import logger

from orchestrator.errors import PlanError
from plans import (
    Agent,
    Budget,
    Plan,
    PlanIssue,
    Settings,
    ToolConfig,
    check_plan_file,
    load_plan,
)

FILES = Path(__file__).parent / "files"


def only_issue(path: Path) -> PlanIssue:
    report = check_plan_file(path)
    assert report.plan is None
    assert 1 == len(report.issues), report.issues
    return report.issues[0]


@pytest.mark.parametrize("name", ["trip.toml", "trip.yaml", "trip.json"])
def test_each_format_loads_the_same_plan(name):
    """TOML, YAML and JSON spellings of one plan load to equal Plan objects."""
    expected = Plan(
        name="trip",
        goal="Plan a 3-day trip to Lisbon",
        settings=Settings(model="gpt-5-mini", store=False, base_url="http://127.0.0.1:8765/v1"),
        budgets=Budget(max_turns=200, max_tokens=500000, wall_clock=600),
        tools={
            "web_search": ToolConfig(
                path="tests.plans.fixture_tools:search",
                timeout=10,
                max_output=4096,
                side_effect="read_only",
                description="Search the web for travel information.",
            )
        },
        agents=(
            Agent(
                name="planner",
                role="planner",
                instructions="Split the goal, delegate, then answer.",
                limits=Budget(max_turns=50),
            ),
            Agent(
                name="flights",
                description="Finds flights.",
                model="gpt-5",
                instructions="You find flights.",
                tools=("web_search", "tests.plans.fixture_tools:search_hotels"),
            ),
        ),
    )
    assert expected == load_plan(FILES / name)


def test_a_valid_file_reports_no_issues():
    """check_plan_file on a good plan returns the plan and an empty issue list."""
    report = check_plan_file(FILES / "pipeline.toml")
    assert () == report.issues
    assert report.ok
    assert "pipeline" == report.plan.name if report.plan else None


def test_loading_accepts_a_str_path_and_a_utf8_bom(tmp_path):
    """A plain str path works, and a UTF-8 byte-order mark is skipped."""
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + (FILES / "trip.json").read_bytes())
    assert "trip" == load_plan(str(path)).name


def test_too_large_is_checked_before_decoding(tmp_path):
    """'file > cap' (docs/faults.md#plan-files): a 1.5 MiB file is refused by size, though it is
    also malformed."""
    path = tmp_path / "x.toml"
    path.write_bytes(b"[" * (3 * 512 * 1024))
    issue = only_issue(path)
    assert "plan.too_large" == issue.code
    assert f"error[plan.too_large]: '{path}' is 1.5 MiB, limit 1 MiB" == str(issue)


def test_too_large_just_over_the_cap_shows_bytes(tmp_path):
    """One byte over the cap would round to the cap; the message shows exact bytes then."""
    path = tmp_path / "x.json"
    path.write_bytes(b" " * (1024 * 1024 + 1))
    assert f"'{path}' is 1048577 bytes, limit 1048576 bytes" == only_issue(path).message


def test_not_utf8_reports_the_byte_offset(tmp_path):
    """'not UTF-8' (docs/faults.md#plan-files): the message names the offset of the first bad
    byte."""
    path = tmp_path / "x.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    issue = only_issue(path)
    assert f"error[plan.encoding]: '{path}' is not valid UTF-8 (byte 11)" == str(issue)


def test_json_syntax_error_maps_the_byte_offset_to_line_and_column(tmp_path):
    """'syntax error', JSON (docs/faults.md#plan-files): msgspec's byte offset becomes line and
    column, and the offending line is shown with a caret under the column."""
    path = tmp_path / "x.json"
    path.write_text('{"name": "x",\n "agents": [1,],\n "steps": []}')
    issue = only_issue(path)
    assert (
        f"error[plan.syntax]: '{path}' is malformed: trailing comma in array "
        "(byte 28, line 2 col 15)\n"
        '    2 |  "agents": [1,],\n'
        "      |               ^"
    ) == str(issue)
    assert 2 == issue.line


def test_truncated_json_points_at_the_end(tmp_path):
    """A JSON file cut short is reported at its last byte."""
    path = tmp_path / "x.json"
    path.write_text('{"name":\n "x"')
    assert f"'{path}' is malformed: input data was truncated (byte 13, line 2 col 5)" == (
        only_issue(path).message
    )


def test_toml_syntax_error_has_line_and_column(tmp_path):
    """'syntax error', TOML (docs/faults.md#plan-files): tomllib's position is kept as line and
    column."""
    path = tmp_path / "x.toml"
    path.write_text('name = "x"\nagents = ]\n')
    issue = only_issue(path)
    assert "plan.syntax" == issue.code
    assert f"'{path}' is malformed: invalid value (line 2 col 10)" == issue.message
    assert "    2 | agents = ]\n      |          ^" == issue.excerpt


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    """'syntax error', YAML (docs/faults.md#plan-files): PyYAML's mark becomes a 1-based line and
    column."""
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nagents:\n  - name: a\n   role: b\n")
    issue = only_issue(path)
    assert "plan.syntax" == issue.code
    assert issue.message.endswith("(line 4 col 4)"), issue.message
    assert "    4 |    role: b\n      |    ^" == issue.excerpt
    assert str(issue).endswith("\n" + issue.excerpt)


def test_a_syntax_error_on_a_line_with_a_secret_does_not_show_the_line(tmp_path):
    """The excerpt of a syntax error never echoes what looks like a key: the line is named,
    not shown."""
    key = "sk-proj-abcdef1234567890XYZ"
    path = tmp_path / "x.yaml"
    path.write_text(f"name: x\nagents:\n  - name: a\n   api: {key}\n")
    issue = only_issue(path)
    assert "    4 | (not shown: the line looks like it holds a secret)" == issue.excerpt
    assert key not in str(issue)


def test_a_long_line_is_shown_around_the_error(tmp_path):
    """A syntax error far into a long line shows the part around it, the caret under it."""
    path = tmp_path / "x.toml"
    path.write_text('goal = "' + "x" * 300 + '" oops\n')
    issue = only_issue(path)
    assert issue.excerpt is not None
    shown, caret = issue.excerpt.splitlines()
    assert len(shown) < 120
    assert "oops" in shown
    assert shown[caret.index("^")] in "o "


def test_yaml_python_tags_are_refused(tmp_path):
    """The safe loader refuses Python object tags: a plan cannot run code by decoding."""
    path = tmp_path / "x.yaml"
    path.write_text("name: !!python/object/apply:os.system ['true']\n")
    issue = only_issue(path)
    assert "plan.syntax" == issue.code
    assert "python/object/apply" in issue.message


@pytest.mark.parametrize(
    ("suffix", "content"),
    [
        (".json", "[" * 100_000),
        (".toml", "a = " + "[" * 100_000),
        (".yaml", "[" * 100_000),
    ],
)
def test_deep_nesting_is_a_syntax_error(tmp_path, suffix, content):
    """'deep nesting' (docs/faults.md#plan-files): RecursionError or a parser depth limit becomes
    plan.syntax."""
    path = (tmp_path / "x").with_suffix(suffix)
    path.write_text(content)
    issue = only_issue(path)
    assert f"error[plan.syntax]: '{path}' is malformed: nesting too deep" == str(issue)


def test_empty_file_is_reported_once(tmp_path):
    """'empty plan' (docs/faults.md#plan-files): a blank file gives one plan.empty issue, not a pile
    of schema errors."""
    path = tmp_path / "x.yaml"
    path.write_text("\n  \n")
    assert f"error[plan.empty]: '{path}' is empty" == str(only_issue(path))


def test_unknown_extension_and_missing_file(tmp_path):
    """Unsupported extensions and unreadable files are issues too, never tracebacks."""
    assert "plan.format" == only_issue(tmp_path / "plan.txt").code
    missing = tmp_path / "missing.toml"
    assert f"error[plan.not_found]: plan file '{missing}' not found" == str(only_issue(missing))


def test_a_document_that_is_not_an_object(tmp_path):
    """A JSON array at top level is a schema error at $."""
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    assert f"error[plan.schema]: {path}: $: expected object, got array" == str(only_issue(path))


def test_load_plan_raises_plan_error_with_every_issue(tmp_path):
    """load_plan raises PlanError whose str is the whole listing and whose issues are objects."""
    path = tmp_path / "team.toml"
    path.write_text('name = "t"\n[[agents]]\nname = "p"\nrole = "boss"\nmodel = 5\n')
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    expected = [
        f"error[plan.schema]: {path}:5: $.agents[0].model: expected str, got int",
        f"error[plan.schema]: {path}:4: $.agents[0].role: expected one of 'planner', "
        "'worker', got 'boss'",
    ]
    assert expected == str(caught.value).splitlines()
    assert ["plan.schema", "plan.schema"] == [i.code for i in caught.value.issues]


def test_load_plan_logs_warnings(tmp_path):
    """Warnings do not stop a load; they go to the plans logger."""
    path = tmp_path / "x.toml"
    path.write_text((FILES / "pipeline.toml").read_text().replace('"report"', '"fetch_a"', 1))
    records: list[str] = []
    logger.enable("plans")
    handler = logger.add(records.append, level="WARNING", format="{message}")
    try:
        plan = load_plan(path)
    finally:
        logger.remove(handler)
        logger.disable("plans")
    assert "fetch_a" == plan.final_step
    assert [r.strip() for r in records] == [
        f"warning[plan.unreachable]: {path}:15: $.steps: steps 'fetch_b','report' are never "
        "scheduled; final_step 'fetch_a' does not depend on them"
    ]


def test_plan_round_trips_through_json():
    """A loaded plan encodes to JSON and decodes back to an equal plan."""
    plan = load_plan(FILES / "pipeline.toml")
    assert plan == msgspec.json.decode(msgspec.json.encode(plan), type=Plan)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads anything")
def test_an_unreadable_file_is_named_with_the_reason(tmp_path):
    """'path unreadable' (docs/faults.md#plan-files): plan.not_found with 'permission denied', never
    a traceback."""
    path = tmp_path / "plan.toml"
    path.write_text('name = "x"\n')
    path.chmod(0)
    assert f"error[plan.not_found]: plan file '{path}': permission denied" == str(only_issue(path))
