"""One writer thread per store: it owns the write connection and commits in groups.

The trio thread never touches the database. It hands a :class:`Ticket` (a journal write, or
a command to run in a transaction of its own) to the :class:`WriterThread` and either goes on
at once (a write-behind) or awaits the ticket. The thread takes everything queued, applies
consecutive journal writes in **one** transaction (group commit: with many agents one fsync
serves many writes, and their order is kept), then wakes the waiting tasks through the trio
token, one callback per batch.

A failed transaction is retried write by write, so one bad write cannot fail its neighbours.

**Lingering.** When only written-behind writes are queued, the thread waits up to ``linger``
seconds (2 ms by default) for more before it commits: on loopback an agent finishes a turn
every few hundred microseconds, and one commit for several turns costs a fraction of one
per write. Nobody waits on such writes, and their order is kept. A write someone awaits (a
tool's "started" mark) or a command ends the wait at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final, Generic, TypeVar

import trio

from orchestrator.core.failpoints import crash_point
from orchestrator.errors import JobLost, JournalError, OrchestratorError, StorageUnavailable
from orchestrator.jobs.model import CallFinishedWrite, Claim, TurnWrite, Write

__all__ = ["Ticket", "WriterThread"]

MAX_BATCH: Final = 512
DEFAULT_LINGER: Final = 0.002
T = TypeVar("T")


class Ticket(Generic[T]):
    """One unit of work for the writer thread, and its outcome."""

    __slots__ = (
        "claim",
        "command",
        "done",
        "error",
        "on_done",
        "result",
        "token",
        "urgent",
        "write",
    )

    def __init__(
        self,
        *,
        claim: Claim | None = None,
        write: Write | None = None,
        command: Callable[[Any], T] | None = None,
        on_done: Callable[[Ticket[T]], object] | None = None,
    ) -> None:
        self.claim = claim
        self.write = write
        self.command = command
        self.on_done = on_done
        self.result: T | None = None
        self.error: OrchestratorError | None = None
        self.done = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        self.urgent = command is not None

    async def wait(self) -> T:
        """The command's result once committed.

        Raises:
            JournalError: the write or command failed (or its writer was fenced out).
        """
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


def _finish(tickets: Sequence[Ticket[Any]]) -> None:
    for ticket in tickets:
        ticket.done.set()
        if ticket.on_done is not None:
            ticket.on_done(ticket)


Transaction = Callable[[Any], AbstractContextManager[Any]]


class WriterThread:
    """A thread that owns one connection and runs tickets in submission order.

    Args:
        name: the thread's name.
        connect: opens the connection (called in the thread).
        transaction: ``transaction(connection)`` is a context manager yielding a cursor,
            committing on exit, rolling back on an exception.
        apply: applies a batch of journal writes with a cursor (``sql.apply_writes``).
        describe: turns a driver error into the text of a ``StorageUnavailable``.
        close: closes the connection (called in the thread).
    """

    def __init__(
        self,
        name: str,
        *,
        connect: Callable[[], Any],
        transaction: Transaction,
        apply: Callable[[Any, Sequence[tuple[Claim, Write]]], list[JobLost | None]],
        describe: Callable[[Exception], str],
        close: Callable[[Any], None],
        linger: float = DEFAULT_LINGER,
    ) -> None:
        self._connect = connect
        self._transaction = transaction
        self._apply = apply
        self._describe = describe
        self._close = close
        self._queue: deque[Ticket[Any]] = deque()
        self._lock = threading.Condition()
        self._closing = False
        self._urgent = 0  # queued tickets somebody waits for
        self._linger = linger
        self._broken: JournalError | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = False

    def start(self) -> None:
        self._started = True
        self._thread.start()

    def submit(self, ticket: Ticket[Any], *, urgent: bool = False) -> None:
        """Queue ``ticket``; never blocks. After :meth:`close` it fails at once.

        ``urgent``: somebody waits for it (commands always are): commit without lingering.
        """
        urgent = urgent or ticket.command is not None
        with self._lock:
            if self._closing:
                ticket.error = self._broken or StorageUnavailable("the job store is closed")
                ticket.done.set()
                return
            self._queue.append(ticket)
            if urgent:
                ticket.urgent = True
                self._urgent += 1
                self._lock.notify()
            elif len(self._queue) == 1 or len(self._queue) >= MAX_BATCH:
                self._lock.notify()

    async def aclose(self) -> None:
        """Finish what is queued, then stop the thread and close the connection."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        if self._started:
            await trio.to_thread.run_sync(self._thread.join, abandon_on_cancel=False)

    # -- the thread ----------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            connection = self._connect()
        except Exception as exc:
            self._broken = StorageUnavailable(self._describe(exc))
            self._fail_all(self._broken)
            return
        try:
            while True:
                with self._lock:
                    while not self._queue and not self._closing:
                        self._lock.wait()
                    if not self._queue:
                        return
                    if not self._urgent and not self._closing and self._linger > 0:
                        # Only writes nobody waits for: gather more before committing.
                        self._lock.wait_for(
                            lambda: self._urgent or self._closing or len(self._queue) >= MAX_BATCH,
                            timeout=self._linger,
                        )
                    batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                    self._urgent = sum(1 for t in self._queue if t.urgent)
                for group in _runs(batch):
                    self._run(connection, group)
                self._deliver(batch)
        finally:
            try:
                self._close(connection)
            finally:
                self._fail_all(self._broken or StorageUnavailable("the job store is closed"))

    def _run(self, connection: Any, group: list[Ticket[Any]]) -> None:
        if group[0].command is not None:
            ticket = group[0]
            try:
                with self._transaction(connection) as cursor:
                    assert ticket.command is not None
                    ticket.result = ticket.command(cursor)
            except OrchestratorError as exc:  # the command's own refusal, as it is
                ticket.error = exc
            except Exception as exc:
                ticket.error = self._translate(exc)
            return
        try:
            self._commit(connection, group)
        except Exception as exc:
            if len(group) == 1:
                group[0].error = self._translate(exc)
                return
            # Find the culprit: each write in a transaction of its own.
            for ticket in group:
                try:
                    self._commit(connection, [ticket])
                except Exception as single:
                    ticket.error = self._translate(single)

    def _commit(self, connection: Any, group: list[Ticket[Any]]) -> None:
        batch = [(t.claim, t.write) for t in group]
        with self._transaction(connection) as cursor:
            results = self._apply(cursor, batch)  # type: ignore[arg-type]
            crash_point("journal_write")
        for ticket, result in zip(group, results, strict=True):
            ticket.error = result
        kinds = {type(t.write) for t in group}
        if TurnWrite in kinds:
            crash_point("turn_journaled")
        if CallFinishedWrite in kinds:
            crash_point("result_journaled")

    def _translate(self, exc: Exception) -> JournalError:
        if isinstance(exc, JournalError):
            return exc
        return StorageUnavailable(self._describe(exc))

    def _deliver(self, batch: list[Ticket[Any]]) -> None:
        by_token: dict[Any, list[Ticket[Any]]] = {}
        for ticket in batch:
            by_token.setdefault(ticket.token, []).append(ticket)
        for token, tickets in by_token.items():
            with contextlib.suppress(trio.RunFinishedError):  # nobody is waiting any more
                token.run_sync_soon(_finish, tickets)

    def _fail_all(self, error: JournalError) -> None:
        with self._lock:
            self._closing = True
            left = list(self._queue)
            self._queue.clear()
        for ticket in left:
            ticket.error = error
        if left:
            self._deliver(left)


def _runs(batch: list[Ticket[Any]]) -> Iterator[list[Ticket[Any]]]:
    """Consecutive journal writes together; each command alone."""
    writes: list[Ticket[Any]] = []
    for ticket in batch:
        if ticket.command is not None:
            if writes:
                yield writes
                writes = []
            yield [ticket]
        else:
            writes.append(ticket)
    if writes:
        yield writes
