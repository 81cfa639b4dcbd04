"""Workers as real processes (``orchestrator worker``) sharing one real PostgreSQL database:
faults are real signals (SIGKILL, SIGSTOP/SIGCONT, SIGTERM), and every wait is a bounded poll
of the database or of a process, never a fixed sleep.

The plan: a ``clerk`` records the goal's name with ``record`` (an ``idempotent_write`` tool
that appends its idempotency key, attempt and process to a file, as a service honouring keys
would log what it is asked to apply), then an ``auditor`` checks the record. The embedded
server's first token takes ``--local-ttft`` seconds, so a job lasts about a second and a
signal lands in the middle of one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

from orchestrator.jobs.api import Jobs
from orchestrator.jobs.model import FINAL
from orchestrator.jobs.store import open_store
from orchestrator.runner import EmbeddedServer, RunSettings, run, submit
from tests.jobs.conftest import wait_until
from tests.jobs.worker_tools import EFFECTS_ENV

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from orchestrator.jobs.model import JobRecord
    from orchestrator.jobs.store import JobStore

ROOT = Path(__file__).resolve().parents[2]
NAMES = [
    "Ada",
    "Bruno",
    "Carla",
    "Dora",
    "Emil",
    "Fabio",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Karla",
    "Lena",
    "Marco",
    "Nora",
    "Oskar",
    "Paula",
    "Quentin",
    "Rosa",
    "Sven",
    "Tara",
]
PLAN = """
version = 1
name = "ledger"

[settings]
model = "gpt-5-mini"

[tools.record]
path = "tests.jobs.worker_tools:record"
side_effect = "idempotent_write"
timeout = 10

[[agents]]
name = "clerk"
role = "worker"
instructions = "Record the name in the task with your tool, then confirm what you recorded."
tools = ["record"]

[[agents]]
name = "auditor"
role = "worker"
instructions = "Confirm the clerk's record in one sentence."

[[steps]]
id = "write"
agent = "clerk"
task = "Record {{goal}}"

[[steps]]
id = "check"
agent = "auditor"
task = "Check this record: {{steps.write.result}}"
depends_on = ["write"]
"""
# One agent, one turn: the claim race of 200 jobs.
QUICK_PLAN = """
version = 1
name = "quick"

[settings]
model = "gpt-5-mini"

[[agents]]
name = "clerk"
role = "worker"

[[steps]]
id = "answer"
agent = "clerk"
task = "Say hello to {{goal}}"
"""


def goal_of(name: str) -> str:
    return f"the parcel of {name}"


@attrs.define
class WorkerProcess:
    """One ``orchestrator worker`` process and its log file."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def owns(self, job: JobRecord) -> bool:
        return job.owner is not None and job.owner.pid == self.pid

    async def wait(self) -> int:
        """Its exit code, once it exits (fails after 30 s)."""
        with trio.fail_after(30):
            return await trio.to_thread.run_sync(self.process.wait)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts worker processes; any still running at the end is killed (and continued
    first, in case it is stopped)."""
    started: list[WorkerProcess] = []

    def start(url: str, *, slots: int = 4, lease: float = 3.0, ttft: float = 0.3) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        environment = {
            **os.environ,
            EFFECTS_ENV: str(tmp_path / "effects"),
            "PYTHONPATH": str(ROOT),
        }
        command = [sys.executable, "-m", "orchestrator.cli", "worker", "--store", url]
        command += ["--slots", str(slots), "--lease", str(lease), "--poll", "0.5"]
        command += ["--offline", "--local-ttft", str(ttft)]
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT, env=environment
            )
        worker = WorkerProcess(process, log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGCONT)
                worker.process.kill()
        worker.process.wait(timeout=30)


def write_plan(directory: Path, text: str = PLAN) -> Path:
    path = directory / "plan.toml"
    path.write_text(text)
    return path


async def fault_free_answers(
    plan: Path, names: list[str], directory: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str | None]:
    """Each goal's answer from a run without faults (in process, no journal)."""
    monkeypatch.setenv(EFFECTS_ENV, str(directory / "control-effects"))
    answers: dict[str, str | None] = {}

    async def one(name: str) -> None:
        result = await run(
            plan,
            goal_of(name),
            store=None,
            settings=RunSettings(offline=True),
            embedded=EmbeddedServer(transport="memory"),
        )
        answers[name] = result.answer

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    return answers


async def jobs_of(store: JobStore) -> list[JobRecord]:
    return await store.list(limit=1000)


async def wait_for_job(
    store: JobStore, predicate: Callable[[JobRecord], bool], *, seconds: float = 30.0
) -> JobRecord:
    """The first job ``predicate`` accepts, polling the store."""
    found: list[JobRecord] = []

    async def look() -> bool:
        found[:] = [job for job in await jobs_of(store) if predicate(job)]
        return bool(found)

    await wait_until(look, seconds=seconds)
    return found[0]


async def rows(store: JobStore, query: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in await store.read(lambda c: c.execute(query).fetchall())]


def effects(directory: Path) -> list[tuple[str, int, int, float]]:
    """(idempotency key, attempt, pid, wall time) per tool invocation."""
    path = directory / "effects"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        key, attempt, pid, when = line.split("\t")
        out.append((key, int(attempt), int(pid), float(when)))
    return out


async def fenced_writes_accepted(store: JobStore) -> tuple[int, int]:
    """(journal rows written under an epoch after the next epoch's claim, journal rows).

    A write transaction holds the job's row lock from its fence to its commit, and a claim
    needs that lock: so a write accepted under epoch ``e`` is always older than the claim of
    ``e + 1``, on the database's one clock. Any row younger than that was written by an owner
    already fenced off."""
    claims = {
        (job, epoch): at
        for job, epoch, at in await rows(
            store, "SELECT job, epoch, time FROM events WHERE kind = 'claimed'"
        )
    }
    written = await rows(
        store,
        "SELECT job, epoch, created_at FROM turns UNION ALL "
        "SELECT job, epoch, updated_at FROM calls UNION ALL "
        "SELECT job, epoch, created_at FROM replies UNION ALL "
        "SELECT job, epoch, created_at FROM messages UNION ALL "
        "SELECT job, epoch, COALESCE(finished_at, started_at) FROM steps UNION ALL "
        "SELECT job, epoch, time FROM events WHERE kind <> 'claimed'",
    )
    late = [
        (job, epoch, at)
        for job, epoch, at in written
        if epoch is not None and (job, epoch + 1) in claims and at >= claims[(job, epoch + 1)]
    ]
    return len(late), len(written)


async def test_three_workers_twenty_jobs_survive_a_kill_and_a_pause(
    postgres_url, tmp_path, spawn, monkeypatch
):
    """Three workers, twenty jobs; one worker is SIGKILLed in the middle of a job, another
    SIGSTOPped past its lease and SIGCONTed once a job of it was taken over. Every job
    completes exactly once with its fault-free answer; no journal write of a fenced-off owner
    was accepted; no idempotency key was applied twice under one attempt; the woken worker
    stops the job it lost and starts no side effect for it (one it was inside when paused
    is in doubt, and the new owner runs it again under the same key)."""
    plan = write_plan(tmp_path)
    expected = await fault_free_answers(plan, NAMES, tmp_path, monkeypatch)
    async with open_store(postgres_url) as store:
        for n, name in enumerate(NAMES):
            await submit(plan, goal_of(name), store=store, job_id=f"ledger-{n:02d}-{name}")
        killed, paused, survivor = (spawn(postgres_url) for _ in range(3))

        victim = await wait_for_job(
            store, lambda job: killed.owns(job) and job.status == "running" and job.turns >= 1
        )
        killed.process.kill()
        assert -signal.SIGKILL == await killed.wait()

        lost: dict[str, int] = {}
        while not lost:  # until the pause catches the worker in the middle of a job
            await wait_for_job(
                store, lambda job: paused.owns(job) and job.status == "running" and job.turns >= 1
            )
            os.kill(paused.pid, signal.SIGSTOP)
            lost = {
                job.id: job.epoch
                for job in await jobs_of(store)
                if paused.owns(job) and job.status == "running"
            }
            if not lost:
                os.kill(paused.pid, signal.SIGCONT)

        async def taken_over() -> bool:
            current = {job.id: job for job in await jobs_of(store)}
            return any(current[job].epoch > epoch for job, epoch in lost.items())

        await wait_until(taken_over)
        taken = [
            job.id for job in await jobs_of(store) if job.id in lost and job.epoch > lost[job.id]
        ]
        os.kill(paused.pid, signal.SIGCONT)

        async def all_final() -> bool:
            return all(job.status in FINAL for job in await jobs_of(store))

        await wait_until(all_final, seconds=90)
        for worker in (paused, survivor):
            worker.process.send_signal(signal.SIGTERM)
        assert [0, 0] == [await paused.wait(), await survivor.wait()]

        final = {job.id: job for job in await jobs_of(store)}
        assert {"completed"} == {job.status for job in final.values()}
        assert {f"ledger-{n:02d}-{name}": expected[name] for n, name in enumerate(NAMES)} == {
            job_id: job.answer for job_id, job in final.items()
        }
        completions = await rows(
            store, "SELECT job, COUNT(*) FROM events WHERE kind = 'completed' GROUP BY job"
        )
        assert {1} == {count for _, count in completions}
        assert len(NAMES) == len(completions)
        # The killed worker's job was resumed by another worker from its journal.
        victim_events = [e.kind for e in (await store.load(victim.id)).events]
        assert victim_events.count("claimed") >= 2
        assert "resumed" in victim_events
        late, written = await fenced_writes_accepted(store)
        assert (0, True) == (late, written > 100)
        applied = effects(tmp_path)
        keys = [(key, attempt) for key, attempt, _, _ in applied]
        assert len(keys) == len(set(keys)), "an idempotency key applied twice in one attempt"
        done = await rows(store, "SELECT job FROM calls WHERE name = 'record' AND status = 'done'")
        assert len(NAMES) == len(done) == len({key for key, _ in keys})
        # An effect landing after its worker lost the job can only be one already in
        # flight (its "started" mark was journaled under the old claim: the worker was
        # paused inside the tool), which the new owner found in doubt and ran again with
        # the same key and the next attempt. The woken worker starts nothing new for it.
        claims = sorted(
            await rows(store, "SELECT job, time, detail FROM events WHERE kind = 'claimed'"),
            key=lambda claim: claim[1],
        )
        host = os.uname().nodename
        latest = {key: max(a for k, a, _, _ in applied if k == key) for key, _, _, _ in applied}
        started_by_a_lost_owner = []
        for key, attempt, pid, when in applied:
            job = key.split("/")[0]
            owners = [detail for claimed, at, detail in claims if claimed == job and at <= when]
            if owners[-1:] != [f"{host}:{pid}"] and attempt >= latest[key]:
                started_by_a_lost_owner.append((key, attempt, pid, owners[-1:]))
        assert [] == started_by_a_lost_owner
    log = paused.text()
    for job_id in taken:
        assert f"lost job {job_id}" in log


async def test_two_workers_racing_for_200_jobs_claim_each_once(postgres_url, tmp_path, spawn):
    """Two workers started at once on 200 queued jobs: every job is claimed exactly once
    (one ``claimed`` event each, all by the two workers) and completes."""
    from plans import load_plan

    plan = load_plan(write_plan(tmp_path, QUICK_PLAN))
    async with open_store(postgres_url) as store:
        for n in range(200):
            await submit(plan, f"Guest{n}", store=store, job_id=f"quick-{n:03d}")
        workers = [spawn(postgres_url, slots=16, lease=30.0, ttft=0.0) for _ in range(2)]

        async def all_completed() -> bool:
            return all(job.status == "completed" for job in await jobs_of(store))

        await wait_until(all_completed, seconds=90)
        for worker in workers:
            worker.process.send_signal(signal.SIGTERM)
        assert [0, 0] == [await worker.wait() for worker in workers]
        claims = await rows(
            store,
            "SELECT job, COUNT(*), MIN(detail) FROM events WHERE kind = 'claimed' GROUP BY job",
        )
    assert 200 == len(claims)
    assert {1} == {count for _, count, _ in claims}
    by_worker = {detail for _, _, detail in claims}
    assert by_worker <= {f"{os.uname().nodename}:{worker.pid}" for worker in workers}


async def test_cancel_reaches_another_workers_job_and_sigterm_hands_jobs_over(
    postgres_url, tmp_path, spawn, monkeypatch
):
    """``jobs cancel`` from another process stops a job a worker runs (it ends
    ``cancelled``, the worker says so); SIGTERM to a worker hands its running job back to the
    queue, released, and a second worker resumes it to its fault-free answer."""
    plan = write_plan(tmp_path)
    expected = await fault_free_answers(plan, ["Ada"], tmp_path, monkeypatch)
    async with open_store(postgres_url) as store:
        first = spawn(postgres_url, slots=2, lease=10.0, ttft=1.0)
        await submit(plan, goal_of("Ada"), store=store, job_id="to-cancel")
        await wait_for_job(store, lambda job: first.owns(job) and job.status == "running")
        _, live = await Jobs(store).cancel("to-cancel")
        assert live

        async def cancelled() -> bool:
            return "cancelled" == (await store.get("to-cancel")).status

        await wait_until(cancelled, seconds=10)
        kinds = [event.kind for event in (await store.load("to-cancel")).events]
        assert kinds.index("cancel_requested") < kinds.index("cancelled")

        await submit(plan, goal_of("Ada"), store=store, job_id="handed-over")
        await wait_for_job(
            store, lambda job: first.owns(job) and job.id == "handed-over" and job.turns >= 1
        )
        first.process.send_signal(signal.SIGTERM)
        assert 0 == await first.wait()
        released = await store.get("handed-over")
        assert ("queued", None, None) == (released.status, released.owner, released.lease_expires)
        second = spawn(postgres_url, slots=2, lease=10.0, ttft=0.0)

        async def completed() -> bool:
            return "completed" == (await store.get("handed-over")).status

        await wait_until(completed, seconds=30)
        done = await store.load("handed-over")
        second.process.send_signal(signal.SIGTERM)
        assert 0 == await second.wait()
    assert expected["Ada"] == done.job.answer
    claims = [e.detail for e in done.events if e.kind == "claimed"]
    assert [f"{os.uname().nodename}:{first.pid}", f"{os.uname().nodename}:{second.pid}"] == claims
    assert "resumed" in [e.kind for e in done.events]
    assert 0 == done.job.recoveries
    assert "job to-cancel cancelled" in first.text()
    assert "released job handed-over back to the queue" in first.text()
