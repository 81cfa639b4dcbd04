"""Building plans in Python.

::

    from plans import PlanBuilder, Budget

    plan = (
        PlanBuilder("trip", goal="Plan a 3-day trip to Lisbon", model="gpt-5-mini")
        .settings(reasoning={"effort": "low"}, max_output_tokens=4000)
        .budgets(max_turns=200, wall_clock=600)
        .tool(search_flights, timeout=10, side_effect="read_only")
        .planner("planner", instructions="Delegate, then answer.", output_type=Itinerary)
        .worker(
            "flights",
            instructions="Find flights.",
            tools=[search_flights],
            settings={"tool_choice": "search_flights", "temperature": 0.2},
        )
        .build()
    )

The builder produces the same plain data a plan file holds and runs the same validation, so a
built plan and a loaded plan behave the same and report the same errors. Tools given as
functions and output types given as classes are stored by import path (``module:qualname``):
plans stay plain data, which is what resuming a job in a new process needs. A function or type
the import path does not lead back to (a lambda, a nested class) is refused at once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Literal, Self

import msgspec

from orchestrator.errors import PlanError

from .model import MODEL_OPTION_FIELDS, Budget, Context, ModelOptions, Plan, Role, SideEffect
from .validate import PlanIssue, plan_from_dict

__all__ = ["PlanBuilder", "import_path_of"]

ToolLike = Callable[..., Any] | str
SettingsLike = ModelOptions | Mapping[str, Any]


class PlanBuilder:
    """Accumulates a plan; ``build()`` validates it. Methods return the builder to chain."""

    def __init__(
        self,
        name: str,
        *,
        goal: str | None = None,
        model: str | None = None,
        store: bool = False,
        base_url: str | None = None,
    ) -> None:
        self._data: dict[str, Any] = {"name": name}
        if goal is not None:
            self._data["goal"] = goal
        settings: dict[str, Any] = {"store": store}
        if model is not None:
            settings["model"] = model
        if base_url is not None:
            settings["base_url"] = base_url
        self._data["settings"] = settings
        self._tools: dict[str, dict[str, Any]] = {}
        self._tool_names: dict[int, str] = {}
        self._agents: list[dict[str, Any]] = []
        self._steps: list[dict[str, Any]] = []

    def settings(
        self,
        options: SettingsLike | None = None,
        /,
        *,
        context: Context | None = None,
        **fields: Any,
    ) -> Self:
        """Set plan-wide model settings, the defaults of every agent (see
        ``plans.ModelOptions``): a ``ModelOptions``, a mapping, or keywords such as
        ``temperature=0.2, reasoning={"effort": "low"}, tool_choice="required"``. Also
        ``context`` (steps mode: ``step`` or ``agent``).

        Fields are checked by ``build()``, where an unknown one is reported with the
        closest valid name.
        """
        settings = self._data["settings"]
        settings.update(_options(options, fields))
        if context is not None:
            settings["context"] = context
        return self

    def budgets(
        self,
        *,
        max_turns: int | None = None,
        max_tokens: int | None = None,
        wall_clock: float | None = None,
    ) -> Self:
        """Set the run's budgets (see ``plans.Budget``)."""
        self._data["budgets"] = _budget(
            Budget(max_turns=max_turns, max_tokens=max_tokens, wall_clock=wall_clock)
        )
        return self

    def approvals(
        self,
        *,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        otherwise: Literal["ask", "deny"] = "ask",
    ) -> Self:
        """Who may run ``destructive`` and ``external`` tools unasked (see ``plans.Approvals``):
        patterns ``tool`` or ``agent:tool`` with ``*`` wildcards; deny wins over allow."""
        self._data["approvals"] = {
            "allow": list(allow),
            "deny": list(deny),
            "otherwise": otherwise,
        }
        return self

    def tool(
        self,
        function: ToolLike,
        *,
        name: str | None = None,
        timeout: float | None = None,
        max_output: int | None = None,
        side_effect: SideEffect | None = None,
        description: str | None = None,
    ) -> Self:
        """Define a tool with options under ``name`` (default: the function's name).

        Agents may then list it by name or by the same function object.

        Raises:
            PlanError: ``function`` is not reachable by import path.
        """
        path = function if isinstance(function, str) else import_path_of(function)
        key = name or path.rpartition(":")[2].rpartition(".")[2]
        options = {
            "timeout": timeout,
            "max_output": max_output,
            "side_effect": side_effect,
            "description": description,
        }
        self._tools[key] = {"path": path} | {k: v for k, v in options.items() if v is not None}
        if not isinstance(function, str):
            self._tool_names[id(function)] = key
        return self

    def mcp_server(
        self,
        name: str,
        *,
        command: str | None = None,
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        tools: Iterable[str] | None = None,
        exclude_tools: Iterable[str] = (),
        prefix: str = "",
        timeout: float | None = None,
        max_output: int | None = None,
        side_effects: Mapping[str, SideEffect] | None = None,
    ) -> Self:
        """Define an MCP server agents may use (see ``plans.McpServer``): ``command`` with
        ``args``/``env``/``cwd`` for stdio, or ``url`` with ``headers`` for streamable
        HTTP. Values may take ``${NAME}`` from the environment; header values must."""
        fields: dict[str, Any] = {
            "command": command,
            "args": list(args),
            "env": dict(env or {}),
            "cwd": cwd,
            "url": url,
            "headers": dict(headers or {}),
            "tools": None if tools is None else list(tools),
            "exclude_tools": list(exclude_tools),
            "prefix": prefix,
            "timeout": timeout,
            "max_output": max_output,
            "side_effects": dict(side_effects or {}),
        }
        servers = self._data.setdefault("mcp_servers", {})
        servers[name] = {k: v for k, v in fields.items() if v not in (None, [], {}, "")}
        return self

    def planner(
        self,
        name: str,
        *,
        instructions: str = "",
        model: str | None = None,
        description: str = "",
        tools: Iterable[ToolLike] = (),
        limits: Budget | None = None,
        settings: SettingsLike | None = None,
        output_type: Any = None,
        mcp_servers: Iterable[str] = (),
        hosted_tools: Iterable[Mapping[str, Any]] = (),
    ) -> Self:
        """Add the planner agent (it gets its delegation tools from the runtime)."""
        return self.agent(
            name,
            role="planner",
            instructions=instructions,
            model=model,
            description=description,
            tools=tools,
            limits=limits,
            settings=settings,
            output_type=output_type,
            mcp_servers=mcp_servers,
            hosted_tools=hosted_tools,
        )

    def worker(
        self,
        name: str,
        *,
        instructions: str = "",
        model: str | None = None,
        description: str = "",
        tools: Iterable[ToolLike] = (),
        limits: Budget | None = None,
        settings: SettingsLike | None = None,
        output_type: Any = None,
        mcp_servers: Iterable[str] = (),
        hosted_tools: Iterable[Mapping[str, Any]] = (),
    ) -> Self:
        """Add a worker agent."""
        return self.agent(
            name,
            role="worker",
            instructions=instructions,
            model=model,
            description=description,
            tools=tools,
            limits=limits,
            settings=settings,
            output_type=output_type,
            mcp_servers=mcp_servers,
            hosted_tools=hosted_tools,
        )

    def agent(
        self,
        name: str,
        *,
        role: Role,
        instructions: str = "",
        model: str | None = None,
        description: str = "",
        tools: Iterable[ToolLike] = (),
        limits: Budget | None = None,
        settings: SettingsLike | None = None,
        output_type: Any = None,
        mcp_servers: Iterable[str] = (),
        hosted_tools: Iterable[Mapping[str, Any]] = (),
    ) -> Self:
        """Add an agent. ``tools`` are names defined with ``tool()``, functions or paths.

        Args:
            mcp_servers: names of servers defined with ``mcp_server()``.
            hosted_tools: the service's own tools, each a mapping with its ``type``
                (``{"type": "web_search"}``...), sent verbatim.
            settings: the agent's model settings, over the plan-wide ones: a
                ``ModelOptions`` or a mapping of its fields.
            output_type: what the agent answers: a msgspec Struct, dataclass or TypedDict
                class (stored by import path), a ``module:Type`` path, or a JSON Schema.

        Raises:
            PlanError: a tool function or the output type is not reachable by import path.
        """
        agent: dict[str, Any] = {
            "name": name,
            "role": role,
            "instructions": instructions,
            "description": description,
            "tools": [self._tool_entry(t) for t in tools],
        }
        if model is not None:
            agent["model"] = model
        if limits is not None:
            agent["limits"] = _budget(limits)
        if settings is not None:
            agent["settings"] = _options(settings, {})
        if output_type is not None:
            agent["output_type"] = _output_entry(output_type)
        if mcp_servers:
            agent["mcp_servers"] = list(mcp_servers)
        if hosted_tools:
            agent["hosted_tools"] = [dict(tool) for tool in hosted_tools]
        self._agents.append(agent)
        return self

    def step(self, step_id: str, *, agent: str, task: str, depends_on: Iterable[str] = ()) -> Self:
        """Add a step; ``task`` may use ``{{goal}}`` and ``{{steps.ID.result}}``."""
        self._steps.append(
            {"id": step_id, "agent": agent, "task": task, "depends_on": list(depends_on)}
        )
        return self

    def final_step(self, step_id: str) -> Self:
        """Make ``step_id``'s result the answer; only what it needs is scheduled."""
        self._data["final_step"] = step_id
        return self

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data, exactly as a JSON plan file would hold it."""
        data = dict(self._data)
        if self._tools:
            data["tools"] = {name: dict(options) for name, options in self._tools.items()}
        data["agents"] = [dict(agent) for agent in self._agents]
        if self._steps:
            data["steps"] = [dict(step) for step in self._steps]
        return data

    def build(
        self, *, allowed_modules: Collection[str] | None = None, import_tools: bool = True
    ) -> Plan:
        """Validate and return the plan.

        Raises:
            PlanError: with every issue, as for a plan file.
        """
        return plan_from_dict(
            self.to_dict(), allowed_modules=allowed_modules, import_tools=import_tools
        )

    def _tool_entry(self, tool: ToolLike) -> str:
        if isinstance(tool, str):
            return tool
        return self._tool_names.get(id(tool)) or import_path_of(tool)


def _options(options: SettingsLike | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Model settings as plan data: set fields only, nested values as plain data."""
    data: dict[str, Any] = {}
    if isinstance(options, ModelOptions):
        data.update(
            (name, getattr(options, name))
            for name in MODEL_OPTION_FIELDS
            if getattr(options, name) is not None
        )
    elif options is not None:
        data.update(options)
    data.update(fields)
    return {name: msgspec.to_builtins(value) for name, value in data.items() if value is not None}


def _output_entry(output_type: Any) -> str | dict[str, Any]:
    """An output type as plan data: a path or a schema as given, a class by import path."""
    if isinstance(output_type, str):
        return output_type
    if isinstance(output_type, Mapping):
        return dict(output_type)
    try:
        return import_path_of(output_type, what="output type")
    except PlanError:
        issue = PlanIssue(
            code="plan.output",
            message=f"output type {output_type!r} cannot be referenced by an import path",
            suggestion="define it at module level and pass the class, or its 'module:Type' path",
        )
        raise PlanError(str(issue), (issue,)) from None


def import_path_of(function: Callable[..., Any], *, what: str = "tool") -> str:
    """The ``module:qualname`` path that imports back to ``function`` (or a class).

    Raises:
        PlanError: (``plan.tool``) no such path leads back to this very object.
    """
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
        path = f"{module}:{qualname}"
        try:
            target: Any = importlib.import_module(module)
            for part in qualname.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError):
            target = None
        if target is function:
            return path
    issue = PlanIssue(
        code="plan.tool",
        message=f"{what} {function!r} cannot be referenced by an import path",
        suggestion="define it at module level, or pass its 'module:function' path",
    )
    raise PlanError(str(issue), (issue,))


def _budget(budget: Budget) -> dict[str, Any]:
    return {
        field: getattr(budget, field)
        for field in ("max_turns", "max_tokens", "wall_clock")
        if getattr(budget, field) is not None
    }
