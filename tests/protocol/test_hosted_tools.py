"""Hosted tool definitions and their output items travel verbatim (issue 16 item 3)."""

from __future__ import annotations

import json

import msgspec
import pytest

from orchestrator.core.protocol.codec import decode_client_event, decode_items, encode
from orchestrator.core.protocol.events import (
    FunctionTool,
    HostedTool,
    MessageItem,
    ResponseCreate,
    UnknownItem,
)
from orchestrator.core.protocol.turn import Response
from orchestrator.core.session import Session

HOSTED = [
    {
        "type": "web_search",
        "search_context_size": "low",
        "user_location": {"type": "approximate", "city": "Lisbon", "country": "PT"},
        "filters": {"allowed_domains": ["example.org"]},
    },
    {"type": "file_search", "vector_store_ids": ["vs_1", "vs_2"], "max_num_results": 4},
    {"type": "code_interpreter", "container": {"type": "auto", "file_ids": []}},
    {"type": "image_generation", "size": "1024x1024", "quality": "low"},
    {
        "type": "mcp",
        "server_label": "docs",
        "server_url": "https://mcp.example.org/mcp",
        "allowed_tools": ["search"],
        "require_approval": {"never": {"tool_names": ["search"]}},
        "a_field_of_2027": [1, {"x": None}],
    },
]

OUTPUT_ITEMS = [
    {
        "type": "web_search_call",
        "id": "ws_1",
        "status": "completed",
        "action": {"type": "search", "query": "lisbon weather"},
    },
    {
        "type": "file_search_call",
        "id": "fs_1",
        "status": "completed",
        "queries": ["refund policy"],
        "results": [{"file_id": "file-1", "filename": "a.txt", "score": 0.5, "text": "t"}],
    },
    {
        "type": "code_interpreter_call",
        "id": "ci_1",
        "status": "completed",
        "code": "print(1+1)",
        "container_id": "cntr_1",
        "outputs": [{"type": "logs", "logs": "2\n"}],
    },
    {
        "type": "image_generation_call",
        "id": "ig_1",
        "status": "completed",
        "result": "iVBORw0KGgo=",
    },
    {
        "type": "mcp_list_tools",
        "id": "mcpl_1",
        "server_label": "docs",
        "tools": [{"name": "search", "input_schema": {"type": "object"}}],
    },
    {
        "type": "mcp_approval_request",
        "id": "mcpr_1",
        "server_label": "docs",
        "name": "search",
        "arguments": "{}",
    },
    {
        "type": "mcp_call",
        "id": "mcp_1",
        "server_label": "docs",
        "name": "search",
        "arguments": "{}",
        "output": "found",
        "error": None,
    },
]


def test_hosted_tools_are_sent_with_every_field() -> None:
    """A create's hosted tools encode exactly as given, next to function tools."""
    tools = [FunctionTool("f", {"type": "object"}), *(HostedTool(dict(t)) for t in HOSTED)]
    sent = json.loads(encode(ResponseCreate(model="m", input=[], tools=tools)))
    assert [{"type": "function", "name": "f", "parameters": {"type": "object"}}, *HOSTED] == sent[
        "tools"
    ]


@pytest.mark.parametrize("short_form", [False, True])
def test_the_server_decodes_hosted_tools_with_every_field(short_form: bool) -> None:
    """The embedded server's decoder keeps each hosted tool whole (also on the slow path
    taken by short-form messages), and the function tools typed."""
    message: dict = {"role": "user", "content": "hi"}
    if not short_form:
        message["type"] = "message"
    frame = json.dumps(
        {
            "type": "response.create",
            "model": "m",
            "input": [message],
            "tools": [{"type": "function", "name": "f", "parameters": {}}, *HOSTED],
        }
    )
    event = decode_client_event(frame)
    assert isinstance(event, ResponseCreate)
    assert isinstance(event.tools, list)
    assert "f" == event.tools[0].name  # type: ignore[union-attr]
    assert HOSTED == [tool.data for tool in event.tools[1:]]  # type: ignore[union-attr]
    assert HOSTED == json.loads(encode(event))["tools"][1:]


def test_a_hosted_tool_with_fields_named_like_a_function_tools_decodes() -> None:
    """A hosted tool whose fields collide with the function tool's (a non-object
    ``parameters``) is still a hosted tool, not a malformed frame."""
    tool = {"type": "custom_2027", "parameters": "free text", "name": 3}
    event = decode_client_event(
        json.dumps({"type": "response.create", "input": "hi", "tools": [tool]})
    )
    assert isinstance(event, ResponseCreate)
    assert [HostedTool(tool)] == event.tools


def test_hosted_output_items_are_kept_verbatim() -> None:
    """A response's hosted-tool items decode as UnknownItem and encode back unchanged."""
    items = decode_items(json.dumps(OUTPUT_ITEMS))
    assert all(isinstance(item, UnknownItem) for item in items)
    assert OUTPUT_ITEMS == json.loads(encode(items))


def test_a_replay_carries_hosted_items_and_tools_unchanged() -> None:
    """After a turn with hosted output, a full replay (a new socket, store=false) sends the
    hosted items and the hosted tools exactly as the service gave them."""
    tools = tuple(HostedTool(dict(t)) for t in HOSTED)
    session = Session(model="m", tools=tools)
    first = session.request([MessageItem.user("go")], socket=1)
    output = (*decode_items(json.dumps(OUTPUT_ITEMS)), MessageItem(role="assistant", content="ok"))
    session.commit(
        first, Response(id="resp_1", status="completed", model="m", output=output), socket=1
    )
    replay = session.request([MessageItem.user("again")], socket=2)
    assert replay.replay
    sent = msgspec.json.decode(encode(replay.create))
    assert HOSTED == sent["tools"]
    assert OUTPUT_ITEMS == sent["input"][1:-2]
