"""Plan validation: every problem at once, each with a code, a location and a suggestion.

Validation runs on the plain data a loader decoded (or a builder produced), before any socket
opens or any tool runs. It walks the data against the model itself instead of stopping at
msgspec's first error, so one pass reports every unknown field and wrong type, then checks
what msgspec cannot: references between agents, steps and tools, cycles, ranges, tool import
paths, and secrets pasted into the plan.

Issue codes (the CLI maps them to exit codes):

    plan.not_found    the file is missing, a directory, or not readable by us
    plan.io           the file cannot be read for another reason
    plan.format       the file extension is not .toml/.yaml/.yml/.json
    plan.too_large    the file exceeds the size cap (checked before decoding)
    plan.encoding     the file is not UTF-8
    plan.syntax       malformed TOML/YAML/JSON, or nesting too deep
    plan.schema       unknown field, wrong type, missing field, agent without a model
    plan.empty        no agents
    plan.duplicate    agent name, step id, tool name or list entry given twice
    plan.planner      missing or duplicate planner
    plan.cycle        dependency cycle or self-dependency
    plan.unknown_step depends_on / final_step / {{steps.X.result}} names no step
    plan.unknown_agent a step names no agent
    plan.reference    invalid {{...}} placeholder, or a result of a step not depended on
    plan.tool         bad import path, module or function missing, not registered, not allowed
    plan.value        out-of-range number, bad name, unsupported version, bad URL
    plan.secret       something that looks like an API key or password
    plan.output       an output_type that does not import, is no type msgspec can check, or
                      a JSON Schema using a keyword that is not supported
  warnings:
    plan.unreachable  steps never scheduled (not needed by final_step)
    plan.unused_agent a worker no step uses and no planner can reach
    plan.unused_tool  a [tools] entry no agent lists
"""

from __future__ import annotations

import difflib
import graphlib
import math
import re
import types
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final, Literal, TypeVar, Union, get_args, get_origin

import attrs
import msgspec
from loguru import logger

from orchestrator.core.redaction import is_secret_name, looks_secret
from orchestrator.core.rules import IMPORT_PATH, ImportPathError, resolve_import
from orchestrator.errors import PlanError

from .model import (
    ENV_REFERENCE,
    FORMAT_VERSION,
    HOSTED_TOOL_TYPES,
    LIMITS,
    MAX_METADATA,
    NAME_PATTERN,
    SETTING_LIMITS,
    TOOL_CHOICE_MODES,
    TOOL_NAME_PATTERN,
    Agent,
    Approvals,
    Budget,
    McpServer,
    ModelOptions,
    Plan,
    Settings,
    Step,
    ToolConfig,
    task_references,
    tool_name_of_path,
)
from .output import OutputError, output_type_of

__all__ = [
    "PlanIssue",
    "PlanReport",
    "ToolCheck",
    "check_approval_patterns",
    "check_plan",
    "plan_from_dict",
]

Severity = Literal["error", "warning"]
_T = TypeVar("_T")


class PlanIssue(msgspec.Struct, frozen=True, kw_only=True):
    """One problem found in a plan.

    Attributes:
        code: machine-readable class of problem, e.g. ``plan.cycle`` (see the module doc).
        message: what is wrong, never echoing anything that looks like a secret.
        path: the plan file as the user named it, or None for plans built in Python.
        location: JSONPath-like place in the plan (``$.agents[2].tools[0]``), or None when
            the problem concerns the whole file (size, encoding, syntax).
        suggestion: how to fix it, e.g. ``did you mean 'agent'?``.
        severity: ``error`` stops the run; ``warning`` does not.
        line: the 1-based line of the plan file the problem is on (or, for something
            missing, the line of what should hold it), when the plan came from a file.
        excerpt: for a syntax error, the offending line with a caret under the column.
    """

    code: str
    message: str
    path: str | None = None
    location: str | None = None
    suggestion: str | None = None
    severity: Severity = "error"
    line: int | None = None
    excerpt: str | None = None

    def __str__(self) -> str:
        """``error[CODE]: FILE:LINE: LOCATION: MESSAGE (suggestion)``, and for a syntax error
        the offending line below it."""
        where = ""
        if self.location is not None:
            file = self.path if self.line is None or not self.path else f"{self.path}:{self.line}"
            where = f"{file}: {self.location}: " if file else f"{self.location}: "
        text = f"{self.severity}[{self.code}]: {where}{self.message}"
        if self.suggestion:
            # "did you mean" reads as an aside; other advice as a clause.
            joiner = " ({})" if self.suggestion.startswith("did you mean") else "; {}"
            text += joiner.format(self.suggestion)
        if self.excerpt:
            text += "\n" + self.excerpt
        return text


class PlanReport(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of checking a plan: the plan (when it decoded) and every issue, sorted."""

    plan: Plan | None
    issues: tuple[PlanIssue, ...] = ()

    @property
    def errors(self) -> tuple[PlanIssue, ...]:
        return tuple(i for i in self.issues if i.severity == "error")

    @property
    def warnings(self) -> tuple[PlanIssue, ...]:
        return tuple(i for i in self.issues if i.severity == "warning")

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return self.plan is not None and not self.errors

    def raise_for_errors(self) -> Plan:
        """The plan, if it has no errors; warnings are logged.

        Raises:
            PlanError: with every issue in ``issues`` and the listing, one per line, as str.
        """
        if self.plan is None or self.errors:
            listing = issues_listing(self.issues)
            raise PlanError(listing or "error[plan.schema]: invalid plan", self.issues)
        for warning in self.warnings:
            logger.warning("{}", warning)
        return self.plan


def plan_from_dict(
    data: Mapping[str, Any],
    *,
    source: str | None = None,
    allowed_modules: Collection[str] | None = None,
    import_tools: bool = True,
) -> Plan:
    """Check plain data (as decoded from a plan file) and return the plan.

    Args:
        data: the plan as dicts, lists and scalars.
        source: what to call the plan in messages (usually its file name).
        allowed_modules: if given, tools may only come from these modules or their
            submodules; anything else is ``plan.tool`` and is never imported.
        import_tools: import every tool module to check that its function exists.

    Raises:
        PlanError: the plan has errors; ``issues`` lists them all.
    """
    return check_plan(
        data, source=source, allowed_modules=allowed_modules, import_tools=import_tools
    ).raise_for_errors()


ToolCheck = Callable[[Callable[..., Any], str], "tuple[str, str | None] | None"]
"""Builds a tool from a function and the name the plan gives it: ``None`` if it can be
offered to a model, else ``(message, suggestion)``. ``actors.tools.check_definition`` is the
runtime's; ``plans`` cannot import it (it imports only ``orchestrator.errors``)."""


def check_plan(
    plan: Plan | Mapping[str, Any],
    *,
    source: str | None = None,
    allowed_modules: Collection[str] | None = None,
    import_tools: bool = True,
    check_tool: ToolCheck | None = None,
    line_of: Callable[[str], int | None] | None = None,
) -> PlanReport:
    """Check a plan (a ``Plan`` or its plain data) and report every issue. Never raises for
    problems in the plan; see ``plan_from_dict`` for the other arguments.

    Args:
        check_tool: also build every tool the plan names (with ``import_tools``), so a
            function the runtime could not describe to a model (a parameter without a type
            hint, a type without a JSON schema) is a ``plan.tool`` error now rather than a
            failed run later. ``orchestrator run``, ``orchestrator validate`` and
            ``orchestrator.run`` pass the runtime's.
        line_of: maps a location to the line of the file it came from (``plans.lines``).
    """
    out = _Issues(source, line_of)
    if isinstance(plan, Plan):
        try:
            data: Any = msgspec.to_builtins(plan)
        except (TypeError, ValueError) as exc:
            out.add("plan.schema", "$", f"plan holds a value that is not plain data: {exc}")
            return out.report(None)
    else:
        data = plan
    if not isinstance(data, Mapping):
        out.add("plan.schema", "$", f"expected object, got {_kind(data)}")
        return out.report(None)
    data = dict(data)

    _scan_secrets(data, out)
    schema_ok = _check_struct(data, Plan, "$", out)
    view = _View.build(data, complete=schema_ok)
    _Semantics(
        view, out, allowed_modules=allowed_modules, import_tools=import_tools, check_tool=check_tool
    ).run()

    result: Plan | None = None
    if schema_ok:
        try:
            result = msgspec.convert(data, Plan)
        except msgspec.ValidationError as exc:  # pragma: no cover - the walk above agrees
            location, message = _split_msgspec_error(str(exc), "$")
            out.add("plan.schema", location, message)
    return out.report(result)


# -- collecting issues -------------------------------------------------------------------------


class _Issues:
    def __init__(
        self, source: str | None, line_of: Callable[[str], int | None] | None = None
    ) -> None:
        self.source = source
        self.line_of = line_of
        self.items: list[PlanIssue] = []

    def add(
        self,
        code: str,
        location: str | None,
        message: str,
        suggestion: str | None = None,
        *,
        severity: Severity = "error",
        at: str | None = None,
    ) -> None:
        """Record an issue; ``at`` is a more precise location to find its line by (the
        unknown key itself, where ``location`` is the object holding it)."""
        line = None
        if self.line_of is not None and location is not None:
            line = self.line_of(at or location)
        self.items.append(
            PlanIssue(
                code=code,
                message=message,
                path=self.source,
                location=location,
                suggestion=suggestion,
                severity=severity,
                line=line,
            )
        )

    def report(self, plan: Plan | None) -> PlanReport:
        unique = list(dict.fromkeys(self.items))
        unique.sort(key=lambda i: (_location_key(i.location), i.severity != "error", i.code))
        return PlanReport(plan=plan, issues=tuple(unique))


_LOCATION_PART: Final = re.compile(r"\[(\d+)\]|\[(\".*?\")\]|\.([^.\[]+)")


def _location_key(location: str | None) -> tuple[tuple[int, int | str], ...]:
    """Sort key for locations: whole-file issues first, list indices numerically."""
    if location is None:
        return ()
    key: list[tuple[int, int | str]] = [(0, 0)]
    for index, quoted, name in _LOCATION_PART.findall(location):
        key.append((1, int(index)) if index else (2, quoted or name))
    return tuple(key)


def issues_listing(issues: Iterable[PlanIssue]) -> str:
    """The ``error[CODE]: ...`` listing of ``issues``, one per line."""
    return "\n".join(str(issue) for issue in issues)


# -- shaping text ------------------------------------------------------------------------------


def _show(value: object, limit: int = 60) -> str:
    """``value`` quoted for a message: shortened, and withheld if it looks like a secret."""
    text = value if isinstance(value, str) else repr(value)
    if looks_secret(text):
        return "<redacted>"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return repr(text) if isinstance(value, str) else text


def _did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean {matches[0]!r}?" if matches else None


def _number(value: float) -> str:
    """``1000000`` rather than ``1e+06``."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _kind(value: object) -> str:
    """A JSON-ish name for the type of ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _key_location(base: str, key: str) -> str:
    return f"{base}.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key) else f'{base}["{key}"]'


_MSGSPEC_AT: Final = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.DOTALL)


def _split_msgspec_error(text: str, location: str) -> tuple[str, str]:
    """msgspec's ``Expected `int`, got `str` - at `$.x``` as (location, message)."""
    match = _MSGSPEC_AT.match(text)
    assert match is not None  # the pattern matches every string
    message = match.group(1).replace("`", "")
    suffix = match.group(2) or ""
    return location + suffix, message[:1].lower() + message[1:]


# -- the schema walk ---------------------------------------------------------------------------


def _check_struct(value: Any, cls: type[msgspec.Struct], location: str, out: _Issues) -> bool:
    """Check ``value`` against Struct ``cls`` field by field; report every problem."""
    if not isinstance(value, dict):
        out.add("plan.schema", location, f"expected object, got {_kind(value)}")
        return False
    fields = {info.encode_name: info for info in msgspec.structs.fields(cls)}
    ok = True
    for key in value:
        if not isinstance(key, str):
            out.add("plan.schema", location, f"field names must be strings, got {_show(key)}")
            ok = False
        elif key not in fields:
            out.add(
                "plan.schema",
                location,
                f"unknown field {_show(key)}",
                _MOVED.get((cls, key)) or _did_you_mean(key, fields),
                at=_key_location(location, key),
            )
            ok = False
    for name, info in fields.items():
        if name in value:
            ok = _check_value(value[name], info.type, f"{location}.{name}", out) and ok
        elif info.required:
            out.add("plan.schema", location, f"missing required field {name!r}")
            ok = False
    return ok


# Fields of [settings] that an agent's settings cannot hold: where they go instead.
_MOVED: Final[Mapping[tuple[type, str], str]] = {
    (ModelOptions, "model"): "set model on the agent itself, next to its name",
    (ModelOptions, "context"): "set context on the agent itself, next to its name",
    (ModelOptions, "store"): "store is run-wide: set it in [settings]",
    (ModelOptions, "base_url"): "base_url is run-wide: set it in [settings]",
    (ModelOptions, "output_type"): "set output_type on the agent itself, next to its name",
}


def _check_value(value: Any, annotation: Any, location: str, out: _Issues) -> bool:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return True
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            annotation = members[0]
            origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return _check_struct(value, annotation, location, out)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            out.add("plan.schema", location, f"expected array, got {_kind(value)}")
            return False
        results = [_check_value(v, args[0], f"{location}[{i}]", out) for i, v in enumerate(value)]
        return all(results)
    if origin is dict:
        if not isinstance(value, dict):
            out.add("plan.schema", location, f"expected object, got {_kind(value)}")
            return False
        ok = True
        for key, item in value.items():
            if not isinstance(key, str):
                out.add("plan.schema", location, f"keys must be strings, got {_show(key)}")
                ok = False
                continue
            ok = _check_value(item, args[1], _key_location(location, key), out) and ok
        return ok
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return True
        choices = ", ".join(repr(a) for a in args)
        suggestion = _did_you_mean(value, args) if isinstance(value, str) else None
        out.add(
            "plan.schema", location, f"expected one of {choices}, got {_show(value)}", suggestion
        )
        return False
    try:
        msgspec.convert(value, annotation)
    except msgspec.ValidationError as exc:
        where, message = _split_msgspec_error(str(exc), location)
        out.add("plan.schema", where, message)
        return False
    if isinstance(value, float) and not math.isfinite(value):
        out.add("plan.value", location, f"must be a finite number, got {value}")
        return False
    return True


# -- a view of the plan that tolerates broken parts -------------------------------------------


class _View:
    """The parts of a plan that decoded, with their original indices.

    When the schema walk found errors, the semantic checks still run on every agent, step
    and tool that is valid on its own, so one run reports everything. Names of broken
    agents and steps still count as defined, to avoid follow-on "unknown agent" noise.
    """

    def __init__(self) -> None:
        self.complete = True
        self.name: str | None = None
        self.version: int | None = None
        self.goal: str | None = None
        self.final_step: str | None = None
        self.settings: Settings | None = None
        self.budgets: Budget | None = None
        self.approvals: Approvals | None = None
        self.tools: dict[str, ToolConfig] = {}
        self.broken_tools: set[str] = set()
        self.mcp_servers: dict[str, McpServer] = {}
        self.broken_mcp_servers: set[str] = set()
        self.agents: list[tuple[int, Agent]] = []
        self.steps: list[tuple[int, Step]] = []
        self.agent_count = 0
        self.step_count = 0
        self.broken_agent_names: set[str] = set()
        # Agents that decoded only after dropping broken fields: role or model may be wrong.
        self.lossy_agents: set[int] = set()
        self.broken_step_ids: set[str] = set()

    @classmethod
    def build(cls, data: dict[str, Any], *, complete: bool) -> _View:
        view = cls()
        view.complete = complete
        name, version = data.get("name"), data.get("version", FORMAT_VERSION)
        view.name = name if isinstance(name, str) else None
        view.version = version if type(version) is int else None
        goal, final = data.get("goal"), data.get("final_step")
        view.goal = goal if isinstance(goal, str) else None
        view.final_step = final if isinstance(final, str) else None
        view.settings = _convert_or_none(data.get("settings", {}), Settings)
        view.budgets = _convert_or_none(data.get("budgets", {}), Budget)
        view.approvals = _convert_or_none(data.get("approvals", {}), Approvals)
        tools = data.get("tools", {})
        if isinstance(tools, dict):
            for key, raw in tools.items():
                config = _convert_or_none(raw, ToolConfig)
                if config is not None and isinstance(key, str):
                    view.tools[key] = config
                elif isinstance(key, str):
                    view.broken_tools.add(key)
        servers = data.get("mcp_servers", {})
        if isinstance(servers, dict):
            for key, raw in servers.items():
                server = _convert_or_none(raw, McpServer)
                if server is not None and isinstance(key, str):
                    view.mcp_servers[key] = server
                elif isinstance(key, str):
                    view.broken_mcp_servers.add(key)
        agents = data.get("agents", [])
        if isinstance(agents, list | tuple):
            view.agent_count = len(agents)
            for index, raw in enumerate(agents):
                agent = _convert_or_none(raw, Agent)
                if agent is not None:
                    view.agents.append((index, agent))
                    if _convert_exact(raw, Agent) is None:
                        view.lossy_agents.add(index)
                elif isinstance(raw, dict) and isinstance(raw.get("name"), str):
                    view.broken_agent_names.add(raw["name"])
        steps = data.get("steps", [])
        if isinstance(steps, list | tuple):
            view.step_count = len(steps)
            for index, raw in enumerate(steps):
                step = _convert_or_none(raw, Step)
                if step is not None:
                    view.steps.append((index, step))
                elif isinstance(raw, dict) and isinstance(raw.get("id"), str):
                    view.broken_step_ids.add(raw["id"])
        return view


def _convert_exact(value: Any, cls: type[_T]) -> _T | None:
    try:
        return msgspec.convert(value, cls)
    except msgspec.ValidationError:
        return None


def _convert_or_none(value: Any, cls: type[_T]) -> _T | None:
    """``value`` as ``cls``, keeping what is valid: unknown fields and fields of the wrong
    type are dropped (the schema walk reported them), so one typo does not hide the rest
    of an agent or step from the semantic checks."""
    try:
        return msgspec.convert(value, cls)
    except msgspec.ValidationError:
        pass
    if not (isinstance(value, dict) and isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
        return None
    fields = {info.encode_name: info for info in msgspec.structs.fields(cls)}
    kept = {}
    for key, item in value.items():
        info = fields.get(key) if isinstance(key, str) else None
        if info is not None and _convert_or_none(item, info.type) is not None:
            kept[key] = item
    try:
        return msgspec.convert(kept, cls)
    except msgspec.ValidationError:
        return None


# -- semantic checks ---------------------------------------------------------------------------

_URL_SCHEMES: Final = ("http://", "https://", "ws://", "wss://")
# Tool names may hold a dot: a remote MCP server's tools are approved as "label.tool".
_APPROVAL_PATTERN: Final = re.compile(r"(?:[A-Za-z0-9_*?\[\]-]+:)?[A-Za-z0-9_.*?\[\]-]+")


def _has_wildcard(text: str) -> bool:
    return any(c in text for c in "*?[")


@attrs.frozen
class _Names:
    """The agent and tool names a plan defines, to check approval patterns against."""

    agents: list[str]
    tools: list[str]
    more_agents: frozenset[str] = frozenset()  # broken entries: defined, but not listed
    more_tools: frozenset[str] = frozenset()
    # Tools known only at run start (listed by an MCP server): any name with such a prefix.
    open_prefixes: tuple[str, ...] = ()

    @classmethod
    def of_view(cls, view: _View) -> _Names:
        agents = list(dict.fromkeys(a.name for _, a in view.agents))
        tools = list(view.tools)
        prefixes: list[str] = []
        for _, agent in view.agents:
            tools.extend(tool_name_of_path(entry) for entry in agent.tools if ":" in entry)
            more, open_prefixes = _mcp_names(agent, view.mcp_servers)
            tools.extend(more)
            prefixes.extend(open_prefixes)
        return cls(
            agents,
            list(dict.fromkeys(tools)),
            frozenset(view.broken_agent_names),
            frozenset(view.broken_tools | view.broken_mcp_servers),
            tuple(dict.fromkeys(prefixes)),
        )

    def knows_tool(self, tool: str) -> bool:
        return tool in {*self.tools, *self.more_tools} or any(
            tool.startswith(prefix) for prefix in self.open_prefixes
        )

    def pattern_problem(
        self, pattern: str, *, check_tools: bool = True
    ) -> tuple[str, str, str | None] | None:
        """``(code, message, suggestion)`` if ``pattern`` is malformed or names nothing."""
        agent, colon, tool = pattern.rpartition(":")
        if not _APPROVAL_PATTERN.fullmatch(pattern):
            return (
                "plan.value",
                f"{_show(pattern)} is not a tool pattern",
                "write 'tool' or 'agent:tool' ('*' and '?' match any text)",
            )
        if colon and not _has_wildcard(agent) and agent not in {*self.agents, *self.more_agents}:
            return (
                "plan.unknown_agent",
                f"{_show(pattern)} names unknown agent {_show(agent)}; "
                f"defined agents: {', '.join(self.agents) or 'none'}",
                _did_you_mean(agent, self.agents),
            )
        if check_tools and not _has_wildcard(tool) and not self.knows_tool(tool):
            return (
                "plan.tool",
                f"{_show(pattern)} names tool {_show(tool)}, which no agent lists",
                _did_you_mean(tool, self.tools),
            )
        return None


def _mcp_names(agent: Agent, servers: Mapping[str, McpServer]) -> tuple[list[str], list[str]]:
    """The MCP tool names ``agent`` may see (from allow-lists), and the prefixes of those
    known only once a server lists them; remote MCP servers' tools are ``label.tool``."""
    names: list[str] = []
    prefixes: list[str] = []
    for entry in agent.mcp_servers:
        server = servers.get(entry)
        if server is None:
            continue
        if server.tools is None:
            prefixes.append(server.prefix)
        else:
            names.extend(server.prefix + tool for tool in server.tools if server.offers(tool))
    for hosted in agent.hosted_tools:
        label = hosted.get("server_label")
        if hosted.get("type") != "mcp" or not isinstance(label, str):
            continue
        allowed = hosted.get("allowed_tools")
        if isinstance(allowed, dict):
            allowed = allowed.get("tool_names")
        if isinstance(allowed, list) and all(isinstance(name, str) for name in allowed):
            names.extend(f"{label}.{name}" for name in allowed)
        else:
            prefixes.append(f"{label}.")
    return names, prefixes


def check_approval_patterns(plan: Plan, patterns: Iterable[str], *, source: str) -> list[PlanIssue]:
    """Issues with approval patterns given outside the plan (``--approve``), located at
    ``source`` (the option's name)."""
    tools = [name for a in plan.agents for name in plan.tools_for(a)]
    prefixes: list[str] = []
    for agent in plan.agents:
        more, open_prefixes = _mcp_names(agent, plan.mcp_servers)
        tools.extend(more)
        prefixes.extend(open_prefixes)
    names = _Names(
        [a.name for a in plan.agents],
        list(dict.fromkeys(tools)),
        open_prefixes=tuple(prefixes),
    )
    issues = []
    for pattern in patterns:
        problem = names.pattern_problem(pattern)
        if problem is not None:
            code, message, suggestion = problem
            issues.append(
                PlanIssue(code=code, message=f"{source} {message}", suggestion=suggestion)
            )
    return issues


class _Semantics:
    def __init__(
        self,
        view: _View,
        out: _Issues,
        *,
        allowed_modules: Collection[str] | None,
        import_tools: bool,
        check_tool: ToolCheck | None = None,
    ) -> None:
        self.view = view
        self.out = out
        self.allowed_modules = None if allowed_modules is None else tuple(allowed_modules)
        self.import_tools = import_tools
        self.check_tool = check_tool
        self._imports: dict[str, tuple[str, str | None] | None] = {}

    def run(self) -> None:
        self.check_top_level()
        self.check_agents()
        self.check_steps()
        self.check_tools()
        self.check_mcp_servers()
        self.check_hosted_tools()
        self.check_approvals()
        self.check_model_settings()
        self.check_outputs()

    # -- top level -----------------------------------------------------------------------------

    def check_top_level(self) -> None:
        view, out = self.view, self.out
        if view.version is not None and view.version != FORMAT_VERSION:
            out.add(
                "plan.value",
                "$.version",
                f"unsupported plan format version {view.version}",
                f"this orchestrator reads version {FORMAT_VERSION}",
            )
        if view.name is not None and not (
            0 < len(view.name) <= 200 and view.name.isprintable() and view.name.strip()
        ):
            out.add("plan.value", "$.name", "must be 1 to 200 printable characters")
        if view.budgets is not None:
            self.check_budget(view.budgets, "$.budgets")
        settings = view.settings
        if settings is not None:
            if settings.model is not None and not settings.model.strip():
                out.add("plan.value", "$.settings.model", "must not be empty")
            if settings.base_url is not None and not settings.base_url.startswith(_URL_SCHEMES):
                out.add(
                    "plan.value",
                    "$.settings.base_url",
                    f"{_show(settings.base_url)} is not an http(s):// or ws(s):// URL",
                )
        if view.agent_count == 0:
            what = "agents" if view.step_count else "agents and no steps"
            out.add("plan.empty", "$", f"plan defines no {what}", "add an [[agents]] entry")

    def check_budget(self, budget: Budget, location: str) -> None:
        for field in ("max_turns", "max_tokens", "wall_clock"):
            value = getattr(budget, field)
            if value is None or not math.isfinite(value):
                continue  # non-finite numbers are reported by the schema walk
            low, high = LIMITS[field]
            exclusive = field == "wall_clock"
            if (value <= low if exclusive else value < low) or value > high:
                shown = (
                    f"0 < x <= {_number(high)}" if exclusive else f"{_number(low)}..{_number(high)}"
                )
                self.out.add(
                    "plan.value", f"{location}.{field}", f"must be in {shown}, got {value}"
                )

    # -- agents --------------------------------------------------------------------------------

    def check_agents(self) -> None:
        view, out = self.view, self.out
        seen: dict[str, list[int]] = {}
        planners: list[tuple[int, Agent]] = []
        default_model = view.settings.model if view.settings is not None else None
        for index, agent in view.agents:
            location = f"$.agents[{index}]"
            seen.setdefault(agent.name, []).append(index)
            if not NAME_PATTERN.fullmatch(agent.name):
                out.add(
                    "plan.value",
                    f"{location}.name",
                    f"agent name {_show(agent.name)} must match {NAME_PATTERN.pattern}",
                )
            if agent.role == "planner":
                planners.append((index, agent))
            if agent.model is not None and not agent.model.strip():
                out.add("plan.value", f"{location}.model", "must not be empty")
            elif (
                agent.model is None
                and not default_model
                and view.settings is not None
                and index not in view.lossy_agents
            ):
                out.add(
                    "plan.schema",
                    location,
                    f"agent {_show(agent.name)} has no model",
                    "set model here or in [settings]",
                )
            if agent.limits is not None:
                self.check_budget(agent.limits, f"{location}.limits")
        for name, indices in seen.items():
            if len(indices) > 1:
                self.report_duplicate("agent name", name, "$.agents", indices)

        if len(planners) > 1:
            listing = ", ".join(f"{a.name!r} ($.agents[{i}])" for i, a in planners)
            out.add(
                "plan.planner",
                f"$.agents[{planners[1][0]}].role",
                f"{len(planners)} agents have role 'planner': {listing}",
                "a plan has at most one planner",
            )
        broken_agents = len(view.agents) < view.agent_count or bool(view.lossy_agents)
        if not planners and view.step_count == 0 and view.agent_count and not broken_agents:
            out.add(
                "plan.planner",
                "$.agents",
                "plan has no steps, so it needs a planner; no agent has role 'planner'",
                "set role = 'planner' on the agent that drives the run, or add [[steps]]",
            )

    def report_duplicate(self, what: str, name: str, base: str, indices: list[int]) -> None:
        places = ", ".join(f"{base}[{i}]" for i in indices)
        times = "twice" if len(indices) == 2 else f"{len(indices)} times"
        self.out.add(
            "plan.duplicate",
            f"{base}[{indices[1]}]",
            f"{what} {_show(name)} defined {times} ({places})",
        )

    # -- steps ---------------------------------------------------------------------------------

    def check_steps(self) -> None:
        view = self.view
        agent_names = list(dict.fromkeys(a.name for _, a in view.agents))
        valid_ids = {step.id for _, step in view.steps}
        step_ids = valid_ids | view.broken_step_ids
        seen: dict[str, list[int]] = {}
        graph: dict[str, set[str]] = {}
        declared: dict[str, int] = {}
        for index, step in view.steps:
            location = f"$.steps[{index}]"
            seen.setdefault(step.id, []).append(index)
            declared.setdefault(step.id, index)
            self.check_step_fields(step, location, agent_names)
            edges = graph.setdefault(step.id, set())
            edges |= self.check_dependencies(step, location, step_ids, valid_ids)
        for step_id, indices in seen.items():
            if len(indices) > 1:
                self.report_duplicate("step id", step_id, "$.steps", indices)

        cyclic = self.check_cycles(graph, declared)
        self.check_final_step(graph, step_ids, check_reach=view.complete and not cyclic)
        self.check_references(graph)
        if view.complete and view.steps:
            self.check_unused_agents()

    def check_step_fields(self, step: Step, location: str, agent_names: list[str]) -> None:
        """A step's id, task and agent."""
        out = self.out
        if not NAME_PATTERN.fullmatch(step.id):
            out.add(
                "plan.value",
                f"{location}.id",
                f"step id {_show(step.id)} must match {NAME_PATTERN.pattern}",
            )
        if not step.task.strip():
            out.add("plan.value", f"{location}.task", f"step {_show(step.id)} has an empty task")
        if step.agent not in set(agent_names) | self.view.broken_agent_names:
            defined = ", ".join(agent_names) or "none"
            out.add(
                "plan.unknown_agent",
                f"{location}.agent",
                f"step {_show(step.id)} uses agent {_show(step.agent)}; defined agents: {defined}",
                _did_you_mean(step.agent, agent_names),
            )

    def check_dependencies(
        self, step: Step, location: str, step_ids: set[str], valid_ids: set[str]
    ) -> set[str]:
        """A step's ``depends_on``: no duplicate, not itself, known steps. Returns the
        dependencies that are valid steps (the step's edges in the graph)."""
        out = self.out
        edges: set[str] = set()
        listed: set[str] = set()
        for position, dependency in enumerate(step.depends_on):
            where = f"{location}.depends_on[{position}]"
            if dependency in listed:
                out.add(
                    "plan.duplicate",
                    where,
                    f"step {_show(step.id)} lists {_show(dependency)} twice in depends_on",
                    severity="warning",
                )
            listed.add(dependency)
            if dependency == step.id:
                out.add("plan.cycle", where, f"step {_show(step.id)} depends on itself")
            elif dependency not in step_ids:
                out.add(
                    "plan.unknown_step",
                    where,
                    f"step {_show(step.id)} depends on unknown step {_show(dependency)}",
                    _did_you_mean(dependency, step_ids),
                )
            elif dependency in valid_ids:
                edges.add(dependency)
        return edges

    def check_final_step(
        self, graph: dict[str, set[str]], step_ids: set[str], *, check_reach: bool
    ) -> None:
        """final_step must exist; steps it does not need are never scheduled (a warning)."""
        final = self.view.final_step  # None when unset (or of the wrong type: reported)
        if final is None:
            return
        if final not in step_ids:
            self.out.add(
                "plan.unknown_step",
                "$.final_step",
                f"final_step names unknown step {_show(final)}",
                _did_you_mean(final, step_ids),
            )
            return
        if not check_reach:
            return
        needed = _ancestors(graph, final)
        unreachable = [s.id for _, s in self.view.steps if s.id not in needed]
        if unreachable:
            names = ",".join(_show(s) for s in unreachable)
            verb = "steps {} are" if len(unreachable) > 1 else "step {} is"
            self.out.add(
                "plan.unreachable",
                "$.steps",
                f"{verb.format(names)} never scheduled",
                f"final_step {final!r} does not depend on them",
                severity="warning",
            )

    def check_cycles(self, graph: dict[str, set[str]], declared: dict[str, int]) -> bool:
        """Report one cycle per cyclic region (graphlib finds one at a time)."""
        remaining = {node: set(edges) for node, edges in graph.items()}
        found = False
        while True:
            try:
                graphlib.TopologicalSorter(remaining).prepare()
            except graphlib.CycleError as exc:
                # graphlib lists each node before the one that depends on it; reverse so
                # that "a → b" reads "a depends on b", and start at the first-declared step.
                cycle = list(reversed(exc.args[1]))[:-1]
                start = min(range(len(cycle)), key=lambda i: declared.get(cycle[i], 0))
                cycle = cycle[start:] + cycle[:start]
                first = cycle[0]
                position = self.dependency_position(first, cycle[1])
                self.out.add(
                    "plan.cycle",
                    f"$.steps[{declared.get(first, 0)}].depends_on[{position}]",
                    "dependency cycle: " + " → ".join([*cycle, first]),
                    "remove one of these dependencies",
                )
                found = True
                for node in cycle:
                    remaining.pop(node, None)
                for edges in remaining.values():
                    edges.difference_update(cycle)
            else:
                return found

    def dependency_position(self, step_id: str, dependency: str) -> int:
        for _, step in self.view.steps:
            if step.id == step_id and dependency in step.depends_on:
                return step.depends_on.index(dependency)
        return 0  # pragma: no cover - the cycle came from these edges

    def check_references(self, graph: dict[str, set[str]]) -> None:
        view, out = self.view, self.out
        step_ids = {step.id for _, step in view.steps} | view.broken_step_ids
        for index, step in view.steps:
            ancestors = _ancestors(graph, step.id) - {step.id}
            for reference in task_references(step.task):
                location = f"$.steps[{index}].task"
                if reference.kind == "invalid":
                    out.add(
                        "plan.reference",
                        location,
                        f"invalid reference {_show(reference.text)} in step {_show(step.id)}",
                        "use {{goal}} or {{steps.ID.result}}",
                    )
                elif reference.step is None:
                    continue
                elif reference.step not in step_ids:
                    out.add(
                        "plan.unknown_step",
                        location,
                        f"step {_show(step.id)} references unknown step {_show(reference.step)}",
                        _did_you_mean(reference.step, step_ids),
                    )
                elif reference.step not in ancestors and reference.step in graph:
                    out.add(
                        "plan.reference",
                        location,
                        f"step {_show(step.id)} uses the result of {_show(reference.step)} "
                        "but does not depend on it",
                        f"add {reference.step!r} to depends_on",
                    )

    def check_unused_agents(self) -> None:
        view = self.view
        if any(agent.role == "planner" for _, agent in view.agents):
            return  # the planner may delegate to any worker
        used = {step.agent for _, step in view.steps}
        for index, agent in view.agents:
            if agent.name not in used:
                self.out.add(
                    "plan.unused_agent",
                    f"$.agents[{index}]",
                    f"agent {_show(agent.name)} runs no step and there is no planner to "
                    "delegate to it",
                    severity="warning",
                )

    # -- model settings ------------------------------------------------------------------------

    def check_model_settings(self) -> None:
        """Ranges, metadata limits and tool_choice, in [settings] and each agent's settings.

        ``tool_choice`` naming a tool must name one the agent can call; ``required`` or a
        tool name on an agent without tools could never be met.
        """
        view = self.view
        plan_wide = view.settings
        if plan_wide is not None:
            self.check_options(plan_wide, "$.settings")
            choice = plan_wide.tool_choice
            if choice is not None and _choice_name(choice) is not None:
                self.out.add(
                    "plan.value",
                    "$.settings.tool_choice",
                    f"tool_choice {_show(_choice_name(choice))} names a tool, which not every "
                    "agent has",
                    _did_you_mean(str(_choice_name(choice)), TOOL_CHOICE_MODES)
                    or "set it in the settings of the agent that has the tool, or use "
                    + " | ".join(TOOL_CHOICE_MODES),
                )
        for index, agent in view.agents:
            location = f"$.agents[{index}].settings"
            own = agent.settings
            if own is not None:
                self.check_options(own, location)
            choice = own.tool_choice if own is not None else None
            where = f"{location}.tool_choice"
            if choice is None and plan_wide is not None and plan_wide.tool_choice is not None:
                choice, where = plan_wide.tool_choice, "$.settings.tool_choice"
            if choice is None or not self.tools_known(agent):
                continue
            tools = self.agent_tools(agent)
            name = _choice_name(choice)
            if name is not None and (
                where == "$.settings.tool_choice" or not TOOL_NAME_PATTERN.fullmatch(name)
            ):
                continue  # reported once, by check_options or above
            if name is not None and name not in tools:
                listed = ", ".join(tools) or "none"
                self.out.add(
                    "plan.tool",
                    where,
                    f"tool_choice names {_show(name)}, which agent {_show(agent.name)} cannot "
                    f"call; its tools: {listed}",
                    _did_you_mean(name, [*tools, *TOOL_CHOICE_MODES]),
                )
            elif (name is not None or choice == "required") and not tools:
                self.out.add(
                    "plan.value",
                    where,
                    f"agent {_show(agent.name)} has no tools, so tool_choice "
                    f"{_show(name or choice)} can never be met",
                    "give it tools, or use 'auto' or 'none'",
                )

    def check_options(self, options: ModelOptions, location: str) -> None:
        out = self.out
        for field, (low, high) in SETTING_LIMITS.items():
            value = getattr(options, field)
            if value is None or not math.isfinite(value):
                continue  # non-finite numbers are reported by the schema walk
            if not low <= value <= high:
                out.add(
                    "plan.value",
                    f"{location}.{field}",
                    f"must be in {_number(low)}..{_number(high)}, got {_number(value)}",
                )
        if options.metadata is not None:
            if len(options.metadata) > MAX_METADATA:
                out.add(
                    "plan.value",
                    f"{location}.metadata",
                    f"at most {MAX_METADATA} pairs, got {len(options.metadata)}",
                )
            for key, value in options.metadata.items():
                where = _key_location(f"{location}.metadata", key)
                if not 0 < len(key) <= 64:
                    out.add("plan.value", where, "metadata keys must be 1 to 64 characters")
                if len(value) > 512:
                    out.add("plan.value", where, f"at most 512 characters, got {len(value)}")
        if options.prompt_cache_key is not None and not options.prompt_cache_key.strip():
            out.add("plan.value", f"{location}.prompt_cache_key", "must not be empty")
        choice = options.tool_choice
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind != "function" or set(choice) != {"type", "name"}:
                out.add(
                    "plan.value",
                    f"{location}.tool_choice",
                    f"tool_choice {_show(choice)} is not supported",
                    'use auto | none | required, a tool name, or {type = "function", '
                    'name = "TOOL"}',
                )
        elif (
            isinstance(choice, str)
            and choice not in TOOL_CHOICE_MODES
            and not TOOL_NAME_PATTERN.fullmatch(choice)
        ):
            out.add(
                "plan.value",
                f"{location}.tool_choice",
                f"tool_choice {_show(choice)} is neither a mode nor a tool name",
                _did_you_mean(choice, TOOL_CHOICE_MODES)
                or "use auto | none | required, or a tool name",
            )

    def tools_known(self, agent: Agent) -> bool:
        """Whether every tool entry of ``agent`` decoded (else its list is incomplete); an
        agent with MCP servers has tools known only once they are listed, at run start."""
        return not agent.mcp_servers and all(
            ":" in entry or entry in self.view.tools for entry in agent.tools
        )

    def agent_tools(self, agent: Agent) -> list[str]:
        """The names of the tools ``agent``'s model sees, the runtime's included."""
        names = [tool_name_of_path(e) if ":" in e else e for e in agent.tools]
        if agent.role == "planner" and self.view.step_count == 0:
            # The runtime's delegation tools (actors.planner, which plans cannot import).
            names.extend(
                ("delegate_to_" + a.name)[:64] for _, a in self.view.agents if a.role == "worker"
            )
            names.append("finish")
        return list(dict.fromkeys(names))

    # -- typed outputs -------------------------------------------------------------------------

    def check_outputs(self) -> None:
        """Each output_type imports (a type path) or compiles (a JSON Schema)."""
        for index, agent in self.view.agents:
            declared = agent.output_type
            if declared is None:
                continue
            location = f"$.agents[{index}].output_type"
            if isinstance(declared, str):
                if not IMPORT_PATH.fullmatch(declared):
                    self.out.add(
                        "plan.output",
                        location,
                        f"{_show(declared)} is not an import path",
                        "expected 'package.module:Type', or a JSON Schema table",
                    )
                    continue
                module = declared.partition(":")[0]
                if not self.module_allowed(module):
                    allowed = ", ".join(self.allowed_modules or ()) or "none"
                    self.out.add(
                        "plan.output",
                        location,
                        f"output type {_show(declared)} is not in the allow-list",
                        f"allowed modules: {allowed}",
                    )
                    continue
                if not self.import_tools:
                    continue
            try:
                output_type_of(declared)
            except OutputError as exc:
                where = location + exc.location if isinstance(declared, dict) else location
                self.out.add("plan.output", where, exc.message, exc.suggestion)

    def module_allowed(self, module: str) -> bool:
        return self.allowed_modules is None or any(
            module == allowed or module.startswith(allowed + ".")
            for allowed in self.allowed_modules
        )

    # -- tools ---------------------------------------------------------------------------------

    def check_approvals(self) -> None:
        """Each pattern is ``tool`` or ``agent:tool``; a name without wildcards must exist."""
        view = self.view
        if view.approvals is None:
            return
        names = _Names.of_view(view)
        for field in ("allow", "deny"):
            for position, pattern in enumerate(getattr(view.approvals, field)):
                problem = names.pattern_problem(pattern, check_tools=view.complete)
                if problem is not None:
                    self.out.add(problem[0], f"$.approvals.{field}[{position}]", *problem[1:])

    def check_tools(self) -> None:
        view, out = self.view, self.out
        for name, config in view.tools.items():
            location = _key_location("$.tools", name)
            if not TOOL_NAME_PATTERN.fullmatch(name):
                out.add(
                    "plan.tool",
                    location,
                    f"tool name {_show(name)} must match {TOOL_NAME_PATTERN.pattern}",
                    "name the tool by its function name and put the import path in path",
                )
            self.check_tool_options(config, location)
            self.check_import(
                config.path, f"{location}.path", f"tool {_show(name)} uses", tool_name=name
            )
        used = self.check_agent_tools()
        for name in view.tools:
            if name not in used and view.complete:
                out.add(
                    "plan.unused_tool",
                    _key_location("$.tools", name),
                    f"tool {_show(name)} is listed by no agent",
                    severity="warning",
                )

    def check_agent_tools(self) -> set[str]:
        """Each agent's tool list: every entry resolves, no name twice, no name for two
        functions. Returns the names of ``[tools]`` some agent uses."""
        used: set[str] = set()
        paths_by_name: dict[str, tuple[str, str]] = {}
        for index, agent in self.view.agents:
            names_here: dict[str, int] = {}
            for position, entry in enumerate(agent.tools):
                location = f"$.agents[{index}].tools[{position}]"
                resolved = self.resolve_tool_entry(agent, entry, location, used)
                if resolved is None:
                    continue
                name, path = resolved
                previous = paths_by_name.setdefault(name, (path, location))
                if name in names_here and previous[0] == path:
                    self.out.add(
                        "plan.duplicate",
                        location,
                        f"agent {_show(agent.name)} lists tool {_show(name)} twice "
                        f"($.agents[{index}].tools[{names_here[name]}])",
                    )
                names_here.setdefault(name, position)
                if previous[0] != path:
                    self.out.add(
                        "plan.duplicate",
                        location,
                        f"tool name {_show(name)} means both {_show(previous[0])} "
                        f"({previous[1]}) and {_show(path)}",
                        "give one of them another name under [tools]",
                    )
        return used

    def resolve_tool_entry(
        self, agent: Agent, entry: str, location: str, used: set[str]
    ) -> tuple[str, str] | None:
        """An agent's tool entry (an import path or a ``[tools]`` name) as its name and
        import path; None (reported, unless reported already) when it does not resolve.
        A ``[tools]`` name goes into ``used``."""
        view = self.view
        if ":" in entry:
            name = tool_name_of_path(entry)
            if not self.check_import(
                entry, location, f"agent {_show(agent.name)} lists", tool_name=name
            ):
                return None
            return name, entry
        if entry in view.tools:
            used.add(entry)
            return entry, view.tools[entry].path
        if entry in view.broken_tools:
            used.add(entry)
            return None
        self.out.add(
            "plan.tool",
            location,
            f"agent {_show(agent.name)} lists tool {_show(entry)} which is not registered",
            _did_you_mean(entry, view.tools)
            or "define it under [tools] or give its import path 'module:function'",
        )
        return None

    def check_tool_options(self, config: ToolConfig, location: str) -> None:
        if config.timeout is not None and math.isfinite(config.timeout):
            _, high = LIMITS["timeout"]
            if not 0 < config.timeout <= high:
                self.out.add(
                    "plan.value",
                    f"{location}.timeout",
                    f"must be in 0 < x <= {_number(high)}, got {config.timeout}",
                )
        if config.max_output is not None:
            low, high = LIMITS["max_output"]
            if not low <= config.max_output <= high:
                self.out.add(
                    "plan.value",
                    f"{location}.max_output",
                    f"must be in {_number(low)}..{_number(high)}, got {config.max_output}",
                )

    # -- MCP servers and hosted tools ----------------------------------------------------------

    def check_mcp_servers(self) -> None:
        """Each server is stdio or HTTP, with credentials only from the environment; each
        agent names defined servers."""
        view, out = self.view, self.out
        for name, server in view.mcp_servers.items():
            location = _key_location("$.mcp_servers", name)
            if not NAME_PATTERN.fullmatch(name):
                out.add(
                    "plan.value",
                    location,
                    f"MCP server name {_show(name)} must match {NAME_PATTERN.pattern}",
                )
            self.check_mcp_server(server, location)
        used: set[str] = set()
        defined = list(view.mcp_servers)
        for index, agent in view.agents:
            for position, entry in enumerate(agent.mcp_servers):
                used.add(entry)
                if entry in view.mcp_servers or entry in view.broken_mcp_servers:
                    continue
                out.add(
                    "plan.tool",
                    f"$.agents[{index}].mcp_servers[{position}]",
                    f"agent {_show(agent.name)} uses MCP server {_show(entry)}, which is not "
                    f"defined; defined: {', '.join(defined) or 'none'}",
                    _did_you_mean(entry, defined) or "define it under [mcp_servers]",
                )
        for name in view.mcp_servers:
            if name not in used and view.complete:
                out.add(
                    "plan.unused_tool",
                    _key_location("$.mcp_servers", name),
                    f"MCP server {_show(name)} is used by no agent (it is not started)",
                    severity="warning",
                )

    def check_mcp_server(self, server: McpServer, location: str) -> None:
        out = self.out
        if (server.command is None) == (server.url is None):
            out.add(
                "plan.value",
                location,
                "an MCP server needs either command (stdio) or url (streamable HTTP)"
                + (", not both" if server.command is not None else ""),
            )
        if server.command is not None and not server.command.strip():
            out.add("plan.value", f"{location}.command", "must not be empty")
        if server.url is not None:
            self.check_url(server.url, f"{location}.url", http_only=True)
            for field in ("args", "env", "cwd"):
                if getattr(server, field) not in ((), {}, None):
                    out.add(
                        "plan.value",
                        f"{location}.{field}",
                        f"{field} is for a stdio server (command); this one has a url",
                    )
        elif server.headers:
            out.add(
                "plan.value",
                f"{location}.headers",
                "headers are for an HTTP server (url); this one has a command",
            )
        for header, value in server.headers.items():
            self.check_header(header, value, _header_location(location, header))
        for key in server.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                out.add(
                    "plan.value",
                    _key_location(f"{location}.env", key),
                    f"{_show(key)} is not an environment variable name",
                )
        if not re.fullmatch(r"[A-Za-z0-9_-]{0,32}", server.prefix):
            out.add(
                "plan.value",
                f"{location}.prefix",
                f"prefix {_show(server.prefix)} must match [A-Za-z0-9_-]{{0,32}}",
            )
        for tool in (*(server.tools or ()), *server.exclude_tools, *server.side_effects):
            if not TOOL_NAME_PATTERN.fullmatch(server.prefix + tool):
                out.add(
                    "plan.value",
                    location,
                    f"tool name {_show(server.prefix + tool)} must match "
                    f"{TOOL_NAME_PATTERN.pattern}",
                )
        self.check_tool_options(
            ToolConfig(path="", timeout=server.timeout, max_output=server.max_output), location
        )

    def check_url(self, url: str, location: str, *, http_only: bool = False) -> None:
        schemes = ("http://", "https://") if http_only else _URL_SCHEMES
        if not url.startswith(schemes):
            self.out.add(
                "plan.value",
                location,
                f"{_show(url)} is not an {'http(s)' if http_only else 'http(s) or ws(s)'} URL",
            )
        elif "@" in url.split("/")[2]:
            _secret_issue(self.out, location)

    def check_header(self, header: str, value: str, location: str) -> None:
        """A header's value must come from the environment: ``${NAME}``."""
        if not ENV_REFERENCE.search(value):
            self.out.add(
                "plan.secret",
                location,
                f"header {_show(header)} is written in the plan; header values are taken "
                "from the environment",
                'write it as "${NAME}" (or "Bearer ${NAME}") and set NAME when running',
            )

    def check_hosted_tools(self) -> None:
        """Each hosted tool has a known type and what that type requires."""
        out = self.out
        for index, agent in self.view.agents:
            seen: dict[tuple[str, str], int] = {}
            for position, tool in enumerate(agent.hosted_tools):
                location = f"$.agents[{index}].hosted_tools[{position}]"
                kind = tool.get("type")
                if kind not in HOSTED_TOOL_TYPES:
                    out.add(
                        "plan.tool",
                        f"{location}.type",
                        f"hosted tool type {_show(kind)} is not supported; supported: "
                        + ", ".join(HOSTED_TOOL_TYPES),
                        _did_you_mean(kind, HOSTED_TOOL_TYPES) if isinstance(kind, str) else None,
                    )
                    continue
                label = tool.get("server_label")
                key = (str(kind).removesuffix("_preview"), str(label or ""))
                if key in seen:
                    what = f"MCP server {_show(label)}" if kind == "mcp" else _show(kind)
                    out.add(
                        "plan.duplicate",
                        location,
                        f"agent {_show(agent.name)} lists hosted tool {what} twice "
                        f"($.agents[{index}].hosted_tools[{seen[key]}])",
                    )
                seen.setdefault(key, position)
                self.check_hosted_tool(tool, str(kind), location)

    def check_hosted_tool(self, tool: dict[str, Any], kind: str, location: str) -> None:
        out = self.out
        if kind == "file_search":
            stores = tool.get("vector_store_ids")
            if not (
                isinstance(stores, list) and stores and all(isinstance(s, str) for s in stores)
            ):
                out.add(
                    "plan.tool",
                    f"{location}.vector_store_ids",
                    "file_search needs vector_store_ids, a non-empty list of ids",
                    'e.g. vector_store_ids = ["vs_..."]',
                )
        if kind != "mcp":
            return
        label = tool.get("server_label")
        if not isinstance(label, str) or not NAME_PATTERN.fullmatch(label):
            out.add(
                "plan.tool",
                f"{location}.server_label",
                f"a remote MCP server needs a server_label matching {NAME_PATTERN.pattern}",
            )
        url, connector = tool.get("server_url"), tool.get("connector_id")
        if isinstance(url, str):
            self.check_url(url, f"{location}.server_url", http_only=True)
        elif not isinstance(connector, str):
            out.add(
                "plan.tool",
                f"{location}.server_url",
                "a remote MCP server needs server_url (or a connector_id)",
            )
        approval = tool.get("require_approval", "always")
        if not (approval in ("always", "never") or isinstance(approval, dict)):
            out.add(
                "plan.value",
                f"{location}.require_approval",
                f"require_approval {_show(approval)} is not supported",
                _did_you_mean(approval, ("always", "never"))
                if isinstance(approval, str)
                else 'use "always", "never" or { never = { tool_names = [...] } }',
            )
        headers = tool.get("headers", {})
        if isinstance(headers, dict):
            for header, value in headers.items():
                where = _header_location(location, str(header))
                if not isinstance(value, str):
                    out.add("plan.schema", where, f"expected str, got {_kind(value)}")
                else:
                    self.check_header(str(header), value, where)
        authorization = tool.get("authorization")
        if isinstance(authorization, str) and not ENV_REFERENCE.search(authorization):
            self.check_header("authorization", authorization, f"{location}.authorization")

    def check_import(
        self, path: str, location: str, subject: str, *, tool_name: str | None = None
    ) -> bool:
        """Check one ``module:function`` path: syntax, allow-list, then (once) the import and,
        with ``check_tool``, that the function can be the tool ``tool_name``.

        Returns whether the path is well-formed (further checks make sense).
        """
        if not IMPORT_PATH.fullmatch(path):
            self.out.add(
                "plan.tool",
                location,
                f"{_show(path)} is not an import path",
                "expected 'package.module:function'",
            )
            return False
        module = path.partition(":")[0]
        if self.allowed_modules is not None and not any(
            module == allowed or module.startswith(allowed + ".")
            for allowed in self.allowed_modules
        ):
            allowed = ", ".join(self.allowed_modules) or "none"
            self.out.add(
                "plan.tool",
                location,
                f"{subject} tool {_show(path)} which is not in the allow-list",
                f"allowed modules: {allowed}",
            )
            return True
        if not self.import_tools:
            return True
        if path not in self._imports:
            self._imports[path] = _try_import(path, self.check_tool, tool_name)
        problem = self._imports[path]
        if problem is not None:
            self.out.add("plan.tool", location, problem[0], problem[1])
        return True


def _choice_name(choice: str | dict[str, str]) -> str | None:
    """The tool a tool_choice names, or None for a mode."""
    if isinstance(choice, dict):
        return choice.get("name")
    return None if choice in TOOL_CHOICE_MODES else choice


def _try_import(
    path: str, check_tool: ToolCheck | None = None, tool_name: str | None = None
) -> tuple[str, str | None] | None:
    """Import ``module:attribute``; None if it names a callable that ``check_tool`` (if any)
    accepts, else (message, suggestion)."""
    try:
        target = resolve_import(path)
    except ImportPathError as exc:
        return exc.message, exc.suggestion
    if not callable(target):
        return f"{path!r} is not callable (it is a {type(target).__name__})", None
    if check_tool is not None:
        problem = check_tool(target, tool_name or tool_name_of_path(path))
        if problem is not None:
            return f"{path!r}: {problem[0]}", problem[1]
    return None


def _ancestors(graph: Mapping[str, Collection[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(graph.get(node, ()))
    return seen


# -- secrets -----------------------------------------------------------------------------------


def _scan_secrets(data: Any, out: _Issues) -> None:
    """Report every string (key or value) that looks like a credential.

    Iterative, and each container is visited once: YAML aliases can make a small file
    describe an exponentially large tree.
    """
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(data, "$")]
    while stack:
        value, location = stack.pop()
        if isinstance(value, dict):
            if id(value) in seen:
                continue
            seen.add(id(value))
            for key, item in value.items():
                where = _key_location(location, key) if isinstance(key, str) else location
                if key == "headers" and isinstance(item, dict):
                    continue  # every value must come from the environment (check_header)
                if isinstance(key, str) and looks_secret(key):
                    _secret_issue(out, location)
                elif (
                    isinstance(key, str)
                    and is_secret_name(key)
                    and isinstance(item, str)
                    and item.strip()
                    and not _from_environment(item)
                ):
                    _secret_issue(out, where)
                    continue
                stack.append((item, where))
        elif isinstance(value, list | tuple):
            if id(value) in seen:
                continue
            seen.add(id(value))
            stack.extend((item, f"{location}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, str) and looks_secret(value):
            _secret_issue(out, location)


def _header_location(base: str, header: str) -> str:
    """Always the bracket form: ``headers.Authorization: ...`` reads as a credential
    assignment to the redaction of printed issues."""
    return f'{base}.headers["{header}"]'


_SCHEME: Final = re.compile(r"(?i)^\s*(?:bearer|basic|token|digest)\s+")


def _from_environment(value: str) -> bool:
    """Whether ``value`` takes its credential from the environment: ``${NAME}`` references
    with at most an authorization scheme and separators around them."""
    if not ENV_REFERENCE.search(value):
        return False
    rest = ENV_REFERENCE.sub("", _SCHEME.sub("", value))
    return re.fullmatch(r"[\s:;,./-]*", rest) is not None


def _secret_issue(out: _Issues, location: str) -> None:
    out.add(
        "plan.secret",
        location,
        "plan contains what looks like an API key or password",
        "remove it and use OPENAI_API_KEY (or a key file); never put secrets in plans",
    )
