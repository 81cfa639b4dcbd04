"""Hosted tools on the embedded server: simulated, clearly marked, or refused as unsupported."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

import pytest
import trio

from orchestrator.core.server import LocalServer, ServerConfig

from .wire import LOOKUP_TOOL, assert_error, calls_of, memory_client, output_for, user

MODEL = "local-generic"
WEB = {"type": "web_search", "search_context_size": "low"}
FILES = {"type": "file_search", "vector_store_ids": ["vs_docs"]}
CODE = {"type": "code_interpreter", "container": {"type": "auto"}}
IMAGE = {"type": "image_generation", "size": "1024x1024"}
DOCS = {
    "type": "mcp",
    "server_label": "docs",
    "server_url": "https://mcp.example.org/mcp",
    "allowed_tools": ["lookup_docs"],
}


def _output(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert "response.completed" == events[-1]["type"]
    return events[-1]["response"]["output"]


def _server() -> LocalServer:
    return LocalServer.from_config(ServerConfig(seed=3))


async def test_every_simulated_tool_answers_inside_one_response(autojump_clock):
    """web_search, file_search, code_interpreter, image_generation and a remote MCP server
    that needs no approval each produce their item in the response, streamed as
    output_item.added/done, followed by an answer that says the results are simulated; the
    tool definitions are echoed verbatim."""
    tools = [WEB, FILES, CODE, IMAGE, {**DOCS, "require_approval": "never"}]
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            events = await client.turn(
                model=MODEL, input="What is (17 + 4) * 3 in Lisbon?", tools=tools
            )
    output = _output(events)
    kinds = [item["type"] for item in output]
    assert [
        "web_search_call",
        "file_search_call",
        "code_interpreter_call",
        "image_generation_call",
        "mcp_list_tools",
        "mcp_call",
        "message",
    ] == kinds
    assert tools == events[-1]["response"]["tools"]
    added = [e["item"]["type"] for e in events if e["type"] == "response.output_item.added"]
    assert kinds == added
    web, files, code, image, listing, call, message = output
    assert "example.org" in web["action"]["sources"][0]["url"]
    assert "offline simulation" in files["results"][0]["text"]
    assert "vs_docs.offline.txt" == files["results"][0]["filename"]
    assert "print((17 + 4) * 3)" == code["code"]
    assert "63\n" == code["outputs"][0]["logs"]
    png = base64.b64decode(image["result"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert (16, 16) == struct.unpack(">II", png[16:24])
    assert zlib.decompress(png[41 : 41 + struct.unpack(">I", png[33:37])[0]])
    assert ["lookup_docs"] == [tool["name"] for tool in listing["tools"]]
    assert "lookup_docs" == call["name"]
    assert "offline simulation" in call["output"]
    assert "mcp.example.org" in call["output"]
    text = message["content"][0]["text"]
    assert "63" in text
    assert "offline simulation" in text


async def test_hosted_tools_then_function_tools_then_the_answer(autojump_clock):
    """With both kinds offered, the hosted tool runs first and the function call ends the
    response; after its output the answer uses both, and the hosted tool is not run again."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            first = await client.turn(
                model=MODEL, input="Weather in Lisbon?", tools=[WEB, LOOKUP_TOOL]
            )
            assert ["web_search_call", "function_call"] == [i["type"] for i in _output(first)]
            second = await client.turn(
                model=MODEL,
                input=[output_for(call, '{"high_c": 24}') for call in calls_of(first)],
                previous_response_id=first[-1]["response"]["id"],
                tools=[WEB, LOOKUP_TOOL],
            )
    assert ["message"] == [item["type"] for item in _output(second)]
    assert "24" in _output(second)[0]["content"][0]["text"]


@pytest.mark.parametrize("approve", [True, False])
async def test_a_remote_mcp_call_waits_for_the_clients_approval(autojump_clock, approve):
    """By default (require_approval "always") the response ends with an
    mcp_approval_request; the next response makes the call when the client approved it
    (its mcp_call names the request) and answers without it when the client refused."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            first = await client.turn(model=MODEL, input="Find the refund policy", tools=[DOCS])
            listing, request = _output(first)
            assert "mcp_list_tools" == listing["type"]
            assert "mcp_approval_request" == request["type"]
            assert {"query": "Find the refund policy"} == json.loads(request["arguments"])
            answer = {
                "type": "mcp_approval_response",
                "approval_request_id": request["id"],
                "approve": approve,
            }
            second = await client.turn(
                model=MODEL,
                input=[answer],
                previous_response_id=first[-1]["response"]["id"],
                tools=[DOCS],
            )
    output = _output(second)
    if approve:
        assert ["mcp_call", "message"] == [item["type"] for item in output]
        assert request["id"] == output[0]["approval_request_id"]
        assert request["arguments"] == output[0]["arguments"]
    else:
        assert ["message"] == [item["type"] for item in output]
        assert "not approved" in output[0]["content"][0]["text"]


async def test_a_replay_does_not_list_an_mcp_servers_tools_again(autojump_clock):
    """A full replay that carries the mcp_list_tools item (a new socket) lists nothing again."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            first = await client.turn(
                model=MODEL, input="Find it", tools=[{**DOCS, "require_approval": "never"}]
            )
            replay = [user("Find it"), *_output(first), user("And again")]
            second = await client.turn(
                model=MODEL, input=replay, tools=[{**DOCS, "require_approval": "never"}]
            )
    assert ["mcp_call", "message"] == [item["type"] for item in _output(second)]


@pytest.mark.parametrize(
    ("tool", "code", "param"),
    [
        ({"type": "computer_use_preview", "display_width": 1024}, "unsupported_tool", "type"),
        ({"type": "local_shell"}, "unsupported_tool", "type"),
        ({"type": "file_search"}, "missing_required_parameter", "vector_store_ids"),
        ({"type": "mcp", "server_label": "x"}, "missing_required_parameter", "server_url"),
    ],
)
async def test_tools_that_cannot_be_answered_are_refused_before_the_response(
    autojump_clock, tool, code, param
):
    """A tool whose calls the client must run (computer, shell) is an unsupported_tool error,
    and a hosted tool missing a required field the service's missing_required_parameter."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            events = await client.turn(model=MODEL, input="hi", tools=[WEB, tool])
    assert 1 == len(events)
    assert_error(events[0], 400, code, f"tools[1].{param}")
