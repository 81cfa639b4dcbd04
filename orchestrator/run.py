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
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import msgspec
import trio
from loguru import logger

from actors.agent import AgentActor, Task, TaskResult
from actors.approval import ApprovalPolicy, Approver
from actors.planner import PlannerActor, WorkerInfo, delegation_tools
from actors.tools import ToolRegistry, ToolRepairBudgetExceeded, check_definition
from actors.worker import WorkerActor
from orchestrator.budget import BudgetLimits, BudgetTracker
from orchestrator.connection import (
    Connection,
    ConnectionSettings,
    ConnectionStatistics,
    Connector,
    open_connection,
    resolve_api_key,
)
from orchestrator.errors import (
    ActorDead,
    AuthenticationError,
    BudgetExceeded,
    ConfigurationError,
    OrchestratorError,
    PlanError,
    RestartLimitReached,
)
from orchestrator.logging import Secret, redact
from orchestrator.observe import (
    ActorStarted,
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
from orchestrator.protocol.codec import encode
from orchestrator.protocol.events import Item
from orchestrator.router import Router
from orchestrator.session import Session
from orchestrator.supervisor import Backoff, Supervisor
from plans import Plan, check_plan, load_plan, render_task, result_steps, scheduled_steps

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

__all__ = [
    "AgentReport",
    "RunResult",
    "RunStatus",
    "StepReport",
    "run",
]

RunStatus = Literal["completed", "budget_exceeded", "failed", "interrupted"]

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


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    turns: int
    input_tokens: int
    output_tokens: int
    total_tokens: int


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a run produced, whatever way it ended.

    Attributes:
        status: ``completed``, ``budget_exceeded``, ``failed`` or ``interrupted``.
        answer: the final answer (``None`` unless completed).
        reason: why the run ended early, in words.
        code: a machine-readable reason (``budget.max_turns``, ``tool.repair_budget``,
            ``auth.rejected``...).
        endpoint: ``embedded`` for an offline run, else the service URL.
    """

    status: RunStatus
    plan: str
    goal: str | None
    mode: Literal["delegate", "steps"]
    endpoint: str
    answer: str | None = None
    reason: str | None = None
    code: str | None = None
    usage: UsageReport
    agents: list[AgentReport]
    steps: list[StepReport] = msgspec.field(default_factory=list)
    started_at: float
    duration: float

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def agent(self, name: str) -> AgentReport:
        return next(report for report in self.agents if report.name == name)

    def to_json(self) -> bytes:
        """The result as JSON (transcripts included), for ``--json`` and files."""
        return encode(self)


@attrs.define(eq=False)
class _Team:
    actors: dict[str, AgentActor]
    planner: PlannerActor | None
    router: Router
    supervisor: Supervisor
    starts: _Starts


def _limits(budget: Any) -> BudgetLimits:
    return BudgetLimits(
        max_turns=budget.max_turns, max_tokens=budget.max_tokens, wall_clock=budget.wall_clock
    )


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
) -> _Team:
    router = Router(events=bus)
    actors: dict[str, AgentActor] = {}
    planner: PlannerActor | None = None
    workers = [WorkerInfo(agent.name, agent.description) for agent in plan.workers]
    for agent in plan.agents:
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
        wire_tools = tuple(executor.tools()) if executor is not None else ()
        instructions = agent.instructions or DEFAULT_INSTRUCTIONS[agent.role]
        common: dict[str, Any] = {
            "role": agent.role,
            "router": router,
            "open_connection": opener,
            "tools": executor,
            "budget": budget,
            "events": bus,
        }
        if agent.role == "planner" and not plan.steps:
            session = Session(
                model=plan.model_for(agent),
                instructions=instructions,
                tools=(*wire_tools, *delegation_tools(workers)),
                store=plan.settings.store,
            )
            planner = PlannerActor(agent.name, session=session, workers=tuple(workers), **common)
            actors[agent.name] = planner
        else:
            session = Session(
                model=plan.model_for(agent),
                instructions=instructions,
                tools=wire_tools,
                store=plan.settings.store,
            )
            actors[agent.name] = WorkerActor(agent.name, session=session, **common)
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
    starts = _Starts(router)
    bus.add_listener(starts)
    return _Team(actors, planner, router, supervisor, starts)


@attrs.frozen
class _Endpoint:
    url: str | None
    key: Secret | str
    label: str
    connector: Connector | None = None


@asynccontextmanager
async def _endpoint(
    api_key: str | Secret | None,
    base_url: str | None,
    offline: bool | None,
    server_options: Mapping[str, Any] | None,
    transport: Literal["tcp", "memory"],
) -> AsyncIterator[_Endpoint]:
    """The live service, or the embedded server (over loopback TCP or in memory)."""
    key_available = api_key is not None or bool(os.environ.get("OPENAI_API_KEY"))
    if offline is None:
        offline = not key_available
    if not offline:
        url = base_url or "wss://api.openai.com/v1/responses"
        yield _Endpoint(base_url, resolve_api_key(api_key), url)
        return
    # Only offline runs need the server.
    from orchestrator.server import LocalServer, ServerConfig, open_local_server

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


async def run(
    plan: Plan | str | os.PathLike[str],
    goal: str | None = None,
    *,
    api_key: str | Secret | None = None,
    base_url: str | None = None,
    offline: bool | None = None,
    events: EventBus | None = None,
    observer: Callable[[RuntimeEvent], object] | None = None,
    stop: trio.Event | None = None,
    connection_settings: ConnectionSettings | None = None,
    server_options: Mapping[str, Any] | None = None,
    restart_intensity: int = 3,
    restart_period: float = 60.0,
    transport: Literal["tcp", "memory"] = "tcp",
    approve: Approver | None = None,
) -> RunResult:
    """Run a plan to its answer, inside the caller's trio program.

    Args:
        plan: a :class:`~plans.Plan`, or the path of a TOML/YAML/JSON plan file.
        goal: what to achieve; defaults to the plan's ``goal``.
        api_key: the service key; default ``OPENAI_API_KEY``. Without any key the run uses
            the embedded server in-process (unless ``offline=False``).
        base_url: a compatible endpoint (``https://host/v1`` or ``wss://host/v1/responses``);
            default the plan's ``settings.base_url``, then the service.
        offline: force the embedded server (True) or the network (False).
        events: a bus to publish runtime events on (subscribe to it to watch the run).
        observer: a callable receiving every runtime event, synchronously.
        stop: set this event to stop the run cleanly; the result is ``interrupted``.
        connection_settings: transport settings for every agent.
        server_options: ``ServerConfig`` fields for the embedded server (offline runs).
        restart_intensity, restart_period: the supervisor's restart limit.
        transport: how an offline run reaches the embedded server: loopback ``tcp`` (real
            sockets) or ``memory`` (in-memory streams: no file descriptors, and trio's
            ``MockClock`` drives both sides, for tests and simulations).
        approve: asked about each call of a ``destructive`` or ``external`` tool that the
            plan's ``[approvals]`` neither allow nor deny (and ``otherwise = "ask"``): a
            callable taking an ``ApprovalRequest`` and returning ``bool`` or an
            ``ApprovalDecision`` (sync or async), e.g. ``ApprovalPolicy(allow=("fixer:*",))``.
            Without it such calls are denied and the model is told why.

    Returns:
        The :class:`RunResult`, also when a budget, a stop request or a failure ended the run.

    Raises:
        PlanError: the plan is invalid, a tool of it included (a parameter without a type
            hint, a type that has no JSON schema); nothing was started. ``issues`` lists
            every problem, as ``orchestrator validate`` prints them.
        ConfigurationError: a bad endpoint or a malformed key (nothing was started).

    Everything that goes wrong once the run started (a rejected key, an unknown model, a
    crashed agent, a budget) is in the returned result's ``status``, ``code`` and ``reason``.
    """
    # Every tool is built while checking: one that cannot be described to a model is a
    # PlanError now, before any connection, rather than a crash inside the run.
    if isinstance(plan, Plan):
        # Checked again (a Plan can be built by hand), but its warnings were already reported
        # by whoever built or loaded it: only errors stop the run here.
        report = check_plan(plan, check_tool=check_definition)
        plan = report.raise_for_errors() if report.errors else plan
    else:
        plan = load_plan(Path(plan), check_tool=check_definition)
    goal = goal if goal is not None else plan.goal
    if goal is None and not plan.steps:
        raise PlanError(
            f"plan {plan.name!r} has no goal: pass one (--goal) or set 'goal' in the plan"
        )
    _check_fd_budget(len(plan.agents), offline, api_key, transport)
    bus = events if events is not None else EventBus()
    if observer is not None:
        bus.add_listener(observer)
    url_option = base_url or plan.settings.base_url
    settings = connection_settings or ConnectionSettings()
    started_wall = time.time()
    started = trio.current_time()
    run_scope = trio.CancelScope()
    budget = BudgetTracker(
        run=_limits(plan.budgets),
        agents={agent.name: _limits(agent.limits) for agent in plan.agents if agent.limits},
        scope=run_scope,
    )
    if plan.budgets.wall_clock is not None:
        run_scope.deadline = started + plan.budgets.wall_clock
    registry = ToolRegistry()
    answer: str | None = None
    steps: dict[str, StepReport] = {}
    failure: BaseException | None = None
    interrupted = False
    async with _endpoint(api_key, url_option, offline, server_options, transport) as endpoint:
        label = endpoint.label

        @asynccontextmanager
        async def opener(agent: str) -> AsyncIterator[Connection]:
            async with open_connection(
                endpoint.url,
                endpoint.key,
                settings=settings,
                agent=agent,
                events=bus,
                connector=endpoint.connector,
            ) as connection:
                yield connection

        team = _build_team(
            plan,
            opener=opener,
            budget=budget,
            bus=bus,
            registry=registry,
            intensity=restart_intensity,
            period=restart_period,
            approver=ApprovalPolicy(
                allow=plan.approvals.allow,
                deny=plan.approvals.deny,
                otherwise=plan.approvals.otherwise,
                ask=approve,
            ),
        )
        bus.emit(_run_started(plan, goal, label))
        with run_scope:
            try:
                async with trio.open_nursery() as nursery:
                    if stop is not None:
                        nursery.start_soon(_watch_stop, stop, run_scope)
                    await nursery.start(team.supervisor.run)
                    try:
                        if plan.steps:
                            answer = await _run_steps(plan, goal, team, steps, budget, bus)
                        else:
                            assert team.planner is not None
                            reply = await team.router.ask(
                                "run", team.planner.name, Task(text=goal or "", sender="run")
                            )
                            answer = reply.text if isinstance(reply, TaskResult) else str(reply)
                    finally:
                        team.supervisor.stop()
                        nursery.cancel_scope.cancel()
            except* (OrchestratorError, ToolRepairBudgetExceeded) as group:
                failure = _first_exception(group)
        if stop is not None and stop.is_set() and run_scope.cancelled_caught:
            interrupted = True
        if failure is None and budget.failure is not None:
            failure = budget.failure
    result = _result(
        plan,
        goal,
        team,
        budget,
        label,
        answer=answer,
        steps=steps,
        failure=failure,
        interrupted=interrupted,
        timed_out=run_scope.cancelled_caught and trio.current_time() >= run_scope.deadline,
        started_wall=started_wall,
        duration=trio.current_time() - started,
    )
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


def _check_fd_budget(
    agents: int, offline: bool | None, api_key: str | Secret | None, transport: str
) -> None:
    """Refuse up front a team that cannot get a socket per agent under the fd limit."""
    from orchestrator.tuning import fd_limit

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
    bus: EventBus,
) -> str:
    """Run the DAG: each step once its dependencies are done, independent ones in parallel.

    Every step sent to its agent gets its report in ``reports`` when it ends, also when the
    run's end cuts it (``cut``, or ``not_started`` if its agent had not taken it up yet);
    steps never sent get none. A step's ``duration`` counts from when its agent took it up
    (``task.started``), ``waited`` the time before that in the agent's mailbox.
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
        if any(reports[d].status != "completed" for d in step.depends_on):
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
        error: str | None = None
        for attempt in range(STEP_ATTEMPTS):
            bus.emit(
                StepStarted(
                    time=trio.current_time(), step=step.id, agent=step.agent, attempt=attempt + 1
                )
            )
            try:
                reply = await team.router.ask(
                    "run", step.agent, Task(text=task, sender="run", step=step.id)
                )
            except ActorDead as exc:
                # The agent crashed on this step; the supervisor restarts it with its session.
                error = str(exc)
                if attempt + 1 < STEP_ATTEMPTS:
                    with trio.move_on_after(RESTART_WAIT):
                        await team.starts.wait_running(step.agent)
                continue
            text = reply.text if isinstance(reply, TaskResult) else str(reply)
            results[step.id] = text
            report(step, "completed", began, result=text)
            return
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
        raise _StepsFailed(failed)
    budget.check()
    finals = result_steps(plan)
    return "\n\n".join(results[step.id] for step in finals if step.id in results)


@attrs.define(eq=False)
class _Starts:
    """Lets a task wait until an actor is up again (after a restart), from ActorStarted events."""

    router: Router
    _waiting: dict[str, trio.Event] = attrs.field(factory=dict)

    def __call__(self, event: RuntimeEvent) -> None:
        if isinstance(event, ActorStarted):
            waiter = self._waiting.pop(event.actor, None)
            if waiter is not None:
                waiter.set()

    async def wait_running(self, name: str) -> None:
        if self.router.is_running(name):
            return
        waiter = self._waiting.setdefault(name, trio.Event())
        await waiter.wait()


class _StepsFailed(OrchestratorError):
    def __init__(self, failed: list[StepReport]) -> None:
        self.failed = failed
        names = ", ".join(f"{report.id} ({report.error})" for report in failed)
        super().__init__(f"steps failed: {names}")


def _code_of(error: BaseException) -> str:
    if isinstance(error, BudgetExceeded):
        return f"budget.{error.budget}"
    if isinstance(error, ToolRepairBudgetExceeded):
        return "tool.repair_budget"
    if isinstance(error, AuthenticationError):
        return "auth.rejected" if error.status == 401 else "auth.forbidden"
    if isinstance(error, ConfigurationError):
        return error.code
    if isinstance(error, RestartLimitReached):
        return "run.restart_limit"
    if isinstance(error, _StepsFailed):
        return "run.step_failed"
    return "run.failed"


def _result(
    plan: Plan,
    goal: str | None,
    team: _Team,
    budget: BudgetTracker,
    endpoint: str,
    *,
    answer: str | None,
    steps: dict[str, StepReport],
    failure: BaseException | None,
    interrupted: bool,
    timed_out: bool,
    started_wall: float,
    duration: float,
) -> RunResult:
    status: RunStatus
    reason: str | None = None
    code: str | None = None
    exceeded = budget.exceeded
    if timed_out and exceeded is None and plan.budgets.wall_clock is not None:
        exceeded = BudgetExceeded("wall_clock", plan.budgets.wall_clock, duration)
    if exceeded is not None:
        status, reason, code = "budget_exceeded", str(exceeded), f"budget.{exceeded.budget}"
        answer = None
    elif interrupted:
        status, reason, code, answer = "interrupted", "stopped on request", "run.interrupted", None
    elif failure is not None:
        status, reason, code, answer = "failed", redact(str(failure)), _code_of(failure), None
    elif answer is None:
        status, reason, code = "failed", "the run ended without an answer", "run.failed"
    else:
        status = "completed"
    agents = []
    for name, actor in team.actors.items():
        usage = budget.usage(name)
        connection = actor.connection
        agents.append(
            AgentReport(
                name=name,
                role=actor.role or "worker",
                model=actor.session.model,
                turns=actor.model_turns,
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
        plan=plan.name,
        goal=goal,
        mode="steps" if plan.steps else "delegate",
        endpoint=endpoint,
        answer=answer,
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
        started_at=started_wall,
        duration=duration,
    )
