"""What an MCP tool call costs over a local Python tool, on loopback (issue 16).

The same small tool (``add(a, b)``) called through the runtime's tool executor, as an
agent's turn calls it (argument checks, deadline, output rendering, events), three ways:

* ``local``: a Python function in the run's process;
* ``stdio``: the test suite's MCP server (``tests/mcp/server.py``) as a child process;
* ``http``: the same server over streamable HTTP on 127.0.0.1.

Each variant first runs ``--warmup`` calls, then ``--calls`` timed ones, one at a time, and
the figures are per call (median and 95th percentile, wall time). The MCP server is started
once per variant, outside the timed window (its start, about a second, is paid once per run).

    python -m bench.mcp [--calls 500] [--warmup 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from actors.mcp import McpServerConnection, McpServers
from actors.tools import ToolRegistry
from orchestrator.core.protocol.events import FunctionCallItem
from plans import McpServer

SERVER = str(Path(__file__).resolve().parents[1] / "tests" / "mcp" / "server.py")


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def _timed(registry: ToolRegistry, calls: int, warmup: int) -> list[float]:
    executor = registry.executor("bench")
    times: list[float] = []
    for index in range(warmup + calls):
        call = FunctionCallItem(call_id=f"c{index}", name="add", arguments='{"a": 2, "b": 40}')
        started = time.perf_counter()
        output = await executor.execute(call)
        elapsed = time.perf_counter() - started
        assert output.output == "42", output.output
        if index >= warmup:
            times.append(elapsed)
    return times


async def _mcp(config: McpServer, calls: int, warmup: int) -> list[float]:
    connection = McpServerConnection("bench", config)
    async with trio.open_nursery() as nursery:
        await nursery.start(connection.run)
        registry = ToolRegistry()
        for spec in McpServers({"bench": connection}).specs(["bench"], default_timeout=30):
            if spec.name == "add":
                registry.add(spec)
        times = await _timed(registry, calls, warmup)
        nursery.cancel_scope.cancel()
    return times


async def _http(calls: int, warmup: int) -> list[float]:
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
        line = b""
        while not line.endswith(b"\n"):
            line += await process.stdout.receive_some(1)
        url = f"http://127.0.0.1:{int(line.split()[1])}/mcp"
        times = await _mcp(McpServer(url=url), calls, warmup)
        process.terminate()
        nursery.cancel_scope.cancel()
    return times


async def main(calls: int, warmup: int) -> dict[str, Any]:
    local = ToolRegistry()
    local.add(add)
    figures = {
        "local": await _timed(local, calls, warmup),
        "stdio": await _mcp(McpServer(command=sys.executable, args=(SERVER,)), calls, warmup),
        "http": await _http(calls, warmup),
    }
    return {
        name: {
            "median_ms": statistics.median(times) * 1000,
            "p95_ms": statistics.quantiles(times, n=20)[18] * 1000,
        }
        for name, times in figures.items()
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    results = trio.run(main, args.calls, args.warmup)
    print(f"python {sys.version.split()[0]}, {args.calls} calls per variant")
    local = results["local"]["median_ms"]
    for name, figure in results.items():
        print(
            f"{name:>6}: median {figure['median_ms']:.3f} ms, p95 {figure['p95_ms']:.3f} ms, "
            f"overhead over local {figure['median_ms'] - local:+.3f} ms"
        )


if __name__ == "__main__":
    cli()
