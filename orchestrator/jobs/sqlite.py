"""The SQLite job store: one file, WAL, private to its user; the embedded default.

The file is created mode 0600 in a 0700 directory. WAL lets readers (``jobs list`` in
another terminal) run while a job writes. ``synchronous=NORMAL`` (the default) survives any
crash of the process; ``FULL`` also survives a power cut, at one fsync per commit group.
Several processes may share one file on one host (each waits for the others' commits up to
``busy_timeout``); a file on a network share is not supported (SQLite's locks are not safe
there): use PostgreSQL to share jobs between hosts.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import TYPE_CHECKING, Any, Final

from orchestrator.errors import ConfigurationError
from orchestrator.jobs import sql
from orchestrator.jobs.store import DEFAULT_LEASE, SQLStore

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["SQLiteStore"]

BUSY_TIMEOUT_MS: Final = 10_000


class SQLiteStore(SQLStore):
    """A job store in one SQLite file.

    Args:
        path: the database file (created with its directory if missing).
        synchronous: ``NORMAL`` or ``FULL`` (power-loss durability).
    """

    def __init__(
        self, path: Path, *, synchronous: str = "NORMAL", lease: float = DEFAULT_LEASE
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError(
                f"synchronous must be NORMAL or FULL, got {synchronous!r}", code="config.store"
            )
        self.path = path
        self.synchronous = synchronous
        super().__init__(str(path), sql.SQLITE, lease=lease)

    def _create_file(self) -> None:
        directory = self.path.parent
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created private before SQLite opens it; SQLite gives its -wal and -shm files the
        # same mode.
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(descriptor)

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=0
        )
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return connection

    def _connect_writer(self) -> sqlite3.Connection:
        self._create_file()
        connection = self._open()
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL (mode {mode})")
        connection.execute(f"PRAGMA synchronous = {self.synchronous}")
        return connection

    def _connect_reader(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise sqlite3.OperationalError(f"{self.path} does not exist")
        return self._open()

    @contextlib.contextmanager
    def _transaction(self, connection: sqlite3.Connection, *, write: bool) -> Iterator[Any]:
        cursor = connection.cursor()
        # IMMEDIATE: take the write lock at once, so a read-then-write (a claim) is atomic
        # across processes. Readers use DEFERRED (their connection never writes).
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield cursor
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                cursor.execute("ROLLBACK")
            raise
        else:
            cursor.execute("COMMIT")
        finally:
            cursor.close()

    def _close_connection(self, connection: Any) -> None:
        connection.close()

    def _describe(self, exc: Exception) -> str:
        return f"cannot write the job store {self.path}: {exc}"
