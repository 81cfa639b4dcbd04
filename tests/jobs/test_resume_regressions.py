"""Resumes that went wrong in the crash-point campaign (test_crash_points.py), one test each."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING

import trio

from actors.journal import CallEntry
from orchestrator.core.protocol.codec import encode
from orchestrator.core.protocol.events import FunctionCallItem, MessageItem
from orchestrator.jobs.model import JobJournal, JobRecord, TurnRecord
from orchestrator.jobs.resume import rebuild
from orchestrator.runner import EmbeddedServer, run
from tests.jobs.crashplan.harness import command, environment, read_journal

if TYPE_CHECKING:
    from pathlib import Path


def journal_with_calls(model_order: list[str], stored_order: list[str]) -> JobJournal:
    job = JobRecord(
        id="job",
        name="plan",
        status="running",
        queue="default",
        goal=None,
        mode="steps",
        plan="{}",
        plan_hash="",
        plan_dir=None,
        agents={},
        options={},
        created_at=0.0,
        updated_at=0.0,
    )
    output = [FunctionCallItem(call_id=c, name=f"tool_{c}", arguments="{}") for c in model_order]
    turn = TurnRecord(
        agent="courier",
        seq=1,
        message="step:dispatch",
        new_items=encode([MessageItem.user("Tell Faro.")]),
        output=encode(output),
        response_id="resp_1",
        input_tokens=1,
        output_tokens=1,
        reply=None,
        created_at=0.0,
    )
    calls = [
        CallEntry(agent="courier", turn=1, call_id=c, name=f"tool_{c}", arguments="{}")
        for c in stored_order
    ]
    return JobJournal(
        job=job, turns=[turn], calls=calls, replies=[], messages=[], steps=[], events=[]
    )


def test_the_open_calls_keep_the_order_the_model_made_them_in():
    """The store may return a turn's calls in any order (by call id, say); the rebuilt turn
    lists them as the model called them, so the outputs a resumed task sends, and an answer
    built from them, are the same as without the crash."""
    journal = journal_with_calls(["call_z", "call_a", "call_m"], ["call_a", "call_m", "call_z"])

    last = rebuild(journal)["courier"].turn_entries[-1]

    assert ["call_z", "call_a", "call_m"] == [call.call_id for call in last.calls]


TWO_STEPS = """\
name = "twosteps"
[settings]
model = "gpt-5-mini"
[[agents]]
name = "writer"
[[steps]]
id = "draft"
agent = "writer"
task = "Draft the notice."
[[steps]]
id = "final"
agent = "writer"
task = "Polish: {{steps.draft.result}}"
depends_on = ["draft"]
"""


async def test_a_step_answered_before_the_kill_is_recorded_completed_on_resume(tmp_path: Path):
    """A job killed after a step's answer was journaled but before its step record said so
    (they are separate writes) resumes with that answer (the step does not run again) and
    records the step ``completed``, as ``jobs show`` then reports it."""
    plan = tmp_path / "plan.toml"
    plan.write_text(TWO_STEPS)
    store = tmp_path / "jobs.db"
    with trio.fail_after(30):
        first = await run(
            plan, store=store, job_id="twosteps", embedded=EmbeddedServer(transport="memory")
        )
    assert "completed" == first.status
    # The journal as the kill left it: the last step's answer is in its turn, its record
    # still says started, and the job's owner is gone.
    with closing(sqlite3.connect(store)) as db, db:
        db.execute(
            "UPDATE steps SET status = 'started', result = NULL, finished_at = NULL "
            "WHERE id = 'final'"
        )
        db.execute(
            "UPDATE jobs SET status = 'interrupted', answer = NULL, finished_at = NULL "
            "WHERE id = 'twosteps'"
        )

    with trio.fail_after(30):
        resumed = await run(
            resume="twosteps", store=store, embedded=EmbeddedServer(transport="memory")
        )

    assert ("completed", first.answer) == (resumed.status, resumed.answer)
    journal = read_journal(store, "twosteps")
    assert {"writer": 2} == journal.turns  # no step ran again
    assert {"draft": "completed", "final": "completed"} == {
        step: status for step, (status, _) in journal.steps.items()
    }
    assert first.answer == journal.steps["final"][1]


async def test_a_job_that_crashes_at_the_same_place_on_every_resume_goes_dead(tmp_path: Path):
    """A job killed before its first new turn on every resume (a poison job) is ``dead`` at
    the third consecutive crash without progress, not resumed forever: a resume's own
    bookkeeping (its event, the tasks it delivers again) is not progress. ``jobs retry``
    then runs it to the end (docs/faults.md#poison-jobs)."""
    plan = tmp_path / "plan.toml"
    plan.write_text(TWO_STEPS)
    store, ledger = tmp_path / "jobs.db", tmp_path / "ledger.db"
    resume = ["jobs", "resume", "twosteps", "--store", store]
    # The draft step is done when the second request (the final step's) kills the run.
    first = await command(
        ["run", plan, "--store", store, "--job-id", "twosteps"],
        environment(ledger, crash="request_sent:2"),
    )
    assert -9 == first.code, first.describe()
    for attempt in (1, 2):
        again = await command(resume, environment(ledger, crash="request_sent:1"))
        assert -9 == again.code, f"resume {attempt}: {again.describe()}"

    refused = await command(resume, environment(ledger, crash="request_sent:1"))

    assert 2 == refused.code, refused.describe()
    assert (
        "error[job.not_resumable]: job twosteps is dead: the job crashed 3 times in a row "
        "without progress"
    ) in refused.stderr
    assert "dead" == read_journal(store, "twosteps").status
    retried = await command(["jobs", "retry", "twosteps", "--store", store], environment(ledger))
    assert 0 == retried.code, retried.describe()
    journal = read_journal(store, "twosteps")
    assert "completed" == journal.status
    assert {"writer": 2} == journal.turns


ONE_POST = """\
name = "onepost"
[settings]
model = "gpt-5-mini"
[tools.post]
path = "tests.jobs.crashplan.tools:post"
[[agents]]
name = "courier"
tools = ["post"]
[[steps]]
id = "tell"
agent = "courier"
task = "Tell Faro."
"""


async def test_a_resume_that_parks_calls_names_them_in_its_reason(tmp_path: Path):
    """Killed while a non-idempotent tool ran, the resume parks the call (exit 7) and its
    result's reason names that call, as the run that parks it itself does."""
    plan = tmp_path / "plan.toml"
    plan.write_text(ONE_POST)
    store, ledger = tmp_path / "jobs.db", tmp_path / "ledger.db"
    killed = await command(
        ["run", plan, "--store", store, "--job-id", "onepost"],
        environment(ledger, crash="during_tool:1"),
    )
    assert -9 == killed.code, killed.describe()

    resumed = await command(
        ["jobs", "resume", "onepost", "--store", store, "--json"], environment(ledger)
    )

    assert 7 == resumed.code, resumed.describe()
    result = resumed.result()
    [parked] = result["parked"]
    assert result["reason"].startswith(
        "1 tool call(s) may or may not have run and cannot safely run again: "
        f"courier:post ({parked['call_id']}): resolve each with `orchestrator jobs resolve`"
    )
