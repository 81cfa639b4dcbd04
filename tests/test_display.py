"""What ``orchestrator run`` shows: the live view (fed events by hand, rendered into a recording
console the way a terminal shows it) and the final report."""

from __future__ import annotations

import io
from typing import Any

import pytest
import trio
import trio.testing
from rich.console import Console

from orchestrator.core.observe import (
    ActorFailed,
    ActorRestarted,
    ActorStarted,
    AgentState,
    ConnectionOpened,
    ConnectionReconnecting,
    DelegationFinished,
    DelegationStarted,
    RunAgent,
    RunStarted,
    StepFinished,
    StepStarted,
    TaskStarted,
    ToolFinished,
    ToolStarted,
    TurnFinished,
    TurnStarted,
)
from orchestrator.display import LiveView, format_duration, render_report
from orchestrator.runner import AgentReport, ConnectionReport, RunResult, StepReport, UsageReport


def shown(renderable: Any, width: int = 120) -> str:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def row(text: str, agent: str) -> str:
    """The line of the agents' table that starts with ``agent``."""
    return next(line for line in text.splitlines() if line.split()[:1] == [agent])


TRIP = RunStarted(
    time=100.0,
    plan="trip",
    mode="delegate",
    endpoint="embedded",
    agents=(
        RunAgent(name="planner", role="planner", model="gpt-5-mini", max_turns=10),
        RunAgent(name="flights", role="worker", model="gpt-5-mini", max_turns=6),
        RunAgent(name="hotels", role="worker", model="gpt-5-mini"),
        RunAgent(name="activities", role="worker", model="gpt-5-mini"),
    ),
    max_turns=40,
    max_tokens=200_000,
    wall_clock=300,
)


def trip_view() -> LiveView:
    """The trip run 2 s in: the planner delegated to three workers, one of them is back."""
    view = LiveView("embedded server, realistic pace")
    view(TRIP)
    view(
        ConnectionOpened(
            time=100.1, agent="planner", connection=1, url="u", reason="open", duration=0
        )
    )
    view(TurnStarted(time=100.1, agent="planner", turn=1, connection=1, new_items=1))
    view(
        TurnFinished(
            time=100.6, agent="planner", turn=1, status="completed", response_id="r1",
            duration=0.5, input_tokens=472, output_tokens=33, function_calls=3,
        )
    )  # fmt: skip
    view(AgentState(time=100.6, agent="planner", role="planner", state="waiting", detail="x"))
    for worker in ("flights", "hotels", "activities"):
        view(
            DelegationStarted(
                time=100.6, agent="planner", worker=worker, call_id=f"c-{worker}",
                task=f"Find {worker} for Lisbon",
            )
        )  # fmt: skip
        view(TaskStarted(time=100.6, agent=worker, sender="planner", task=f"Find {worker}"))
    view(
        DelegationFinished(
            time=101.5, agent="planner", worker="flights", call_id="c-flights", ok=True,
            duration=0.9,
        )
    )  # fmt: skip
    view(AgentState(time=101.5, agent="flights", role="worker", state="idle"))
    return view


def test_the_live_view_shows_progress_budgets_and_what_the_planner_still_waits_for():
    """Elapsed time against the wall-clock budget, delegations out and back, turns and tokens
    against their budgets; per agent its state, with the workers the planner still waits for
    (flights is back), turns against the agent's limit, what it works on, its connection."""
    text = shown(trip_view().render(102.0))

    lines = text.splitlines()
    assert "trip · delegate mode · embedded server, realistic pace · elapsed 2.0 s/5:00" == lines[0]
    assert "delegations 2 out, 1 back · turns 1/40 · tokens 505/200,000" == lines[1]
    assert ["agent", "state", "working", "on", "turns", "tokens", "in/out", "connection"] == (
        lines[2].split()
    )
    planner = row(text, "planner")
    assert "waiting on 2 of 3: hotels, activities" in planner
    assert planner.split()[-4:] == ["1/10", "472/33", "1.9", "s"]
    assert "idle" in row(text, "flights")
    assert "0/6" in row(text, "flights")
    assert "planner: Find hotels" in row(text, "hotels")
    assert row(text, "hotels").endswith("-")  # no connection yet


def test_the_live_view_keeps_tool_calls_current():
    """An agent shows the tools it is calling, each gone as it finishes; once none is left
    the next turn is on its way."""
    view = trip_view()
    for call, tool in (("a", "search_activities"), ("b", "typical_weather")):
        view(ToolStarted(time=101.6, agent="activities", tool=tool, call_id=call))
    assert "calling search_activities, typical_weather" in row(
        shown(view.render(102)), "activities"
    )
    view(ToolFinished(time=101.7, agent="activities", tool="x", call_id="a", ok=True, duration=0))
    assert "calling typical_weather" in row(shown(view.render(102)), "activities")
    view(ToolFinished(time=101.8, agent="activities", tool="x", call_id="b", ok=True, duration=0))
    assert "thinking" in row(shown(view.render(102)), "activities")


def test_the_live_view_shows_reconnects_and_restarts():
    """A lost socket shows as reconnecting with the reason; once back, the connection's age
    starts again and the reconnect is counted. A crash shows until the restart."""
    view = trip_view()
    view(
        ConnectionReconnecting(
            time=101.0, agent="planner", attempt=1, delay=0.1, reason="closed 1006"
        )
    )
    assert "reconnecting attempt 1: closed 1006" in row(shown(view.render(101.2)), "planner")
    view(
        ConnectionOpened(
            time=101.5, agent="planner", connection=2, url="u", reason="reconnect", duration=0
        )
    )
    planner = row(shown(view.render(102.0)), "planner")
    assert planner.endswith("0.5 s, 1 reconnect")
    view(ActorFailed(time=101.8, actor="hotels", error="RuntimeError('boom')"))
    assert "restarting RuntimeError('boom')" in row(shown(view.render(102.0)), "hotels")
    view(ActorRestarted(time=101.9, actor="hotels", restarts=1, delay=0.5, reason="boom"))
    view(ActorStarted(time=102.4, actor="hotels", supervisor="run"))
    assert "idle restarted (1)" in row(shown(view.render(102.5)), "hotels")


def test_a_steps_run_shows_steps_done_running_and_waiting():
    """Steps mode: done out of the total, running (taken up by their agent), waiting for
    their agent, and failures; each agent shows its current step."""
    view = LiveView("embedded server")
    view(
        RunStarted(
            time=0, plan="audit", mode="steps", endpoint="embedded", steps=125,
            agents=(RunAgent(name="counter", role="worker", model="m"),),
        )
    )  # fmt: skip
    for step in ("count-lille", "count-reims", "count-rouen", "count-caen"):
        view(StepStarted(time=0, step=step, agent="counter"))
    view(TaskStarted(time=0, agent="counter", sender="run", step="count-lille", task="Count"))
    view(StepFinished(time=1, step="count-lille", agent="counter", status="completed", duration=1))
    view(TaskStarted(time=1, agent="counter", sender="run", step="count-reims", task="Count"))
    view(StepFinished(time=2, step="count-reims", agent="counter", status="failed", duration=1))
    view(TaskStarted(time=2, agent="counter", sender="run", step="count-rouen", task="Count"))

    text = shown(view.render(2.5))

    assert (
        "steps 1/125 done, 1 running, 1 waiting for their agent, 1 failed · turns 0 · tokens 0"
        == text.splitlines()[1]
    )
    assert "step count-rouen" in row(text, "counter")


def test_on_a_narrow_terminal_states_and_tasks_are_cut_never_the_figures():
    """At 90 columns every line fits and every agent keeps its turns, tokens and connection;
    the long state ends with an ellipsis."""
    text = shown(trip_view().render(102.0, width=90), width=90)

    assert all(len(line) <= 90 for line in text.splitlines())
    assert row(text, "planner").split()[-4:] == ["1/10", "472/33", "1.9", "s"]
    assert "…" in row(text, "planner")


async def test_asking_the_user_leaves_a_still_copy_above_the_question():
    """While the operator is asked about a call, the view steps aside: a still copy of it,
    showing who asks about what, stays above the question, and the live view comes back
    afterwards."""
    output = io.StringIO()
    console = Console(file=output, width=140, force_terminal=True, color_system=None)
    view = trip_view()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(view.refresh, console)
        await trio.testing.wait_all_tasks_blocked()
        with view.asking("hotels", "book_hotel"), view.paused():
            console.print("QUESTION")
            asked = output.getvalue()
        assert view._live is not None  # back on screen
        nursery.cancel_scope.cancel()

    still = asked[: asked.index("QUESTION")]
    assert "asking you whether book_hotel may run" in still
    assert "delegations 2 out, 1 back" in still


# -- the report --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0 ms"),
        (0.038, "38 ms"),
        (4.0667, "4.07 s"),
        (12.34, "12.3 s"),
        (125, "2 min 05 s"),
        (3725, "1 h 02 min"),
    ],
)
def test_durations_read_at_a_glance(seconds, text):
    """A run of 38 ms says so (never ``0.0 s``); longer ones in s, min and h."""
    assert text == format_duration(seconds)


def agent_report(name: str, role: str = "worker", **fields: Any) -> AgentReport:
    values: dict[str, Any] = {
        "name": name,
        "role": role,
        "model": "gpt-5-mini",
        "turns": 2,
        "input_tokens": 700,
        "output_tokens": 60,
        "tool_calls": 1,
        "tasks": 1,
        "restarts": 0,
        "connection": ConnectionReport(
            sockets_opened=1, rotations=0, warmups=0, reconnects=0, replays=0, retries=0,
            failures=0, bytes_sent=1, bytes_received=1, events_received=1, age=4.0,
        ),
        "transcript": [],
        "busy": 2.5,
        "model_time": 2.0,
    }  # fmt: skip
    values.update(fields)
    return AgentReport(**values)


def result(**fields: Any) -> RunResult:
    values: dict[str, Any] = {
        "status": "completed",
        "plan": "audit",
        "goal": "audit",
        "mode": "steps",
        "endpoint": "embedded",
        "answer": "All good.",
        "usage": UsageReport(turns=4, input_tokens=1400, output_tokens=120, total_tokens=1520),
        "agents": [agent_report("counter")],
        "started_at": 0.0,
        "duration": 0.0423,
    }
    values.update(fields)
    return RunResult(**values)


def test_the_report_gives_real_durations_per_run_and_per_agent():
    """The run's duration is its real elapsed time even when short; each agent says how
    long it was busy and how much of that was spent in model turns."""
    text = shown(render_report(result(steps=[])))

    assert text.startswith(
        "completed  plan 'audit', steps mode, embedded, 42 ms, 4 turns, 1,520 tokens"
    )
    header = next(line for line in text.splitlines() if line.startswith("agent"))
    assert [
        "agent", "role", "turns", "tools", "tokens", "busy", "model", "sockets", "restarts",
    ] == header.split()  # fmt: skip
    assert ["2.50", "s", "2.00", "s", "1", "0"] == row(text, "counter").split()[5:]


def test_an_interrupted_report_counts_completed_cut_and_never_started_steps():
    """An interrupted steps run says how many steps completed, failed, were cut short and
    never started (all of them add up to the plan's), lists the ones that did not finish
    with how long they ran, and gives the median and longest step time."""
    steps = [
        StepReport(id=f"s{i}", agent="counter", status="completed", result="ok", duration=i)
        for i in range(1, 4)
    ]
    steps.append(StepReport(id="s4", agent="counter", status="failed", error="boom", duration=0.5))
    steps.append(
        StepReport(
            id="s5", agent="counter", status="cut", error="the run ended while it ran", duration=1.2
        )
    )
    steps += [StepReport(id=f"s{i}", agent="counter", status="not_started") for i in range(6, 10)]
    text = shown(
        render_report(
            result(status="interrupted", answer=None, reason="stopped on request", steps=steps)
        )
    )

    assert "reason: stopped on request" in text
    assert (
        "9 steps: 3 completed, 1 failed, 1 cut short, 4 never started; a step took 2.00 s "
        "(median), the longest 3.00 s (s3)"
    ) in text
    assert "  s4 (counter): failed after 500 ms: boom" in text
    assert "  s5 (counter): cut short after 1.20 s: the run ended while it ran" in text
    assert "s6" not in text  # never-started steps are counted, not listed


def test_a_failed_run_shows_its_error_code_and_reason():
    """A failed run's reason is an ``error[CODE]`` line, as the command line prints errors."""
    text = shown(
        render_report(
            result(
                status="failed",
                answer=None,
                code="model.not_found",
                reason="agent 'boss' uses model 'gpt-5-mimi', which ...",
                mode="delegate",
            )
        )
    )

    assert "error[model.not_found]: agent 'boss' uses model 'gpt-5-mimi', which ..." in text
