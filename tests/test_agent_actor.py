"""The agent actor under supervision: one connection, one session, restarts that keep both apart."""

from __future__ import annotations

import random
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing

from actors.agent import AgentActor, Assignment, AssignmentResult
from actors.planner import PlannerActor, WorkerInfo, delegation_tools
from actors.worker import WorkerActor
from orchestrator.core.connection import Connection, ConnectionSettings, open_connection
from orchestrator.core.observe import (
    ActorRestarted,
    ActorStarted,
    AgentState,
    ConnectionRotated,
    EventBus,
    MessageRouted,
    TurnFinished,
)
from orchestrator.core.protocol.events import MessageItem
from orchestrator.core.router import Router
from orchestrator.core.server import Fault, LatencyModel, LocalServer, ServerConfig
from orchestrator.core.server.generic import LEAD_IN
from orchestrator.core.session import Session
from orchestrator.core.supervisor import Backoff, Supervisor
from orchestrator.errors import ActorDead
from orchestrator.testing import memory_connector

from .helpers import LOCAL_URL, Recorder

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@attrs.define
class Team:
    server: LocalServer
    router: Router
    bus: EventBus
    recorder: Recorder


@asynccontextmanager
async def team(
    config: ServerConfig,
    build,  # (router, bus, opener) -> list[AgentActor]
    settings: ConnectionSettings | None = None,
) -> AsyncIterator[tuple[Team, list[AgentActor]]]:
    server = LocalServer.from_config(config)
    bus = EventBus()
    recorder = Recorder()
    bus.add_listener(recorder)
    router = Router(events=bus)
    async with trio.open_nursery() as nursery:

        @asynccontextmanager
        async def opener(agent: str) -> AsyncIterator[Connection]:
            async with open_connection(
                LOCAL_URL,
                server.token,
                agent=agent,
                settings=settings or ConnectionSettings(),
                connector=memory_connector(server, nursery),
                events=bus,
                rng=random.Random(0),
            ) as connection:
                yield connection

        actors = build(router, bus, opener)
        supervisor = Supervisor(
            "test", actors, intensity=3, period=60, backoff=Backoff(0.5), events=bus
        )
        await nursery.start(supervisor.run)
        yield Team(server, router, bus, recorder), actors
        supervisor.stop()


def echo_worker(name: str):
    def build(router, bus, opener):
        return [
            WorkerActor(
                name,
                role="worker",
                router=router,
                session=Session(model="echo"),
                open_connection=opener,
                events=bus,
            )
        ]

    return build


async def test_worker_answers_tasks_on_one_connection(autojump_clock):
    """Tasks become user messages; replies carry the final text; one socket serves them all."""
    async with team(ServerConfig(model="echo"), echo_worker("w")) as (t, (worker,)):
        replies = [await t.router.ask("test", "w", Assignment(text=f"job {n}")) for n in range(3)]
    assert ["job 0", "job 1", "job 2"] == [reply.text for reply in replies]
    assert all(isinstance(reply, AssignmentResult) for reply in replies)
    assert 6 == len(worker.session.transcript)
    assert worker.connection is not None
    assert 1 == worker.connection.statistics().sockets_opened


async def test_rotations_never_restart_the_actor(autojump_clock):
    """Connection expiry is the connection's business: hours of tasks, rotations, no restart."""
    config = ServerConfig(model="echo", max_connection_age=3600)
    async with team(config, echo_worker("w")) as (t, (worker,)):
        for n in range(40):
            await t.router.ask("test", "w", Assignment(text=f"job {n}"))
            await trio.sleep(900)
    assert len(t.recorder.of(ConnectionRotated)) >= 9
    assert [] == t.recorder.of(ActorRestarted)
    assert 0 == t.server.statistics().expiries
    assert 80 == len(worker.session.transcript)


async def test_connection_giving_up_restarts_the_actor_with_its_session(autojump_clock):
    """When the connection runs out of attempts the incarnation crashes; the supervisor
    restarts it, the pending ask fails with ActorDead, and the conversation is kept."""
    settings = ConnectionSettings(max_attempts=3, backoff_initial=0.1)
    async with team(ServerConfig(model="echo"), echo_worker("w"), settings) as (t, (worker,)):
        await t.router.ask("test", "w", Assignment(text="before"))
        before = list(worker.session.transcript)
        # The next turn loses its socket, and every reconnect is refused until the
        # connection gives up (3 attempts); the restarted actor's connection then succeeds.
        t.server.inject(Fault("abort", after_events=0))
        t.server.inject(Fault("reject", status=503, times=3))
        with pytest.raises(ActorDead):
            await t.router.ask("test", "w", Assignment(text="lost"))
        with trio.fail_after(60):
            await t.recorder.wait_for(ActorStarted, count=2)
        reply = await t.router.ask("test", "w", Assignment(text="after"))
    assert "after" == reply.text
    assert 1 == len(t.recorder.of(ActorRestarted))
    assert before == list(worker.session.transcript)[: len(before)]
    texts = [item.text for item in worker.session.transcript if isinstance(item, MessageItem)]
    assert ["before", "before", "after", "after"] == texts


async def test_crash_in_actor_code_keeps_the_session(autojump_clock):
    """An exception in the actor's own code restarts it; its transcript survives."""

    @attrs.define(eq=False)
    class Flaky(WorkerActor):
        crashes: int = 0

        async def perform(self, task: Assignment) -> AssignmentResult:
            if task.text == "boom" and self.crashes == 0:
                self.crashes += 1
                raise RuntimeError("bug in the agent's code")
            return await super().perform(task)

    def build(router, bus, opener):
        return [
            Flaky(
                "w",
                router=router,
                session=Session(model="echo"),
                open_connection=opener,
                events=bus,
            )
        ]

    async with team(ServerConfig(model="echo"), build) as (t, (worker,)):
        await t.router.ask("test", "w", Assignment(text="one"))
        with pytest.raises(ActorDead) as caught:
            await t.router.ask("test", "w", Assignment(text="boom"))
        assert isinstance(caught.value.__cause__, RuntimeError)
        with trio.fail_after(60):
            await t.recorder.wait_for(ActorStarted, count=2)
        await t.router.ask("test", "w", Assignment(text="two"))
    texts = [item.text for item in worker.session.transcript if isinstance(item, MessageItem)]
    assert ["one", "one", "two", "two"] == texts
    assert 1 == len(t.recorder.of(ActorRestarted))


async def test_planner_delegates_in_parallel(autojump_clock):
    """Several delegations in one response run at once: every worker is asked (and starts
    thinking) before any worker finishes; the replies come back as call outputs."""
    config = ServerConfig(seed=2, latency=LatencyModel(time_to_first_token=1.0))
    workers = [WorkerInfo(name, f"the {name} desk") for name in ("a", "b", "c")]

    def build(router, bus, opener):
        actors: list[AgentActor] = [
            WorkerActor(
                info.name,
                router=router,
                session=Session(model="echo"),
                open_connection=opener,
                events=bus,
            )
            for info in workers
        ]
        actors.append(
            PlannerActor(
                "boss",
                role="planner",
                router=router,
                session=Session(model="local-generic", tools=delegation_tools(workers)),
                open_connection=opener,
                events=bus,
                workers=tuple(workers),
            )
        )
        return actors

    async with team(config, build) as (t, actors):
        reply = await t.router.ask("test", "boss", Assignment(text="Do the thing"))
    events = t.recorder.events
    asked = [i for i, e in enumerate(events) if isinstance(e, MessageRouted) and e.sender == "boss"]
    thinking = [
        i
        for i, e in enumerate(events)
        if isinstance(e, AgentState) and e.agent in "abc" and e.state == "thinking"
    ]
    finished = [i for i, e in enumerate(events) if isinstance(e, TurnFinished) and e.agent in "abc"]
    assert 3 == len(asked)
    assert max(asked) < min(finished)
    assert 3 == len(thinking)
    assert max(thinking) < min(finished)
    assert reply.text.startswith(LEAD_IN)
    for name in "abc":
        assert f"\n{name}: Do the thing" in reply.text
    planner = actors[-1]
    assert isinstance(planner, PlannerActor)
    assert 3 == planner.delegations
