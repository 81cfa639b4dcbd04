"""What a run tells its observers and its result, for the live view, the trace and the report:
run, step, task and delegation events, tool arguments and outputs, turn texts, where the time
went, how every step of an interrupted run ended, and the plan's mistakes named as such (a tool
the runtime cannot describe, a model the service does not have).

Runs go over in-memory streams under the ``autojump_clock``: latencies are virtual, so the
durations asserted are exact.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
import trio

from orchestrator.core.observe import (
    ActorRestarted,
    DelegationFinished,
    DelegationStarted,
    RunAgent,
    RunFinished,
    RunStarted,
    RuntimeEvent,
    StepFinished,
    StepStarted,
    TaskStarted,
    ToolFinished,
    ToolStarted,
    TurnFinished,
    TurnStarted,
)
from orchestrator.core.protocol.events import FunctionCallOutputItem
from orchestrator.core.server import LatencyModel
from orchestrator.errors import PlanError
from orchestrator.runner import EmbeddedServer, RunResult, run
from plans import Budget, PlanBuilder
from tests.helpers import Recorder

if TYPE_CHECKING:
    from collections.abc import Mapping

    from plans import Plan

GOAL = "What is the weather in Lisbon?"


async def lookup(city: str) -> str:
    """Look a city's weather up.

    Args:
        city: the city.
    """
    await trio.sleep(0.5)
    return f"{city}: sunny, 21 C"


def untyped(city):  # the mistake under test: no type hint
    """Look a city up, but say nothing of what a city is."""
    return city


async def run_memory(
    plan: Plan | str,
    goal: str | None = None,
    *,
    server: Mapping[str, Any] | None = None,
    **options: Any,
) -> RunResult:
    with trio.fail_after(3600):
        # No journal: its writer thread and the autojump clock do not mix (tests/jobs).
        embedded = EmbeddedServer(config=server or {}, transport="memory")
        return await run(plan, goal, embedded=embedded, store=None, **options)


def team_plan() -> Plan:
    return (
        PlanBuilder("team", goal=GOAL, model="gpt-5-mini")
        .budgets(max_turns=40, max_tokens=100_000, wall_clock=600)
        .planner("planner", instructions="Delegate to every worker at once, then finish.")
        .worker("north", description="Weather now.", tools=[lookup], limits=Budget(max_turns=4))
        .worker("south", description="Weather too.", tools=[lookup])
        .build()
    )


def chain_plan(length: int) -> Plan:
    """Steps one after another on one echo agent: step N quotes step N-1's result."""
    builder = PlanBuilder("chain", goal="go", model="local-echo").worker("echo")
    builder.step("s1", agent="echo", task="Step 1 of {{goal}}")
    for index in range(2, length + 1):
        builder.step(
            f"s{index}",
            agent="echo",
            task=f"Step {index} after {{{{steps.s{index - 1}.result}}}}",
            depends_on=[f"s{index - 1}"],
        )
    return builder.build()


async def test_a_delegate_run_reports_its_start_delegations_tools_turns_and_end(autojump_clock):
    """``run.started`` comes first with the agents, their limits and the run's budgets; each
    delegation is started and finished (with its duration), the worker's ``task.started``
    says who asked; tool calls carry their arguments and outputs, turns their text; and
    ``run.finished`` comes last with the result's figures."""
    recorder = Recorder()
    result = await run_memory(
        team_plan(),
        events=recorder,
        server={"latency": LatencyModel(time_to_first_token=1.0)},
    )
    events = recorder.events

    assert "completed" == result.status
    started, finished = events[0], events[-1]
    assert isinstance(started, RunStarted)
    assert ("team", "delegate", "embedded", GOAL, 0) == (
        started.plan,
        started.mode,
        started.endpoint,
        started.goal,
        started.steps,
    )
    assert (40, 100_000, 600) == (started.max_turns, started.max_tokens, started.wall_clock)
    assert (
        RunAgent(name="planner", role="planner", model="gpt-5-mini"),
        RunAgent(name="north", role="worker", model="gpt-5-mini", max_turns=4),
        RunAgent(name="south", role="worker", model="gpt-5-mini"),
    ) == started.agents
    assert isinstance(finished, RunFinished)
    assert ("completed", None, result.duration, result.usage.turns) == (
        finished.status,
        finished.code,
        finished.duration,
        finished.turns,
    )

    delegations = recorder.of(DelegationStarted)
    assert ["north", "south"] == sorted(event.worker for event in delegations)
    assert {"planner"} == {event.agent for event in delegations}
    assert all(event.task for event in delegations)
    tasks = [event for event in recorder.of(TaskStarted) if event.agent != "planner"]
    assert {("north", "planner"), ("south", "planner")} == {(t.agent, t.sender) for t in tasks}
    assert {d.task for d in delegations} == {t.task for t in tasks}
    back = recorder.of(DelegationFinished)
    assert {d.call_id for d in delegations} == {b.call_id for b in back}
    # A worker's task: a turn (1 s), its tool (0.5 s), a turn (1 s).
    assert [(True, 2.5)] * 2 == [(b.ok, b.duration) for b in back]

    calls = recorder.of(ToolStarted)
    assert 2 == len(calls)
    assert all(json.loads(call.arguments)["city"] for call in calls)
    outputs = {event.call_id: event.output for event in recorder.of(ToolFinished)}
    for call in calls:
        assert f"{json.loads(call.arguments)['city']}: sunny, 21 C" == outputs[call.call_id]
    # A worker's last turn's text is its reply: what the planner got back for its call.
    planner_items = result.agent("planner").transcript
    replies = [item.output for item in planner_items if isinstance(item, FunctionCallOutputItem)]
    for worker in ("north", "south"):
        last = [t for t in recorder.of(TurnFinished) if t.agent == worker][-1]
        assert (0, True) == (last.function_calls, bool(last.text))
        assert last.text in replies


async def test_a_steps_run_reports_each_step_queued_taken_up_and_finished(autojump_clock):
    """Each step is ``step.started`` when sent to its agent, ``task.started`` (with the step)
    when the agent takes it up, and ``step.finished`` with its status and duration; the step
    queued behind another on the same agent waits its turn."""
    recorder = Recorder()
    result = await run_memory(
        chain_plan(3),
        events=recorder,
        server={"latency": LatencyModel(time_to_first_token=2.0)},
    )

    assert "completed" == result.status
    started = recorder.events[0]
    assert isinstance(started, RunStarted)
    assert ("steps", 3) == (started.mode, started.steps)
    assert ["s1", "s2", "s3"] == [event.step for event in recorder.of(StepStarted)]
    assert ["s1", "s2", "s3"] == [event.step for event in recorder.of(TaskStarted)]
    assert [("s1", "completed", 2.0), ("s2", "completed", 2.0), ("s3", "completed", 2.0)] == [
        (event.step, event.status, event.duration) for event in recorder.of(StepFinished)
    ]
    assert [2.0, 2.0, 2.0] == [step.duration for step in result.steps]


async def test_an_interrupted_run_says_which_steps_completed_were_cut_or_never_started(
    autojump_clock,
):
    """Stopped during its third step, a chain of six reports 2 completed, 1 cut short (with
    how long it ran) and 3 never started: every scheduled step is accounted for."""
    stop = trio.Event()
    recorder = Recorder()

    def watch(event: RuntimeEvent) -> None:
        recorder(event)
        if isinstance(event, TurnStarted) and len(recorder.of(TurnStarted)) == 3:
            stop.set()

    result = await run_memory(
        chain_plan(6),
        events=watch,
        server={"latency": LatencyModel(time_to_first_token=1.0)},
        stop=stop,
    )

    assert "interrupted" == result.status
    assert [
        ("s1", "completed"),
        ("s2", "completed"),
        ("s3", "cut"),
        ("s4", "not_started"),
        ("s5", "not_started"),
        ("s6", "not_started"),
    ] == [(step.id, step.status) for step in result.steps]
    cut = result.steps[2]
    assert "the run ended while it ran" == cut.error
    assert 0.0 == cut.duration  # stopped as its first turn started
    assert ("s3", "cut") == (
        recorder.of(StepFinished)[-1].step,
        recorder.of(StepFinished)[-1].status,
    )


async def test_agents_report_where_their_time_went(autojump_clock):
    """``busy`` is the time an agent spent on its tasks, ``model_time`` the part of it in
    model turns: for a worker, its two turns (1 s each) and its tool (0.5 s)."""
    result = await run_memory(
        team_plan(), server={"latency": LatencyModel(time_to_first_token=1.0)}
    )

    north = result.agent("north")
    assert (2.5, 2.0) == (north.busy, north.model_time)
    planner = result.agent("planner")
    assert 2.0 == planner.model_time
    assert planner.busy == result.duration  # the planner's one task is the whole run


async def test_a_model_the_service_does_not_have_ends_the_run_as_model_not_found(
    autojump_clock,
):
    """The server's ``model_not_found`` is the plan's mistake, not a crash: the run fails at
    once with ``model.not_found`` naming the agent and the model (with the likely meant one),
    and nothing is restarted or retried."""
    script = {
        "on_exhausted": "repeat_last",
        "turns": [{"error": {"code": "model_not_found", "status": 404}}],
    }
    plan = PlanBuilder("typo", goal=GOAL, model="gpt-5-mimi").planner("boss").worker("w").build()
    recorder = Recorder()
    result = await run_memory(plan, events=recorder, server={"model": "scripted", "script": script})

    assert ("failed", "model.not_found") == (result.status, result.code)
    assert (
        "agent 'boss' uses model 'gpt-5-mimi', which the service does not have or this key may "
        "not use (did you mean 'gpt-5-mini'?); change the agent's model (or settings.model) in "
        "the plan"
    ) == result.reason
    assert [] == recorder.of(ActorRestarted)
    assert 1 == len(recorder.of(TurnStarted))
    assert 0 == result.agent("boss").restarts


@pytest.mark.parametrize("given", ["plan", "file"])
async def test_a_tool_without_type_hints_is_a_plan_error_before_anything_starts(tmp_path, given):
    """``run()`` builds every tool before it starts: a parameter without a type hint raises
    one ``PlanError`` (not an exception group from inside the run) naming the tool, the
    parameter and what to write instead."""
    builder = PlanBuilder("untyped", goal=GOAL, model="gpt-5-mini").planner("boss")
    plan = builder.worker("w", tools=["tests.test_run_events:untyped"]).build()
    target: Plan | str = plan
    if given == "file":
        path = tmp_path / "untyped.json"
        path.write_text(json.dumps(msgspec.to_builtins(plan)))
        target = str(path)
    recorder = Recorder()
    with pytest.raises(PlanError) as caught:
        await run_memory(target, events=recorder)

    message = str(caught.value)
    assert "error[plan.tool]" in message
    assert "'tests.test_run_events:untyped': tool 'untyped': parameter 'city' has no type hint" in (
        message
    )
    assert "annotate it, e.g. `city: str`" in message
    assert [] == recorder.events  # nothing started


def two_independent_steps() -> Plan:
    """Two steps ready at once on one agent: the second waits in the agent's mailbox."""
    return (
        PlanBuilder("pair", goal="go", model="local-echo")
        .worker("echo")
        .step("first", agent="echo", task="First {{goal}}")
        .step("second", agent="echo", task="Second {{goal}}")
        .build()
    )


async def test_a_step_waiting_for_its_busy_agent_counts_its_wait_apart(autojump_clock):
    """A step's ``duration`` is the time its agent worked on it; the time it spent queued
    behind another step on the same agent is ``waited``."""
    result = await run_memory(
        two_independent_steps(), server={"latency": LatencyModel(time_to_first_token=3.0)}
    )

    # Both are sent at once; whichever the agent takes first, the other waits for it.
    assert [(3.0, 0.0), (3.0, 3.0)] == sorted((step.duration, step.waited) for step in result.steps)


async def test_a_step_still_queued_when_the_run_stops_never_started(autojump_clock):
    """Stopped during the step its agent took up, the other one, sent but still queued
    behind it, is ``not_started``, not ``cut``."""
    stop = trio.Event()
    recorder = Recorder()

    def watch(event: RuntimeEvent) -> None:
        recorder(event)
        if isinstance(event, TurnStarted):
            stop.set()

    result = await run_memory(
        two_independent_steps(),
        events=watch,
        server={"latency": LatencyModel(time_to_first_token=3.0)},
        stop=stop,
    )

    statuses = {step.id: step.status for step in result.steps}
    assert ["cut", "not_started"] == sorted(statuses.values())
    assert statuses == {event.step: event.status for event in recorder.of(StepFinished)}
    taken = next(event.step for event in recorder.of(TaskStarted))
    assert "cut" == statuses[taken]  # the one its agent took up
