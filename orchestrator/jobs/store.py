"""``JobStore``: where jobs and their journals live, and how to open one.

The interface is small and async; the runtime needs nothing else from a backend. Both
backends (SQLite, the embedded default, and PostgreSQL, for many workers on many hosts) are
:class:`SQLStore` subclasses: one writer thread with group commit for every write, reader
threads for queries, the same SQL (``orchestrator.jobs.sql``).

Open a store with :func:`open_store` (``async with open_store(spec) as store``), where
``spec`` is a path, ``sqlite:///path?synchronous=full``, a ``postgresql://`` URL, or
``None`` for the default (``$ORCHESTRATOR_STORE``, else the per-user state directory).
"""

from __future__ import annotations

import abc
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import trio

from orchestrator.errors import ConfigurationError
from orchestrator.jobs import sql
from orchestrator.jobs.model import (
    Claim,
    JobJournal,
    JobRecord,
    NewJob,
    Owner,
    Write,
)
from orchestrator.jobs.resume import DEFAULT_MAX_RECOVERIES, decide_claim
from orchestrator.jobs.writer import Ticket, WriterThread

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from actors.journal import CallEntry

__all__ = [
    "DEFAULT_LEASE",
    "STORE_ENV",
    "JobStore",
    "SQLStore",
    "default_store_path",
    "open_store",
]

STORE_ENV: Final = "ORCHESTRATOR_STORE"
DEFAULT_LEASE: Final = 30.0
T = TypeVar("T")


def default_store_path() -> Path:
    """``$XDG_STATE_HOME/orchestrator/jobs.db`` (``~/.local/state/...`` by default)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "orchestrator" / "jobs.db"


class JobStore(abc.ABC):
    """A store of jobs and their journals. Every method may be called from trio only.

    Attributes:
        url: where the store is, for messages (never with a password).
        lease: seconds a claim lasts without a heartbeat.
    """

    url: str
    lease: float = DEFAULT_LEASE
    _wakes: dict[str, trio.Event]

    @abc.abstractmethod
    def submit(
        self,
        claim: Claim,
        write: Write,
        on_done: Callable[[Ticket[None]], object] | None = None,
        *,
        urgent: bool = False,
    ) -> Ticket[None]:
        """Queue a journal write behind the earlier ones; returns at once.

        ``urgent``: the caller is about to wait for it (no lingering for company).
        """

    async def write(self, claim: Claim, write: Write) -> None:
        """Write and wait until it is durable.

        Raises:
            JournalError: ``StorageUnavailable`` or ``JobLost`` (fenced out).
        """
        await self.submit(claim, write, urgent=True).wait()

    @abc.abstractmethod
    async def create(self, job: NewJob, owner: Owner | None) -> Claim | None:
        """Insert a new job, claimed by ``owner`` (or queued for a worker when ``None``).

        Raises:
            JobError: a job with this id exists.
        """

    @abc.abstractmethod
    async def claim(
        self, job_id: str, owner: Owner, decide: Callable[[JobRecord, float], tuple[int, str]]
    ) -> tuple[JobRecord, Claim]:
        """Take a job for ``owner``, raising its epoch (every older owner is fenced out).

        ``decide(record, now)`` runs inside the transaction with the job's current row and
        the store's clock; it raises to refuse, or returns the recovery count and status.
        """

    @abc.abstractmethod
    async def heartbeat(self, claim: Claim, active_seconds: float) -> bool | None:
        """Renew the lease. Returns whether a cancel was requested; ``None``: the claim is
        lost (another owner took the job)."""

    @abc.abstractmethod
    async def claim_next(
        self,
        owner: Owner,
        *,
        queues: Sequence[str],
        capacity: int,
        max_recoveries: int = DEFAULT_MAX_RECOVERIES,
    ) -> tuple[tuple[JobRecord, Claim] | None, float | None]:
        """Take the oldest job of ``queues`` that needs at most ``capacity`` sockets (one per
        agent): a queued one, or one whose owner's lease ran out (a crash: the resume rules
        count it, and a job that keeps crashing without progress ends ``dead`` instead).
        A job found cancelled meanwhile ends ``cancelled``.

        Returns:
            The job as it was and this owner's claim, or ``None``; and the seconds until the
            next lease of these queues runs out (when to look again), or ``None``.
        """

    @asynccontextmanager
    async def listen(self, callback: Callable[[str, str], object]) -> AsyncIterator[bool]:
        """Call ``callback(kind, job)`` on the trio thread for each notification (``queued``,
        ``cancel``) until the block ends. Yields whether this store notifies at all; when it
        does not (SQLite), the caller polls."""
        yield False

    def wake(self, job_id: str) -> None:
        """Make the heartbeat of ``job_id`` in this process run now (a cancel arrived)."""
        event = self._wakes.get(job_id)
        if event is not None:
            event.set()

    async def wait_wake(self, job_id: str) -> None:
        """Wait until :meth:`wake` is called for ``job_id``."""
        event = self._wakes.setdefault(job_id, trio.Event())
        try:
            await event.wait()
        finally:
            if self._wakes.get(job_id) is event:
                del self._wakes[job_id]

    @abc.abstractmethod
    async def command(self, function: Callable[[Any], T]) -> T:
        """Run ``function(cursor)`` in a write transaction of its own, in the writer."""

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""
        await self.command(lambda cursor: None)

    @abc.abstractmethod
    async def read(self, function: Callable[[Any], T]) -> T:
        """Run ``function(cursor)`` on a reader connection, in a thread."""

    async def get(self, job_id: str) -> JobRecord:
        return await self.read(lambda cursor: sql.select_job(cursor, self.dialect, job_id))

    async def list(self, statuses: Sequence[str] = (), limit: int = 100) -> list[JobRecord]:
        return await self.read(
            lambda cursor: sql.select_jobs(cursor, self.dialect, statuses=statuses, limit=limit)
        )

    async def load(self, job_id: str) -> JobJournal:
        return await self.read(lambda cursor: sql.select_journal(cursor, self.dialect, job_id))

    async def resolve(self, job_id: str, call: CallEntry, detail: str) -> None:
        def resolve(cursor: Any) -> None:
            sql.resolve_call(cursor, self.dialect, job_id, call)
            sql.insert_event(cursor, self.dialect, job_id, "resolved", detail)

        await self.command(resolve)

    dialect: sql.Dialect

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Finish queued writes and close every connection."""


class SQLStore(JobStore):
    """The shared implementation: a writer thread and reader threads over ``sql``."""

    def __init__(self, url: str, dialect: sql.Dialect, *, lease: float = DEFAULT_LEASE) -> None:
        self.url = url
        self.dialect = dialect
        self.lease = lease
        self._wakes = {}
        self._writer = WriterThread(
            f"orchestrator-journal[{url}]",
            connect=self._connect_writer,
            transaction=lambda connection: self._transaction(connection, write=True),
            apply=lambda cursor, batch: sql.apply_writes(cursor, dialect, batch),
            describe=self._describe,
            close=self._close_connection,
        )
        self._readers = trio.CapacityLimiter(4)

    # -- backend hooks ---------------------------------------------------------------------------

    @abc.abstractmethod
    def _connect_writer(self) -> Any: ...

    @abc.abstractmethod
    def _connect_reader(self) -> Any: ...

    @abc.abstractmethod
    def _transaction(self, connection: Any, *, write: bool) -> Any:
        """A context manager: a transaction on ``connection`` yielding a cursor, committed
        on exit, rolled back on an exception."""

    @abc.abstractmethod
    def _close_connection(self, connection: Any) -> None: ...

    def _describe(self, exc: Exception) -> str:
        return f"cannot write the job store {self.url}: {exc}"

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Start the writer and create or migrate the schema."""
        self._writer.start()
        await self.command(lambda cursor: sql.migrate(cursor, self.dialect))

    async def aclose(self) -> None:
        await self._writer.aclose()

    # -- writes -------------------------------------------------------------------------------

    def submit(
        self,
        claim: Claim,
        write: Write,
        on_done: Callable[[Ticket[None]], object] | None = None,
        *,
        urgent: bool = False,
    ) -> Ticket[None]:
        ticket: Ticket[None] = Ticket(claim=claim, write=write, on_done=on_done)
        self._writer.submit(ticket, urgent=urgent)
        return ticket

    async def command(self, function: Callable[[Any], T]) -> T:
        ticket: Ticket[T] = Ticket(command=function)
        self._writer.submit(ticket)
        return await ticket.wait()

    async def create(self, job: NewJob, owner: Owner | None) -> Claim | None:
        from orchestrator.errors import JobError

        lease = self.lease

        def insert(cursor: Any) -> Claim | None:
            cursor.execute(self.dialect.sql("SELECT 1 FROM jobs WHERE id = ?"), (job.id,))
            if cursor.fetchone() is not None:
                raise JobError(f"a job {job.id!r} already exists in {self.url}", job=job.id)
            epoch = sql.insert_job(cursor, self.dialect, job, owner, lease)
            return Claim(job=job.id, epoch=epoch, owner=owner) if owner is not None else None

        return await self.command(insert)

    async def claim(
        self, job_id: str, owner: Owner, decide: Callable[[JobRecord, float], tuple[int, str]]
    ) -> tuple[JobRecord, Claim]:
        lease = self.lease

        def take(cursor: Any) -> tuple[JobRecord, Claim]:
            record = sql.select_job(cursor, self.dialect, job_id, lock=True, counts=False)
            recoveries, status = decide(record, sql.now(cursor, self.dialect))
            claim = sql.claim_job(
                cursor, self.dialect, record, owner, lease, recoveries=recoveries, status=status
            )
            sql.insert_event(cursor, self.dialect, job_id, "claimed", owner.label, claim.epoch)
            return record, claim

        return await self.command(take)

    async def claim_next(
        self,
        owner: Owner,
        *,
        queues: Sequence[str],
        capacity: int,
        max_recoveries: int = DEFAULT_MAX_RECOVERIES,
    ) -> tuple[tuple[JobRecord, Claim] | None, float | None]:
        lease = self.lease
        dialect = self.dialect

        def take(cursor: Any) -> tuple[tuple[JobRecord, Claim] | None, float | None]:
            while True:
                found = sql.select_claimable(cursor, dialect, queues, capacity)
                if found is None:
                    return None, sql.next_expiry(cursor, dialect, queues)
                record, now = found
                if record.cancel_requested:
                    # Its owner died before it saw the request.
                    sql.end_job(
                        cursor,
                        dialect,
                        record,
                        "cancelled",
                        "cancelled on request (orchestrator jobs cancel)",
                        "job.cancelled",
                    )
                    continue
                # The lease decides, never the pid: a paused process on this host is alive,
                # and still must not keep a job whose lease it let run out.
                decision = decide_claim(
                    record,
                    now,
                    owner_alive=None,
                    max_recoveries=max_recoveries,
                )
                if decision.dead:
                    sql.end_job(
                        cursor, dialect, record, "dead", decision.reason or "dead", "job.dead"
                    )
                    continue
                claim = sql.claim_job(
                    cursor,
                    dialect,
                    record,
                    owner,
                    lease,
                    recoveries=decision.recoveries,
                    status=decision.status,
                )
                sql.insert_event(cursor, dialect, record.id, "claimed", owner.label, claim.epoch)
                return (record, claim), None

        return await self.command(take)

    async def heartbeat(self, claim: Claim, active_seconds: float) -> bool | None:
        lease = self.lease
        return await self.command(
            lambda cursor: sql.heartbeat(cursor, self.dialect, claim, lease, active_seconds)
        )

    # -- reads --------------------------------------------------------------------------------

    async def read(self, function: Callable[[Any], T]) -> T:
        def run() -> T:
            connection = self._connect_reader()
            try:
                with self._transaction(connection, write=False) as cursor:
                    return function(cursor)
            finally:
                self._close_connection(connection)

        return await trio.to_thread.run_sync(run, limiter=self._readers)


def _is_postgres(spec: str) -> bool:
    return spec.startswith(("postgresql://", "postgres://"))


def _store_path(text: str) -> Path:
    return Path(text).expanduser() if text else default_store_path()


@asynccontextmanager
async def open_store(
    spec: str | os.PathLike[str] | None = None, *, lease: float | None = None
) -> AsyncIterator[JobStore]:
    """Open the store ``spec`` names for the duration of the ``async with``.

    Args:
        spec: a file path, ``sqlite:///path[?synchronous=full]``, a ``postgresql://`` URL, or
            ``None`` for ``$ORCHESTRATOR_STORE`` or else :func:`default_store_path`.
        lease: seconds a claim lasts without a heartbeat (default 30).

    Raises:
        ConfigurationError: the spec cannot be used (``config.store``).
        StorageUnavailable: the store cannot be opened or migrated.
    """
    text = os.fspath(spec) if spec is not None else os.environ.get(STORE_ENV, "")
    options: dict[str, Any] = {} if lease is None else {"lease": lease}
    store: SQLStore
    if _is_postgres(text):
        from orchestrator.jobs.postgres import PostgresStore

        store = PostgresStore(text, **options)
    else:
        from orchestrator.jobs.sqlite import SQLiteStore

        synchronous = "NORMAL"
        if text.startswith("sqlite://"):
            path_part, _, query = text.removeprefix("sqlite://").partition("?")
            for option in filter(None, query.split("&")):
                name, _, value = option.partition("=")
                if name != "synchronous" or value.upper() not in ("NORMAL", "FULL"):
                    raise ConfigurationError(
                        f"store {text!r}: unknown option {option!r} (synchronous=normal|full)",
                        code="config.store",
                    )
                synchronous = value.upper()
            text = path_part
        store = SQLiteStore(_store_path(text), synchronous=synchronous, **options)
    try:
        await store.open()
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
