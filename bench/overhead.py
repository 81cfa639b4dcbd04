"""Per-turn overhead (issue 6, figure 1): the same 21-turn rollout driven three ways.

* ``floor``: a bare trio-websocket client that decodes every event into typed msgspec
  Structs of its own and answers each call with a ``function_call_output`` and
  ``previous_response_id``. Nothing can do less and still read the events.
* ``connection``: our connection layer (``open_connection`` + ``Session`` +
  ``Connection.run_turn``), the caller answering each call.
* ``runtime``: a full worker (``WorkerActor`` with a ``ToolRegistry`` holding a trivial async
  tool, under a ``Supervisor``, reached through a ``Router``), given one ``Assignment`` per rollout.

One process measures one variant (``bench.run_all`` interleaves them)::

    python -m bench.overhead --variant floor --url ws://... --token T [--rollouts 20]

It prints one JSON line: turns, wall and process CPU seconds over the measured rollouts
(after ``--warmup`` unmeasured ones), and for ``floor``/``connection`` the median wall time
of a function-call turn and of the text turn.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import msgspec
import trio
import trio_websocket

from bench._harness import (
    CALLS,
    MODEL,
    PROFILE,
    TOOL_OUTPUT,
    TOOL_WIRE,
    TURNS_PER_ROLLOUT,
    build_team,
    emit,
    new_session,
    rollout_result,
    time_rollouts,
)

# -- the floor's own typed events ----------------------------------------------------------------


class FloorCall(msgspec.Struct, tag_field="type", tag="function_call"):
    call_id: str
    name: str
    arguments: str
    id: str = ""
    status: str = ""


class _Text(msgspec.Struct):
    type: str
    text: str = ""


class _Message(msgspec.Struct, tag_field="type", tag="message"):
    role: str
    content: list[_Text]
    id: str = ""
    status: str = ""


_Output = FloorCall | _Message


class _Response(msgspec.Struct):
    id: str
    status: str
    output: list[_Output] = []


class _Event(msgspec.Struct, tag_field="type", kw_only=True):
    sequence_number: int = 0


class _Created(_Event, tag="response.created"):
    response: _Response


class _InProgress(_Event, tag="response.in_progress"):
    response: _Response


class _Completed(_Event, tag="response.completed"):
    response: _Response


class _ItemAdded(_Event, tag="response.output_item.added"):
    output_index: int
    item: _Output


class _ItemDone(_Event, tag="response.output_item.done"):
    output_index: int
    item: _Output


class _ArgumentsDelta(_Event, tag="response.function_call_arguments.delta"):
    item_id: str
    output_index: int
    delta: str


class _ArgumentsDone(_Event, tag="response.function_call_arguments.done"):
    item_id: str
    output_index: int
    arguments: str


class _PartAdded(_Event, tag="response.content_part.added"):
    item_id: str
    output_index: int
    content_index: int
    part: _Text


class _PartDone(_Event, tag="response.content_part.done"):
    item_id: str
    output_index: int
    content_index: int
    part: _Text


class _TextDelta(_Event, tag="response.output_text.delta"):
    item_id: str
    output_index: int
    content_index: int
    delta: str


class _TextDone(_Event, tag="response.output_text.done"):
    item_id: str
    output_index: int
    content_index: int
    text: str


_FloorEvent = (
    _Created
    | _InProgress
    | _Completed
    | _ItemAdded
    | _ItemDone
    | _ArgumentsDelta
    | _ArgumentsDone
    | _PartAdded
    | _PartDone
    | _TextDelta
    | _TextDone
)
floor_decoder = msgspec.json.Decoder(_FloorEvent)
_encoder = msgspec.json.Encoder()


def first_create() -> str:
    return _encoder.encode(
        {
            "type": "response.create",
            "model": MODEL,
            "store": False,
            "tools": [TOOL_WIRE],
            "input": [{"type": "message", "role": "user", "content": "go"}],
        }
    ).decode()


def next_create(previous: str, call_id: str) -> str:
    return _encoder.encode(
        {
            "type": "response.create",
            "model": MODEL,
            "store": False,
            "tools": [TOOL_WIRE],
            "previous_response_id": previous,
            "input": [{"type": "function_call_output", "call_id": call_id, "output": TOOL_OUTPUT}],
        }
    ).decode()


async def floor_turn(ws: trio_websocket.WebSocketConnection, message: str) -> _Response:
    await ws.send_message(message)
    while True:
        event = floor_decoder.decode(await ws.get_message())
        if type(event) is _Completed:
            return event.response


async def floor(url: str, token: str, rollouts: int, warmup: int) -> dict[str, Any]:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    fc_walls: list[float] = []
    text_walls: list[float] = []
    async with trio_websocket.open_websocket_url(
        url, extra_headers=headers, max_message_size=64 * 2**20
    ) as ws:

        async def rollout(timed: bool) -> None:
            message = first_create()
            for turn in range(TURNS_PER_ROLLOUT):
                started = time.perf_counter()
                response = await floor_turn(ws, message)
                if timed:
                    (fc_walls if turn < CALLS else text_walls).append(time.perf_counter() - started)
                calls = [item for item in response.output if type(item) is FloorCall]
                if not calls:
                    assert turn == CALLS, f"text at turn {turn}"
                    return
                message = next_create(response.id, calls[0].call_id)
            raise AssertionError("no text answer")

        wall, cpu = await time_rollouts(rollout, warmup=warmup, rollouts=rollouts)
    return rollout_result("floor", rollouts, wall, cpu, fc_walls, text_walls)


# -- our connection layer -------------------------------------------------------------------------


async def connection(url: str, token: str, rollouts: int, warmup: int) -> dict[str, Any]:
    from orchestrator.core.connection import open_connection
    from orchestrator.core.protocol.events import FunctionCallOutputItem, FunctionTool, MessageItem

    tools = (
        FunctionTool(
            str(TOOL_WIRE["name"]),
            TOOL_WIRE["parameters"],
            str(TOOL_WIRE["description"]),
            strict=True,
        ),
    )
    fc_walls: list[float] = []
    text_walls: list[float] = []
    async with open_connection(url, token, agent="bench") as conn:

        async def rollout(timed: bool) -> None:
            session = new_session(tools)
            items: list[Any] = [MessageItem.user("go")]
            for turn in range(TURNS_PER_ROLLOUT):
                started = time.perf_counter()
                response = await conn.run_turn(session, items)
                if timed:
                    (fc_walls if turn < CALLS else text_walls).append(time.perf_counter() - started)
                calls = response.function_calls
                if not calls:
                    assert turn == CALLS, f"text at turn {turn}"
                    return
                items = [FunctionCallOutputItem(call_id=calls[0].call_id, output=TOOL_OUTPUT)]
            raise AssertionError("no text answer")

        wall, cpu = await time_rollouts(rollout, warmup=warmup, rollouts=rollouts)
    return rollout_result("connection", rollouts, wall, cpu, fc_walls, text_walls)


# -- the full runtime -----------------------------------------------------------------------------


async def runtime(url: str, token: str, rollouts: int, warmup: int) -> dict[str, Any]:
    from actors.agent import Assignment, AssignmentResult
    from orchestrator.core.router import EXTERNAL_SENDER

    team = build_team(url, token, 1)
    worker = team.workers[0]
    task = Assignment(text="go")
    async with trio.open_nursery() as nursery:
        await nursery.start(team.supervisor.run)

        async def rollout() -> None:
            team.fresh_conversation(worker)
            result = await team.router.ask(EXTERNAL_SENDER, worker.name, task)
            assert isinstance(result, AssignmentResult), result
            assert result.turns == TURNS_PER_ROLLOUT, result

        wall, cpu = await time_rollouts(
            lambda _measured: rollout(), warmup=warmup, rollouts=rollouts
        )
        team.supervisor.stop()
    return rollout_result("runtime", rollouts, wall, cpu, [], [])


VARIANTS = {"floor": floor, "connection": connection, "runtime": runtime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--base-url", default="")
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", help="write a cProfile of the measured window here")
    args = parser.parse_args()
    if args.profile:
        PROFILE.path = args.profile
    emit(trio.run(VARIANTS[args.variant], args.url, args.token, args.rollouts, args.warmup))


if __name__ == "__main__":
    main()
