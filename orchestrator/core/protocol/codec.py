"""Encoding and decoding of wire messages. Decoders are built once, here.

The contract (docs/protocol.md#sequence-numbers-and-lanes,
docs/recovery.md#malformed-and-unknown-events):

* ``decode_server_event`` / ``decode_client_event`` return a typed event, or an
  :class:`UnknownEvent` for a well-formed object whose ``type`` is not known. Everything else
  (bad JSON, bad UTF-8, nesting deep enough to make msgspec raise ``RecursionError``, a known
  type with wrong field types, a non-object) raises :class:`RemoteProtocolError` and nothing
  else.
* The fast path is a single typed msgspec decode of the tagged union. Only frames that fail it
  are decoded a second time, generically, to tell "unknown type" from "malformed".
* ``encode`` never emits an ``UNSET`` field, so exactly what the caller set is sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec
from msgspec import Raw

from orchestrator.errors import RemoteProtocolError

from .events import (
    ITEM_TYPES,
    SERVER_EVENT_TYPES,
    ClientEvent,
    ClientEventUnion,
    HostedTool,
    KnownItem,
    ResponseCreate,
    ResponseSteer,
    ServerEvent,
    ServerEventUnion,
    UnknownEvent,
    UnknownItem,
)

if TYPE_CHECKING:
    from .events import Item

__all__ = [
    "DECODE_ERRORS",
    "decode_client_event",
    "decode_create_body",
    "decode_item",
    "decode_items",
    "decode_server_event",
    "encode",
    "encode_text",
    "item_from_object",
    "raw",
]

# Everything msgspec or the UTF-8 codec can raise on hostile input. msgspec raises
# RecursionError itself on deep nesting, UnicodeDecodeError on invalid UTF-8 bytes and
# UnicodeEncodeError on a str holding lone surrogates.
DECODE_ERRORS: Final = (msgspec.MsgspecError, RecursionError, UnicodeError, ValueError)


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, UnknownItem | UnknownEvent | HostedTool):
        return obj.data
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_encoder: Final = msgspec.json.Encoder(enc_hook=_enc_hook)
_server_decoder: Final = msgspec.json.Decoder(ServerEventUnion)
_client_decoder: Final = msgspec.json.Decoder(ClientEventUnion)
_create_decoder: Final = msgspec.json.Decoder(ResponseCreate)
_any_decoder: Final = msgspec.json.Decoder()
_item_decoder: Final = msgspec.json.Decoder(KnownItem)
_items_decoder: Final = msgspec.json.Decoder(list[KnownItem])

_CLIENT_TYPES: Final[dict[str, type[ClientEvent]]] = {
    "response.create": ResponseCreate,
    "response.steer": ResponseSteer,
}


def encode(obj: Any) -> bytes:
    """Encode an event, item or any Struct to compact JSON bytes."""
    return _encoder.encode(obj)


def encode_text(obj: Any) -> str:
    """Encode for a WebSocket text frame (every message of the protocol is one)."""
    return _encoder.encode(obj).decode()


def _require_utf8(data: str | bytes | Raw, what: str) -> None:
    """Reject bytes that are not UTF-8 as a whole.

    msgspec validates UTF-8 only in what it decodes: the unknown fields it skips and the
    ``Raw`` fields it keeps are copied unchecked, so without this a binary frame with a bad
    byte there passes (and a kept ``Raw`` can no longer be sent as text). ``str`` input is
    Unicode already; msgspec rejects lone surrogates in it when encoding it to UTF-8.
    """
    if isinstance(data, str):
        return
    try:
        str(data, "utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"malformed {what}: invalid UTF-8") from exc


def _generic(data: str | bytes | Raw) -> Any:
    try:
        return _any_decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise RemoteProtocolError(f"malformed JSON frame: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nesting too deep"
    if isinstance(exc, UnicodeError):
        return "invalid UTF-8"
    return str(exc) or type(exc).__name__


def _type_of(obj: Any) -> str:
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise RemoteProtocolError("event has no string 'type' field")
    return kind


def decode_server_event(data: str | bytes) -> ServerEvent | UnknownEvent:
    """Decode one server message.

    Raises:
        RemoteProtocolError: the frame is not a well-formed event.
    """
    if type(data) is not str:  # str is Unicode already (the common case, inlined)
        _require_utf8(data, "server event")
    try:
        event: ServerEvent = _server_decoder.decode(data)
    except msgspec.ValidationError as exc:
        error: BaseException = exc
    except DECODE_ERRORS as exc:
        raise RemoteProtocolError(f"malformed server event: {_describe(exc)}") from exc
    else:
        return event
    obj = _generic(data)
    kind = _type_of(obj)
    if kind not in SERVER_EVENT_TYPES:
        return UnknownEvent(kind, obj)
    raise RemoteProtocolError(f"invalid {kind!r} event: {_describe(error)}") from error


def decode_client_event(data: str | bytes) -> ClientEvent | UnknownEvent:
    """Decode one client message (used by the embedded server).

    Accepts the short message form without ``type`` and unknown item types in ``input``
    (docs/protocol.md#input-items), which the typed fast path cannot.

    Raises:
        RemoteProtocolError: the frame is not a well-formed client event; the message carries
            msgspec's description, including the JSON path (``$.input[0].role``).
    """
    _require_utf8(data, "client event")
    try:
        decoded: ClientEvent = _client_decoder.decode(data)
    except msgspec.ValidationError as exc:
        error: BaseException = exc
    except DECODE_ERRORS as exc:
        raise RemoteProtocolError(f"malformed client event: {_describe(exc)}") from exc
    else:
        if isinstance(decoded, ResponseCreate) and _has_hosted_tools(decoded):
            return _with_hosted_tools(decoded, _generic(data).get("tools"))
        return decoded
    obj = _generic(data)
    kind = _type_of(obj)
    cls = _CLIENT_TYPES.get(kind)
    if cls is None:
        return UnknownEvent(kind, obj)
    return _convert_slowly(obj, cls, f"{kind!r} event", error)


def has_envelope(data: str | bytes) -> bool:
    """Whether a ``POST /v1/responses`` body carries the WebSocket envelope's ``type`` at its
    top level (which the HTTP API does not know). Cheap unless the body names
    ``response.create`` somewhere."""
    marker = "response.create" if isinstance(data, str) else b"response.create"
    if marker not in data:  # type: ignore[operator]
        return False
    obj = _generic(data)
    return isinstance(obj, dict) and "type" in obj


def decode_create_body(data: str | bytes) -> ResponseCreate:
    """Decode the body of ``POST /v1/responses``: the create parameters without ``type``
    (docs/protocol.md#over-http). A ``type`` field, if present, must be ``response.create``
    (:func:`has_envelope` tells whether there was one: the server refuses it, as the service
    does).

    Accepts what :func:`decode_client_event` accepts in a create (short-form messages,
    unknown item types, hosted tools).

    Raises:
        RemoteProtocolError: the body is not a JSON object of create parameters; the message
            carries msgspec's description, including the JSON path (``$.input[0].role``).
    """
    _require_utf8(data, "request body")
    try:
        decoded: ResponseCreate = _create_decoder.decode(data)
    except msgspec.ValidationError as exc:
        error: BaseException = exc
    except DECODE_ERRORS as exc:
        raise RemoteProtocolError(f"malformed request body: {_describe(exc)}") from exc
    else:
        if _has_hosted_tools(decoded):
            return _with_hosted_tools(decoded, _generic(data).get("tools"))
        return decoded
    obj = _generic(data)
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"expected a JSON object, got {type(obj).__name__}")
    event = _convert_slowly(obj, ResponseCreate, "request body", error)
    assert isinstance(event, ResponseCreate)
    return event


def _convert_slowly(
    obj: Any, cls: type[ClientEvent], what: str, error: BaseException
) -> ClientEvent:
    """The slow path of a client event (``what``, for messages) the typed decode refused
    with ``error``: normalise short-form messages, set aside unknown item types and hosted
    tools, convert the rest."""
    tools = obj.get("tools")
    hosted = isinstance(tools, list) and any(_hosted(tool) for tool in tools)
    if hosted:
        # Set aside like unknown items: a hosted tool's fields are not the function tool's.
        obj = {**obj, "tools": [{"type": "hosted"} if _hosted(t) else t for t in tools]}
    items = obj.get("input")
    if not isinstance(items, list) and not hosted:
        raise RemoteProtocolError(f"invalid {what}: {_describe(error)}") from error
    unknown: dict[int, UnknownItem] = {}
    fixed: list[Any] = []
    for index, item in enumerate(items if isinstance(items, list) else ()):
        if isinstance(item, dict):
            item_type = item.get("type")
            if item_type is None and "role" in item:
                item = {**item, "type": "message"}
            elif isinstance(item_type, str) and item_type not in ITEM_TYPES:
                unknown[index] = UnknownItem(item)
                item = {"type": "item_reference", "id": ""}
        fixed.append(item)
    fields = {**obj, "input": fixed} if isinstance(items, list) else obj
    try:
        event = msgspec.convert(fields, cls)
    except DECODE_ERRORS as exc:
        raise RemoteProtocolError(f"invalid {what}: {_describe(exc)}") from exc
    if unknown and isinstance(event, ResponseCreate | ResponseSteer):
        assert isinstance(event.input, list)
        restored = [unknown.get(i, item) for i, item in enumerate(event.input)]
        event = msgspec.structs.replace(event, input=restored)
    if isinstance(event, ResponseCreate) and _has_hosted_tools(event):
        event = _with_hosted_tools(event, tools)
    return event


def _hosted(tool: Any) -> bool:
    """Whether a generically decoded tool is a hosted one (any type but ``function``)."""
    return isinstance(tool, dict) and tool.get("type", "function") != "function"


def _has_hosted_tools(create: ResponseCreate) -> bool:
    tools = create.tools
    return isinstance(tools, list) and any(tool.type != "function" for tool in tools)


def _with_hosted_tools(create: ResponseCreate, raw_tools: Any) -> ResponseCreate:
    """``create`` with each hosted tool replaced by a :class:`HostedTool` holding the
    definition exactly as sent (the typed decode kept only the function tool's fields)."""
    assert isinstance(create.tools, list)
    assert isinstance(raw_tools, list)
    restored = [
        HostedTool(raw) if _hosted(raw) else tool
        for tool, raw in zip(create.tools, raw_tools, strict=True)
    ]
    return msgspec.structs.replace(create, tools=restored)


def item_from_object(obj: Any) -> Item:
    """Turn one generically decoded JSON value into a typed item (or :class:`UnknownItem`).

    Raises:
        RemoteProtocolError: ``obj`` is not an item object.
    """
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"expected an item object, got {type(obj).__name__}")
    item_type = obj.get("type")
    if item_type is None and "role" in obj:
        obj = {**obj, "type": "message"}
    elif not isinstance(item_type, str):
        raise RemoteProtocolError("item has no string 'type' field")
    elif item_type not in ITEM_TYPES:
        return UnknownItem(obj)
    try:
        item: Item = msgspec.convert(obj, KnownItem)
    except DECODE_ERRORS as exc:
        raise RemoteProtocolError(f"invalid {item_type!r} item: {_describe(exc)}") from exc
    return item


def decode_item(raw: Raw | bytes | str) -> Item:
    """Decode one item kept raw by an event (``output_item.added``/``.done``).

    Raises:
        RemoteProtocolError: the JSON is not an item.
    """
    _require_utf8(raw, "item")
    try:
        known: Item = _item_decoder.decode(raw)
    except DECODE_ERRORS:
        pass
    else:
        return known
    return item_from_object(_generic(raw))


def decode_items(raw: Raw | bytes | str) -> list[Item]:
    """Decode a list of items kept raw by a response object (``response.output``).

    Raises:
        RemoteProtocolError: the JSON is not a list of items.
    """
    _require_utf8(raw, "item list")
    try:
        return list(_items_decoder.decode(raw))
    except DECODE_ERRORS:
        pass
    obj = _generic(raw)
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise RemoteProtocolError(f"expected a list of items, got {type(obj).__name__}")
    return [item_from_object(entry) for entry in obj]


def raw(obj: Any) -> Raw:
    """Pre-encode ``obj`` as a :class:`msgspec.Raw` (for the raw ``item``/``output`` fields)."""
    return Raw(_encoder.encode(obj))
