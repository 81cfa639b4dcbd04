"""MCP servers as tool sources, through the official ``mcp`` SDK (on anyio, so on trio).

A plan's ``[mcp_servers]`` become :class:`McpServerConnection` objects, owned by the run's
nursery through :class:`McpServers`: every server a plan's agents use is started (stdio: its
process; HTTP: a session) and its tools listed *before* the agents start; each tool becomes a
:class:`McpToolSpec` in the run's tool registry, so that the allow-lists, the schemas offered
to the model, argument checks, deadlines, output caps, approvals and the journal's in-doubt
rules apply to it exactly as to a Python tool.

**Side effects.** A tool's annotations give its class, the plan's ``side_effects`` may raise
it, never lower it (:func:`side_effect_of`)::

    readOnlyHint true                         read_only
    destructiveHint true (the default)        destructive   (approval needed)
    idempotentHint true                       idempotent_write
    openWorldHint true (the default)          external      (approval needed)
    otherwise                                 non_idempotent

**Supervision.** A server that dies (its process exits, its session breaks) is started again
after a backoff, and its tools keep working; a call in flight when it died fails with
``tool_failed`` for the model to retry. More than ``RESTART_INTENSITY`` restarts within
``RESTART_PERIOD`` seconds ends the run with :class:`McpServerFailed`. When the run ends, the
nursery is cancelled and each server is stopped: the SDK closes a stdio server's stdin,
waits, then terminates its process group (SIGTERM, then SIGKILL): no process outlives the run.

**Secrets.** ``${NAME}`` values are read from the environment when the server starts; header
values are registered with the redactor, so they never reach a log, an error or a file.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import math
import os
import subprocess
import sys
import tempfile
import typing
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import attrs
import msgspec
import trio
from loguru import logger

from actors.tools import (
    MAX_ARGUMENTS,
    ArgumentsRejected,
    SideEffect,
    ToolContext,
    ToolSpec,
    _Signature,
)
from orchestrator.core.redaction import redact, register_secret
from orchestrator.errors import (
    ConfigurationError,
    McpServerFailed,
    McpToolFailed,
    ToolTimedOut,
)
from plans import McpServer, expand_environment

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from mcp import Client
    from mcp.types import CallToolResult, Tool as McpTool

__all__ = [
    "RESTART_INTENSITY",
    "RESTART_PERIOD",
    "McpServerConnection",
    "McpServerFailed",
    "McpServers",
    "McpToolFailed",
    "McpToolSpec",
    "server_print",
    "side_effect_of",
]

RESTART_INTENSITY: Final = 3
RESTART_PERIOD: Final = 60.0
# Waits between restarts: first, then doubled up to the last.
BACKOFF: Final = (0.25, 4.0)
STARTUP_TIMEOUT: Final = 30.0
# A stdio server's command that means the interpreter running the orchestrator.
PYTHON_NAMES: Final = frozenset({"python", "python3"})
_STDERR_TAIL: Final = 1000
_RANK: Final[Mapping[str, int]] = {
    "read_only": 0,
    "idempotent_write": 1,
    "non_idempotent": 2,
    "external": 3,
    "destructive": 3,
}


def side_effect_of(tool: McpTool) -> SideEffect:
    """The side-effect class an MCP tool's annotations give (see the module docstring)."""
    hints = tool.annotations
    if hints is not None and hints.read_only_hint:
        return "read_only"
    if hints is None or hints.destructive_hint is not False:
        return "destructive"
    if hints.idempotent_hint:
        return "idempotent_write"
    if hints.open_world_hint is not False:
        return "external"
    return "non_idempotent"


def server_print(config: McpServer) -> str:
    """What a resumed job must find unchanged about a server: its configuration as written
    (``${NAME}`` unexpanded, so no secret is hashed)."""
    encoded = msgspec.json.encode(msgspec.to_builtins(config), order="sorted")
    return "mcp:" + hashlib.sha256(encoded).hexdigest()[:16]


# -- the connection ----------------------------------------------------------------------------


class _WatchedStream:
    """A transport's read stream that sets ``lost`` when it ends: a stdio server's process
    exited (or its session broke) even though no call was in flight."""

    def __init__(self, stream: Any, lost: trio.Event) -> None:
        self._stream = stream
        self._lost = lost

    async def receive(self) -> Any:
        try:
            return await self._stream.receive()
        except Exception:
            self._lost.set()
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()

    def __aiter__(self) -> _WatchedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._stream.__anext__()
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):
                self._lost.set()
            raise

    async def __aenter__(self) -> _WatchedStream:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        result: bool | None = await self._stream.__aexit__(*exc_info)
        return result


@attrs.define(eq=False)
class McpServerConnection:
    """One MCP server, kept running for the run (see the module docstring).

    Args:
        name: the server's name in the plan.
        config: what the plan says about it.
        environ: where ``${NAME}`` values come from.
    """

    name: str
    config: McpServer
    environ: Mapping[str, str] = attrs.field(factory=lambda: dict(os.environ), repr=False)
    restart_intensity: int = RESTART_INTENSITY
    restart_period: float = RESTART_PERIOD
    startup_timeout: float = STARTUP_TIMEOUT
    #: The tools the server listed when it first started (``mcp.types.Tool``; the SDK is
    #: imported only by runs that use MCP: it takes a second).
    tools: tuple[Any, ...] = attrs.field(default=(), init=False)
    restarts: int = attrs.field(default=0, init=False)
    calls: int = attrs.field(default=0, init=False)
    _client: Any = attrs.field(default=None, init=False, repr=False)  # mcp.Client
    _connected: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _lost: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _stderr: Any = attrs.field(default=None, init=False, repr=False)

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the server, list its tools, report started; keep it running, restarting
        it when it dies, until cancelled.

        Raises:
            McpServerFailed: it did not start, or failed more than the restart intensity.
        """
        log = logger.bind(mcp=self.name)
        failures: collections.deque[float] = collections.deque()
        wait = BACKOFF[0]
        started = False
        with contextlib.ExitStack() as files:
            if self.config.command is not None:
                self._stderr = files.enter_context(tempfile.TemporaryFile("w+"))
            while True:
                came_up, why = await self._incarnation(log, task_status, first=not started)
                if came_up:
                    started, wait = True, BACKOFF[0]
                if not started:
                    raise McpServerFailed(
                        self.name, f"MCP server {self.name!r} did not start: {why}"
                    )
                self._count_failure(failures, why)
                log.warning("MCP server {} failed ({}); restarting in {:g} s", self.name, why, wait)
                await trio.sleep(wait)
                wait = min(wait * 2, BACKOFF[1])
                self.restarts += 1

    async def _incarnation(
        self, log: Any, task_status: trio.TaskStatus[None], *, first: bool
    ) -> tuple[bool, str]:
        """Start the server and list its tools (the first time: they are the tools; and
        report started), then serve until it is lost.

        Returns:
            Whether it came up, and why it ended (with the tail of its stderr).
        """
        self._lost = trio.Event()
        came_up = False
        why = ""
        # The deadline covers the start (handshake and listing) only.
        with trio.CancelScope(deadline=trio.current_time() + self.startup_timeout) as scope:
            try:
                async with self._open() as client:
                    listed = await self._list(client)
                    scope.deadline = math.inf
                    if first:
                        self.tools = listed
                    self._client = client
                    self._connected.set()
                    log.info("MCP server {} up ({} tools)", self.name, len(listed))
                    came_up = True
                    if first:
                        task_status.started()
                    try:
                        await self._lost.wait()
                    finally:
                        self._drop(client)
                why = self._exit_reason()
            except Exception as exc:
                why = _describe(exc)
        if scope.cancelled_caught:
            why = f"did not answer within {self.startup_timeout:g} s"
        return came_up, why + self._stderr_tail()

    def _count_failure(self, failures: collections.deque[float], why: str) -> None:
        """Count a failure in the restart window.

        Raises:
            McpServerFailed: more than ``restart_intensity`` failures within the window.
        """
        now = trio.current_time()
        failures.append(now)
        while failures and failures[0] < now - self.restart_period:
            failures.popleft()
        if len(failures) > self.restart_intensity:
            raise McpServerFailed(
                self.name,
                f"MCP server {self.name!r} failed {len(failures)} times within "
                f"{self.restart_period:g} s (restart limit {self.restart_intensity}); "
                f"last: {why}",
            )

    async def call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        """Call ``tool`` (its name on the server), waiting for the server to be up.

        Raises:
            McpToolFailed: the call failed on the way (the server died during it...).
        """
        from mcp import MCPError
        from mcp_types import CONNECTION_CLOSED

        while self._client is None or self._lost.is_set():
            if self._client is not None:
                self._drop(self._client)  # lost, and its task has not noticed yet
            await self._connected.wait()
        client: Client = self._client
        self.calls += 1
        try:
            return await client.call_tool(tool, arguments)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                self._drop(client)
            raise McpToolFailed(
                f"MCP server {self.name!r}: {exc.error.message}", tool=tool
            ) from exc
        except Exception as exc:
            self._drop(client)  # the session is broken: start it again
            raise McpToolFailed(
                f"MCP server {self.name!r} failed during the call: {_describe(exc)}", tool=tool
            ) from exc

    # -- internals ----------------------------------------------------------------------------

    def _drop(self, client: Any) -> None:
        """``client``'s session is over: calls wait for the next one (its task restarts it)."""
        if self._client is not client:
            return  # already dropped, maybe replaced by a new session
        self._lost.set()
        self._client = None
        if self._connected.is_set():
            self._connected = trio.Event()

    def _open(self) -> Client:
        try:
            from mcp import Client
        except ImportError:
            raise McpServerFailed(
                self.name,
                "MCP servers need the official SDK: pip install 'orchestrator[mcp]'",
            ) from None

        return Client(self._transport(), client_info=_client_info())

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[Any]:
        config = self.config
        where = f"MCP server {self.name!r}"
        if config.command is not None:
            from mcp import StdioServerParameters
            from mcp.client.stdio import stdio_client

            env = {
                key: expand_environment(value, self.environ, what=f"{where}: env {key}")
                for key, value in config.env.items()
            }
            # "python" is the interpreter running us: a server written in Python finds the
            # packages of our environment, whatever PATH says.
            command = sys.executable if config.command in PYTHON_NAMES else config.command
            parameters = StdioServerParameters(
                command=command, args=list(config.args), env=env, cwd=config.cwd
            )
            errlog = self._stderr if self._stderr is not None else subprocess.DEVNULL
            async with stdio_client(parameters, errlog=typing.cast("Any", errlog)) as (
                read,
                write,
            ):
                yield _WatchedStream(read, self._lost), write
            return
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        assert config.url is not None  # validated: command or url
        headers = {}
        for key, value in config.headers.items():
            headers[key] = expand_environment(value, self.environ, what=f"{where}: header {key}")
            register_secret(headers[key])
        async with (
            create_mcp_http_client(headers=headers) as http,
            streamable_http_client(config.url, http_client=http) as (read, write),
        ):
            yield _WatchedStream(read, self._lost), write

    async def _list(self, client: Client) -> tuple[McpTool, ...]:
        tools: list[McpTool] = []
        cursor: str | None = None
        for _ in range(100):  # pages; a server that pages forever is cut off
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tuple(tools)

    def _exit_reason(self) -> str:
        return "its session ended" if self.config.url else "its process exited"

    def _stderr_tail(self) -> str:
        handle = self._stderr
        if handle is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            handle.flush()
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _STDERR_TAIL))
            tail = handle.read().strip()
            handle.seek(0, os.SEEK_END)
            if tail:
                return f"; its stderr ends with: {redact(tail[-_STDERR_TAIL:])}"
        return ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        leaves = list(_leaves(exc))
        if leaves:
            return _describe(leaves[0])
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _leaves(group: BaseExceptionGroup[Any]) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _client_info() -> Any:
    from mcp.types import Implementation

    return Implementation(name="orchestrator", version="0.1.0")


# -- the tools ---------------------------------------------------------------------------------


class _McpArguments(msgspec.Struct, frozen=True):
    values: dict[str, Any]


_ANY_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
# ToolSpec's machinery for Python callables, unused by MCP tools (they override it).
_NO_SIGNATURE: Final = _Signature(
    arguments_type=_McpArguments,
    decoder=_ANY_OBJECT,
    positional=(),
    keyword=(),
    context=(),
    paths=(),
    schema={},
    is_async=True,
)


@attrs.frozen(eq=False)
class McpToolSpec(ToolSpec):
    """A tool of an MCP server, as the executor runs any tool.

    Arguments are checked here for what the schema says at its top level (a JSON object,
    required properties present, no unknown ones when ``additionalProperties`` is false);
    the server validates the rest and its errors reach the model as ``tool_failed``.
    """

    server: McpServerConnection = attrs.field(kw_only=True, repr=False)
    remote_name: str = attrs.field(kw_only=True)

    @classmethod
    def of(
        cls, server: McpServerConnection, tool: McpTool, *, default_timeout: float
    ) -> McpToolSpec:
        """The spec of ``tool`` as ``server``'s plan entry shapes it.

        Raises:
            ConfigurationError: the plan's ``side_effects`` would lower the tool's class.
        """
        from actors.tools import DEFAULT_MAX_OUTPUT

        config = server.config
        annotated = side_effect_of(tool)
        given = config.side_effects.get(tool.name)
        if given is not None and _RANK[given] < _RANK[annotated]:
            raise ConfigurationError(
                f"MCP server {server.name!r}: side_effects.{tool.name} = {given!r} would lower "
                f"the class its annotations give ({annotated!r}); a plan may only raise it",
                code="plan.tool",
            )
        schema = dict(tool.input_schema or {})
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})

        async def call(**arguments: Any) -> Any:  # identifies the tool in the registry
            return await server.call(tool.name, arguments)

        return cls(
            name=config.prefix + tool.name,
            function=call,
            description=(tool.description or tool.title or "")[:1024],
            parameters=schema,
            strict=False,
            timeout=config.timeout if config.timeout is not None else default_timeout,
            max_output=config.max_output if config.max_output is not None else DEFAULT_MAX_OUTPUT,
            side_effect=given if given is not None else annotated,
            signature=_NO_SIGNATURE,
            server=server,
            remote_name=tool.name,
        )

    @property
    def is_async(self) -> bool:
        return True

    def decode_arguments(
        self, arguments: str, *, call_id: str | None = None, max_bytes: int = MAX_ARGUMENTS
    ) -> msgspec.Struct:
        size = len(arguments.encode("utf-8", errors="surrogatepass"))
        if size > max_bytes:
            raise ArgumentsRejected(
                "arguments_too_large",
                f"arguments are {size} bytes, limit {max_bytes}",
                tool=self.name,
                call_id=call_id,
            )
        try:
            values = _ANY_OBJECT.decode(arguments.strip() or "{}")
        except msgspec.ValidationError:
            raise ArgumentsRejected(
                "invalid_arguments", "arguments must be a JSON object", tool=self.name
            ) from None
        except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
            raise ArgumentsRejected(
                "invalid_json", str(exc)[:500], tool=self.name, call_id=call_id
            ) from None
        properties = self.parameters.get("properties")
        known = set(properties) if isinstance(properties, dict) else set()
        required = self.parameters.get("required")
        missing = [n for n in required or () if isinstance(n, str) and n not in values]
        if missing:
            raise ArgumentsRejected(
                "invalid_arguments",
                f"Object missing required field {missing[0]!r}",
                tool=self.name,
                call_id=call_id,
            )
        if self.parameters.get("additionalProperties") is False:
            unknown = sorted(set(values) - known)
            if unknown:
                raise ArgumentsRejected(
                    "invalid_arguments",
                    f"Object contains unknown field {unknown[0]!r}",
                    tool=self.name,
                    call_id=call_id,
                )
        return _McpArguments(values)

    def confine_paths(self, arguments: msgspec.Struct, workspace: Any) -> msgspec.Struct:
        return arguments  # the server owns its paths

    async def invoke(
        self,
        arguments: msgspec.Struct,
        context: ToolContext,
        *,
        limiter: trio.CapacityLimiter | None = None,
    ) -> Any:
        assert isinstance(arguments, _McpArguments)
        with trio.move_on_after(self.timeout):
            result = await self.server.call(self.remote_name, arguments.values)
            text = _render(result)
            if result.is_error:
                raise McpToolFailed(text or "the tool failed", tool=self.name)
            return text
        raise ToolTimedOut(
            f"tool {self.name!r} did not finish within {self.timeout:g} s",
            tool=self.name,
            call_id=context.call_id,
        )


def _render(result: CallToolResult) -> str:
    """A call's result as the text the model reads: its text contents; structured content
    when there is no text; other content described."""
    parts: list[str] = []
    for block in result.content:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(str(getattr(block, "text", "")))
        elif kind in ("image", "audio"):
            data = getattr(block, "data", "")
            parts.append(f"[{kind} {getattr(block, 'mime_type', '')}, {len(data) * 3 // 4} bytes]")
        elif kind == "resource_link":
            parts.append(f"[resource {getattr(block, 'uri', '')}]")
        elif kind == "resource":
            resource = getattr(block, "resource", None)
            text = getattr(resource, "text", None)
            parts.append(text if isinstance(text, str) else f"[resource {resource}]")
    if not parts and result.structured_content is not None:
        return msgspec.json.encode(result.structured_content).decode()
    return "\n".join(parts)


# -- all of a run's servers --------------------------------------------------------------------


@attrs.define(eq=False)
class McpServers:
    """The MCP servers of one run: started together, each supervised, stopped together."""

    connections: dict[str, McpServerConnection]

    @classmethod
    def for_plan(
        cls, servers: Mapping[str, McpServer], used: Iterable[str], **options: Any
    ) -> McpServers:
        """Connections for the servers in ``used`` (those the agents name)."""
        names = dict.fromkeys(used)
        return cls({name: McpServerConnection(name, servers[name], **options) for name in names})

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every server at once; report started when all listed their tools; keep
        them running until cancelled.

        Raises:
            McpServerFailed: a server did not start, or exceeded its restart limit.
        """
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as starting:
                for connection in self.connections.values():
                    starting.start_soon(nursery.start, connection.run)
            task_status.started()

    def specs(self, names: Iterable[str], *, default_timeout: float) -> list[McpToolSpec]:
        """The offered tools of servers ``names``, as specs (allow/deny lists applied)."""
        specs: list[McpToolSpec] = []
        for name in names:
            connection = self.connections[name]
            for tool in connection.tools:
                if connection.config.offers(tool.name):
                    specs.append(McpToolSpec.of(connection, tool, default_timeout=default_timeout))
        return specs
