"""``orchestrator run`` as a job and ``orchestrator jobs ...`` in subprocesses: job ids,
resume after a SIGKILL, parked calls resolved from the command line, poison jobs going
``dead``, cancel, retry, prune, and every error a person can run into."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "orchestrator.cli")

PLAN = {
    "name": "cards",
    "goal": "Cards from Lisbon and Porto.",
    "settings": {"model": "gpt-5-mini"},
    "tools": {
        "look": {"path": "tests.jobs.cli_tools:look"},
        "post": {"path": "tests.jobs.cli_tools:post"},
    },
    "agents": [
        {"name": "looker", "tools": ["look"]},
        {"name": "poster", "tools": ["post"]},
    ],
    "steps": [
        {"id": "see", "agent": "looker", "task": "Look Lisbon up."},
        {"id": "send", "agent": "poster", "task": "Post from Porto.", "depends_on": ["see"]},
        {
            "id": "again",
            "agent": "looker",
            "task": "Look Porto up: {{steps.send.result}}",
            "depends_on": ["send"],
        },
    ],
    "final_step": "again",
}


class Jobs:
    """Runs ``orchestrator`` with one store, one ledger and one plan, in ``tmp_path``."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.store = tmp_path / "jobs.db"
        self.ledger = tmp_path / "ledger.txt"
        self.plan = tmp_path / "plan.json"
        self.plan.write_text(json.dumps(PLAN))

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ORCHESTRATOR_CRASH_AT")
        }
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["ORCHESTRATOR_STORE"] = str(self.store)
        env["ORCHESTRATOR_TEST_LEDGER"] = str(self.ledger)
        env["COLUMNS"] = "200"
        env.update(extra)
        return env

    def __call__(self, *args: object, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *map(str, args)],
            cwd=ROOT,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def killed(self, job: str, point: str) -> None:
        """``run`` the plan as ``job``, SIGKILLed at crash point ``point``."""
        done = self("run", self.plan, "--job-id", job, ORCHESTRATOR_CRASH_AT=point)
        assert -9 == done.returncode, done.stderr

    def json(self, *args: object) -> Any:
        done = self(*args, "--json")
        assert 0 == done.returncode, done.stderr
        return json.loads(done.stdout)

    def posts(self) -> list[str]:
        if not self.ledger.exists():
            return []
        return self.ledger.read_text().splitlines()

    def integrity(self) -> str:
        with sqlite3.connect(self.store) as connection:
            return str(connection.execute("PRAGMA integrity_check").fetchone()[0])


@pytest.fixture
def jobs(tmp_path: Path) -> Jobs:
    return Jobs(tmp_path)


def answer_of(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)["answer"]


def test_a_killed_run_resumes_from_the_command_line_with_the_same_answer(jobs):
    """``run`` names its job; SIGKILLed right after step ``see`` was journaled, the job shows
    as crashed in ``jobs list``; ``jobs resume`` finishes it with the answer of an
    uninterrupted run, the trace file appended to, and ``post`` applied once."""
    golden = jobs("run", jobs.plan, "--json", "--job-id", "golden")
    assert 0 == golden.returncode, golden.stderr
    assert "job golden" in golden.stderr.splitlines()
    jobs.ledger.unlink()
    trace = jobs.dir / "trace.jsonl"

    killed = jobs(
        "run", jobs.plan, "--json", "--job-id", "k", "--trace", trace,
        ORCHESTRATOR_CRASH_AT="step_boundary:1",
    )  # fmt: skip
    assert -9 == killed.returncode
    assert "ok" == jobs.integrity()
    lines_before = trace.read_text().count("\n")
    listed = {job["id"]: job["status"] for job in jobs.json("jobs", "list")}
    assert {"golden": "completed", "k": "crashed"} == listed
    shown = jobs.json("jobs", "show", "k")
    assert (1, 3) == (shown["steps_done"], shown["steps_total"])

    resumed = jobs("jobs", "resume", "k", "--json", "--trace", trace)
    assert 0 == resumed.returncode, resumed.stderr
    assert answer_of(golden) == answer_of(resumed)
    assert 1 == len(jobs.posts())
    assert trace.read_text().count("\n") > lines_before  # appended, not truncated
    assert "completed" == jobs.json("jobs", "show", "k")["status"]


def test_a_call_in_doubt_is_parked_then_resolved_from_the_command_line(jobs):
    """Killed inside ``post`` (after its effect), the resumed job parks the call and exits 7
    with the commands to run; ``jobs show`` lists it; ``jobs resolve --output`` gives its
    result and ``jobs resume`` completes without posting again."""
    jobs.killed("p", "during_tool:1")
    assert 1 == len(jobs.posts())

    parked = jobs("jobs", "resume", "p")
    assert 7 == parked.returncode, parked.stderr
    assert "jobs resolve p" in parked.stderr
    shown = jobs.json("jobs", "show", "p")
    assert "needs_attention" == shown["status"]
    ((call),) = shown["parked"]
    assert ("poster", "post", "non_idempotent", "started") == (
        call["agent"],
        call["name"],
        call["side_effect"],
        call["status"],
    )
    text = jobs("jobs", "show", "p").stdout
    assert f"poster/{call['turn']}/{call['call_id']}" in text

    refused = jobs("jobs", "resume", "p")
    assert 2 == refused.returncode
    assert "error[job.not_resumable]" in refused.stderr

    resolved = jobs("jobs", "resolve", "p", call["call_id"], "--output", "posted from Porto")
    assert 0 == resolved.returncode, resolved.stderr
    assert "orchestrator jobs resume p" in resolved.stdout
    done = jobs("jobs", "resume", "p", "--json")
    assert 0 == done.returncode, done.stderr
    assert "completed" == json.loads(done.stdout)["status"]
    assert 1 == len(jobs.posts())


def test_a_job_that_crashes_on_every_start_goes_dead_and_others_still_run(jobs):
    """Killed at its first request on every start, the job is resumed until three crashes in
    a row made no progress: then it is ``dead`` with the reason, and resume says to retry.
    Another job in the same store completes; ``jobs retry`` revives the dead one."""
    crash = {"ORCHESTRATOR_CRASH_AT": "request_sent:1"}
    assert -9 == jobs("run", jobs.plan, "--job-id", "poison", **crash).returncode
    for _ in range(2):
        assert -9 == jobs("jobs", "resume", "poison", **crash).returncode
    dead = jobs("jobs", "resume", "poison", **crash)
    assert 2 == dead.returncode
    assert "error[job.not_resumable]" in dead.stderr
    assert "crashed 3 times in a row without progress" in dead.stderr
    assert "orchestrator jobs retry poison" in dead.stderr
    shown = jobs.json("jobs", "show", "poison")
    assert ("dead", "job.dead") == (shown["status"], shown["code"])

    other = jobs("run", jobs.plan, "--job-id", "healthy")
    assert 0 == other.returncode, other.stderr
    retried = jobs("jobs", "retry", "poison", "--json")
    assert 0 == retried.returncode, retried.stderr
    assert "completed" == json.loads(retried.stdout)["status"]
    assert 2 == len(jobs.posts())  # one per job


def test_cancel_retry_prune_and_their_refusals(jobs):
    """A crashed job is cancelled at once; a cancelled one cannot be cancelled, resumed or
    retried; prune deletes jobs that ended (not a crashed one); unknown jobs are named."""
    assert (
        -9
        == jobs(
            "run", jobs.plan, "--job-id", "c", ORCHESTRATOR_CRASH_AT="request_sent:2"
        ).returncode
    )
    cancelled = jobs("jobs", "cancel", "c")
    assert (0, "job c cancelled\n") == (cancelled.returncode, cancelled.stdout)
    again = jobs("jobs", "cancel", "c")
    assert (2, "error[job.not_resumable]: job c is already cancelled\n") == (
        again.returncode,
        again.stderr,
    )
    assert 2 == jobs("jobs", "resume", "c").returncode
    assert 2 == jobs("jobs", "retry", "c").returncode

    missing = jobs("jobs", "show", "nope")
    assert 2 == missing.returncode
    assert "error[job.not_found]: no job 'nope' in this store\n" == missing.stderr

    assert 0 == jobs("run", jobs.plan, "--job-id", "fine").returncode
    jobs.killed("crashed", "request_sent:1")
    kept = jobs.json("jobs", "prune", "--older-than", "1h")
    assert [] == kept["removed"]
    pruned = jobs.json("jobs", "prune", "--older-than", "0s")
    assert ["c", "fine"] == sorted(pruned["removed"])
    assert ["crashed"] == [job["id"] for job in jobs.json("jobs", "list")]
    bad = jobs("jobs", "prune", "--older-than", "soon")
    assert 2 == bad.returncode
    assert "error[config.value]" in bad.stderr


def test_no_journal_runs_leave_no_job(jobs):
    """``--no-journal`` runs as before: no job line, no store file."""
    done = jobs("run", jobs.plan, "--no-journal")
    assert 0 == done.returncode, done.stderr
    assert not any(line.startswith("job ") for line in done.stderr.splitlines())
    assert not jobs.store.exists()


def test_a_plan_changed_under_a_job_is_refused_with_what_changed(jobs, tmp_path):
    """``jobs resume --plan`` with a started step changed exits 2 naming it; a budget change
    needs ``--allow-budget-change``."""
    assert (
        -9
        == jobs(
            "run", jobs.plan, "--job-id", "d", ORCHESTRATOR_CRASH_AT="step_boundary:1"
        ).returncode
    )
    changed = dict(PLAN, steps=[dict(PLAN["steps"][0], task="Look Faro up."), *PLAN["steps"][1:]])
    other = tmp_path / "changed.json"
    other.write_text(json.dumps(changed))
    refused = jobs("jobs", "resume", "d", "--plan", other)
    assert 2 == refused.returncode
    assert "error[job.plan_diverged]" in refused.stderr
    assert "step 'see' (started) changed" in refused.stderr
    budget = tmp_path / "budget.json"
    budget.write_text(json.dumps(dict(PLAN, budgets={"max_turns": 50})))
    assert 2 == jobs("jobs", "resume", "d", "--plan", budget).returncode
    accepted = jobs("jobs", "resume", "d", "--plan", budget, "--allow-budget-change")
    assert 0 == accepted.returncode, accepted.stderr
