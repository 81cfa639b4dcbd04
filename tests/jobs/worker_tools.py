"""A side-effecting tool for the worker tests: each call appends one line to the file named by
``$ORCHESTRATOR_TEST_EFFECTS`` (its idempotency key, attempt, process and wall time), the way
a service that honours idempotency keys would log what it was asked to apply."""

from __future__ import annotations

import os
import time
from typing import Final

from actors.tools import ToolContext, tool

EFFECTS_ENV: Final = "ORCHESTRATOR_TEST_EFFECTS"


@tool(side_effect="idempotent_write", timeout=10)
def record(note: str, context: ToolContext) -> str:
    """Record a note in the ledger.

    Args:
        note: what to record.
    """
    line = f"{context.idempotency_key}\t{context.attempt}\t{os.getpid()}\t{time.time():.6f}\n"
    descriptor = os.open(os.environ[EFFECTS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line.encode())  # one write with O_APPEND: lines never interleave
    finally:
        os.close(descriptor)
    return f"recorded {note!r}"
