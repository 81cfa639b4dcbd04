"""``run()`` and ``submit()``: what they accept (a plan or its file, a goal, a job to resume)
checked and resolved before anything starts."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import msgspec

from actors.tools import check_definition
from orchestrator.core.observe import EventBus, RuntimeEvent
from orchestrator.core.session import ModelSettings
from orchestrator.errors import ConfigurationError, JobNotResumable, PlanError
from orchestrator.jobs.resume import decide_claim
from orchestrator.runner.endpoint import EmbeddedServer, check_fd_budget
from orchestrator.runner.job import JobSpec, run_job
from orchestrator.runner.resume import owner_alive_of
from orchestrator.runner.settings import RunSettings
from orchestrator.runner.store import (
    DEFAULT_STORE,
    StoreSpec,
    new_job,
    new_job_id,
    open_job_store,
)
from orchestrator.runner.team import fingerprints, team_for_fingerprints
from plans import Plan, check_plan, load_plan

if TYPE_CHECKING:
    import trio

    from actors.approval import Approver
    from orchestrator.jobs.model import Claim, JobJournal
    from orchestrator.jobs.store import JobStore
    from orchestrator.runner.results import RunResult

__all__ = ["Observer", "PlanSource", "run", "submit"]

Observer = EventBus | Callable[[RuntimeEvent], object]
PlanSource = Plan | str | os.PathLike[str]


async def run(
    plan: PlanSource | None = None,
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
    async with open_job_store(store) as job_store:
        if resume is not None:
            spec = await _resumed_job(job_store, resume, plan, settings, embedded, options, claim)
        else:
            spec = _new_job(plan, goal, job_id, settings, embedded, options)
        check_fd_budget(
            len(spec.plan.agents), spec.settings.offline, settings.api_key, embedded.transport
        )
        return await run_job(
            spec, job_store=job_store, events=_event_bus(events), stop=stop, approve=approve
        )


async def submit(
    plan: PlanSource,
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
    _require_goal(plan_obj, goal)
    prints = fingerprints(team_for_fingerprints(plan_obj))
    job_id = job_id or new_job_id(plan_obj.name)
    job_options = {"paths": _import_paths(plan), **(options or {})}
    job = new_job(plan_obj, goal, job_id, prints, job_options, queue=queue, status="queued")
    async with open_job_store(store) as job_store:
        if job_store is None:
            raise ConfigurationError("submit needs a job store", code="config.store")
        await job_store.create(job, None)
    return job_id


def _event_bus(events: Observer | None) -> EventBus:
    """The run's bus: the one given, or a new one feeding the given callable."""
    if isinstance(events, EventBus):
        return events
    bus = EventBus()
    if events is not None:
        bus.add_listener(events)
    return bus


def _new_job(
    plan: PlanSource | None,
    goal: str | None,
    job_id: str | None,
    settings: RunSettings,
    embedded: EmbeddedServer,
    options: Mapping[str, object] | None,
) -> JobSpec:
    """A new job of ``plan``; kept with it: where its tools import from, and the model
    settings (a resume that passes none runs with the same ones)."""
    plan_obj = _load(plan)
    goal = goal if goal is not None else plan_obj.goal
    job_options: dict[str, object] = {"paths": _import_paths(plan), **(options or {})}
    if settings.model is not None:
        job_options["model_settings"] = msgspec.to_builtins(settings.model)
    _require_goal(plan_obj, goal)
    return JobSpec(
        plan=plan_obj,
        goal=goal,
        job_id=job_id or new_job_id(plan_obj.name),
        settings=settings,
        embedded=embedded,
        options=job_options,
    )


async def _resumed_job(
    job_store: JobStore | None,
    job_id: str,
    plan: PlanSource | None,
    settings: RunSettings,
    embedded: EmbeddedServer,
    options: Mapping[str, object] | None,
    claim: Claim | None,
) -> JobSpec:
    """The journaled job ``job_id``, with its plan (or ``plan``, checked against it later),
    its goal, and the settings it was started with where ``settings`` leaves them open."""
    if job_store is None:
        raise ConfigurationError("resume needs a job store", code="config.store")
    journaled = await job_store.load(job_id)
    if claim is None:
        # An early, clear refusal; the claim decides again, atomically.
        decide_claim(journaled.job, time.time(), owner_alive=owner_alive_of(journaled.job))
    plan_obj = _journaled_plan(journaled, plan)
    _require_goal(plan_obj, journaled.job.goal)
    return JobSpec(
        plan=plan_obj,
        goal=journaled.job.goal,
        job_id=job_id,
        settings=_journaled_settings(settings, journaled),
        embedded=embedded,
        options=dict(options or {}),
        journaled=journaled,
        claim=claim,
    )


def _require_goal(plan: Plan, goal: str | None) -> None:
    if goal is None and not plan.steps:
        raise PlanError(
            f"plan {plan.name!r} has no goal: pass one (--goal) or set 'goal' in the plan"
        )


def _journaled_settings(settings: RunSettings, journaled: JobJournal) -> RunSettings:
    """``settings`` with ``offline`` and ``model`` taken from the job where it leaves them
    open."""
    offline, model = settings.offline, settings.model
    job_options = journaled.job.options
    if offline is None and "offline" in job_options:
        offline = bool(job_options["offline"])
    if model is None and "model_settings" in job_options:
        try:
            model = msgspec.convert(job_options["model_settings"], ModelSettings)
        except msgspec.ValidationError as exc:
            job = journaled.job.id
            raise JobNotResumable(
                f"the model settings journaled with job {job} cannot be read: {exc}", job=job
            ) from None
    return attrs.evolve(settings, offline=offline, model=model)


def _load(plan: PlanSource | None) -> Plan:
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


def _import_paths(plan: PlanSource | None) -> list[str]:
    """Where a plan's tools are imported from: the working directory and the plan's own."""
    paths = [os.getcwd()]
    if plan is not None and not isinstance(plan, Plan):
        paths.append(str(Path(plan).resolve().parent))
    return paths


def _journaled_plan(journaled: JobJournal, given: PlanSource | None) -> Plan:
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
