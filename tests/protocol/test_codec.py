"""The codec: round trips, what the encoder sends, what the decoders accept and reject.

The fuzz tests at the end carry the decoder robustness goal
(docs/recovery.md#malformed-and-unknown-events, docs/faults.md#decoder-fuzzing): every frame,
however hostile, gives an event (or ``UnknownEvent``) or ``RemoteProtocolError``, and nothing else.
Their ``max_examples`` add up to more than 10 000 examples per run.
"""

# docs/faults.md#test-hygiene: asserts read ``expected == actual``, so the expected constant comes
# first.

from __future__ import annotations

import re
import sys
import typing
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings, strategies as st
from msgspec import UNSET, Raw, Struct

from orchestrator.core.protocol import codec
from orchestrator.core.protocol.codec import (
    decode_client_event,
    decode_create_body,
    decode_item,
    decode_items,
    decode_server_event,
    encode,
)
from orchestrator.core.protocol.events import (
    CLIENT_EVENT_TYPES,
    ITEM_TYPES,
    SERVER_EVENT_TYPES,
    ClientEvent,
    ClientEventUnion,
    FunctionCallItem,
    FunctionCallOutputItem,
    HostedTool,
    ItemReference,
    MessageItem,
    ReasoningItem,
    ResponseCompleted,
    ResponseCreate,
    ResponseSteer,
    ServerEvent,
    ServerEventUnion,
    UnknownEvent,
    UnknownItem,
)
from orchestrator.errors import RemoteProtocolError

from . import strategies as s

Decoder = Callable[[bytes | str], Any]
KNOWN_ITEM_CLASSES = (
    MessageItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    ReasoningItem,
    ItemReference,
)


def _is_item(value: object) -> bool:
    return isinstance(value, (*KNOWN_ITEM_CLASSES, UnknownItem))


# What each decoder may return; anything else, or any exception but RemoteProtocolError, fails.
DECODERS: dict[str, tuple[Decoder, Callable[[object], bool]]] = {
    "server": (decode_server_event, lambda v: isinstance(v, ServerEvent | UnknownEvent)),
    "client": (decode_client_event, lambda v: isinstance(v, ClientEvent | UnknownEvent)),
    "item": (decode_item, _is_item),
    "items": (decode_items, lambda v: isinstance(v, list) and all(_is_item(i) for i in v)),
    "body": (decode_create_body, lambda v: isinstance(v, ResponseCreate)),
}


def outcomes(data: bytes | str) -> dict[str, str]:
    """Run every decoder on ``data``; return ``accepted``/``rejected`` per decoder.

    Fails the test when a decoder returns something outside its contract or raises anything
    but :class:`RemoteProtocolError`.
    """
    result: dict[str, str] = {}
    for name, (decode, allowed) in DECODERS.items():
        try:
            value = decode(data)
        except RemoteProtocolError:
            result[name] = "rejected"
        else:
            assert allowed(value), f"{name} decoder returned {value!r}"
            result[name] = "accepted"
    return result


def assert_only_set_fields(value: Any, wire: Any) -> None:
    """``wire`` (the generic decode of ``encode(value)``) holds exactly the fields set in
    ``value``, recursively: no ``UNSET`` field is ever sent and no set field is missing."""
    if isinstance(value, Struct):
        config = value.__struct_config__
        fields = msgspec.structs.fields(value)
        expected = {f.encode_name for f in fields if getattr(value, f.name) is not UNSET}
        if config.tag_field is not None:
            expected.add(config.tag_field)
            assert config.tag == wire[config.tag_field]
        assert expected == set(wire)
        for f in fields:
            member = getattr(value, f.name)
            if member is not UNSET:
                assert_only_set_fields(member, wire[f.encode_name])
    elif isinstance(value, Raw):
        assert msgspec.json.decode(value) == wire
    elif isinstance(value, UnknownItem | UnknownEvent | HostedTool):
        assert value.data == wire
    elif isinstance(value, list):
        assert len(value) == len(wire)
        for member, wired in zip(value, wire, strict=True):
            assert_only_set_fields(member, wired)
    elif isinstance(value, dict):
        assert set(value) == set(wire)
        for key, member in value.items():
            assert_only_set_fields(member, wire[key])
    else:
        assert value == wire


# --------------------------------------------------------------------------------------------
# The strategies cover the vocabulary
# --------------------------------------------------------------------------------------------


def test_strategies_cover_every_field_of_every_struct() -> None:
    """Each Struct strategy names exactly the Struct's fields, so a new field needs one."""
    for cls, (required, optional) in s.FIELDS.items():
        names = {f.name for f in msgspec.structs.fields(cls)}
        assert names == set(required) | set(optional), cls.__name__
        assert not set(required) & set(optional), cls.__name__


def test_strategies_cover_every_event_type() -> None:
    """Every member of the server and client unions has a strategy."""
    members = set(typing.get_args(ServerEventUnion)) | set(typing.get_args(ClientEventUnion))
    assert members <= set(s.FIELDS)
    assert len(SERVER_EVENT_TYPES) == len(s.SERVER_EVENT_CLASSES)


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


@settings(max_examples=250)
@given(s.client_events)
def test_client_event_round_trip(event: ClientEvent) -> None:
    """decode_client_event(encode(e)) == e, unknown input items included."""
    assert event == decode_client_event(encode(event))


@settings(max_examples=250)
@given(s.client_events)
def test_a_create_posted_over_http_decodes_without_its_type(event: ClientEvent) -> None:
    """The body of ``POST /v1/responses`` is a create without ``type``
    (docs/protocol.md#over-http): decode_create_body gives the same create, with or without
    ``"type": "response.create"``; any other type is rejected naming ``$.type``."""
    if not isinstance(event, ResponseCreate):
        return
    fields = msgspec.json.decode(encode(event))
    assert "response.create" == fields.pop("type")
    assert event == decode_create_body(msgspec.json.encode(fields))
    assert event == decode_create_body(encode(event))
    with pytest.raises(RemoteProtocolError, match=re.escape("$.type")):
        decode_create_body(msgspec.json.encode({**fields, "type": "response.steer"}))


@settings(max_examples=400)
@given(s.server_events)
def test_server_event_round_trip(event: ServerEvent) -> None:
    """decode_server_event(encode(e)) == e for every server event type."""
    assert event == decode_server_event(encode(event))
    assert event == decode_server_event(codec.encode_text(event))


@settings(max_examples=250)
@given(s.items, s.item_lists)
def test_item_round_trip(item: Any, items: list[Any]) -> None:
    """decode_item and decode_items give back the items, known and unknown."""
    assert item == decode_item(encode(item))
    assert item == decode_item(codec.raw(item))
    assert items == decode_items(encode(items))
    assert items == decode_items(codec.raw(items))


@settings(max_examples=200)
@given(s.valid_streams())
def test_stream_events_round_trip(stream: s.Stream) -> None:
    """Every event of a realistic stream survives encode then decode."""
    for event in stream.events:
        assert event == decode_server_event(encode(event))


def test_null_output_decodes_as_no_items() -> None:
    """A terminal ``output: null`` decodes as an empty item list
    (docs/protocol.md#event-order-rules, rule 6)."""
    assert [] == decode_items(Raw(b"null"))


# --------------------------------------------------------------------------------------------
# The encoder sends what the caller set, nothing more
# --------------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.fixed_dictionaries({}, optional=dict(s.FIELDS[ResponseCreate][1])))
def test_response_create_sends_exactly_the_fields_set(fields: dict[str, Any]) -> None:
    """response.create carries ``type`` plus the fields the caller set, and no others."""
    wire = msgspec.json.decode(encode(ResponseCreate(**fields)))
    assert {"type", *fields} == set(wire)
    assert "response.create" == wire["type"]


@settings(max_examples=300)
@given(s.client_events | s.server_events | s.items)
def test_encoder_never_sends_unset_fields(value: Any) -> None:
    """At every depth, the JSON holds the set fields (plus the tag) and no UNSET one."""
    assert_only_set_fields(value, msgspec.json.decode(encode(value)))


def test_response_steer_sends_exactly_three_keys() -> None:
    """response.steer is exactly ``type``, ``previous_response_id`` and ``input``
    (docs/protocol.md#steering)."""
    wire = msgspec.json.decode(encode(ResponseSteer(previous_response_id="resp_1", input="x")))
    assert {"type": "response.steer", "previous_response_id": "resp_1", "input": "x"} == wire


# --------------------------------------------------------------------------------------------
# Unknown types and fields (docs/recovery.md#malformed-and-unknown-events)
# --------------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(s.unknown_server_events)
def test_unknown_server_event_is_kept_and_reencoded_unchanged(event: UnknownEvent) -> None:
    """An unknown server event type becomes UnknownEvent with all its data, re-encoded as is."""
    wire = encode(event)
    decoded = decode_server_event(wire)
    assert isinstance(decoded, UnknownEvent)
    assert event.type == decoded.type
    assert event.data == decoded.data
    assert wire == encode(decoded)


@settings(max_examples=200)
@given(s.unknown_client_events)
def test_unknown_client_event_is_kept_and_reencoded_unchanged(event: UnknownEvent) -> None:
    """An unknown client event type becomes UnknownEvent with its data (the server answers it
    with ``unknown_event_type``, docs/protocol.md#error-codes), re-encoded as is."""
    wire = encode(event)
    decoded = decode_client_event(wire)
    assert isinstance(decoded, UnknownEvent)
    assert event.data == decoded.data
    assert wire == encode(decoded)


@pytest.mark.parametrize("client_type", sorted(CLIENT_EVENT_TYPES))
def test_client_event_types_are_unknown_to_the_server_decoder(client_type: str) -> None:
    """A client event type arriving from the server is an unknown server event, not an error."""
    decoded = decode_server_event(encode({"type": client_type, "model": "m"}))
    assert isinstance(decoded, UnknownEvent)
    assert client_type == decoded.type


@settings(max_examples=200)
@given(
    st.sampled_from(sorted(SERVER_EVENT_TYPES | ITEM_TYPES)).map(lambda t: t + ".v2")
    | s.unknown_type_names(SERVER_EVENT_TYPES),
    st.dictionaries(
        st.sampled_from(["sequence_number", "response", "item", "output_index", "delta", "error"]),
        s.json_values,
    ),
)
def test_unknown_type_never_raises_whatever_its_fields(type_name: str, fields: Any) -> None:
    """``type`` decides first: an unknown type is kept even when its fields would be invalid
    for every known event (the two-step decode of docs/recovery.md#malformed-and-unknown-events)."""
    data = {**fields, "type": type_name}
    decoded = decode_server_event(encode(data))
    assert UnknownEvent(type_name, data) == decoded


def _with_extra_fields(wire: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {**{f"x_{key}": value for key, value in extra.items()}, **wire}


@settings(max_examples=300)
@given(s.server_events, s.json_objects)
def test_unknown_fields_in_server_events_are_ignored(event: ServerEvent, extra: Any) -> None:
    """Extra keys at the top of a known server event are tolerated and dropped
    (docs/protocol.md#sequence-numbers-and-lanes)."""
    wire = msgspec.json.decode(encode(event))
    assert event == decode_server_event(encode(_with_extra_fields(wire, extra)))


@settings(max_examples=200)
@given(s.client_events, s.json_objects)
def test_unknown_fields_in_client_events_are_ignored(event: ClientEvent, extra: Any) -> None:
    """Extra keys in a client event (``client_metadata``, Codex's extras) are tolerated."""
    wire = msgspec.json.decode(encode(event))
    assert event == decode_client_event(encode(_with_extra_fields(wire, extra)))


@settings(max_examples=200)
@given(s.known_items, s.json_objects)
def test_unknown_fields_in_items_are_ignored(item: Any, extra: Any) -> None:
    """Extra keys in a known item are tolerated by decode_item and decode_items."""
    wire = _with_extra_fields(msgspec.json.decode(encode(item)), extra)
    assert item == decode_item(encode(wire))
    assert [item] == decode_items(encode([wire]))


def test_unknown_fields_nested_in_the_response_object_are_ignored() -> None:
    """New keys inside ``response`` and ``usage`` do not break a lifecycle event."""
    frame = (
        b'{"type":"response.completed","sequence_number":3,"brand_new":[1],"response":'
        b'{"id":"resp_1","object":"response","created_at":1,"status":"completed","model":"m",'
        b'"conversation":{"id":"c"},"usage":{"input_tokens":1,"output_tokens":2,'
        b'"total_tokens":3,"audio_tokens":9}}}'
    )
    event = decode_server_event(frame)
    assert isinstance(event, ResponseCompleted)
    assert "resp_1" == event.response.id
    assert event.response.usage is not None
    assert 3 == event.response.usage.total_tokens


@settings(max_examples=200)
@given(st.lists(s.structs(MessageItem), min_size=1, max_size=3), st.booleans())
def test_short_form_messages_are_accepted(messages: list[MessageItem], steer: bool) -> None:
    """Messages without ``type`` (openai-agents' short form, docs/protocol.md#input-items) decode as
    messages."""
    event: ClientEvent = (
        ResponseSteer(previous_response_id="resp_1", input=list(messages))
        if steer
        else ResponseCreate(model="m", input=list(messages))
    )
    wire = msgspec.json.decode(encode(event))
    for message in wire["input"]:
        del message["type"]
    assert event == decode_client_event(encode(wire))
    assert messages == decode_items(encode(wire["input"]))
    assert messages[0] == decode_item(encode(wire["input"][0]))


@settings(max_examples=200)
@given(
    st.tuples(
        st.lists(s.known_items, max_size=2), st.lists(s.unknown_items, min_size=1, max_size=2)
    ).flatmap(lambda lists: st.permutations([*lists[0], *lists[1]])),
    st.data(),
)
def test_unknown_input_items_are_kept_and_reencoded_verbatim(items: list[Any], data: Any) -> None:
    """Unknown item types in ``input`` are accepted, kept at their place and re-encoded byte
    for byte, whatever the position of ``type`` in the object (docs/protocol.md#input-items)."""
    wire_items = []
    for item in items:
        wired = msgspec.json.decode(encode(item))
        if isinstance(item, UnknownItem):
            # Move "type" to a drawn position: the original key order must survive.
            rest = [(k, v) for k, v in wired.items() if k != "type"]
            rest.insert(data.draw(st.integers(0, len(rest))), ("type", wired["type"]))
            wired = dict(rest)
        wire_items.append(wired)
    frame = encode({"type": "response.create", "model": "m", "input": wire_items})
    decoded = decode_client_event(frame)
    assert isinstance(decoded, ResponseCreate)
    assert isinstance(decoded.input, list)
    assert len(items) == len(decoded.input)
    for item, wired, got in zip(items, wire_items, decoded.input, strict=True):
        assert item == got
        if isinstance(item, UnknownItem):
            assert isinstance(got, UnknownItem)
            assert encode(wired) == encode(got)
    assert frame == encode(decoded)


# --------------------------------------------------------------------------------------------
# Known types with bad fields are the peer's fault (docs/recovery.md#malformed-and-unknown-events:
# wrong field types -> ProtocolError)
# --------------------------------------------------------------------------------------------


_CANDIDATES: tuple[Any, ...] = ("7", 123, 1.5, True, [], {})


def _wrong_value(annotation: Any) -> Any:
    """A JSON value that cannot decode as ``annotation`` (``UNSET`` aside); ``None`` when every
    value can (``Raw``, ``Any``)."""
    if annotation is Raw or annotation is Any:
        return None
    args = typing.get_args(annotation) if typing.get_origin(annotation) is not list else ()
    if args and typing.get_origin(annotation) is not dict:
        kept = tuple(arg for arg in args if arg is not msgspec.UnsetType)
        annotation = kept[0] if len(kept) == 1 else typing.Union[kept]  # noqa: UP007
    for candidate in _CANDIDATES:
        try:
            msgspec.convert(candidate, annotation)
        except msgspec.ValidationError:
            return candidate
    return None


_BAD_FIELD_CASES = [
    pytest.param(cls, f.encode_name, wrong, id=f"{cls.__name__}.{f.name}")
    for cls in s.FIELDS
    if issubclass(cls, ServerEvent | ClientEvent) or cls in KNOWN_ITEM_CLASSES
    for f in msgspec.structs.fields(cls)
    if (wrong := _wrong_value(f.type)) is not None
]


@pytest.mark.parametrize(("cls", "field", "wrong"), _BAD_FIELD_CASES)
@settings(max_examples=3)
@given(data=st.data())
def test_known_type_with_wrong_field_type_is_rejected(
    cls: type, field: str, wrong: Any, data: Any
) -> None:
    """A known event or item with a field of the wrong JSON type raises RemoteProtocolError
    naming the type, instead of passing as unknown
    (docs/recovery.md#malformed-and-unknown-events)."""
    value = data.draw(s.structs(cls))
    wire = {**msgspec.json.decode(encode(value)), field: wrong}
    decode: Decoder
    if issubclass(cls, ServerEvent):
        decode = decode_server_event
    elif issubclass(cls, ClientEvent):
        decode = decode_client_event
    else:
        decode = decode_item
    with pytest.raises(RemoteProtocolError, match=re.escape(repr(wire["type"]))):
        decode(encode(wire))


def test_bad_field_cases_cover_every_event_and_item_type() -> None:
    """Every known event and item type has wrong-field cases."""
    covered = {case.values[0] for case in _BAD_FIELD_CASES}
    members = set(typing.get_args(ServerEventUnion)) | set(typing.get_args(ClientEventUnion))
    assert members | set(KNOWN_ITEM_CLASSES) == covered


@pytest.mark.parametrize(
    ("frame", "decoder"),
    [
        (b"[]", "server"),
        (b'"response.created"', "server"),
        (b"{}", "server"),
        (b'{"type":null}', "server"),
        (b'{"type":7}', "client"),
        (b'{"role":"user"}', "client"),
        (b'{"type":"response.create","input":5}', "client"),
        (b'{"type":"response.create","input":[{"content":"no role"}]}', "client"),
        (b'{"type":"response.create","input":[{"type":"zz"}],"model":5}', "client"),
        (b'{"type":"response.steer","input":"x"}', "client"),
        (b"7", "item"),
        (b'{"content":"x"}', "item"),
        (b'{"type":"message"}', "item"),
        (b"{}", "items"),
        (b"[1]", "items"),
        (b'[{"type":"function_call","call_id":5}]', "items"),
    ],
)
def test_malformed_shapes_are_rejected(frame: bytes, decoder: str) -> None:
    """Frames that are JSON but not the right shape raise RemoteProtocolError."""
    decode, _allowed = DECODERS[decoder]
    with pytest.raises(RemoteProtocolError):
        decode(frame)


# --------------------------------------------------------------------------------------------
# Fuzz (docs/recovery.md#malformed-and-unknown-events, docs/faults.md#decoder-fuzzing): events or
# RemoteProtocolError, nothing else. Budget: 11 900 examples.
# --------------------------------------------------------------------------------------------

JSONISH = st.text(alphabet='{}[]":,.-+0123456789eEtrufalsn \\ud8type', max_size=60)


@settings(max_examples=5000)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    """Random bytes give a decoded value or RemoteProtocolError from every decoder."""
    outcomes(data)


@settings(max_examples=3500)
@given(st.text(st.characters(exclude_categories=[]), max_size=100) | JSONISH)
def test_fuzz_arbitrary_text(data: str) -> None:
    """Random text, lone surrogates included, gives a decoded value or RemoteProtocolError."""
    result = outcomes(data)
    if any(0xD800 <= ord(char) <= 0xDFFF for char in data):
        assert {"rejected"} == set(result.values())


# Generic JSON whose ``type`` is known, so the typed decoders have to validate fields.
_typed_objects = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from(sorted(SERVER_EVENT_TYPES | CLIENT_EVENT_TYPES | ITEM_TYPES)),
    st.dictionaries(
        st.sampled_from(
            [
                "sequence_number",
                "response",
                "item",
                "output_index",
                "item_id",
                "input",
                "content",
                "role",
                "call_id",
                "error",
                "steer",
                "part",
                "delta",
                "model",
            ]
        ),
        s.json_values,
        max_size=5,
    ),
)


@settings(max_examples=800)
@given(s.json_values | _typed_objects | st.lists(_typed_objects, max_size=3))
def test_fuzz_random_json(value: Any) -> None:
    """Well-formed JSON of any shape, known types with random fields included, gives a decoded
    value or RemoteProtocolError."""
    outcomes(encode(value))


@settings(max_examples=2200)
@given(s.mutants())
def test_fuzz_mutated_valid_frames(mutant: s.Mutant) -> None:
    """A real frame with one defect from the defects of docs/faults.md#decoder-fuzzing (dropped key,
    retyped value, truncation, deep nesting, invalid UTF-8, lone surrogate, NaN, huge integer,
    trailing comma, duplicate key, renamed type) gives a decoded value or RemoteProtocolError; the
    syntactically invalid ones are rejected by every decoder."""
    result = outcomes(mutant.data)
    if mutant.must_fail or mutant.depth >= sys.getrecursionlimit():
        assert {"rejected"} == set(result.values()), mutant.kind


@settings(max_examples=300)
@given(s.mutants(s.valid_frames.filter(lambda tree: isinstance(tree, dict))), st.data())
def test_fuzz_mutants_of_objects(mutant: s.Mutant, data: Any) -> None:
    """Same as above restricted to object frames, where key-level defects always apply."""
    result = outcomes(mutant.data)
    if mutant.must_fail or mutant.depth >= sys.getrecursionlimit():
        assert {"rejected"} == set(result.values()), mutant.kind


@settings(max_examples=100)
@given(
    st.integers(1000, 50_000),
    st.sampled_from(["[", '{"a":']),
    st.sampled_from([b"", b'{"type":"response.created","sequence_number":0,"response":']),
)
def test_fuzz_deep_nesting(depth: int, opener: str, prefix: bytes) -> None:
    """Nesting deep enough for msgspec to raise RecursionError is a RemoteProtocolError."""
    depth = max(depth, sys.getrecursionlimit())
    closer = "]" if opener == "[" else "}"
    frame = prefix + (opener * depth + "1" + closer * depth).encode()
    if prefix:
        frame += b"}"
    assert {"rejected"} == set(outcomes(frame).values())


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type":"response.created","sequence_number":NaN}',
        b'{"type":"x","a":Infinity}',
        b'{"type":"x","a":1,}',
        b'{"type":"x","a":[1,]}',
        b'{"type":"x","a":"\xff"}',
        b'{"type":"x","a":"\xed\xa0\x80"}',
        b'{"type":"x","a":"\\ud800"}',
        b'{"type":"x","a":"\\udc00x"}',
        b'{"type":"x","a":' + b"9" * 5000 + b"}",
        b'{"type":"response.created","sequence_number":' + b"9" * 5000 + b"}",
        b'{"type":"x"}garbage',
        b'{"type":"x"',
        b"",
        b"\x00",
        b"\xef\xbb\xbf{}",
    ],
)
def test_hostile_corpus_is_rejected(frame: bytes) -> None:
    """The hostile corpus of docs/faults.md#decoder-fuzzing (NaN, trailing comma, invalid UTF-8,
    surrogates, 5000-digit integer, trailing garbage, truncation, BOM) is rejected by every
    decoder."""
    assert {"rejected"} == set(outcomes(frame).values())


_DELTA = (
    b'{"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1",'
    b'"output_index":0,"content_index":0,"delta":"x"'
)


@pytest.mark.parametrize(
    "frame",
    [
        _DELTA + b',"\xffjunk":1}',
        _DELTA + b',"junk":"\xff"}',
        _DELTA + b',"junk":["ok","\xed\xa0\x80"]}',
        b'{"type":"response.output_item.added","sequence_number":1,"output_index":0,'
        b'"item":{"type":"message","role":"user","content":"x","\xff":1}}',
        b'{"type":"response.create","model":"m","\xc3":1}',
        b'{"type":"message","role":"user","content":"x","\xff":1}',
        b'[{"type":"message","role":"user","content":"x","\xff":1}]',
    ],
)
def test_invalid_utf8_in_skipped_or_raw_parts_is_rejected(frame: bytes) -> None:
    """Bad UTF-8 is rejected even where msgspec does not look: in an unknown field it skips or
    in a ``Raw`` field it keeps (regression: the typed fast path accepted these frames)."""
    assert {"rejected"} == set(outcomes(frame).values())


def test_duplicate_keys_give_an_event_or_a_protocol_error() -> None:
    """Duplicate keys (docs/recovery.md#malformed-and-unknown-events) are accepted (msgspec keeps
    the last value) or rejected, never crash."""
    outcomes(b'{"type":"x","type":"response.created"}')
    outcomes(b'{"type":"response.created","type":"x"}')
    event = decode_server_event(b'{"type":"x","a":1,"a":2}')
    assert UnknownEvent("x", {"type": "x", "a": 2}) == event


@settings(max_examples=300)
@given(s.valid_frames, st.randoms(use_true_random=False))
def test_key_order_does_not_matter(tree: Any, random: Any) -> None:
    """Objects decode the same whatever their key order, ``type`` last included."""

    def shuffle(node: Any) -> Any:
        if isinstance(node, dict):
            pairs = [(key, shuffle(value)) for key, value in node.items()]
            random.shuffle(pairs)
            return dict(pairs)
        if isinstance(node, list):
            return [shuffle(value) for value in node]
        return node

    def normal(value: Any) -> Any:
        # Raw fields keep their bytes, so compare the JSON they hold, not the bytes.
        return msgspec.json.decode(encode(value))

    original = encode(tree)
    reordered = encode(shuffle(tree))
    for name, (decode, _allowed) in DECODERS.items():
        try:
            expected = decode(original)
        except RemoteProtocolError:
            with pytest.raises(RemoteProtocolError):
                decode(reordered)
        else:
            assert normal(expected) == normal(decode(reordered)), name
