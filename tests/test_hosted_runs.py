"""Runs that give agents the service's hosted tools: offline on the embedded server, their
items journaled verbatim, a remote MCP server's approval requests decided by the plan."""

from __future__ import annotations

import os
from typing import Any

import msgspec
import pytest
import trio

from orchestrator import EmbeddedServer, run
from orchestrator.core.observe import ToolApproval
from orchestrator.core.protocol.codec import encode
from orchestrator.errors import ConfigurationError
from orchestrator.jobs.api import transcript_of
from orchestrator.jobs.store import open_store
from plans import PlanBuilder

GOAL = "What is 12 * 12 for the Lisbon office?"
DOCS = {
    "type": "mcp",
    "server_label": "docs",
    "server_url": "https://mcp.example.org/mcp",
    "allowed_tools": ["search"],
}


def plan(*hosted: dict[str, Any], allow: tuple[str, ...] = ()) -> Any:
    return (
        PlanBuilder("hosted", goal=GOAL, model="gpt-5-mini")
        .approvals(allow=allow)
        .worker("researcher", hosted_tools=hosted)
        .step("ask", agent="researcher", task="{{goal}}")
        .build()
    )


def kinds(items: list[Any]) -> list[str]:
    return [item["type"] if isinstance(item, dict) else item.type for item in items]


async def test_hosted_tools_run_offline_and_are_journaled_verbatim(tmp_path):
    """A plan with web_search, code_interpreter and file_search completes offline; the
    answer carries the simulated results, and the journal holds the hosted items exactly as
    the transcript does (what a resumed job replays)."""
    hosted = (
        {"type": "web_search"},
        {"type": "code_interpreter"},
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
    )
    store = tmp_path / "jobs.db"
    with trio.fail_after(30):
        result = await run(plan(*hosted), store=store, embedded=EmbeddedServer(transport="memory"))
    assert "completed" == result.status, result.reason
    assert "144" in (result.answer or "")
    assert "offline simulation" in (result.answer or "")
    transcript = msgspec.json.decode(encode(result.agent("researcher").transcript))
    assert [
        "message",
        "web_search_call",
        "code_interpreter_call",
        "file_search_call",
        "message",
    ] == kinds(transcript)
    async with open_store(store) as opened:
        journal = await opened.load(result.job or "")
    assert transcript == transcript_of(journal, "researcher")


async def test_a_remote_mcp_call_is_approved_by_the_plan():
    """The service's mcp_approval_request is decided like an external tool named
    LABEL.TOOL: allowed by [approvals], the agent answers approve=true and the call is made
    in the next response; the decision is published as a ToolApproval event."""
    events: list[Any] = []
    with trio.fail_after(30):
        result = await run(
            plan(DOCS, allow=("researcher:docs.search",)),
            store=None,
            events=events.append,
            embedded=EmbeddedServer(transport="memory"),
        )
    assert "completed" == result.status, result.reason
    transcript = msgspec.json.decode(encode(result.agent("researcher").transcript))
    assert [
        "message",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "message",
    ] == kinds(transcript)
    assert transcript[3]["approve"] is True
    assert transcript[2]["id"] == transcript[4]["approval_request_id"]
    (approval,) = [e for e in events if isinstance(e, ToolApproval)]
    assert ("docs.search", True, "policy") == (approval.tool, approval.approved, approval.by)


async def test_a_remote_mcp_call_without_approval_is_refused():
    """With no pattern allowing it (and nobody to ask) the agent refuses: approve=false with
    the reason, no call is made, and the answer says so."""
    with trio.fail_after(30):
        result = await run(plan(DOCS), store=None, embedded=EmbeddedServer(transport="memory"))
    assert "completed" == result.status, result.reason
    transcript = msgspec.json.decode(encode(result.agent("researcher").transcript))
    response = next(i for i in transcript if i["type"] == "mcp_approval_response")
    assert response["approve"] is False
    assert "not approved" in response["reason"]
    assert "mcp_call" not in kinds(transcript)
    assert "not approved" in (result.answer or "")


async def test_hosted_header_values_come_from_the_environment(monkeypatch, tmp_path):
    """A remote MCP server's header is written as ${NAME} and sent with the variable's
    value (never journaled: the job's fingerprint holds the plan's text); a run whose
    variable is missing is refused before anything starts, naming it."""
    docs = {**DOCS, "headers": {"Authorization": "Bearer ${DOCS_TOKEN}"}}
    monkeypatch.delenv("DOCS_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="DOCS_TOKEN is not set"):
        await run(plan(docs), store=None, embedded=EmbeddedServer(transport="memory"))
    token = "Zq" + os.urandom(12).hex()  # registered with the redactor: unlike any text
    monkeypatch.setenv("DOCS_TOKEN", token)
    with trio.fail_after(30):
        result = await run(
            plan(docs, allow=("researcher:docs.search",)),
            store=tmp_path / "jobs.db",
            embedded=EmbeddedServer(transport="memory"),
        )
    assert "completed" == result.status, result.reason
    assert token not in (tmp_path / "jobs.db").read_bytes().decode("latin-1")
