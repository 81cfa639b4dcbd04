"""Regression tests for races and containment bugs in the actors and the supervisor."""

from __future__ import annotations

import random
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing

from actors.agent import AgentActor, Assignment, AssignmentResult
from actors.planner import PlannerActor, WorkerInfo, delegation_tools
from actors.tools import ToolRegistry, ToolRepairBudgetExceeded
from actors.worker import WorkerActor
from orchestrator.core.budget import BudgetTracker
from orchestrator.core.connection import Connection, ConnectionSettings, open_connection
from orchestrator.core.observe import EventBus, MessageRouted
from orchestrator.core.router import Router
from orchestrator.core.server import LocalServer, ServerConfig
from orchestrator.core.session import Session
from orchestrator.core.supervisor import Backoff, ChildSpec, Supervisor
from orchestrator.errors import ActorDead
from orchestrator.testing import memory_connector

from .helpers import LOCAL_URL, LOOKUP

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

NO_BACKOFF = Backoff(0)


class Crash(Exception):
    pass


def _opener(server: LocalServer, nursery: trio.Nursery) -> Callable[[str], Any]:
    @asynccontextmanager
    async def opener(agent: str) -> AsyncIterator[Connection]:
        async with open_connection(
            LOCAL_URL,
            server.token,
            agent=agent,
            settings=ConnectionSettings(),
            connector=memory_connector(server, nursery),
            rng=random.Random(0),
        ) as connection:
            yield connection

    return opener


# -- supervisor -----------------------------------------------------------------------------


def _child(name: str, history: list[tuple[str, str]], *, obey_stop: bool = True) -> Any:
    """A child that logs how each incarnation starts and ends; returns (start, crash, stop)."""
    wake: list[tuple[trio.Event, list[str]]] = []

    async def start(*, task_status: trio.TaskStatus[None]) -> None:
        event, action = trio.Event(), ["cancelled"]
        wake.append((event, action))
        history.append(("start", name))
        task_status.started()
        try:
            await event.wait()
        finally:
            history.append((action[0], name))
        if action[0] == "crash":
            raise Crash(name)

    def act(what: str) -> None:
        event, action = wake[-1]
        action[0] = what
        event.set()

    def stop() -> None:
        if obey_stop:
            act("stop")

    return start, lambda: act("crash"), stop


async def test_a_temporary_child_that_dies_during_a_group_restart_is_not_restarted(
    autojump_clock,
):
    """one_for_all: a temporary sibling that exits while the supervisor is still stopping
    the group (here: waiting out another sibling's grace) is forgotten, never restarted."""
    history: list[tuple[str, str]] = []
    a_start, a_crash, a_stop = _child("a", history)
    b_start, b_crash, b_stop = _child("b", history)
    c_start, _, c_stop = _child("c", history, obey_stop=False)
    sup = Supervisor(
        "sup",
        [
            ChildSpec("a", a_start, stop=a_stop),
            ChildSpec("b", b_start, restart="temporary", stop=b_stop),
            ChildSpec("c", c_start, shutdown_grace=2, stop=c_stop),
        ],
        strategy="one_for_all",
        backoff=NO_BACKOFF,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        history.clear()
        a_crash()
        await trio.sleep(1)  # the supervisor is waiting for c to stop
        b_crash()
        await trio.sleep(10)
        assert ("a", "c") == tuple(child.name for child in sup.statistics().children)
        sup.stop()
    assert [
        ("crash", "a"),
        ("crash", "b"),
        ("cancelled", "c"),
        ("start", "a"),
        ("start", "c"),
        ("cancelled", "c"),
        ("stop", "a"),
    ] == history


# -- planner --------------------------------------------------------------------------------


async def test_a_planner_own_tool_past_its_repair_budget_stops_the_run_with_that_reason(
    autojump_clock,
):
    """A planner's own tool call exceeding the repair budget, made beside a delegation,
    ends the run with error[tool.repair_budget] (as for any agent), instead of escaping
    the delegation nursery as an ExceptionGroup that crashes the planner into a restart."""
    workers = [WorkerInfo("w")]
    script = {
        "turns": [
            {
                "function_calls": [
                    {"name": "delegate_to_w", "arguments": {"task": "look"}},
                    {"name": "lookup", "arguments": {"city": "Porto"}},
                ]
            },
            {"text": "done"},
        ]
    }
    server = LocalServer.from_config(ServerConfig(script=script, seed=1))
    router = Router()
    budget = BudgetTracker()
    outcome: list[Any] = []
    async with trio.open_nursery() as server_nursery:
        opener = _opener(server, server_nursery)
        with trio.CancelScope() as run_scope:
            budget.scope = run_scope
            async with trio.open_nursery() as nursery:
                actors: list[AgentActor] = [
                    WorkerActor(
                        "w", router=router, session=Session(model="echo"), open_connection=opener
                    ),
                    PlannerActor(
                        "boss",
                        router=router,
                        session=Session(
                            model="local-scripted", tools=(LOOKUP, *delegation_tools(workers))
                        ),
                        open_connection=opener,
                        # No tool is registered: "lookup" is an unknown tool, a model mistake.
                        tools=ToolRegistry().executor("boss", repair_budget=0),
                        budget=budget,
                        workers=tuple(workers),
                    ),
                ]
                sup = Supervisor("run", actors, backoff=NO_BACKOFF)
                await nursery.start(sup.run)
                try:
                    outcome.append(await router.ask("run", "boss", Assignment(text="go")))
                except ActorDead as exc:
                    outcome.append(exc)
                sup.stop()
        server_nursery.cancel_scope.cancel()
    assert [] == outcome
    assert run_scope.cancelled_caught
    assert isinstance(budget.failure, ToolRepairBudgetExceeded)
    assert "lookup" == budget.failure.tool


# -- stop() racing a delivery ---------------------------------------------------------------


@asynccontextmanager
async def _no_connection(agent: str) -> AsyncIterator[Any]:
    await trio.lowlevel.checkpoint()
    yield None


@attrs.define(eq=False)
class _LongTasks(WorkerActor):
    """A worker whose every task runs until it is cancelled (only stop() ends it)."""

    performed: list[str] = attrs.field(factory=list)

    async def perform(self, task: Assignment) -> AssignmentResult:
        self.performed.append(task.text)
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_task_handed_over_as_the_agent_is_stopped_is_dropped_not_run(autojump_clock):
    """stop() that lands after an idle agent's mailbox handed a task over but before the
    agent's task resumed (here: an observer stopping the agent as the message is routed)
    drops the task like any queued one: the asker gets ActorDead at once, the task never
    runs (no model turn, no tool) and the incarnation ends."""
    bus = EventBus()
    router = Router(events=bus)
    agent = _LongTasks(
        "w", router=router, session=Session(model="echo"), open_connection=_no_connection
    )
    bus.add_listener(lambda event: agent.stop() if isinstance(event, MessageRouted) else None)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await trio.testing.wait_all_tasks_blocked()  # idle, waiting on its mailbox
        with trio.fail_after(60), pytest.raises(ActorDead) as caught:
            await agent.ask(Assignment(text="late"))
    assert "stopped" == caught.value.reason
    assert [] == agent.performed
    assert ["stopped"] == [letter.reason for letter in router.dead_letters]


async def test_refusing_a_second_run_leaves_the_running_agent_its_connection(autojump_clock):
    """run() on an agent that is already running raises BusyResourceError without opening
    a connection of its own and without taking the running incarnation's away from it."""
    opened: list[str] = []

    @asynccontextmanager
    async def opener(agent: str) -> AsyncIterator[Any]:
        connection = f"connection {len(opened) + 1}"
        opened.append(connection)
        await trio.lowlevel.checkpoint()
        yield connection

    agent = WorkerActor("w", session=Session(model="echo"), open_connection=opener)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with pytest.raises(trio.BusyResourceError):
            await agent.run()
        assert ["connection 1"] == opened
        assert "connection 1" == agent.connection
        agent.stop()
