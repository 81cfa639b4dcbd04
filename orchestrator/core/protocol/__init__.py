"""Sans-I/O core of the Responses API WebSocket protocol: events, codec, turn assembly,
the recovery decisions of a turn, and the server's response writer.

Nothing here does I/O, reads a clock or configures logging; ``orchestrator.core.connection`` and
``orchestrator.core.server`` are the glue that does.
"""

from .codec import (
    decode_client_event as decode_client_event,
    decode_item as decode_item,
    decode_items as decode_items,
    decode_server_event as decode_server_event,
    encode as encode,
    encode_text as encode_text,
)
from .events import *  # noqa: F403 - events.__all__ is the wire vocabulary
from .events import __all__ as _events_all
from .lifecycle import ConnectionLifecycle as ConnectionLifecycle
from .recovery import RecoveryPolicy as RecoveryPolicy, TurnRecovery as TurnRecovery
from .turn import (
    RequestError as RequestError,
    Response as Response,
    TurnAssembler as TurnAssembler,
    TurnState as TurnState,
    assemble as assemble,
)
from .writer import ResponseWriter as ResponseWriter

__all__ = [
    *_events_all,
    "ConnectionLifecycle",
    "RecoveryPolicy",
    "RequestError",
    "Response",
    "ResponseWriter",
    "TurnAssembler",
    "TurnRecovery",
    "TurnState",
    "assemble",
    "decode_client_event",
    "decode_item",
    "decode_items",
    "decode_server_event",
    "encode",
    "encode_text",
]
