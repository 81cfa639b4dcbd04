"""Resume decisions, as pure functions of what the journal says.

* :func:`decide_claim`: may this process take the job, and with which recovery count (a job
  that crashes on every start, without progress, goes ``dead`` after a limit)?
* :func:`plan_changes`: what differs between the journaled plan and the one given now, and
  whether the difference forbids a resume (agents, started steps) or needs a flag (budgets).
* :func:`rebuild`: every agent's transcript, usage, replies and open calls, from its turns.
* :func:`parked_calls`: the in-doubt calls a person must resolve before anything runs.

The I/O (reading the journal, claiming the row) is in ``orchestrator.jobs.store``; the glue
that carries the decisions out is in ``orchestrator.run``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs
import msgspec

from actors.journal import CallEntry, TurnEntry, in_doubt_action
from orchestrator.core.protocol.codec import decode_items
from orchestrator.core.protocol.events import FunctionCallItem, Item
from orchestrator.errors import JobNotResumable, JobRunning
from orchestrator.jobs.model import FINAL, AgentPrint, JobJournal, JobRecord, JobStatus

if TYPE_CHECKING:
    from plans import Plan

__all__ = [
    "DEFAULT_MAX_RECOVERIES",
    "AgentState",
    "ClaimDecision",
    "decide_claim",
    "parked_calls",
    "plan_changes",
    "rebuild",
]

DEFAULT_MAX_RECOVERIES: Final = 3


@attrs.frozen
class ClaimDecision:
    """What a claim does: the status and recovery count to set, or that the job is dead."""

    status: JobStatus
    recoveries: int
    dead: bool = False
    reason: str | None = None


def decide_claim(
    job: JobRecord,
    now: float,
    *,
    owner_alive: bool | None,
    retry: bool = False,
    max_recoveries: int = DEFAULT_MAX_RECOVERIES,
) -> ClaimDecision:
    """Whether a process may take ``job`` now to run it on.

    Args:
        owner_alive: whether the recorded owner still runs (``None``: unknown, another host;
            its lease decides).
        retry: ``jobs retry``: revive a ``failed`` or ``dead`` job with a fresh count.

    Raises:
        JobRunning: a live owner holds the job.
        JobNotResumable: the job is over, or waits for a person.
    """
    status = job.status
    if retry:
        if status in ("completed", "partial", "cancelled"):
            raise JobNotResumable(
                f"job {job.id} is {status}: there is nothing to retry", job=job.id
            )
        _refuse_live(job, now, owner_alive)
        return ClaimDecision("running", 0)
    if status in FINAL:
        hint = (
            f"; `orchestrator jobs retry {job.id}` runs it again"
            if status in ("failed", "dead")
            else ""
        )
        raise JobNotResumable(f"job {job.id} is {status}{hint}", job=job.id)
    if status == "needs_attention":
        raise JobNotResumable(
            f"job {job.id} needs attention: resolve its parked calls first "
            f"(`orchestrator jobs show {job.id}`, then `orchestrator jobs resolve`)",
            job=job.id,
        )
    if status in ("running", "queued") and job.owner is not None:
        _refuse_live(job, now, owner_alive)
        # Its owner died without saying so: a crash. Count the crashes that made no progress.
        crashes = job.recoveries + 1 if job.progress == job.progress_at_claim else 1
        if crashes >= max_recoveries:
            return ClaimDecision(
                "dead",
                crashes,
                dead=True,
                reason=f"the job crashed {crashes} times in a row without progress "
                f"(last owner {job.owner.label})",
            )
        return ClaimDecision("running", crashes)
    return ClaimDecision("running", 0)


def _refuse_live(job: JobRecord, now: float, owner_alive: bool | None) -> None:
    if job.owner is None or job.status not in ("running", "queued"):
        return
    lease_valid = job.lease_expires is not None and job.lease_expires > now
    if owner_alive or (owner_alive is None and lease_valid):
        raise JobRunning(
            f"job {job.id} is running in {job.owner.label}"
            + (f" (lease for {job.lease_expires - now:.0f} s more)" if job.lease_expires else ""),
            job=job.id,
        )


# -- plan divergence ---------------------------------------------------------------------------


@attrs.frozen
class PlanChanges:
    """Differences that forbid a resume (``blocking``) or need ``allow_budget_change``."""

    blocking: tuple[str, ...] = ()
    budgets: tuple[str, ...] = ()


def plan_changes(
    old: Plan,
    new: Plan,
    old_agents: dict[str, AgentPrint],
    new_agents: dict[str, AgentPrint],
    started_steps: set[str],
) -> PlanChanges:
    """What changed between the journaled plan and ``new``, in words.

    Agents are compared by their fingerprints (model, instructions, tools with their schema
    and side effect, store, the model settings that change behaviour, the declared output);
    steps that started are compared by agent, task and
    dependencies; budgets separately. Steps that never started may change freely.
    """
    before, after = old_agents.keys(), new_agents.keys()
    blocking = [f"agent {name!r} was removed" for name in sorted(before - after)]
    blocking += [f"agent {name!r} was added" for name in sorted(after - before)]
    common = sorted(before & after)
    for name in common:
        blocking += _agent_changes(name, old_agents[name], new_agents[name])
    blocking += _started_step_changes(old, new, started_steps)
    budgets = ["budgets changed"] if old.budgets != new.budgets else []
    budgets += [
        f"agent {name!r}: limits changed"
        for name in common
        if _limits(old, name) != _limits(new, name)
    ]
    return PlanChanges(tuple(blocking), tuple(budgets))


def _agent_changes(name: str, before: AgentPrint, after: AgentPrint) -> list[str]:
    """What changed in one agent's fingerprint, in words (each change blocks a resume)."""
    changes = [
        f"agent {name!r}: {field} changed"
        for field in ("role", "model", "instructions", "store", "context")
        if getattr(before, field) != getattr(after, field)
    ]
    if before.settings != after.settings:
        changes.append(
            f"agent {name!r}: model settings changed "
            f"({before.settings or 'none'} -> {after.settings or 'none'})"
        )
    if before.output != after.output:
        was, now = before.output.partition(":")[0], after.output.partition(":")[0]
        detail = f"{was or 'text'} -> {now or 'text'}" if was != now else "its schema"
        changes.append(f"agent {name!r}: output type changed ({detail})")
    tools_before, tools_after = before.tools.keys(), after.tools.keys()
    changes += [
        f"agent {name!r}: tool {tool!r} was removed" for tool in sorted(tools_before - tools_after)
    ]
    changes += [
        f"agent {name!r}: tool {tool!r} was added" for tool in sorted(tools_after - tools_before)
    ]
    changes += [
        f"agent {name!r}: tool {tool!r} changed (schema or side effect)"
        for tool in sorted(tools_before & tools_after)
        if before.tools[tool] != after.tools[tool]
    ]
    return changes


def _started_step_changes(old: Plan, new: Plan, started_steps: set[str]) -> list[str]:
    """Started steps removed or changed, and a changed ``final_step`` once any step started."""
    old_steps = {step.id: step for step in old.steps}
    new_steps = {step.id: step for step in new.steps}
    changes: list[str] = []
    for step_id in sorted(started_steps):
        before, after = old_steps.get(step_id), new_steps.get(step_id)
        if after is None:
            changes.append(f"step {step_id!r} (started) was removed")
        elif before is not None and before != after:
            changes.append(f"step {step_id!r} (started) changed")
    if (old.final_step != new.final_step) and started_steps:
        changes.append("final_step changed")
    return changes


def _limits(plan: Plan, name: str) -> object:
    for agent in plan.agents:
        if agent.name == name:
            return agent.limits
    return None


# -- rebuilding agents --------------------------------------------------------------------------


@attrs.frozen
class AgentState:
    """One agent as its journal describes it."""

    transcript: tuple[Item, ...]
    turns: int
    last_response_id: str | None
    input_tokens: int
    output_tokens: int
    turn_entries: tuple[TurnEntry, ...]
    calls: tuple[CallEntry, ...]
    replies: dict[str, str]


def rebuild(journal: JobJournal, fresh: frozenset[str] = frozenset()) -> dict[str, AgentState]:
    """Every journaled agent's transcript (the items of each turn, in order), usage, the
    calls of its latest turn and the answers it gave.

    Args:
        fresh: agents that start a new conversation with every task (``context = "step"``):
            their transcript is that of their latest task only.
    """
    by_agent = _turns_by_agent(journal)
    calls: dict[str, list[CallEntry]] = {}
    for call in journal.calls:
        calls.setdefault(call.agent, []).append(call)
    replies: dict[str, dict[str, str]] = {}
    for reply in journal.replies:
        replies.setdefault(reply.agent, {})[reply.message] = reply.text
    states: dict[str, AgentState] = {}
    for agent in sorted(by_agent.keys() | replies.keys()):
        turns = sorted(by_agent.get(agent, []), key=lambda turn: turn.seq)
        last = turns[-1] if turns else None
        agent_calls = calls.get(agent, [])
        if last is not None:
            turns[-1] = attrs.evolve(last, calls=_calls_of(last, agent_calls))
        conversation = _latest_task(turns) if agent in fresh else turns
        transcript: list[Item] = []
        for turn in conversation:
            transcript.extend(turn.new_items)
            transcript.extend(turn.output)
        states[agent] = AgentState(
            transcript=tuple(transcript),
            turns=len(turns),
            last_response_id=last.response_id if last is not None else None,
            input_tokens=sum(turn.input_tokens for turn in turns),
            output_tokens=sum(turn.output_tokens for turn in turns),
            turn_entries=tuple(turns),
            calls=tuple(agent_calls),
            replies=replies.get(agent, {}),
        )
    return states


def _turns_by_agent(journal: JobJournal) -> dict[str, list[TurnEntry]]:
    """The journaled turns, decoded, by agent (in the store's order)."""
    by_agent: dict[str, list[TurnEntry]] = {}
    for record in journal.turns:
        by_agent.setdefault(record.agent, []).append(
            TurnEntry(
                agent=record.agent,
                seq=record.seq,
                message=record.message,
                new_items=tuple(decode_items(record.new_items)),
                output=tuple(decode_items(record.output)),
                response_id=record.response_id,
                input_tokens=record.input_tokens,
                output_tokens=record.output_tokens,
                calls=(),
                reply=record.reply,
            )
        )
    return by_agent


def _calls_of(last: TurnEntry, agent_calls: list[CallEntry]) -> tuple[CallEntry, ...]:
    """The calls of the agent's latest turn, in the order the model made them (the store
    may return them by call id): a resumed task sends their outputs in that order, as an
    uninterrupted one does."""
    order = {
        item.call_id: index
        for index, item in enumerate(
            item for item in last.output if isinstance(item, FunctionCallItem)
        )
    }
    own = sorted(
        (call for call in agent_calls if call.turn == last.seq),
        key=lambda call: order.get(call.call_id, len(order)),
    )
    return tuple(_pending(call) for call in own)


def _latest_task(turns: list[TurnEntry]) -> list[TurnEntry]:
    """The turns of the latest task (those of the last turn's message), for an agent whose
    every task is a fresh conversation."""
    if not turns:
        return turns
    start = len(turns)
    while start > 0 and turns[start - 1].message == turns[-1].message:
        start -= 1
    return turns[start:]


def _pending(call: CallEntry) -> CallEntry:
    """The call as the turn recorded it (its later state comes with ``calls``)."""
    return msgspec.structs.replace(call)


def parked_calls(journal: JobJournal) -> list[CallEntry]:
    """Calls of each agent's latest turn that started, have no result, and whose tool may not
    run twice."""
    latest: dict[str, int] = {}
    for turn in journal.turns:
        latest[turn.agent] = max(latest.get(turn.agent, 0), turn.seq)
    return [
        call
        for call in journal.calls
        if call.turn == latest.get(call.agent)
        and call.status == "started"
        and in_doubt_action(call.side_effect) == "park"
    ]
