"""One process's part of one job: start it (or resume it from its journal), drive the team to
an answer inside the run's cancel scope, and journal how it ended."""

from __future__ import annotations

import math
import os
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import attrs
import msgspec
import trio

from actors.agent import Assignment
from actors.approval import ApprovalPolicy, Approver
from actors.journal import CallsParked, MessageEntry
from actors.mcp import McpServers
from actors.tools import ToolRegistry, ToolRepairBudgetExceeded
from orchestrator.core.budget import BudgetLimits, BudgetTracker
from orchestrator.core.connection import Connection, open_connection
from orchestrator.core.failpoints import crash_point
from orchestrator.core.observe import EventBus, RunAgent, RunFinished, RunStarted, capped
from orchestrator.core.redaction import redact
from orchestrator.core.rules import is_offline
from orchestrator.errors import InternalError, JournalError, OrchestratorError
from orchestrator.jobs.journal import Journal, clamp_wall_clock
from orchestrator.jobs.model import DRIVEN, AgentPrint, Claim, JobJournal, JobStatus, Owner
from orchestrator.jobs.resume import parked_calls, rebuild
from orchestrator.runner.endpoint import (
    EmbeddedServer,
    Endpoint,
    live_label,
    open_endpoint,
)
from orchestrator.runner.results import (
    ParkedCall,
    RunEnd,
    RunResult,
    StepReport,
    build_result,
    parked_call,
)
from orchestrator.runner.resume import resume_claim
from orchestrator.runner.settings import RunSettings, connection_settings
from orchestrator.runner.steps import (
    completed_steps,
    record_answered_steps,
    reply_text,
    run_steps,
)
from orchestrator.runner.store import new_job
from orchestrator.runner.team import (
    Opener,
    Team,
    attach_mcp_tools,
    build_team,
    fingerprints,
    restore,
)
from plans import Plan, scheduled_steps

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from orchestrator.jobs.store import JobStore

__all__ = ["JobSpec", "run_job"]


@attrs.frozen(kw_only=True)
class JobSpec:
    """What one process runs: a job of ``plan`` to start, or to resume from ``journaled``
    (then under ``claim`` when the caller holds one already). ``settings`` has ``offline``
    and ``model`` resolved (from the journal on a resume)."""

    plan: Plan
    goal: str | None
    job_id: str
    settings: RunSettings
    embedded: EmbeddedServer
    options: dict[str, object]
    journaled: JobJournal | None = None
    claim: Claim | None = None


@attrs.define(eq=False)
class _JobRun:
    """What one process does to one job: start or resume it, journal it, end it."""

    spec: JobSpec
    bus: EventBus
    started: float  # trio's clock
    started_wall: float
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    endpoint: Endpoint | None = None
    journal: Journal | None = None
    journal_failure: JournalError | None = None
    resumed: bool = False
    cancelled: bool = False
    spent_before: float = 0.0
    done_steps: dict[str, str] = attrs.field(factory=dict)

    def active_seconds(self) -> float:
        return self.spent_before + (trio.current_time() - self.started)

    def journal_failed(self, error: JournalError) -> None:
        self.journal_failure = error
        self.scope.cancel()

    def cancel_requested(self) -> None:
        self.cancelled = True
        self.scope.cancel()

    def timed_out(self) -> bool:
        """Whether the run's wall-clock deadline ended it (not a failed journal)."""
        return (
            self.scope.cancelled_caught
            and trio.current_time() >= self.scope.deadline
            and self.journal_failure is None
        )


async def run_job(
    spec: JobSpec,
    *,
    job_store: JobStore | None,
    events: EventBus,
    stop: trio.Event | None,
    approve: Approver | None,
) -> RunResult:
    """Run the job ``spec`` describes; when something escapes (a bug, the caller's
    cancellation), the job's status says so instead of staying ``running`` (shielded, best
    effort), and an error that is not ours becomes an ``InternalError``."""
    job_run = _JobRun(spec, events, started=trio.current_time(), started_wall=time.time())
    try:
        return await _run_job(job_run, job_store, stop, approve)
    except BaseException as exc:
        await _record_escape(job_run, exc)
        if isinstance(exc, Exception) and not isinstance(exc, OrchestratorError):
            # Not a refusal nor a failure the run reports: a bug in this project.
            raise InternalError(f"{type(exc).__name__}: {exc}") from exc
        raise
    finally:
        DRIVEN.discard(spec.job_id)


async def _record_escape(job_run: _JobRun, exc: BaseException) -> None:
    journal = job_run.journal
    if journal is None or journal.failure is not None:
        return
    cancelled = isinstance(exc, trio.Cancelled | KeyboardInterrupt)
    # A worker hands a job it stops back to the queue.
    stopped: JobStatus = "queued" if job_run.spec.settings.requeue_on_stop else "interrupted"
    await journal.finish(
        stopped if cancelled else "failed",
        reason=redact(f"{type(exc).__name__}: {exc}") if not cancelled else "cancelled",
        code="run.interrupted" if cancelled else "run.internal",
        active_seconds=job_run.active_seconds(),
    )


async def _run_job(
    job_run: _JobRun, job_store: JobStore | None, stop: trio.Event | None, approve: Approver | None
) -> RunResult:
    spec, plan = job_run.spec, job_run.spec.plan
    settings = spec.settings
    url_option = settings.base_url or plan.settings.base_url
    offline = is_offline(settings.api_key, settings.offline)
    # A missing or malformed key, or a URL carrying credentials, is refused before a job is
    # recorded.
    label = (
        "embedded"
        if offline
        else live_label(settings.api_key, url_option, settings.connection.allow_insecure)
    )
    budget = BudgetTracker(
        run=_limits(plan.budgets),
        agents={agent.name: _limits(agent.limits) for agent in plan.agents if agent.limits},
        scope=job_run.scope,
    )
    registry = ToolRegistry()
    team = _team(job_run, budget, registry, approve)
    servers = McpServers.for_plan(
        plan.mcp_servers, (name for names in team.mcp.values() for name in names)
    )
    if job_store is not None:
        parked = await _open_journal(job_run, job_store, team, budget, label)
        if parked is not None:
            return _parked_result(job_run, team, budget, label, parked)
    async with open_endpoint(
        settings.api_key, url_option, offline, spec.embedded, settings.connection.allow_insecure
    ) as endpoint:
        job_run.endpoint = endpoint
        end = await _drive(job_run, team, budget, servers, registry, stop, label)
    end = attrs.evolve(
        end,
        cancelled=job_run.cancelled,
        timed_out=job_run.timed_out(),
        duration=trio.current_time() - job_run.started,
    )
    job = spec.job_id if job_store is not None else None
    result = build_result(plan, spec.goal, team, budget, label, job=job, end=end)
    if job_run.journal is not None:
        await _record_end(job_run, result)
    job_run.bus.emit(_run_finished(result))
    return result


def _limits(budget: Any) -> BudgetLimits:
    return BudgetLimits(
        max_turns=budget.max_turns, max_tokens=budget.max_tokens, wall_clock=budget.wall_clock
    )


def _team(
    job_run: _JobRun, budget: BudgetTracker, registry: ToolRegistry, approve: Approver | None
) -> Team:
    spec, plan = job_run.spec, job_run.spec.plan
    return build_team(
        plan,
        opener=_opener(job_run),
        budget=budget,
        bus=job_run.bus,
        registry=registry,
        intensity=spec.settings.restart_intensity,
        period=spec.settings.restart_period,
        approver=ApprovalPolicy(
            allow=plan.approvals.allow,
            deny=plan.approvals.deny,
            otherwise=plan.approvals.otherwise,
            ask=approve,
        ),
        job=spec.job_id,
        model_settings=spec.settings.model,
        environ=os.environ,
    )


def _opener(job_run: _JobRun) -> Opener:
    """Each agent's connection to the run's endpoint (open once the run started)."""

    @asynccontextmanager
    async def opener(agent: str) -> AsyncIterator[Connection]:
        endpoint = job_run.endpoint
        assert endpoint is not None, "agents connect only once the endpoint is open"
        async with open_connection(
            endpoint.url,
            endpoint.key,
            settings=connection_settings(job_run.spec.settings, job_run.spec.plan),
            agent=agent,
            events=job_run.bus,
            connector=endpoint.connector,
        ) as opened:
            yield opened

    return opener


async def _open_journal(
    job_run: _JobRun, store: JobStore, team: Team, budget: BudgetTracker, label: str
) -> list[ParkedCall] | None:
    """Accept the new job, or claim the journaled one and give the team what it had; then
    journal the run. Returns the parked calls of a job that cannot go on, else None."""
    spec = job_run.spec
    prints = fingerprints(team)
    if spec.journaled is None:
        claim = await _accept(store, spec, prints, label)
    else:
        outcome = await resume_claim(
            store,
            spec.journaled,
            spec.plan,
            prints,
            allow_budget_change=spec.settings.allow_budget_change,
            max_recoveries=spec.settings.max_recoveries,
            claim=spec.claim,
        )
        if isinstance(outcome, list):  # parked: nothing runs
            return outcome
        claim = outcome
        _restore_progress(job_run, team, budget, spec.journaled)
    _attach_journal(job_run, Journal(store, claim), team, budget)
    return None


async def _accept(
    store: JobStore, spec: JobSpec, prints: dict[str, AgentPrint], endpoint: str
) -> Claim:
    """Journal a new job (its first transaction) and claim it."""
    options = {"offline": endpoint == "embedded", "endpoint": endpoint, **spec.options}
    job = new_job(spec.plan, spec.goal, spec.job_id, prints, options)
    claim = await store.create(job, Owner.this_process())
    assert claim is not None, "a job created with an owner is claimed by it"
    crash_point("job_accepted")
    return claim


def _restore_progress(
    job_run: _JobRun, team: Team, budget: BudgetTracker, journaled: JobJournal
) -> None:
    """The agents' conversations, memory and usage, the steps done and the time spent, as
    the journal has them."""
    fresh = frozenset(name for name, actor in team.actors.items() if actor.fresh_context)
    restore(team, rebuild(journaled, fresh), budget)
    job_run.done_steps = completed_steps(journaled, job_run.spec.plan)
    job_run.spent_before = journaled.job.active_seconds
    job_run.resumed = True


def _attach_journal(job_run: _JobRun, journal: Journal, team: Team, budget: BudgetTracker) -> None:
    """From here every turn, call, message and step is journaled; a journal that fails (or
    a lost lease) stops the run."""
    job_run.journal = journal
    DRIVEN.add(job_run.spec.job_id)
    journal.on_failure = job_run.journal_failed
    budget.guard = journal.check_lease
    for actor in team.actors.values():
        actor.memory.sink = journal
    journaled = job_run.spec.journaled
    if journaled is None:
        return
    if journaled.job.progress == 0:
        journal.event("started", "")  # queued, nothing journaled yet: a first start
    else:
        journal.event("resumed", f"{len(job_run.done_steps)} steps done")
        record_answered_steps(journal, journaled, job_run.spec.plan, job_run.done_steps)


def _parked_result(
    job_run: _JobRun, team: Team, budget: BudgetTracker, label: str, parked: list[ParkedCall]
) -> RunResult:
    """The result of a resume that found calls in doubt: nothing ran."""
    spec = job_run.spec
    assert spec.journaled is not None
    end = RunEnd(
        started_wall=job_run.started_wall,
        duration=0.0,
        failure=CallsParked(parked_calls(spec.journaled)),
        parked=parked,
        resumed=True,
    )
    return build_result(spec.plan, spec.goal, team, budget, label, job=spec.job_id, end=end)


async def _drive(
    job_run: _JobRun,
    team: Team,
    budget: BudgetTracker,
    servers: McpServers,
    registry: ToolRegistry,
    stop: trio.Event | None,
    label: str,
) -> RunEnd:
    """Start the team (and its MCP servers) and pursue the goal until an answer, a failure,
    a budget, the deadline or a stop request ends the run; stop the team. The end's times
    are the caller's to fill in."""
    plan = job_run.spec.plan
    wall_clock = clamp_wall_clock(plan.budgets.wall_clock, job_run.spent_before)
    if wall_clock != math.inf:
        job_run.scope.deadline = job_run.started + wall_clock
    job_run.bus.emit(_run_started(plan, job_run.spec.goal, label))
    steps: dict[str, StepReport] = {}
    answer: str | None = None
    failure: BaseException | None = None
    parked: list[ParkedCall] = []
    with job_run.scope:
        try:
            async with trio.open_nursery() as nursery:
                await _start_services(nursery, job_run, team, servers, registry, stop)
                try:
                    answer = await _pursue(job_run, team, steps, budget)
                finally:
                    team.supervisor.stop()
                    nursery.cancel_scope.cancel()
        except* CallsParked as group:
            failure = _first_exception(group)
            assert isinstance(failure, CallsParked)
            parked = [parked_call(call) for call in failure.calls]
        except* (OrchestratorError, ToolRepairBudgetExceeded) as group:
            failure = _first_exception(group)
    if failure is None and budget.failure is not None:
        failure = budget.failure
        if isinstance(failure, CallsParked):
            parked = [parked_call(call) for call in failure.calls]
    if job_run.journal_failure is not None:
        failure = job_run.journal_failure
    return RunEnd(
        started_wall=job_run.started_wall,
        duration=0.0,
        answer=answer,
        steps=steps,
        failure=failure,
        interrupted=stop is not None and stop.is_set() and job_run.scope.cancelled_caught,
        parked=parked,
        resumed=job_run.resumed,
    )


async def _start_services(
    nursery: trio.Nursery,
    job_run: _JobRun,
    team: Team,
    servers: McpServers,
    registry: ToolRegistry,
    stop: trio.Event | None,
) -> None:
    """What runs beside the work: the stop watcher, the journal's lease, the MCP servers,
    and the supervisor with the team."""
    if stop is not None:
        nursery.start_soon(_watch_stop, stop, job_run.scope)
    if job_run.journal is not None:
        nursery.start_soon(
            job_run.journal.keep_alive, job_run.active_seconds, job_run.cancel_requested
        )
    if servers.connections:
        # Before the agents: their tools are what the servers list.
        await nursery.start(servers.run)
        attach_mcp_tools(team, servers, registry)
    await nursery.start(team.supervisor.run)


async def _pursue(
    job_run: _JobRun, team: Team, steps: dict[str, StepReport], budget: BudgetTracker
) -> str:
    """The answer: of the steps, or of the planner the goal is delegated to."""
    spec = job_run.spec
    if spec.plan.steps:
        return await run_steps(
            spec.plan,
            spec.goal,
            team,
            steps,
            budget,
            job_run.journal,
            job_run.done_steps,
            job_run.bus,
        )
    return await _delegate_goal(team, spec.goal or "")


async def _delegate_goal(team: Team, goal: str) -> str:
    assert team.planner is not None
    team.planner.memory.message_sent(
        MessageEntry(id="goal", sender="run", recipient=team.planner.name, text=goal)
    )
    reply = await team.router.ask(
        "run", team.planner.name, Assignment(text=goal, sender="run", id="goal")
    )
    return reply_text(reply)


async def _watch_stop(stop: trio.Event, scope: trio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()


def _first_exception(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group.exceptions[0]
    return _first_exception(exc) if isinstance(exc, BaseExceptionGroup) else exc


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
    if job_run.spec.settings.requeue_on_stop and code == "run.interrupted":
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


def _run_finished(result: RunResult) -> RunFinished:
    return RunFinished(
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
