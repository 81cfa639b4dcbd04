"""Resume decisions as tables: who may claim a job, what a plan change means, what to do
with a call in doubt, and how a journal becomes agents again. No I/O."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from actors.journal import AgentMemory, CallEntry, TurnEntry, idempotency_key, in_doubt_action
from orchestrator.core.protocol.codec import encode
from orchestrator.core.protocol.events import FunctionCallItem, MessageItem, ReasoningItem
from orchestrator.errors import JobNotResumable, JobRunning
from orchestrator.jobs.model import (
    AgentPrint,
    JobJournal,
    JobRecord,
    Owner,
    ReplyRecord,
    TurnRecord,
)
from orchestrator.jobs.resume import (
    ClaimDecision,
    decide_claim,
    parked_calls,
    plan_changes,
    rebuild,
)
from plans import PlanBuilder

NOW = 1_000_000.0
OWNER = Owner(host="h", pid=7, started=1.0)


def job(**fields: Any) -> JobRecord:
    base: dict[str, Any] = {
        "id": "j",
        "name": "p",
        "status": "running",
        "queue": "default",
        "goal": None,
        "mode": "steps",
        "plan": "{}",
        "plan_hash": "",
        "plan_dir": None,
        "agents": {},
        "options": {},
        "created_at": NOW - 100,
        "updated_at": NOW - 10,
        "owner": OWNER,
        "lease_expires": NOW + 20,
        "progress": 5,
        "progress_at_claim": 2,
    }
    base.update(fields)
    return JobRecord(**base)


# -- decide_claim -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "alive", "expected"),
    [
        # A live owner on this host: refused, whatever its lease says.
        ({}, True, JobRunning),
        ({"lease_expires": NOW - 1}, True, JobRunning),
        # Another host (liveness unknown): the lease decides.
        ({}, None, JobRunning),
        ({"lease_expires": NOW - 1}, None, ClaimDecision("running", 1)),
        # Its owner died: a crash. Progress since the last claim resets the count...
        ({}, False, ClaimDecision("running", 1)),
        ({"recoveries": 2}, False, ClaimDecision("running", 1)),
        # ...none makes it grow, and the limit (3) makes the job dead.
        ({"progress_at_claim": 5, "recoveries": 1}, False, ClaimDecision("running", 2)),
        ({"progress_at_claim": 5, "recoveries": 2}, False, "dead"),
        # Stopped cleanly: resumable, the count starts again.
        (
            {"status": "interrupted", "owner": None, "recoveries": 2},
            None,
            ClaimDecision("running", 0),
        ),
        ({"status": "budget_exceeded", "owner": None}, None, ClaimDecision("running", 0)),
        # Over, or waiting for a person.
        ({"status": "completed", "owner": None}, None, JobNotResumable),
        ({"status": "failed", "owner": None}, None, JobNotResumable),
        ({"status": "dead", "owner": None}, None, JobNotResumable),
        ({"status": "cancelled", "owner": None}, None, JobNotResumable),
        ({"status": "needs_attention", "owner": None}, None, JobNotResumable),
    ],
)
def test_who_may_claim_a_job(fields, alive, expected):
    """A job whose owner is alive (or, on another host, whose lease has not expired) is
    refused with JobRunning; a crashed job is claimed with its recovery count reset by
    progress or grown without it, and dead at the third crash in a row; a clean stop claims
    with a fresh count; a job that ended or waits for a person is not resumable."""
    record = job(**fields)
    if isinstance(expected, type):
        with pytest.raises(expected):
            decide_claim(record, NOW, owner_alive=alive)
        return
    decision = decide_claim(record, NOW, owner_alive=alive)
    if expected == "dead":
        assert decision.dead
        assert 3 == decision.recoveries
        assert "3 times in a row" in (decision.reason or "")
    else:
        assert expected == decision


@pytest.mark.parametrize(
    ("status", "alive", "allowed"),
    [
        ("failed", None, True),
        ("dead", None, True),
        ("interrupted", None, True),
        ("running", False, True),
        ("running", True, False),
        ("completed", None, False),
        ("partial", None, False),
        ("cancelled", None, False),
    ],
)
def test_retry_revives_failed_and_dead_jobs_with_a_fresh_count(status, alive, allowed):
    """retry claims a failed, dead, interrupted or crashed job with a recovery count of 0, and
    still refuses one that is running or that ended well."""
    record = job(status=status, recoveries=3, owner=OWNER if status == "running" else None)
    if allowed:
        assert ClaimDecision("running", 0) == decide_claim(
            record, NOW, owner_alive=alive, retry=True
        )
    else:
        with pytest.raises((JobNotResumable, JobRunning)):
            decide_claim(record, NOW, owner_alive=alive, retry=True)


def test_a_refusal_says_what_to_do_next():
    """Each refusal names the next step: jobs retry for a dead job, jobs resolve for one that
    needs attention, and the live owner (host:pid) of a running one."""
    with pytest.raises(JobNotResumable, match="orchestrator jobs retry j"):
        decide_claim(job(status="dead", owner=None), NOW, owner_alive=None)
    with pytest.raises(JobNotResumable, match="jobs resolve"):
        decide_claim(job(status="needs_attention", owner=None), NOW, owner_alive=None)
    with pytest.raises(JobRunning, match="h:7"):
        decide_claim(job(), NOW, owner_alive=True)


# -- plan_changes ---------------------------------------------------------------------------------


async def lookup(city: str) -> str:
    """Look a city up.

    Args:
        city: the city.
    """
    return city


def plan(*, task: str = "{{goal}}", max_turns: int = 10, extra_step: bool = False) -> Any:
    builder = PlanBuilder("p", goal="g", model="m")
    builder.budgets(max_turns=max_turns)
    builder.worker("w", tools=[lookup])
    builder.step("a", agent="w", task=task)
    if extra_step:
        builder.step("b", agent="w", task="more", depends_on=["a"])
    return builder.build()


PRINT = AgentPrint(role="worker", model="m", instructions="i", store=False, tools={"lookup": "r:1"})


@pytest.mark.parametrize(
    ("new_print", "new_plan", "started", "blocking", "budgets"),
    [
        (PRINT, plan(), {"a"}, (), ()),
        (PRINT, plan(max_turns=99), {"a"}, (), ("budgets changed",)),
        (PRINT, plan(task="other"), {"a"}, ("step 'a' (started) changed",), ()),
        # A step that never started may change; a new step may be added.
        (PRINT, plan(task="other"), set(), (), ()),
        (PRINT, plan(extra_step=True), {"a"}, (), ()),
        (
            msgspec.structs.replace(PRINT, model="m2"),
            plan(),
            set(),
            ("agent 'w': model changed",),
            (),
        ),
        (
            msgspec.structs.replace(PRINT, tools={"lookup": "r:2"}),
            plan(),
            set(),
            ("agent 'w': tool 'lookup' changed (schema or side effect)",),
            (),
        ),
        (
            msgspec.structs.replace(PRINT, tools={}),
            plan(),
            set(),
            ("agent 'w': tool 'lookup' was removed",),
            (),
        ),
    ],
)
def test_what_a_plan_change_means_for_a_resume(new_print, new_plan, started, blocking, budgets):
    """Comparing the journaled plan with the one given to resume: a changed budget needs the
    flag, a started step changed or an agent's model or tools changed block the resume, and a
    step that never started may change or be added."""
    changes = plan_changes(plan(), new_plan, {"w": PRINT}, {"w": new_print}, started)
    assert blocking == changes.blocking
    assert budgets == changes.budgets


def test_agents_added_or_removed_block_a_resume():
    """An agent that disappeared from the plan or appeared in it blocks the resume, named in
    the change list."""
    changes = plan_changes(plan(), plan(), {"w": PRINT}, {"x": PRINT}, set())
    assert ("agent 'w' was removed", "agent 'x' was added") == changes.blocking


# -- calls in doubt ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side_effect", "action"),
    [
        ("read_only", "rerun"),
        ("idempotent_write", "rerun"),
        ("runtime", "rerun"),
        ("non_idempotent", "park"),
        ("destructive", "park"),
        ("external", "park"),
    ],
)
def test_what_happens_to_a_call_in_doubt(side_effect, action):
    """A call found started without a result runs again when its tool is read_only,
    idempotent_write or the runtime's own, and is parked for a person otherwise."""
    assert action == in_doubt_action(side_effect)


def test_idempotency_keys_name_job_agent_turn_and_call():
    """The same call id in another turn (a seeded server mints ids again) is another key."""
    assert "j/a/3/call_1" == idempotency_key("j", "a", 3, "call_1")
    assert idempotency_key("j", "a", 3, "call_1") != idempotency_key("j", "a", 4, "call_1")


def call(turn: int, call_id: str, status: str, side_effect: str, **fields: Any) -> CallEntry:
    return CallEntry(
        agent="w",
        turn=turn,
        call_id=call_id,
        name="t",
        arguments="{}",
        status=status,  # type: ignore[arg-type]
        side_effect=side_effect,
        **fields,
    )


def journal(turns: list[TurnRecord], calls: list[CallEntry], replies: list[ReplyRecord]) -> Any:
    return JobJournal(
        job=job(),
        turns=turns,
        calls=calls,
        replies=replies,
        messages=[],
        steps=[],
        events=[],
    )


def record(seq: int, message: str, *, reply: str | None = None, calls: int = 0) -> TurnRecord:
    output: list[Any] = [ReasoningItem(id=f"rs{seq}", encrypted_content=f"enc{seq}")]
    output += [
        FunctionCallItem(call_id=f"c{seq}_{n}", name="t", arguments="{}") for n in range(calls)
    ]
    if reply is not None:
        output.append(MessageItem(role="assistant", content=reply))
    return TurnRecord(
        agent="w",
        seq=seq,
        message=message,
        new_items=encode([MessageItem.user(f"u{seq}")]),
        output=encode(output),
        response_id=f"r{seq}",
        input_tokens=100,
        output_tokens=10,
        reply=reply,
        created_at=0.0,
    )


def test_only_started_calls_of_the_latest_turn_that_may_not_rerun_are_parked():
    """Only calls of the latest turn that started, have no result and may not run again are
    parked: not an earlier turn's, not a done or pending one, not an idempotent one."""
    calls = [
        call(1, "old", "started", "non_idempotent"),  # an earlier turn: answered since
        call(2, "done", "done", "non_idempotent", output="x"),
        call(2, "pending", "pending", "non_idempotent"),  # never started: safe to run
        call(2, "idem", "started", "idempotent_write"),  # re-runs with the same key
        call(2, "doubt", "started", "non_idempotent"),
        call(2, "ext", "started", "external"),
    ]
    parked = parked_calls(journal([record(1, "m", calls=1), record(2, "m", calls=5)], calls, []))
    assert ["doubt", "ext"] == [c.call_id for c in parked]


def test_a_journal_rebuilds_transcript_usage_replies_and_the_open_turn():
    """From the journal: the transcript in order with encrypted reasoning intact, the turn
    count, last response id and token usage, the replies, and the latest turn's calls with
    their state (the idempotent one in doubt, not parked)."""
    turns = [record(1, "m1", reply="first"), record(2, "m2", calls=2)]
    calls = [
        call(2, "c2_0", "done", "read_only", output="out", attempt=1),
        call(2, "c2_1", "started", "idempotent_write", attempt=1),
    ]
    state = rebuild(journal(turns, calls, [ReplyRecord(agent="w", message="goal", text="fin")]))[
        "w"
    ]
    assert 2 == state.turns
    assert "r2" == state.last_response_id
    assert (200, 20) == (state.input_tokens, state.output_tokens)
    kinds = [type(item).__name__ for item in state.transcript]
    assert [
        "MessageItem",
        "ReasoningItem",
        "MessageItem",
        "MessageItem",
        "ReasoningItem",
        "FunctionCallItem",
        "FunctionCallItem",
    ] == kinds
    assert "enc2" == state.transcript[4].encrypted_content  # type: ignore[union-attr]
    memory = AgentMemory.from_journal(
        "w", "j", state.turn_entries, state.calls, state.replies, sink=None
    )
    assert {"m1": "first", "goal": "fin"} == memory.replies
    assert memory.continues("m2")
    assert not memory.continues("m1")
    assert [("c2_0", "done", "out"), ("c2_1", "started", None)] == [
        (c.call_id, c.status, c.output) for c in memory.open_calls
    ]
    assert [] == memory.parked()  # idempotent: it re-runs
    assert ["c2_1"] == [c.call_id for c in memory.in_doubt()]


async def test_memory_writes_a_started_mark_durably_only_for_tools_that_are_not_read_only():
    """``start_call`` counts attempts and returns the stable key; the sink sees the mark
    (awaited) for a writing tool, not for a read-only one."""
    marks: list[tuple[str, int]] = []

    class Sink:
        def turn(self, entry: TurnEntry) -> None:
            pass

        async def call_started(self, entry: CallEntry) -> None:
            marks.append((entry.call_id, entry.attempt))

        def call_finished(self, entry: CallEntry) -> None:
            pass

        def replied(self, agent: str, message: str, text: str) -> None:
            pass

        def message_sent(self, message: Any) -> None:
            pass

    memory = AgentMemory("w", "job", Sink())
    memory.turn_completed(
        seq=4,
        message="m",
        new_items=[],
        output=[],
        response_id="r",
        input_tokens=0,
        output_tokens=0,
        calls=[
            FunctionCallItem(call_id="a", name="read", arguments="{}"),
            FunctionCallItem(call_id="b", name="write", arguments="{}"),
        ],
        side_effects={"read": "read_only", "write": "idempotent_write"},
        reply=None,
    )
    assert ("job/w/4/a", 1) == await memory.start_call("a", "read_only")
    assert ("job/w/4/b", 1) == await memory.start_call("b", "idempotent_write")
    assert ("job/w/4/b", 2) == await memory.start_call("b", "idempotent_write")
    assert [("b", 1), ("b", 2)] == marks
