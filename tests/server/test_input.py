"""What the server accepts and refuses in client messages (docs/protocol.md#client-events,
docs/protocol.md#error-codes; docs/protocol.md#creating-a-response,
docs/protocol.md#the-error-event; docs/faults.md#clients-of-the-embedded-server), over real TCP with
JSON written by hand."""

from __future__ import annotations

import json

import pytest
import trio

from orchestrator.core.protocol.events import ResponseCreate, UnknownItem

from .wire import LOOKUP_TOOL, assert_error, calls_of, types_of, user

ECHO = "local-echo"


async def _still_serves(client) -> None:
    events = await client.turn(input="still there?")
    assert "response.completed" == events[-1]["type"]
    assert "still there?" == events[-1]["response"]["output"][0]["content"][0]["text"]


@pytest.mark.parametrize("frame", ["{not json", "", "[1, 2", '{"type": "response.create"'])
async def test_invalid_json_is_an_error_and_the_socket_stays_open(client, frame):
    """docs/protocol.md#error-codes: non-JSON text gets ``invalid_json`` (400) and the connection
    survives."""
    with trio.fail_after(10):
        await client.send(frame)
        assert_error(await client.receive(), 400, "invalid_json")
        await _still_serves(client)


@pytest.mark.parametrize("frame", ["[]", "42", '"response.create"', "null"])
async def test_json_that_is_not_an_object_is_an_error(client, frame):
    """A JSON value that is not an event object is refused with an error event."""
    with trio.fail_after(10):
        await client.send(frame)
        event = await client.receive()
        assert "error" == event["type"]
        assert 400 == event["status"]
        assert {"type", "code", "message", "param"} <= event["error"].keys()
        await _still_serves(client)


@pytest.mark.parametrize("kind", ["response.cancel", "session.update", "response.done"])
async def test_unknown_client_event_type(client, kind):
    """docs/protocol.md#error-codes: an unknown ``type`` gets ``unknown_event_type`` with param
    ``type``."""
    with trio.fail_after(10):
        await client.send({"type": kind, "model": ECHO})
        assert_error(await client.receive(), 400, "unknown_event_type", "type")
        await _still_serves(client)


async def test_missing_type_is_refused(client):
    """A message without ``type`` names the field as param."""
    with trio.fail_after(10):
        await client.send({"model": ECHO, "input": "hi"})
        event = await client.receive()
        assert "error" == event["type"]
        assert 400 == event["status"]
        assert "type" == event["error"]["param"]
        await _still_serves(client)


async def test_missing_model(client):
    """docs/faults.md#clients-of-the-embedded-server: a create without ``model`` gets
    ``missing_required_parameter``, param ``model``."""
    with trio.fail_after(10):
        await client.send({"type": "response.create", "input": "hi"})
        assert_error(await client.receive(), 400, "missing_required_parameter", "model")
        await _still_serves(client)


async def test_missing_model_on_a_named_lane_echoes_the_lane(client):
    """docs/protocol.md#sequence-numbers-and-lanes: a request-scoped error of a named lane carries
    its ``stream_id``."""
    with trio.fail_after(10):
        await client.send({"type": "response.create", "input": "hi", "stream_id": "a"})
        assert_error(
            await client.receive(), 400, "missing_required_parameter", "model", stream_id="a"
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", 5),
        ("input", 5),
        ("tools", "lookup"),
        ("store", "yes"),
        ("previous_response_id", 7),
        ("metadata", [1]),
        ("temperature", "hot"),
        ("stream_id", 3),
    ],
)
async def test_wrong_field_type_names_the_field(client, field, value):
    """docs/protocol.md#error-codes: a schema violation gets ``invalid_value`` with the field as
    param."""
    with trio.fail_after(10):
        await client.send({"type": "response.create", "model": ECHO, "input": "x", field: value})
        assert_error(await client.receive(), 400, "invalid_value", field)
        await _still_serves(client)


async def test_wrong_type_inside_an_input_item_names_input(client):
    """A bad field deep inside ``input`` reports the top-level field ``input``."""
    with trio.fail_after(10):
        await client.send(
            {"type": "response.create", "model": ECHO, "input": [{"type": "message", "role": 1}]}
        )
        assert_error(await client.receive(), 400, "invalid_value", "input")


async def test_create_without_input_is_accepted(client):
    """docs/protocol.md#creating-a-response: every field but ``type`` is optional at the schema
    level; a create with only instructions and tools (a warm-up) needs no ``input``.
    (docs/faults.md#clients-of-the-embedded-server: only a missing ``model`` is refused.)"""
    with trio.fail_after(10):
        events = await client.turn(instructions="Prepare.", tools=[LOOKUP_TOOL], generate=False)
    assert "response.completed" == events[-1]["type"]
    assert [] == events[-1]["response"]["output"]


async def test_background_true_is_rejected(client):
    """docs/protocol.md#creating-a-response: ``background: true`` is not supported over WebSocket:
    param background."""
    with trio.fail_after(10):
        await client.send({"type": "response.create", "model": ECHO, "background": True})
        assert_error(await client.receive(), 400, "invalid_value", "background")
        events = await client.turn(input="hi", background=False)
    assert "response.completed" == events[-1]["type"]


async def test_previous_response_id_with_conversation_is_rejected(client):
    """docs/protocol.md#creating-a-response: ``previous_response_id`` cannot be combined with
    ``conversation``."""
    with trio.fail_after(10):
        await client.create(input="hi", previous_response_id="resp_x", conversation="conv_1")
        assert_error(await client.receive(), 400, "invalid_value", "conversation")


async def test_stream_true_and_unknown_keys_are_ignored(client):
    """docs/protocol.md#creating-a-response: ``stream: true``, ``stream_options`` and keys of other
    backends are ignored."""
    with trio.fail_after(10):
        events = await client.turn(
            input="hi",
            stream=True,
            stream_options={"include_obfuscation": False},
            client_metadata={"x": 1},
            include=[],
            prompt_cache_key="k",
            some_future_field={"nested": [1, 2]},
        )
    assert "response.completed" == events[-1]["type"]
    assert "hi" == events[-1]["response"]["output"][0]["content"][0]["text"]
    assert "k" == events[-1]["response"]["prompt_cache_key"]


async def test_short_form_messages_and_string_content_are_accepted(client):
    """docs/protocol.md#input-items: messages without ``type`` and with string content are valid
    input."""
    with trio.fail_after(10):
        events = await client.turn(
            input=[
                {"role": "developer", "content": "Answer in one sentence."},
                {"role": "user", "content": "short form"},
            ]
        )
    assert "short form" == events[-1]["response"]["output"][0]["content"][0]["text"]


async def test_string_input_is_one_user_message(client):
    """docs/protocol.md#input-items: a plain string ``input`` is one user message."""
    with trio.fail_after(10):
        events = await client.turn(input="plain string")
    assert "plain string" == events[-1]["response"]["output"][0]["content"][0]["text"]


async def test_unknown_item_types_in_replayed_input_are_accepted(client, running):
    """docs/protocol.md#input-items: unknown item types in replayed history are opaque context, not
    errors."""
    history = [
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "abc"},
        {"type": "item_reference", "id": "msg_old"},
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_1",
            "status": "completed",
            "phase": "final_answer",
            "content": [{"type": "output_text", "text": "before", "annotations": []}],
        },
        {"type": "future_item", "payload": {"a": [1, None]}},
        user("after replay"),
    ]
    with trio.fail_after(10):
        events = await client.turn(input=history)
    assert "after replay" == events[-1]["response"]["output"][0]["content"][0]["text"]
    create = running.server.received[-1][1]
    assert isinstance(create, ResponseCreate)
    assert isinstance(create.input, list)
    unknown = [item for item in create.input if isinstance(item, UnknownItem)]
    assert ["web_search_call", "future_item"] == [item.type for item in unknown]


async def test_replayed_function_call_pairs_are_accepted(client):
    """docs/protocol.md#on-a-new-socket: full replay with function_call + function_call_output
    pairs, no parent."""
    history = [
        user("weather?"),
        {
            "type": "function_call",
            "call_id": "call_a",
            "name": "lookup",
            "arguments": '{"city":"Lisbon"}',
        },
        {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
    ]
    with trio.fail_after(10):
        events = await client.turn(input=history, tools=[LOOKUP_TOOL])
    assert "sunny" == events[-1]["response"]["output"][0]["content"][0]["text"]


async def test_binary_frame_with_json_is_accepted(client):
    """docs/protocol.md#frames-sizes-and-keepalive (the embedded server's choice): a binary frame
    holding UTF-8 JSON is decoded like a text frame."""
    with trio.fail_after(10):
        await client.send(
            json.dumps({"type": "response.create", "model": ECHO, "input": "bin"}).encode()
        )
        events = await client.response()
    assert "bin" == events[-1]["response"]["output"][0]["content"][0]["text"]


@pytest.mark.parametrize(
    "frame", [b"\xff\xfe\x00garbage", b'{"type": "response.create", "model": "\xff"}']
)
async def test_binary_garbage_is_an_error_event(client, frame):
    """docs/protocol.md#frames-sizes-and-keepalive / docs/faults.md#clients-of-the-embedded-server:
    a binary frame that is not UTF-8 JSON gets an error event and the connection survives."""
    with trio.fail_after(10):
        await client.send(frame)
        event = await client.receive()
        assert "error" == event["type"]
        assert 400 == event["status"]
        assert "invalid_request_error" == event["error"]["type"]
        await _still_serves(client)


async def test_steer_on_a_local_model_fails_with_steering_not_supported(client, running):
    """docs/protocol.md#steering (the embedded server's choice): steering an active response of a
    local model answers ``response.steer.failed``; an unknown target gets ``response_not_found``."""
    with trio.fail_after(10):
        await client.send(
            {"type": "response.steer", "previous_response_id": "resp_nope", "input": "more"}
        )
        failed = await client.receive()
    assert "response.steer.failed" == failed["type"]
    assert "response_not_found" == failed["error"]["code"]
    assert "invalid_request_error" == failed["error"]["type"]
    assert "more" == failed["steer"]["input"]


async def test_function_tools_with_newer_fields_are_tolerated(client):
    """docs/protocol.md#function-tools: unknown tool fields (``defer_loading``, ``output_schema``)
    are tolerated and the tools are echoed as sent."""
    tool = {**LOOKUP_TOOL, "defer_loading": False, "output_schema": {"type": "string"}}
    with trio.fail_after(10):
        events = await client.turn(model="local-generic", input="Lisbon please", tools=[tool])
    assert [tool] == events[-1]["response"]["tools"]
    assert ["lookup"] == [call["name"] for call in calls_of(events)]
    assert "response.output_item.added" in types_of(events)


async def test_every_message_is_recorded_when_asked(client, running):
    """``record_messages``: every decoded client message is kept with its connection index."""
    with trio.fail_after(10):
        await client.turn(input="one")
        await client.turn(input="two")
    assert [1, 1] == [index for index, _ in running.server.received]
