"""The journal's SQL, shared by the SQLite and PostgreSQL backends.

Functions here take a DB-API cursor and run inside a transaction their caller owns (the
store's writer thread, or a reader thread). Placeholders are written ``?`` and ``{now}``
stands for the database clock; :class:`Dialect` rewrites both for a backend. Every journal
write is **fenced**: the transaction first bumps the job's ``progress`` (by the writes that
record work done) where its ``epoch`` is the writer's, and a writer whose epoch is stale
changes nothing (``JobLost``). Each journal row keeps the epoch that wrote it, so who wrote
what can be checked afterwards.

Workers take jobs from the queue with :func:`claim_next`: ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL (concurrent claimers never wait for each other nor take the same row), a
``BEGIN IMMEDIATE`` transaction on SQLite (claims are serialised). On PostgreSQL,
:func:`notify` wakes idle workers when the transaction commits (LISTEN/NOTIFY).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Final

import attrs
import msgspec

from actors.journal import CallEntry
from orchestrator.errors import JobLost, JobNotFound
from orchestrator.jobs.model import (
    AgentPrint,
    CallFinishedWrite,
    CallStartedWrite,
    Claim,
    EventRecord,
    EventWrite,
    JobJournal,
    JobRecord,
    MessageRecord,
    MessageWrite,
    NewJob,
    Owner,
    ReplyRecord,
    ReplyWrite,
    StatusWrite,
    StepRecord,
    StepWrite,
    TurnRecord,
    TurnWrite,
    Write,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["CHANNEL", "SCHEMA_VERSION", "Dialect", "apply_writes", "notify", "select_claimable"]

SCHEMA_VERSION: Final = 2
# NOTIFY channel of the queue: payloads ``queued <job>`` and ``cancel <job>``.
CHANNEL: Final = "orchestrator_jobs"
# Serialises schema changes between processes opening one PostgreSQL database at once.
_SCHEMA_LOCK: Final = 0x6F726368  # "orch"

_json = msgspec.json.Encoder()
_agents_decoder: Final = msgspec.json.Decoder(dict[str, AgentPrint])
_failures_decoder: Final = msgspec.json.Decoder(list[dict[str, object]])
_options_decoder: Final = msgspec.json.Decoder(dict[str, object])


@attrs.frozen
class Dialect:
    """How one backend spells placeholders, the clock and a few types."""

    name: str
    placeholder: str
    now: str
    real: str
    autoincrement: str

    @functools.cache  # noqa: B019 (a handful of dialects, each living forever)
    def sql(self, text: str) -> str:
        return text.replace("?", self.placeholder).replace("{now}", self.now)

    def schema(self) -> list[str]:
        real = self.real
        return [
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
            f"""CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                status TEXT NOT NULL,
                queue TEXT NOT NULL DEFAULT 'default',
                goal TEXT,
                mode TEXT NOT NULL,
                plan TEXT NOT NULL,
                plan_hash TEXT NOT NULL,
                plan_dir TEXT,
                agents TEXT NOT NULL,
                agent_count INTEGER NOT NULL DEFAULT 1,
                options TEXT NOT NULL,
                created_at {real} NOT NULL,
                updated_at {real} NOT NULL,
                finished_at {real},
                answer TEXT,
                reason TEXT,
                code TEXT,
                failures TEXT NOT NULL DEFAULT '[]',
                epoch INTEGER NOT NULL DEFAULT 0,
                owner TEXT,
                lease_expires {real},
                cancel_requested INTEGER NOT NULL DEFAULT 0,
                recoveries INTEGER NOT NULL DEFAULT 0,
                progress INTEGER NOT NULL DEFAULT 0,
                progress_at_claim INTEGER NOT NULL DEFAULT 0,
                active_seconds {real} NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, queue, created_at)",
            *_CLAIM_INDEXES,
            f"""CREATE TABLE IF NOT EXISTS turns (
                job TEXT NOT NULL,
                agent TEXT NOT NULL,
                seq INTEGER NOT NULL,
                message TEXT,
                new_items TEXT NOT NULL,
                output TEXT NOT NULL,
                response_id TEXT NOT NULL,
                input_tokens INTEGER NOT NULL,
                output_tokens INTEGER NOT NULL,
                reply TEXT,
                created_at {real} NOT NULL,
                epoch INTEGER,
                PRIMARY KEY (job, agent, seq)
            )""",
            f"""CREATE TABLE IF NOT EXISTS calls (
                job TEXT NOT NULL,
                agent TEXT NOT NULL,
                turn INTEGER NOT NULL,
                call_id TEXT NOT NULL,
                name TEXT NOT NULL,
                arguments TEXT NOT NULL,
                side_effect TEXT NOT NULL,
                status TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                output TEXT,
                error TEXT,
                truncated INTEGER NOT NULL DEFAULT 0,
                timed_out INTEGER NOT NULL DEFAULT 0,
                updated_at {real} NOT NULL,
                epoch INTEGER,
                PRIMARY KEY (job, agent, turn, call_id)
            )""",
            f"""CREATE TABLE IF NOT EXISTS replies (
                job TEXT NOT NULL,
                agent TEXT NOT NULL,
                message TEXT NOT NULL,
                text TEXT NOT NULL,
                created_at {real} NOT NULL,
                epoch INTEGER,
                PRIMARY KEY (job, agent, message)
            )""",
            f"""CREATE TABLE IF NOT EXISTS messages (
                job TEXT NOT NULL,
                id TEXT NOT NULL,
                sender TEXT NOT NULL,
                recipient TEXT NOT NULL,
                text TEXT NOT NULL,
                step TEXT,
                created_at {real} NOT NULL,
                epoch INTEGER,
                PRIMARY KEY (job, id)
            )""",
            f"""CREATE TABLE IF NOT EXISTS steps (
                job TEXT NOT NULL,
                id TEXT NOT NULL,
                agent TEXT NOT NULL,
                status TEXT NOT NULL,
                result TEXT,
                error TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                started_at {real},
                finished_at {real},
                epoch INTEGER,
                PRIMARY KEY (job, id)
            )""",
            f"""CREATE TABLE IF NOT EXISTS events (
                seq {self.autoincrement},
                job TEXT NOT NULL,
                time {real} NOT NULL,
                kind TEXT NOT NULL,
                detail TEXT NOT NULL,
                epoch INTEGER
            )""",
            "CREATE INDEX IF NOT EXISTS events_by_job ON events (job, seq)",
        ]


# A claim reads the first row of one of these in order, whatever the size of the queue or the
# age of the table's statistics: lapsed leases by expiry, queued jobs by age.
_CLAIM_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS jobs_by_lease ON jobs (lease_expires, id)",
    "CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (queue, created_at, id) "
    "WHERE status = 'queued'",
)

SQLITE: Final = Dialect(
    name="sqlite",
    placeholder="?",
    now="((julianday('now') - 2440587.5) * 86400.0)",
    real="REAL",
    autoincrement="INTEGER PRIMARY KEY AUTOINCREMENT",
)
POSTGRES: Final = Dialect(
    name="postgresql",
    placeholder="%s",
    now="extract(epoch from clock_timestamp())::double precision",
    real="DOUBLE PRECISION",
    autoincrement="BIGSERIAL PRIMARY KEY",
)


def now(cursor: Any, dialect: Dialect) -> float:
    cursor.execute(dialect.sql("SELECT {now}"))
    return float(cursor.fetchone()[0])


def migrate(cursor: Any, dialect: Dialect) -> int:
    """Create or upgrade the schema; returns the version now in place.

    On PostgreSQL a transaction-level advisory lock serialises processes that open one
    database at once (each waits, then finds the schema in place).

    Raises:
        RuntimeError: the schema is newer than this program's.
    """
    if dialect.name == "postgresql":
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
    cursor.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    cursor.execute("SELECT version FROM schema_version")
    row = cursor.fetchone()
    if row is None:
        for statement in dialect.schema():
            cursor.execute(statement)
        cursor.execute(
            dialect.sql("INSERT INTO schema_version (version) VALUES (?)"), (SCHEMA_VERSION,)
        )
        return SCHEMA_VERSION
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the job store has schema version {version}, newer than this program's "
            f"{SCHEMA_VERSION}: upgrade orchestrator"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        _MIGRATIONS[target](cursor, dialect)
        cursor.execute(dialect.sql("UPDATE schema_version SET version = ?"), (target,))
    return SCHEMA_VERSION


def _to_version_2(cursor: Any, dialect: Dialect) -> None:
    """Who wrote each journal row (its epoch), and each job's agent count (a worker claims a
    job only with a free socket slot for each of its agents)."""
    for table in ("turns", "calls", "replies", "messages", "steps", "events"):
        cursor.execute(f"ALTER TABLE {table} ADD COLUMN epoch INTEGER")
    cursor.execute("ALTER TABLE jobs ADD COLUMN agent_count INTEGER NOT NULL DEFAULT 1")
    for statement in _CLAIM_INDEXES:
        cursor.execute(statement)
    cursor.execute("SELECT id, agents FROM jobs")
    for job_id, agents in cursor.fetchall():
        cursor.execute(
            dialect.sql("UPDATE jobs SET agent_count = ? WHERE id = ?"),
            (max(1, len(_agents_decoder.decode(agents))), job_id),
        )


_MIGRATIONS: Final[dict[int, Callable[[Any, Dialect], None]]] = {2: _to_version_2}


def notify(cursor: Any, dialect: Dialect, kind: str, job: str) -> None:
    """Tell listening workers about ``job`` when this transaction commits (PostgreSQL;
    SQLite workers poll)."""
    if dialect.name == "postgresql":
        cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{kind} {job}"))


# -- writes --------------------------------------------------------------------------------------


def apply_writes(
    cursor: Any, dialect: Dialect, batch: Sequence[tuple[Claim, Write]]
) -> list[JobLost | None]:
    """Apply a batch of journal writes in the caller's transaction, fenced per job.

    Returns:
        One entry per write: ``None`` when applied, ``JobLost`` when its writer was fenced
        out (nothing of it was applied).
    """
    counts: dict[tuple[str, int], int] = {}
    for claim, write in batch:
        key = (claim.job, claim.epoch)
        counts[key] = counts.get(key, 0) + _progress(write)
    fenced: set[tuple[str, int]] = set()
    fence = dialect.sql(
        "UPDATE jobs SET progress = progress + ?, updated_at = {now} WHERE id = ? AND epoch = ?"
    )
    for (job, epoch), count in counts.items():
        cursor.execute(fence, (count, job, epoch))
        if cursor.rowcount != 1:
            fenced.add((job, epoch))
    results: list[JobLost | None] = []
    for claim, write in batch:
        if (claim.job, claim.epoch) in fenced:
            results.append(
                JobLost(
                    f"job {claim.job} was claimed by another owner (epoch {claim.epoch} is "
                    "stale): this process stops driving it",
                    job=claim.job,
                )
            )
            continue
        _WRITERS[type(write)](cursor, dialect, claim, write)
        results.append(None)
    return results


def _progress(write: Write) -> int:
    """1 for a write that records work done (what ``progress`` counts, to tell a job that
    crashes on every resume from one that advances), 0 for bookkeeping: a resume's event,
    the tasks it delivers again, a step or a tool starting (a tool that kills the process
    starts again on every resume)."""
    if isinstance(write, TurnWrite | CallFinishedWrite | ReplyWrite):
        return 1
    if isinstance(write, StepWrite):
        return int(write.step.status != "started")
    return 0


def _turn(cursor: Any, dialect: Dialect, claim: Claim, write: Write) -> None:
    assert isinstance(write, TurnWrite)
    turn = write.turn
    cursor.execute(
        dialect.sql(
            "INSERT INTO turns (job, agent, seq, message, new_items, output, response_id, "
            "input_tokens, output_tokens, reply, created_at, epoch) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {now}, ?)"
        ),
        (
            claim.job,
            turn.agent,
            turn.seq,
            turn.message,
            turn.new_items.decode(),
            turn.output.decode(),
            turn.response_id,
            turn.input_tokens,
            turn.output_tokens,
            turn.reply,
            claim.epoch,
        ),
    )
    for call in write.calls:
        _insert_call(cursor, dialect, claim.job, call, claim.epoch)


def _insert_call(
    cursor: Any, dialect: Dialect, job: str, call: CallEntry, epoch: int | None
) -> None:
    cursor.execute(
        dialect.sql(
            "INSERT INTO calls (job, agent, turn, call_id, name, arguments, side_effect, "
            "status, attempt, output, error, truncated, timed_out, updated_at, epoch) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {now}, ?)"
        ),
        (
            job,
            call.agent,
            call.turn,
            call.call_id,
            call.name,
            call.arguments,
            call.side_effect,
            call.status,
            call.attempt,
            call.output,
            call.error,
            int(call.truncated),
            int(call.timed_out),
            epoch,
        ),
    )


def _update_call(cursor: Any, dialect: Dialect, claim: Claim, call: CallEntry) -> None:
    cursor.execute(
        dialect.sql(
            "UPDATE calls SET side_effect = ?, status = ?, attempt = ?, output = ?, error = ?, "
            "truncated = ?, timed_out = ?, updated_at = {now}, epoch = ? "
            "WHERE job = ? AND agent = ? AND turn = ? AND call_id = ?"
        ),
        (
            call.side_effect,
            call.status,
            call.attempt,
            call.output,
            call.error,
            int(call.truncated),
            int(call.timed_out),
            claim.epoch,
            claim.job,
            call.agent,
            call.turn,
            call.call_id,
        ),
    )
    if cursor.rowcount == 0:  # a call the turn record did not list: keep it anyway
        _insert_call(cursor, dialect, claim.job, call, claim.epoch)


def _call_started(cursor: Any, dialect: Dialect, claim: Claim, write: Write) -> None:
    assert isinstance(write, CallStartedWrite)
    _update_call(cursor, dialect, claim, write.call)


def _call_finished(cursor: Any, dialect: Dialect, claim: Claim, write: Write) -> None:
    assert isinstance(write, CallFinishedWrite)
    _update_call(cursor, dialect, claim, write.call)


def _reply(cursor: Any, dialect: Dialect, claim: Claim, write: Write) -> None:
    assert isinstance(write, ReplyWrite)
    reply = write.reply
    cursor.execute(
        dialect.sql(
            "INSERT INTO replies (job, agent, message, text, created_at, epoch) "
            "VALUES (?, ?, ?, ?, {now}, ?) ON CONFLICT DO NOTHING"
        ),
        (claim.job, reply.agent, reply.message, reply.text, claim.epoch),
    )


def _message(cursor: Any, dialect: Dialect, claim: Claim, write: Write) -> None:
    assert isinstance(write, MessageWrite)
    message = write.message
    cursor.execute(
        dialect.sql(
            "INSERT INTO messages (job, id, sender, recipient, text, step, created_at, epoch) "
            "VALUES (?, ?, ?, ?, ?, ?, {now}, ?) ON CONFLICT DO NOTHING"
        ),
        (
            claim.job,
            message.id,
            message.sender,
            message.recipient,
            message.text,
            message.step,
            claim.epoch,
        ),
    )


def _step(cursor: Any, dialect: Dialect, claim: Claim, write: Write) -> None:
    assert isinstance(write, StepWrite)
    step = write.step
    started = step.status == "started"
    cursor.execute(
        dialect.sql(
            "INSERT INTO steps (job, id, agent, status, result, error, attempts, started_at, "
            "finished_at, epoch) VALUES (?, ?, ?, ?, ?, ?, ?, "
            + ("{now}, NULL" if started else "NULL, {now}")
            + ", ?) ON CONFLICT (job, id) DO UPDATE SET status = excluded.status, "
            "result = excluded.result, error = excluded.error, attempts = excluded.attempts, "
            "started_at = COALESCE(steps.started_at, excluded.started_at), "
            "finished_at = excluded.finished_at, epoch = excluded.epoch"
        ),
        (
            claim.job,
            step.id,
            step.agent,
            step.status,
            step.result,
            step.error,
            step.attempts,
            claim.epoch,
        ),
    )


def _status(cursor: Any, dialect: Dialect, claim: Claim, write: Write) -> None:
    assert isinstance(write, StatusWrite)
    from orchestrator.jobs.model import FINAL

    final = write.status in FINAL
    cursor.execute(
        dialect.sql(
            "UPDATE jobs SET status = ?, answer = ?, reason = ?, code = ?, failures = ?, "
            "active_seconds = COALESCE(?, active_seconds), "
            "finished_at = " + ("{now}" if final else "NULL") + ", "
            "owner = " + ("NULL" if write.release else "owner") + ", "
            "lease_expires = " + ("NULL" if write.release else "lease_expires") + " "
            "WHERE id = ? AND epoch = ?"
        ),
        (
            write.status,
            write.answer,
            write.reason,
            write.code,
            _json.encode(write.failures).decode(),
            write.active_seconds,
            claim.job,
            claim.epoch,
        ),
    )
    if write.status == "queued":
        notify(cursor, dialect, "queued", claim.job)


def _event(cursor: Any, dialect: Dialect, claim: Claim, write: Write) -> None:
    assert isinstance(write, EventWrite)
    insert_event(cursor, dialect, claim.job, write.event.kind, write.event.detail, claim.epoch)


def insert_event(
    cursor: Any, dialect: Dialect, job: str, kind: str, detail: str, epoch: int | None = None
) -> None:
    cursor.execute(
        dialect.sql(
            "INSERT INTO events (job, time, kind, detail, epoch) VALUES (?, {now}, ?, ?, ?)"
        ),
        (job, kind, detail, epoch),
    )


_WRITERS: Final[dict[type[Write], Callable[[Any, Dialect, Claim, Write], None]]] = {
    TurnWrite: _turn,
    CallStartedWrite: _call_started,
    CallFinishedWrite: _call_finished,
    ReplyWrite: _reply,
    MessageWrite: _message,
    StepWrite: _step,
    StatusWrite: _status,
    EventWrite: _event,
}


# -- commands: each in its own transaction ------------------------------------------------------


def insert_job(
    cursor: Any, dialect: Dialect, job: NewJob, owner: Owner | None, lease: float
) -> int:
    """Insert a new job, claimed by ``owner`` (epoch 1), or queued (epoch 0) without one."""
    epoch = 1 if owner is not None else 0
    cursor.execute(
        dialect.sql(
            "INSERT INTO jobs (id, name, status, queue, goal, mode, plan, plan_hash, plan_dir, "
            "agents, agent_count, options, created_at, updated_at, epoch, owner, lease_expires) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {now}, {now}, ?, ?, "
            + ("{now} + ?" if owner is not None else "?")
            + ")"
        ),
        (
            job.id,
            job.name,
            job.status,
            job.queue,
            job.goal,
            job.mode,
            job.plan,
            job.plan_hash,
            job.plan_dir,
            _json.encode(job.agents).decode(),
            max(1, len(job.agents)),
            _json.encode(job.options).decode(),
            epoch,
            owner.encode() if owner is not None else None,
            lease if owner is not None else None,
        ),
    )
    insert_event(cursor, dialect, job.id, "accepted", job.status, epoch)
    if owner is None:
        notify(cursor, dialect, "queued", job.id)
    return epoch


_JOB_COLUMNS: Final = (
    "id, name, status, queue, goal, mode, plan, plan_hash, plan_dir, agents, options, "
    "created_at, updated_at, finished_at, answer, reason, code, failures, epoch, owner, "
    "lease_expires, cancel_requested, recoveries, progress, progress_at_claim, active_seconds"
)
_COUNTS: Final = (
    "(SELECT COUNT(*) FROM turns t WHERE t.job = jobs.id), "
    "(SELECT COUNT(*) FROM calls c WHERE c.job = jobs.id), "
    "(SELECT COUNT(*) FROM steps s WHERE s.job = jobs.id AND s.status = 'completed'), "
    "(SELECT COALESCE(SUM(t.input_tokens), 0) FROM turns t WHERE t.job = jobs.id), "
    "(SELECT COALESCE(SUM(t.output_tokens), 0) FROM turns t WHERE t.job = jobs.id)"
)


def _job(row: Sequence[Any]) -> JobRecord:
    return JobRecord(
        id=row[0],
        name=row[1],
        status=row[2],
        queue=row[3],
        goal=row[4],
        mode=row[5],
        plan=row[6],
        plan_hash=row[7],
        plan_dir=row[8],
        agents=_agents_decoder.decode(row[9]),
        options=_options_decoder.decode(row[10]),
        created_at=row[11],
        updated_at=row[12],
        finished_at=row[13],
        answer=row[14],
        reason=row[15],
        code=row[16],
        failures=_failures_decoder.decode(row[17] or "[]"),
        epoch=row[18],
        owner=Owner.decode(row[19]),
        lease_expires=row[20],
        cancel_requested=bool(row[21]),
        recoveries=row[22],
        progress=row[23],
        progress_at_claim=row[24],
        active_seconds=row[25],
        turns=row[26] if len(row) > 26 else 0,
        tool_calls=row[27] if len(row) > 27 else 0,
        steps_done=row[28] if len(row) > 28 else 0,
        input_tokens=int(row[29]) if len(row) > 29 else 0,
        output_tokens=int(row[30]) if len(row) > 30 else 0,
    )


def select_job(
    cursor: Any, dialect: Dialect, job_id: str, *, lock: bool = False, counts: bool = True
) -> JobRecord:
    """A job's row (with its journal counts); ``lock`` takes a row lock (PostgreSQL).

    Raises:
        JobNotFound: no such job.
    """
    columns = _JOB_COLUMNS + (", " + _COUNTS if counts else "")
    suffix = " FOR UPDATE" if lock and dialect.name == "postgresql" else ""
    cursor.execute(dialect.sql(f"SELECT {columns} FROM jobs WHERE id = ?{suffix}"), (job_id,))
    row = cursor.fetchone()
    if row is None:
        raise JobNotFound(f"no job {job_id!r} in this store", job=job_id)
    return _job(row)


def select_jobs(
    cursor: Any, dialect: Dialect, *, statuses: Sequence[str] = (), limit: int = 100
) -> list[JobRecord]:
    where = ""
    parameters: list[Any] = []
    if statuses:
        where = "WHERE status IN (" + ", ".join("?" for _ in statuses) + ")"
        parameters.extend(statuses)
    parameters.append(limit)
    cursor.execute(
        dialect.sql(
            f"SELECT {_JOB_COLUMNS}, {_COUNTS} FROM jobs {where} "
            "ORDER BY created_at DESC, id LIMIT ?"
        ),
        parameters,
    )
    return [_job(row) for row in cursor.fetchall()]


def select_journal(cursor: Any, dialect: Dialect, job_id: str) -> JobJournal:
    """A job's row and everything journaled for it.

    Raises:
        JobNotFound: no such job.
    """
    return JobJournal(
        job=select_job(cursor, dialect, job_id),
        turns=_select_turns(cursor, dialect, job_id),
        calls=_select_calls(cursor, dialect, job_id),
        replies=[
            ReplyRecord(agent=r[0], message=r[1], text=r[2])
            for r in _rows(cursor, dialect, "SELECT agent, message, text FROM replies", job_id)
        ],
        messages=[
            MessageRecord(
                id=r[0], sender=r[1], recipient=r[2], text=r[3], step=r[4], created_at=r[5]
            )
            for r in _rows(
                cursor,
                dialect,
                "SELECT id, sender, recipient, text, step, created_at FROM messages",
                job_id,
                order="created_at, id",
            )
        ],
        steps=_select_steps(cursor, dialect, job_id),
        events=[
            EventRecord(time=r[0], kind=r[1], detail=r[2], epoch=r[3])
            for r in _rows(
                cursor, dialect, "SELECT time, kind, detail, epoch FROM events", job_id, order="seq"
            )
        ],
    )


def _rows(
    cursor: Any, dialect: Dialect, select: str, job_id: str, *, order: str | None = None
) -> list[Any]:
    """The rows of ``select`` (a ``SELECT ... FROM table``) for one job, in ``order``."""
    suffix = f" ORDER BY {order}" if order else ""
    cursor.execute(dialect.sql(f"{select} WHERE job = ?{suffix}"), (job_id,))
    rows: list[Any] = cursor.fetchall()
    return rows


def _select_turns(cursor: Any, dialect: Dialect, job_id: str) -> list[TurnRecord]:
    rows = _rows(
        cursor,
        dialect,
        "SELECT agent, seq, message, new_items, output, response_id, input_tokens, "
        "output_tokens, reply, created_at FROM turns",
        job_id,
        order="agent, seq",
    )
    return [
        TurnRecord(
            agent=r[0],
            seq=r[1],
            message=r[2],
            new_items=r[3].encode(),
            output=r[4].encode(),
            response_id=r[5],
            input_tokens=r[6],
            output_tokens=r[7],
            reply=r[8],
            created_at=r[9],
        )
        for r in rows
    ]


def _select_calls(cursor: Any, dialect: Dialect, job_id: str) -> list[CallEntry]:
    rows = _rows(
        cursor,
        dialect,
        "SELECT agent, turn, call_id, name, arguments, side_effect, status, attempt, output, "
        "error, truncated, timed_out FROM calls",
        job_id,
        order="agent, turn",
    )
    return [
        CallEntry(
            agent=r[0],
            turn=r[1],
            call_id=r[2],
            name=r[3],
            arguments=r[4],
            side_effect=r[5],
            status=r[6],
            attempt=r[7],
            output=r[8],
            error=r[9],
            truncated=bool(r[10]),
            timed_out=bool(r[11]),
        )
        for r in rows
    ]


def _select_steps(cursor: Any, dialect: Dialect, job_id: str) -> list[StepRecord]:
    rows = _rows(
        cursor,
        dialect,
        "SELECT id, agent, status, result, error, attempts, started_at, finished_at FROM steps",
        job_id,
    )
    return [
        StepRecord(
            id=r[0],
            agent=r[1],
            status=r[2],
            result=r[3],
            error=r[4],
            attempts=r[5],
            started_at=r[6],
            finished_at=r[7],
        )
        for r in rows
    ]


def claim_job(
    cursor: Any,
    dialect: Dialect,
    job: JobRecord,
    owner: Owner,
    lease: float,
    *,
    recoveries: int,
    status: str = "running",
) -> Claim:
    """Take ``job`` (already read, and locked where the backend locks rows): raise its epoch."""
    cursor.execute(
        dialect.sql(
            "UPDATE jobs SET epoch = epoch + 1, owner = ?, lease_expires = {now} + ?, "
            "status = ?, cancel_requested = 0, recoveries = ?, progress_at_claim = progress, "
            "finished_at = NULL, updated_at = {now} WHERE id = ? AND epoch = ?"
        ),
        (owner.encode(), lease, status, recoveries, job.id, job.epoch),
    )
    if cursor.rowcount != 1:
        raise JobLost(f"job {job.id} was claimed meanwhile", job=job.id)
    return Claim(job=job.id, epoch=job.epoch + 1, owner=owner)


def select_claimable(
    cursor: Any, dialect: Dialect, queues: Sequence[str], capacity: int
) -> tuple[JobRecord, float] | None:
    """The job of ``queues`` a worker may take with ``capacity`` free sockets: first the one
    whose owner's lease ran out first (a crash to recover), else the oldest queued one.
    Locked for this transaction; rows other claimers hold are skipped (PostgreSQL), so
    concurrent claimers never wait for each other. Two index-ordered looks with ``LIMIT 1``:
    neither sorts the queue. Returns the job and the database clock."""
    marks = ", ".join("?" for _ in queues)
    lock = " FOR UPDATE SKIP LOCKED" if dialect.name == "postgresql" else ""
    for condition, order in (
        # The clock in a subquery: computed once, so the index can range over it.
        ("lease_expires < (SELECT {now}) AND status IN ('queued', 'running')", "lease_expires, id"),
        ("status = 'queued' AND owner IS NULL", "created_at, id"),
    ):
        cursor.execute(
            dialect.sql(
                f"SELECT {_JOB_COLUMNS}, {{now}} FROM jobs WHERE {condition} "
                f"AND queue IN ({marks}) AND agent_count <= ? "
                f"ORDER BY {order} LIMIT 1{lock}"
            ),
            (*queues, capacity),
        )
        row = cursor.fetchone()
        if row is not None:
            return _job(row[:-1]), float(row[-1])
    return None


def next_expiry(cursor: Any, dialect: Dialect, queues: Sequence[str]) -> float | None:
    """Seconds until the next lease of a job in ``queues`` runs out (``None``: no lease)."""
    marks = ", ".join("?" for _ in queues)
    cursor.execute(
        dialect.sql(
            "SELECT MIN(lease_expires) - {now} FROM jobs WHERE queue IN ("
            + marks
            + ") AND status IN ('queued', 'running') AND lease_expires > {now}"
        ),
        tuple(queues),
    )
    row = cursor.fetchone()
    return None if row is None or row[0] is None else max(0.0, float(row[0]))


def end_job(
    cursor: Any, dialect: Dialect, job: JobRecord, status: str, reason: str, code: str
) -> None:
    """End a job nobody drives (a worker found it cancelled or dead while claiming)."""
    cursor.execute(
        dialect.sql(
            "UPDATE jobs SET status = ?, reason = ?, code = ?, owner = NULL, "
            "lease_expires = NULL, finished_at = {now}, updated_at = {now} "
            "WHERE id = ? AND epoch = ?"
        ),
        (status, reason, code, job.id, job.epoch),
    )
    insert_event(cursor, dialect, job.id, status, reason, job.epoch)


def heartbeat(
    cursor: Any, dialect: Dialect, claim: Claim, lease: float, active_seconds: float
) -> bool | None:
    """Renew a claim's lease. Returns whether a cancel was requested, ``None`` if lost."""
    cursor.execute(
        dialect.sql(
            "UPDATE jobs SET lease_expires = {now} + ?, active_seconds = ?, updated_at = {now} "
            "WHERE id = ? AND epoch = ? RETURNING cancel_requested"
        ),
        (lease, active_seconds, claim.job, claim.epoch),
    )
    row = cursor.fetchone()
    return None if row is None else bool(row[0])


def set_fields(cursor: Any, dialect: Dialect, job_id: str, **fields: Any) -> None:
    """Update a job's row outside any claim (operator commands on a job nobody drives)."""
    names = sorted(fields)
    assignments = ", ".join(f"{name} = ?" for name in names)
    cursor.execute(
        dialect.sql(f"UPDATE jobs SET {assignments}, updated_at = {{now}} WHERE id = ?"),
        [fields[name] for name in names] + [job_id],
    )


def resolve_call(cursor: Any, dialect: Dialect, job_id: str, call: CallEntry) -> None:
    cursor.execute(
        dialect.sql(
            "UPDATE calls SET status = ?, attempt = ?, output = ?, error = ?, updated_at = {now} "
            "WHERE job = ? AND agent = ? AND turn = ? AND call_id = ?"
        ),
        (
            call.status,
            call.attempt,
            call.output,
            call.error,
            job_id,
            call.agent,
            call.turn,
            call.call_id,
        ),
    )


def delete_job(cursor: Any, dialect: Dialect, job_id: str) -> None:
    for table, column in (
        ("turns", "job"),
        ("calls", "job"),
        ("replies", "job"),
        ("messages", "job"),
        ("steps", "job"),
        ("events", "job"),
        ("jobs", "id"),
    ):
        cursor.execute(dialect.sql(f"DELETE FROM {table} WHERE {column} = ?"), (job_id,))


def finished_before(
    cursor: Any, dialect: Dialect, cutoff_age: float, statuses: Sequence[str]
) -> list[str]:
    cursor.execute(
        dialect.sql(
            "SELECT id FROM jobs WHERE status IN ("
            + ", ".join("?" for _ in statuses)
            + ") AND COALESCE(finished_at, updated_at) < {now} - ?"
        ),
        [*statuses, cutoff_age],
    )
    return [row[0] for row in cursor.fetchall()]
