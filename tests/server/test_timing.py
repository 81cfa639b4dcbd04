"""Determinism and the latency model (docs/protocol.md#determinism-and-latency), under trio's
MockClock."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from orchestrator.core.server import LatencyModel, LocalServer, ServerConfig
from orchestrator.errors import ConfigurationError

from .wire import LOOKUP_TOOL, calls_of, memory_client, memory_http_client, output_for

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


# -- request costs: HTTP next to WebSocket ------------------------------------------------------

CONTEXT = "word " * 800  # 4,000 characters: 1,000 tokens at four characters a token
COSTS = LatencyModel(
    http_request_seconds=0.5,
    websocket_request_seconds=0.25,
    seconds_per_sent_token=0.001,
    seconds_per_rehydrated_token=0.0005,
    seconds_per_input_token=0.002,
    time_to_first_token=1.0,
)


async def _timed_post(client, **fields: Any) -> tuple[float, float, dict[str, Any]]:
    """A streamed POST: when its first event and its first output item arrived (seconds
    after it was sent) and its terminal event."""
    start = trio.current_time()
    await client.send_request(body={"model": "local-echo", "stream": True, **fields})
    assert 200 == (await client.head()).status_code
    times: dict[str, float] = {}
    while (event := await client.event()) is not None:
        times.setdefault(event.name, trio.current_time() - start)
        last = event.json()
    return times["response.created"], times["response.output_item.added"], last


async def _timed_create(client, **fields: Any) -> tuple[float, float, dict[str, Any]]:
    """The same for a WebSocket create."""
    times, done = await _timed_turn(client, **fields)
    arrivals = {kind: at for at, kinds in sorted(times.items()) for kind in reversed(kinds)}
    return arrivals["response.created"], arrivals["response.output_item.added"], done


def _usage(done: dict[str, Any]) -> tuple[int, int]:
    usage = done["response"]["usage"]
    return usage["input_tokens"], usage["input_tokens_details"]["cached_tokens"]


async def test_an_http_request_pays_its_request_costs_then_its_input(autojump_clock):
    """An HTTP request carrying 1,000 tokens: its first event comes after the fixed HTTP
    cost and the parsing of every token sent (0.5 + 1000 x 0.001 = 1.5 s), its first output
    after reading the uncached input and the time to first token (+ 1000 x 0.002 + 1)."""
    server = LocalServer.from_config(ServerConfig(latency=COSTS))
    async with memory_http_client(server) as client:
        with trio.fail_after(60):
            created, output, done = await _timed_post(
                client, input=[{"role": "user", "content": CONTEXT}]
            )
    assert pytest.approx(1.5) == created
    assert pytest.approx(4.5) == output
    assert (1000, 0) == _usage(done)


FULL_HISTORY = [
    {"role": "user", "content": CONTEXT},  # 1,000 tokens
    {"role": "assistant", "content": "done"},  # 1 token: the model's last output
    {"role": "user", "content": "go"},  # 1 token: the only new item
]


@pytest.mark.parametrize(("miss_rate", "cached"), [(0.0, 1001), (1.0, 0)])
async def test_a_replayed_conversation_hits_or_misses_the_prompt_cache(
    autojump_clock, miss_rate, cached
):
    """HTTP with the whole conversation as input: every token sent is parsed (1,002); on a
    prompt-cache hit only what follows the model's last output is read (1 token), on a miss
    every token is (``cache_miss_rate`` 1), and the usage says which."""
    latency = attrs.evolve(COSTS, cache_miss_rate=miss_rate)
    server = LocalServer.from_config(ServerConfig(latency=latency))
    async with memory_http_client(server) as client:
        with trio.fail_after(60):
            created, output, done = await _timed_post(client, input=FULL_HISTORY)
    assert pytest.approx(0.5 + 1002 * 0.001) == created
    assert pytest.approx(created + (1002 - cached) * 0.002 + 1.0) == output
    assert (1002, cached) == _usage(done)
    assert int(miss_rate) == server.statistics().prompt_cache_misses


async def test_an_http_continuation_by_id_pays_for_rehydrating_its_chain(autojump_clock):
    """HTTP with ``previous_response_id``: the request carries one token but loads the
    stored chain (1,000 tokens in, 1,000 echoed out: 2,000 x 0.0005 s); the prompt cache
    holds the chain, so only the new token is read."""
    server = LocalServer.from_config(ServerConfig(latency=COSTS))
    async with memory_http_client(server) as client:
        with trio.fail_after(60):
            *_, first = await _timed_post(client, input=CONTEXT, store=True)
            created, output, done = await _timed_post(
                client, input="go", previous_response_id=first["response"]["id"]
            )
    assert pytest.approx(0.5 + 1 * 0.001 + 2000 * 0.0005) == created
    assert pytest.approx(created + 1 * 0.002 + 1.0) == output
    assert (2001, 2000) == _usage(done)


async def test_a_websocket_continuation_pays_only_for_its_new_items(autojump_clock):
    """A WebSocket continuation from the connection cache: the fixed WebSocket cost and
    the one token it carries; nothing to rehydrate, nothing cached to read again. The same
    continuation on a new socket loads the chain from the store (and reads it all)."""
    server = LocalServer.from_config(ServerConfig(latency=COSTS))
    async with memory_client(server) as ws, memory_client(server) as other:
        with trio.fail_after(60):
            *_, first = await _timed_create(ws, input=CONTEXT, store=True)
            previous = first["response"]["id"]
            warm = await _timed_create(ws, input="go", previous_response_id=previous)
            cold = await _timed_create(other, input="go", previous_response_id=previous)
    created, output, done = warm
    assert pytest.approx(0.25 + 1 * 0.001) == created
    assert pytest.approx(created + 1 * 0.002 + 1.0) == output
    assert (2001, 2000) == _usage(done)
    created, output, done = cold
    assert pytest.approx(0.25 + 1 * 0.001 + 2000 * 0.0005) == created
    assert pytest.approx(created + 2001 * 0.002 + 1.0) == output
    assert (2001, 0) == _usage(done)


async def _cached_sequence(seed: int | None) -> list[int]:
    latency = LatencyModel(cache_miss_rate=0.5)
    server = LocalServer.from_config(ServerConfig(latency=latency, seed=seed))
    cached = []
    async with memory_http_client(server) as client:
        for _ in range(24):
            reply = await client.post(input=FULL_HISTORY)
            cached.append(reply.json()["usage"]["input_tokens_details"]["cached_tokens"])
    assert cached.count(0) == server.statistics().prompt_cache_misses
    return cached


async def test_cache_misses_are_drawn_from_the_seed():
    """``cache_miss_rate`` 0.5: which requests miss depends on the seed alone (the same
    seed, the same misses; no seed is seed 0), and both outcomes happen."""
    one = await _cached_sequence(7)
    assert one == await _cached_sequence(7)
    assert {0, 1001} == set(one)
    assert one != await _cached_sequence(8)
    assert await _cached_sequence(None) == await _cached_sequence(0)


def test_the_latency_model_adds_its_costs():
    """``request_seconds`` and ``input_seconds`` are the documented sums; a warm-up does
    not wait for a first token."""
    assert pytest.approx(0.5 + 10 * 0.001 + 20 * 0.0005) == COSTS.request_seconds(
        http=True, sent_tokens=10, rehydrated_tokens=20
    )
    assert pytest.approx(0.25 + 10 * 0.001) == COSTS.request_seconds(
        http=False, sent_tokens=10, rehydrated_tokens=0
    )
    assert pytest.approx(5 * 0.002 + 1.0) == COSTS.input_seconds(5, generate=True)
    assert pytest.approx(5 * 0.002) == COSTS.input_seconds(5, generate=False)
    assert LatencyModel(cache_miss_rate=0.5).is_zero
    assert not LatencyModel(http_request_seconds=0.1).is_zero


@pytest.mark.parametrize(
    "options",
    [
        {"http_request_seconds": -1},
        {"websocket_request_seconds": -0.1},
        {"seconds_per_sent_token": -1},
        {"seconds_per_rehydrated_token": float("nan")},
        {"cache_miss_rate": 1.5},
        {"cache_miss_rate": -0.1},
    ],
)
def test_bad_request_costs_are_refused(options):
    """A negative (or NaN) cost, or a miss rate outside 0..1, is a configuration error
    naming the field."""
    with pytest.raises(ConfigurationError, match=next(iter(options))):
        LatencyModel(**options)


async def test_a_chain_counts_each_turn_once(autojump_clock):
    """A chain's input is its turns so far, each counted once however long the chain: the
    third turn of 1,000 tokens in, 1,000 echoed, then "go" and "go" echoed, reads
    2,000 + 2 + 1 tokens (a stored chain that counted its parent twice would read 4,003, and
    its rehydration and cache-miss costs would grow twice as fast every turn)."""
    server = LocalServer.from_config(ServerConfig(latency=COSTS))
    async with memory_client(server) as ws:
        with trio.fail_after(60):
            *_, first = await _timed_create(ws, input=CONTEXT, store=True)
            *_, second = await _timed_create(
                ws, input="go", previous_response_id=first["response"]["id"]
            )
            *_, third = await _timed_create(
                ws, input="go", previous_response_id=second["response"]["id"]
            )
    assert (2001, 2000) == _usage(second)
    assert (2003, 2002) == _usage(third)
