"""Resuming a journaled job: the plan checked against the journal, then the job claimed, or
parked (calls in doubt) or declared dead (it keeps crashing without progress)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import msgspec

from orchestrator.errors import JobNotResumable, PlanDiverged
from orchestrator.jobs.model import (
    AgentPrint,
    Claim,
    JobJournal,
    JobRecord,
    JobStatus,
    Owner,
    StatusWrite,
    owner_alive,
)
from orchestrator.jobs.resume import decide_claim, parked_calls, plan_changes
from orchestrator.runner.results import ParkedCall, parked_call
from plans import Plan

if TYPE_CHECKING:
    from orchestrator.jobs.store import JobStore

__all__ = ["check_unchanged", "owner_alive_of", "resume_claim"]


async def resume_claim(
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

    Raises:
        PlanDiverged: see :func:`check_unchanged`.
        JobNotResumable: the job is dead (now marked so).
    """
    record = journaled.job
    check_unchanged(journaled, plan, prints, allow_budget_change=allow_budget_change)
    parked = parked_calls(journaled)
    rule = _ResumeRule(max_recoveries=max_recoveries, parked=bool(parked))
    if claim is None:
        _, claim = await store.claim(record.id, Owner.this_process(), rule)
    if rule.dead is not None:
        await store.write(claim, _status_write("dead", reason=rule.dead, code="job.dead"))
        raise JobNotResumable(
            f"job {record.id} is dead: {rule.dead}; `orchestrator jobs retry {record.id}` "
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
        return [parked_call(call) for call in parked]
    return claim


def check_unchanged(
    journaled: JobJournal,
    plan: Plan,
    prints: dict[str, AgentPrint],
    *,
    allow_budget_change: bool,
) -> None:
    """Refuse a plan that differs from the journaled one where a resume cannot follow.

    Raises:
        PlanDiverged: agents or started steps changed; or the budgets did, without
            ``allow_budget_change``.
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


def owner_alive_of(job: JobRecord) -> bool | None:
    """Whether the job's recorded owner still runs (``None``: no owner, or unknown)."""
    return None if job.owner is None else owner_alive(job.owner, job.id)


@attrs.define(kw_only=True)
class _ResumeRule:
    """The claim decision of a resume (run inside the store's transaction): the job rules,
    with parked calls making it ``needs_attention``; remembers why the job is dead."""

    max_recoveries: int
    parked: bool
    dead: str | None = None

    def __call__(self, current: JobRecord, now: float) -> tuple[int, str]:
        decision = decide_claim(
            current, now, owner_alive=owner_alive_of(current), max_recoveries=self.max_recoveries
        )
        if decision.dead:
            if self.dead is None:
                self.dead = decision.reason or "dead"
        elif self.parked:
            return decision.recoveries, "needs_attention"
        return decision.recoveries, decision.status


def _status_write(status: JobStatus, *, reason: str, code: str) -> Any:
    return StatusWrite(status=status, reason=reason, code=code, release=True)
