"""Determinism and the latency model (docs/protocol.md#determinism-and-latency), under trio's
MockClock."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from orchestrator.core.server import LatencyModel, LocalServer, ServerConfig

from .wire import LOOKUP_TOOL, calls_of, memory_client, output_for

SCRIPT: dict[str, Any] = {
    "on_exhausted": "cycle",
    "turns": [
        {
            "reasoning": "Plan.",
            "function_calls": [{"name": "lookup", "arguments": {"city": "Faro"}}],
        },
        {"text": "Faro is hot."},
    ],
}


async def _conversation(seed: int | None) -> list[dict[str, Any]]:
    server = LocalServer.from_config(ServerConfig(script=SCRIPT, seed=seed))
    async with memory_client(server) as client:
        with trio.fail_after(10):
            first = await client.turn(model="local-scripted", input="go", tools=[LOOKUP_TOOL])
            await client.turn(
                model="local-scripted",
                input=[output_for(call) for call in calls_of(first)],
                previous_response_id=first[-1]["response"]["id"],
                tools=[LOOKUP_TOOL],
            )
        async with memory_client(server) as second:
            await second.turn(model="local-generic", input="Weather in Porto?", tools=[LOOKUP_TOOL])
    return [*client.received, *second.received]


def _without_clock(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events with the wall-clock fields (created_at, completed_at) removed."""
    stripped = []
    for event in events:
        if "response" in event:
            response = {k: v for k, v in event["response"].items() if not k.endswith("_at")}
            event = {**event, "response": response}
        stripped.append(event)
    return stripped


async def test_same_seed_gives_the_same_ids_and_outputs():
    """docs/protocol.md#determinism-and-latency: with a seed, two runs produce identical events (ids
    included), connection by connection."""
    one = await _conversation(seed=7)
    two = await _conversation(seed=7)
    assert _without_clock(one) == _without_clock(two)
    other = await _conversation(seed=8)
    assert _without_clock(one) != _without_clock(other)
    ids = [e["response"]["id"] for e in one if e["type"] == "response.completed"]
    assert 3 == len(set(ids))


async def test_without_a_seed_ids_differ():
    """Without a seed, ids are random (two runs differ) but outputs are the same."""
    one = await _conversation(seed=None)
    two = await _conversation(seed=None)
    assert one[-1]["response"]["id"] != two[-1]["response"]["id"]
    texts = [e.get("delta") for e in one]
    assert texts == [e.get("delta") for e in two]


async def _timed_turn(client, **fields: Any) -> tuple[dict[float, list[str]], dict[str, Any]]:
    start = trio.current_time()
    await client.create(**fields)
    times: dict[float, list[str]] = {}
    while True:
        event = await client.receive()
        times.setdefault(trio.current_time() - start, []).append(event["type"])
        if event["type"] in ("response.completed", "error"):
            return times, event


async def test_time_to_first_token_and_pacing(autojump_clock):
    """Latency model: created and in_progress at once, the first output after
    ``time_to_first_token``, then one delta every 1/tokens_per_second."""
    latency = LatencyModel(time_to_first_token=2, tokens_per_second=4)
    server = LocalServer.from_config(ServerConfig(model="echo", latency=latency))
    async with memory_client(server) as client:
        with trio.fail_after(60):
            times, _ = await _timed_turn(client, input="one two three")
    assert ["response.created", "response.in_progress"] == times[0]
    assert ["response.output_item.added", "response.content_part.added"] == times[2][:2]
    deltas = {at: types.count("response.output_text.delta") for at, types in times.items()}
    assert {2.25: 1, 2.5: 1, 2.75: 1} == {at: n for at, n in deltas.items() if n}
    assert "response.completed" in times[2.75]


async def test_input_tokens_cost_only_when_not_cached(autojump_clock):
    """Latency model: ``seconds_per_input_token`` is charged on uncached tokens only, so a
    warm-up makes the next turn cheaper, and the usage reports the cached tokens."""
    latency = LatencyModel(seconds_per_input_token=0.01)
    server = LocalServer.from_config(ServerConfig(model="echo", latency=latency))
    context = [{"role": "user", "content": "word " * 400}]  # 500 tokens at 4 chars a token
    async with memory_client(server) as cold, memory_client(server) as warm:
        with trio.fail_after(600):
            cold_times, cold_done = await _timed_turn(
                cold, input=[*context, {"role": "user", "content": "go"}]
            )
            warm_times, warm_up = await _timed_turn(warm, input=context, generate=False)
            hot_times, hot_done = await _timed_turn(
                warm,
                input=[{"role": "user", "content": "go"}],
                previous_response_id=warm_up["response"]["id"],
            )
    assert pytest.approx(5.01) == max(cold_times)  # 501 uncached tokens
    assert pytest.approx(5.0) == max(warm_times)  # the warm-up pays for the context once
    assert pytest.approx(0.01) == max(hot_times)  # the next turn pays only for its own input
    assert 0 == cold_done["response"]["usage"]["input_tokens_details"]["cached_tokens"]
    hot_usage = hot_done["response"]["usage"]
    assert 500 == hot_usage["input_tokens_details"]["cached_tokens"]
    assert 501 == hot_usage["input_tokens"]
