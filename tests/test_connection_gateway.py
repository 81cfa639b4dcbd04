"""A gateway that allows one response per socket and says so with
``response_already_in_flight`` (see docs/recovery.md, "Response already in flight")."""

from __future__ import annotations

import trio

from orchestrator.core.connection import ConnectionSettings
from orchestrator.core.observe import ConnectionReconnecting, TurnRetried
from orchestrator.core.protocol import MessageItem
from orchestrator.core.server import Fault, ServerConfig
from orchestrator.core.session import Session

from .helpers import memory_agent


async def test_response_already_in_flight_moves_the_turn_to_a_new_socket(autojump_clock):
    """Our client never has two responses in flight, so a gateway answering
    response_already_in_flight disagrees with it about the socket: the turn is abandoned,
    the socket dropped, and after one backoff the turn runs once on a new socket."""
    refusal = Fault("error", error_code="response_already_in_flight", status=409)
    config = ServerConfig(model="echo", seed=1, faults=(refusal,))
    settings = ConnectionSettings(backoff_initial=0.1)
    with trio.fail_after(60):
        async with memory_agent(config, settings) as (server, connection, recorder):
            session = Session(model="local-echo")
            response = await connection.run_turn(session, [MessageItem.user("hi")])
            statistics = connection.statistics()
    assert "hi" == response.text
    assert (2, 2, 1) == (
        server.statistics().connections_opened,
        statistics.sockets_opened,
        statistics.reconnects,
    )
    assert ["response_already_in_flight"] == [event.reason for event in recorder.of(TurnRetried)]
    assert 1 == len(recorder.of(ConnectionReconnecting))
    assert ["hi", "hi"] == [item.text for item in session.transcript]
