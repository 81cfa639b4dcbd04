"""Which store a run journals to (``run(store=...)``), and the record of a new job."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import msgspec

from orchestrator.jobs.model import AgentPrint, JobStatus, NewJob
from orchestrator.jobs.store import JobStore, open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from plans import Plan

__all__ = ["DEFAULT_STORE", "StoreSpec", "new_job", "new_job_id", "open_job_store"]


class _DefaultStore:
    """The default of ``run(store=...)``: ``$ORCHESTRATOR_STORE`` or the per-user state file."""

    def __repr__(self) -> str:
        return "DEFAULT_STORE"


DEFAULT_STORE: Final = _DefaultStore()
StoreSpec = JobStore | str | os.PathLike[str] | _DefaultStore | None


@asynccontextmanager
async def open_job_store(store: StoreSpec) -> AsyncIterator[JobStore | None]:
    """The store ``store`` names, open for the block (one given open stays open after it);
    ``None`` for a run without a journal."""
    if store is None or isinstance(store, JobStore):
        yield store
        return
    async with open_store(None if isinstance(store, _DefaultStore) else store) as opened:
        yield opened


def new_job_id(plan_name: str) -> str:
    """``<plan>-<UTC date>-<time>-<4 hex>``: readable, sortable, unique enough per store."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{plan_name[:40]}-{stamp}-{secrets.token_hex(2)}"


def new_job(
    plan: Plan,
    goal: str | None,
    job_id: str,
    prints: dict[str, AgentPrint],
    options: Mapping[str, object],
    *,
    queue: str = "default",
    status: JobStatus = "running",
) -> NewJob:
    """The job as accepted: the plan as canonical JSON (and its hash), what each agent is."""
    canonical = msgspec.json.encode(msgspec.to_builtins(plan), order="sorted").decode()
    return NewJob(
        id=job_id,
        name=plan.name,
        goal=goal,
        mode="steps" if plan.steps else "delegate",
        plan=canonical,
        plan_hash=hashlib.sha256(canonical.encode()).hexdigest(),
        plan_dir=None,
        agents=prints,
        options=dict(options),
        queue=queue,
        status=status,
    )
