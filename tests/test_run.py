"""``orchestrator.run``: whole runs on the embedded server (docs/architecture.md#how-a-run-is-wired,
docs/architecture.md#delegation-and-steps, docs/architecture.md#observing-a-run;
docs/faults.md#budgets).

Most runs go over in-memory streams (``EmbeddedServer(transport="memory")``) under the
``autojump_clock``, so latency, wall-clock budgets and restart backoff cost no real time, and
what overlaps is decided by virtual time, not by the scheduler. Tools used there are
``async``: a sync tool runs in a worker thread, and an autojumping clock would jump over the
thread to the tool's deadline.
The examples, whose tools are sync, run on the real clock, some over loopback TCP.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
import trio

from actors.agent import AgentActor, CallOutcome
from actors.tools import DEFAULT_REPAIR_BUDGET
from orchestrator.core.observe import (
    ActorRestarted,
    ActorStarted,
    AgentState,
    EventBus,
    MessageRouted,
    RuntimeEvent,
    ToolFinished,
    TurnFinished,
    TurnStarted,
)
from orchestrator.core.protocol.events import FunctionCallItem, FunctionCallOutputItem, MessageItem
from orchestrator.core.server import LatencyModel, open_local_server
from orchestrator.errors import PlanError
from orchestrator.runner import EmbeddedServer, RunResult, RunSettings, run
from plans import Budget, Plan, PlanBuilder, load_plan
from tests.helpers import Recorder

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

EXAMPLES = Path(__file__).resolve().parents[1] / "orchestrator" / "examples"
GOAL = "What is the weather in Lisbon?"
# A script for the scripted model (the plans' model is "local-scripted"): call `lookup`, for ever.
LOOPING = {
    "on_exhausted": "repeat_last",
    "turns": [{"function_calls": [{"name": "lookup", "arguments": {"city": "Lisbon"}}]}],
}


# -- tools the test plans use (async: no worker threads under the autojump clock) --------------


async def lookup(city: str) -> str:
    """Look a city's weather up.

    Args:
        city: the city.
    """
    await trio.lowlevel.checkpoint()
    return f"{city}: sunny, 21 C"


async def forecast(city: str, days: int = 3) -> str:
    """A short forecast for a city.

    Args:
        city: the city.
        days: how many days.
    """
    await trio.lowlevel.checkpoint()
    return f"{city}: {days} days of sun"


# -- helpers -----------------------------------------------------------------------------------


def of(events: Sequence[RuntimeEvent], kind: type[Any], **fields: Any) -> list[Any]:
    """The events of ``kind`` whose attributes equal ``fields``, in order."""
    return [
        event
        for event in events
        if isinstance(event, kind)
        and all(getattr(event, name) == value for name, value in fields.items())
    ]


def index_of(events: Sequence[RuntimeEvent], event: RuntimeEvent) -> int:
    return next(i for i, candidate in enumerate(events) if candidate is event)


def looping_plan(*, budgets: dict[str, Any] | None = None, limits: Budget | None = None) -> Plan:
    """One worker, one step: the scripted model makes it call ``lookup`` turn after turn."""
    builder = PlanBuilder("loop", goal=GOAL, model="local-scripted")
    if budgets is not None:
        builder.budgets(**budgets)
    builder.worker("looper", tools=[lookup], limits=limits)
    builder.step("ask", agent="looper", task="{{goal}}")
    return builder.build()


def team_plan(*, goal: str | None = GOAL) -> Plan:
    """A planner and three workers with async tools, run by the generic model."""
    return (
        PlanBuilder("team", goal=goal, model="gpt-5-mini")
        .planner("planner", instructions="Delegate to every worker at once, then finish.")
        .worker("north", description="Weather now.", tools=[lookup])
        .worker("south", description="Forecasts.", tools=[forecast])
        .worker("east", description="Both.", tools=[lookup, forecast])
        .build()
    )


async def run_memory(
    plan: Plan | str,
    goal: str | None = None,
    *,
    server: Mapping[str, Any] | None = None,
    **options: Any,
) -> RunResult:
    """``run`` over in-memory streams, bounded in (virtual) time.

    Without a journal: its writer thread and the autojump clock do not mix (waiting on a
    thread looks idle, and the clock jumps to the next deadline). Journaled runs are tested
    on the real clock, in tests/jobs.
    """
    options.setdefault("store", None)
    with trio.fail_after(3600):
        embedded = EmbeddedServer(config=server or {}, transport="memory")
        return await run(plan, goal, embedded=embedded, **options)


def kinds(transcript: Sequence[Any]) -> list[str]:
    return [type(item).__name__ for item in transcript]


def outputs(transcript: Sequence[Any]) -> list[Any]:
    return [item.output for item in transcript if isinstance(item, FunctionCallOutputItem)]


def user_texts(transcript: Sequence[Any]) -> list[str]:
    return [
        item.text for item in transcript if isinstance(item, MessageItem) and item.role == "user"
    ]


def assert_usage_adds_up(result: RunResult) -> None:
    """The run's usage is the sum of its agents', and every agent's tokens are counted."""
    assert sum(agent.turns for agent in result.agents) == result.usage.turns
    assert sum(agent.input_tokens for agent in result.agents) == result.usage.input_tokens
    assert sum(agent.output_tokens for agent in result.agents) == result.usage.output_tokens
    assert result.usage.input_tokens + result.usage.output_tokens == result.usage.total_tokens


# -- the examples, end to end ------------------------------------------------------------------


async def test_trip_example_runs_to_an_itinerary_over_tcp():
    """The trip planner completes over loopback TCP: the planner delegates to its three
    workers once, each searches its data, and the answer quotes what they found."""
    recorder = Recorder()
    with trio.fail_after(30):
        result = await run(f"{EXAMPLES}/trip/plan.toml", events=recorder)

    assert "completed" == result.status
    assert (None, None) == (result.code, result.reason)
    assert ("trip", "delegate", "embedded") == (result.plan, result.mode, result.endpoint)
    assert result.goal is not None
    assert "Lisbon" in result.goal
    assert result.answer is not None
    # The answer summarises each worker's reply: a flight, a hotel, an activity.
    for found in ("TO7602", "The Lumiares", "Miradouro"):
        assert found in result.answer
    assert ["planner", "flights", "hotels", "activities"] == [a.name for a in result.agents]
    assert ["planner", "worker", "worker", "worker"] == [a.role for a in result.agents]
    planner = result.agent("planner")
    assert (2, 4, 1) == (planner.turns, planner.tool_calls, planner.tasks)
    delegated = [i.name for i in planner.transcript if isinstance(i, FunctionCallItem)]
    assert [
        "delegate_to_flights",
        "delegate_to_hotels",
        "delegate_to_activities",
        "finish",
    ] == delegated
    for name, tools in [
        ("flights", ["search_flights"]),
        ("hotels", ["search_hotels"]),
        ("activities", ["search_activities", "typical_weather"]),
    ]:
        agent = result.agent(name)
        assert (2, 1, 0) == (agent.turns, agent.tasks, agent.restarts)
        assert tools == [i.name for i in agent.transcript if isinstance(i, FunctionCallItem)]
        # Every tool answered with data, not an error.
        assert all('"error"' not in text for text in outputs(agent.transcript))
        assert agent.connection is not None
        assert (1, 0, 0) == (
            agent.connection.sockets_opened,
            agent.connection.reconnects,
            agent.connection.failures,
        )
        assert agent.connection.bytes_sent > 0
        assert agent.connection.bytes_received > 0
        assert agent.input_tokens > 0
        assert agent.output_tokens > 0
    assert 8 == result.usage.turns
    assert_usage_adds_up(result)
    assert 8 == len(of(recorder.events, TurnFinished))
    assert [] == result.steps
    assert result.duration > 0


async def test_bugfix_example_runs_the_tests_and_leaves_the_sample_alone():
    """The bug fixer completes over TCP: the tester runs the sample's suite in a subprocess
    and reports the failure, the patcher's tool answers, and the bundled package is unchanged."""
    sample = trio.Path(EXAMPLES, "bugfix", "sample", "calc", "stats.py")
    before = await sample.read_bytes()
    with trio.fail_after(60):
        result = await run(f"{EXAMPLES}/bugfix/plan.yaml")

    assert "completed" == result.status
    assert result.answer is not None
    assert "run_tests" in result.answer
    assert ["planner", "reader", "tester", "patcher"] == [a.name for a in result.agents]
    tester = result.agent("tester")
    assert ["run_tests"] == [i.name for i in tester.transcript if isinstance(i, FunctionCallItem)]
    report = json.loads(outputs(tester.transcript)[0])
    assert report["failed"] >= 1
    assert all(agent.turns >= 1 for agent in result.agents)
    assert_usage_adds_up(result)
    assert before == await sample.read_bytes()


async def test_longrun_example_runs_its_125_steps_to_the_network_report():
    """The stock audit follows its DAG: 125 steps complete in plan order in the report, and the
    answer is the final step's result, the network scorecard."""
    plan = load_plan(f"{EXAMPLES}/longrun/plan.json")
    with trio.fail_after(60):
        result = await run(plan, embedded=EmbeddedServer(transport="memory"))

    assert "completed" == result.status
    assert "steps" == result.mode
    assert [step.id for step in plan.steps] == [step.id for step in result.steps]
    assert {"completed"} == {step.status for step in result.steps}
    assert all(step.result for step in result.steps)
    assert [step.agent for step in plan.steps] == [step.agent for step in result.steps]
    final = result.steps[-1]
    assert ("network-report", "analyst") == (final.id, final.agent)
    assert final.result == result.answer
    assert result.answer is not None
    assert "scorecard" in result.answer
    assert 250 == result.usage.turns
    assert_usage_adds_up(result)
    # One socket per agent, for all its steps.
    assert {1} == {agent.connection.sockets_opened for agent in result.agents if agent.connection}
    assert 125 == sum(agent.tasks for agent in result.agents)


# -- parallelism, shown by the order of events -------------------------------------------------


async def test_parallel_delegations_overlap(autojump_clock):
    """The planner's three delegations of one response are all routed before any worker
    replies, and every worker starts thinking before the first one finishes its last turn."""
    recorder = Recorder()
    result = await run_memory(
        team_plan(),
        events=recorder,
        server={"latency": LatencyModel(time_to_first_token=1.0)},
    )
    events = recorder.events

    assert "completed" == result.status
    workers = ["north", "south", "east"]
    routed = of(events, MessageRouted, sender="planner")
    assert sorted(workers) == sorted(event.recipient for event in routed)
    assert {"ask"} == {event.kind for event in routed}
    # A worker replies right after its last turn, the one without function calls.
    last_turns = [e for e in of(events, TurnFinished, function_calls=0) if e.agent in workers]
    assert 3 == len(last_turns)
    first_reply = index_of(events, last_turns[0])
    assert all(index_of(events, event) < first_reply for event in routed)
    for worker in workers:
        thinking = of(events, AgentState, agent=worker, state="thinking")[0]
        started = of(events, TurnStarted, agent=worker)[0]
        assert index_of(events, thinking) < first_reply
        assert index_of(events, started) < first_reply
    # The planner waited for all three at once, and its state named the workers still
    # outstanding as each one replied.
    waiting = [e.detail for e in of(events, AgentState, agent="planner", state="waiting")]
    assert "north, south, east" == waiting[0]
    assert 3 == len(waiting)
    assert all(len(later.split(", ")) == 3 - n for n, later in enumerate(waiting))
    assert 1 == len(of(events, TurnFinished, agent="planner", function_calls=3))
    assert result.answer is not None
    for worker in workers:
        assert f"\n{worker}:" in result.answer


async def test_independent_steps_overlap_and_a_step_sees_its_dependencies_results(
    autojump_clock,
):
    """Steps on different agents with no dependency between them run at the same time; a step
    that depends on both gets their results rendered into its task."""
    plan = (
        PlanBuilder("pipeline", goal="three apples", model="local-echo")
        .worker("first")
        .worker("second")
        .worker("joiner")
        .step("count", agent="first", task="Count {{goal}}.")
        .step("weigh", agent="second", task="Weigh {{goal}}.")
        .step(
            "join",
            agent="joiner",
            task="Counted: {{steps.count.result}} Weighed: {{steps.weigh.result}}",
            depends_on=["count", "weigh"],
        )
        .build()
    )
    recorder = Recorder()
    result = await run_memory(
        plan,
        events=recorder,
        server={"latency": LatencyModel(time_to_first_token=5.0)},
    )
    events = recorder.events

    assert "completed" == result.status
    first_finish = index_of(events, of(events, TurnFinished)[0])
    for agent in ("first", "second"):
        assert index_of(events, of(events, TurnStarted, agent=agent)[0]) < first_finish
    joined = index_of(events, of(events, TurnStarted, agent="joiner")[0])
    for agent in ("first", "second"):
        assert index_of(events, of(events, TurnFinished, agent=agent)[0]) < joined
    # The echo model answers with its task, so the results are the rendered tasks.
    assert ["Count three apples."] == user_texts(result.agent("first").transcript)
    expected = "Counted: Count three apples. Weighed: Weigh three apples."
    assert [expected] == user_texts(result.agent("joiner").transcript)
    assert [
        ("count", "first", "completed", "Count three apples."),
        ("weigh", "second", "completed", "Weigh three apples."),
        ("join", "joiner", "completed", expected),
    ] == [(s.id, s.agent, s.status, s.result) for s in result.steps]
    assert expected == result.answer
    # Two turns in parallel, then one: 10 virtual seconds, not 15.
    assert 10.0 == pytest.approx(result.duration)


# -- budgets stop a run at exactly their limit (docs/faults.md#budgets) -----------------------


def assert_stopped_by(result: RunResult, budget: str, reason: str) -> None:
    assert "budget_exceeded" == result.status
    assert f"budget.{budget}" == result.code
    assert reason == result.reason
    assert result.answer is None
    looper = result.agent("looper")
    assert looper.transcript, "the partial transcript is kept"
    assert GOAL == user_texts(looper.transcript)[0]


async def test_run_max_turns_allows_exactly_that_many_turns(autojump_clock):
    """With ``budgets.max_turns = 5`` exactly five turns reach the server, then the run stops."""
    recorder = Recorder()
    result = await run_memory(
        looping_plan(budgets={"max_turns": 5}),
        events=recorder,
        server={"script": LOOPING},
    )

    assert_stopped_by(result, "max_turns", "run budget max_turns reached: used 5 of 5")
    assert 5 == result.usage.turns == result.agent("looper").turns
    assert 5 == len(of(recorder.events, TurnStarted)) == len(of(recorder.events, TurnFinished))
    calls = [i for i in result.agent("looper").transcript if isinstance(i, FunctionCallItem)]
    assert 5 == len(calls)
    assert ["Lisbon: sunny, 21 C"] * 4 == outputs(result.agent("looper").transcript)
    # The step was cut short: it neither completed nor failed, and the report says so.
    assert [("ask", "cut", "the run ended while it ran")] == [
        (step.id, step.status, step.error) for step in result.steps
    ]


async def test_agent_max_turns_allows_exactly_that_many_turns(autojump_clock):
    """An agent's own ``limits.max_turns`` stops the run after that agent's Nth turn."""
    recorder = Recorder()
    result = await run_memory(
        looping_plan(limits=Budget(max_turns=3)),
        events=recorder,
        server={"script": LOOPING},
    )

    assert_stopped_by(result, "max_turns", "agent looper budget max_turns reached: used 3 of 3")
    assert 3 == result.usage.turns
    assert 3 == len(of(recorder.events, TurnFinished))


def turn_that_reached(finished: Sequence[TurnFinished], limit: int) -> int:
    """How many turns it took for the running token total to reach ``limit``."""
    total = 0
    for count, event in enumerate(finished, 1):
        total += event.input_tokens + event.output_tokens
        if total >= limit:
            return count
    raise AssertionError(f"{total} tokens never reached {limit}")


async def test_run_max_tokens_stops_after_the_turn_that_reached_it(autojump_clock):
    """The run stops right after the turn whose tokens reached ``budgets.max_tokens``."""
    recorder = Recorder()
    result = await run_memory(
        looping_plan(budgets={"max_tokens": 400}),
        events=recorder,
        server={"script": LOOPING},
    )
    finished = of(recorder.events, TurnFinished)

    reached = turn_that_reached(finished, 400)
    assert reached >= 3  # the limit is not reached by the first turn alone
    assert reached == len(finished) == result.usage.turns
    used = result.usage.total_tokens
    assert used >= 400
    assert_stopped_by(result, "max_tokens", f"run budget max_tokens reached: used {used} of 400")


async def test_agent_max_tokens_stops_after_the_turn_that_reached_it(autojump_clock):
    """An agent's ``limits.max_tokens`` stops the run after that agent's turn reached it."""
    recorder = Recorder()
    result = await run_memory(
        looping_plan(limits=Budget(max_tokens=300)),
        events=recorder,
        server={"script": LOOPING},
    )
    finished = of(recorder.events, TurnFinished)

    reached = turn_that_reached(finished, 300)
    assert reached >= 2
    assert reached == len(finished) == result.agent("looper").turns
    used = result.agent("looper").input_tokens + result.agent("looper").output_tokens
    assert_stopped_by(
        result, "max_tokens", f"agent looper budget max_tokens reached: used {used} of 300"
    )


async def test_run_wall_clock_stops_the_run_at_its_deadline(autojump_clock):
    """Turns take 10 s each; ``budgets.wall_clock = 25`` ends the run at 25 s, in the third."""
    recorder = Recorder()
    result = await run_memory(
        looping_plan(budgets={"wall_clock": 25}),
        events=recorder,
        server={"script": LOOPING, "latency": LatencyModel(time_to_first_token=10)},
    )

    assert_stopped_by(result, "wall_clock", "run budget wall_clock reached: used 25 of 25")
    assert 25.0 == pytest.approx(result.duration)
    assert 3 == len(of(recorder.events, TurnStarted))
    assert 2 == len(of(recorder.events, TurnFinished))
    assert 2 == result.usage.turns  # the turn cut at the deadline produced nothing


async def test_agent_wall_clock_stops_the_run_at_the_agents_deadline(autojump_clock):
    """An agent's ``limits.wall_clock`` counts from its first turn and ends the run there."""
    recorder = Recorder()
    result = await run_memory(
        looping_plan(limits=Budget(wall_clock=25)),
        events=recorder,
        server={"script": LOOPING, "latency": LatencyModel(time_to_first_token=10)},
    )

    assert_stopped_by(result, "wall_clock", "agent looper budget wall_clock reached: used 25 of 25")
    assert 25.0 == pytest.approx(result.duration)
    assert 3 == len(of(recorder.events, TurnStarted))
    assert 2 == len(of(recorder.events, TurnFinished))
    assert 2 == result.usage.turns  # the turn cut at the deadline produced nothing


# -- other ways a run ends ---------------------------------------------------------------------


async def test_stop_event_interrupts_the_run_with_partial_results(autojump_clock):
    """Setting ``stop`` mid-run ends it as ``interrupted``, keeping what was done so far."""
    stop = trio.Event()
    finished: list[TurnFinished] = []

    def watch(event: RuntimeEvent) -> None:
        if isinstance(event, TurnFinished):
            finished.append(event)
            if len(finished) == 2:
                stop.set()

    result = await run_memory(
        looping_plan(),
        events=watch,
        server={"script": LOOPING, "latency": LatencyModel(time_to_first_token=1)},
        stop=stop,
    )

    assert "interrupted" == result.status
    assert ("run.interrupted", "stopped on request") == (result.code, result.reason)
    assert result.answer is None
    assert 2 == len(finished)
    assert 2 == result.agent("looper").turns == result.usage.turns
    # The turn in flight was cancelled at once, not left to run on (each takes 1 s).
    assert 2.0 == pytest.approx(result.duration)
    looper = result.agent("looper")
    assert 2 == len([i for i in looper.transcript if isinstance(i, FunctionCallItem)])


async def test_a_tool_called_wrongly_past_the_repair_budget_fails_the_run(autojump_clock):
    """A model that keeps sending invalid arguments gets told what is wrong twice; the third
    invalid call ends the run as failed with ``tool.repair_budget``
    (docs/faults.md#tool-calls-from-the-model)."""
    script = {
        "on_exhausted": "repeat_last",
        "turns": [{"function_calls": [{"name": "lookup", "arguments": {"town": "Lisbon"}}]}],
    }
    recorder = Recorder()
    result = await run_memory(looping_plan(), events=recorder, server={"script": script})

    assert "failed" == result.status
    assert "tool.repair_budget" == result.code
    assert result.reason is not None
    assert "tool 'lookup' was called wrongly 3 times in a row (repair budget 2)" in result.reason
    looper = result.agent("looper")
    assert DEFAULT_REPAIR_BUDGET + 1 == looper.turns
    errors = [json.loads(text)["error"] for text in outputs(looper.transcript)]
    assert ["invalid_arguments"] * DEFAULT_REPAIR_BUDGET == errors
    assert [False] * 3 == [event.ok for event in of(recorder.events, ToolFinished)]


async def test_a_crashed_agent_restarts_with_its_session_and_the_run_completes(
    autojump_clock, monkeypatch
):
    """An exception in the actor's own code (not in a tool) crashes the incarnation; the
    supervisor restarts it with its transcript and memory intact, the step is delivered
    again under the same id, and the agent continues its task where it stopped: the call
    the crash left pending runs, the task is not asked again, the run ends."""
    crashes: list[str] = []
    original = AgentActor.handle_calls

    async def crash_once(self: AgentActor, calls: Sequence[FunctionCallItem]) -> CallOutcome:
        if not crashes:
            crashes.append(self.name)
            raise RuntimeError("bug in the actor")
        return await original(self, calls)

    monkeypatch.setattr(AgentActor, "handle_calls", crash_once)
    script = {
        "turns": [
            {"function_calls": [{"name": "lookup", "arguments": {"city": "Lisbon"}}]},
            {"function_calls": [{"name": "lookup", "arguments": {"city": "Porto"}}]},
            {"text": "Lisbon and Porto are sunny."},
        ]
    }
    recorder = Recorder()
    result = await run_memory(looping_plan(), events=recorder, server={"script": script})

    assert "completed" == result.status
    assert "Lisbon and Porto are sunny." == result.answer
    assert ["looper"] == crashes
    restarted = of(recorder.events, ActorRestarted, actor="looper")
    assert 1 == len(restarted)
    assert "bug in the actor" in restarted[0].reason
    assert 2 == len(of(recorder.events, ActorStarted, actor="looper"))
    looper = result.agent("looper")
    assert 1 == looper.restarts
    # The first incarnation's turn is still there, and its pending call was run by the
    # second incarnation: one user message, no call closed unanswered.
    assert [GOAL] == user_texts(looper.transcript)
    assert [
        "MessageItem",
        "FunctionCallItem",
        "FunctionCallOutputItem",
        "FunctionCallItem",
        "FunctionCallOutputItem",
        "MessageItem",
    ] == kinds(looper.transcript)
    assert ["Lisbon: sunny, 21 C", "Porto: sunny, 21 C"] == outputs(looper.transcript)
    assert [("ask", "looper", "completed")] == [(s.id, s.agent, s.status) for s in result.steps]


async def test_a_rejected_key_fails_the_run_without_leaking_it(canary_key):
    """A live run whose key the server refuses (HTTP 401) fails with ``auth.rejected``; the
    result names the key by its fingerprint only (docs/faults.md#keys-and-endpoints)."""
    with trio.fail_after(20):
        async with open_local_server(token="the-right-token") as server:
            result = await run(
                looping_plan(),
                settings=RunSettings(api_key=canary_key, base_url=server.url, offline=False),
            )

    assert "failed" == result.status
    assert "auth.rejected" == result.code
    assert server.url == result.endpoint
    assert result.reason is not None
    assert "HTTP 401" in result.reason
    assert f"sk-…{canary_key[-4:]}" in result.reason
    document = result.to_json().decode()
    assert canary_key not in document
    assert canary_key[3:] not in document
    assert 0 == result.usage.turns
    gc.collect()  # a leaked socket of the refused handshake would warn here (filterwarnings=error)


# -- what a run reports and publishes ----------------------------------------------------------


async def test_result_json_has_the_documented_shape(autojump_clock):
    """``RunResult.to_json()`` decodes to the documented fields and back to an equal result."""
    result = await run_memory(team_plan())
    document = json.loads(result.to_json())

    assert {
        "status",
        "plan",
        "goal",
        "mode",
        "endpoint",
        "answer",
        "output",
        "reason",
        "code",
        "usage",
        "agents",
        "steps",
        "failures",
        "parked",
        "resumed",
        "job",
        "started_at",
        "duration",
    } == set(document)
    assert ("completed", "team", GOAL, "delegate", "embedded") == (
        document["status"],
        document["plan"],
        document["goal"],
        document["mode"],
        document["endpoint"],
    )
    assert {"turns", "input_tokens", "output_tokens", "total_tokens"} == set(document["usage"])
    agent = document["agents"][0]
    assert {
        "name",
        "role",
        "model",
        "turns",
        "input_tokens",
        "output_tokens",
        "tool_calls",
        "tasks",
        "restarts",
        "connection",
        "transcript",
        "busy",
        "model_time",
    } == set(agent)
    assert ("planner", "planner", "gpt-5-mini") == (agent["name"], agent["role"], agent["model"])
    assert {
        "sockets_opened",
        "rotations",
        "warmups",
        "reconnects",
        "replays",
        "retries",
        "failures",
        "bytes_sent",
        "bytes_received",
        "events_received",
        "age",
        "transport",
        "http_requests",
    } == set(agent["connection"])
    assert "message" == agent["transcript"][0]["type"]
    assert {"function_call", "function_call_output"} <= {
        item["type"] for item in agent["transcript"]
    }


async def test_listeners_and_subscribers_of_the_events_bus_see_the_same_events(autojump_clock):
    """A run publishes its events to the ``events`` bus: every listener and every subscriber
    sees all of them, in the same order."""
    bus = EventBus()
    from_bus: list[RuntimeEvent] = []
    bus.add_listener(from_bus.append)
    observed: list[RuntimeEvent] = []
    bus.add_listener(observed.append)
    subscribed: list[RuntimeEvent] = []

    async with trio.open_nursery() as nursery, bus.subscribe(max_buffer=10_000) as channel:

        async def drain() -> None:
            async for event in channel:
                subscribed.append(event)

        nursery.start_soon(drain)
        result = await run_memory(team_plan(), events=bus)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()

    assert "completed" == result.status
    assert from_bus == observed == subscribed
    assert 0 == bus.dropped
    kinds_seen = {type(event).__name__ for event in observed}
    assert {
        "ActorStarted",
        "AgentState",
        "ConnectionOpened",
        "MessageRouted",
        "ToolStarted",
        "ToolFinished",
        "TurnStarted",
        "TurnFinished",
    } <= kinds_seen


async def test_a_plan_without_goal_or_steps_is_refused_before_anything_starts():
    """No goal given and none in a plan without steps: ``PlanError``, and no event at all."""
    observed: list[RuntimeEvent] = []
    with pytest.raises(PlanError, match="has no goal"):
        await run(
            team_plan(goal=None),
            events=observed.append,
            embedded=EmbeddedServer(transport="memory"),
        )
    assert [] == observed


# -- context: a fresh conversation per step, or one per agent --------------------------------


def two_steps(context: str | None) -> Plan:
    builder = PlanBuilder("ctx", goal=GOAL, model="gpt-5-mini")
    builder.worker("w", tools=[lookup])
    builder.step("first", agent="w", task="Look Lisbon up.")
    builder.step("second", agent="w", task="Now Porto.", depends_on=["first"])
    plan = builder.build()
    if context is not None:
        plan = msgspec.structs.replace(
            plan, settings=msgspec.structs.replace(plan.settings, context=context)
        )
    return plan


async def test_each_step_starts_a_fresh_conversation_with_its_dependencies_results(
    autojump_clock,
):
    """By default (``context = "step"``) a step's agent starts a new conversation: its
    transcript holds that step's task alone, with the results of the steps it depends on
    appended when the task does not quote them; the input tokens do not pile up."""
    result = await run_memory(two_steps(None))
    assert "completed" == result.status
    worker = result.agent("w")
    (task,) = user_texts(worker.transcript)
    first = next(step for step in result.steps if step.id == "first")
    assert task.startswith("Now Porto.\n\nResults of the steps this one depends on:\n- first: ")
    assert first.result is not None
    assert task.endswith(first.result)


async def test_context_agent_keeps_one_conversation_across_steps(autojump_clock):
    """``context = "agent"``: the second step continues the first one's conversation."""
    fresh = await run_memory(two_steps(None))
    kept = await run_memory(two_steps("agent"))
    assert ["Look Lisbon up.", "Now Porto."] == user_texts(kept.agent("w").transcript)
    assert kept.usage.input_tokens > fresh.usage.input_tokens
