"""``Worker``: take jobs from a store's queue and run them, until told to stop.

Any number of workers, on any number of hosts, share one store (PostgreSQL; SQLite on one
host). Each has ``slots`` sockets and claims a job only when it has a free slot for each of the
job's agents; a job then runs wholly inside this process (its actors, router and supervisor,
as ``orchestrator.run(resume=job, claim=claim)``), under the claim's epoch:

* **Claims** (``JobStore.claim_next``) take the oldest queued job, or one whose owner's lease ran
  out (a dead or paused host), and raise its epoch: every write of an older owner is refused
  from then on. The resume rules apply: a job that keeps crashing without progress ends
  ``dead``; a job with tool calls in doubt waits for a person (``needs_attention``).
* **Wake-ups**: a new or handed-back job wakes idle workers at once (LISTEN/NOTIFY on
  PostgreSQL); polling every ``poll`` seconds, and when the next lease runs out, covers the
  rest (and SQLite, which has no notifications).
* **Cancel** (``orchestrator jobs cancel``) reaches the job's heartbeat at once through the
  same notifications, else at its next renewal (within a second).
* **Fencing**: a job whose claim was taken over (this process was paused past its lease, or
  partitioned from the database) stops at its first refused write or renewal, and before any
  model turn or side effect once its lease lapsed; its sockets close as its actors stop.
* **Stopping** (:meth:`Worker.stop`, SIGTERM in ``orchestrator worker``): no new claims; every
  running job is interrupted and handed back to the queue, released, so that other workers
  take it at once and resume it from its journal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from loguru import logger

from orchestrator.core.logging import redact
from orchestrator.errors import ConfigurationError, JobError, JournalError, PlanError
from orchestrator.jobs.model import Owner, StatusWrite
from orchestrator.jobs.resume import DEFAULT_MAX_RECOVERIES
from orchestrator.jobs.store import JobStore

if TYPE_CHECKING:
    from orchestrator.jobs.model import Claim, JobRecord

__all__ = ["DEFAULT_POLL", "DEFAULT_SLOTS", "Worker", "WorkerStatistics"]

DEFAULT_SLOTS: Final = 8
DEFAULT_POLL: Final = 5.0
# After a failed claim (the store unreachable), wait this long before the next try.
CLAIM_RETRY: Final = 1.0


@attrs.frozen
class WorkerStatistics:
    """A snapshot of what a worker did so far."""

    slots: int
    slots_used: int
    running: tuple[str, ...]
    claimed: int
    finished: int
    released: int
    lost: int


@attrs.define(eq=False)
class Worker:
    """Runs jobs of ``store``'s ``queues``, at most ``slots`` sockets' worth at once.

    Args:
        store: an open job store (its ``lease`` is the claims' lease).
        slots: sockets this worker may hold: one per agent of each job it runs.
        queues: the queues it takes jobs from.
        poll: seconds between looks at the queue when nothing wakes it.
        run_options: passed to ``orchestrator.run`` for every job (``settings``, a
            ``RunSettings``; ``embedded``; ``approve``...); its ``settings`` get this
            worker's ``max_recoveries`` and hand jobs back to the queue when it stops.
        max_recoveries: crashes without progress after which a job is ``dead``.
        owner: who this worker is in the store (default: this process).
    """

    store: JobStore
    slots: int = DEFAULT_SLOTS
    queues: Sequence[str] = ("default",)
    poll: float = DEFAULT_POLL
    run_options: Mapping[str, Any] = attrs.field(factory=dict)
    max_recoveries: int = DEFAULT_MAX_RECOVERIES
    owner: Owner = attrs.field(factory=Owner.this_process)
    _stopping: bool = attrs.field(init=False, default=False)
    _wake: trio.Event = attrs.field(init=False, factory=trio.Event)
    _jobs: dict[str, trio.Event] = attrs.field(init=False, factory=dict)
    _used: int = attrs.field(init=False, default=0)
    _counts: dict[str, int] = attrs.field(
        init=False, factory=lambda: dict.fromkeys(("claimed", "finished", "released", "lost"), 0)
    )
    _log: Any = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.slots < 1:
            raise ConfigurationError(f"a worker needs at least one slot, got {self.slots}")
        if not self.queues:
            raise ConfigurationError("a worker needs at least one queue")
        if not self.poll > 0:
            raise ConfigurationError(f"poll must be positive, got {self.poll}")
        self._log = logger.bind(worker=self.owner.label)

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(
            slots=self.slots,
            slots_used=self._used,
            running=tuple(sorted(self._jobs)),
            claimed=self._counts["claimed"],
            finished=self._counts["finished"],
            released=self._counts["released"],
            lost=self._counts["lost"],
        )

    def stop(self) -> None:
        """Stop claiming, and hand every running job back to the queue (interrupted where
        it is: another worker resumes it from its journal). :meth:`serve` returns once they
        are all handed back."""
        if not self._stopping:
            self._log.info("stopping: handing {} job(s) back to the queue", len(self._jobs) or "no")
        self._stopping = True
        for stop in self._jobs.values():
            stop.set()
        self._wake.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim and run jobs until :meth:`stop` (or until cancelled: the jobs are then
        handed back too, shielded)."""
        async with (
            trio.open_nursery() as nursery,
            self.store.listen(self._notified) as listening,
        ):
            self._log.info(
                "worker {} on {}: {} slots, queues {}, lease {:g} s ({})",
                self.owner.label,
                self.store.url,
                self.slots,
                ", ".join(self.queues),
                self.store.lease,
                ("woken by notifications, " if listening else "")
                + f"polling every {self.poll:g} s",
            )
            task_status.started()
            await self._claim_loop(nursery)
        self._log.info("worker {} stopped", self.owner.label)

    # -- claiming ------------------------------------------------------------------------------

    def _notified(self, kind: str, job: str) -> None:
        if kind == "cancel":
            self.store.wake(job)
        else:
            self._wake.set()

    async def _claim_loop(self, nursery: trio.Nursery) -> None:
        while not self._stopping:
            # A fresh event before the look: a notification during it is not lost.
            self._wake = trio.Event()
            free = self.slots - self._used
            wait = self.poll
            if free > 0:
                try:
                    taken, expiry = await self.store.claim_next(
                        self.owner,
                        queues=self.queues,
                        capacity=free,
                        max_recoveries=self.max_recoveries,
                    )
                except JournalError as exc:
                    self._log.warning("cannot claim jobs: {}", exc)
                    taken, expiry, wait = None, None, CLAIM_RETRY
                if taken is not None:
                    record, claim = taken
                    self._start(nursery, record, claim)
                    continue  # there may be more, and slots for them
                if expiry is not None:
                    # Look again just after the next lease runs out: its owner may be dead.
                    wait = min(wait, expiry + 0.05)
            with trio.move_on_after(wait):
                await self._wake.wait()

    def _start(self, nursery: trio.Nursery, record: JobRecord, claim: Claim) -> None:
        needs = max(1, len(record.agents))
        self._used += needs
        self._counts["claimed"] += 1
        stop = trio.Event()
        self._jobs[record.id] = stop
        if record.owner is not None and record.status != "queued":
            how = f"after its owner {record.owner.label} lost its lease"
        elif record.owner is not None:
            how = f"from {record.owner.label}"
        else:
            how = "from the queue"
        self._log.info(
            "claimed job {} {} (epoch {}, {} slot(s))", record.id, how, claim.epoch, needs
        )
        nursery.start_soon(self._run, record, claim, stop, needs, name=f"job {record.id}")

    # -- running -------------------------------------------------------------------------------

    async def _run(self, record: JobRecord, claim: Claim, stop: trio.Event, needs: int) -> None:
        from orchestrator.runner import RunSettings, run

        log = self._log.bind(job=record.id)
        try:
            try:
                options = dict(self.run_options)
                settings = options.pop("settings", None) or RunSettings()
                result = await run(
                    None,
                    resume=record.id,
                    claim=claim,
                    store=self.store,
                    stop=stop,
                    settings=attrs.evolve(
                        settings, requeue_on_stop=True, max_recoveries=self.max_recoveries
                    ),
                    **options,
                )
            except (JobError, PlanError, ConfigurationError) as exc:
                # Refused before it ran (its plan or tools cannot be loaded here): say so in
                # the job rather than let it crash again on every worker.
                log.error("job {} cannot run here: {}", record.id, redact(str(exc)))
                await self._end(claim, "failed", redact(str(exc)), _code(exc))
                self._counts["finished"] += 1
                return
            except Exception as exc:
                # A bug: the job says so (fenced), the worker goes on with the others.
                log.opt(exception=exc).error("job {} failed: {!r}", record.id, exc)
                await self._end(claim, "failed", redact(repr(exc)), "run.internal")
                self._counts["finished"] += 1
                return
            code = result.code or ""
            if result.status == "interrupted" and code == "run.interrupted":
                self._counts["released"] += 1
                log.info("released job {} back to the queue", record.id)
            elif code == "job.lost":
                self._counts["lost"] += 1
                log.warning("lost job {}: {}", record.id, result.reason)
                # Paused past its lease but nobody took it yet: hand it back at once rather
                # than leave it until the lease runs out (refused if it was taken: fenced).
                await self._end(claim, "queued", "handed back after its lease lapsed", None)
            else:
                self._counts["finished"] += 1
                log.info(
                    "job {} {}{}",
                    record.id,
                    result.status,
                    f" ({result.code}: {result.reason})" if result.code else "",
                )
        finally:
            self._jobs.pop(record.id, None)
            self._used -= needs
            self._wake.set()

    async def _end(self, claim: Claim, status: Any, reason: str, code: str | None) -> None:
        """Write a job's status under ``claim`` (fenced: nothing if the claim was lost)."""
        with trio.CancelScope(shield=True):
            try:
                await self.store.write(
                    claim, StatusWrite(status=status, reason=reason, code=code, release=True)
                )
            except JournalError as exc:
                self._log.debug("job {}: status {} not written: {}", claim.job, status, exc)


def _code(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else "plan.invalid"
