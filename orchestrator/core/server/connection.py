"""What a connection of either kind does with a create: the response machinery the WebSocket
(:mod:`.websocket_connection`) and the plain HTTP connection (:mod:`.http_connection`) share.

A create goes through :meth:`BaseConnection._process`: checked against what the server holds
(the parent it continues, its tools, the outputs it owes), then generated
(:meth:`BaseConnection._generate`): the latency model's request and input costs, the model's
reply, its events sent through a :class:`ResponseStream` (the fault hooks, backpressure), and
the finished response remembered in its :class:`Slot` and the store. Each kind of connection
says how an event is sent, how a fault is carried out and where a parent is found.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

import attrs
import msgspec
import trio
from msgspec import UNSET, UnsetType

from orchestrator.core.protocol.events import (
    InputTokensDetails,
    Item,
    MessageItem,
    ResponseCreate,
    ServerEvent,
    UnknownItem,
    Usage,
)
from orchestrator.core.protocol.writer import (
    DELTAS,
    Call,
    Hosted,
    Part,
    Reasoning,
    ResponseWriter,
    Text,
    error_event,
    error_type,
    response_object,
)

from .checks import EXPIRED, LIMIT_MESSAGE, Refusal, check_continuation, check_tool_outputs
from .hosted import check_tools
from .models import (
    ModelReply,
    ModelRequest,
    count_tokens,
    item_text,
    iter_text,
    limit_output,
    respond_with_hosted,
    split_arguments,
)
from .state import CachedResponse, IdFactory

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    # Annotations only: attrs does not evaluate them (postponed, never resolved), and a
    # real import would be circular (app imports this module to serve connections).
    from .app import Counters, LocalServer  # noqa: TC004
    from .config import Fault

RESPONSES_PATHS: Final = frozenset({"/v1/responses", "/responses"})
RECORD_LIMIT: Final = 100_000
_NO_TOOLS: Final = msgspec.Raw(b"[]")
# Faults that act on the connection itself: whatever is buffered is flushed before them.
TRANSPORT_FAULTS: Final = frozenset({"close", "abort", "stall", "blackhole"})


class StopConnection(Exception):
    """Internal: this connection is finished (closed or aborted by a fault)."""


class EndResponse(Exception):
    """Internal: the current response ended early (error event, failure)."""

    def __init__(
        self, *, evict: bool, failed: str | None = None, message: str | None = None
    ) -> None:
        super().__init__(failed or "ended")
        self.evict = evict
        self.failed = failed
        self.message = message


def error_body(status: int, code: str | None, message: str, param: str | None = None) -> bytes:
    """The JSON body of a refused handshake or HTTP request, shaped like the service's errors."""
    error = {"message": message, "type": error_type(status), "code": code, "param": param}
    return json.dumps({"error": error}).encode()


@attrs.define(eq=False)
class Slot:
    """Where a connection keeps a lane's latest response
    (docs/protocol.md#the-connection-local-cache)."""

    key: str | None
    latest: CachedResponse | None = None


class _Output(Protocol):
    """What sending a response needs of a connection's transport (both kinds have it)."""

    @property
    def must_wait(self) -> bool: ...

    @property
    def buffered(self) -> int: ...

    @property
    def peak_buffered(self) -> int: ...

    async def wait_writable(self) -> None: ...

    async def flush(self) -> None: ...


@attrs.define(eq=False)
class ResponseStream:
    """Sending the events of one response: its writer's drafts, after the fault hooks."""

    connection: BaseConnection
    index: int
    writer: ResponseWriter

    @property
    def sequence(self) -> int:
        """How many events of this response have been numbered."""
        return self.writer.sequence

    async def emit(self, draft: ServerEvent) -> None:
        """Send the next event of this response, after firing the faults due before it.

        Checkpoints only when it has to wait (a fault, or backpressure): the events of a
        turn are produced back to back and leave in one write (see ``transport``).
        """
        connection = self.connection
        if connection.server._faults:
            await connection.before_event(self)
        # Wait *before* adding: each producer adds at most one event past the high-water
        # mark, so the buffer stays bounded however many lanes are streaming.
        if connection.transport.must_wait:
            await connection.transport.wait_writable()
        # No checkpoint between numbering and sending: events of concurrent senders (a steer
        # answer, say) reach the socket in sequence order.
        connection.send(self.writer.take(draft))

    def send_now(self, draft: ServerEvent) -> None:
        """Send an event at once: no fault hook, no backpressure wait."""
        self.connection.send(self.writer.take(draft))


@attrs.frozen
class _InputTokens:
    """The input of a response, in tokens (docs/protocol.md#determinism-and-latency).

    ``total``: all of it; ``cached``: served from a cache; ``sent``: carried by the request
    (instructions, tools, ``input``); ``rehydrated``: the chain loaded from the store;
    ``own``: the request's ``input`` items alone, what this response adds to its chain.
    """

    total: int
    cached: int
    sent: int
    rehydrated: int
    own: int


@attrs.define(eq=False, kw_only=True)
class BaseConnection:
    """What a connection of either kind does with a create: check it against what the
    server holds, run the model, send the response's events (through :meth:`send`), and
    remember the response. :class:`WebSocketConnection` is a WebSocket, :class:`HttpConnection`
    a plain HTTP connection; each says how an event is sent and where a parent is found.
    """

    server: LocalServer
    index: int
    log: Any
    transport: _Output
    _responses: int = 0
    _expired: bool = False
    #: Bytes of the creates this connection holds (queued or running), and the most ever.
    request_bytes: int = 0
    peak_request_bytes: int = 0
    #: Creates waiting for their lane or for an active slot.
    queued_requests: int = 0
    _ids: IdFactory = attrs.field(init=False)
    _active_responses: dict[str, ResponseStream] = attrs.field(factory=dict)
    #: Plain HTTP (the latency model charges its request costs), not a WebSocket.
    http: ClassVar[bool] = False

    def __attrs_post_init__(self) -> None:
        self._ids = IdFactory(self.server.config.seed, self.index)

    @property
    def counters(self) -> Counters:
        return self.server._counters

    # -- what each kind of connection says ------------------------------------------------------

    def send(self, event: ServerEvent) -> None:
        """Send one event of a response to the client (or keep it for the answer).

        Raises:
            TransportClosed: the connection is closing or gone.
        """
        raise NotImplementedError

    async def _fire(self, fault: Fault, stream: ResponseStream) -> None:
        """Carry out an injected ``fault`` before the next event of ``stream``."""
        raise NotImplementedError

    def _lookup(self, response_id: str) -> tuple[CachedResponse | None, Slot | None]:
        """The response ``response_id`` names, and the slot whose latest it is (``None``:
        it came from the store, or nowhere)."""
        raise NotImplementedError

    def drop_cache(self) -> None:
        """Forget the responses this connection holds in memory (the store keeps its own)."""

    # -- responses ----------------------------------------------------------------------------

    def refuse(self, refusal: Refusal, stream_id: str | UnsetType = UNSET) -> None:
        """Answer with the ``error`` event a check decided on (``stream_id``: the create's
        lane, echoed when the refusal concerns it)."""
        self.send(
            error_event(
                refusal.status,
                refusal.code,
                refusal.message,
                param=refusal.param,
                stream_id=stream_id if refusal.lane else UNSET,
            )
        )

    async def before_event(self, stream: ResponseStream, *, ended: bool = False) -> None:
        """Fire the faults due before the next event of ``stream``.

        With ``ended`` (the terminal event is out) only transport faults apply: a second
        terminal event would break the protocol rather than simulate a failure.
        """
        while True:
            fault = self.server._faults.take(
                self.index, stream.index, stream.sequence, handshake=False, ended=ended
            )
            if fault is None:
                return
            await self._fire(fault, stream)

    def _injected_error(self, fault: Fault, stream: ResponseStream) -> None:
        """Send the ``error`` event of an ``error`` fault, ending ``stream``'s response."""
        headers: dict[str, str] | UnsetType = UNSET
        if fault.retry_after is not None:
            headers = {"retry-after": str(fault.retry_after)}
        connection_scoped = fault.error_code == "websocket_connection_limit_reached"
        default_message = LIMIT_MESSAGE if connection_scoped else "injected error"
        writer = stream.writer
        self.send(
            error_event(
                fault.status,
                fault.error_code,
                fault.message or default_message,
                stream_id=UNSET if connection_scoped else writer.stream_id,
                # Before response.created the error is an admission error: no number.
                sequence_number=writer.next_sequence() if writer.sequence else UNSET,
                headers=headers,
            )
        )

    def _evict(self, response_id: str, lane: Slot) -> None:
        if lane.latest is not None and lane.latest.id == response_id:
            lane.latest = None

    async def _process(self, create: ResponseCreate, lane: Slot, tools_raw: msgspec.Raw) -> None:
        if self._expired:
            self.refuse(EXPIRED)
            return
        admitted = self._admit(create, lane)
        if admitted is None:
            return
        parent, parent_lane, new_input = admitted
        stream = self._start_response(create, tools_raw)
        writer = stream.writer
        response_id = writer.response.id
        if parent is not None and parent_lane is lane:
            # The lane's slot moves on to the new response (docs/protocol.md#eviction): with
            # store=false the parent is gone for good once this response starts.
            lane.latest = None
        self._active_responses[response_id] = stream
        try:
            await self._generate(create, lane, stream, parent, parent_lane, new_input)
        except EndResponse as end:
            if end.evict and parent is not None and parent_lane is lane:
                self._evict(parent.id, lane)
            if end.failed is not None:
                # Reached only from a "fail" fault before the terminal event was sent. A
                # response must exist before it can fail: announce it first if needed.
                if writer.sequence == 0:
                    stream.send_now(writer.created())
                self._send_failed(stream, end.failed, end.message)
        finally:
            self._active_responses.pop(response_id, None)

    def _admit(
        self, create: ResponseCreate, lane: Slot
    ) -> tuple[CachedResponse | None, Slot | None, list[Item]] | None:
        """Check ``create`` against what the server holds: the parent it continues (and the
        slot holding it, ``None`` when it came from the store), and its input items; or
        ``None``, the refusal sent."""
        stream_id = create.stream_id
        parent: CachedResponse | None = None
        parent_lane: Slot | None = None
        previous = create.previous_response_id
        if isinstance(previous, str):
            parent, parent_lane = self._lookup(previous)
            refusal = check_continuation(previous, parent)
            if refusal is not None:
                self._evict(previous, lane)
                self.refuse(refusal, stream_id)
                return None
            if parent_lane is not None:
                self.counters.cache_hits += 1
            else:
                self.counters.store_hydrations += 1
        unsupported = check_tools(create.tools if isinstance(create.tools, list) else ())
        if unsupported is not None:
            self.refuse(
                Refusal(400, unsupported.code, unsupported.message, param=unsupported.param),
                stream_id,
            )
            return None
        new_input = _input_items(create.input)
        refusal = check_tool_outputs(
            parent, new_input, require_all=self.server.config.require_tool_outputs
        )
        if refusal is not None:
            if parent is not None and parent_lane is lane:
                self._evict(parent.id, lane)
            self.refuse(refusal, stream_id)
            return None
        return parent, parent_lane, new_input

    def _start_response(self, create: ResponseCreate, tools_raw: msgspec.Raw) -> ResponseStream:
        """A new response to ``create``: its id, and the writer of its events."""
        self._responses += 1
        response_id = self._ids.response()
        # Every lifecycle event of the response carries this object (created_at included),
        # the terminal one with its outcome filled in.
        writer = ResponseWriter(
            response_object(create, response_id, created_at=int(time.time()), tools=tools_raw),
            self._ids,
            create.stream_id,
            seal=_opaque
            if isinstance(create.include, list) and "reasoning.encrypted_content" in create.include
            else None,
        )
        return ResponseStream(self, self._responses, writer)

    async def _generate(
        self,
        create: ResponseCreate,
        lane: Slot,
        stream: ResponseStream,
        parent: CachedResponse | None,
        parent_lane: Slot | None,
        new_input: list[Item],
    ) -> None:
        self.counters.responses_started += 1
        tokens = self._count_input(
            create, stream.writer.response.tools, parent, parent_lane, new_input
        )
        latency = self.server.config.latency
        timed = not latency.is_zero
        if timed:
            # The API's work on the request, before the response exists.
            delay = latency.request_seconds(
                http=self.http, sent_tokens=tokens.sent, rehydrated_tokens=tokens.rehydrated
            )
            if delay:
                await trio.sleep(delay)
        for draft in stream.writer.opening():
            await stream.emit(draft)
        if timed:
            # The model reads what is not cached, then thinks until its first token.
            delay = latency.input_seconds(
                tokens.total - tokens.cached, generate=create.generate is not False
            )
            if delay:
                await trio.sleep(delay)
        reply = ModelReply()
        context: tuple[Item, ...] | None = None
        if create.generate is not False:
            context = (*(parent.context() if parent is not None else ()), *new_input)
            reply = await self._stream_reply(create, stream, context)
        else:
            self.counters.warmups += 1
        status = await self._end(stream, reply, tokens)
        self._remember(lane, stream, parent, new_input, status, tokens.own, context)
        # A fault may be due right after the terminal event ("completed, then the socket died").
        if self.server._faults:
            await self.before_event(stream, ended=True)

    async def _stream_reply(
        self, create: ResponseCreate, stream: ResponseStream, context: tuple[Item, ...]
    ) -> ModelReply:
        """Ask the model for its reply to ``context`` and send its output items.

        Raises:
            EndResponse: the model answered with an error (the ``error`` event is sent).
        """
        hosted, reply = self._respond(create, context)
        if reply.error is not None:
            message = reply.message or "scripted error"
            await stream.emit(stream.writer.error(reply.error_status, reply.error, message))
            raise EndResponse(evict=True)
        tokens_per_second = self.server.config.latency.tokens_per_second
        # The service's own tools ran first, inside this response.
        parts = (*(Hosted(item) for item in hosted), *_parts(reply))
        await self._stream_output(stream, parts, tokens_per_second)
        return reply

    async def _end(self, stream: ResponseStream, reply: ModelReply, tokens: _InputTokens) -> str:
        """Send the terminal event the reply calls for, with the response's usage; its status.

        Raises:
            EndResponse: the reply failed (``response.failed`` is sent).
        """
        writer = stream.writer
        total_input, cached = tokens.total, tokens.cached
        output_tokens = writer.output_tokens
        usage = Usage(
            input_tokens=total_input,
            input_tokens_details=InputTokensDetails(cached_tokens=cached, cache_write_tokens=0),
            output_tokens=output_tokens,
            total_tokens=total_input + output_tokens,
        )
        if reply.failed is not None:
            self._send_failed(stream, reply.failed, reply.message, usage=usage, output=True)
            raise EndResponse(evict=True)
        if reply.incomplete is not None:
            status = "incomplete"
            await stream.emit(writer.incomplete(usage, reply.incomplete))
            self.counters.responses_incomplete += 1
        else:
            status = "completed"
            await stream.emit(writer.completed(usage, completed_at=int(time.time())))
            self.counters.responses_completed += 1
        self.log.debug(
            "connection {} response {} {}: {} input tokens ({} cached), {} output tokens",
            self.index,
            writer.response.id,
            status,
            total_input,
            cached,
            output_tokens,
        )
        return status

    def _count_input(
        self,
        create: ResponseCreate,
        tools_raw: msgspec.Raw,
        parent: CachedResponse | None,
        parent_lane: Slot | None,
        new_input: list[Item],
    ) -> _InputTokens:
        """The input tokens of a response: all of them, the cached ones, the ones its
        request carries and the ones of a chain loaded from the store."""
        instructions = create.instructions if isinstance(create.instructions, str) else ""
        tools_bytes = len(tools_raw) if isinstance(create.tools, list) and create.tools else 0
        prefix_tokens = count_tokens(instructions) + -(-tools_bytes // 4)
        input_tokens = sum(count_tokens(item_text(item)) for item in new_input)
        parent_tokens = parent.context_tokens if parent is not None else 0
        return _InputTokens(
            total=parent_tokens + prefix_tokens + input_tokens,
            cached=self._cached_tokens(parent, parent_lane, prefix_tokens, new_input),
            sent=prefix_tokens + input_tokens,
            rehydrated=parent_tokens if parent_lane is None else 0,
            own=input_tokens,
        )

    def _cached_tokens(
        self,
        parent: CachedResponse | None,
        parent_lane: Slot | None,
        prefix_tokens: int,
        new_input: list[Item],
    ) -> int:
        """The input tokens served from a cache. On a WebSocket: the chain and the prefix
        (instructions, tools) when the parent came from the connection-local cache."""
        if parent is None or parent_lane is None:
            return 0
        return parent.context_tokens + prefix_tokens

    def _respond(
        self, create: ResponseCreate, context: tuple[Item, ...]
    ) -> tuple[list[UnknownItem], ModelReply]:
        """Ask the local model the create names for its reply, the create's hosted tools
        run in between (their output items come first)."""
        model = create.model if isinstance(create.model, str) else ""
        request = ModelRequest(
            model=model,
            instructions=(create.instructions if isinstance(create.instructions, str) else "")
            or None,
            tools=tuple(create.tools) if isinstance(create.tools, list) else (),
            context=context,
            parallel_tool_calls=create.parallel_tool_calls is not False,
            tool_choice=unset_or(create.tool_choice, "auto"),
            text_format=_text_format(create.text),
            max_tool_calls=unset_or(create.max_tool_calls, None),
        )
        hosted, reply = respond_with_hosted(self.server.policy_for(model), request, self._ids.item)
        return hosted, limit_output(reply, unset_or(create.max_output_tokens, None))

    def _remember(
        self,
        lane: Slot,
        stream: ResponseStream,
        parent: CachedResponse | None,
        new_input: list[Item],
        status: str,
        input_tokens: int,
        context: tuple[Item, ...] | None,
    ) -> None:
        """Keep a finished response as its lane's latest (and in the store with store=true).

        ``input_tokens`` are those of the request's own ``input`` items: the chain's earlier
        turns are counted by the parent, and instructions and tools by every request."""
        writer = stream.writer
        output_items = tuple(writer.output)
        cached_response = CachedResponse.create(
            writer.response.id,
            parent,
            tuple(new_input),
            output_items,
            status,
            store=writer.response.store is not False,
            tokens=input_tokens + sum(count_tokens(item_text(item)) for item in output_items),
            context=(*context, *output_items) if context is not None else None,
        )
        lane.latest = cached_response
        if cached_response.store:
            self.server._store.put(cached_response)

    def _send_failed(
        self,
        stream: ResponseStream,
        code: str,
        message: str | None,
        *,
        usage: Usage | None = None,
        output: bool = False,
    ) -> None:
        """End ``stream`` with ``response.failed`` (``output``: with what it produced)."""
        writer = stream.writer
        self.counters.responses_failed += 1
        self.log.debug(
            "connection {} response {} failed: {} ({} input tokens, {} output tokens)",
            self.index,
            writer.response.id,
            code,
            usage.input_tokens if usage is not None else 0,
            usage.output_tokens if usage is not None else 0,
        )
        failed = writer.failed(code, message, usage=usage, output=writer.output if output else ())
        stream.send_now(failed)

    async def _stream_output(
        self, stream: ResponseStream, parts: Iterable[Part], tokens_per_second: float | None
    ) -> None:
        """Send the events of the reply's output items, deltas paced at ``tokens_per_second``."""
        pace = 1.0 / tokens_per_second if tokens_per_second else 0.0
        # Deltas are due at fixed times from the first one: sleeping `pace` after each would
        # add every wake-up's lateness to the turn (tens of ms per turn with many streams).
        due = trio.current_time()
        for draft in stream.writer.items(parts):
            if pace and type(draft) in DELTAS:
                due += pace
                await trio.sleep_until(due)
            await stream.emit(draft)


def _parts(reply: ModelReply) -> Iterator[Part]:
    """The output items of a model's reply, in the order they are streamed."""
    if reply.reasoning:
        yield Reasoning(reply.reasoning, iter_text(reply.reasoning))
    if reply.text is not None:
        deltas = reply.text_deltas if reply.text_deltas is not None else iter_text(reply.text)
        # The message of an incomplete response is the one that was cut off.
        yield Text(reply.text, deltas, complete=reply.incomplete is None)
    for call in reply.calls:
        yield Call(call.name, call.arguments, split_arguments(call.arguments, call.deltas))


def _text_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` of a create, if it is an object."""
    if isinstance(text, dict) and isinstance(text.get("format"), dict):
        return dict(text["format"])
    return None


def unset_or(value: Any, default: Any) -> Any:
    """``value``, or ``default`` when the client left the field out."""
    return default if isinstance(value, UnsetType) else value


class _ToolsOnly(msgspec.Struct):
    tools: msgspec.Raw = _NO_TOOLS


_tools_decoder: Final = msgspec.json.Decoder(_ToolsOnly)


def tools_of(create: ResponseCreate, message: str | bytes) -> msgspec.Raw:
    """The ``tools`` of a create exactly as sent (msgspec skips everything else quickly)."""
    if not isinstance(create.tools, list) or not create.tools:
        return _NO_TOOLS
    # A copy: the decoded Raw points into the whole message, which it would keep alive.
    return _tools_decoder.decode(message).tools.copy()


def input_count(value: str | list[Item] | UnsetType) -> int:
    """How many input items a create carries (a string is one message)."""
    if isinstance(value, str):
        return 1
    return len(value) if isinstance(value, list) else 0


def _input_items(value: str | list[Item] | UnsetType) -> list[Item]:
    if isinstance(value, str):
        return [MessageItem(role="user", content=value)]
    if isinstance(value, list):
        return value
    return []


def _opaque(item_id: str, summary: str) -> str:
    """Stand-in for the service's encrypted reasoning: opaque to clients, and the same for
    the same item (a replay must carry it back unchanged)."""
    digest = hashlib.sha256(f"{item_id}\0{summary}".encode()).digest()
    return "gAAAAA" + base64.urlsafe_b64encode(digest * 4).decode()
