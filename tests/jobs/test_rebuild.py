"""What a resume rebuilds from a journal, for the bugs the crash-point campaign found."""

from __future__ import annotations

from actors.journal import CallEntry
from orchestrator.jobs.model import JobJournal, JobRecord, TurnRecord
from orchestrator.jobs.resume import rebuild
from orchestrator.protocol.codec import encode
from orchestrator.protocol.events import FunctionCallItem, MessageItem


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
