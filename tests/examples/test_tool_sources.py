"""The support example (an MCP-backed worker) and the research example (hosted tools) run
offline from the command line, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parents[2] / "orchestrator" / "examples"


def run_cli(plan: Path, tmp_path: Path) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(plan), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "ORCHESTRATOR_STORE": str(tmp_path / "jobs.db")},
        cwd=tmp_path,
    )
    assert 0 == completed.returncode, completed.stderr
    return json.loads(completed.stdout)


def test_the_support_example_answers_from_its_mcp_server(tmp_path):
    """The desk's tools come from the example's own MCP server, started by the run as
    `python -m orchestrator.examples.support.server`: the answer carries what they returned
    (delivered order, open return window); the refund tool is never offered."""
    result = run_cli(EXAMPLES / "support" / "plan.toml", tmp_path)
    assert "completed" == result["status"]
    assert "delivered" in result["answer"]
    assert "2026-06-01" in result["answer"]
    desk = next(agent for agent in result["agents"] if agent["name"] == "desk")
    called = {item["name"] for item in desk["transcript"] if item["type"] == "function_call"}
    assert {"order_status", "return_window"} == called
    assert [] == servers_running()


def servers_running() -> list[int]:
    """Processes of the example's MCP server still alive (the run must leave none)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_bytes().rpartition(b")")[2].split()[0]
        except OSError:
            continue
        if b"orchestrator.examples.support.server" in command and state not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


def test_the_research_example_runs_its_hosted_tools_offline(tmp_path):
    """The analyst's code interpreter computes 3 * (120 + 4) and its web search is marked as
    a simulation; the archivist's file search ran against its vector store id."""
    result = run_cli(EXAMPLES / "research" / "plan.toml", tmp_path)
    assert "completed" == result["status"]
    assert "372" in result["answer"]
    assert "offline simulation" in result["answer"]
    archivist = next(agent for agent in result["agents"] if agent["name"] == "archivist")
    (search,) = [i for i in archivist["transcript"] if i["type"] == "file_search_call"]
    assert "vs_travel_policy.offline.txt" == search["results"][0]["filename"]
