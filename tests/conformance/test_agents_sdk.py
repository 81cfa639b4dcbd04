"""Conformance: the OpenAI Agents SDK's ``output_type`` agents against the embedded server.

The Agents SDK sends an agent's ``output_type`` as ``text.format`` (``json_schema``, strict)
and parses the final text into that type: against a server that ignored the schema it failed
with "Invalid JSON when parsing model output". The generic model now answers JSON valid
against the schema, so these agents run offline, with tools, with the SDK's model settings,
over its Responses WebSocket transport (``responses_websocket_session``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import TYPE_CHECKING, Any, Final, Literal

import pydantic
import pytest
from agents import Agent, ModelSettings, function_tool, set_tracing_disabled
from agents.responses_websocket_session import responses_websocket_session
from openai.types.shared import Reasoning

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from orchestrator.core.server import RunningServer

pytestmark = pytest.mark.timeout(60)

MODEL: Final = "local-generic-1"
SCENARIO_TIMEOUT: Final = 20.0


class Weather(pydantic.BaseModel):
    city: str
    high_c: float
    conditions: list[str]


@dataclasses.dataclass
class Trip:
    destination: str
    nights: int
    style: Literal["city", "beach"]


@function_tool
def forecast(city: str) -> str:
    """Today's forecast for a city, as JSON.

    Args:
        city: the city.
    """
    return json.dumps({"city": city, "high_c": 24.5, "conditions": ["sunny", "breezy"]})


def scenario(server: RunningServer, body: Any) -> Any:
    """Run ``body(session)`` in a fresh asyncio loop on a WebSocket session to ``server``."""
    set_tracing_disabled(True)  # tracing would export to the service

    async def main() -> Any:
        async with responses_websocket_session(
            api_key=server.token, base_url=server.base_url
        ) as session:
            return await asyncio.wait_for(body(session), SCENARIO_TIMEOUT)

    coroutine: Coroutine[Any, Any, Any] = main()
    return asyncio.run(coroutine)


def test_an_output_type_agent_gets_its_type(local_server: RunningServer) -> None:
    """A pydantic output_type: final_output is a Weather parsed from the server's JSON."""
    agent: Agent[Any] = Agent(name="meteo", model=MODEL, output_type=Weather)

    async def body(session: Any) -> Any:
        return (await session.run(agent, "Weather in Lisbon?")).final_output

    output = scenario(local_server, body)
    assert isinstance(output, Weather)
    assert "Lisbon" == output.city


def test_an_output_type_agent_with_a_tool_answers_from_its_result(
    local_server: RunningServer,
) -> None:
    """With a tool: the model calls it, then answers a Weather whose fields are the tool's."""
    agent: Agent[Any] = Agent(name="meteo", model=MODEL, tools=[forecast], output_type=Weather)

    async def body(session: Any) -> Any:
        result = await session.run(agent, "Weather in Porto?")
        return result.final_output, len(result.raw_responses)

    output, responses = scenario(local_server, body)
    assert Weather(city="Porto", high_c=24.5, conditions=["sunny", "breezy"]) == output
    assert 2 == responses


def test_dataclass_and_non_object_output_types(local_server: RunningServer) -> None:
    """A dataclass with an enum, and a list (which the SDK wraps in an object): both parse."""
    trip: Agent[Any] = Agent(name="trip", model=MODEL, output_type=Trip)
    names: Agent[Any] = Agent(name="names", model=MODEL, output_type=list[str])

    async def body(session: Any) -> Any:
        first = await session.run(trip, "A 3-night city break in Lisbon")
        second = await session.run(names, "Three sights in Lisbon")
        return first.final_output, second.final_output

    planned, listed = scenario(local_server, body)
    assert Trip(destination="Lisbon", nights=3, style="city") == planned
    assert isinstance(listed, list)
    assert all(isinstance(name, str) for name in listed)


def test_model_settings_are_accepted_and_tool_choice_required_is_honoured(
    local_server: RunningServer,
) -> None:
    """The SDK's model settings (temperature, top_p, reasoning, truncation, metadata,
    parallel_tool_calls, tool_choice="required") are accepted; required makes the first
    turn call the tool, and the SDK's reset lets the typed answer follow."""
    settings = ModelSettings(
        temperature=0.2,
        top_p=0.9,
        reasoning=Reasoning(effort="low"),
        truncation="auto",
        metadata={"team": "meteo"},
        parallel_tool_calls=False,
        tool_choice="required",
        max_tokens=400,
    )
    agent: Agent[Any] = Agent(
        name="meteo", model=MODEL, tools=[forecast], output_type=Weather, model_settings=settings
    )

    async def body(session: Any) -> Any:
        result = await session.run(agent, "Weather in Faro?")
        kinds = [item.type for item in result.new_items]
        return result.final_output, kinds

    output, kinds = scenario(local_server, body)
    assert "tool_call_item" == kinds[0]
    assert Weather(city="Faro", high_c=24.5, conditions=["sunny", "breezy"]) == output
