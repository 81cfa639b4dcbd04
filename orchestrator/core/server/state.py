"""Response state of the embedded server: cached responses, the lane slots, the store, ids.

docs/protocol.md#the-connection-local-cache: each lane of a connection keeps its latest response in
a connection-local cache (that is what ``previous_response_id`` continues from, with ``store`` true
or false); responses created with ``store: true`` are also kept in a process-wide store usable from
any connection. A response knows its parent, so its full context is the chain of inputs and
outputs from the root.
"""

from __future__ import annotations

import random
import secrets
import string
from collections import OrderedDict
from typing import Final

import attrs

from orchestrator.core.protocol.events import FunctionCallItem, FunctionCallOutputItem, Item

from .models import count_tokens, item_text

__all__ = ["CachedResponse", "IdFactory", "ResponseStore"]


@attrs.define(eq=False, slots=True)
class CachedResponse:
    """A finished response as the server remembers it."""

    id: str
    parent: CachedResponse | None
    input: tuple[Item, ...]
    output: tuple[Item, ...]
    status: str
    store: bool
    context_tokens: int = 0
    #: ``call_id`` of every function call in this response's own input and output.
    call_ids: frozenset[str] = frozenset()
    # The whole context, kept by the newest response of a chain only (a continuation takes
    # it over), so a turn never walks the chain and a chain costs O(n) memory, not O(n^2).
    _context: tuple[Item, ...] | None = None

    @classmethod
    def create(
        cls,
        id: str,
        parent: CachedResponse | None,
        input: tuple[Item, ...],
        output: tuple[Item, ...],
        status: str,
        *,
        store: bool,
        tokens: int | None = None,
        context: tuple[Item, ...] | None = None,
    ) -> CachedResponse:
        """A response to remember.

        Args:
            tokens: the tokens of ``input`` and ``output`` if the caller counted them.
            context: the full context (parent's, then ``input`` and ``output``) if the
                caller built it; the parent then gives up its copy.
        """
        if tokens is None:
            tokens = sum(count_tokens(item_text(item)) for item in (*input, *output))
        call_ids = frozenset(
            item.call_id for item in (*input, *output) if isinstance(item, FunctionCallItem)
        )
        if context is not None and parent is not None:
            parent._context = None
        parent_tokens = parent.context_tokens if parent else 0
        return cls(
            id, parent, input, output, status, store, parent_tokens + tokens, call_ids, context
        )

    def context(self) -> tuple[Item, ...]:
        """Every item of the chain up to and including this response's output."""
        if self._context is not None:
            return self._context
        chain: list[CachedResponse] = []
        node: CachedResponse | None = self
        while node is not None:
            chain.append(node)
            node = node.parent
        items: list[Item] = []
        for node in reversed(chain):
            items.extend(node.input)
            items.extend(node.output)
        return tuple(items)

    def has_call(self, call_id: str) -> bool:
        """Whether a function call with ``call_id`` is anywhere in this chain.

        The newest responses are looked at first: a tool output almost always answers a
        call of the response it continues.
        """
        node: CachedResponse | None = self
        while node is not None:
            if call_id in node.call_ids:
                return True
            node = node.parent
        return False

    def pending_call_ids(self) -> set[str]:
        """The ``call_id`` of every function call in this response's own output."""
        return {item.call_id for item in self.output if isinstance(item, FunctionCallItem)}


def call_ids_in(items: list[Item] | tuple[Item, ...]) -> tuple[set[str], set[str]]:
    """The call ids of function calls and of function call outputs among ``items``."""
    calls = {item.call_id for item in items if isinstance(item, FunctionCallItem)}
    outputs = {item.call_id for item in items if isinstance(item, FunctionCallOutputItem)}
    return calls, outputs


@attrs.define(eq=False)
class ResponseStore:
    """The process-wide store of ``store: true`` responses, least recently used evicted."""

    capacity: int = 10_000
    _entries: OrderedDict[str, CachedResponse] = attrs.field(factory=OrderedDict)

    def put(self, response: CachedResponse) -> None:
        self._entries[response.id] = response
        self._entries.move_to_end(response.id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> CachedResponse | None:
        response = self._entries.get(response_id)
        if response is not None:
            self._entries.move_to_end(response_id)
        return response

    def __len__(self) -> int:
        return len(self._entries)


_ALPHABET: Final = string.ascii_letters + string.digits


@attrs.define(eq=False)
class IdFactory:
    """Ids with the service's prefixes (``resp_``, ``msg_``, ``fc_``, ``call_``, ``rs_``).

    With a seed, a connection's ids depend only on the seed and the connection's index.
    """

    seed: int | None
    connection: int
    _rng: random.Random | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if self.seed is not None:
            self._rng = random.Random(f"{self.seed}:{self.connection}")

    def _token(self, length: int) -> str:
        if self._rng is None:
            return secrets.token_hex(length // 2)
        return "".join(self._rng.choices(_ALPHABET, k=length))

    def response(self) -> str:
        return "resp_" + self._token(32)

    def message(self) -> str:
        return "msg_" + self._token(24)

    def function_call(self) -> str:
        return "fc_" + self._token(24)

    def call(self) -> str:
        return "call_" + self._token(24)

    def reasoning(self) -> str:
        return "rs_" + self._token(24)

    def item(self, prefix: str) -> str:
        """An output item id with ``prefix`` (``ws``, ``fs``, ``mcp``...)."""
        return f"{prefix}_" + self._token(24)
