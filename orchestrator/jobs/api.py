"""``Jobs``: list, show, resume, cancel, resolve, retry and prune jobs, from Python.

The command line (``orchestrator jobs ...``) is a thin layer over this::

    async with orchestrator.open_jobs() as jobs:          # the default store
        for job in await jobs.list(status=["interrupted"]):
            result = await jobs.resume(job.id)
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import msgspec

from actors.journal import CallEntry, in_doubt_action
from orchestrator.core.rules import tool_error
from orchestrator.errors import JobError, JobNotResumable, JobRunning
from orchestrator.jobs import sql
from orchestrator.jobs.model import (
    ACTIVE,
    FINAL,
    JobJournal,
    JobRecord,
    owner_alive,
)
from orchestrator.jobs.resume import parked_calls
from orchestrator.jobs.store import JobStore, open_store

if TYPE_CHECKING:
    import builtins
    import os
    from collections.abc import AsyncIterator, Sequence

    import trio

    from actors.approval import Approver
    from orchestrator.runner import EmbeddedServer, Observer, RunResult, RunSettings
    from plans import Plan

__all__ = ["JobView", "Jobs", "effective_status", "open_jobs", "parse_duration"]

OPERATOR_FAILED: Final = "operator_failed"


def effective_status(job: JobRecord, now: float | None = None) -> str:
    """The status to show: ``crashed`` for a job whose owner died without saying so."""
    if job.status in ACTIVE and job.owner is not None:
        alive = owner_alive(job.owner, job.id)
        now = time.time() if now is None else now
        expired = job.lease_expires is not None and job.lease_expires <= now
        if alive is False or (alive is None and expired):
            return "crashed"
    return job.status


@attrs.frozen
class JobView:
    """Everything ``jobs show`` tells about a job."""

    job: JobRecord
    status: str
    journal: JobJournal
    parked: tuple[CallEntry, ...]
    steps_total: int

    def to_builtins(self, *, transcript: str | None = None, events: bool = False) -> Any:
        data: dict[str, Any] = msgspec.to_builtins(self.job)
        data.pop("plan", None)
        data["status"] = self.status
        data["steps_total"] = self.steps_total
        data["parked"] = [msgspec.to_builtins(call) for call in self.parked]
        data["steps"] = [msgspec.to_builtins(step) for step in self.journal.steps]
        data["agents_usage"] = agent_usage(self.journal)
        if events:
            data["events"] = [msgspec.to_builtins(event) for event in self.journal.events]
        if transcript is not None:
            data["transcript"] = transcript_of(self.journal, transcript)
        return data


def agent_usage(journal: JobJournal) -> dict[str, dict[str, int]]:
    usage: dict[str, dict[str, int]] = {}
    for turn in journal.turns:
        entry = usage.setdefault(
            turn.agent, {"turns": 0, "input_tokens": 0, "output_tokens": 0, "tool_calls": 0}
        )
        entry["turns"] += 1
        entry["input_tokens"] += turn.input_tokens
        entry["output_tokens"] += turn.output_tokens
    for call in journal.calls:
        entry = usage.setdefault(
            call.agent, {"turns": 0, "input_tokens": 0, "output_tokens": 0, "tool_calls": 0}
        )
        entry["tool_calls"] += 1
    return usage


def transcript_of(journal: JobJournal, agent: str) -> list[Any]:
    """One agent's transcript as JSON-able items, in order."""
    from orchestrator.core.protocol.codec import decode_items, encode

    items: list[Any] = []
    for turn in sorted((t for t in journal.turns if t.agent == agent), key=lambda t: t.seq):
        items.extend(decode_items(turn.new_items))
        items.extend(decode_items(turn.output))
    return list(msgspec.json.decode(encode(items)))


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` -> seconds.

    Raises:
        ValueError: not a duration.
    """
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
    text = text.strip().lower()
    unit = units.get(text[-1:])
    number = text[:-1] if unit is not None else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 15m, 12h, 7d)") from None
    if value < 0:
        raise ValueError(f"{text!r} is negative")
    return value * (unit or 1.0)


@attrs.define(eq=False)
class Jobs:
    """Operations on the jobs of one store. Get one with :func:`open_jobs`."""

    store: JobStore

    async def list(
        self, status: Sequence[str] = (), *, limit: int = 100
    ) -> list[tuple[JobRecord, str]]:
        """The newest jobs first, each with its effective status (``crashed`` included)."""
        wanted = set(status)
        stored = [s for s in wanted if s != "crashed"]
        if "crashed" in wanted:
            stored.extend(ACTIVE)
        records = await self.store.list(sorted(set(stored)), limit=limit)
        shown = [(record, effective_status(record)) for record in records]
        return [(r, s) for r, s in shown if not wanted or s in wanted]

    async def show(self, job_id: str) -> JobView:
        journal = await self.store.load(job_id)
        steps_total = 0
        try:
            plan = msgspec.json.decode(journal.job.plan)
            steps_total = len(plan.get("steps", ())) if isinstance(plan, dict) else 0
        except msgspec.MsgspecError:
            pass
        return JobView(
            job=journal.job,
            status=effective_status(journal.job),
            journal=journal,
            parked=tuple(parked_calls(journal)),
            steps_total=steps_total,
        )

    async def resume(
        self,
        job_id: str,
        plan: Plan | str | os.PathLike[str] | None = None,
        *,
        settings: RunSettings | None = None,
        embedded: EmbeddedServer | None = None,
        events: Observer | None = None,
        stop: trio.Event | None = None,
        approve: Approver | None = None,
    ) -> RunResult:
        """Continue a job: ``orchestrator.run(plan, resume=job_id, ...)`` on this store.

        ``plan`` defaults to the journaled one; the other arguments are ``run()``'s.
        """
        from orchestrator.runner import run

        return await run(
            plan,
            resume=job_id,
            store=self.store,
            settings=settings,
            embedded=embedded,
            events=events,
            stop=stop,
            approve=approve,
        )

    async def retry(
        self,
        job_id: str,
        plan: Plan | str | os.PathLike[str] | None = None,
        *,
        settings: RunSettings | None = None,
        embedded: EmbeddedServer | None = None,
        events: Observer | None = None,
        stop: trio.Event | None = None,
        approve: Approver | None = None,
    ) -> RunResult:
        """Run a ``failed`` or ``dead`` job again from its journal, with a fresh count of
        recoveries (what completed stays completed); arguments as for :meth:`resume`."""
        job = await self.store.get(job_id)
        if job.status not in ("failed", "dead", "interrupted", "budget_exceeded"):
            if job.status in ("completed", "partial", "cancelled"):
                raise JobNotResumable(f"job {job_id} is {job.status}: nothing to retry", job=job_id)
            if effective_status(job) != "crashed":
                raise JobNotResumable(
                    f"job {job_id} is {job.status}: "
                    + (
                        "resolve its parked calls first"
                        if job.status == "needs_attention"
                        else "nothing to retry"
                    ),
                    job=job_id,
                )
        dialect = self.store.dialect

        def revive(cursor: Any) -> None:
            current = sql.select_job(cursor, dialect, job_id, counts=False)
            if current.status in ACTIVE and effective_status(current) != "crashed":
                raise JobRunning(f"job {job_id} is running", job=job_id)
            sql.set_fields(
                cursor,
                dialect,
                job_id,
                status="interrupted",
                recoveries=0,
                finished_at=None,
                owner=None,
                lease_expires=None,
            )
            sql.insert_event(cursor, dialect, job_id, "retried", f"was {current.status}")

        await self.store.command(revive)
        return await self.resume(
            job_id,
            plan,
            settings=settings,
            embedded=embedded,
            events=events,
            stop=stop,
            approve=approve,
        )

    async def cancel(self, job_id: str) -> tuple[JobRecord, bool]:
        """Cancel a job. A job its owner drives is asked to stop (at once when the owner is
        a worker listening on PostgreSQL, else at its next lease renewal, within a second);
        any other, a queued one included, ends ``cancelled`` at once.

        Returns:
            The job as it is now, and whether a live owner was asked to stop.

        Raises:
            JobNotResumable: the job already ended.
        """
        dialect = self.store.dialect

        def cancel(cursor: Any) -> tuple[JobRecord, bool]:
            job = sql.select_job(cursor, dialect, job_id, lock=True, counts=False)
            if job.status in FINAL:
                raise JobNotResumable(f"job {job_id} is already {job.status}", job=job_id)
            # A queued job nobody took yet, or one whose owner died, ends at once.
            live = (
                job.status in ACTIVE
                and job.owner is not None
                and effective_status(job) != "crashed"
            )
            if live:
                sql.set_fields(cursor, dialect, job_id, cancel_requested=1)
                sql.insert_event(cursor, dialect, job_id, "cancel_requested", "")
                # Its worker hears it at once (PostgreSQL), else at its next renewal.
                sql.notify(cursor, dialect, "cancel", job_id)
            else:
                sql.set_fields(
                    cursor,
                    dialect,
                    job_id,
                    status="cancelled",
                    reason="cancelled on request (orchestrator jobs cancel)",
                    code="job.cancelled",
                    owner=None,
                    lease_expires=None,
                )
                cursor.execute(
                    dialect.sql("UPDATE jobs SET finished_at = {now} WHERE id = ?"), (job_id,)
                )
                sql.insert_event(cursor, dialect, job_id, "cancelled", "")
            return sql.select_job(cursor, dialect, job_id, counts=False), live

        return await self.store.command(cancel)

    async def resolve(
        self,
        job_id: str,
        call: str,
        *,
        action: Literal["output", "rerun", "fail"],
        text: str | None = None,
    ) -> tuple[CallEntry, str]:
        """Decide about a parked call, so that ``resume`` can go on.

        Args:
            call: the call's id, or ``agent/turn/call_id`` when ids repeat.
            action: ``output``: the call happened and returned ``text``; ``fail``: give the
                model an error output saying it failed (``text`` as the reason); ``rerun``:
                run the tool again (same idempotency key, next attempt).

        Returns:
            The call as resolved, and the job's status afterwards.

        Raises:
            JobError: no such call, or it is not in doubt, or the job is running.
        """
        journal = await self.store.load(job_id)
        job = journal.job
        if job.status in ACTIVE and effective_status(job) != "crashed":
            raise JobRunning(f"job {job_id} is running: stop it first", job=job_id)
        if job.status in FINAL:
            raise JobNotResumable(f"job {job_id} is {job.status}", job=job_id)
        in_doubt = list(parked_calls(journal))
        entry = _call_in_doubt(journal, call)
        resolved, detail = _resolution(entry, action, text)
        await self.store.resolve(job_id, resolved, detail)
        remaining = [
            c
            for c in in_doubt
            if (c.agent, c.turn, c.call_id) != (entry.agent, entry.turn, entry.call_id)
            and in_doubt_action(c.side_effect) == "park"
        ]
        status = job.status
        if not remaining and job.status == "needs_attention":
            dialect = self.store.dialect
            await self.store.command(
                lambda cursor: sql.set_fields(
                    cursor, dialect, job_id, status="interrupted", reason=None, code=None
                )
            )
            status = "interrupted"
        return resolved, status

    async def prune(self, older_than: float) -> builtins.list[str]:
        """Delete jobs that ended more than ``older_than`` seconds ago; returns their ids."""
        dialect = self.store.dialect

        def prune(cursor: Any) -> builtins.list[str]:
            ids = sql.finished_before(cursor, dialect, older_than, sorted(FINAL))
            for job_id in ids:
                sql.delete_job(cursor, dialect, job_id)
            return ids

        return await self.store.command(prune)


def _call_in_doubt(journal: JobJournal, call: str) -> CallEntry:
    """The journaled call ``call`` names (its id, or ``agent/turn/call_id``), in doubt.

    Raises:
        JobError: no such call, an ambiguous id, or a call that is not in doubt.
    """
    job_id = journal.job.id
    matches = [c for c in journal.calls if call in (c.call_id, f"{c.agent}/{c.turn}/{c.call_id}")]
    if not matches:
        raise JobError(f"job {job_id} has no call {call!r}", job=job_id)
    if len(matches) > 1:
        names = ", ".join(f"{c.agent}/{c.turn}/{c.call_id}" for c in matches)
        raise JobError(f"call id {call!r} is ambiguous: use one of {names}", job=job_id)
    entry = matches[0]
    if entry.status != "started":
        raise JobError(
            f"call {call} is {entry.status}, not in doubt: nothing to resolve", job=job_id
        )
    return entry


def _resolution(
    entry: CallEntry, action: Literal["output", "rerun", "fail"], text: str | None
) -> tuple[CallEntry, str]:
    """The call as the operator's ``action`` resolves it, and the event detail saying so."""
    where = f"{entry.agent}/{entry.turn}/{entry.call_id}"
    if action == "output":
        resolved = msgspec.structs.replace(entry, status="done", output=text or "", error=None)
        return resolved, f"{where}: output given by the operator"
    if action == "fail":
        reason = text or "marked failed by the operator: the call may or may not have run"
        output = tool_error("tool_failed", entry.name, reason)
        resolved = msgspec.structs.replace(
            entry, status="done", output=output, error=OPERATOR_FAILED
        )
        return resolved, f"{where}: failed by the operator"
    return msgspec.structs.replace(entry, status="pending"), f"{where}: to run again"


@asynccontextmanager
async def open_jobs(
    store: str | os.PathLike[str] | None = None,
) -> AsyncIterator[Jobs]:
    """A :class:`Jobs` handle on ``store`` (default: ``$ORCHESTRATOR_STORE`` or the
    per-user state file) for the duration of the ``async with``."""
    async with open_store(store) as opened:
        yield Jobs(opened)
