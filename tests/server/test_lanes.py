"""Lanes (docs/protocol.md#lanes-and-limits): FIFO inside a lane, concurrency across lanes, the
16-active and 32-name caps, invalid ids, strict single flight. In memory, under trio's MockClock."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from orchestrator.core.server import LatencyModel, LocalServer, ServerConfig

from .wire import assert_error, memory_client, types_of


def _server(**options: Any) -> LocalServer:
    return LocalServer.from_config(ServerConfig(model="echo", seed=1, **options))


async def _collect(client, terminals: int) -> list[tuple[float, dict[str, Any]]]:
    """(virtual time, event) for every event until ``terminals`` terminal events arrived."""
    seen: list[tuple[float, dict[str, Any]]] = []
    done = 0
    while done < terminals:
        event = await client.receive()
        seen.append((trio.current_time(), event))
        if event["type"] in ("response.completed", "error", "response.failed"):
            done += 1
    return seen


async def test_second_create_on_a_busy_lane_waits_its_turn(autojump_clock):
    """docs/protocol.md#lanes-and-limits: requests on one lane run FIFO and never overlap; the
    second is answered after the first's terminal event."""
    server = _server(latency=LatencyModel(time_to_first_token=5))
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.create(input="first")
            await client.create(input="second")
            seen = await _collect(client, 2)
    events = [event for _, event in seen]
    assert 2 * [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ] == types_of(events)
    texts = [
        e["response"]["output"][0]["content"][0]["text"]
        for e in events
        if e["type"] == "response.completed"
    ]
    assert ["first", "second"] == texts
    times = [at for at, event in seen if event["type"] == "response.created"]
    assert [0, 5] == times


async def test_lanes_run_concurrently_and_interleave(autojump_clock):
    """docs/protocol.md#lanes-and-limits: different lanes run at once; with paced output their
    events interleave."""
    server = _server(latency=LatencyModel(tokens_per_second=1))
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.create(input="a b c d", stream_id="left")
            await client.create(input="e f g h", stream_id="right")
            seen = await _collect(client, 2)
    deltas: dict[float, list[str]] = {}
    for at, event in seen:
        if "delta" in event["type"]:
            deltas.setdefault(at, []).append(event["stream_id"])
    # One delta of each lane every second (which lane goes first within a tick is trio's).
    assert {
        1: ["left", "right"],
        2: ["left", "right"],
        3: ["left", "right"],
        4: ["left", "right"],
    } == {at: sorted(lanes) for at, lanes in deltas.items()}
    finished = [at for at, event in seen if event["type"] == "response.completed"]
    assert [4, 4] == finished  # concurrent: both take 4 s, not 8 s in all
    for lane in ("left", "right"):
        numbers = [e["sequence_number"] for _, e in seen if e["stream_id"] == lane]
        assert list(range(len(numbers))) == numbers


async def test_at_most_16_responses_are_active_per_connection(autojump_clock):
    """docs/protocol.md#lanes-and-limits: the 17th create (on its own lane) is accepted but starts
    only when one of the 16 running responses finishes."""
    server = _server(latency=LatencyModel(time_to_first_token=10))
    async with memory_client(server) as client:
        with trio.fail_after(60):
            for lane in range(17):
                await client.create(input=f"lane {lane}", stream_id=f"lane-{lane}")
            seen = await _collect(client, 17)
    started = {e["stream_id"]: at for at, e in seen if e["type"] == "response.created"}
    assert {f"lane-{n}": 0 for n in range(16)} | {"lane-16": 10} == started
    finished = [at for at, e in seen if e["type"] == "response.completed"]
    assert [10] * 16 + [20] == finished


async def test_active_cap_is_configurable(autojump_clock):
    """docs/protocol.md#lanes-and-limits (the embedded server's choice): ``max_active_responses``
    sets the cap."""
    server = _server(max_active_responses=2, latency=LatencyModel(time_to_first_token=10))
    async with memory_client(server) as client:
        with trio.fail_after(60):
            for lane in range(3):
                await client.create(input="x", stream_id=f"l{lane}")
            seen = await _collect(client, 3)
    assert [0, 0, 10] == [at for at, e in seen if e["type"] == "response.created"]


async def test_33rd_named_lane_is_refused(autojump_clock):
    """docs/protocol.md#lanes-and-limits, docs/protocol.md#error-codes: 32 distinct stream ids per
    connection; the 33rd gets ``websocket_stream_limit_reached`` carrying the rejected id; existing
    lanes and the default lane keep working."""
    server = _server()
    async with memory_client(server) as client:
        with trio.fail_after(60):
            for lane in range(32):
                events = await client.turn(input="x", stream_id=f"lane-{lane}")
                assert "response.completed" == events[-1]["type"]
            await client.create(input="x", stream_id="lane-32")
            assert_error(
                await client.receive(),
                400,
                "websocket_stream_limit_reached",
                "stream_id",
                stream_id="lane-32",
            )
            again = await client.turn(input="x", stream_id="lane-0")
            default = await client.turn(input="x")
    assert "response.completed" == again[-1]["type"]
    assert "response.completed" == default[-1]["type"]


async def test_named_lane_cap_is_configurable(autojump_clock):
    """docs/protocol.md#lanes-and-limits (the embedded server's choice): ``max_named_lanes`` sets
    the cap (the default lane never counts)."""
    server = _server(max_named_lanes=1)
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.turn(input="x", stream_id="one")
            await client.create(input="x", stream_id="two")
            assert_error(
                await client.receive(),
                400,
                "websocket_stream_limit_reached",
                "stream_id",
                stream_id="two",
            )


@pytest.mark.parametrize(
    "stream_id",
    ["", "has space", "slash/no", "ü", "a" * 257],
    ids=["empty", "space", "slash", "unicode", "257"],
)
async def test_invalid_stream_id(autojump_clock, stream_id):
    """docs/protocol.md#error-codes: not 1-256 chars of [A-Za-z0-9_.-] gets ``invalid_stream_id``,
    without ``stream_id`` (the id is invalid), and does not use up a lane."""
    server = _server(max_named_lanes=1)
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.create(input="x", stream_id=stream_id)
            assert_error(await client.receive(), 400, "invalid_stream_id", "stream_id")
            events = await client.turn(input="x", stream_id="ok")
    assert "response.completed" == events[-1]["type"]


async def test_longest_valid_stream_id_is_accepted(autojump_clock):
    """docs/protocol.md#creating-a-response: 256 characters of the allowed alphabet is a valid lane
    id."""
    lane = ("Az09_.-" * 40)[:256]
    async with memory_client(_server()) as client:
        with trio.fail_after(60):
            events = await client.turn(input="x", stream_id=lane)
    assert all(lane == event["stream_id"] for event in events)


@pytest.mark.parametrize("stream_id", [None, "main"])
async def test_strict_single_flight_refuses_a_second_create(autojump_clock, stream_id):
    """docs/protocol.md#error-codes: in ``strict_single_flight`` mode a create on a busy lane gets
    409 ``response_already_in_flight`` (with the lane's ``stream_id``) and the running response
    completes untouched."""
    server = _server(strict_single_flight=True, latency=LatencyModel(time_to_first_token=5))
    lane = {} if stream_id is None else {"stream_id": stream_id}
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.create(input="first", **lane)
            assert "response.created" == (await client.receive())["type"]
            await client.create(input="second", **lane)
            rest = [event for _, event in await _collect(client, 2)]
    (error,) = [e for e in rest if e["type"] == "error"]
    assert_error(error, 409, "response_already_in_flight", None, stream_id=stream_id)
    assert "sequence_number" not in error
    completed = [e for e in rest if e["type"] == "response.completed"]
    assert ["first"] == [e["response"]["output"][0]["content"][0]["text"] for e in completed]
    assert 1 == server.statistics().responses_completed


async def test_strict_single_flight_allows_other_lanes(autojump_clock):
    """docs/protocol.md#error-codes: strict single flight is per lane: another lane runs at once."""
    server = _server(strict_single_flight=True, latency=LatencyModel(time_to_first_token=5))
    async with memory_client(server) as client:
        with trio.fail_after(60):
            await client.create(input="first", stream_id="a")
            await client.create(input="second", stream_id="b")
            seen = await _collect(client, 2)
    assert [5, 5] == [at for at, e in seen if e["type"] == "response.completed"]
