"""Regression tests from the concurrency review of connection, session, run and actors."""

from __future__ import annotations

import trio

from orchestrator.connection import ConnectionSettings
from orchestrator.protocol.events import MessageItem
from orchestrator.server import Fault, ServerConfig
from orchestrator.session import Session

from .helpers import memory_agent

ROTATING = ConnectionSettings(rotation_margin=300, warmup_lead=30, backoff_initial=0.1)


async def test_standby_lost_during_its_warm_up_does_not_crash_the_connection(autojump_clock):
    """A standby socket that breaks while warming up is dropped with a warning; the error
    stays out of the connection's nursery and the next turn rotates to a fresh socket."""
    fault = Fault("abort", connection=2, response=1, after_events=1)
    config = ServerConfig(model="echo", max_connection_age=3600, faults=(fault,))
    async with memory_agent(config, ROTATING) as (server, connection, _recorder):
        session = Session(model="echo")
        await connection.run_turn(session, [MessageItem.user("one")])
        await trio.sleep(3300)  # the standby was prepared at 3270 s and lost
        response = await connection.run_turn(session, [MessageItem.user("two")])
    assert "two" == response.text
    assert 4 == len(session.transcript)
    assert 1 == server.statistics().faults_fired
