"""``Journal``: one job's journal, seen from the trio side while the job runs.

It holds the job's :class:`~orchestrator.jobs.model.Claim` and turns what the runtime does into
journal writes, in order: agents' turns and tool calls (it is every agent's
:class:`~actors.journal.JournalSink`), routed messages, steps, the job's status. Most writes are
*written behind*: they are queued to the store's writer thread and the runtime goes on; the
order of the queue is the order of commits, so a later write is never durable before an
earlier one. Only what precedes a side effect is awaited (a tool's "started" mark).

A write that fails (disk full, read-only file, database down, or the job claimed by another
owner) latches the journal: later writes are dropped, and ``on_failure`` is called once, so the
run stops where it is. Nothing is lost: a resume continues from the last committed write.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from loguru import logger

from orchestrator.core.protocol.codec import encode
from orchestrator.errors import JobLost, JournalError, StorageUnavailable
from orchestrator.jobs.model import (
    CallFinishedWrite,
    CallStartedWrite,
    Claim,
    EventRecord,
    EventWrite,
    JobStatus,
    MessageRecord,
    MessageWrite,
    ReplyRecord,
    ReplyWrite,
    StatusWrite,
    StepRecord,
    StepWrite,
    TurnRecord,
    TurnWrite,
    Write,
)
from orchestrator.jobs.store import JobStore

if TYPE_CHECKING:
    from actors.journal import CallEntry, MessageEntry, TurnEntry
    from orchestrator.jobs.writer import Ticket

__all__ = ["CANCEL_POLL", "Journal"]

CANCEL_POLL: Final = 1.0


@attrs.define(eq=False)
class Journal:
    """Writes one claimed job's journal.

    Args:
        store: the job store.
        claim: this process's claim on the job (every write is fenced by its epoch).
        on_failure: called once with the first write error.
    """

    store: JobStore
    claim: Claim
    on_failure: Callable[[JournalError], object] | None = None
    failure: JournalError | None = None
    _log: Any = attrs.field(init=False, repr=False)
    # When the lease was last renewed (trio's clock), once keep_alive runs.
    _renewed: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._log = logger.bind(job=self.claim.job)

    @property
    def job(self) -> str:
        return self.claim.job

    # -- plumbing -----------------------------------------------------------------------------

    def _failed(self, error: JournalError) -> None:
        if self.failure is not None:
            return
        self.failure = error
        if isinstance(error, JobLost):
            self._log.error("job {} lost: {}", self.job, error)
        else:
            self._log.error("journal of job {} unavailable: {}", self.job, error)
        if self.on_failure is not None:
            self.on_failure(error)

    def _done(self, ticket: Ticket[None]) -> None:
        if ticket.error is not None:
            error = ticket.error
            self._failed(
                error if isinstance(error, JournalError) else StorageUnavailable(str(error))
            )

    def submit(self, write: Write) -> None:
        """Queue ``write`` behind the earlier ones (dropped once the journal failed)."""
        if self.failure is None:
            self.store.submit(self.claim, write, self._done)

    async def write(self, write: Write) -> None:
        """Write and wait until durable.

        Raises:
            JournalError: this write, or an earlier one, failed.
        """
        if self.failure is not None:
            raise self.failure
        self.check_lease()
        ticket = self.store.submit(self.claim, write, self._done, urgent=True)
        await ticket.wait()

    # -- agents (actors.journal.JournalSink) ---------------------------------------------------

    def turn(self, entry: TurnEntry) -> None:
        self.submit(
            TurnWrite(
                turn=TurnRecord(
                    agent=entry.agent,
                    seq=entry.seq,
                    message=entry.message,
                    new_items=encode(list(entry.new_items)),
                    output=encode(list(entry.output)),
                    response_id=entry.response_id,
                    input_tokens=entry.input_tokens,
                    output_tokens=entry.output_tokens,
                    reply=entry.reply,
                    created_at=0.0,
                ),
                calls=list(entry.calls),
            )
        )

    async def call_started(self, entry: CallEntry) -> None:
        await self.write(CallStartedWrite(call=entry))

    def call_finished(self, entry: CallEntry) -> None:
        self.submit(CallFinishedWrite(call=entry))

    def replied(self, agent: str, message: str, text: str) -> None:
        self.submit(ReplyWrite(reply=ReplyRecord(agent=agent, message=message, text=text)))

    def message_sent(self, message: MessageEntry) -> None:
        self.submit(
            MessageWrite(
                message=MessageRecord(
                    id=message.id,
                    sender=message.sender,
                    recipient=message.recipient,
                    text=message.text,
                    step=message.step,
                )
            )
        )

    # -- the run ------------------------------------------------------------------------------

    def step(self, record: StepRecord) -> None:
        self.submit(StepWrite(step=record))

    async def step_durably(self, record: StepRecord) -> None:
        await self.write(StepWrite(step=record))

    def event(self, kind: str, detail: str = "") -> None:
        self.submit(EventWrite(event=EventRecord(time=0.0, kind=kind, detail=detail)))

    async def finish(
        self,
        status: JobStatus,
        *,
        answer: str | None = None,
        reason: str | None = None,
        code: str | None = None,
        failures: list[dict[str, object]] | None = None,
        active_seconds: float | None = None,
    ) -> bool:
        """Write the job's status and release the claim, shielded (it runs during shutdown).

        Returns:
            Whether it was written (not when the journal had failed).
        """
        if self.failure is not None:
            return False
        self.event(status, reason or "")
        with trio.CancelScope(shield=True):
            try:
                await self.write(
                    StatusWrite(
                        status=status,
                        answer=answer,
                        reason=reason,
                        code=code,
                        failures=failures or [],
                        active_seconds=active_seconds,
                        release=True,
                    )
                )
            except JournalError:
                return False
        return True

    def check_lease(self) -> None:
        """Refuse to go on unless this process can be sure it still owns the job.

        Called before every model turn and before every side effect: once the lease was last
        renewed 90% of a lease ago or more (the process was paused, or the store did not
        answer), another owner may take the job at any moment, so the journal fails with
        ``JobLost`` and the run stops itself, before it sends anything.

        Raises:
            JournalError: the journal failed (this, or an earlier write).
        """
        if self.failure is None and self._renewed is not None:
            late = trio.current_time() - self._renewed
            if late >= 0.9 * self.store.lease:
                self._failed(
                    JobLost(
                        f"the lease of job {self.job} was last renewed {late:.1f} s ago (the "
                        f"lease is {self.store.lease:g} s): this process stops driving it",
                        job=self.job,
                    )
                )
        if self.failure is not None:
            raise self.failure

    async def keep_alive(
        self,
        active_seconds: Callable[[], float],
        on_cancel: Callable[[], object],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Renew the claim's lease until cancelled; report a requested cancel or a lost job.

        Renewals run every third of the lease (at most a second apart, and at once when the
        store's :meth:`~orchestrator.jobs.store.JobStore.wake` says a cancel arrived). If
        none succeeded for 90% of a lease, this process can no longer be sure it still owns
        the job (another may claim it once the lease runs out), so the journal fails with
        ``JobLost`` and the run stops itself; a renewal that hangs counts as failed.
        """
        lease = self.store.lease
        # Often enough to see a cancel request within seconds, and to renew well before expiry.
        interval = min(lease / 3, CANCEL_POLL)
        if self._renewed is None:
            self._renewed = trio.current_time()
        task_status.started()
        while self.failure is None:
            with trio.move_on_after(interval):
                await self.store.wait_wake(self.job)
            # Measured from the request: the store's lease counts from when it ran.
            sent = trio.current_time()
            try:
                self.check_lease()
            except JournalError:
                return
            assert self._renewed is not None
            with trio.move_on_after(self._renewed + 0.9 * lease - sent) as waiting:
                try:
                    cancel = await self.store.heartbeat(self.claim, active_seconds())
                except JournalError as exc:
                    self._log.warning("lease renewal of job {} failed: {}", self.job, exc)
                    continue
            if waiting.cancelled_caught:
                self._failed(
                    JobLost(
                        f"cannot renew the lease of job {self.job}: the store did not answer",
                        job=self.job,
                    )
                )
                return
            if cancel is None:
                self._failed(JobLost(f"job {self.job} was claimed by another owner", job=self.job))
                return
            self._renewed = sent
            if cancel:
                on_cancel()


def clamp_wall_clock(limit: float | None, spent: float) -> float:
    """Seconds left of a wall-clock budget after ``spent`` in earlier runs of the job."""
    if limit is None:
        return math.inf
    return max(0.0, limit - spent)
