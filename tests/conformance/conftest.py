"""Fixtures of the conformance suite: the embedded server on a real port, in its own thread.

The official SDK is asyncio-based and the server is trio, so each server runs ``trio.run`` in
a thread of its own while the test drives the SDK with ``asyncio.run`` in the main thread.
Teardown cancels the server through its trio token and joins the thread: nothing outlives
the test.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

from orchestrator.core.server import RunningServer, ServerConfig, serve_local_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


@attrs.define(eq=False)
class ServerThread:
    """One embedded server serving TCP from a thread until :meth:`stop`."""

    config: ServerConfig
    _thread: threading.Thread | None = None
    _trio_token: trio.lowlevel.TrioToken | None = None
    _cancel_scope: trio.CancelScope | None = None
    _running: RunningServer | None = None
    _failure: BaseException | None = None

    def start(self) -> RunningServer:
        started: queue.Queue[RunningServer | BaseException] = queue.Queue()
        self._thread = threading.Thread(
            target=self._main, args=(started,), name="embedded-server", daemon=True
        )
        self._thread.start()
        outcome = started.get(timeout=START_TIMEOUT)
        if isinstance(outcome, BaseException):
            raise RuntimeError("the embedded server did not start") from outcome
        self._running = outcome
        return outcome

    def _main(self, started: queue.Queue[RunningServer | BaseException]) -> None:
        try:
            trio.run(self._serve, started)
        except BaseException as exc:
            self._failure = exc
            started.put(exc)  # unblocks start() if it failed before reporting

    async def _serve(self, started: queue.Queue[RunningServer | BaseException]) -> None:
        with trio.CancelScope() as scope:
            # Known before anything can block, so stop() can always cancel.
            self._trio_token = trio.lowlevel.current_trio_token()
            self._cancel_scope = scope
            async with trio.open_nursery() as nursery:
                running: RunningServer = await nursery.start(serve_local_server, self.config)
                started.put(running)

    def stop(self) -> None:
        """Cancel the server, join its thread, and fail if anything went wrong inside it."""
        if self._thread is None:
            return
        if self._cancel_scope is not None and self._trio_token is not None:
            # RunFinishedError: it already ended, and _failure says why.
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._cancel_scope.cancel, trio_token=self._trio_token)
        self._thread.join(STOP_TIMEOUT)
        assert not self._thread.is_alive(), "the embedded server thread did not stop"
        if self._failure is not None:
            raise AssertionError("the embedded server crashed") from self._failure
        if self._running is not None:
            # Connection failures are isolated inside the server (closed with 1011 and only
            # counted); in a conformance run any of them is a bug.
            assert 0 == self._running.statistics().connection_errors


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningServer]]:
    """Start embedded servers (``ServerConfig`` fields as keywords, ``seed=1`` by default)."""
    with contextlib.ExitStack() as stack:  # stops every server, even if one stop() fails

        def start(**options: Any) -> RunningServer:
            thread = ServerThread(ServerConfig(**{"seed": 1, **options}))
            stack.callback(thread.stop)
            return thread.start()

        yield start


@pytest.fixture
def local_server(serve: Callable[..., RunningServer]) -> RunningServer:
    """An embedded server with default settings."""
    return serve()
