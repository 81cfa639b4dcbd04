"""The server's request checks as tables, without sockets
(docs/faults.md#clients-of-the-embedded-server): each bad request gets its status, code and
``param``; a good one gets ``None``.

The same refusals are checked over the wire in test_input.py, test_lanes.py and
test_limits.py; here every rule is one row.
"""

# docs/faults.md#test-hygiene: asserts read ``expected == actual``, so the expected constant comes
# first.

from __future__ import annotations

import pytest

from orchestrator.core.protocol.codec import decode_client_event
from orchestrator.core.protocol.events import (
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    ResponseCreate,
    UnknownEvent,
)
from orchestrator.core.server import ServerConfig
from orchestrator.core.server.checks import (
    Refusal,
    check_continuation,
    check_create,
    check_lane,
    check_message,
    check_tool_outputs,
    unknown_event,
)
from orchestrator.core.server.state import CachedResponse
from orchestrator.errors import RemoteProtocolError

CONFIG = ServerConfig(max_named_lanes=2, max_request_bytes=1000, strict_single_flight=True)


def _summary(refusal: Refusal | None) -> tuple[object, ...] | None:
    if refusal is None:
        return None
    return (refusal.status, refusal.code, refusal.param, refusal.lane)


def _refused(message: str) -> Refusal:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_client_event(message)
    return check_message(message, caught.value)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("{not json", (400, "invalid_json", None, False)),
        ("[1, 2]", (400, "invalid_value", None, False)),
        ('{"model": "m"}', (400, "missing_required_parameter", "type", False)),
        ('{"type": "response.create", "model": 5}', (400, "invalid_value", "model", False)),
        (
            '{"type": "response.steer", "input": "x"}',
            (400, "missing_required_parameter", "previous_response_id", False),
        ),
    ],
)
def test_undecodable_messages_are_refused_naming_the_field(message, expected):
    """A message that is not an event: not JSON, not an object, no type, a bad field."""
    assert expected == _summary(_refused(message))


def test_unknown_event_type_is_refused_naming_type():
    """An event type the protocol does not have: 400 unknown_event_type, param type."""
    refusal = unknown_event(UnknownEvent("response.cancel", {"type": "response.cancel"}))
    assert (400, "unknown_event_type", "type", False) == _summary(refusal)
    assert "'response.cancel'" in refusal.message


@pytest.mark.parametrize(
    ("create", "expected"),
    [
        (ResponseCreate(model="m"), None),
        (ResponseCreate(model="m", stream_id="ok_lane-1.2"), None),
        (
            ResponseCreate(model="m", stream_id="no spaces"),
            (400, "invalid_stream_id", "stream_id", False),
        ),
        (ResponseCreate(model="m", stream_id=""), (400, "invalid_stream_id", "stream_id", False)),
        (
            ResponseCreate(model="m", stream_id="x" * 257),
            (400, "invalid_stream_id", "stream_id", False),
        ),
        (
            ResponseCreate(model="m", background=True),
            (400, "invalid_value", "background", True),
        ),
        (ResponseCreate(), (400, "missing_required_parameter", "model", True)),
        (ResponseCreate(model=""), (400, "missing_required_parameter", "model", True)),
        (
            ResponseCreate(model="m", conversation="conv_1", previous_response_id="resp_1"),
            (400, "invalid_value", "conversation", True),
        ),
    ],
)
def test_create_checks(create, expected):
    """What no connection state makes acceptable: a bad lane id, background, no model,
    conversation together with previous_response_id."""
    assert expected == _summary(check_create(create))


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({}, None),
        ({"new_named_lane": True, "named_lanes": 1}, None),
        (
            {"new_named_lane": True, "named_lanes": 2},
            (400, "websocket_stream_limit_reached", "stream_id", True),
        ),
        ({"named_lanes": 2}, None),  # a lane already in use is not a new one
        ({"lane_busy": True}, (409, "response_already_in_flight", None, True)),
        ({"held": 600, "size": 400}, None),
        ({"held": 600, "size": 401}, (429, "too_many_queued_requests", None, True)),
        ({"held": 0, "size": 5000}, None),  # the first request is never refused for size
    ],
)
def test_lane_checks(state, expected):
    """What the connection can take now: lane count, single flight, bytes held."""
    fields = {"new_named_lane": False, "named_lanes": 0, "lane_busy": False, "held": 0, "size": 10}
    assert expected == _summary(check_lane(CONFIG, **{**fields, **state}))


def test_busy_lane_queues_unless_strict():
    """Without strict_single_flight a busy lane queues the create (no refusal)."""
    config = ServerConfig(strict_single_flight=False)
    refusal = check_lane(
        config, new_named_lane=False, named_lanes=0, lane_busy=True, held=0, size=10
    )
    assert refusal is None


def _response(status: str = "completed", *, calls: tuple[str, ...] = ()) -> CachedResponse:
    output = tuple(
        FunctionCallItem(call_id=call_id, name="lookup", arguments="{}") for call_id in calls
    )
    return CachedResponse.create("resp_1", None, (), output, status, store=False)


@pytest.mark.parametrize(
    ("parent", "refused"),
    [(None, True), (_response("failed"), True), (_response(), False)],
)
def test_continuation_needs_a_response_that_did_not_fail(parent, refused):
    """previous_response_id must name a response the server has and that did not fail."""
    refusal = check_continuation("resp_1", parent)
    if refused:
        assert refusal is not None
        assert (400, "previous_response_not_found", "previous_response_id", True) == _summary(
            refusal
        )
        assert "'resp_1'" in refusal.message
    else:
        assert refusal is None


@pytest.mark.parametrize(
    ("parent", "items", "require_all", "message"),
    [
        (None, [MessageItem.user("hi")], True, None),
        (
            None,
            [FunctionCallOutputItem(call_id="call_9", output="x")],
            True,
            "No tool call found for function call output with call_id 'call_9'.",
        ),
        (
            _response(calls=("call_1",)),
            [FunctionCallOutputItem(call_id="call_1", output="x")],
            True,
            None,
        ),
        (
            _response(calls=("call_1", "call_2")),
            [FunctionCallOutputItem(call_id="call_1", output="x")],
            True,
            "No tool output found for function call 'call_2'.",
        ),
        (
            _response(calls=("call_1", "call_2")),
            [FunctionCallOutputItem(call_id="call_1", output="x")],
            False,
            None,
        ),
        (
            None,
            [
                FunctionCallItem(call_id="call_3", name="lookup", arguments="{}"),
                FunctionCallOutputItem(call_id="call_3", output="x"),
            ],
            True,
            None,
        ),
    ],
)
def test_tool_outputs_must_answer_calls(parent, items, require_all, message):
    """Each function call output answers a call of the chain (or of the same input); with
    require_all, each call of the parent gets an output."""
    refusal = check_tool_outputs(parent, items, require_all=require_all)
    if message is None:
        assert refusal is None
    else:
        assert refusal is not None
        assert (400, "invalid_value", "input", True) == _summary(refusal)
        assert message == refusal.message
