"""The response cache and continuation (docs/protocol.md#the-connection-local-cache,
docs/protocol.md#error-codes, docs/protocol.md#warm-ups, docs/protocol.md#lanes-and-limits)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from orchestrator.core.server import Fault, LatencyModel, LocalServer, ServerConfig

from .wire import LOOKUP_TOOL, assert_error, calls_of, memory_client, output_for, types_of

SCRIPT: dict[str, Any] = {
    "on_exhausted": "cycle",
    "turns": [
        {"function_calls": [{"name": "lookup", "arguments": {"city": "Lisbon"}}]},
        {"text": "Sunny."},
    ],
}
SCRIPTED = "local-scripted"
STORES = pytest.mark.parametrize("store", [True, False], ids=["store", "no-store"])


def _server(**options: Any) -> LocalServer:
    return LocalServer.from_config(ServerConfig(script=SCRIPT, seed=1, **options))


def _id(events: list[dict[str, Any]]) -> str:
    response_id: str = events[-1]["response"]["id"]
    return response_id


def _assert_not_found(event: dict[str, Any], parent: str, stream_id: str | None = None) -> None:
    """docs/protocol.md#error-codes, exactly: 400, invalid_request_error, param
    previous_response_id, the service's message, stream_id echoed only for a named lane, no sequence
    number."""
    assert_error(
        event, 400, "previous_response_not_found", "previous_response_id", stream_id=stream_id
    )
    assert f"Previous response with id '{parent}' not found." == event["error"]["message"]
    assert "sequence_number" not in event


async def _calls(client, store: bool, **lane: Any) -> list[dict[str, Any]]:
    """A first turn that ends with one function call."""
    events = await client.turn(model=SCRIPTED, input="go", tools=[LOOKUP_TOOL], store=store, **lane)
    assert 1 == len(calls_of(events))
    return list(events)


async def _answer(client, parent: list[dict[str, Any]], store: bool, **fields: Any):
    """Continue ``parent`` with an output for each of its calls."""
    outputs = [output_for(call) for call in calls_of(parent)]
    return await client.turn(
        model=SCRIPTED,
        input=fields.pop("input", outputs),
        previous_response_id=_id(parent),
        tools=[LOOKUP_TOOL],
        store=store,
        **fields,
    )


# -- the table of docs/protocol.md#continuing-a-chain ------------------------------------------


@STORES
async def test_latest_response_of_the_same_lane_continues(store):
    """docs/protocol.md#continuing-a-chain, row 1: the lane's latest response continues, from the
    cache, either store mode."""
    server = _server()
    async with memory_client(server) as client:
        with trio.fail_after(10):
            first = await _calls(client, store)
            second = await _answer(client, first, store)
    assert "Sunny." == second[-1]["response"]["output"][0]["content"][0]["text"]
    assert 1 == server.statistics().cache_hits
    assert 0 == server.statistics().store_hydrations


@STORES
async def test_latest_response_of_another_lane_forks(store):
    """docs/protocol.md#continuing-a-chain, row 2: the latest response of another lane can be
    continued (a fork), and the source lane can still continue from it afterwards."""
    server = _server()
    async with memory_client(server) as client:
        with trio.fail_after(10):
            first = await _calls(client, store, stream_id="source")
            fork = await _answer(client, first, store, stream_id="fork")
            source = await _answer(client, first, store, stream_id="source")
    assert "response.completed" == fork[-1]["type"]
    assert "response.completed" == source[-1]["type"]
    assert all("fork" == event["stream_id"] for event in fork)


@STORES
async def test_older_response_needs_the_store(store):
    """docs/protocol.md#continuing-a-chain, row 3: a response that is no longer any lane's latest
    continues only with ``store: true`` (hydrated from the store)."""
    server = _server()
    async with memory_client(server) as client:
        with trio.fail_after(10):
            first = await _calls(client, store)
            await client.turn(model="local-echo", input="new chain", store=store)
            again = await _answer(client, first, store)
    if store:
        assert "response.completed" == again[-1]["type"]
        assert 1 == server.statistics().store_hydrations
    else:
        assert 1 == len(again)
        _assert_not_found(again[0], _id(first))


@STORES
async def test_response_of_another_connection_needs_the_store(store):
    """docs/protocol.md#continuing-a-chain, row 4 / docs/protocol.md#the-connection-local-cache:
    ``store: true`` responses are usable from any connection; ``store: false`` ones die with their
    socket."""
    server = _server()
    with trio.fail_after(10):
        async with memory_client(server) as one:
            first = await _calls(one, store)
        async with memory_client(server) as two:
            again = await _answer(two, first, store)
    if store:
        assert "response.completed" == again[-1]["type"]
        assert 1 == server.statistics().store_hydrations
    else:
        _assert_not_found(again[0], _id(first))


@STORES
async def test_warm_up_is_continued_like_any_response(store):
    """docs/protocol.md#continuing-a-chain, row 5 / docs/protocol.md#warm-ups: ``generate: false``
    sends created, in_progress, completed with ``output: []`` and ``output_tokens: 0``; its id
    continues like any response."""
    server = _server()
    async with memory_client(server) as client:
        with trio.fail_after(10):
            warm = await client.turn(
                model="local-echo",
                input=[{"role": "user", "content": "prepared context " * 10}],
                instructions="You are the planner.",
                generate=False,
                store=store,
            )
            real = await client.turn(
                model="local-echo", input="go on", previous_response_id=_id(warm), store=store
            )
    assert ["response.created", "response.in_progress", "response.completed"] == types_of(warm)
    response = warm[-1]["response"]
    assert [] == response["output"]
    assert 0 == response["usage"]["output_tokens"]
    assert response["usage"]["input_tokens"] > 10
    assert "response.completed" == real[-1]["type"]
    assert "go on" == real[-1]["response"]["output"][0]["content"][0]["text"]
    assert 1 == server.statistics().warmups
    assert 1 == server.statistics().cache_hits


@STORES
@pytest.mark.parametrize("stream_id", [None, "named"])
async def test_unknown_id_is_not_found(store, stream_id):
    """docs/protocol.md#continuing-a-chain, row 6 / docs/protocol.md#error-codes: an id that never
    existed gets ``previous_response_not_found``, with the lane's stream_id when the lane is
    named."""
    lane = {} if stream_id is None else {"stream_id": stream_id}
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            events = await client.turn(
                model="local-echo", input="x", previous_response_id="resp_nope", store=store, **lane
            )
    assert 1 == len(events)
    _assert_not_found(events[0], "resp_nope", stream_id)


# -- eviction (docs/protocol.md#eviction) ------------------------------------------------------


async def test_failed_continuation_on_the_same_lane_evicts_the_parent():
    """docs/protocol.md#eviction: a 4xx on a same-lane continuation evicts the parent; with
    ``store: false`` the corrected retry then gets ``previous_response_not_found``."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            first = await _calls(client, False)
            bad = await _answer(client, first, False, input=[output_for({"call_id": "call_x"})])
            retry = await _answer(client, first, False)
    assert_error(bad[0], 400, "invalid_value", "input")
    _assert_not_found(retry[0], _id(first))


async def test_failed_cross_lane_fork_keeps_the_parent():
    """docs/protocol.md#eviction: a fork that errors keeps the shared parent, so the source lane
    goes on."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            first = await _calls(client, False, stream_id="source")
            bad = await _answer(
                client, first, False, input=[output_for({"call_id": "call_x"})], stream_id="fork"
            )
            source = await _answer(client, first, False, stream_id="source")
    assert_error(bad[0], 400, "invalid_value", "input", stream_id="fork")
    assert "response.completed" == source[-1]["type"]


async def test_new_response_replaces_the_lane_slot():
    """docs/protocol.md#eviction: a new chain on a lane replaces its latest response; with
    ``store: false`` the old one is gone, the new one continues."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            first = await _calls(client, False, stream_id="a")
            second = await _calls(client, False, stream_id="a")
            old = await _answer(client, first, False, stream_id="a")
            new = await _answer(client, second, False, stream_id="a")
    _assert_not_found(old[0], _id(first), "a")
    assert "response.completed" == new[-1]["type"]


async def test_continuation_advances_the_slot_past_the_parent():
    """docs/protocol.md#eviction: once a continuation starts, its parent is no longer the lane's
    latest."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            first = await _calls(client, False)
            await _answer(client, first, False)
            again = await _answer(client, first, False)
    _assert_not_found(again[0], _id(first))


async def test_failed_response_evicts_its_parent():
    """docs/protocol.md#eviction (the embedded server's choice): a continuation ending in
    ``response.failed`` evicts the parent, like a 5xx, and a failed response cannot be continued."""
    server = _server(faults=(Fault("fail", response=2, after_events=2),))
    async with memory_client(server) as client:
        with trio.fail_after(10):
            first = await _calls(client, True)
            failed = await _answer(client, first, False)
            from_failed = await _answer(client, failed, False, input="x")
            retry = await _answer(client, first, False)
    assert "response.failed" == failed[-1]["type"]
    _assert_not_found(from_failed[0], _id(failed))
    # store=true keeps the parent in the store, so only the cache slot was evicted.
    assert "response.completed" == retry[-1]["type"]
    assert 1 == server.statistics().store_hydrations


async def test_dangling_function_call_output_is_refused():
    """docs/protocol.md#input-items (the embedded server's choice): an output whose call_id matches
    no call in the effective context is a 400 with param ``input``, also without a parent."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            events = await client.turn(
                model=SCRIPTED, input=[output_for({"call_id": "call_nowhere"})]
            )
    assert 1 == len(events)
    assert_error(events[0], 400, "invalid_value", "input")
    assert "call_nowhere" in events[0]["error"]["message"]


async def test_continuation_missing_a_tool_output_is_refused_and_evicts():
    """docs/protocol.md#input-items: continuing without an output for every call is a 400 with param
    ``input`` and evicts the parent (docs/protocol.md#eviction)."""
    async with memory_client(_server()) as client:
        with trio.fail_after(10):
            first = await _calls(client, False)
            missing = await _answer(client, first, False, input="no outputs")
            retry = await _answer(client, first, False)
    assert_error(missing[0], 400, "invalid_value", "input")
    _assert_not_found(retry[0], _id(first))


async def test_missing_tool_outputs_can_be_allowed():
    """``require_tool_outputs=False`` lets a continuation skip tool outputs."""
    async with memory_client(_server(require_tool_outputs=False)) as client:
        with trio.fail_after(10):
            first = await _calls(client, False)
            events = await _answer(client, first, False, input="skip them")
    assert "response.completed" == events[-1]["type"]


# -- forks (docs/protocol.md#forks) ------------------------------------------------------------


async def test_fork_waiting_in_a_queue_loses_its_parent_when_the_source_advances(
    autojump_clock,
):
    """docs/protocol.md#forks: with ``store: false`` a fork needs its parent cached when it
    *starts*; if the source lane advances while the fork waits behind a busy lane, the fork
    fails."""
    server = _server(latency=LatencyModel(time_to_first_token=10))
    async with memory_client(server) as client:
        with trio.fail_after(100):
            first = await _calls(client, False, stream_id="source")
            await client.create(model="local-echo", input="busy", stream_id="fork")
            outputs = [output_for(call) for call in calls_of(first)]
            fork = {
                "model": SCRIPTED,
                "input": outputs,
                "previous_response_id": _id(first),
                "tools": [LOOKUP_TOOL],
                "store": False,
            }
            await client.create(**fork, stream_id="fork")  # queued behind "busy"
            await client.create(**fork, stream_id="source")  # the source advances now
            source = await client.response("source")
            busy = await client.response("fork")
            late = await client.response("fork")
    assert "response.completed" == source[-1]["type"]
    assert "response.completed" == busy[-1]["type"]
    _assert_not_found(late[0], _id(first), "fork")


async def test_fork_that_started_survives_the_source_advancing(autojump_clock):
    """docs/protocol.md#forks, the barrier: once the fork reported ``response.in_progress``, the
    source lane may advance and both complete."""
    server = _server(latency=LatencyModel(time_to_first_token=10))
    async with memory_client(server) as client:
        with trio.fail_after(100):
            first = await _calls(client, False, stream_id="source")
            outputs = [output_for(call) for call in calls_of(first)]
            fork = {
                "model": SCRIPTED,
                "input": outputs,
                "previous_response_id": _id(first),
                "tools": [LOOKUP_TOOL],
                "store": False,
            }
            await client.create(**fork, stream_id="fork")
            while (await client.receive())["type"] != "response.in_progress":
                pass
            await client.create(**fork, stream_id="source")
            fork_events = await client.response("fork")
            source = await client.response("source")
    assert "response.completed" == fork_events[-1]["type"]
    assert "response.completed" == source[-1]["type"]
