"""TurnAssembler: the server events of one request in, one final result out.

Sans-I/O, in the manner of h11: feed events with :meth:`TurnAssembler.receive`; it returns
``None`` until the request ends, then a :class:`Response` (``response.completed``,
``.failed`` or ``.incomplete``) or a :class:`RequestError` (an ``error`` event, which is that
request's terminal event, docs/protocol.md#the-error-event).

It enforces the ordering invariants of docs/protocol.md#event-order-rules and raises
:class:`RemoteProtocolError` on a violation; after that the assembler stays in ``ERROR`` and the
stream must be abandoned (docs/recovery.md#malformed-and-unknown-events: the turn fails and the
socket is dropped). Unknown event types are counted and otherwise ignored
(docs/recovery.md#malformed-and-unknown-events).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import attrs
from msgspec import UnsetType

from orchestrator.core.rules import retry_after_seconds
from orchestrator.errors import LocalProtocolError, RemoteProtocolError, ServerError

from .codec import decode_item, decode_items
from .events import (
    ContentPartAdded,
    ContentPartDone,
    ErrorEvent,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    FunctionCallItem,
    IncompleteDetails,
    Item,
    MessageItem,
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
    OutputTextDone,
    ReasoningSummaryPartAdded,
    ReasoningSummaryPartDone,
    ReasoningSummaryTextDelta,
    ReasoningSummaryTextDone,
    ReasoningTextDelta,
    ReasoningTextDone,
    RefusalDelta,
    RefusalDone,
    ResponseCompleted,
    ResponseCreated,
    ResponseError,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseLifecycleEvent,
    ResponseQueued,
    ServerEvent,
    SteerAccepted,
    SteerFailed,
    SteerPending,
    UnknownEvent,
    UnknownItem,
    Usage,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["RequestError", "Response", "TurnAssembler", "TurnState", "assemble"]


class TurnState(enum.Enum):
    AWAITING_CREATED = "awaiting_created"
    STREAMING = "streaming"
    DONE = "done"
    ERROR = "error"


@attrs.frozen
class Response:
    """The final result of one response, assembled from its stream.

    ``output`` holds the final items (from the terminal event, or from
    ``output_item.done`` when the terminal event carried none), ready to go into a transcript.
    """

    id: str
    status: str
    model: str
    output: tuple[Item, ...]
    usage: Usage | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    previous_response_id: str | None = None
    created_at: float = 0.0
    event_count: int = 0

    @property
    def text(self) -> str:
        """The assistant's text: the ``output_text`` of every message item, concatenated."""
        return "".join(item.text for item in self.output if isinstance(item, MessageItem))

    @property
    def function_calls(self) -> tuple[FunctionCallItem, ...]:
        """The function calls the model made, in output order."""
        return tuple(item for item in self.output if isinstance(item, FunctionCallItem))


@attrs.frozen
class RequestError:
    """An ``error`` event that ended a request (it never became, or stopped being, a response).

    ``response_id`` is set when the error arrived after ``response.created``.
    """

    code: str | None
    message: str
    status: int | None = None
    param: str | None = None
    error_type: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    response_id: str | None = None

    @classmethod
    def from_event(cls, event: ErrorEvent, response_id: str | None = None) -> RequestError:
        detail = event.detail()
        return cls(
            code=event.code_value,
            message=detail.message,
            status=event.http_status,
            param=detail.param if isinstance(detail.param, str) else None,
            error_type=detail.type if isinstance(detail.type, str) else None,
            headers=event.header_map,
            response_id=response_id,
        )

    @property
    def retry_after(self) -> float | None:
        """Seconds from a ``retry-after`` header, when the server sent one."""
        return retry_after_seconds(self.headers.get("retry-after"))

    def to_exception(self) -> ServerError:
        return ServerError(
            self.code,
            self.message,
            status=self.status,
            param=self.param,
            error_type=self.error_type,
            retry_after=self.retry_after,
        )


@attrs.define
class _ItemState:
    type: str
    id: str | None
    call_id: str | None
    done: bool = False


def _identity(item: Item) -> tuple[str, str | None, str | None]:
    if isinstance(item, UnknownItem):
        item_id = item.data.get("id")
        return item.type, item_id if isinstance(item_id, str) else None, None
    item_type: str = item.__struct_config__.tag  # type: ignore[assignment]
    item_id = getattr(item, "id", None)
    call_id = getattr(item, "call_id", None)
    return (
        item_type,
        None if isinstance(item_id, UnsetType) else item_id,
        call_id if isinstance(call_id, str) else None,
    )


@attrs.define(eq=False)
class TurnAssembler:
    """Assemble the events of one request on one lane.

    Args:
        stream_id: the lane this request was sent on; ``None`` for the default lane, whose
            events must not carry ``stream_id`` at all.
    """

    stream_id: str | None = None
    state: TurnState = TurnState.AWAITING_CREATED
    response_id: str | None = None
    unknown_events: int = 0
    event_count: int = 0
    _last_sequence: int = -1
    _items: dict[int, _ItemState] = attrs.field(factory=dict)
    _done_items: dict[int, Item] = attrs.field(factory=dict)
    _text: dict[tuple[int, int], list[str]] = attrs.field(factory=dict)
    _arguments: dict[int, list[str]] = attrs.field(factory=dict)
    _created_at: float = 0.0
    _model: str = ""
    _result: Response | RequestError | None = None

    # -- public API ---------------------------------------------------------------------------

    def receive(self, event: ServerEvent | UnknownEvent) -> Response | RequestError | None:
        """Feed the next event of this request.

        Returns:
            ``None`` while the request runs; the :class:`Response` or :class:`RequestError`
            that ended it.

        Raises:
            RemoteProtocolError: the event breaks an ordering invariant; the assembler is now
                in ``ERROR``.
            LocalProtocolError: an event was fed after the request ended (a caller bug).
        """
        if self.state is TurnState.DONE or self.state is TurnState.ERROR:
            raise LocalProtocolError(f"event fed to a turn assembler in state {self.state.value}")
        self.event_count += 1
        if isinstance(event, UnknownEvent):
            self.unknown_events += 1
            return None
        try:
            self._check_envelope(event)
            result = _HANDLERS[type(event)](self, event)
        except RemoteProtocolError:
            self.state = TurnState.ERROR
            raise
        if result is not None:
            self._result = result
        return result

    def finish(self) -> Response | RequestError:
        """Declare that no more events will come, and get the result.

        Raises:
            RemoteProtocolError: the stream was truncated before its terminal event.
        """
        if self.state is not TurnState.DONE or self._result is None:
            self.state = TurnState.ERROR
            raise RemoteProtocolError("stream ended before the response's terminal event")
        return self._result

    @property
    def text(self) -> str:
        """The text streamed so far (deltas of every message content), for live display.

        In output order (output_index, then content_index), like ``Response.text``, even when
        the server interleaves items.
        """
        return "".join("".join(self._text[key]) for key in sorted(self._text))

    # -- checks -------------------------------------------------------------------------------

    def _violation(self, message: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"{message} (response {self.response_id or 'not created'})")

    def _check_envelope(self, event: ServerEvent) -> None:
        stream_id = event.stream_id
        if self.stream_id is None:
            if not isinstance(stream_id, UnsetType):
                raise self._violation(f"event for lane {stream_id!r} on the default lane")
        elif stream_id != self.stream_id:
            if isinstance(event, ErrorEvent) and isinstance(stream_id, UnsetType):
                # connection-scoped errors carry no stream_id (docs/protocol.md#the-error-event)
                return
            raise self._violation(f"event for lane {stream_id!r} on lane {self.stream_id!r}")
        sequence = getattr(event, "sequence_number", None)
        if type(sequence) is int:
            if sequence <= self._last_sequence:
                raise self._violation(
                    f"{_type_name(event)} has sequence_number {sequence} "
                    f"after {self._last_sequence}"
                )
            self._last_sequence = sequence

    def _require_streaming(self, event: ServerEvent) -> None:
        if self.state is not TurnState.STREAMING:
            raise self._violation(f"{_type_name(event)} before response.created")

    def _check_same_response(self, event: ResponseLifecycleEvent) -> None:
        if event.response.id != self.response_id:
            raise self._violation(
                f"{_type_name(event)} names response {event.response.id!r}, "
                f"expected {self.response_id!r}"
            )

    def _open_item(self, event: Any) -> _ItemState:
        self._require_streaming(event)
        item = self._items.get(event.output_index)
        if item is None:
            raise self._violation(
                f"{_type_name(event)} for output_index {event.output_index} before "
                "response.output_item.added"
            )
        if item.done:
            raise self._violation(
                f"{_type_name(event)} for output_index {event.output_index} after "
                "response.output_item.done"
            )
        item_id = getattr(event, "item_id", None)
        if item_id is not None and item.id is not None and item_id != item.id:
            raise self._violation(
                f"{_type_name(event)} names item {item_id!r} at output_index "
                f"{event.output_index}, which holds {item.id!r}"
            )
        return item

    # -- handlers -----------------------------------------------------------------------------

    def _on_created(self, event: ResponseCreated) -> None:
        if self.state is not TurnState.AWAITING_CREATED:
            raise self._violation("second response.created in one request")
        self.state = TurnState.STREAMING
        self.response_id = event.response.id
        self._created_at = event.response.created_at
        self._model = event.response.model
        return None

    def _on_lifecycle(self, event: ResponseLifecycleEvent) -> None:
        self._require_streaming(event)
        self._check_same_response(event)
        return None

    def _on_item_added(self, event: OutputItemAdded) -> None:
        self._require_streaming(event)
        if event.output_index in self._items:
            raise self._violation(f"output_index {event.output_index} added twice")
        item_type, item_id, call_id = _identity(decode_item(event.item))
        self._items[event.output_index] = _ItemState(item_type, item_id, call_id)
        return None

    def _on_item_done(self, event: OutputItemDone) -> None:
        state = self._open_item(event)
        item = decode_item(event.item)
        item_type, item_id, call_id = _identity(item)
        if item_type != state.type:
            raise self._violation(
                f"output_item.done at index {event.output_index} is a {item_type!r}, "
                f"added as {state.type!r}"
            )
        if state.id is not None and item_id != state.id:
            raise self._violation(
                f"output_item.done at index {event.output_index} has id {item_id!r}, "
                f"added as {state.id!r}"
            )
        if state.call_id is not None and call_id != state.call_id:
            raise self._violation(
                f"output_item.done at index {event.output_index} has call_id {call_id!r}, "
                f"added as {state.call_id!r}"
            )
        state.done = True
        self._done_items[event.output_index] = item
        return None

    def _on_text_delta(self, event: OutputTextDelta) -> None:
        self._open_item(event)
        key = (event.output_index, event.content_index)
        parts = self._text.get(key)
        if parts is None:
            self._text[key] = [event.delta]
        else:
            parts.append(event.delta)
        return None

    def _on_arguments_delta(self, event: FunctionCallArgumentsDelta) -> None:
        self._open_item(event)
        self._arguments.setdefault(event.output_index, []).append(event.delta)
        return None

    def _on_content_event(self, event: Any) -> None:
        self._open_item(event)
        return None

    def _on_steer(self, event: ServerEvent) -> None:
        # Steering outcomes concern another request of the connection; they never end this one.
        return None

    def _on_error(self, event: ErrorEvent) -> RequestError:
        self.state = TurnState.DONE
        return RequestError.from_event(event, self.response_id)

    def _on_terminal(self, event: ResponseLifecycleEvent) -> Response:
        self._require_streaming(event)
        self._check_same_response(event)
        response = event.response
        output = decode_items(response.output)
        if isinstance(event, ResponseCompleted):
            unfinished = [
                index
                for index, state in self._items.items()
                if not state.done and not _listed(state, output)
            ]
            if unfinished:
                raise self._violation(
                    f"response.completed with unfinished output items at {unfinished}"
                )
        if not output and self._done_items:
            # The SDK rebuilds an omitted terminal output from output_item.done
            # (docs/protocol.md#event-order-rules, rule 6).
            output = [self._done_items[index] for index in sorted(self._done_items)]
        self.state = TurnState.DONE
        return Response(
            id=response.id,
            status=response.status,
            model=response.model or self._model,
            output=tuple(output),
            usage=response.usage,
            error=response.error,
            incomplete_details=response.incomplete_details,
            previous_response_id=response.previous_response_id,
            created_at=response.created_at or self._created_at,
            event_count=self.event_count,
        )


# Dispatch by event type, built once: a table of bound methods per assembler cost more than
# the checks of a whole function-call turn.
_HANDLERS: dict[type, Callable[[TurnAssembler, Any], Response | RequestError | None]] = {
    ResponseCreated: TurnAssembler._on_created,
    ResponseInProgress: TurnAssembler._on_lifecycle,
    ResponseQueued: TurnAssembler._on_lifecycle,
    ResponseCompleted: TurnAssembler._on_terminal,
    ResponseFailed: TurnAssembler._on_terminal,
    ResponseIncomplete: TurnAssembler._on_terminal,
    OutputItemAdded: TurnAssembler._on_item_added,
    OutputItemDone: TurnAssembler._on_item_done,
    OutputTextDelta: TurnAssembler._on_text_delta,
    OutputTextDone: TurnAssembler._on_content_event,
    ContentPartAdded: TurnAssembler._on_content_event,
    ContentPartDone: TurnAssembler._on_content_event,
    RefusalDelta: TurnAssembler._on_content_event,
    RefusalDone: TurnAssembler._on_content_event,
    FunctionCallArgumentsDelta: TurnAssembler._on_arguments_delta,
    FunctionCallArgumentsDone: TurnAssembler._on_content_event,
    ReasoningSummaryPartAdded: TurnAssembler._on_content_event,
    ReasoningSummaryPartDone: TurnAssembler._on_content_event,
    ReasoningSummaryTextDelta: TurnAssembler._on_content_event,
    ReasoningSummaryTextDone: TurnAssembler._on_content_event,
    ReasoningTextDelta: TurnAssembler._on_content_event,
    ReasoningTextDone: TurnAssembler._on_content_event,
    SteerAccepted: TurnAssembler._on_steer,
    SteerPending: TurnAssembler._on_steer,
    SteerFailed: TurnAssembler._on_steer,
    ErrorEvent: TurnAssembler._on_error,
}


def _listed(state: _ItemState, output: list[Item]) -> bool:
    for item in output:
        item_type, item_id, _call_id = _identity(item)
        if item_type == state.type and (state.id is None or item_id == state.id):
            return True
    return False


def _type_name(event: ServerEvent) -> str:
    tag = event.__struct_config__.tag
    return tag if isinstance(tag, str) else type(event).__name__


def assemble(
    events: Iterable[ServerEvent | UnknownEvent], *, stream_id: str | None = None
) -> Response | RequestError:
    """Assemble a complete recorded stream in one call.

    Raises:
        RemoteProtocolError: the stream is out of order, or ends before a terminal event, or
            has events after it.
    """
    assembler = TurnAssembler(stream_id=stream_id)
    result: Response | RequestError | None = None
    for event in events:
        if result is not None:
            raise RemoteProtocolError("event after the terminal event of the response")
        result = assembler.receive(event)
    return assembler.finish()
