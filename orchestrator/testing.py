"""Public test helpers: in-memory transports to the embedded server, log capture.

These are for users' tests as much as ours: run an agent against the embedded server over an
in-memory stream pair, so trio's ``MockClock`` drives both sides and an hour costs
milliseconds.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import trio
import trio.testing
from loguru import logger

from orchestrator.core.logging import PACKAGES, redacting_patcher

if TYPE_CHECKING:
    from collections.abc import Iterator

    from orchestrator.core.endpoint import Connector
    from orchestrator.core.server.app import LocalServer

__all__ = ["capture_logs", "memory_connector"]


def memory_connector(server: LocalServer, nursery: trio.Nursery) -> Connector:
    """A connector whose every socket is an in-memory stream served by ``server``.

    The server side of each stream runs in ``nursery`` (typically the test's).
    """

    async def connect() -> trio.abc.Stream:
        client, served = trio.testing.memory_stream_pair()
        nursery.start_soon(server.handle_stream, served)
        await trio.lowlevel.checkpoint()
        return client

    return connect


@contextmanager
def capture_logs(level: str = "DEBUG", *, redact: bool = True) -> Iterator[list[str]]:
    """Collect every formatted log line of our packages (extra included) in a list.

    With ``redact`` (default), the same redaction patcher as the CLI's is installed, so a
    test sees what a user would see.
    """
    lines: list[str] = []

    def sink(message: Any) -> None:
        lines.append(str(message))

    for package in PACKAGES:
        logger.enable(package)
    if redact:
        logger.configure(patcher=redacting_patcher)
    handler = logger.add(
        sink, level=level, format="{level} {message} | {extra} | {exception}", diagnose=False
    )
    try:
        yield lines
    finally:
        logger.remove(handler)
        if redact:
            logger.configure(patcher=None)
        for package in PACKAGES:
            logger.disable(package)
