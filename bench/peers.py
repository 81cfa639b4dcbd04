"""Peers (issue 6, figure 2): what users would otherwise pick, on the same server and rollout.

* ``sdk``: the official ``openai`` SDK's WebSocket client (``client.responses.connect()``):
  one ``response.create`` per turn with ``previous_response_id``, every event received
  through the SDK (``recv()``, which parses each into its pydantic model), the call's
  arguments decoded and the trivial tool called, as an application would.
* ``agents``: the OpenAI Agents SDK with its Responses WebSocket transport
  (``responses_websocket_session``, i.e. ``OpenAIResponsesWSModel``): one ``Agent`` with the
  same trivial tool as a ``function_tool``, one ``Runner.run`` per rollout with
  ``auto_previous_response_id=True`` (chaining by id, not resending history). Tracing is
  disabled: it would try to export to the service.

Both are asyncio programs; each measurement is its own process::

    python -m bench.peers --variant sdk --base-url http://... --token T [--rollouts 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from bench._harness import (
    CALLS,
    MODEL,
    TOOL_DESCRIPTION,
    TOOL_OUTPUT,
    TOOL_WIRE,
    TURNS_PER_ROLLOUT,
    emit,
    rollout_result,
    time_rollouts,
)

_TOOL: Any = TOOL_WIRE  # a FunctionToolParam (a TypedDict) for the SDK


async def sdk(base_url: str, token: str, rollouts: int, warmup: int) -> dict[str, Any]:
    from openai import AsyncOpenAI

    fc_walls: list[float] = []
    text_walls: list[float] = []
    client = AsyncOpenAI(base_url=base_url, api_key=token, max_retries=0)
    async with client.responses.connect() as connection:

        async def rollout(timed: bool) -> None:
            kwargs: dict[str, Any] = {
                "input": [{"type": "message", "role": "user", "content": "go"}]
            }
            for turn in range(TURNS_PER_ROLLOUT):
                started = time.perf_counter()
                await connection.response.create(model=MODEL, store=False, tools=[_TOOL], **kwargs)
                while True:
                    event = await connection.recv()
                    if event.type == "response.completed":
                        break
                    if event.type in ("error", "response.failed"):
                        raise RuntimeError(f"SDK turn failed: {event}")
                response = event.response
                if timed:
                    (fc_walls if turn < CALLS else text_walls).append(time.perf_counter() - started)
                calls = [item for item in response.output if item.type == "function_call"]
                if not calls:
                    assert turn == CALLS, f"text at turn {turn}"
                    return
                call = calls[0]
                arguments = json.loads(call.arguments)
                output = await _lookup(**arguments)
                kwargs = {
                    "previous_response_id": response.id,
                    "input": [
                        {"type": "function_call_output", "call_id": call.call_id, "output": output}
                    ],
                }
            raise AssertionError("no text answer")

        wall, cpu = await time_rollouts(rollout, warmup=warmup, rollouts=rollouts, profile=False)
    await client.close()
    return rollout_result("sdk", rollouts, wall, cpu, fc_walls, text_walls)


async def _lookup(city: str, day: int) -> str:
    return TOOL_OUTPUT


async def agents(base_url: str, token: str, rollouts: int, warmup: int) -> dict[str, Any]:
    from agents import Agent, function_tool, set_tracing_disabled
    from agents.responses_websocket_session import responses_websocket_session

    set_tracing_disabled(True)

    @function_tool(description_override=TOOL_DESCRIPTION, strict_mode=True)
    async def lookup(city: str, day: int) -> str:
        return TOOL_OUTPUT

    agent: Agent[Any] = Agent(name="worker", tools=[lookup], model=MODEL)
    async with responses_websocket_session(api_key=token, base_url=base_url) as session:

        async def rollout() -> None:
            result = await session.run(
                agent, "go", auto_previous_response_id=True, max_turns=TURNS_PER_ROLLOUT + 5
            )
            responses = len(result.raw_responses)
            assert responses == TURNS_PER_ROLLOUT, f"{responses} model turns"

        wall, cpu = await time_rollouts(
            lambda _measured: rollout(), warmup=warmup, rollouts=rollouts, profile=False
        )
    return rollout_result("agents", rollouts, wall, cpu, [], [])


VARIANTS = {"sdk": sdk, "agents": agents}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--url", default="")
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    coroutine = VARIANTS[args.variant](args.base_url, args.token, args.rollouts, args.warmup)
    emit(asyncio.run(coroutine))


if __name__ == "__main__":
    main()
