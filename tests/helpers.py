"""Shared test machinery: in-memory agents against the embedded server, a scripted conversation."""

from __future__ import annotations

import random
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from orchestrator.core.connection import Connection, ConnectionSettings, open_connection
from orchestrator.core.observe import EventBus, RuntimeEvent
from orchestrator.core.protocol.events import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    Item,
    MessageItem,
    ReasoningItem,
    UnknownItem,
)
from orchestrator.core.server import LocalServer, ServerConfig
from orchestrator.core.session import Session
from orchestrator.testing import memory_connector

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

LOCAL_URL = "ws://127.0.0.1/v1/responses"

LOOKUP = FunctionTool(
    "lookup",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "Look a city up.",
)

# A conversation the scripted model follows turn by turn (the turn index is the number of
# model turns already in the context, so a replay resumes at the right turn).
SCRIPT: dict[str, Any] = {
    "on_exhausted": "cycle",
    "turns": [
        {"function_calls": [{"name": "lookup", "arguments": {"city": "Lisbon"}, "deltas": 3}]},
        {"text": "Lisbon is sunny and 21 degrees today."},
        {
            "function_calls": [
                {"name": "lookup", "arguments": {"city": "Porto"}},
                {"name": "lookup", "arguments": {"city": "Faro"}},
            ]
        },
        {"text": "Porto is cloudy; Faro is hot. Pack for both."},
        {"text": "A plain answer without tools, in several words to stream."},
    ],
}

PROMPTS = ("Weather in Lisbon?", "And Porto and Faro?", "Anything else?") * 2


@attrs.define
class Recorder:
    """Collects runtime events from a bus; tests can wait for one to arrive."""

    events: list[RuntimeEvent] = attrs.field(factory=list)
    _arrived: trio.Event | None = None

    def __call__(self, event: RuntimeEvent) -> None:
        self.events.append(event)
        if self._arrived is not None:
            self._arrived.set()

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    async def wait_for(self, kind: type[Any], count: int = 1) -> None:
        """Wait until ``count`` events of ``kind`` were recorded."""
        while len(self.of(kind)) < count:
            self._arrived = trio.Event()
            await self._arrived.wait()


@asynccontextmanager
async def memory_agent(
    config: ServerConfig | None = None,
    settings: ConnectionSettings | None = None,
    *,
    server: LocalServer | None = None,
    token: str | None = None,
    seed: int = 0,
) -> AsyncIterator[tuple[LocalServer, Connection, Recorder]]:
    """An agent connection to an in-process server over in-memory streams."""
    if server is None:
        server = LocalServer.from_config(config or ServerConfig(script=SCRIPT, seed=1))
    bus = EventBus()
    recorder = Recorder()
    bus.add_listener(recorder)
    async with trio.open_nursery() as nursery:
        async with open_connection(
            LOCAL_URL,
            token if token is not None else server.token,
            settings=settings or ConnectionSettings(),
            connector=memory_connector(server, nursery),
            events=bus,
            rng=random.Random(seed),
        ) as connection:
            yield server, connection, recorder
        nursery.cancel_scope.cancel()


def scripted_session() -> Session:
    return Session(
        model="local-scripted", instructions="Answer about the weather.", tools=(LOOKUP,)
    )


async def converse(
    connection: Connection, session: Session, prompts: tuple[str, ...], executed: list[str]
) -> None:
    """The agent loop: each prompt, then tool rounds until a text answer.

    Tools run only on calls from a *returned* response; ``executed`` records each call id
    so a test can prove no call was run twice or from a partial stream.
    """
    for prompt in prompts:
        response = await connection.run_turn(session, [MessageItem.user(prompt)])
        while response.function_calls:
            outputs: list[Item] = []
            for call in response.function_calls:
                executed.append(call.call_id)
                outputs.append(
                    FunctionCallOutputItem(
                        call_id=call.call_id, output=f"{call.name} -> {call.arguments}"
                    )
                )
            response = await connection.run_turn(session, outputs)


def normalised(items: Any) -> list[tuple[Any, ...]]:
    """A transcript with server-chosen ids replaced by their order of appearance."""
    names: dict[str, str] = {}

    def name(value: str) -> str:
        return names.setdefault(value, f"#{len(names)}")

    shaped: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, MessageItem):
            shaped.append(("message", item.role, item.text))
        elif isinstance(item, FunctionCallItem):
            shaped.append(("call", name(item.call_id), item.name, item.arguments))
        elif isinstance(item, FunctionCallOutputItem):
            shaped.append(("output", name(item.call_id), item.output))
        elif isinstance(item, ReasoningItem):
            shaped.append(("reasoning", tuple(part.text for part in item.summary)))
        elif isinstance(item, UnknownItem):
            shaped.append(("unknown", item.type))
        else:
            shaped.append((type(item).__name__,))
    return shaped
