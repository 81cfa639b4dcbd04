"""``Worker`` in this process, on both backends (SQLite workers share one file on one host):
it runs queued jobs within its slots, hands a running job back when stopped, and a journal
whose lease lapsed (the process was paused) stops its job before the next model turn."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest
import trio

from orchestrator.core.budget import BudgetTracker
from orchestrator.core.observe import TurnStarted
from orchestrator.core.server import LatencyModel
from orchestrator.errors import JobLost
from orchestrator.jobs.journal import Journal
from orchestrator.jobs.model import Owner
from orchestrator.jobs.store import open_store
from orchestrator.jobs.worker import Worker
from orchestrator.runner import EmbeddedServer, RunSettings, submit
from plans import plan_from_dict
from tests.jobs.conftest import new_job, wait_until

if TYPE_CHECKING:
    from orchestrator.jobs.store import JobStore

PLAN = plan_from_dict(
    {
        "name": "quick",
        "settings": {"model": "gpt-5-mini"},
        "agents": [{"name": "clerk", "role": "worker"}, {"name": "auditor", "role": "worker"}],
        "steps": [
            {"id": "answer", "agent": "clerk", "task": "Say hello to {{goal}}"},
            {
                "id": "check",
                "agent": "auditor",
                "task": "Check: {{steps.answer.result}}",
                "depends_on": ["answer"],
            },
        ],
    }
)
IN_MEMORY = {"embedded": EmbeddedServer(transport="memory"), "settings": RunSettings(offline=True)}


async def statuses(store: JobStore) -> dict[str, str]:
    return {job.id: job.status for job in await store.list()}


async def test_a_worker_runs_queued_jobs_within_its_slots(store_spec):
    """Five queued jobs of two agents each, a worker of three slots: it never holds more than
    one job at a time (a second needs two more slots), and runs all five to completion."""
    async with open_store(store_spec) as store:
        for n in range(5):
            await submit(PLAN, f"Guest{n}", store=store, job_id=f"quick-{n}")
        worker = Worker(store, slots=3, poll=0.1, run_options=IN_MEMORY)
        most = 0
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)

            async def all_completed() -> bool:
                nonlocal most
                most = max(most, worker.statistics().slots_used)
                return {"completed"} == set((await statuses(store)).values())

            await wait_until(all_completed)
            worker.stop()
        stats = worker.statistics()
        assert (5, 5, 0, 0) == (stats.claimed, stats.finished, stats.released, stats.slots_used)
        assert most <= 2
        job = await store.get("quick-3")
        assert "Guest3" in (job.answer or "")
        assert job.owner is None


async def test_stopping_a_worker_hands_its_running_job_back(store_spec):
    """``stop()`` interrupts the running job where it is (its first model turn in flight)
    and releases it to the queue in the same write (status ``queued``, no owner, no lease);
    the worker then returns."""
    in_flight = trio.Event()

    def watch(event: object) -> None:
        if isinstance(event, TurnStarted):
            in_flight.set()

    slow = {
        **IN_MEMORY,
        "embedded": EmbeddedServer(
            config={"latency": LatencyModel(time_to_first_token=30.0)}, transport="memory"
        ),
        "events": watch,
    }
    async with open_store(store_spec) as store:
        await submit(PLAN, "Guest", store=store, job_id="slow")
        worker = Worker(store, slots=2, poll=0.1, run_options=slow)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.serve)
                await in_flight.wait()
                assert "running" == (await store.get("slow")).status
                worker.stop()
        job = await store.get("slow")
        assert ("queued", None, None) == (job.status, job.owner, job.lease_expires)
        assert 1 == worker.statistics().released
        kinds = [event.kind for event in (await store.load("slow")).events]
        assert ["accepted", "claimed", "started", "queued"] == kinds


async def test_a_lapsed_lease_stops_the_job_before_its_next_turn(tmp_path):
    """A journal whose lease was last renewed 90% of a lease ago (the process was paused)
    fails with JobLost before the next model turn (the budget's guard) or awaited write,
    and tells its run once."""
    async with open_store(tmp_path / "jobs.db", lease=3.0) as store:
        claim = await store.create(new_job(), Owner.this_process())
        assert claim is not None
        failures: list[object] = []
        journal = Journal(store, claim, on_failure=failures.append)
        budget = BudgetTracker(guard=journal.check_lease)
        journal._renewed = trio.current_time()
        budget.before_turn("worker")  # a fresh lease: the turn may start
        journal._renewed = trio.current_time() - 2.8
        with pytest.raises(JobLost, match=r"last renewed 2\.8 s ago"):
            budget.before_turn("worker")
        with pytest.raises(JobLost):
            await journal.step_durably(new_step())
        assert 1 == len(failures)
        assert 1 == budget.usage("worker").turns


def new_step():  # type: ignore[no-untyped-def]
    from orchestrator.jobs.model import StepRecord

    return StepRecord(id="s", agent="worker", status="started")


def test_jobs_submit_queues_a_job_and_jobs_list_shows_owner_and_lease(tmp_path, capsys):
    """``orchestrator jobs submit`` prints the new job's id and leaves it queued with no
    owner; ``jobs list`` has OWNER and LEASE columns (``-`` for a queued job); a plan with
    problems is refused (exit 2) and nothing is queued."""
    from orchestrator.cli import main

    plan = tmp_path / "plan.json"
    plan.write_text(msgspec.json.encode(PLAN).decode())
    store = str(tmp_path / "jobs.db")
    assert 0 == main(
        ["jobs", "submit", str(plan), "--goal", "Ada", "--job-id", "q1", "--store", store]
    )
    assert "q1" == capsys.readouterr().out.strip()
    assert 0 == main(["jobs", "list", "--store", store])
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[-2:] == ["OWNER", "LEASE"]
    assert row.split()[0] == "q1"
    assert row.split()[1] == "queued"
    assert row.split()[-2:] == ["-", "-"]
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "broken"}')
    with pytest.raises(SystemExit) as exited:
        main(["jobs", "submit", str(broken), "--store", store, "--job-id", "q2"])
    assert 2 == exited.value.code
    assert 0 == main(["jobs", "list", "--store", store, "--json"])
    assert ["q1"] == [job["id"] for job in msgspec.json.decode(capsys.readouterr().out)]
