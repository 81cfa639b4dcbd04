"""The test suite's own MCP server, built on the official SDK (``mcp.server.mcpserver``).

``python tests/mcp/server.py`` serves stdio; ``python tests/mcp/server.py --http`` serves
streamable HTTP on 127.0.0.1 (a free port, printed on stdout as ``PORT <n>`` once listening).

Its tools cover what the runtime must handle: read-only, idempotent, destructive and
unannotated tools, a tool that fails (an ``isError`` result), one that kills the server's
process (to test restarts), one that reports an environment variable, and a slow one.
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

READ_ONLY = ToolAnnotations(readOnlyHint=True)
server = MCPServer("orchestrator-test", log_level="WARNING")


@server.tool(annotations=READ_ONLY)
def lookup_order(order_id: str) -> dict[str, object]:
    """Look up an order by its id."""
    return {"order_id": order_id, "status": "shipped", "total": 42.5}


@server.tool(annotations=READ_ONLY)
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(
    annotations=ToolAnnotations(
        readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=False
    )
)
def tag_order(order_id: str, tag: str) -> str:
    """Tag an order (setting the same tag twice changes nothing)."""
    return f"order {order_id} tagged {tag}"


@server.tool()
def refund(order_id: str, amount: float) -> str:
    """Refund an order (no annotations: destructive by default)."""
    return f"refunded {amount} on {order_id}"


@server.tool(annotations=READ_ONLY)
def fail(message: str) -> str:
    """Always fails with the message."""
    raise ValueError(message)


@server.tool(annotations=READ_ONLY)
def crash() -> str:
    """Kill the server's process at once."""
    os._exit(3)


@server.tool(annotations=READ_ONLY)
def env_value(name: str) -> str:
    """The value of an environment variable of the server, or '<unset>'."""
    return os.environ.get(name, "<unset>")


@server.tool(annotations=READ_ONLY)
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool(annotations=READ_ONLY)
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return "done"


async def _serve_http() -> None:
    import uvicorn

    app = server.streamable_http_app()
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    http = uvicorn.Server(config)
    task = asyncio.create_task(http.serve())
    while not http.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    port = http.servers[0].sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    await task


if __name__ == "__main__":
    if "--http" in sys.argv:
        asyncio.run(_serve_http())
    else:
        server.run()
