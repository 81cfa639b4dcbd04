"""``run(plan, goal)``: the top layer, wiring plans, actors, the supervisor and budgets.

A run starts one actor per agent of the plan under a supervisor, each actor with its own
connection, and then either

* **delegates** (no steps in the plan): the goal goes to the planner, whose delegation tools
  route tasks to the workers (in parallel when one response delegates several times), until
  it finishes with the answer; or
* **follows the steps**: a DAG whose independent steps run in parallel, each step's task
  rendered with the results of the steps it depends on.

Without an API key the run uses the embedded server in-process (the result says so). Budgets
(turns, tokens, wall-clock; per run and per agent) and a ``stop`` event end the run cleanly
with the reason and the partial results; nothing raises for them.

Every run is a durable job unless ``store=None``: its journal (``orchestrator.jobs``) records
each turn, tool call, routed message and step as it happens, and ``run(resume=JOB)`` continues
a job that was interrupted, crashed or killed, from what was journaled: completed turns are not
sent again, completed tools and steps do not run again, budgets go on from what was spent.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import msgspec
import trio
from loguru import logger

from actors.agent import AgentActor, Assignment, AssignmentResult
from actors.approval import ApprovalPolicy, Approver
from actors.journal import AgentMemory, MessageEntry
from actors.mcp import McpServers, McpToolSpec, server_print
from actors.planner import PlannerActor, WorkerInfo, delegation_tools
from actors.tools import (
    DEFAULT_TIMEOUT as DEFAULT_TOOL_TIMEOUT,
    ToolRegistry,
    ToolRepairBudgetExceeded,
    check_definition,
)
from actors.worker import WorkerActor
from orchestrator.core.budget import BudgetLimits, BudgetTracker
from orchestrator.core.connection import (
    Connection,
    ConnectionSettings,
    ConnectionStatistics,
    Connector,
    open_connection,
    resolve_api_key,
    resolve_endpoint,
)
from orchestrator.core.failpoints import crash_point
from orchestrator.core.logging import Secret, redact
from orchestrator.core.observe import (
    EventBus,
    RunAgent,
    RunFinished,
    RunStarted,
    RuntimeEvent,
    StepFinished,
    StepStarted,
    TaskStarted,
    capped,
)
from orchestrator.core.protocol.codec import encode
from orchestrator.core.protocol.events import HostedTool, Item, ReasoningConfig
from orchestrator.core.redaction import register_secret
from orchestrator.core.router import Router
from orchestrator.core.session import ModelSettings, Session
from orchestrator.core.supervisor import Backoff, Supervisor
from orchestrator.errors import (
    ActorDead,
    BudgetExceeded,
    CallsParked,
    ConfigurationError,
    ConnectionLost,
    InternalError,
    JobLost,
    JobNotResumable,
    JournalError,
    OrchestratorError,
    PlanDiverged,
    PlanError,
    ServerError,
    StepsFailed,
)
from orchestrator.jobs.journal import Journal, clamp_wall_clock
from orchestrator.jobs.model import (
    DRIVEN,
    AgentPrint,
    Claim,
    JobJournal,
    JobRecord,
    JobStatus,
    NewJob,
    Owner,
    StepRecord,
    owner_alive,
)
from orchestrator.jobs.resume import (
    DEFAULT_MAX_RECOVERIES,
    AgentState as JournaledAgent,
    decide_claim,
    parked_calls,
    plan_changes,
    rebuild,
)
from orchestrator.jobs.store import JobStore, open_store
from plans import (
    NEUTRAL_SETTINGS,
    ModelOptions,
    OutputError,
    OutputType,
    Plan,
    check_plan,
    expand_environment,
    load_plan,
    output_type_of,
    render_task,
    result_steps,
    scheduled_steps,
    task_references,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = [
    "DEFAULT_STORE",
    "AgentReport",
    "EmbeddedServer",
    "FailureReport",
    "ParkedCall",
    "RunResult",
    "RunSettings",
    "RunStatus",
    "StepReport",
    "run",
    "submit",
]

RunStatus = Literal[
    "completed",
    "partial",
    "budget_exceeded",
    "failed",
    "interrupted",
    "needs_attention",
    "cancelled",
]


class _DefaultStore:
    """The default of ``run(store=...)``: ``$ORCHESTRATOR_STORE`` or the per-user state file."""

    def __repr__(self) -> str:
        return "DEFAULT_STORE"


DEFAULT_STORE: Final = _DefaultStore()
StoreSpec = JobStore | str | os.PathLike[str] | _DefaultStore | None

DEFAULT_INSTRUCTIONS: Final = {
    "planner": (
        "You coordinate a team. Split the goal into tasks, delegate them to the workers with "
        "your delegate_to_* tools (several at once when they are independent), then call "
        "finish with the final answer built from their results."
    ),
    "worker": "You are a careful worker. Use your tools, then answer with the result.",
}
STEP_ATTEMPTS: Final = 2
RESTART_WAIT: Final = 60.0


class ConnectionReport(msgspec.Struct, frozen=True, kw_only=True):
    sockets_opened: int
    rotations: int
    warmups: int
    reconnects: int
    replays: int
    retries: int
    failures: int
    bytes_sent: int
    bytes_received: int
    events_received: int
    age: float

    @classmethod
    def of(cls, stats: ConnectionStatistics) -> ConnectionReport:
        return cls(
            sockets_opened=stats.sockets_opened,
            rotations=stats.rotations,
            warmups=stats.warmups,
            reconnects=stats.reconnects,
            replays=stats.replays,
            retries=stats.retries,
            failures=stats.failures,
            bytes_sent=stats.bytes_sent,
            bytes_received=stats.bytes_received,
            events_received=stats.events_received,
            age=stats.age,
        )


class AgentReport(msgspec.Struct, frozen=True, kw_only=True):
    """One agent's share of a run."""

    name: str
    role: str
    model: str
    turns: int
    input_tokens: int
    output_tokens: int
    tool_calls: int
    tasks: int
    restarts: int
    connection: ConnectionReport | None
    transcript: list[Item]
    busy: float = 0.0
    model_time: float = 0.0


class StepReport(msgspec.Struct, frozen=True, kw_only=True):
    """One scheduled step. ``status``: ``completed``; ``failed``; ``skipped`` (a dependency
    failed); ``cut`` (it was running when the run ended early); ``not_started`` (the run
    ended before its agent took it up). ``duration``: from when its agent took it up;
    ``waited``: before that, in the agent's mailbox behind other work."""

    id: str
    agent: str
    status: Literal["completed", "failed", "skipped", "cut", "not_started"]
    result: str | None = None
    error: str | None = None
    duration: float = 0.0
    waited: float = 0.0


class FailureReport(msgspec.Struct, frozen=True, kw_only=True):
    """Work that failed for good while the run still reached an answer (status ``partial``).

    ``kind`` is ``delegation``: the planner asked ``agent`` (``id`` is the message id) and
    never got its answer, only the ``error``.
    """

    kind: Literal["delegation"]
    agent: str
    id: str
    task: str
    error: str


class ParkedCall(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call that may or may not have run and cannot safely run again: a person
    decides (``orchestrator jobs resolve``) before the job goes on."""

    agent: str
    turn: int
    call_id: str
    tool: str
    arguments: str
    side_effect: str
    attempt: int


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    turns: int
    input_tokens: int
    output_tokens: int
    total_tokens: int


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a run produced, whatever way it ended.

    Attributes:
        status: ``completed``; ``partial`` (an answer, but some delegated work failed for
            good: see ``failures``; the answer may be incomplete); ``budget_exceeded``;
            ``failed``; ``interrupted`` (stopped on request, or its journal became
            unavailable: resume it); ``needs_attention`` (tool calls are ``parked``, a person
            must resolve them); ``cancelled`` (``orchestrator jobs cancel``).
        job: the job id (resume with ``run(resume=job)`` or ``orchestrator jobs resume``);
            ``None`` for a run without a journal.
        answer: the final answer (``None`` unless completed or partial).
        output: the answer as the typed value, when the agent that gives it declares an
            output (the planner; in steps mode the agent of the one result step): an
            instance of its type, or plain JSON data for a plan's JSON Schema. ``answer``
            then holds its JSON.
        reason: why the run ended early, in words.
        code: a machine-readable reason (``budget.max_turns``, ``tool.repair_budget``,
            ``auth.rejected``...).
        endpoint: ``embedded`` for an offline run, else the service URL.
    """

    status: RunStatus
    job: str | None = None
    plan: str
    goal: str | None
    mode: Literal["delegate", "steps"]
    endpoint: str
    answer: str | None = None
    output: Any = None
    reason: str | None = None
    code: str | None = None
    usage: UsageReport
    agents: list[AgentReport]
    steps: list[StepReport] = msgspec.field(default_factory=list)
    failures: list[FailureReport] = msgspec.field(default_factory=list)
    parked: list[ParkedCall] = msgspec.field(default_factory=list)
    resumed: bool = False
    started_at: float
    duration: float

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def agent(self, name: str) -> AgentReport:
        return next(report for report in self.agents if report.name == name)

    def to_json(self) -> bytes:
        """The result as JSON (transcripts included), for ``--json`` and files; redacted
        (``orchestrator.core.redaction``) like every text the runtime writes."""
        return redact(encode(self).decode()).encode()


@attrs.define(eq=False)
class _Team:
    actors: dict[str, AgentActor]
    planner: PlannerActor | None
    router: Router
    supervisor: Supervisor
    # Each agent's MCP servers (their tools are known once the servers started).
    mcp: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    mcp_prints: dict[str, dict[str, str]] = attrs.field(factory=dict)
    approver: Approver | None = None
    bus: EventBus | None = None


def _limits(budget: Any) -> BudgetLimits:
    return BudgetLimits(
        max_turns=budget.max_turns, max_tokens=budget.max_tokens, wall_clock=budget.wall_clock
    )


def _output_of(plan: Plan, agent: Any) -> OutputType | None:
    """The agent's declared output, resolved (a validated plan's always resolves)."""
    if agent.output_type is None:
        return None
    try:
        return output_type_of(agent.output_type)
    except OutputError as exc:  # pragma: no cover - validation reports it first
        raise PlanError(f"agent {agent.name!r}: output_type: {exc}") from None


def _session_settings(
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
    for name in (
        "temperature",
        "top_p",
        "max_output_tokens",
        "parallel_tool_calls",
        "truncation",
        "service_tier",
        "prompt_cache_key",
    ):
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
    text = dict(fields.get("text") or {})
    if options.verbosity is not None:
        text["verbosity"] = options.verbosity
    if output is not None:
        text["format"] = output.text_format()
    if text:
        fields["text"] = text
    if options.max_tool_calls is not None:
        fields["max_tool_calls"] = options.max_tool_calls
    return ModelSettings(**fields)


def _build_team(
    plan: Plan,
    *,
    opener: Callable[[str], AbstractAsyncContextManager[Connection]],
    budget: BudgetTracker,
    bus: EventBus,
    registry: ToolRegistry,
    intensity: int,
    period: float,
    approver: Approver,
    job: str,
    model_settings: ModelSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> _Team:
    """The run's agents, not started. ``environ`` gives the ``${NAME}`` values of hosted
    tools' headers (None: left unexpanded, for a team that only says what it is)."""
    router = Router(events=bus)
    actors: dict[str, AgentActor] = {}
    planner: PlannerActor | None = None
    outputs = {agent.name: _output_of(plan, agent) for agent in plan.agents}
    workers = [
        WorkerInfo(
            agent.name,
            agent.description,
            output=output.name if (output := outputs[agent.name]) is not None else None,
        )
        for agent in plan.workers
    ]
    for agent in plan.agents:
        output = outputs[agent.name]
        settings = _session_settings(plan.settings_for(agent), model_settings, output)
        tools = plan.tools_for(agent)
        for name, config in tools.items():
            if name not in registry:
                registry.add(
                    config.path,
                    name=name,
                    timeout=config.timeout,
                    max_output=config.max_output,
                    side_effect=config.side_effect,
                    description=config.description,
                )
        executor = (
            registry.executor(agent.name, allowed=tuple(tools), bus=bus, approver=approver)
            if tools
            else None
        )
        wire_tools = (
            *(executor.tools() if executor is not None else ()),
            *_hosted_tools(agent, environ),
        )
        instructions = agent.instructions or DEFAULT_INSTRUCTIONS[agent.role]
        common: dict[str, Any] = {
            "role": agent.role,
            "router": router,
            "open_connection": opener,
            "tools": executor,
            "budget": budget,
            "events": bus,
            "memory": AgentMemory(agent.name, job),
            "output": output,
            "approver": approver,
        }
        if agent.role == "planner" and not plan.steps:
            runtime_tools = delegation_tools(
                workers,
                answer_schema=output.schema if output is not None else None,
                strict=output.strict if output is not None else True,
            )
            session = Session(
                model=plan.model_for(agent),
                instructions=instructions,
                tools=(*wire_tools, *runtime_tools),
                store=plan.settings.store,
                settings=settings,
            )
            planner = PlannerActor(agent.name, session=session, workers=tuple(workers), **common)
            actors[agent.name] = planner
        else:
            session = Session(
                model=plan.model_for(agent),
                instructions=instructions,
                tools=wire_tools,
                store=plan.settings.store,
                settings=settings,
            )
            actors[agent.name] = WorkerActor(
                agent.name,
                session=session,
                fresh_context=bool(plan.steps) and plan.context_for(agent) == "step",
                **common,
            )
    # Workers first, the planner last: it can delegate as soon as it is up, and it is the
    # first to stop (shutdown runs in reverse start order).
    ordered = sorted(actors.values(), key=lambda actor: actor is planner)
    supervisor = Supervisor(
        "run",
        [actor.child_spec() for actor in ordered],
        strategy="one_for_one",
        intensity=intensity,
        period=period,
        backoff=Backoff(0.5, 2.0, 10.0),
        events=bus,
    )
    return _Team(
        actors,
        planner,
        router,
        supervisor,
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
        if environ is None:
            tools.append(HostedTool(data, label=dict(written)))
            continue
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
        tools.append(HostedTool(data, label=dict(written)))
    return tools


def _attach_mcp_tools(team: _Team, servers: McpServers, registry: ToolRegistry) -> None:
    """Give each agent the tools of its MCP servers: registered, allowed, offered.

    Raises:
        ConfigurationError: a tool's name is already one of the agent's tools (set a
            ``prefix``), or the plan would lower a tool's side-effect class.
    """
    for name, server_names in team.mcp.items():
        actor = team.actors[name]
        specs = servers.specs(server_names, default_timeout=DEFAULT_TOOL_TIMEOUT)
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


def _fingerprints(team: _Team) -> dict[str, AgentPrint]:
    """What each agent is, as far as a resume must find it unchanged."""
    prints: dict[str, AgentPrint] = {}
    for name, actor in team.actors.items():
        session = actor.session
        tools: dict[str, str] = {}
        for tool in session.tools:
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


def _restore(team: _Team, states: Mapping[str, JournaledAgent], budget: BudgetTracker) -> None:
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


def new_job_id(plan_name: str) -> str:
    """``<plan>-<UTC date>-<time>-<4 hex>``: readable, sortable, unique enough per store."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{plan_name[:40]}-{stamp}-{secrets.token_hex(2)}"


def _canonical(plan: Plan) -> str:
    return msgspec.json.encode(msgspec.to_builtins(plan), order="sorted").decode()


@attrs.frozen
class _Endpoint:
    url: str | None
    key: Secret | str
    label: str
    connector: Connector | None = None


def _resolve_offline(api_key: str | Secret | None, offline: bool | None) -> bool:
    """An explicit choice, else offline exactly when no key is at hand."""
    if offline is not None:
        return offline
    return api_key is None and not os.environ.get("OPENAI_API_KEY")


@asynccontextmanager
async def _endpoint(
    api_key: str | Secret | None,
    base_url: str | None,
    offline: bool | None,
    server_options: Mapping[str, Any] | None,
    transport: Literal["tcp", "memory"],
    allow_insecure: bool = False,
) -> AsyncIterator[_Endpoint]:
    """The live service, or the embedded server (over loopback TCP or in memory)."""
    if not _resolve_offline(api_key, offline):
        key = resolve_api_key(api_key)  # first: the key is known to the redactor from here
        # Refuses a URL carrying credentials before anything starts; the label is the URL
        # the connections use (OPENAI_BASE_URL included), never the raw option.
        url = resolve_endpoint(base_url, allow_insecure=allow_insecure).url
        yield _Endpoint(base_url, key, url)
        return
    # Only offline runs need the server.
    from orchestrator.core.server import LocalServer, ServerConfig, open_local_server

    if transport == "memory":
        from orchestrator.testing import memory_connector  # trio.testing is slow to import

        server = LocalServer.from_config(ServerConfig(**dict(server_options or {})))
        async with trio.open_nursery() as nursery:
            yield _Endpoint(
                "ws://127.0.0.1/v1/responses",
                server.token,
                "embedded",
                memory_connector(server, nursery),
            )
            nursery.cancel_scope.cancel()
        return
    async with open_local_server(**dict(server_options or {})) as running:
        logger.info("offline: running on the embedded server at {}", running.url)
        yield _Endpoint(running.url, running.token, "embedded")


@attrs.frozen(kw_only=True)
class RunSettings:
    """How a run reaches its model and copes with trouble; every field has a default.

    Attributes:
        api_key: the service key; default ``OPENAI_API_KEY``. Without any key the run uses
            the embedded server in-process (unless ``offline=False``).
        base_url: a compatible endpoint (``https://host/v1`` or ``wss://host/v1/responses``);
            default the plan's ``settings.base_url``, then the service.
        offline: force the embedded server (True) or the network (False).
        connection: every agent's connection settings (timeouts, sizes, rotation, backoff).
        model: per-turn model settings for every agent (reasoning, temperature...), under the
            plan's own ``[settings]`` and each agent's.
        restart_intensity, restart_period: the supervisor's restart limit.
        max_recoveries: consecutive crashes without progress after which a job is ``dead``
            instead of resumed.
        allow_budget_change: accept a resume with a plan whose budgets differ (the way to
            give a job that ran out of budget more of it).
        requeue_on_stop: a job stopped by ``stop`` (or by cancelling the caller) goes back
            to the queue, released, for another worker to take at once, instead of ending
            ``interrupted`` (a worker shutting down; the result still says ``interrupted``).
    """

    api_key: str | Secret | None = attrs.field(default=None, repr=False)
    base_url: str | None = None
    offline: bool | None = None
    connection: ConnectionSettings = attrs.field(factory=ConnectionSettings)
    model: ModelSettings | None = None
    restart_intensity: int = 3
    restart_period: float = 60.0
    max_recoveries: int = DEFAULT_MAX_RECOVERIES
    allow_budget_change: bool = False
    requeue_on_stop: bool = False


@attrs.frozen(kw_only=True)
class EmbeddedServer:
    """The embedded server an offline run starts in-process.

    Attributes:
        config: its settings, as ``ServerConfig`` fields (``model``, ``script``, ``seed``,
            ``latency``, ``faults``, ``max_connection_age``...).
        transport: how the agents reach it: loopback ``tcp`` (real sockets), or ``memory``
            (in-memory streams: no file descriptors, and trio's ``MockClock`` drives both
            sides; for tests and simulations).
    """

    config: Mapping[str, Any] = attrs.field(factory=dict)
    transport: Literal["tcp", "memory"] = "tcp"


Observer = EventBus | Callable[[RuntimeEvent], object]


async def run(
    plan: Plan | str | os.PathLike[str] | None = None,
    goal: str | None = None,
    *,
    settings: RunSettings | None = None,
    embedded: EmbeddedServer | None = None,
    events: Observer | None = None,
    stop: trio.Event | None = None,
    approve: Approver | None = None,
    store: StoreSpec = DEFAULT_STORE,
    job_id: str | None = None,
    resume: str | None = None,
    claim: Claim | None = None,
    options: Mapping[str, object] | None = None,
) -> RunResult:
    """Run a plan to its answer, inside the caller's trio program, as a durable job.

    Args:
        plan: a :class:`~plans.Plan`, or the path of a TOML/YAML/JSON plan file. Optional
            with ``resume`` (the journaled plan is used).
        goal: what to achieve; defaults to the plan's ``goal``.
        settings: how to reach the model and cope with trouble (:class:`RunSettings`).
        embedded: the embedded server of an offline run (:class:`EmbeddedServer`).
        events: how to watch the run: an :class:`EventBus` (subscribe to it) or a callable
            given every runtime event as it happens.
        stop: set this event to stop the run cleanly; the result is ``interrupted``.
        approve: asked about each call of a ``destructive`` or ``external`` tool that the
            plan's ``[approvals]`` neither allow nor deny (and ``otherwise = "ask"``): a
            callable taking an ``ApprovalRequest`` and returning ``bool`` or an
            ``ApprovalDecision`` (sync or async), e.g. ``ApprovalPolicy(allow=("fixer:*",))``.
            Without it such calls are denied and the model is told why.
        store: where the job is journaled: a path, a ``sqlite:///`` or ``postgresql://``
            URL, an open :class:`~orchestrator.jobs.JobStore`, the default
            (``$ORCHESTRATOR_STORE``, else ``~/.local/state/orchestrator/jobs.db``), or
            ``None`` for a run without a journal (it cannot be resumed).
        job_id: the new job's id (default: generated from the plan's name and the time).
        resume: continue this job instead of starting one (``plan`` may then be omitted;
            a plan given must match the journaled one, see
            ``RunSettings.allow_budget_change``).
        claim: with ``resume``: the claim this process already holds on the job (a worker
            that claimed it from the queue); the job is run under it, not claimed again.
        options: extra JSON-able facts kept with a new job (the CLI keeps its offline
            settings there to resume with the same ones).

    Returns:
        The :class:`RunResult`, also when a budget, a stop request or a failure ended the run.

    Raises:
        PlanError: the plan is invalid, a tool of it included (a parameter without a type
            hint, a type that has no JSON schema); nothing was started. ``issues`` lists
            every problem, as ``orchestrator validate`` prints them.
        ConfigurationError: a bad endpoint or a malformed key (nothing was started).
        JobError: ``resume`` cannot continue the job (``JobNotFound``, ``JobRunning``,
            ``JobNotResumable``, ``PlanDiverged``), or ``job_id`` exists; nothing ran.
        StorageUnavailable: the store cannot be opened or written when the job starts.
        InternalError: a bug in this project (chained to what went wrong).

    Everything that goes wrong once the run started (a rejected key, an unknown model, a
    crashed agent, a budget) is in the returned result's ``status``, ``code`` and ``reason``.
    """
    settings = settings if settings is not None else RunSettings()
    embedded = embedded if embedded is not None else EmbeddedServer()
    offline, model_settings = settings.offline, settings.model
    bus = events if isinstance(events, EventBus) else EventBus()
    if events is not None and not isinstance(events, EventBus):
        bus.add_listener(events)
    async with _open_job_store(store) as job_store:
        if resume is not None:
            if job_store is None:
                raise ConfigurationError("resume needs a job store", code="config.store")
            journaled = await job_store.load(resume)
            if claim is None:
                # An early, clear refusal; the claim decides again, atomically.
                decide_claim(journaled.job, time.time(), owner_alive=_alive(journaled.job))
            plan_obj = _journaled_plan(journaled, plan)
            goal = journaled.job.goal
        else:
            journaled = None
            plan_obj = _load(plan)
            goal = goal if goal is not None else plan_obj.goal
            options = {"paths": _import_paths(plan), **(options or {})}
            if model_settings is not None:
                # Kept with the job: a resume that passes none runs with the same ones.
                options["model_settings"] = msgspec.to_builtins(model_settings)
        if goal is None and not plan_obj.steps:
            raise PlanError(
                f"plan {plan_obj.name!r} has no goal: pass one (--goal) or set 'goal' in the plan"
            )
        if journaled is not None:
            job_options = journaled.job.options
            if offline is None and "offline" in job_options:
                offline = bool(job_options["offline"])
            if model_settings is None and "model_settings" in job_options:
                model_settings = _journaled_settings(job_options["model_settings"], resume)
        _check_fd_budget(len(plan_obj.agents), offline, settings.api_key, embedded.transport)
        return await _run_job_or_record(
            plan_obj,
            goal,
            job_store=job_store,
            journaled=journaled,
            job_id=resume or job_id or new_job_id(plan_obj.name),
            settings=attrs.evolve(settings, offline=offline, model=model_settings),
            embedded=embedded,
            events=bus,
            stop=stop,
            approve=approve,
            options=dict(options or {}),
            claim=claim,
        )


async def submit(
    plan: Plan | str | os.PathLike[str],
    goal: str | None = None,
    *,
    store: StoreSpec = DEFAULT_STORE,
    job_id: str | None = None,
    queue: str = "default",
    options: Mapping[str, object] | None = None,
) -> str:
    """Queue a job for a worker (``orchestrator worker``) and return its id at once.

    The plan is checked and its tools imported here, so a job that cannot run is refused
    now rather than by a worker later.

    Raises:
        PlanError: the plan is invalid, or has no goal and no steps.
        JobError: a job ``job_id`` exists.
        ConfigurationError: ``store=None`` (a queue needs a store).
    """
    plan_obj = _load(plan)
    goal = goal if goal is not None else plan_obj.goal
    if goal is None and not plan_obj.steps:
        raise PlanError(
            f"plan {plan_obj.name!r} has no goal: pass one (--goal) or set 'goal' in the plan"
        )
    prints = _fingerprints(_team_for_fingerprints(plan_obj))
    canonical = _canonical(plan_obj)
    job_id = job_id or new_job_id(plan_obj.name)
    async with _open_job_store(store) as job_store:
        if job_store is None:
            raise ConfigurationError("submit needs a job store", code="config.store")
        await job_store.create(
            NewJob(
                id=job_id,
                name=plan_obj.name,
                goal=goal,
                mode="steps" if plan_obj.steps else "delegate",
                plan=canonical,
                plan_hash=hashlib.sha256(canonical.encode()).hexdigest(),
                plan_dir=None,
                agents=prints,
                options={"paths": _import_paths(plan), **(options or {})},
                queue=queue,
                status="queued",
            ),
            None,
        )
    return job_id


def _journaled_settings(data: object, job: str | None) -> ModelSettings:
    try:
        return msgspec.convert(data, ModelSettings)
    except msgspec.ValidationError as exc:
        raise JobNotResumable(
            f"the model settings journaled with job {job} cannot be read: {exc}", job=job or ""
        ) from None


def _team_for_fingerprints(plan: Plan, model_settings: ModelSettings | None = None) -> _Team:
    """The team a plan makes, never started: what its agents are (tools imported)."""

    def no_connection(agent: str) -> AbstractAsyncContextManager[Connection]:
        raise AssertionError("a fingerprint team never connects")  # pragma: no cover

    return _build_team(
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


def _load(plan: Plan | str | os.PathLike[str] | None) -> Plan:
    """The plan, checked with every tool built: a tool that cannot be described to a model
    is a PlanError now, before any connection, rather than a crash inside the run."""
    if plan is None:
        raise PlanError("no plan given: pass a plan, or resume= a job")
    if isinstance(plan, Plan):
        # Checked again (a Plan can be built by hand), but its warnings were already reported
        # by whoever built or loaded it: only errors stop the run here.
        report = check_plan(plan, check_tool=check_definition)
        return report.raise_for_errors() if report.errors else plan
    return load_plan(Path(plan), check_tool=check_definition)


def _import_paths(plan: Plan | str | os.PathLike[str] | None) -> list[str]:
    """Where a plan's tools are imported from: the working directory and the plan's own."""
    paths = [os.getcwd()]
    if plan is not None and not isinstance(plan, Plan):
        paths.append(str(Path(plan).resolve().parent))
    return paths


def _journaled_plan(journaled: JobJournal, given: Plan | str | os.PathLike[str] | None) -> Plan:
    """The plan a resume runs: the one given (checked against the journal later) or the
    journaled one, with the directories its tools came from importable again."""
    paths = journaled.job.options.get("paths")
    for entry in reversed(paths if isinstance(paths, list) else []):
        if isinstance(entry, str) and entry not in sys.path:
            sys.path.insert(0, entry)
    if given is not None:
        return _load(given)
    try:
        return msgspec.json.decode(journaled.job.plan, type=Plan)
    except msgspec.MsgspecError as exc:
        raise JobNotResumable(
            f"the journaled plan of job {journaled.job.id} cannot be read: {exc}",
            job=journaled.job.id,
        ) from None


def _alive(job: JobRecord) -> bool | None:
    return None if job.owner is None else owner_alive(job.owner, job.id)


@asynccontextmanager
async def _open_job_store(store: StoreSpec) -> AsyncIterator[JobStore | None]:
    if store is None or isinstance(store, JobStore):
        yield store
        return
    async with open_store(None if isinstance(store, _DefaultStore) else store) as opened:
        yield opened


@attrs.define(eq=False)
class _JobRun:
    """What one process does to one job: start or resume it, journal it, end it."""

    journal: Journal | None = None
    requeue_on_stop: bool = False
    resumed: bool = False
    failure: JournalError | None = None
    cancelled: bool = False
    spent_before: float = 0.0
    started: float = 0.0

    def active_seconds(self) -> float:
        return self.spent_before + (trio.current_time() - self.started)


async def _run_job_or_record(plan: Plan, goal: str | None, **options: Any) -> RunResult:
    """``_run_job``, and when something escapes it (a bug, the caller's cancellation), the
    job's status says so instead of staying ``running`` (shielded, best effort)."""
    holder: list[_JobRun] = []
    job_id = options["job_id"]
    try:
        return await _run_job(plan, goal, holder=holder, **options)
    except BaseException as exc:
        journal = holder[0].journal if holder else None
        if journal is not None and journal.failure is None:
            cancelled = isinstance(exc, trio.Cancelled | KeyboardInterrupt)
            # A worker hands a job it stops back to the queue.
            stopped: JobStatus = "queued" if holder[0].requeue_on_stop else "interrupted"
            await journal.finish(
                stopped if cancelled else "failed",
                reason=redact(f"{type(exc).__name__}: {exc}") if not cancelled else "cancelled",
                code="run.interrupted" if cancelled else "run.internal",
                active_seconds=holder[0].active_seconds(),
            )
        if isinstance(exc, Exception) and not isinstance(exc, OrchestratorError):
            # Not a refusal nor a failure the run reports: a bug in this project.
            raise InternalError(f"{type(exc).__name__}: {exc}") from exc
        raise
    finally:
        DRIVEN.discard(job_id)


async def _run_job(
    plan: Plan,
    goal: str | None,
    *,
    job_store: JobStore | None,
    journaled: JobJournal | None,
    job_id: str,
    settings: RunSettings,
    embedded: EmbeddedServer,
    events: EventBus,
    stop: trio.Event | None,
    approve: Approver | None,
    options: dict[str, object],
    holder: list[_JobRun],
    claim: Claim | None,
) -> RunResult:
    """One process's part of a job; ``settings`` has ``offline`` and ``model`` resolved
    (from the journal on a resume)."""
    bus = events
    api_key, connection = settings.api_key, settings.connection
    url_option = settings.base_url or plan.settings.base_url
    started_wall = time.time()
    job_run = _JobRun(started=trio.current_time(), requeue_on_stop=settings.requeue_on_stop)
    holder.append(job_run)
    run_scope = trio.CancelScope()
    budget = BudgetTracker(
        run=_limits(plan.budgets),
        agents={agent.name: _limits(agent.limits) for agent in plan.agents if agent.limits},
        scope=run_scope,
    )
    registry = ToolRegistry()
    answer: str | None = None
    steps: dict[str, StepReport] = {}
    failure: BaseException | None = None
    interrupted = False
    parked: list[ParkedCall] = []
    offline = _resolve_offline(api_key, settings.offline)
    label = "embedded"
    if not offline:
        # A missing or malformed key, or a URL carrying credentials, is refused before a job
        # is recorded; the key is known to the redactor from here on.
        resolve_api_key(api_key)
        label = resolve_endpoint(url_option, allow_insecure=connection.allow_insecure).url
    endpoints: list[_Endpoint] = []

    @asynccontextmanager
    async def opener(agent: str) -> AsyncIterator[Connection]:
        endpoint = endpoints[0]
        async with open_connection(
            endpoint.url,
            endpoint.key,
            settings=connection,
            agent=agent,
            events=bus,
            connector=endpoint.connector,
        ) as opened:
            yield opened

    team = _build_team(
        plan,
        opener=opener,
        budget=budget,
        bus=bus,
        registry=registry,
        intensity=settings.restart_intensity,
        period=settings.restart_period,
        approver=ApprovalPolicy(
            allow=plan.approvals.allow,
            deny=plan.approvals.deny,
            otherwise=plan.approvals.otherwise,
            ask=approve,
        ),
        job=job_id,
        model_settings=settings.model,
        environ=os.environ,
    )
    servers = McpServers.for_plan(
        plan.mcp_servers, (name for names in team.mcp.values() for name in names)
    )
    done_steps: dict[str, str] = {}
    if job_store is not None:
        prints = _fingerprints(team)
        if journaled is not None:
            outcome = await _resume(
                job_store,
                journaled,
                plan,
                prints,
                allow_budget_change=settings.allow_budget_change,
                max_recoveries=settings.max_recoveries,
                claim=claim,
            )
            if isinstance(outcome, list):  # parked: nothing runs
                return _result(
                    plan,
                    goal,
                    team,
                    budget,
                    label,
                    job=job_id,
                    answer=None,
                    steps={},
                    failure=CallsParked(parked_calls(journaled)),
                    interrupted=False,
                    timed_out=False,
                    started_wall=started_wall,
                    duration=0.0,
                    parked=outcome,
                    resumed=True,
                )
            claim = outcome
            fresh = frozenset(name for name, actor in team.actors.items() if actor.fresh_context)
            _restore(team, rebuild(journaled, fresh), budget)
            done_steps = _completed_steps(journaled, plan)
            job_run.spent_before = journaled.job.active_seconds
            job_run.resumed = True
        else:
            claim = await _accept(job_store, plan, goal, job_id, prints, label, options)
        journal = Journal(job_store, claim)
        job_run.journal = journal
        DRIVEN.add(job_id)

        def journal_failed(error: JournalError) -> None:
            job_run.failure = error
            run_scope.cancel()

        journal.on_failure = journal_failed
        budget.guard = journal.check_lease
        for actor in team.actors.values():
            actor.memory.sink = journal
        if job_run.resumed and journaled is not None and journaled.job.progress == 0:
            journal.event("started", "")  # queued, nothing journaled yet: a first start
        elif job_run.resumed:
            journal.event("resumed", f"{len(done_steps)} steps done")
            assert journaled is not None
            _record_answered_steps(journal, journaled, plan, done_steps)
    async with _endpoint(
        api_key, url_option, offline, embedded.config, embedded.transport, connection.allow_insecure
    ) as endpoint:
        endpoints.append(endpoint)
        wall_clock = clamp_wall_clock(plan.budgets.wall_clock, job_run.spent_before)
        if wall_clock != math.inf:
            run_scope.deadline = job_run.started + wall_clock
        bus.emit(_run_started(plan, goal, label))
        with run_scope:
            try:
                async with trio.open_nursery() as nursery:
                    if stop is not None:
                        nursery.start_soon(_watch_stop, stop, run_scope)
                    if job_run.journal is not None:

                        def cancel_requested() -> None:
                            job_run.cancelled = True
                            run_scope.cancel()

                        nursery.start_soon(
                            job_run.journal.keep_alive, job_run.active_seconds, cancel_requested
                        )
                    if servers.connections:
                        # Before the agents: their tools are what the servers list.
                        await nursery.start(servers.run)
                        _attach_mcp_tools(team, servers, registry)
                    await nursery.start(team.supervisor.run)
                    try:
                        if plan.steps:
                            answer = await _run_steps(
                                plan, goal, team, steps, budget, job_run.journal, done_steps, bus
                            )
                        else:
                            answer = await _delegate_goal(team, goal or "")
                    finally:
                        team.supervisor.stop()
                        nursery.cancel_scope.cancel()
            except* CallsParked as group:
                failure = _first_exception(group)
                assert isinstance(failure, CallsParked)
                parked = [_parked(call) for call in failure.calls]
            except* (OrchestratorError, ToolRepairBudgetExceeded) as group:
                failure = _first_exception(group)
        if stop is not None and stop.is_set() and run_scope.cancelled_caught:
            interrupted = True
        if failure is None and budget.failure is not None:
            failure = budget.failure
            if isinstance(failure, CallsParked):
                parked = [_parked(call) for call in failure.calls]
        if job_run.failure is not None:
            failure = job_run.failure
    result = _result(
        plan,
        goal,
        team,
        budget,
        label,
        job=job_id if job_store is not None else None,
        answer=answer,
        steps=steps,
        failure=failure,
        interrupted=interrupted,
        cancelled=job_run.cancelled,
        timed_out=run_scope.cancelled_caught
        and trio.current_time() >= run_scope.deadline
        and job_run.failure is None,
        started_wall=started_wall,
        duration=trio.current_time() - job_run.started,
        parked=parked,
        resumed=job_run.resumed,
    )
    if job_run.journal is not None:
        await _record_end(job_run, result)
    bus.emit(
        RunFinished(
            time=trio.current_time(),
            plan=result.plan,
            status=result.status,
            duration=result.duration,
            turns=result.usage.turns,
            input_tokens=result.usage.input_tokens,
            output_tokens=result.usage.output_tokens,
            code=result.code,
            reason=result.reason,
            answer=None if result.answer is None else capped(result.answer),
        )
    )
    return result


def _run_started(plan: Plan, goal: str | None, endpoint: str) -> RunStarted:
    """What the run is about to do, for the live view and the trace."""
    agents = []
    for agent in plan.agents:
        limits = agent.limits
        agents.append(
            RunAgent(
                name=agent.name,
                role=agent.role,
                model=plan.model_for(agent),
                max_turns=limits.max_turns if limits else None,
                max_tokens=limits.max_tokens if limits else None,
            )
        )
    return RunStarted(
        time=trio.current_time(),
        plan=plan.name,
        mode="steps" if plan.steps else "delegate",
        endpoint=endpoint,
        goal=goal,
        agents=tuple(agents),
        steps=len(scheduled_steps(plan)) if plan.steps else 0,
        max_turns=plan.budgets.max_turns,
        max_tokens=plan.budgets.max_tokens,
        wall_clock=plan.budgets.wall_clock,
    )


async def _delegate_goal(team: _Team, goal: str) -> str:
    assert team.planner is not None
    team.planner.memory.message_sent(
        MessageEntry(id="goal", sender="run", recipient=team.planner.name, text=goal)
    )
    reply = await team.router.ask(
        "run", team.planner.name, Assignment(text=goal, sender="run", id="goal")
    )
    return reply.text if isinstance(reply, AssignmentResult) else str(reply)


async def _accept(
    store: JobStore,
    plan: Plan,
    goal: str | None,
    job_id: str,
    prints: dict[str, AgentPrint],
    endpoint: str,
    options: dict[str, object],
) -> Any:
    """Journal a new job (its first transaction) and claim it."""
    canonical = _canonical(plan)
    job = NewJob(
        id=job_id,
        name=plan.name,
        goal=goal,
        mode="steps" if plan.steps else "delegate",
        plan=canonical,
        plan_hash=hashlib.sha256(canonical.encode()).hexdigest(),
        plan_dir=None,
        agents=prints,
        options={"offline": endpoint == "embedded", "endpoint": endpoint, **options},
    )
    claim = await store.create(job, Owner.this_process())
    crash_point("job_accepted")
    return claim


async def _resume(
    store: JobStore,
    journaled: JobJournal,
    plan: Plan,
    prints: dict[str, AgentPrint],
    *,
    allow_budget_change: bool,
    max_recoveries: int,
    claim: Claim | None,
) -> Claim | list[ParkedCall]:
    """Check the plan against the journal and claim the job (unless ``claim`` is held
    already); or park it.

    Returns:
        The claim, or the list of parked calls (the job is then ``needs_attention``).
    """
    record = journaled.job
    old_plan = msgspec.json.decode(record.plan, type=Plan)
    started = {step.id for step in journaled.steps}
    changes = plan_changes(old_plan, plan, record.agents, prints, started)
    if changes.blocking:
        raise PlanDiverged(
            f"job {record.id}: the plan differs from the journaled one: "
            + "; ".join(changes.blocking),
            job=record.id,
            changes=changes.blocking,
        )
    if changes.budgets and not allow_budget_change:
        raise PlanDiverged(
            f"job {record.id}: the plan's budgets differ from the journaled ones ("
            + "; ".join(changes.budgets)
            + "): pass allow_budget_change (--allow-budget-change) to accept them",
            job=record.id,
            changes=changes.budgets,
        )
    parked = parked_calls(journaled)
    dead: list[str] = []

    def decide(current: Any, now: float) -> tuple[int, str]:
        decision = decide_claim(
            current, now, owner_alive=_alive(current), max_recoveries=max_recoveries
        )
        if decision.dead:
            dead.append(decision.reason or "dead")
        elif parked:
            return decision.recoveries, "needs_attention"
        return decision.recoveries, decision.status

    if claim is None:
        _, claim = await store.claim(record.id, Owner.this_process(), decide)
    if dead:
        await store.write(
            claim,
            _status_write("dead", reason=dead[0], code="job.dead"),
        )
        raise JobNotResumable(
            f"job {record.id} is dead: {dead[0]}; `orchestrator jobs retry {record.id}` "
            "runs it again",
            job=record.id,
        )
    if parked:
        await store.write(
            claim,
            _status_write(
                "needs_attention",
                reason=f"{len(parked)} tool call(s) in doubt",
                code="job.needs_attention",
            ),
        )
        return [_parked(call) for call in parked]
    return claim


def _status_write(status: JobStatus, *, reason: str, code: str) -> Any:
    from orchestrator.jobs.model import StatusWrite

    return StatusWrite(status=status, reason=reason, code=code, release=True)


def _parked(call: Any) -> ParkedCall:
    return ParkedCall(
        agent=call.agent,
        turn=call.turn,
        call_id=call.call_id,
        tool=call.name,
        arguments=call.arguments,
        side_effect=call.side_effect,
        attempt=call.attempt,
    )


def _completed_steps(journaled: JobJournal, plan: Plan) -> dict[str, str]:
    """Steps done in earlier runs of the job: from their step records, or from the reply a
    step's agent journaled when the step record itself was not written yet."""
    done = {step.id: step.result or "" for step in journaled.steps if step.status == "completed"}
    replies = {turn.message: turn.reply for turn in journaled.turns if turn.reply is not None}
    replies.update({reply.message: reply.text for reply in journaled.replies})
    for step in plan.steps:
        text = replies.get(_step_message(step.id))
        if step.id not in done and text is not None:
            done[step.id] = text
    return done


def _record_answered_steps(
    journal: Journal, journaled: JobJournal, plan: Plan, done_steps: Mapping[str, str]
) -> None:
    """Record ``completed`` the steps whose answer was journaled before the process died but
    whose step record was not: they are done (they do not run again), and say so."""
    recorded = {step.id: step for step in journaled.steps}
    agents = {step.id: step.agent for step in plan.steps}
    for step_id, text in done_steps.items():
        record = recorded.get(step_id)
        if record is not None and record.status == "completed":
            continue
        journal.step(
            StepRecord(
                id=step_id,
                agent=agents[step_id],
                status="completed",
                result=text,
                attempts=record.attempts if record is not None else 1,
            )
        )


def _step_message(step_id: str) -> str:
    return f"step:{step_id}"


_JOB_STATUS: Final[dict[str, JobStatus]] = {
    "completed": "completed",
    "partial": "partial",
    "failed": "failed",
    "budget_exceeded": "budget_exceeded",
    "interrupted": "interrupted",
    "needs_attention": "needs_attention",
    "cancelled": "cancelled",
}


async def _record_end(job_run: _JobRun, result: RunResult) -> None:
    journal = job_run.journal
    assert journal is not None
    failures = [msgspec.to_builtins(failure) for failure in result.failures]
    failures.extend(msgspec.to_builtins(call) for call in result.parked)
    status, reason, code = _JOB_STATUS[result.status], result.reason, result.code
    if job_run.requeue_on_stop and code == "run.interrupted":
        # Handed back: released, for any worker to take at once.
        status, reason, code = "queued", "handed back by a stopping worker", None
    await journal.finish(
        status,
        answer=result.answer,
        reason=reason,
        code=code,
        failures=failures,
        active_seconds=job_run.active_seconds(),
    )


def _check_fd_budget(
    agents: int, offline: bool | None, api_key: str | Secret | None, transport: str
) -> None:
    """Refuse up front a team that cannot get a socket per agent under the fd limit."""
    from orchestrator.core.tuning import fd_limit

    local = offline if offline is not None else not (api_key or os.environ.get("OPENAI_API_KEY"))
    per_agent = 0 if (local and transport == "memory") else 2 if local else 1
    needed = agents * per_agent + 64
    limit = fd_limit()
    if per_agent and needed > limit:
        raise ConfigurationError(
            f"{agents} agents need about {needed} open files but the limit is {limit}: raise "
            "it (ulimit -n; `orchestrator run` raises the soft limit to the hard one) or run "
            "fewer agents",
            code="config.fd_limit",
        )


async def _watch_stop(stop: trio.Event, scope: trio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()


def _first_exception(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group.exceptions[0]
    return _first_exception(exc) if isinstance(exc, BaseExceptionGroup) else exc


async def _run_steps(
    plan: Plan,
    goal: str | None,
    team: _Team,
    reports: dict[str, StepReport],
    budget: BudgetTracker,
    journal: Journal | None,
    done_steps: Mapping[str, str],
    bus: EventBus,
) -> str:
    """Run the DAG: each step once its dependencies are done, independent ones in parallel.

    Steps a resumed job completed before are not run again: their journaled results feed
    the steps that depend on them. Every step sent to its agent gets its report in
    ``reports`` when it ends, also when the run's end cuts it (``cut``, or ``not_started``
    if its agent had not taken it up yet); steps never sent get none. A step's ``duration``
    counts from when its agent took it up (``task.started``), ``waited`` the time before
    that in the agent's mailbox.
    """
    order = scheduled_steps(plan)
    done = {step.id: trio.Event() for step in order}
    results: dict[str, str] = {}
    taken: dict[str, float] = {}  # step -> when its agent took it up (first attempt)

    def on_task(event: RuntimeEvent) -> None:
        if isinstance(event, TaskStarted) and event.step is not None:
            taken.setdefault(event.step, event.time)

    def report(step: Any, status: Any, sent: float, **fields: Any) -> None:
        now = trio.current_time()
        start = taken.get(step.id)
        if status == "cut" and start is None:
            status, fields = "not_started", {}  # queued behind other steps, never begun
        duration = 0.0 if start is None else now - start
        waited = (now if start is None else start) - sent
        reports[step.id] = StepReport(
            id=step.id,
            agent=step.agent,
            status=status,
            duration=duration,
            waited=waited,
            **fields,
        )
        bus.emit(
            StepFinished(
                time=now,
                step=step.id,
                agent=step.agent,
                status=status,
                duration=duration,
                waited=waited,
                error=fields.get("error"),
            )
        )
        done[step.id].set()

    async def run_step(step: Any) -> None:
        for dependency in step.depends_on:
            await done[dependency].wait()
        if step.id in done_steps:
            results[step.id] = done_steps[step.id]
            report(step, "completed", trio.current_time(), result=done_steps[step.id])
            return
        if any(reports[d].status != "completed" for d in step.depends_on):
            if journal is not None:
                journal.step(StepRecord(id=step.id, agent=step.agent, status="skipped"))
            report(step, "skipped", trio.current_time(), error="a dependency failed")
            return
        began = trio.current_time()
        try:
            await attempts(step, began)
        finally:
            if step.id not in reports:  # cancelled in flight: the run is ending
                report(step, "cut", began, error="the run ended while it ran")

    async def attempts(step: Any, began: float) -> None:
        task = render_task(step, results, goal=goal)
        if team.actors[step.agent].fresh_context:
            task = _with_dependencies(task, step, results)
        message = _step_message(step.id)
        error: str | None = None
        team.actors[step.agent].memory.message_sent(
            MessageEntry(id=message, sender="run", recipient=step.agent, text=task, step=step.id)
        )
        for attempt in range(STEP_ATTEMPTS):
            bus.emit(
                StepStarted(
                    time=trio.current_time(), step=step.id, agent=step.agent, attempt=attempt + 1
                )
            )
            if journal is not None:
                journal.step(
                    StepRecord(id=step.id, agent=step.agent, status="started", attempts=attempt + 1)
                )
            try:
                reply = await team.router.ask(
                    "run", step.agent, Assignment(text=task, sender="run", step=step.id, id=message)
                )
            except ActorDead as exc:
                # The agent crashed on this step; the supervisor restarts it with its session
                # and memory, and the same message makes it continue where it stopped.
                error = str(exc)
                if attempt + 1 < STEP_ATTEMPTS:
                    with trio.move_on_after(RESTART_WAIT):
                        await team.router.wait_running(step.agent)
                continue
            text = reply.text if isinstance(reply, AssignmentResult) else str(reply)
            results[step.id] = text
            if journal is not None:
                await journal.step_durably(
                    StepRecord(
                        id=step.id,
                        agent=step.agent,
                        status="completed",
                        result=text,
                        attempts=attempt + 1,
                    )
                )
                crash_point("step_boundary")
            report(step, "completed", began, result=text)
            return
        if journal is not None:
            journal.step(
                StepRecord(
                    id=step.id,
                    agent=step.agent,
                    status="failed",
                    error=redact(error or ""),
                    attempts=STEP_ATTEMPTS,
                )
            )
        report(step, "failed", began, error=error)

    bus.add_listener(on_task)
    try:
        async with trio.open_nursery() as nursery:
            for step in order:
                nursery.start_soon(run_step, step)
    finally:
        bus.remove_listener(on_task)
    failed = [report for report in reports.values() if report.status == "failed"]
    if failed:
        raise StepsFailed(failed)
    budget.check()
    finals = result_steps(plan)
    return "\n\n".join(results[step.id] for step in finals if step.id in results)


def _with_dependencies(task: str, step: Any, results: Mapping[str, str]) -> str:
    """A fresh conversation's task, with the results of the steps it depends on that the
    task does not quote already (``{{steps.ID.result}}``)."""
    quoted = {reference.step for reference in task_references(step.task)}
    missing = [d for d in step.depends_on if d not in quoted and d in results]
    if not missing:
        return task
    lines = [task, "", "Results of the steps this one depends on:"]
    lines.extend(f"- {dependency}: {results[dependency]}" for dependency in missing)
    return "\n".join(lines)


def _code_of(error: BaseException) -> str:
    """The code a failed run reports: the error's own, except for the two errors whose
    ``code`` is the peer's (a close code, the service's error code)."""
    if isinstance(error, OrchestratorError) and not isinstance(error, ConnectionLost | ServerError):
        return str(error.code)
    return "run.failed"


def _outcome(
    plan: Plan,
    *,
    answer: str | None,
    exceeded: BudgetExceeded | None,
    failure: BaseException | None,
    interrupted: bool,
    cancelled: bool,
    failures: list[FailureReport],
    job: str | None,
) -> tuple[RunStatus, str | None, str | None, str | None]:
    """Status, reason, code and answer, from how the run ended (first match wins)."""
    if isinstance(failure, CallsParked):
        resume = f"; then `orchestrator jobs resume {job}`" if job else ""
        return (
            "needs_attention",
            f"{failure}: resolve each with `orchestrator jobs resolve`{resume}",
            failure.code,
            None,
        )
    if isinstance(failure, JournalError):
        # The journal stopped accepting writes: the job is paused where it was, not failed.
        hint = (
            ""
            if isinstance(failure, JobLost)
            else f"; fix the store, then `orchestrator jobs resume {job}`"
        )
        return "interrupted", redact(str(failure)) + hint, failure.code, None
    if exceeded is not None:
        return "budget_exceeded", str(exceeded), f"budget.{exceeded.budget}", None
    if cancelled:
        return "cancelled", "cancelled on request (orchestrator jobs cancel)", "job.cancelled", None
    if interrupted:
        return "interrupted", "stopped on request", "run.interrupted", None
    if failure is not None:
        return "failed", redact(str(failure)), _code_of(failure), None
    if answer is None:
        return "failed", "the run ended without an answer", "run.failed", None
    if failures:
        listing = "; ".join(f"{f.agent}: {f.error}" for f in failures)
        return (
            "partial",
            redact(
                f"{len(failures)} delegation(s) failed, the answer may be incomplete: {listing}"
            ),
            "run.partial",
            answer,
        )
    return "completed", None, None, answer


def _typed_answer(plan: Plan, team: _Team, answer: str | None) -> Any:
    """The answer as its agent's declared output (see ``RunResult.output``), else None."""
    if answer is None:
        return None
    if plan.steps:
        finals = result_steps(plan)
        actor = team.actors.get(finals[0].agent) if len(finals) == 1 else None
    else:
        actor = team.planner
    if actor is None or actor.output is None:
        return None
    try:
        return actor.output.check(answer)[0]
    except ValueError:  # pragma: no cover - the agent checked it before answering
        return None


def _result(
    plan: Plan,
    goal: str | None,
    team: _Team,
    budget: BudgetTracker,
    endpoint: str,
    *,
    job: str | None,
    answer: str | None,
    steps: dict[str, StepReport],
    failure: BaseException | None,
    interrupted: bool,
    timed_out: bool,
    started_wall: float,
    duration: float,
    cancelled: bool = False,
    parked: list[ParkedCall] | None = None,
    resumed: bool = False,
) -> RunResult:
    exceeded = budget.exceeded
    if timed_out and exceeded is None and plan.budgets.wall_clock is not None:
        exceeded = BudgetExceeded("wall_clock", plan.budgets.wall_clock, duration)
    failures = [
        FailureReport(
            kind="delegation",
            agent=failed.worker,
            id=failed.message,
            task=failed.task,
            error=redact(failed.error),
        )
        for failed in (team.planner.failures if team.planner is not None else [])
    ]
    status, reason, code, answer = _outcome(
        plan,
        answer=answer,
        exceeded=exceeded,
        failure=failure,
        interrupted=interrupted,
        cancelled=cancelled,
        failures=failures,
        job=job,
    )
    agents = []
    for name, actor in team.actors.items():
        usage = budget.usage(name)
        connection = actor.connection
        agents.append(
            AgentReport(
                name=name,
                role=actor.role or "worker",
                model=actor.session.model,
                turns=usage.turns,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                tool_calls=actor.tool_calls,
                tasks=actor.tasks_done,
                restarts=actor.statistics().restarts,
                connection=ConnectionReport.of(connection.statistics()) if connection else None,
                transcript=list(actor.session.transcript),
                busy=actor.busy,
                model_time=actor.model_time,
            )
        )
    total = budget.total
    scheduled = {step.id for step in scheduled_steps(plan)} if plan.steps else set()
    ordered_steps = [
        steps.get(s.id) or StepReport(id=s.id, agent=s.agent, status="not_started")
        for s in plan.steps
        if s.id in steps or s.id in scheduled
    ]
    return RunResult(
        status=status,
        job=job,
        plan=plan.name,
        goal=goal,
        mode="steps" if plan.steps else "delegate",
        endpoint=endpoint,
        answer=answer,
        output=_typed_answer(plan, team, answer),
        reason=reason,
        code=code,
        usage=UsageReport(
            turns=total.turns,
            input_tokens=total.input_tokens,
            output_tokens=total.output_tokens,
            total_tokens=total.tokens,
        ),
        agents=agents,
        steps=ordered_steps,
        failures=failures,
        parked=parked or [],
        resumed=resumed,
        started_at=started_wall,
        duration=duration,
    )
