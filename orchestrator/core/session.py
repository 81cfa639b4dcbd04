"""Session: the conversation one agent holds, and how to continue it on any socket.

The session keeps the complete local transcript (every item sent and every final output
item) and the id of the last response. A turn normally sends only the new items plus
``previous_response_id``; when the server no longer holds the chain (a new socket with
``store=false``, ``previous_response_not_found``) the session builds a full replay instead:
the whole transcript plus the new items, as a new chain (docs/protocol.md#on-a-new-socket). Nothing
is lost either way.

A turn is atomic: :meth:`Session.commit` is the only mutation and happens once a response
completed, so a failed, cancelled or retried turn leaves the session exactly as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import attrs
import msgspec
from msgspec import UNSET, UnsetType

from orchestrator.core.protocol.events import (
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    MessageItem,
    ReasoningConfig,
    ResponseCreate,
    ToolDefinition,
)
from orchestrator.errors import LocalProtocolError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from orchestrator.core.protocol.turn import Response

__all__ = ["ENCRYPTED_REASONING", "ModelSettings", "Session", "TurnRequest"]

ENCRYPTED_REASONING: Final = "reasoning.encrypted_content"


class ModelSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Per-turn model settings, resent on every create. Unset fields are never sent."""

    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    max_output_tokens: int | UnsetType = UNSET
    reasoning: ReasoningConfig | UnsetType = UNSET
    text: dict[str, Any] | UnsetType = UNSET
    tool_choice: str | dict[str, Any] | UnsetType = UNSET
    parallel_tool_calls: bool | UnsetType = UNSET
    truncation: str | UnsetType = UNSET
    metadata: dict[str, str] | UnsetType = UNSET
    prompt_cache_key: str | UnsetType = UNSET
    service_tier: str | UnsetType = UNSET
    user: str | UnsetType = UNSET
    safety_identifier: str | UnsetType = UNSET


@attrs.frozen
class TurnRequest:
    """One ``response.create`` the session built, and how it relates to the chain.

    ``replay`` is true when ``create`` carries the full transcript as a new chain.
    """

    create: ResponseCreate
    new_items: tuple[Item, ...]
    replay: bool


@attrs.define(eq=False)
class Session:
    """An agent's conversation.

    Args:
        model: the model id, sent on every create.
        instructions: system/developer text, resent every turn (it is not inherited).
        tools: tool definitions, resent every turn: function tools and the service's hosted
            tools (:class:`~orchestrator.core.protocol.events.HostedTool`, sent verbatim).
        store: ``store`` on every create; ``False`` keeps responses only in the connection
            cache (the default: ZDR-friendly, and replays make it safe).
        settings: further per-turn settings; a forcing ``tool_choice`` applies to the first
            turn of a task only (see ``follow_up``).
        include: extra ``include`` values; ``reasoning.encrypted_content`` is added
            automatically when ``settings.reasoning`` is set and ``store`` is false, so a
            replay carries complete reasoning items.
    """

    model: str
    instructions: str | None = None
    tools: tuple[ToolDefinition, ...] = ()
    store: bool = False
    settings: ModelSettings = attrs.field(factory=ModelSettings)
    include: tuple[str, ...] = ()
    _transcript: list[Item] = attrs.field(factory=list, alias="transcript")
    last_response_id: str | None = None
    # The socket whose connection-local cache holds ``last_response_id`` (None: no socket).
    chain_socket: int | None = None
    # How many transcript items the chain head already holds (a warm-up made on another
    # socket while turns went on may lag behind; the next continuation sends the gap).
    _chain_covers: int = 0
    _pending: tuple[FunctionCallItem, ...] | None = attrs.field(default=None, init=False)
    # The next turn goes on with a task after its tool calls: a forcing ``tool_choice``
    # (``required``, a named tool) gives way to ``auto`` so that the model can answer; the
    # agent sets it before each turn (a forced choice on every turn could only loop).
    follow_up: bool = attrs.field(default=False, kw_only=True)
    turns: int = 0
    usage_input_tokens: int = 0
    usage_output_tokens: int = 0

    # -- reading ------------------------------------------------------------------------------

    @property
    def transcript(self) -> Sequence[Item]:
        """Every item sent and every final output item, in order (read-only view)."""
        return tuple(self._transcript)

    def __len__(self) -> int:
        return len(self._transcript)

    @property
    def effective_include(self) -> list[str] | UnsetType:
        values = list(self.include)
        if (
            not self.store
            and not isinstance(self.settings.reasoning, UnsetType)
            and ENCRYPTED_REASONING not in values
        ):
            values.append(ENCRYPTED_REASONING)
        return values if values else UNSET

    def can_continue_on(self, socket: int | None) -> bool:
        """Whether a continuation by id can work on ``socket``.

        With ``store=true`` any socket can hydrate the chain from storage; otherwise only
        the socket that produced (or warmed up) the last response holds it.
        """
        if self.last_response_id is None:
            return False
        return self.store or (socket is not None and socket == self.chain_socket)

    # -- building requests --------------------------------------------------------------------

    def _base(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "model": self.model,
            "store": self.store,
        }
        if self.instructions is not None:
            fields["instructions"] = self.instructions
        if self.tools:
            fields["tools"] = list(self.tools)
        include = self.effective_include
        if not isinstance(include, UnsetType):
            fields["include"] = include
        for name in self.settings.__struct_fields__:
            value = getattr(self.settings, name)
            if not isinstance(value, UnsetType):
                fields[name] = value
        if self.follow_up and fields.get("tool_choice", "auto") not in ("auto", "none"):
            fields["tool_choice"] = "auto"
        return fields

    def request(
        self, new_items: Iterable[Item], *, socket: int | None, replay: bool = False
    ) -> TurnRequest:
        """Build the create for a turn that adds ``new_items``.

        Continues by ``previous_response_id`` when ``socket`` holds the chain, else (or with
        ``replay``) sends the full transcript plus the new items as a new chain.
        """
        items = tuple(new_items)
        fields = self._base()
        if not replay and self.can_continue_on(socket):
            fields["previous_response_id"] = self.last_response_id
            fields["input"] = [*self._transcript[self._chain_covers :], *items]
            full = False
        else:
            fields["input"] = [*self._transcript, *items]
            full = True
        return TurnRequest(ResponseCreate(**fields), items, full)

    def warmup(self, *, socket: int | None) -> TurnRequest:
        """Build a ``generate: false`` create that prepares ``socket`` for the next turn.

        With ``store=true`` it continues by id with no input (hydrating the chain); otherwise
        it carries the whole transcript as a new chain.
        """
        fields = self._base()
        fields["generate"] = False
        if self.store and self.last_response_id is not None:
            fields["previous_response_id"] = self.last_response_id
            fields["input"] = list(self._transcript[self._chain_covers :])
            full = False
        else:
            fields["input"] = list(self._transcript)
            full = True
        return TurnRequest(ResponseCreate(**fields), (), full)

    # -- mutation -----------------------------------------------------------------------------

    def commit(self, request: TurnRequest, response: Response, *, socket: int | None) -> None:
        """Record a finished turn: its new items, the response's output, the new chain head.

        Raises:
            LocalProtocolError: the response is not a completed or incomplete one.
        """
        if response.status not in ("completed", "incomplete"):
            raise LocalProtocolError(f"cannot commit a {response.status} response")
        self._transcript.extend(request.new_items)
        self._transcript.extend(response.output)
        self._pending = tuple(i for i in response.output if isinstance(i, FunctionCallItem))
        self.last_response_id = response.id
        self.chain_socket = socket
        self._chain_covers = len(self._transcript)
        if request.create.generate is not False:
            self.turns += 1
        if response.usage is not None:
            self.usage_input_tokens += response.usage.input_tokens
            self.usage_output_tokens += response.usage.output_tokens

    def snapshot_length(self) -> int:
        """The transcript length now; pass it to :meth:`adopt_warmup` later."""
        return len(self._transcript)

    def adopt_warmup(self, response_id: str, *, socket: int, covers: int) -> None:
        """Make a warm-up response the chain head.

        Args:
            covers: the transcript length the warm-up carried (its :meth:`snapshot_length`);
                items added since are sent with the next continuation.
        """
        if not 0 <= covers <= len(self._transcript):
            raise LocalProtocolError(f"warm-up covers {covers} of {len(self)} items")
        self.last_response_id = response_id
        self.chain_socket = socket
        self._chain_covers = covers

    def restore(self, transcript: list[Item], *, turns: int, last_response_id: str | None) -> None:
        """Take the conversation a journal kept (a resumed job): no socket holds its chain,
        so the next turn replays it, unless ``store=true`` lets it continue by id."""
        self._transcript = list(transcript)
        self.turns = turns
        self.last_response_id = last_response_id
        self.chain_socket = None
        self._chain_covers = len(self._transcript)
        self._pending = None

    def reset(self) -> None:
        """Start a new conversation: an empty transcript and no chain. The turn count goes on
        (turn numbers name turns in the journal and in idempotency keys)."""
        self.restore([], turns=self.turns, last_response_id=None)

    def forget_chain(self) -> None:
        """The server lost the chain; the next request will be a full replay."""
        self.chain_socket = None
        self.last_response_id = None
        self._chain_covers = 0

    # -- helpers ------------------------------------------------------------------------------

    def pending_calls(self) -> tuple[FunctionCallItem, ...]:
        """Function calls of the transcript that have no output yet.

        Only the last response's calls can be unanswered (every continuation must answer
        all of them), so after the first scan this is kept up to date by :meth:`commit`.
        """
        if self._pending is None:
            answered = {
                i.call_id for i in self._transcript if isinstance(i, FunctionCallOutputItem)
            }
            self._pending = tuple(
                item
                for item in self._transcript
                if isinstance(item, FunctionCallItem) and item.call_id not in answered
            )
        return self._pending

    @staticmethod
    def user(text: str) -> MessageItem:
        return MessageItem.user(text)
