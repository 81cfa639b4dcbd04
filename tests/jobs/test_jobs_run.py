"""Durable jobs through ``orchestrator.run``: resume, budgets, divergence, parked calls,
store failures, cancellation, exactly-once tools across in-process restarts.

Runs go over in-memory streams on the real clock (the journal's writer thread and the
autojump clock do not mix). The tools record what they did in ``LEDGER`` (a list standing
for the outside world) keyed by their idempotency key, so "applied twice" is visible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import msgspec
import pytest
import trio

from actors.tools import ToolContext, tool
from actors.worker import WorkerActor
from orchestrator.core.observe import ToolFinished, ToolStarted, TurnStarted
from orchestrator.core.protocol.events import FunctionCallOutputItem, ReasoningConfig, ReasoningItem
from orchestrator.core.server import Fault
from orchestrator.core.session import ModelSettings
from orchestrator.errors import JobNotResumable, PlanDiverged
from orchestrator.jobs import open_jobs
from orchestrator.jobs.store import open_store
from orchestrator.runner import EmbeddedServer, RunResult, RunSettings, run
from plans import Plan, PlanBuilder

if TYPE_CHECKING:
    from collections.abc import Mapping


@attrs.define
class World:
    """What the tools did: one entry per application of an effect."""

    applied: list[tuple[str, str, int]] = attrs.Factory(list)  # (tool, key, attempt)
    invoked: list[tuple[str, str, int]] = attrs.Factory(list)  # every call, applied or not
    keys: set[str] = attrs.Factory(set)
    # Set by a test: the tool that stops the run, and how.
    stop: trio.Event | None = None
    stop_in: str | None = None

    def apply(self, name: str, context: ToolContext, *, dedupe: bool = False) -> bool:
        self.invoked.append((name, context.idempotency_key, context.attempt))
        if dedupe and context.idempotency_key in self.keys:
            return False
        self.keys.add(context.idempotency_key)
        self.applied.append((name, context.idempotency_key, context.attempt))
        return True

    async def maybe_stop(self, name: str) -> None:
        if self.stop is not None and self.stop_in == name:
            self.stop_in = None
            self.stop.set()
            await trio.sleep_forever()  # the stop cancels the run while this call is in doubt


WORLD = World()


@pytest.fixture(autouse=True)
def world() -> World:
    WORLD.applied.clear()
    WORLD.invoked.clear()
    WORLD.keys.clear()
    WORLD.stop = None
    WORLD.stop_in = None
    return WORLD


async def lookup(city: str) -> str:
    """Look a city up (read only).

    Args:
        city: the city.
    """
    await WORLD.maybe_stop("lookup")
    return f"{city}: sunny"


@tool(side_effect="idempotent_write")
async def save(city: str, context: ToolContext) -> str:
    """Save a city (idempotent: the same key saves once).

    Args:
        city: the city.
    """
    fresh = WORLD.apply("save", context, dedupe=True)
    await WORLD.maybe_stop("save")
    return f"saved {city}" + ("" if fresh else " (already)")


@tool(side_effect="non_idempotent")
async def send(city: str, context: ToolContext) -> str:
    """Send a postcard from a city (every call sends one).

    Args:
        city: the city.
    """
    WORLD.apply("send", context)
    await WORLD.maybe_stop("send")
    return f"sent from {city}"


def chain(*, max_turns: int | None = None, task: str = "Visit Lisbon.") -> Plan:
    """Four steps in a row, each its agent's tool call then its answer (generic model)."""
    builder = PlanBuilder("chain", goal="Tour Lisbon, Porto, Faro and Braga.", model="gpt-5-mini")
    if max_turns is not None:
        builder.budgets(max_turns=max_turns)
    builder.worker("looker", tools=[lookup])
    builder.worker("saver", tools=[save])
    builder.worker("sender", tools=[send])
    builder.step("a", agent="looker", task=task)
    builder.step("b", agent="saver", task="Save Porto after {{steps.a.result}}", depends_on=["a"])
    builder.step(
        "c", agent="sender", task="Send from Faro after {{steps.b.result}}", depends_on=["b"]
    )
    builder.step(
        "d", agent="looker", task="Look Braga up after {{steps.c.result}}", depends_on=["c"]
    )
    return builder.build()


async def run_job(
    plan: Plan | None, store: Any, *, server: Mapping[str, Any] | None = None, **options: Any
) -> RunResult:
    with trio.fail_after(30):
        embedded = EmbeddedServer(config=server or {}, transport="memory")
        return await run(plan, store=store, embedded=embedded, **options)


async def golden(store: Any) -> RunResult:
    result = await run_job(chain(), store)
    assert "completed" == result.status
    WORLD.applied.clear()
    WORLD.invoked.clear()
    WORLD.keys.clear()
    return result


# -- resume ------------------------------------------------------------------------------------


async def test_a_stopped_job_resumes_to_the_answer_of_an_uninterrupted_run(tmp_path, world):
    """Stopped inside step c's non-idempotent tool, the job is ``interrupted`` and that call
    is in doubt: the resume parks it (``needs_attention``) and runs nothing. Once an operator
    gave its output, the resume finishes with the fault-free answer: steps a and b do not
    run again, no journaled turn is sent again, the usage counts both runs once."""
    store = tmp_path / "jobs.db"
    reference = await golden(store)
    world.stop, world.stop_in = trio.Event(), "send"
    first = await run_job(chain(), store, stop=world.stop, job_id="tour")
    assert ("interrupted", "tour") == (first.status, first.job)
    steps_before = {s.id: s.status for s in first.steps}
    assert "completed" == steps_before["a"]
    assert "completed" == steps_before["b"]

    # The send call was started (its durable mark) and never finished: in doubt, parked.
    parked = await run_job(None, store, resume="tour")
    assert "needs_attention" == parked.status
    assert [("sender", "send")] == [(c.agent, c.tool) for c in parked.parked]
    # The operator knows what the call did: it ran, and returned what send returns.
    city = msgspec.json.decode(parked.parked[0].arguments)["city"]
    async with open_jobs(store) as jobs:
        call, status = await jobs.resolve(
            "tour", parked.parked[0].call_id, action="output", text=f"sent from {city}"
        )
        assert ("done", "interrupted") == (call.status, status)

    turns: list[tuple[str, int]] = []
    resumed = await run_job(
        None,
        store,
        resume="tour",
        events=lambda e: turns.append((e.agent, e.turn)) if isinstance(e, TurnStarted) else None,
    )
    assert "completed" == resumed.status
    assert resumed.resumed
    assert reference.answer == resumed.answer
    assert [(s.id, s.result) for s in reference.steps] == [(s.id, s.result) for s in resumed.steps]
    # Over both runs, each writing tool ran once (save in step b, send before the stop).
    assert ["save", "send"] == [name for name, _, _ in world.applied]
    # Turns go on from where the journal stopped: no journaled turn is sent again.
    journal_turns = {a.name: a.turns for a in first.agents}
    assert turns
    for agent, number in turns:
        assert number > journal_turns[agent]
    assert reference.usage.turns == resumed.usage.turns


async def test_an_idempotent_call_in_doubt_runs_again_with_the_same_key(tmp_path, world):
    """Stopped inside ``save`` after its effect, the resumed job runs it again with the same
    idempotency key and attempt 2; the world dedupes it; the answer is the usual one."""
    store = tmp_path / "jobs.db"
    reference = await golden(store)
    world.stop, world.stop_in = trio.Event(), "save"
    first = await run_job(chain(), store, stop=world.stop, job_id="idem")
    assert "interrupted" == first.status
    resumed = await run_job(None, store, resume="idem")
    assert "completed" == resumed.status
    assert reference.answer == resumed.answer
    saves = [(key, attempt) for name, key, attempt in world.invoked if name == "save"]
    ((key, _), (again, _)) = saves
    assert [1, 2] == [attempt for _, attempt in saves]
    assert key == again
    assert key.startswith("idem/saver/1/")
    assert [("save", key, 1)] == [entry for entry in world.applied if entry[0] == "save"]


async def test_rerun_resolution_runs_a_parked_call_again_under_its_key(tmp_path, world):
    """An operator who knows the call did not happen asks for a re-run: it runs with the same
    key and attempt 2, and the job completes."""
    store = tmp_path / "jobs.db"
    world.stop, world.stop_in = trio.Event(), "send"
    first = await run_job(chain(), store, stop=world.stop, job_id="rerun")
    assert "interrupted" == first.status
    parked = await run_job(None, store, resume="rerun")
    assert "needs_attention" == parked.status
    with pytest.raises(JobNotResumable, match="resolve"):
        await run_job(None, store, resume="rerun")
    async with open_jobs(store) as jobs:
        await jobs.resolve("rerun", parked.parked[0].call_id, action="rerun")
    resumed = await run_job(None, store, resume="rerun")
    assert "completed" == resumed.status
    sends = [(key, attempt) for name, key, attempt in world.applied if name == "send"]
    assert [1, 2] == [attempt for _, attempt in sends]
    assert 1 == len({key for key, _ in sends})


async def test_budgets_go_on_from_what_the_job_spent(tmp_path, world):
    """A job one turn short of its need, stopped half-way and resumed, still stops at exactly
    its turn budget: the resume counted the turns of the first run."""
    store = tmp_path / "jobs.db"
    reference = await golden(store)
    need = reference.usage.turns
    world.stop, world.stop_in = trio.Event(), "save"
    first = await run_job(chain(max_turns=need - 1), store, stop=world.stop, job_id="budget")
    assert "interrupted" == first.status
    resumed = await run_job(None, store, resume="budget")
    assert ("budget_exceeded", "budget.max_turns") == (resumed.status, resumed.code)
    assert need - 1 == resumed.usage.turns


async def test_a_changed_plan_is_refused_and_a_budget_change_needs_the_flag(tmp_path, world):
    """Resuming with another plan: a started step's task changed is refused naming it; a
    budget change is refused without ``allow_budget_change`` and accepted with it."""
    store = tmp_path / "jobs.db"
    world.stop, world.stop_in = trio.Event(), "save"
    first = await run_job(chain(), store, stop=world.stop, job_id="diverge")
    assert "interrupted" == first.status
    with pytest.raises(PlanDiverged, match="step 'a' \\(started\\) changed"):
        await run_job(chain(task="Visit Coimbra."), store, resume="diverge")
    with pytest.raises(PlanDiverged, match=r"budgets differ.*allow_budget_change"):
        await run_job(chain(max_turns=500), store, resume="diverge")
    resumed = await run_job(
        chain(max_turns=500),
        store,
        resume="diverge",
        settings=RunSettings(allow_budget_change=True),
    )
    assert "completed" == resumed.status


async def test_a_finished_job_cannot_be_resumed(tmp_path, world):
    """Resuming a job that completed is refused with JobNotResumable naming its status;
    nothing runs again."""
    store = tmp_path / "jobs.db"
    await run_job(chain(), store, job_id="done")
    with pytest.raises(JobNotResumable, match="completed"):
        await run_job(None, store, resume="done")


# -- the store failing under a running job ----------------------------------------------------


async def test_a_store_that_refuses_writes_pauses_the_job_before_the_tool(tmp_path, world):
    """The store turns read-only before step c: the started mark of ``send`` cannot be
    journaled, so ``send`` does not run; the run ends ``interrupted`` with
    ``job.storage_unavailable``; once the store works again, the resume sends exactly once."""
    path = tmp_path / "jobs.db"
    async with open_store(path) as store:
        broken = trio.Event()

        async def break_store() -> None:
            await broken.wait()
            await store.command(lambda cursor: cursor.connection.execute("PRAGMA query_only = ON"))

        def watch(event: Any) -> None:
            if isinstance(event, ToolFinished) and event.tool == "save":
                broken.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(break_store)
            paused = await run_job(chain(), store, events=watch, job_id="paused")
            nursery.cancel_scope.cancel()
        assert ("interrupted", "job.storage_unavailable") == (paused.status, paused.code)
        assert "readonly" in (paused.reason or "")
        assert "send" not in [name for name, _, _ in world.applied]
    # A new connection writes again (query_only was that connection's).
    async with open_store(path) as store:
        resumed = await run_job(None, store, resume="paused")
    assert "completed" == resumed.status
    assert 1 == [name for name, _, _ in world.applied].count("send")


# -- cancellation ------------------------------------------------------------------------------


async def test_jobs_cancel_stops_a_running_job(tmp_path, world):
    """``Jobs.cancel`` on a job being driven asks its owner, which stops it at its next
    lease renewal (within a second) and records ``cancelled``."""
    path = tmp_path / "jobs.db"
    entered = trio.Event()

    world.stop = trio.Event()  # never set: used only to hold the run inside the tool
    world.stop_in = "lookup"

    def watch(event: Any) -> None:
        if isinstance(event, ToolStarted):
            entered.set()

    async with open_store(path) as store:
        async with trio.open_nursery() as nursery:

            async def cancel_when_inside() -> None:
                await entered.wait()
                async with open_jobs(path) as jobs:
                    record, live = await jobs.cancel("cancel-me")
                assert live
                assert record.cancel_requested

            nursery.start_soon(cancel_when_inside)
            result = await run_job(chain(), store, events=watch, job_id="cancel-me")
        assert ("cancelled", "job.cancelled") == (result.status, result.code)
        assert "cancelled" == (await store.get("cancel-me")).status


# -- exactly once across in-process restarts ---------------------------------------------------


FAULTS = {
    "policy close 1008": Fault("close", code=1008, response=2),
    "error event": Fault("error", error_code="invalid_request_error", status=400, response=2),
    "failed response": Fault("fail", error_code="invalid_prompt", response=2),
    "malformed frame": Fault("send_raw", payload="{not json", response=2),
    "abort, then reject": Fault("abort", response=2),
}


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-journal"])
@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
async def test_a_turn_failing_for_good_after_a_tool_never_runs_it_again(
    tmp_path, world, fault, journal
):
    """The turn that carries ``send``'s output fails for good (a final close code, an error
    event, a failed response, a malformed frame). The sender crashes, the supervisor
    restarts it, the step is delivered again under the same id, and the agent continues
    from its memory: ``send`` ran once, its output is the one the model gets, the run ends
    completed with the fault-free answer."""
    store = tmp_path / "jobs.db" if journal else None
    plan = PlanBuilder("one", goal="Send from Faro.", model="gpt-5-mini")
    plan.worker("sender", tools=[send])
    plan.step("c", agent="sender", task="Send from Faro.")
    result = await run_job(plan.build(), store, server={"faults": (FAULTS[fault],)})
    assert "completed" == result.status, result.reason
    assert [("send", 1)] == [(name, attempt) for name, _, attempt in world.applied]
    sender = result.agent("sender")
    assert sender.restarts <= 1
    outputs = [i.output for i in sender.transcript if isinstance(i, FunctionCallOutputItem)]
    assert ["sent from Faro"] == outputs


async def test_a_worker_that_keeps_crashing_makes_the_run_partial(tmp_path, world, monkeypatch):
    """A worker crashes on its delegation, is restarted, is asked again, crashes again: the
    planner gets ``worker_failed`` and answers; the run is ``partial`` (not plain
    completed), and the result names the delegation and why."""
    original = WorkerActor.handle_calls

    async def crash(self: WorkerActor, calls: Any) -> Any:
        if self.name == "south":
            raise RuntimeError("south is broken")
        return await original(self, calls)

    monkeypatch.setattr(WorkerActor, "handle_calls", crash)
    plan = (
        PlanBuilder("team", goal="Weather in Lisbon", model="gpt-5-mini")
        .planner("planner", instructions="Delegate to every worker, then finish.")
        .worker("north", description="Weather now.", tools=[lookup])
        .worker("south", description="Also weather.", tools=[lookup])
        .build()
    )
    result = await run_job(plan, tmp_path / "jobs.db")
    assert ("partial", "run.partial") == (result.status, result.code)
    assert result.answer is not None
    ((failure,),) = [result.failures]
    assert ("delegation", "south") == (failure.kind, failure.agent)
    assert "south is broken" in failure.error
    assert 1 == result.agent("south").restarts
    async with open_jobs(tmp_path / "jobs.db") as jobs:
        ((record, status),) = await jobs.list()
        assert "partial" == status
        assert "south" == record.failures[0]["agent"]


# -- reasoning survives the journal ------------------------------------------------------------


async def test_encrypted_reasoning_survives_a_resume(tmp_path, world):
    """With ``store=false`` and reasoning asked for, the service sends reasoning items with
    ``encrypted_content``; the journal keeps them byte for byte and the resumed agent's
    transcript (what it replays) carries the same content."""
    script = {
        "turns": [
            {
                "reasoning": "I should save.",
                "function_calls": [{"name": "save", "arguments": {"city": "Porto"}}],
            },
            {"reasoning": "Done.", "text": "Porto saved."},
        ]
    }
    plan = PlanBuilder("think", goal="Save Porto.", model="local-scripted")
    plan.worker("saver", tools=[save])
    plan.step("s", agent="saver", task="Save Porto.")
    world.stop, world.stop_in = trio.Event(), "save"
    settings = ModelSettings(reasoning=ReasoningConfig(effort="low"))
    options: dict[str, Any] = {
        "server": {"script": script},
        "settings": RunSettings(model=settings),
    }
    store = tmp_path / "jobs.db"
    first = await run_job(plan.build(), store, stop=world.stop, job_id="think", **options)
    assert "interrupted" == first.status
    before = [i for i in first.agent("saver").transcript if isinstance(i, ReasoningItem)]
    assert 1 == len(before)
    assert isinstance(before[0].encrypted_content, str)
    assert before[0].encrypted_content.startswith("gAAAAA")
    resumed = await run_job(None, store, resume="think", **options)
    assert "completed" == resumed.status
    after = [i for i in resumed.agent("saver").transcript if isinstance(i, ReasoningItem)]
    assert before[0] == after[0]
    assert 2 == len(after)
    assert msgspec.json.encode(before[0]) == msgspec.json.encode(after[0])


async def test_a_fresh_context_agent_resumes_with_its_latest_task_only(tmp_path, world):
    """``looker`` runs steps a and d, each a fresh conversation. Stopped inside step d's
    lookup, the resumed looker rebuilds step d's conversation only (not step a's) and
    finishes with the usual answer."""
    store = tmp_path / "jobs.db"
    reference = await golden(store)
    world.stop = trio.Event()

    def arm(event: Any) -> None:
        if isinstance(event, ToolStarted) and event.tool == "send":
            world.stop_in = "lookup"  # the next lookup is step d's

    first = await run_job(chain(), store, stop=world.stop, events=arm, job_id="fresh")
    assert "interrupted" == first.status
    resumed = await run_job(None, store, resume="fresh")
    assert "completed" == resumed.status
    assert reference.answer == resumed.answer
    looker = resumed.agent("looker")
    tasks = [item.text for item in looker.transcript if getattr(item, "role", None) == "user"]
    assert 1 == len(tasks)
    assert tasks[0].startswith("Look Braga up")
