"""The JSONL trace of a run (``orchestrator run --trace FILE``), described in docs/trace.md.

One line per runtime event, as soon as it happens: the event's own fields (``type`` first,
``time`` on trio's clock) plus ``at``, the wall-clock time in ISO 8601 (UTC, milliseconds).
Lines are redacted (keys and bearer tokens never reach the file) and texts from models and
tools are already capped by the events themselves (``observe.TEXT_LIMIT``).
"""

from __future__ import annotations

import datetime
import time
from typing import IO, TYPE_CHECKING

import attrs
import trio

from orchestrator.core.logging import redact
from orchestrator.core.observe import event_encoder

if TYPE_CHECKING:
    from orchestrator.core.observe import RuntimeEvent

__all__ = ["TraceWriter", "wall_time"]


def wall_time(timestamp: float) -> str:
    """``timestamp`` (seconds since the epoch) as ISO 8601 in UTC with milliseconds:
    ``2026-05-14T08:30:00.125Z``."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.define(eq=False)
class TraceWriter:
    """A bus listener that writes each event as one JSON line to ``file``.

    Create it inside ``trio.run``: it reads the offset between trio's clock (the events'
    ``time``) and the wall clock once, so ``at`` and ``time`` of one line always agree.
    """

    file: IO[bytes]
    _offset: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._offset = time.time() - trio.current_time()

    def __call__(self, event: RuntimeEvent) -> None:
        encoded = event_encoder.encode(event)
        # The tag comes first ({"type":"turn.finished","time":...}): "at" goes right after it.
        head, _, rest = encoded.partition(b",")
        at = wall_time(event.time + self._offset).encode()
        line = head + b',"at":"' + at + b'",' + rest
        # Events carry error texts, tool arguments and outputs, model text: redact them.
        self.file.write(redact(line.decode()).encode() + b"\n")
