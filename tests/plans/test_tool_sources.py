"""Plans with MCP servers and hosted tools: what they may say, and every mistake reported."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import ConfigurationError
from plans import PlanBuilder, check_approval_patterns, check_plan, expand_environment

SOURCE = "team.toml"


def plan(**agent: Any) -> dict[str, Any]:
    return {
        "name": "team",
        "goal": "g",
        "settings": {"model": "gpt-5"},
        "mcp_servers": {
            "docs": {
                "command": "python",
                "args": ["-m", "docs_server"],
                "env": {"DOCS_TOKEN": "${DOCS_TOKEN}", "LEVEL": "debug"},
                "prefix": "docs_",
                "side_effects": {"fetch": "destructive"},
            },
            "web": {
                "url": "https://mcp.example.org/mcp",
                "headers": {"Authorization": "Bearer ${WEB_TOKEN}", "X-Team": "${TEAM}"},
                "tools": ["search"],
            },
        },
        "approvals": {"allow": ["docs_fetch", "w:search", "w:kb.lookup"]},
        "agents": [
            {
                "name": "w",
                "role": "planner",
                "mcp_servers": ["docs", "web"],
                "hosted_tools": [
                    {"type": "web_search", "search_context_size": "low"},
                    {"type": "file_search", "vector_store_ids": ["vs_1"]},
                    {
                        "type": "mcp",
                        "server_label": "kb",
                        "server_url": "https://kb.example.org/mcp",
                        "headers": {"Authorization": "Bearer ${KB_TOKEN}"},
                        "require_approval": {"never": {"tool_names": ["lookup"]}},
                    },
                ],
                **agent,
            }
        ],
    }


def issues(data: dict[str, Any]) -> list[tuple[str | None, str]]:
    report = check_plan(data, source=SOURCE)
    return [(issue.location, issue.code) for issue in report.errors]


def test_a_plan_with_mcp_servers_and_hosted_tools_is_valid():
    """Servers by stdio and HTTP, credentials as ${NAME} (also under secret-looking names),
    hosted tools, and approval patterns naming tools known only at run start all pass."""
    report = check_plan(plan(), source=SOURCE)
    assert [] == list(report.issues)
    assert report.plan is not None
    assert ("docs", "web") == report.plan.agents[0].mcp_servers
    assert report.plan.mcp_servers["web"].offers("search")
    assert not report.plan.mcp_servers["web"].offers("delete")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"mcp_servers": {"docs": {"command": "x", "url": "http://127.0.0.1/mcp"}}},
            [("$.mcp_servers.docs", "plan.value")],
        ),
        ({"mcp_servers": {"docs": {}}}, [("$.mcp_servers.docs", "plan.value")]),
        (
            {"mcp_servers": {"docs": {"url": "https://h/mcp", "headers": {"X-Key": "abc"}}}},
            [('$.mcp_servers.docs.headers["X-Key"]', "plan.secret")],
        ),
        (
            {"mcp_servers": {"docs": {"url": "https://u:p@h/mcp"}}},
            [("$.mcp_servers.docs.url", "plan.secret")],
        ),
        (
            {"mcp_servers": {"docs": {"command": "x", "env": {"API_KEY": "hunter2hunter2"}}}},
            [("$.mcp_servers.docs.env.API_KEY", "plan.secret")],
        ),
        (
            {"mcp_servers": {"docs": {"url": "ftp://h/mcp"}}},
            [("$.mcp_servers.docs.url", "plan.value")],
        ),
        (
            {"mcp_servers": {"docs": {"command": "x", "timeout": 0}}},
            [("$.mcp_servers.docs.timeout", "plan.value")],
        ),
        (
            {"mcp_servers": {"docs": {"command": "x", "side_effects": {"t": "harmless"}}}},
            [("$.mcp_servers.docs.side_effects.t", "plan.schema")],
        ),
    ],
)
def test_mcp_server_mistakes_are_reported_where_they_are(change, expected):
    """Each malformed server is one issue at its place: neither or both transports, a
    header written in the plan, credentials in the URL or env, a bad URL, ranges, classes."""
    data = plan()
    data["agents"][0]["mcp_servers"] = ["docs"]
    data["approvals"] = {}
    data.update(change)
    assert expected == issues(data)


def test_an_agent_naming_an_undefined_server_gets_the_closest_name():
    """A misspelt server name is a plan.tool error with a did-you-mean."""
    data = plan(mcp_servers=["docs", "wbe"])
    data["approvals"] = {}
    (issue,) = check_plan(data, source=SOURCE).errors
    assert ("$.agents[0].mcp_servers[1]", "plan.tool") == (issue.location, issue.code)
    assert "did you mean 'web'?" == issue.suggestion


@pytest.mark.parametrize(
    ("tool", "location", "code"),
    [
        ({"type": "web_serch"}, "hosted_tools[2].type", "plan.tool"),
        ({"type": "computer_use_preview"}, "hosted_tools[2].type", "plan.tool"),
        ({"type": "file_search"}, "hosted_tools[2].vector_store_ids", "plan.tool"),
        ({"type": "web_search"}, "hosted_tools[2]", "plan.duplicate"),
        (
            {"type": "mcp", "server_label": "x", "server_url": "https://h", "headers": {"A": "b"}},
            'hosted_tools[2].headers["A"]',
            "plan.secret",
        ),
        ({"type": "mcp", "server_label": "x"}, "hosted_tools[2].server_url", "plan.tool"),
        (
            {"type": "mcp", "server_label": "x", "server_url": "https://h", "require_approval": 1},
            "hosted_tools[2].require_approval",
            "plan.value",
        ),
    ],
)
def test_hosted_tool_mistakes_are_reported(tool, location, code):
    """An unknown or client-run type, a missing required field, a duplicate, a header
    written in the plan and a bad approval rule are each reported at the tool."""
    data = plan()
    hosted = data["agents"][0]["hosted_tools"]
    data["agents"][0]["hosted_tools"] = [hosted[0], hosted[2], tool]
    assert [(f"$.agents[0].{location}", code)] == issues(data)


def test_approval_patterns_name_mcp_tools():
    """--approve patterns are checked against MCP allow-lists and remote labels: an
    allow-listed name or a name under an open prefix passes, anything else is reported."""
    built = check_plan(plan(), source=SOURCE).raise_for_errors()
    assert [] == check_approval_patterns(
        built, ["w:search", "docs_anything", "kb.lookup"], source="--approve"
    )
    data = plan()
    data["mcp_servers"]["docs"]["tools"] = ["fetch"]
    data["approvals"] = {}
    data["agents"][0]["hosted_tools"] = []
    built = check_plan(data, source=SOURCE).raise_for_errors()
    (issue,) = check_approval_patterns(built, ["docs_serch"], source="--approve")
    assert "plan.tool" == issue.code


def test_the_builder_writes_the_same_plan():
    """PlanBuilder.mcp_server and the agents' mcp_servers/hosted_tools give the plan data a
    file would hold."""
    data = plan()
    data["agents"][0]["hosted_tools"] = data["agents"][0]["hosted_tools"][:1]
    data["approvals"]["allow"] = ["docs_fetch", "w:search"]
    builder = PlanBuilder("team", goal="g", model="gpt-5")
    for name, server in data["mcp_servers"].items():
        builder.mcp_server(name, **server)
    built = (
        builder.approvals(allow=data["approvals"]["allow"])
        .planner("w", mcp_servers=["docs", "web"], hosted_tools=[{"type": "web_search"}])
        .build()
    )
    expected = check_plan(data, source=SOURCE).raise_for_errors()
    assert expected.mcp_servers == built.mcp_servers
    assert expected.agents[0].mcp_servers == built.agents[0].mcp_servers
    assert ({"type": "web_search"},) == built.agents[0].hosted_tools


def test_environment_references_expand_or_name_the_missing_variable():
    """${NAME} takes the variable's value; a missing one is a clear configuration error."""
    assert "Bearer t0k" == expand_environment("Bearer ${T}", {"T": "t0k"}, what="header")
    with pytest.raises(ConfigurationError, match=r"mcp server docs: header .*\$\{T\}.*T is not"):
        expand_environment("Bearer ${T}", {}, what="mcp server docs: header Authorization")
