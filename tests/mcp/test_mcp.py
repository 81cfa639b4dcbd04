"""MCP servers as tool sources: the test suite's own server (tests/mcp/server.py), over
stdio and streamable HTTP, through actors.mcp and through whole runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
import trio

from actors.mcp import McpServerConnection, McpServerFailed, McpServers, McpToolFailed
from orchestrator import EmbeddedServer, run
from orchestrator.core.observe import ToolApproval, ToolFinished
from orchestrator.core.processes import _stat
from orchestrator.core.protocol.codec import encode
from orchestrator.core.protocol.events import FunctionCallItem
from orchestrator.errors import ConfigurationError
from orchestrator.jobs.store import open_store
from plans import McpServer, PlanBuilder

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SERVER = str(Path(__file__).with_name("server.py"))
STDIO = McpServer(command=sys.executable, args=(SERVER,))
# Starting the server means starting Python and importing the SDK: about a second, more on
# a loaded machine.
START = 60


def failure(kind: type[BaseException], match: str) -> Any:
    """The failure a nursery raises: ``kind`` (matching) in an exception group."""
    return pytest.RaisesGroup(pytest.RaisesExc(kind, match=match), flatten_subgroups=True)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited and been reaped (or is at least a zombie no one runs)."""
    stat = _stat(pid)
    return stat is None or stat[0] in ("Z", "X")


@asynccontextmanager
async def serving(connection: McpServerConnection) -> AsyncIterator[McpServerConnection]:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(START):
            await nursery.start(connection.run)
        yield connection
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def http_server() -> AsyncIterator[str]:
    """The test server over streamable HTTP on a free loopback port; its URL."""
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, SERVER, "--http"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        )
        assert process.stdout is not None
        line = b""
        with trio.fail_after(START):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the HTTP test server exited before listening"
                line += chunk
        port = int(line.split()[1])
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await process.wait()
            nursery.cancel_scope.cancel()


async def test_stdio_tools_are_listed_called_and_the_process_stopped():
    """The server starts, lists its tools with their annotations mapped to side-effect
    classes, answers calls (an isError result as McpToolFailed), receives its env with
    ${NAME} expanded, and its process is gone when the owner's scope ends."""
    config = McpServer(
        command=sys.executable,
        args=(SERVER,),
        env={"TEST_VALUE": "${MCP_TEST_VALUE}"},
        side_effects={"tag_order": "destructive"},
    )
    connection = McpServerConnection("shop", config, environ={"MCP_TEST_VALUE": "v-42"})
    async with serving(connection):
        specs = {
            spec.name: spec
            for spec in McpServers({"shop": connection}).specs(["shop"], default_timeout=30)
        }
        assert {
            "lookup_order": "read_only",
            "tag_order": "destructive",  # raised by the plan over idempotent_write
            "refund": "destructive",  # no annotations
        }.items() <= {name: spec.side_effect for name, spec in specs.items()}.items()
        assert "order_id" in specs["lookup_order"].parameters["properties"]
        result = await connection.call("lookup_order", {"order_id": "A-17"})
        assert '"shipped"' in result.content[0].text
        assert (
            "v-42" == (await connection.call("env_value", {"name": "TEST_VALUE"})).content[0].text
        )
        assert (await connection.call("fail", {"message": "no stock"})).is_error
        pid = int((await connection.call("pid", {})).content[0].text)
        assert not gone(pid)
    assert gone(pid)


async def test_a_crashed_server_is_restarted_and_its_tools_keep_working():
    """A server whose process dies (here during a call: the call fails) is started again
    after a backoff; the next call reaches the new process."""
    connection = McpServerConnection("shop", STDIO)
    async with serving(connection):
        first = int((await connection.call("pid", {})).content[0].text)
        with pytest.raises(McpToolFailed):
            await connection.call("crash", {})
        with trio.fail_after(START):
            second = int((await connection.call("pid", {})).content[0].text)
        assert first != second
        assert 1 == connection.restarts
        assert gone(first)


async def test_a_server_that_keeps_dying_ends_with_a_clear_error():
    """Past the restart intensity the server's task raises McpServerFailed, naming the
    server; a command that cannot start fails at once with its error."""
    connection = McpServerConnection("shop", STDIO, restart_intensity=0)
    with failure(McpServerFailed, "'shop' failed 1 times"):
        async with serving(connection):
            with pytest.raises(McpToolFailed):
                await connection.call("crash", {})
            await trio.sleep_forever()
    broken = McpServerConnection("broken", McpServer(command="/nonexistent/mcp-server"))
    with failure(McpServerFailed, "'broken' did not start"):
        async with serving(broken):
            pass  # pragma: no cover


async def test_a_plan_may_not_lower_a_tools_class():
    """side_effects below what the annotations give (refund is destructive) is refused."""
    config = McpServer(command=sys.executable, args=(SERVER,), side_effects={"refund": "read_only"})
    connection = McpServerConnection("shop", config)
    async with serving(connection):
        with pytest.raises(ConfigurationError, match="may only raise it"):
            McpServers({"shop": connection}).specs(["shop"], default_timeout=30)


async def test_streamable_http_with_headers_from_the_environment():
    """Over HTTP the tools list and answer the same; the header value comes from the
    environment (and a missing variable names itself)."""
    async with http_server() as url:
        config = McpServer(url=url, headers={"Authorization": "Bearer ${MCP_TEST_TOKEN}"})
        connection = McpServerConnection(
            "web", config, environ={"MCP_TEST_TOKEN": "Zq" + os.urandom(12).hex()}
        )
        async with serving(connection):
            assert "lookup_order" in {tool.name for tool in connection.tools}
            result = await connection.call("add", {"a": 2, "b": 40})
            assert "42" == result.content[0].text
        missing = McpServerConnection("web", config, environ={})
        with failure(McpServerFailed, "MCP_TEST_TOKEN is not set"):
            async with serving(missing):
                pass  # pragma: no cover


def mcp_plan(server: McpServer, *, tools: tuple[str, ...], allow: tuple[str, ...] = ()) -> Any:
    return (
        PlanBuilder("mcp", goal="Look up order A-17 and add 2 and 3", model="gpt-5-mini")
        .mcp_server(
            "shop",
            **{
                **msgspec.structs.asdict(server),
                "tools": list(tools),
            },
        )
        .approvals(allow=allow)
        .worker("clerk", mcp_servers=["shop"])
        .step("ask", agent="clerk", task="{{goal}}")
        .build()
    )


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_a_run_calls_mcp_tools_like_its_own(transport):
    """A worker with an MCP server gets its allow-listed tools offered, the model calls
    them, their results come back into the answer; a destructive tool runs only when the
    plan's [approvals] allow it; nothing of the server outlives the run."""
    events: list[Any] = []

    async def go(server: McpServer) -> Any:
        plan = mcp_plan(server, tools=("lookup_order", "add", "refund", "pid"), allow=())
        with trio.fail_after(2 * START):
            return await run(
                plan, store=None, events=events.append, embedded=EmbeddedServer(transport="memory")
            )

    if transport == "stdio":
        result = await go(STDIO)
    else:
        async with http_server() as url:
            result = await go(McpServer(url=url))
    assert "completed" == result.status, result.reason
    assert "shipped" in (result.answer or "")
    finished = {e.tool: e for e in events if isinstance(e, ToolFinished)}
    assert {"lookup_order", "add", "refund", "pid"} == set(finished)
    assert finished["lookup_order"].ok
    assert not finished["refund"].ok
    assert "approval_denied" == finished["refund"].error
    (approval,) = [e for e in events if isinstance(e, ToolApproval)]
    assert ("refund", False) == (approval.tool, approval.approved)
    wire = msgspec.json.decode(encode(result.agent("clerk").transcript))
    (pid_call,) = [i["call_id"] for i in wire if i.get("name") == "pid"]
    (pid,) = [int(i["output"]) for i in wire if i.get("call_id") == pid_call and "output" in i]
    assert gone(pid) or transport == "http"  # an HTTP server is not ours to stop


async def test_a_run_with_an_approved_destructive_mcp_tool():
    """Allowed in [approvals], the destructive tool runs."""
    events: list[Any] = []
    plan = mcp_plan(STDIO, tools=("refund",), allow=("clerk:refund",))
    with trio.fail_after(2 * START):
        result = await run(
            plan, store=None, events=events.append, embedded=EmbeddedServer(transport="memory")
        )
    assert "completed" == result.status, result.reason
    (finished,) = [e for e in events if isinstance(e, ToolFinished)]
    assert finished.ok
    assert "refunded" in (result.answer or "")


async def test_a_name_clash_between_servers_needs_a_prefix():
    """Two servers offering the same tool name to one agent is refused, naming the fix;
    with a prefix, both are offered."""

    def build(prefix: str) -> Any:
        return (
            PlanBuilder("clash", goal="Add 1 and 2", model="gpt-5-mini")
            .mcp_server("a", command=sys.executable, args=[SERVER], tools=["add"])
            .mcp_server("b", command=sys.executable, args=[SERVER], tools=["add"], prefix=prefix)
            .worker("w", mcp_servers=["a", "b"])
            .step("s", agent="w", task="{{goal}}")
            .build()
        )

    with trio.fail_after(2 * START):
        clash = await run(build(""), store=None, embedded=EmbeddedServer(transport="memory"))
        assert "failed" == clash.status
        assert "give the server a prefix" in (clash.reason or "")
        fine = await run(build("b_"), store=None, embedded=EmbeddedServer(transport="memory"))
    assert "completed" == fine.status, fine.reason
    names = {i.name for i in fine.agent("w").transcript if isinstance(i, FunctionCallItem)}
    assert {"add", "b_add"} == names


async def test_a_jobs_journal_records_mcp_calls_with_their_classes(tmp_path):
    """In a durable job, MCP calls are journaled like any other, each with the class its
    annotations give (what decides whether a call found in doubt may run again)."""
    plan = mcp_plan(STDIO, tools=("lookup_order", "tag_order"))
    with trio.fail_after(2 * START):
        result = await run(
            plan, store=tmp_path / "jobs.db", embedded=EmbeddedServer(transport="memory")
        )
    assert "completed" == result.status, result.reason
    async with open_store(tmp_path / "jobs.db") as store:
        journal = await store.load(result.job or "")
    classes = {call.name: (call.side_effect, call.status) for call in journal.calls}
    assert {
        "lookup_order": ("read_only", "done"),
        "tag_order": ("idempotent_write", "done"),
    } == classes
