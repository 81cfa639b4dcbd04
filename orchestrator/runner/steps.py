"""Steps mode: a plan's steps as a DAG, each asked of its agent once its dependencies are
done, independent ones in parallel; and which steps a resumed job completed before."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import trio

from actors.agent import Assignment, AssignmentResult
from actors.journal import MessageEntry
from orchestrator.core.failpoints import crash_point
from orchestrator.core.observe import EventBus, RuntimeEvent, StepFinished, StepStarted, TaskStarted
from orchestrator.core.redaction import redact
from orchestrator.errors import ActorDead, StepsFailed
from orchestrator.jobs.journal import Journal
from orchestrator.jobs.model import JobJournal, StepRecord
from orchestrator.runner.results import StepReport
from orchestrator.runner.team import Team
from plans import Plan, render_task, result_steps, scheduled_steps, task_references

if TYPE_CHECKING:
    from orchestrator.core.budget import BudgetTracker

__all__ = [
    "RESTART_WAIT",
    "STEP_ATTEMPTS",
    "completed_steps",
    "record_answered_steps",
    "reply_text",
    "run_steps",
    "step_message",
]

STEP_ATTEMPTS: Final = 2
RESTART_WAIT: Final = 60.0

_Status = Literal["completed", "failed", "skipped", "cut", "not_started"]


async def run_steps(
    plan: Plan,
    goal: str | None,
    team: Team,
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

    Returns:
        The results of the plan's result steps, one paragraph each.

    Raises:
        StepsFailed: a step failed for good (its dependents were skipped).
        BudgetExceeded: a budget was reached.
    """
    order = scheduled_steps(plan)
    walk = _StepWalk(
        goal=goal,
        team=team,
        reports=reports,
        journal=journal,
        done_steps=done_steps,
        bus=bus,
        done={step.id: trio.Event() for step in order},
    )
    bus.add_listener(walk.on_event)
    try:
        async with trio.open_nursery() as nursery:
            for step in order:
                nursery.start_soon(walk.run_step, step)
    finally:
        bus.remove_listener(walk.on_event)
    failed = [report for report in reports.values() if report.status == "failed"]
    if failed:
        raise StepsFailed(failed)
    budget.check()
    return "\n\n".join(
        walk.results[step.id] for step in result_steps(plan) if step.id in walk.results
    )


@attrs.define(eq=False, kw_only=True)
class _StepWalk:
    """The state of one walk of the DAG: each step's ``done`` event, results, and when its
    agent took it up (first attempt)."""

    goal: str | None
    team: Team
    reports: dict[str, StepReport]
    journal: Journal | None
    done_steps: Mapping[str, str]
    bus: EventBus
    done: dict[str, trio.Event]
    results: dict[str, str] = attrs.field(factory=dict)
    taken: dict[str, float] = attrs.field(factory=dict)

    def on_event(self, event: RuntimeEvent) -> None:
        if isinstance(event, TaskStarted) and event.step is not None:
            self.taken.setdefault(event.step, event.time)

    async def run_step(self, step: Any) -> None:
        for dependency in step.depends_on:
            await self.done[dependency].wait()
        if step.id in self.done_steps:
            self.results[step.id] = self.done_steps[step.id]
            self._report(step, "completed", trio.current_time(), result=self.done_steps[step.id])
            return
        if any(self.reports[d].status != "completed" for d in step.depends_on):
            self._journal(StepRecord(id=step.id, agent=step.agent, status="skipped"))
            self._report(step, "skipped", trio.current_time(), error="a dependency failed")
            return
        began = trio.current_time()
        try:
            await self._attempts(step, began)
        finally:
            if step.id not in self.reports:  # cancelled in flight: the run is ending
                self._report(step, "cut", began, error="the run ended while it ran")

    async def _attempts(self, step: Any, began: float) -> None:
        """Ask the step of its agent, again after a crash of the agent (it continues where
        it stopped: same message id), up to ``STEP_ATTEMPTS`` times."""
        message = step_message(step.id)
        task = self._task_of(step)
        self.team.actors[step.agent].memory.message_sent(
            MessageEntry(id=message, sender="run", recipient=step.agent, text=task, step=step.id)
        )
        error: str | None = None
        for attempt in range(1, STEP_ATTEMPTS + 1):
            self._started(step, attempt)
            try:
                reply = await self.team.router.ask(
                    "run", step.agent, Assignment(text=task, sender="run", step=step.id, id=message)
                )
            except ActorDead as exc:
                # The agent crashed on this step; the supervisor restarts it with its session
                # and memory, and the same message makes it continue where it stopped.
                error = str(exc)
                if attempt < STEP_ATTEMPTS:
                    with trio.move_on_after(RESTART_WAIT):
                        await self.team.router.wait_running(step.agent)
                continue
            await self._completed(step, began, reply_text(reply), attempt)
            return
        self._journal(
            StepRecord(
                id=step.id,
                agent=step.agent,
                status="failed",
                error=redact(error or ""),
                attempts=STEP_ATTEMPTS,
            )
        )
        self._report(step, "failed", began, error=error)

    def _task_of(self, step: Any) -> str:
        task = render_task(step, self.results, goal=self.goal)
        if self.team.actors[step.agent].fresh_context:
            task = _with_dependencies(task, step, self.results)
        return task

    def _started(self, step: Any, attempt: int) -> None:
        self.bus.emit(
            StepStarted(time=trio.current_time(), step=step.id, agent=step.agent, attempt=attempt)
        )
        self._journal(StepRecord(id=step.id, agent=step.agent, status="started", attempts=attempt))

    async def _completed(self, step: Any, began: float, text: str, attempt: int) -> None:
        self.results[step.id] = text
        if self.journal is not None:
            await self.journal.step_durably(
                StepRecord(
                    id=step.id, agent=step.agent, status="completed", result=text, attempts=attempt
                )
            )
            crash_point("step_boundary")
        self._report(step, "completed", began, result=text)

    def _journal(self, record: StepRecord) -> None:
        if self.journal is not None:
            self.journal.step(record)

    def _report(self, step: Any, status: _Status, sent: float, **fields: Any) -> None:
        """The step's report (and ``step.finished``); its dependents may go on."""
        now = trio.current_time()
        start = self.taken.get(step.id)
        if status == "cut" and start is None:
            status, fields = "not_started", {}  # queued behind other steps, never begun
        duration = 0.0 if start is None else now - start
        waited = (now if start is None else start) - sent
        self.reports[step.id] = StepReport(
            id=step.id,
            agent=step.agent,
            status=status,
            duration=duration,
            waited=waited,
            **fields,
        )
        self.bus.emit(
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
        self.done[step.id].set()


def reply_text(reply: object) -> str:
    """The text of an agent's reply to an ask."""
    return reply.text if isinstance(reply, AssignmentResult) else str(reply)


def step_message(step_id: str) -> str:
    """The message id of a step's assignment: the same in every process of the job."""
    return f"step:{step_id}"


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


def completed_steps(journaled: JobJournal, plan: Plan) -> dict[str, str]:
    """Steps done in earlier runs of the job: from their step records, or from the reply a
    step's agent journaled when the step record itself was not written yet."""
    done = {step.id: step.result or "" for step in journaled.steps if step.status == "completed"}
    replies = {turn.message: turn.reply for turn in journaled.turns if turn.reply is not None}
    replies.update({reply.message: reply.text for reply in journaled.replies})
    for step in plan.steps:
        text = replies.get(step_message(step.id))
        if step.id not in done and text is not None:
            done[step.id] = text
    return done


def record_answered_steps(
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
