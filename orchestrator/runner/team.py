"""The team a plan makes: one actor per agent under a supervisor, with their sessions, tools
and the wire settings of each; what each agent is (its fingerprint, for resumes); and giving
agents what a journal says they had."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final

import attrs
import msgspec

from actors.agent import AgentActor
from actors.approval import ApprovalPolicy, Approver
from actors.journal import AgentMemory
from actors.mcp import McpServers, McpToolSpec, server_print
from actors.planner import PlannerActor, WorkerInfo, delegation_tools
from actors.tools import DEFAULT_TIMEOUT as DEFAULT_TOOL_TIMEOUT, ToolExecutor, ToolRegistry
from actors.worker import WorkerActor
from orchestrator.core.budget import BudgetTracker
from orchestrator.core.connection import Connection
from orchestrator.core.observe import EventBus
from orchestrator.core.protocol.codec import encode
from orchestrator.core.protocol.events import HostedTool, ReasoningConfig, ToolDefinition
from orchestrator.core.redaction import register_secret
from orchestrator.core.router import Router
from orchestrator.core.session import ModelSettings, Session
from orchestrator.core.supervisor import Backoff, Supervisor
from orchestrator.errors import ConfigurationError, PlanError
from orchestrator.jobs.model import AgentPrint
from plans import (
    NEUTRAL_SETTINGS,
    ModelOptions,
    OutputError,
    OutputType,
    Plan,
    expand_environment,
    output_type_of,
)

if TYPE_CHECKING:
    from orchestrator.jobs.resume import AgentState as JournaledAgent

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "Opener",
    "Team",
    "attach_mcp_tools",
    "build_team",
    "fingerprints",
    "restore",
    "team_for_fingerprints",
]

DEFAULT_INSTRUCTIONS: Final = {
    "planner": (
        "You coordinate a team. Split the goal into tasks, delegate them to the workers with "
        "your delegate_to_* tools (several at once when they are independent), then call "
        "finish with the final answer built from their results."
    ),
    "worker": "You are a careful worker. Use your tools, then answer with the result.",
}
# The plan options that go to the wire as they are written (the rest are merged or reshaped).
_PLAIN_OPTIONS: Final = (
    "temperature",
    "top_p",
    "max_output_tokens",
    "parallel_tool_calls",
    "truncation",
    "service_tier",
    "prompt_cache_key",
)

Opener = Callable[[str], AbstractAsyncContextManager[Connection]]


@attrs.define(eq=False)
class Team:
    actors: dict[str, AgentActor]
    planner: PlannerActor | None
    router: Router
    supervisor: Supervisor
    # Each agent's MCP servers (their tools are known once the servers started).
    mcp: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    mcp_prints: dict[str, dict[str, str]] = attrs.field(factory=dict)
    approver: Approver | None = None
    bus: EventBus | None = None


@attrs.frozen(kw_only=True)
class _Shared:
    """What every actor of one team is given."""

    plan: Plan
    router: Router
    opener: Opener
    budget: BudgetTracker
    bus: EventBus
    registry: ToolRegistry
    approver: Approver
    job: str
    model_settings: ModelSettings | None
    environ: Mapping[str, str] | None


def build_team(
    plan: Plan,
    *,
    opener: Opener,
    budget: BudgetTracker,
    bus: EventBus,
    registry: ToolRegistry,
    intensity: int,
    period: float,
    approver: Approver,
    job: str,
    model_settings: ModelSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> Team:
    """The run's agents, not started. ``environ`` gives the ``${NAME}`` values of hosted
    tools' headers (None: left unexpanded, for a team that only says what it is)."""
    shared = _Shared(
        plan=plan,
        router=Router(events=bus),
        opener=opener,
        budget=budget,
        bus=bus,
        registry=registry,
        approver=approver,
        job=job,
        model_settings=model_settings,
        environ=environ,
    )
    outputs = {agent.name: _output_of(agent) for agent in plan.agents}
    workers = tuple(
        WorkerInfo(
            agent.name,
            agent.description,
            output=output.name if (output := outputs[agent.name]) is not None else None,
        )
        for agent in plan.workers
    )
    actors = {
        agent.name: _build_actor(shared, agent, outputs[agent.name], workers)
        for agent in plan.agents
    }
    planner = next((a for a in actors.values() if isinstance(a, PlannerActor)), None)
    return Team(
        actors,
        planner,
        shared.router,
        _supervisor(actors, planner, intensity=intensity, period=period, bus=bus),
        mcp={agent.name: agent.mcp_servers for agent in plan.agents if agent.mcp_servers},
        mcp_prints={
            agent.name: {
                f"mcp:{name}": server_print(plan.mcp_servers[name]) for name in agent.mcp_servers
            }
            for agent in plan.agents
            if agent.mcp_servers
        },
        approver=approver,
        bus=bus,
    )


def _build_actor(
    shared: _Shared, agent: Any, output: OutputType | None, workers: tuple[WorkerInfo, ...]
) -> AgentActor:
    """One agent's actor: the planner (in a plan without steps) or a worker."""
    plan = shared.plan
    executor = _tool_executor(shared, agent)
    wire_tools: tuple[ToolDefinition, ...] = (
        *(executor.tools() if executor is not None else ()),
        *_hosted_tools(agent, shared.environ),
    )
    planning = agent.role == "planner" and not plan.steps
    if planning:
        wire_tools = (
            *wire_tools,
            *delegation_tools(
                workers,
                answer_schema=output.schema if output is not None else None,
                strict=output.strict if output is not None else True,
            ),
        )
    session = Session(
        model=plan.model_for(agent),
        instructions=agent.instructions or DEFAULT_INSTRUCTIONS[agent.role],
        tools=wire_tools,
        store=plan.settings.store,
        settings=session_settings(plan.settings_for(agent), shared.model_settings, output),
    )
    common: dict[str, Any] = {
        "role": agent.role,
        "router": shared.router,
        "open_connection": shared.opener,
        "tools": executor,
        "budget": shared.budget,
        "events": shared.bus,
        "memory": AgentMemory(agent.name, shared.job),
        "output": output,
        "approver": shared.approver,
    }
    if planning:
        return PlannerActor(agent.name, session=session, workers=workers, **common)
    return WorkerActor(
        agent.name,
        session=session,
        fresh_context=bool(plan.steps) and plan.context_for(agent) == "step",
        **common,
    )


def _tool_executor(shared: _Shared, agent: Any) -> ToolExecutor | None:
    """The agent's plan tools, registered with the run's registry (once per name), and the
    executor that runs them for this agent; None for an agent without plan tools."""
    tools = shared.plan.tools_for(agent)
    for name, config in tools.items():
        if name not in shared.registry:
            shared.registry.add(
                config.path,
                name=name,
                timeout=config.timeout,
                max_output=config.max_output,
                side_effect=config.side_effect,
                description=config.description,
            )
    if not tools:
        return None
    return shared.registry.executor(
        agent.name, allowed=tuple(tools), bus=shared.bus, approver=shared.approver
    )


def _supervisor(
    actors: dict[str, AgentActor],
    planner: PlannerActor | None,
    *,
    intensity: int,
    period: float,
    bus: EventBus,
) -> Supervisor:
    # Workers first, the planner last: it can delegate as soon as it is up, and it is the
    # first to stop (shutdown runs in reverse start order).
    ordered = sorted(actors.values(), key=lambda actor: actor is planner)
    return Supervisor(
        "run",
        [actor.child_spec() for actor in ordered],
        strategy="one_for_one",
        intensity=intensity,
        period=period,
        backoff=Backoff(0.5, 2.0, 10.0),
        events=bus,
    )


def team_for_fingerprints(plan: Plan, model_settings: ModelSettings | None = None) -> Team:
    """The team a plan makes, never started: what its agents are (tools imported)."""

    def no_connection(agent: str) -> AbstractAsyncContextManager[Connection]:
        raise AssertionError("a fingerprint team never connects")  # pragma: no cover

    return build_team(
        plan,
        opener=no_connection,
        budget=BudgetTracker(),
        bus=EventBus(),
        registry=ToolRegistry(),
        intensity=1,
        period=1.0,
        approver=ApprovalPolicy(),
        job="",
        model_settings=model_settings,
    )


def _output_of(agent: Any) -> OutputType | None:
    """The agent's declared output, resolved (a validated plan's always resolves)."""
    if agent.output_type is None:
        return None
    try:
        return output_type_of(agent.output_type)
    except OutputError as exc:  # pragma: no cover - validation reports it first
        raise PlanError(f"agent {agent.name!r}: output_type: {exc}") from None


def session_settings(
    options: ModelOptions, base: ModelSettings | None, output: OutputType | None
) -> ModelSettings:
    """The wire settings of one agent: its plan options (its own over the plan's) over
    ``run(model_settings=...)``, field by field; ``reasoning`` and ``metadata`` merge."""
    fields: dict[str, Any] = {}
    if base is not None:
        fields = {
            name: getattr(base, name)
            for name in base.__struct_fields__
            if not isinstance(getattr(base, name), msgspec.UnsetType)
        }
    for name in _PLAIN_OPTIONS:
        value = getattr(options, name)
        if value is not None:
            fields[name] = value
    if options.reasoning is not None:
        below = fields.get("reasoning") or ReasoningConfig()
        effort, summary = options.reasoning.effort, options.reasoning.summary
        fields["reasoning"] = ReasoningConfig(
            effort=effort if effort is not None else below.effort,
            summary=summary if summary is not None else below.summary,
        )
    if options.metadata is not None:
        fields["metadata"] = {**fields.get("metadata", {}), **options.metadata}
    choice = options.tool_choice
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        choice = {"type": "function", "name": choice}
    if choice is not None:
        fields["tool_choice"] = choice
    _set_text(fields, options, output)
    if options.max_tool_calls is not None:
        fields["max_tool_calls"] = options.max_tool_calls
    return ModelSettings(**fields)


def _set_text(fields: dict[str, Any], options: ModelOptions, output: OutputType | None) -> None:
    """``text``: the verbosity of the plan and the format of the declared output, over what
    ``fields`` had."""
    text = dict(fields.get("text") or {})
    if options.verbosity is not None:
        text["verbosity"] = options.verbosity
    if output is not None:
        text["format"] = output.text_format()
    if text:
        fields["text"] = text


def _hosted_tools(agent: Any, environ: Mapping[str, str] | None) -> list[HostedTool]:
    """The agent's hosted tools as sent: header values taken from the environment (and
    known to the redactor); ``code_interpreter`` gets ``container = {type = "auto"}``
    unless it names one. The plan's own text stays the tool's label (its fingerprint)."""
    tools = []
    for written in agent.hosted_tools:
        data = dict(written)
        if data.get("type") == "code_interpreter":
            data.setdefault("container", {"type": "auto"})
        where = f"agent {agent.name!r}: hosted tool {data.get('server_label') or data['type']}"
        if environ is not None:
            _expand_credentials(data, environ, where)
        tools.append(HostedTool(data, label=dict(written)))
    return tools


def _expand_credentials(data: dict[str, Any], environ: Mapping[str, str], where: str) -> None:
    """A hosted tool's header values and authorization, ``${NAME}`` taken from ``environ``,
    each made known to the redactor."""
    headers = data.get("headers")
    if isinstance(headers, dict):
        data["headers"] = {
            key: expand_environment(value, environ, what=f"{where}: header {key}")
            for key, value in headers.items()
        }
        for value in data["headers"].values():
            register_secret(value)
    if isinstance(data.get("authorization"), str):
        data["authorization"] = expand_environment(
            data["authorization"], environ, what=f"{where}: authorization"
        )
        register_secret(data["authorization"])


def attach_mcp_tools(team: Team, servers: McpServers, registry: ToolRegistry) -> None:
    """Give each agent the tools of its MCP servers: registered, allowed, offered.

    Raises:
        ConfigurationError: a tool's name is already one of the agent's tools (set a
            ``prefix``), or the plan would lower a tool's side-effect class.
    """
    for name, server_names in team.mcp.items():
        actor = team.actors[name]
        specs = servers.specs(server_names, default_timeout=DEFAULT_TOOL_TIMEOUT)
        _register_mcp_tools(name, actor, specs, registry)
        names = [spec.name for spec in specs]
        if actor.tools is None:
            actor.tools = registry.executor(
                name, allowed=names, bus=team.bus, approver=team.approver
            )
            actor.tools.memory = actor.memory
        else:
            allowed = actor.tools.allowed
            actor.tools.allowed = None if allowed is None else allowed | frozenset(names)
        actor.session.tools = (*[spec.to_wire() for spec in specs], *actor.session.tools)


def _register_mcp_tools(
    name: str, actor: AgentActor, specs: list[McpToolSpec], registry: ToolRegistry
) -> None:
    """Register the MCP tools of agent ``name`` with the run's registry, refusing a name
    that already means another tool of the agent or of the run."""
    taken = {
        str(tool.name): "its own tools"
        for tool in actor.session.tools
        if not isinstance(tool, HostedTool)
    }
    for spec in specs:
        owner = taken.get(spec.name)
        if owner is not None:
            raise ConfigurationError(
                f"agent {name!r}: tool {spec.name!r} of MCP server {spec.server.name!r} has "
                f"the name of a tool of {owner}; give the server a prefix in the plan",
                code="plan.tool",
            )
        taken[spec.name] = f"MCP server {spec.server.name!r}"
        existing = registry.get(spec.name)
        if existing is None:
            registry.add(spec)
        elif not (
            isinstance(existing, McpToolSpec)
            and existing.server is spec.server
            and existing.remote_name == spec.remote_name
        ):
            raise ConfigurationError(
                f"agent {name!r}: tool name {spec.name!r} means both a tool of MCP server "
                f"{spec.server.name!r} and another tool of the run; give the server a "
                "prefix in the plan",
                code="plan.tool",
            )


def fingerprints(team: Team) -> dict[str, AgentPrint]:
    """What each agent is, as far as a resume must find it unchanged."""
    prints: dict[str, AgentPrint] = {}
    for name, actor in team.actors.items():
        session = actor.session
        tools = _tool_prints(actor)
        tools.update(team.mcp_prints.get(name, {}))
        output = actor.output
        prints[name] = AgentPrint(
            role=actor.role or "worker",
            model=session.model,
            instructions=session.instructions or "",
            store=session.store,
            tools=tools,
            context="step" if actor.fresh_context else "agent",
            settings=_settings_print(session.settings),
            output=""
            if not isinstance(output, OutputType)
            else f"{output.name}:"
            + hashlib.sha256(msgspec.json.encode(output.schema, order="sorted")).hexdigest()[:16],
        )
    return prints


def _tool_prints(actor: AgentActor) -> dict[str, str]:
    """Each tool the agent is offered: its side-effect class and a hash of its definition."""
    tools: dict[str, str] = {}
    for tool in actor.session.tools:
        if isinstance(tool, HostedTool):
            # Hosted tools by what the plan wrote (never a header taken from the
            # environment): the service runs them, so they have no side-effect class.
            key = f"hosted:{tool.type}:{tool.label.get('server_label', '')}"
            tools[key] = "hosted:" + hashlib.sha256(encode(tool.label)).hexdigest()[:16]
            continue
        tools[str(tool.name)] = (
            f"{actor.side_effect_of(str(tool.name))}:"
            + hashlib.sha256(encode(tool)).hexdigest()[:16]
        )
    return tools


def _settings_print(settings: ModelSettings) -> str:
    """The settings that change what the model does, as canonical JSON (``""``: none).
    Billing and bookkeeping (``NEUTRAL_SETTINGS``) may change on resume; the output format
    is in the print's ``output``."""
    fields = {
        name: value
        for name, value in msgspec.to_builtins(settings).items()
        if name not in NEUTRAL_SETTINGS
    }
    text = fields.pop("text", None)
    if isinstance(text, dict):
        text.pop("format", None)
        if text:
            fields["text"] = text
    return msgspec.json.encode(fields, order="sorted").decode() if fields else ""


def restore(team: Team, states: Mapping[str, JournaledAgent], budget: BudgetTracker) -> None:
    """Give every agent the conversation, memory and usage its journal describes."""
    for name, state in states.items():
        actor = team.actors.get(name)
        if actor is None:
            continue
        actor.session.restore(
            list(state.transcript), turns=state.turns, last_response_id=state.last_response_id
        )
        actor.memory = AgentMemory.from_journal(
            name,
            actor.memory.job,
            state.turn_entries,
            state.calls,
            state.replies,
            sink=actor.memory.sink,
        )
        if actor.tools is not None:
            actor.tools.memory = actor.memory
        budget.preload(name, state.turns, state.input_tokens, state.output_tokens)
