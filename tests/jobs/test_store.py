"""The ``JobStore`` contract, run against every backend (``store_spec``): what a journal write
does, that writes are fenced by the claim's epoch, that order survives group commit, and that
failures are reported instead of lost."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
import trio
import trio.lowlevel

from actors.journal import CallEntry
from orchestrator.core.protocol.codec import encode
from orchestrator.core.protocol.events import MessageItem, ReasoningItem
from orchestrator.errors import JobError, JobLost, JobNotFound, StorageUnavailable
from orchestrator.jobs import sql
from orchestrator.jobs.model import (
    CallFinishedWrite,
    CallStartedWrite,
    Claim,
    EventRecord,
    EventWrite,
    MessageRecord,
    MessageWrite,
    Owner,
    ReplyRecord,
    ReplyWrite,
    StatusWrite,
    StepRecord,
    StepWrite,
    TurnRecord,
    TurnWrite,
)
from orchestrator.jobs.store import open_store
from tests.jobs.conftest import new_job, wait_until

if TYPE_CHECKING:
    from pathlib import Path

OWNER = Owner.this_process()
OTHER = Owner(host="elsewhere", pid=1, started=0.0)


def turn(agent: str, seq: int, *, reply: str | None = None, calls: int = 0) -> TurnWrite:
    items = [MessageItem.user(f"task {seq}")]
    output: list[Any] = [
        ReasoningItem(id=f"rs_{seq}", encrypted_content=f"gAAAA-secret-{seq}"),
        MessageItem(role="assistant", content=reply or "calling"),
    ]
    return TurnWrite(
        turn=TurnRecord(
            agent=agent,
            seq=seq,
            message="goal",
            new_items=encode(items),
            output=encode(output),
            response_id=f"resp_{agent}_{seq}",
            input_tokens=10 * seq,
            output_tokens=seq,
            reply=reply,
            created_at=0.0,
        ),
        calls=[
            CallEntry(agent=agent, turn=seq, call_id=f"call_{n}", name="tool", arguments="{}")
            for n in range(calls)
        ],
    )


async def test_a_new_job_is_claimed_by_its_creator_and_reads_back_whole(store_spec):
    """``create`` journals the job with epoch 1 for its owner; ``get``/``load`` read it back
    with the journal's counts; a second job with the same id is refused."""
    async with open_store(store_spec) as store:
        claim = await store.create(new_job(), OWNER)
        assert claim is not None
        assert (1, OWNER) == (claim.epoch, claim.owner)
        await store.write(claim, turn("worker", 1, calls=2))
        await store.write(claim, turn("worker", 2, reply="done"))
        record = await store.get("job-1")
        assert ("running", 1, OWNER, 2, 2) == (
            record.status,
            record.epoch,
            record.owner,
            record.turns,
            record.tool_calls,
        )
        assert (30, 3) == (record.input_tokens, record.output_tokens)
        assert record.lease_expires is not None
        assert record.lease_expires > record.created_at
        with pytest.raises(JobError, match="already exists"):
            await store.create(new_job(), OWNER)
        with pytest.raises(JobNotFound):
            await store.get("nope")


async def test_turn_items_round_trip_with_reasoning_content_intact(store_spec):
    """A turn's items come back exactly as written, encrypted reasoning included."""
    async with open_store(store_spec) as store:
        claim = await store.create(new_job(), OWNER)
        assert claim is not None
        write = turn("worker", 1, reply="ok")
        await store.write(claim, write)
        journal = await store.load("job-1")
        (loaded,) = journal.turns
        assert msgspec.json.decode(write.turn.output) == msgspec.json.decode(loaded.output)
        assert b"gAAAA-secret-1" in loaded.output
        assert ("worker", 1, "goal", "resp_worker_1", "ok") == (
            loaded.agent,
            loaded.seq,
            loaded.message,
            loaded.response_id,
            loaded.reply,
        )


async def test_every_kind_of_write_lands_in_its_table(store_spec):
    """Calls go pending -> started -> done; replies, messages, steps, events and the status
    are recorded; a message or reply written twice is kept once."""
    async with open_store(store_spec) as store:
        claim = await store.create(new_job(), OWNER)
        assert claim is not None
        call = CallEntry(agent="worker", turn=1, call_id="call_0", name="tool", arguments="{}")
        writes = [
            turn("worker", 1, calls=1),
            CallStartedWrite(
                call=msgspec.structs.replace(
                    call, status="started", attempt=1, side_effect="non_idempotent"
                )
            ),
            CallFinishedWrite(
                call=msgspec.structs.replace(
                    call, status="done", attempt=1, output="42", truncated=True
                )
            ),
            ReplyWrite(reply=ReplyRecord(agent="worker", message="goal", text="the answer")),
            ReplyWrite(reply=ReplyRecord(agent="worker", message="goal", text="again")),
            MessageWrite(
                message=MessageRecord(id="m1", sender="run", recipient="worker", text="t")
            ),
            MessageWrite(
                message=MessageRecord(id="m1", sender="run", recipient="worker", text="t")
            ),
            StepWrite(step=StepRecord(id="s1", agent="worker", status="started", attempts=1)),
            StepWrite(
                step=StepRecord(id="s1", agent="worker", status="completed", result="r", attempts=1)
            ),
            EventWrite(event=EventRecord(time=0.0, kind="note", detail="hello")),
            StatusWrite(status="completed", answer="the answer", release=True),
        ]
        for write in writes:
            store.submit(claim, write)
        await store.write(claim, EventWrite(event=EventRecord(time=0.0, kind="last")))
        journal = await store.load("job-1")
        (entry,) = journal.calls
        assert ("done", 1, "42", True) == (
            entry.status,
            entry.attempt,
            entry.output,
            entry.truncated,
        )
        assert [("worker", "goal", "the answer")] == [
            (r.agent, r.message, r.text) for r in journal.replies
        ]
        assert ["m1"] == [m.id for m in journal.messages]
        (step,) = journal.steps
        assert ("completed", "r") == (step.status, step.result)
        assert step.started_at is not None
        assert step.finished_at is not None
        assert ["accepted", "note", "last"] == [e.kind for e in journal.events]
        job = journal.job
        assert ("completed", "the answer", None, None) == (
            job.status,
            job.answer,
            job.owner,
            job.lease_expires,
        )
        assert job.finished_at is not None
        # Progress counts the writes that record work (turn, call result, replies, the
        # completed step), not bookkeeping: a job that crashes without any is poison.
        assert 5 == job.progress


async def test_writes_from_a_stale_epoch_change_nothing(store_spec):
    """Once another owner claimed the job, the old owner's writes are refused with JobLost
    and leave the journal as it was; the new owner's go through."""
    async with open_store(store_spec) as store:
        old = await store.create(new_job(), OWNER)
        assert old is not None
        await store.write(old, turn("worker", 1))
        _, new = await store.claim("job-1", OTHER, lambda record, now: (0, "running"))
        assert 2 == new.epoch
        with pytest.raises(JobLost):
            await store.write(old, turn("worker", 2))
        with pytest.raises(JobLost):
            await store.write(old, StatusWrite(status="completed", release=True))
        assert await store.heartbeat(old, 1.0) is None
        await store.write(new, turn("worker", 2))
        assert await store.heartbeat(new, 1.0) is False
        journal = await store.load("job-1")
        assert [1, 2] == [t.seq for t in journal.turns]
        assert ("running", 2, OTHER) == (journal.job.status, journal.job.epoch, journal.job.owner)


async def test_a_fenced_write_fails_alone_in_its_commit_group(store_spec):
    """Writes of two jobs queued together: the fenced job's write fails, the other commits."""
    async with open_store(store_spec) as store:
        a = await store.create(new_job("a"), OWNER)
        b = await store.create(new_job("b"), OWNER)
        assert a is not None
        assert b is not None
        stale = Claim(job="a", epoch=0, owner=OWNER)
        tickets = [
            store.submit(stale, turn("worker", 1)),
            store.submit(b, turn("worker", 1)),
            store.submit(a, turn("worker", 1)),
        ]
        with pytest.raises(JobLost):
            await tickets[0].wait()
        await tickets[1].wait()
        await tickets[2].wait()
        assert 1 == (await store.get("a")).turns
        assert 1 == (await store.get("b")).turns


async def test_group_commit_keeps_submission_order(store_spec):
    """Many writes submitted at once commit in the order they were submitted, whatever the
    batches: a later write is never durable without the earlier ones."""
    async with open_store(store_spec) as store:
        claim = await store.create(new_job(), OWNER)
        assert claim is not None
        for seq in range(1, 301):
            store.submit(claim, turn("worker", seq))
        await store.write(claim, EventWrite(event=EventRecord(time=0.0, kind="end")))
        journal = await store.load("job-1")
        assert list(range(1, 301)) == [t.seq for t in journal.turns]
        created = [t.created_at for t in journal.turns]
        assert created == sorted(created)


async def test_a_bad_write_fails_alone_and_is_reported(store_spec):
    """A write that breaks a constraint (a turn journaled twice: a bug) fails with a journal
    error; the writes batched with it still commit."""
    async with open_store(store_spec) as store:
        claim = await store.create(new_job(), OWNER)
        assert claim is not None
        await store.write(claim, turn("worker", 1))
        duplicate = store.submit(claim, turn("worker", 1))
        fine = store.submit(claim, turn("worker", 2))
        with pytest.raises(StorageUnavailable):
            await duplicate.wait()
        await fine.wait()
        assert [1, 2] == [t.seq for t in (await store.load("job-1")).turns]


async def test_claim_runs_the_decision_on_the_current_row_with_the_store_clock(store_spec):
    """``claim`` hands the decision the job as stored and the store's clock; a refusal
    raised by it changes nothing; a claim raises the epoch and records the owner."""
    seen: list[tuple[str, float]] = []
    async with open_store(store_spec) as store:
        await store.create(new_job(), OWNER)

        def refuse(record: Any, now: float) -> tuple[int, str]:
            seen.append((record.status, now))
            raise JobError("no")

        with pytest.raises(JobError, match="no"):
            await store.claim("job-1", OTHER, refuse)
        assert 1 == (await store.get("job-1")).epoch
        record, claim = await store.claim("job-1", OTHER, lambda r, now: (2, "running"))
        assert (1, 2) == (record.epoch, claim.epoch)
        stored = await store.get("job-1")
        assert (2, OTHER, 2) == (stored.epoch, stored.owner, stored.recoveries)
        assert "running" == seen[0][0]
        assert abs(seen[0][1] - stored.created_at) < 3600


async def test_list_filters_by_status_newest_first(store_spec):
    """list() returns every job newest first (by creation time, then id), only those of the
    given statuses when asked, and at most limit of them."""
    async with open_store(store_spec) as store:
        for n in range(3):
            claim = await store.create(new_job(f"j{n}"), OWNER)
            assert claim is not None
            if n == 1:
                await store.write(claim, StatusWrite(status="completed", release=True))
        listed = await store.list()
        assert {"j0", "j1", "j2"} == {job.id for job in listed}
        # Newest first; jobs created within one tick of the store's clock in id order.
        assert sorted(listed, key=lambda job: (-job.created_at, job.id)) == listed
        assert ["j1"] == [job.id for job in await store.list(["completed"])]
        assert 2 == len(await store.list(["running"], limit=5))
        assert 1 == len(await store.list(limit=1))


# -- the queue: claims by workers -----------------------------------------------------------------


async def test_claim_next_takes_queued_jobs_oldest_first_within_capacity(store_spec):
    """A worker takes the oldest queued job of its queues whose agents fit its free slots;
    the claim raises the epoch, records the owner and a lease, and journals the claim."""
    async with open_store(store_spec) as store:
        await store.create(new_job("big", status="queued", agents=3), None)
        await store.create(new_job("other", status="queued", queue="gpu"), None)
        await store.create(new_job("small", status="queued"), None)
        taken, _ = await store.claim_next(OTHER, queues=["default"], capacity=2)
        assert taken is not None
        record, claim = taken
        assert ("small", "queued", 1) == (record.id, record.status, claim.epoch)
        stored = await store.get("small")
        assert ("running", OTHER, 1) == (stored.status, stored.owner, stored.epoch)
        assert stored.lease_expires is not None
        nothing, expiry = await store.claim_next(OTHER, queues=["default"], capacity=2)
        assert nothing is None
        assert expiry is not None  # the lease of "small"
        taken, _ = await store.claim_next(OTHER, queues=["default", "gpu"], capacity=3)
        assert taken is not None
        assert "big" == taken[0].id
        journal = await store.load("small")
        assert [("claimed", OTHER.label, 1)] == [
            (e.kind, e.detail, e.epoch) for e in journal.events if e.kind == "claimed"
        ]


async def test_claim_next_recovers_a_job_whose_lease_ran_out(store_spec):
    """A job whose owner stopped renewing is taken over once its lease ran out (never
    before), counted as a crash; the old owner is fenced out; the next lease expiry is
    reported so an idle worker knows when to look again."""
    async with open_store(store_spec, lease=0.5) as store:
        old = await store.create(new_job(), OWNER)
        assert old is not None
        taken, expiry = await store.claim_next(OTHER, queues=["default"], capacity=8)
        assert taken is None
        assert expiry is not None
        assert 0 < expiry <= 0.5
        await wait_until(lambda: _claimable(store))
        taken, _ = await store.claim_next(OTHER, queues=["default"], capacity=8)
        assert taken is not None
        record, claim = taken
        assert (OWNER, 2) == (record.owner, claim.epoch)
        assert 1 == (await store.get("job-1")).recoveries
        with pytest.raises(JobLost):
            await store.write(old, turn("worker", 1))


async def test_claim_next_ends_a_job_that_keeps_crashing_dead(store_spec):
    """A job whose owners died ``max_recoveries`` times in a row without progress ends
    ``dead`` instead of being claimed again; a cancel requested of a job whose owner died
    ends it ``cancelled``."""
    async with open_store(store_spec, lease=0.01) as store:
        await store.create(new_job("crashy"), OWNER)
        for expected in (1, 2):
            await wait_until(lambda: _claimable(store))
            taken, _ = await store.claim_next(OTHER, queues=["default"], capacity=8)
            assert taken is not None
            assert expected == (await store.get("crashy")).recoveries
        await wait_until(lambda: _claimable(store))
        assert (None, None) == await store.claim_next(OTHER, queues=["default"], capacity=8)
        dead = await store.get("crashy")
        assert ("dead", "job.dead", None) == (dead.status, dead.code, dead.owner)
        await store.create(new_job("asked"), OWNER)
        await store.command(
            lambda cursor: sql.set_fields(cursor, store.dialect, "asked", cancel_requested=1)
        )
        await wait_until(lambda: _claimable(store))
        assert (None, None) == await store.claim_next(OTHER, queues=["default"], capacity=8)
        assert "cancelled" == (await store.get("asked")).status


async def test_concurrent_claimers_never_take_one_job_twice(store_spec):
    """Two stores (two connections, as two workers) claiming at once from 60 queued jobs:
    every job is claimed exactly once."""
    async with open_store(store_spec) as first, open_store(store_spec) as second:
        for n in range(60):
            await first.create(new_job(f"j{n:02d}", status="queued"), None)
        taken: dict[str, list[str]] = {}

        async def claimer(store: Any, owner: Owner) -> None:
            while True:
                claimed, _ = await store.claim_next(owner, queues=["default"], capacity=1)
                if claimed is None:
                    return
                taken.setdefault(claimed[0].id, []).append(owner.label)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claimer, first, OWNER)
            nursery.start_soon(claimer, second, OTHER)
        assert {f"j{n:02d}" for n in range(60)} == set(taken)
        assert all(1 == len(owners) for owners in taken.values())
        events = await first.read(
            lambda cursor: cursor.execute(
                "SELECT job, COUNT(*) FROM events WHERE kind = 'claimed' GROUP BY job"
            ).fetchall()
        )
        assert {1} == {count for _, count in events}


async def test_a_requeued_job_is_released_and_claimable_at_once(store_spec):
    """A worker handing a job back (status ``queued``, released) clears its owner and lease
    under its own epoch; another worker takes it at once, not counted as a crash."""
    async with open_store(store_spec) as store:
        await store.create(new_job(status="queued"), None)
        taken, _ = await store.claim_next(OWNER, queues=["default"], capacity=1)
        assert taken is not None
        await store.write(taken[1], StatusWrite(status="queued", release=True))
        job = await store.get("job-1")
        assert ("queued", None, None) == (job.status, job.owner, job.lease_expires)
        again, _ = await store.claim_next(OTHER, queues=["default"], capacity=1)
        assert again is not None
        assert (2, 0) == (again[1].epoch, (await store.get("job-1")).recoveries)


async def test_journal_rows_keep_the_epoch_that_wrote_them(store_spec):
    """Every journal row records its writer's epoch: who wrote what can be audited."""
    async with open_store(store_spec) as store:
        claim = await store.create(new_job(), OWNER)
        assert claim is not None
        await store.write(claim, turn("worker", 1, calls=1))
        _, second = await store.claim("job-1", OTHER, lambda record, now: (0, "running"))
        await store.write(second, turn("worker", 2))
        await store.write(
            second, StepWrite(step=StepRecord(id="s", agent="worker", status="started"))
        )
        rows = await store.read(
            lambda cursor: cursor.execute("SELECT seq, epoch FROM turns ORDER BY seq").fetchall()
        )
        assert [(1, 1), (2, 2)] == [tuple(row) for row in rows]
        (event,) = [e for e in (await store.load("job-1")).events if e.kind == "claimed"]
        assert 2 == event.epoch


async def test_a_version_1_store_is_upgraded_in_place(store_spec):
    """A store written by schema version 1 (no epochs, no agent counts) is migrated on open:
    its jobs keep their rows and get their agent counts."""
    version_1 = [
        statement.replace("agent_count INTEGER NOT NULL DEFAULT 1,", "")
        .replace("epoch INTEGER,", "")
        .replace(",\n                epoch INTEGER\n", "\n")
        for statement in _dialect(store_spec).schema()
    ]
    job = new_job(agents=3)
    async with open_store(store_spec) as store:
        await store.command(lambda cursor: _drop_all(cursor))

        def create_v1(cursor: Any) -> None:
            for statement in version_1:
                cursor.execute(statement)
            cursor.execute("INSERT INTO schema_version (version) VALUES (1)")
            cursor.execute(
                store.dialect.sql(
                    "INSERT INTO jobs (id, name, status, queue, mode, plan, plan_hash, agents, "
                    "options, created_at, updated_at) VALUES (?, ?, 'queued', 'default', "
                    "'steps', '{}', '', ?, '{}', 0, 0)"
                ),
                ("old", "plan", msgspec.json.encode(job.agents).decode()),
            )

        await store.command(create_v1)
    async with open_store(store_spec) as store:
        version = await store.read(
            lambda cursor: cursor.execute("SELECT version FROM schema_version").fetchall()
        )
        assert [(sql.SCHEMA_VERSION,)] == [tuple(row) for row in version]
        nothing, _ = await store.claim_next(OWNER, queues=["default"], capacity=2)
        assert nothing is None
        taken, _ = await store.claim_next(OWNER, queues=["default"], capacity=3)
        assert taken is not None
        assert "old" == taken[0].id


def _dialect(spec: str) -> sql.Dialect:
    return sql.POSTGRES if spec.startswith("postgresql://") else sql.SQLITE


def _drop_all(cursor: Any) -> None:
    for table in ("turns", "calls", "replies", "messages", "steps", "events", "jobs"):
        cursor.execute(f"DROP TABLE {table}")
    cursor.execute("DROP TABLE schema_version")


async def _claimable(store: Any) -> bool:
    found = await store.command(
        lambda cursor: sql.select_claimable(cursor, store.dialect, ["default"], 8)
    )
    return found is not None


# -- SQLite specifics ---------------------------------------------------------------------------


async def test_the_sqlite_file_is_private_in_a_private_directory(tmp_path: Path):
    """The store file (and its WAL) is mode 0600, its new directory 0700."""
    path = tmp_path / "state" / "orchestrator" / "jobs.db"
    async with open_store(path) as store:
        claim = await store.create(new_job(), OWNER)
        assert claim is not None
        await store.write(claim, turn("worker", 1))
        for name in ("jobs.db", "jobs.db-wal"):
            assert 0o600 == stat.S_IMODE(os.stat(path.parent / name).st_mode)
        assert 0o700 == stat.S_IMODE(os.stat(path.parent).st_mode)
    with sqlite3.connect(path) as connection:
        assert "wal" == connection.execute("PRAGMA journal_mode").fetchone()[0]
        assert "ok" == connection.execute("PRAGMA integrity_check").fetchone()[0]


async def test_synchronous_full_is_asked_with_the_store_url(tmp_path: Path):
    """``sqlite:///path?synchronous=full`` sets it on the writer's connection; an unknown
    option is refused."""
    from orchestrator.errors import ConfigurationError

    async with open_store(f"sqlite://{tmp_path}/a.db?synchronous=full") as store:
        level = await store.command(lambda cursor: cursor.execute("PRAGMA synchronous").fetchone())
        assert (2,) == tuple(level)  # FULL
    with pytest.raises(ConfigurationError, match="unknown option"):
        async with open_store(f"sqlite://{tmp_path}/a.db?fsync=yes"):
            pass  # pragma: no cover


async def test_a_read_only_store_refuses_writes_with_storage_unavailable(tmp_path: Path):
    """A store that became read-only (SQLite's query_only: the same refusal a read-only file
    gives, and it works as root) fails writes with StorageUnavailable naming the file."""
    path = tmp_path / "jobs.db"
    async with open_store(path) as store:
        claim = await store.create(new_job(), OWNER)
        assert claim is not None
        await store.command(lambda cursor: None)
        await store.command(lambda cursor: cursor.connection.execute("PRAGMA query_only = ON"))
        with pytest.raises(StorageUnavailable, match=f"{path}.*readonly"):
            await store.write(claim, turn("worker", 1))


async def test_a_full_disk_refuses_writes_with_storage_unavailable(tmp_path: Path):
    """A store that cannot grow (SQLite's max_page_count: the same SQLITE_FULL a full disk
    gives) fails the write that needs the space; nothing partial is left behind."""
    path = tmp_path / "jobs.db"
    async with open_store(path) as store:
        claim = await store.create(new_job(), OWNER)
        assert claim is not None
        pages = await store.command(
            lambda cursor: cursor.connection.execute("PRAGMA page_count").fetchone()[0]
        )
        await store.command(
            lambda cursor: cursor.connection.execute(f"PRAGMA max_page_count = {pages}")
        )
        big = turn("worker", 1, reply="x" * 200_000)
        with pytest.raises(StorageUnavailable, match="full"):
            await store.write(claim, big)
        assert 0 == (await store.get("job-1")).turns
    with sqlite3.connect(path) as connection:
        assert "ok" == connection.execute("PRAGMA integrity_check").fetchone()[0]


async def test_a_store_that_cannot_be_created_says_where(tmp_path: Path):
    """A store path under a file (not a directory) fails at open with StorageUnavailable."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageUnavailable, match="file"):
        async with open_store(blocker / "jobs.db"):
            pass  # pragma: no cover


async def test_the_schema_version_is_recorded_and_a_newer_one_refused(tmp_path: Path):
    """A new store records its schema version; a store whose version is newer than this
    program's is refused with StorageUnavailable instead of being written in a format it does
    not know."""
    path = tmp_path / "jobs.db"
    async with open_store(path):
        pass
    with sqlite3.connect(path) as connection:
        assert [(sql.SCHEMA_VERSION,)] == connection.execute(
            "SELECT version FROM schema_version"
        ).fetchall()
        connection.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StorageUnavailable, match="newer than this program"):
        async with open_store(path):
            pass  # pragma: no cover


async def test_writes_do_not_block_the_trio_thread(store_spec):
    """While the writer commits hundreds of writes, other trio tasks keep running: a ticker
    task gets scheduled between the submissions' completions."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with open_store(store_spec) as store, trio.open_nursery() as nursery:
        claim = await store.create(new_job(), OWNER)
        assert claim is not None
        nursery.start_soon(ticker)
        for seq in range(1, 201):
            await store.write(claim, turn("worker", seq))
        nursery.cancel_scope.cancel()
    assert ticks >= 200


# -- PostgreSQL specifics -----------------------------------------------------------------------


async def test_two_processes_opening_a_new_database_at_once_both_succeed(postgres_url):
    """Opening one empty database from several stores at once creates the schema once
    (an advisory lock serialises them); every store then works."""
    opened: list[int] = []

    async def open_one(n: int) -> None:
        async with open_store(postgres_url) as store:
            claim = await store.create(new_job(f"j{n}"), OWNER)
            assert claim is not None
            opened.append(n)

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(open_one, n)
    assert [0, 1, 2, 3] == sorted(opened)


async def test_the_password_never_shows_in_the_url_nor_in_errors(postgres_server):
    """A URL's password is left out of ``store.url`` and of the error a failed connection
    gives (here: nothing listens on the port)."""
    from orchestrator.jobs.postgres import display_url

    assert "postgresql://me@db.example:5432/jobs?sslmode=require" == display_url(
        "postgresql://me:s3cret-pw@db.example:5432/jobs?sslmode=require&password=s3cret-pw"
    )
    port = postgres_server.port
    async with open_store(postgres_server.url) as store:
        assert "postgres@127.0.0.1" in store.url
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    free = closed.getsockname()[1]
    closed.close()
    url = f"postgresql://me:s3cret-pw@127.0.0.1:{free}/jobs?connect_timeout=2"
    with pytest.raises(StorageUnavailable) as raised:
        async with open_store(url):
            pass  # pragma: no cover
    assert "s3cret-pw" not in str(raised.value)
    assert f"me@127.0.0.1:{free}" in str(raised.value)
    assert port != free


async def test_a_submitted_job_and_a_cancel_wake_listeners(postgres_url):
    """A listening store hears ``queued`` when a job is queued (after the commit) and
    ``cancel`` when a running job is asked to stop."""
    from orchestrator.jobs.api import Jobs

    heard: list[tuple[str, str]] = []
    arrived = trio.Event()

    def callback(kind: str, job: str) -> None:
        heard.append((kind, job))
        if len(heard) == 2:
            arrived.set()

    async with (
        open_store(postgres_url) as listener,
        open_store(postgres_url) as other,
        listener.listen(callback) as listening,
    ):
        assert listening
        await wait_until(lambda: _listening(other))
        await other.create(new_job("q", status="queued"), None)
        # Owned by a live process elsewhere (its lease decides), so the cancel is a request.
        await other.create(new_job("r"), OTHER)
        await Jobs(other).cancel("r")
        with trio.fail_after(10):
            await arrived.wait()
    assert [("queued", "q"), ("cancel", "r")] == heard


async def _listening(store: Any) -> bool:
    rows = await store.read(
        lambda cursor: cursor.execute(
            # idle: the LISTEN has finished (while it runs, its text is already there).
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = "
            "'orchestrator-listener' AND query LIKE 'LISTEN%%' AND state = 'idle'"
        ).fetchall()
    )
    return bool(rows[0][0])
