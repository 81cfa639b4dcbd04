"""What a run reports: ``RunResult`` and its parts, and how they are made from how it ended."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
import msgspec

from actors.journal import CallsParked
from orchestrator.core.protocol.codec import encode
from orchestrator.core.protocol.events import Item
from orchestrator.core.redaction import redact
from orchestrator.errors import (
    BudgetExceeded,
    ConnectionLost,
    JobLost,
    JournalError,
    OrchestratorError,
    ServerError,
)
from plans import Plan, result_steps, scheduled_steps

if TYPE_CHECKING:
    from actors.agent import AgentActor
    from orchestrator.core.budget import BudgetTracker
    from orchestrator.core.connection import ConnectionStatistics
    from orchestrator.runner.team import Team

__all__ = [
    "AgentReport",
    "ConnectionReport",
    "FailureReport",
    "ParkedCall",
    "RunEnd",
    "RunResult",
    "RunStatus",
    "StepReport",
    "UsageReport",
    "build_result",
    "parked_call",
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


class ConnectionReport(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's connection at the end of the run: its statistics but the agent's name and
    the socket in use."""

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
    transport: str = "websocket"
    http_requests: int = 0

    @classmethod
    def of(cls, stats: ConnectionStatistics) -> ConnectionReport:
        # Field by field from the statistics: a field they lack fails here, loudly.
        return cls(**{name: getattr(stats, name) for name in cls.__struct_fields__})


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


@attrs.frozen(kw_only=True)
class RunEnd:
    """How a run ended, as the job glue saw it: what :func:`build_result` reports.

    ``failure`` is what stopped it (an error of ours, parked calls, a journal that failed);
    ``interrupted``: stopped on request; ``cancelled``: ``orchestrator jobs cancel``;
    ``timed_out``: its wall-clock deadline passed.
    """

    started_wall: float
    duration: float
    answer: str | None = None
    steps: Mapping[str, StepReport] = attrs.field(factory=dict)
    failure: BaseException | None = None
    interrupted: bool = False
    cancelled: bool = False
    timed_out: bool = False
    parked: list[ParkedCall] = attrs.field(factory=list)
    resumed: bool = False


def build_result(
    plan: Plan,
    goal: str | None,
    team: Team,
    budget: BudgetTracker,
    endpoint: str,
    *,
    job: str | None,
    end: RunEnd,
) -> RunResult:
    """The :class:`RunResult` of a run of ``plan`` that ended as ``end`` says."""
    failures = _delegation_failures(team)
    status, reason, code, answer = _outcome(
        end, _exceeded(plan, budget, end), failures=failures, job=job
    )
    total = budget.total
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
        agents=[_agent_report(name, actor, budget) for name, actor in team.actors.items()],
        steps=_step_reports(plan, end.steps),
        failures=failures,
        parked=end.parked,
        resumed=end.resumed,
        started_at=end.started_wall,
        duration=end.duration,
    )


def parked_call(call: Any) -> ParkedCall:
    """A journaled call in doubt (``orchestrator.jobs.model.CallEntry``), as reported."""
    return ParkedCall(
        agent=call.agent,
        turn=call.turn,
        call_id=call.call_id,
        tool=call.name,
        arguments=call.arguments,
        side_effect=call.side_effect,
        attempt=call.attempt,
    )


def _exceeded(plan: Plan, budget: BudgetTracker, end: RunEnd) -> BudgetExceeded | None:
    """The budget that ended the run: the tracker's, or the run's wall clock when its
    deadline passed."""
    exceeded = budget.exceeded
    if end.timed_out and exceeded is None and plan.budgets.wall_clock is not None:
        exceeded = BudgetExceeded("wall_clock", plan.budgets.wall_clock, end.duration)
    return exceeded


def _delegation_failures(team: Team) -> list[FailureReport]:
    return [
        FailureReport(
            kind="delegation",
            agent=failed.worker,
            id=failed.message,
            task=failed.task,
            error=redact(failed.error),
        )
        for failed in (team.planner.failures if team.planner is not None else [])
    ]


def _agent_report(name: str, actor: AgentActor, budget: BudgetTracker) -> AgentReport:
    usage = budget.usage(name)
    connection = actor.connection
    return AgentReport(
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


def _step_reports(plan: Plan, steps: Mapping[str, StepReport]) -> list[StepReport]:
    """Every step that was sent or scheduled, in the plan's order; those scheduled but never
    sent are ``not_started``."""
    scheduled = {step.id for step in scheduled_steps(plan)} if plan.steps else set()
    return [
        steps.get(s.id) or StepReport(id=s.id, agent=s.agent, status="not_started")
        for s in plan.steps
        if s.id in steps or s.id in scheduled
    ]


def _code_of(error: BaseException) -> str:
    """The code a failed run reports: the error's own, except for the two errors whose
    ``code`` is the peer's (a close code, the service's error code)."""
    if isinstance(error, OrchestratorError) and not isinstance(error, ConnectionLost | ServerError):
        return str(error.code)
    return "run.failed"


def _outcome(
    end: RunEnd,
    exceeded: BudgetExceeded | None,
    *,
    failures: list[FailureReport],
    job: str | None,
) -> tuple[RunStatus, str | None, str | None, str | None]:
    """Status, reason, code and answer, from how the run ended (first match wins)."""
    failure = end.failure
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
    if end.cancelled:
        return "cancelled", "cancelled on request (orchestrator jobs cancel)", "job.cancelled", None
    if end.interrupted:
        return "interrupted", "stopped on request", "run.interrupted", None
    if failure is not None:
        return "failed", redact(str(failure)), _code_of(failure), None
    return _answered(end.answer, failures)


def _answered(
    answer: str | None, failures: list[FailureReport]
) -> tuple[RunStatus, str | None, str | None, str | None]:
    """The outcome of a run that ran to its end: an answer, whole or partial, or none."""
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


def _typed_answer(plan: Plan, team: Team, answer: str | None) -> Any:
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
