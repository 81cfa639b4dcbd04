"""Runs over HTTP (issue 15): the same plan, forced onto HTTP by the run or the plan, or
falling back to it from an endpoint without WebSocket mode, ends with the same answer."""

# Asserts read ``expected == actual``, the expected constant first (docs/faults.md#test-hygiene).

from __future__ import annotations

from pathlib import Path

import msgspec
import trio

from orchestrator.core.observe import TransportFellBack
from orchestrator.runner import EmbeddedServer, RunResult, RunSettings, run
from plans import load_plan
from tests.helpers import Recorder

TRIP = Path(__file__).resolve().parents[1] / "orchestrator" / "examples" / "trip" / "plan.toml"
MEMORY = EmbeddedServer(transport="memory")
NO_WEBSOCKET = EmbeddedServer(config={"websocket": False}, transport="memory")


def _transports(result: RunResult) -> dict[str, str]:
    return {a.name: a.connection.transport for a in result.agents if a.connection is not None}


async def test_a_run_forced_onto_http_gives_the_same_answer():
    """``RunSettings(transport="http")``: every agent posts its turns, no socket is opened,
    and the answer is the WebSocket run's."""
    with trio.fail_after(60):
        reference = await run(TRIP, embedded=MEMORY, store=None)
        result = await run(
            TRIP, settings=RunSettings(transport="http"), embedded=MEMORY, store=None
        )
    assert ("completed", reference.answer) == (result.status, result.answer)
    assert {"http"} == set(_transports(result).values())
    assert {0} == {a.connection.sockets_opened for a in result.agents if a.connection}
    turns = {a.name: a.turns for a in result.agents}
    assert turns == {a.name: a.connection.http_requests for a in result.agents if a.connection}


async def test_a_plan_may_name_its_transport():
    """``[settings] transport = "http"`` in the plan does the same; the run's own setting
    wins over it."""
    plan = load_plan(TRIP)
    over_http = msgspec.structs.replace(
        plan, settings=msgspec.structs.replace(plan.settings, transport="http")
    )
    with trio.fail_after(60):
        result = await run(over_http, embedded=MEMORY, store=None)
        overridden = await run(
            over_http, settings=RunSettings(transport="websocket"), embedded=MEMORY, store=None
        )
    assert {"http"} == set(_transports(result).values())
    assert {"websocket"} == set(_transports(overridden).values())
    assert result.answer == overridden.answer


async def test_a_run_falls_back_from_an_endpoint_without_websocket_mode():
    """The endpoint answers upgrades with 426: each agent goes on over HTTP after its first
    attempt (one ``connection.fell_back`` each), and the run completes as usual."""
    recorder = Recorder()
    with trio.fail_after(60):
        reference = await run(TRIP, embedded=MEMORY, store=None)
        result = await run(TRIP, embedded=NO_WEBSOCKET, events=recorder, store=None)
    assert ("completed", reference.answer) == (result.status, result.answer)
    assert {"http"} == set(_transports(result).values())
    fell_back = sorted(event.agent for event in recorder.of(TransportFellBack))
    assert sorted(_transports(result)) == fell_back


async def test_a_forced_websocket_run_fails_clearly_on_such_an_endpoint():
    """With the transport forced to ``websocket`` the same endpoint fails the run with the
    426 refusal, not a hang or a silent switch."""
    with trio.fail_after(60):
        result = await run(
            TRIP, settings=RunSettings(transport="websocket"), embedded=NO_WEBSOCKET, store=None
        )
    assert "failed" == result.status
    assert result.reason is not None
    assert "426" in result.reason
