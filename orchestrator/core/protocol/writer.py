"""ResponseWriter: a model's reply in, the exact ordered server events of one response out.

The server's half of :mod:`orchestrator.core.protocol.turn`, sans-I/O in the same way: it never
sends, sleeps or reads a clock. It produces *drafts*: the typed event Structs, complete but for
their ``sequence_number``. The glue decides when each leaves (a latency model may wait before
a delta, an injected fault may fire first) and :meth:`ResponseWriter.take` numbers it at
that moment, so the events of one response reach the socket numbered 0, 1, 2... in order
even when other senders (a steer answer) take numbers in between.

The sequence of a response (docs/protocol.md#server-events)::

    response.created, response.in_progress
    per output item, in order:
      reasoning  output_item.added, reasoning_summary_part.added,
                 reasoning_summary_text.delta*, reasoning_summary_text.done,
                 reasoning_summary_part.done, output_item.done
      message    output_item.added, content_part.added, output_text.delta*,
                 output_text.done, content_part.done, output_item.done
      call       output_item.added, function_call_arguments.delta*,
                 function_call_arguments.done, output_item.done
    one of response.completed / response.incomplete / response.failed, or an ``error``

Every lifecycle event carries the response object of ``response.created`` (one
``created_at`` for all), the terminal one with its status, output and usage filled in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import attrs
import msgspec
from msgspec import UNSET, UnsetType

from orchestrator.errors import LocalProtocolError

from .codec import raw
from .events import (
    ContentPart,
    ContentPartAdded,
    ContentPartDone,
    ErrorDetail,
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
    ReasoningItem,
    ReasoningSummaryPartAdded,
    ReasoningSummaryPartDone,
    ReasoningSummaryTextDelta,
    ReasoningSummaryTextDone,
    ResponseCompleted,
    ResponseCreate,
    ResponseCreated,
    ResponseError,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseObject,
    ServerEvent,
    SummaryPart,
    UnknownItem,
    Usage,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "DELTAS",
    "DRAFT",
    "Call",
    "ItemIds",
    "Part",
    "Reasoning",
    "ResponseWriter",
    "Text",
    "error_event",
    "error_type",
    "response_object",
]

_NO_TOOLS: Final = msgspec.Raw(b"[]")


class ItemIds(Protocol):
    """Where the writer takes the ids of the items it creates, one at a time, as it reaches
    each item (so ids drawn from one seeded source interleave as the responses do)."""

    def message(self) -> str: ...

    def function_call(self) -> str: ...

    def call(self) -> str: ...

    def reasoning(self) -> str: ...


# -- what a reply is made of -------------------------------------------------------------------


@attrs.frozen
class Reasoning:
    """A reasoning item with a summary, streamed as ``deltas`` (their concatenation)."""

    summary: str
    deltas: Iterable[str]


@attrs.frozen
class Text:
    """An assistant message streamed as ``deltas``; ``complete`` false: it was cut off
    (the message of an incomplete response)."""

    text: str
    deltas: Iterable[str]
    complete: bool = True


@attrs.frozen
class Call:
    """A function call whose JSON ``arguments`` are streamed as ``deltas``."""

    name: str
    arguments: str
    deltas: Sequence[str]


@attrs.frozen
class Hosted:
    """An output item a hosted tool finished inside the response (a ``web_search_call``,
    an ``mcp_call``...), kept verbatim: announced ``in_progress`` when it has a status, then
    done."""

    item: UnknownItem


Part = Reasoning | Text | Call | Hosted


#: The ``sequence_number`` of a draft: :meth:`ResponseWriter.take` gives the real one.
DRAFT: Final = -1
#: The deltas: a model's output, which a latency model spaces out in time.
DELTAS: Final[frozenset[type[ServerEvent]]] = frozenset(
    {OutputTextDelta, FunctionCallArgumentsDelta, ReasoningSummaryTextDelta}
)
_ENDINGS: Final[frozenset[type[ServerEvent]]] = frozenset(
    {ResponseCompleted, ResponseIncomplete, ResponseFailed, ErrorEvent}
)
E = TypeVar("E", bound=ServerEvent)


# -- the writer ------------------------------------------------------------------------------------


@attrs.define(eq=False)
class ResponseWriter:
    """The events of one response, in order, numbered as the glue takes them.

    Every method but :meth:`take` returns *drafts*: the events with ``sequence_number``
    :data:`DRAFT`. A draft left untaken was never sent (a fault may end the response in
    its place).

    Args:
        response: the response object ``response.created`` announces (status
            ``in_progress``); see :func:`response_object`.
        ids: the source of item ids.
        stream_id: the lane, echoed on every event; ``UNSET`` on the default lane.
        seal: makes a reasoning item's ``encrypted_content`` from its id and summary
            (what ``include: ["reasoning.encrypted_content"]`` asks for); ``None``: none.
    """

    response: ResponseObject
    ids: ItemIds
    stream_id: str | UnsetType = UNSET
    seal: Callable[[str, str], str] | None = None
    #: The number the next event gets (so also how many have been numbered).
    sequence: int = 0
    #: The output items finished so far (``output_item.done`` drafted), in order.
    output: list[Item] = attrs.field(factory=list)
    #: Deltas drafted so far, at least one per function call: the reply's output tokens.
    output_tokens: int = 0
    #: The event that ends the response has been taken.
    _ended: bool = False

    # -- numbering --------------------------------------------------------------------------------

    def next_sequence(self) -> int:
        """Take the next sequence number (for an event sent outside the drafts: a steer
        answer, an injected error)."""
        number = self.sequence
        self.sequence = number + 1
        return number

    def take(self, draft: E) -> E:
        """The draft, numbered now: call it right before sending.

        Raises:
            LocalProtocolError: the response has already ended (a glue bug).
        """
        if self._ended:
            raise LocalProtocolError(f"response {self.response.id} has already ended")
        if type(draft) in _ENDINGS:
            self._ended = True
        number = self.sequence
        self.sequence = number + 1
        return msgspec.structs.replace(draft, sequence_number=number)

    # -- the sequence -----------------------------------------------------------------------------

    def opening(self) -> tuple[ResponseCreated, ResponseInProgress]:
        """``response.created`` and ``response.in_progress``."""
        response, lane = self.response, self.stream_id
        return (
            ResponseCreated(sequence_number=DRAFT, stream_id=lane, response=response),
            ResponseInProgress(sequence_number=DRAFT, stream_id=lane, response=response),
        )

    def created(self) -> ResponseCreated:
        """``response.created`` alone (a response that fails before it began must exist)."""
        return ResponseCreated(
            sequence_number=DRAFT, stream_id=self.stream_id, response=self.response
        )

    def items(self, parts: Iterable[Part]) -> Iterator[ServerEvent]:
        """The events of each output item, in order; each item's id is drawn on reaching it.

        Raises:
            LocalProtocolError: the response has already ended.
        """
        self._check_open()
        for part in parts:
            if isinstance(part, Reasoning):
                yield from self._reasoning(part)
            elif isinstance(part, Text):
                yield from self._message(part)
            elif isinstance(part, Hosted):
                yield from self._hosted(part)
            else:
                yield from self._call(part)

    def completed(self, usage: Usage, *, completed_at: float) -> ResponseCompleted:
        """``response.completed`` with the output so far and ``usage``."""
        self._check_open()
        final = msgspec.structs.replace(
            self.response,
            status="completed",
            completed_at=completed_at,
            output=raw(self.output),
            usage=usage,
        )
        return ResponseCompleted(sequence_number=DRAFT, stream_id=self.stream_id, response=final)

    def incomplete(self, usage: Usage, reason: str) -> ResponseIncomplete:
        """``response.incomplete`` (e.g. ``max_output_tokens``) with the output so far."""
        self._check_open()
        final = msgspec.structs.replace(
            self.response,
            status="incomplete",
            incomplete_details=IncompleteDetails(reason=reason),
            output=raw(self.output),
            usage=usage,
        )
        return ResponseIncomplete(sequence_number=DRAFT, stream_id=self.stream_id, response=final)

    def failed(
        self,
        code: str,
        message: str | None,
        *,
        usage: Usage | None = None,
        output: Sequence[Item] = (),
    ) -> ResponseFailed:
        """``response.failed`` with ``response.error`` set (``output``: what was produced)."""
        self._check_open()
        final = msgspec.structs.replace(
            self.response,
            status="failed",
            output=raw(list(output)),
            usage=usage,
            error=ResponseError(code=code, message=message or "The model failed to respond."),
        )
        return ResponseFailed(sequence_number=DRAFT, stream_id=self.stream_id, response=final)

    def error(self, status: int, code: str | None, message: str) -> ErrorEvent:
        """A request-scoped ``error`` event that ends this response
        (docs/protocol.md#the-error-event)."""
        self._check_open()
        return error_event(status, code, message, stream_id=self.stream_id, sequence_number=DRAFT)

    # -- items ------------------------------------------------------------------------------------

    def _reasoning(self, part: Reasoning) -> Iterator[ServerEvent]:
        index, lane = len(self.output), self.stream_id
        item_id = self.ids.reasoning()
        summary = part.summary
        added = ReasoningItem(id=item_id, summary=[], status="in_progress")
        yield OutputItemAdded(
            sequence_number=DRAFT, stream_id=lane, output_index=index, item=raw(added)
        )
        yield ReasoningSummaryPartAdded(
            sequence_number=DRAFT,
            stream_id=lane,
            item_id=item_id,
            output_index=index,
            summary_index=0,
            part=SummaryPart(text=""),
        )
        for piece in part.deltas:
            self.output_tokens += 1
            yield ReasoningSummaryTextDelta(
                sequence_number=DRAFT,
                stream_id=lane,
                item_id=item_id,
                output_index=index,
                summary_index=0,
                delta=piece,
            )
        yield ReasoningSummaryTextDone(
            sequence_number=DRAFT,
            stream_id=lane,
            item_id=item_id,
            output_index=index,
            summary_index=0,
            text=summary,
        )
        yield ReasoningSummaryPartDone(
            sequence_number=DRAFT,
            stream_id=lane,
            item_id=item_id,
            output_index=index,
            summary_index=0,
            part=SummaryPart(text=summary),
        )
        done = ReasoningItem(
            id=item_id,
            summary=[SummaryPart(text=summary)],
            status="completed",
            encrypted_content=self.seal(item_id, summary) if self.seal is not None else UNSET,
        )
        yield OutputItemDone(
            sequence_number=DRAFT, stream_id=lane, output_index=index, item=raw(done)
        )
        self.output.append(done)

    def _message(self, part: Text) -> Iterator[ServerEvent]:
        index, lane = len(self.output), self.stream_id
        item_id = self.ids.message()
        text = part.text
        added = MessageItem(id=item_id, role="assistant", status="in_progress", content=[])
        yield OutputItemAdded(
            sequence_number=DRAFT, stream_id=lane, output_index=index, item=raw(added)
        )
        yield ContentPartAdded(
            sequence_number=DRAFT,
            stream_id=lane,
            item_id=item_id,
            output_index=index,
            content_index=0,
            part=ContentPart.output_text(""),
        )
        for piece in part.deltas:
            self.output_tokens += 1
            yield OutputTextDelta(
                sequence_number=DRAFT,
                stream_id=lane,
                item_id=item_id,
                output_index=index,
                content_index=0,
                delta=piece,
            )
        yield OutputTextDone(
            sequence_number=DRAFT,
            stream_id=lane,
            item_id=item_id,
            output_index=index,
            content_index=0,
            text=text,
        )
        yield ContentPartDone(
            sequence_number=DRAFT,
            stream_id=lane,
            item_id=item_id,
            output_index=index,
            content_index=0,
            part=ContentPart.output_text(text),
        )
        done = MessageItem(
            id=item_id,
            role="assistant",
            status="completed" if part.complete else "incomplete",
            content=[ContentPart.output_text(text)],
        )
        yield OutputItemDone(
            sequence_number=DRAFT, stream_id=lane, output_index=index, item=raw(done)
        )
        self.output.append(done)

    def _call(self, part: Call) -> Iterator[ServerEvent]:
        index, lane = len(self.output), self.stream_id
        item_id = self.ids.function_call()
        call_id = self.ids.call()
        name, arguments = part.name, part.arguments
        added = FunctionCallItem(
            id=item_id, call_id=call_id, name=name, arguments="", status="in_progress"
        )
        yield OutputItemAdded(
            sequence_number=DRAFT, stream_id=lane, output_index=index, item=raw(added)
        )
        # A call costs at least one output token, even with empty arguments.
        self.output_tokens += 1
        for number, piece in enumerate(part.deltas):
            self.output_tokens += number > 0
            yield FunctionCallArgumentsDelta(
                sequence_number=DRAFT,
                stream_id=lane,
                item_id=item_id,
                output_index=index,
                delta=piece,
            )
        yield FunctionCallArgumentsDone(
            sequence_number=DRAFT,
            stream_id=lane,
            item_id=item_id,
            output_index=index,
            arguments=arguments,
            name=name,
        )
        done = FunctionCallItem(
            id=item_id, call_id=call_id, name=name, arguments=arguments, status="completed"
        )
        yield OutputItemDone(
            sequence_number=DRAFT, stream_id=lane, output_index=index, item=raw(done)
        )
        self.output.append(done)

    def _hosted(self, part: Hosted) -> Iterator[ServerEvent]:
        index, lane, item = len(self.output), self.stream_id, part.item
        added = raw({**item.data, "status": "in_progress"} if "status" in item.data else item)
        yield OutputItemAdded(sequence_number=DRAFT, stream_id=lane, output_index=index, item=added)
        yield OutputItemDone(
            sequence_number=DRAFT, stream_id=lane, output_index=index, item=raw(item)
        )
        self.output.append(item)

    # -- helpers ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._ended:
            raise LocalProtocolError(f"response {self.response.id} has already ended")


# -- the response object and errors --------------------------------------------------------------


def _or(value: Any, default: Any) -> Any:
    return default if isinstance(value, UnsetType) else value


def response_object(
    create: ResponseCreate,
    response_id: str,
    *,
    created_at: float,
    tools: msgspec.Raw = _NO_TOOLS,
) -> ResponseObject:
    """The ``in_progress`` response object a create starts: its settings echoed, with the
    service's defaults for those it left out (docs/protocol.md#the-response-object).

    Args:
        tools: the create's ``tools`` exactly as sent (echoed without re-encoding).
    """
    return ResponseObject(
        id=response_id,
        created_at=created_at,
        status="in_progress",
        model=create.model if isinstance(create.model, str) else "",
        tools=tools,
        tool_choice=_or(create.tool_choice, "auto"),
        parallel_tool_calls=_or(create.parallel_tool_calls, True) is not False,
        completed_at=None,
        instructions=_or(create.instructions, None),
        previous_response_id=_or(create.previous_response_id, None),
        metadata=_or(create.metadata, None) or {},
        store=_or(create.store, True) is not False,
        temperature=_or(create.temperature, 1.0),
        top_p=_or(create.top_p, 1.0),
        max_output_tokens=_or(create.max_output_tokens, None),
        max_tool_calls=_or(create.max_tool_calls, None),
        reasoning=_or(create.reasoning, None),
        text=_or(create.text, None) or {"format": {"type": "text"}},
        truncation=_or(create.truncation, "disabled"),
        service_tier=_or(create.service_tier, "default"),
        prompt_cache_key=_or(create.prompt_cache_key, None),
        safety_identifier=_or(create.safety_identifier, None),
        user=_or(create.user, None),
        background=False,
        top_logprobs=_or(create.top_logprobs, None),
    )


def error_type(status: int) -> str:
    """The ``error.type`` for an HTTP status, the one rule for every error a server builds.

    5xx is ``server_error``; 429 is ``requests``, the rate-limit class the HTTP API sends with
    ``rate_limit_exceeded`` (docs/protocol.md#the-error-event "rate-limit classes"; the SDK maps
    errors by status and never reads the type); every other status is ``invalid_request_error``,
    including 401 (docs/protocol.md#refused-handshakes) and 409 (docs/protocol.md#error-codes).
    """
    if status >= 500:
        return "server_error"
    if status == 429:
        return "requests"
    return "invalid_request_error"


def error_event(
    status: int,
    code: str | None,
    message: str,
    *,
    param: str | None = None,
    stream_id: str | UnsetType = UNSET,
    sequence_number: int | UnsetType = UNSET,
    headers: dict[str, str] | UnsetType = UNSET,
) -> ErrorEvent:
    """An ``error`` event in the service's nested shape (docs/protocol.md#the-error-event)."""
    return ErrorEvent(
        status=status,
        error=ErrorDetail(
            type=error_type(status), code=code, message=message, param=param, headers=headers
        ),
        stream_id=stream_id,
        sequence_number=sequence_number,
    )
