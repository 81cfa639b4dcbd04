"""The PostgreSQL job store: one database shared by workers on many hosts.

Needs the ``postgres`` extra (``pip install 'orchestrator[postgres]'``: psycopg 3 and
psycopg-pool). The trio thread never calls the driver: the store's writer thread owns one
connection (journal writes in group commits, claims, heartbeats, operator commands), reads run
in threads on a small :class:`psycopg_pool.ConnectionPool`, and a worker's listener thread
holds one more connection for LISTEN. Times come from the database's clock, so hosts whose
clocks disagree still agree on leases.

The schema is created and upgraded on open, under a transaction-level advisory lock, so two
processes opening a new database at once do not collide. The writer's session sets
``idle_in_transaction_session_timeout`` to the lease: a process paused in the middle of a
transaction (SIGSTOP, a VM frozen) loses its session and its row locks, instead of keeping
the job from every other worker.

``url`` (shown in messages and ``jobs`` output) never contains the password; the driver's
errors are reported without it too.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import trio
from loguru import logger

from orchestrator.errors import ConfigurationError, StorageUnavailable
from orchestrator.jobs import sql
from orchestrator.jobs.store import DEFAULT_LEASE, SQLStore, T

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = ["PostgresStore", "display_url"]

READERS: Final = 4
CONNECT_TIMEOUT: Final = 10
# A reader waits this long for a pooled connection before the read fails.
POOL_TIMEOUT: Final = 15.0
# Listener: how long one wait for notifications lasts (the stop flag's latency) and how long
# to wait before connecting again after the connection broke.
LISTEN_TICK: Final = 0.25
LISTEN_RETRY: Final = 2.0
# Defaults added to the URL unless it sets them: a dead peer is noticed in seconds, not hours.
_CONNECTION_DEFAULTS: Final = {
    "connect_timeout": str(CONNECT_TIMEOUT),
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "application_name": "orchestrator",
}


def display_url(url: str) -> str:
    """``url`` without its password (in the user part or as a ``password=`` option)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        name, _, _ = user.partition(":")
        netloc = f"{name}@{host}" if name else host
    query = urllib.parse.urlencode(
        [
            (key, value)
            for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if key.lower() != "password"
        ]
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _import_driver() -> Any:
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"a postgresql:// job store needs psycopg 3 and psycopg-pool ({exc}): "
            "pip install 'orchestrator[postgres]'",
            code="config.store",
        ) from None
    return psycopg


class _WriterConnection:
    """The writer thread's connection, opened again when it broke (a database restart, a
    network cut): the write that found it broken fails, the next one reconnects."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self.connection: psycopg.Connection[Any] | None = connect()

    def get(self) -> psycopg.Connection[Any]:
        connection = self.connection
        if connection is None or connection.closed or connection.broken:
            self.close()
            connection = self.connection = self._connect()
        return connection

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()


class PostgresStore(SQLStore):
    """A job store in a PostgreSQL database (``postgresql://user@host:port/db?...``).

    Args:
        url: a libpq URL; its options (``sslmode``, ``connect_timeout``...) are honoured.
        lease: seconds a claim lasts without a heartbeat.
        readers: the most connections reads use at once.

    Raises:
        ConfigurationError: psycopg is not installed, or the URL cannot be parsed.
    """

    def __init__(self, url: str, *, lease: float = DEFAULT_LEASE, readers: int = READERS) -> None:
        psycopg = _import_driver()
        try:
            given = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(
                f"store {display_url(url)!r}: {self._hide(str(exc), url)}", code="config.store"
            ) from None
        self._password = str(given.get("password") or "")
        self._options = str(given.get("options") or "")
        extra = {key: value for key, value in _CONNECTION_DEFAULTS.items() if key not in given}
        self._conninfo: str = psycopg.conninfo.make_conninfo(url, **extra)
        self._readers_max = readers
        self._pool: ConnectionPool[Any] | None = None
        super().__init__(display_url(url), sql.POSTGRES, lease=lease)
        self._readers = trio.CapacityLimiter(readers)

    @staticmethod
    def _hide(text: str, url: str) -> str:
        password = urllib.parse.urlsplit(url).password
        return text.replace(password, "***") if password else text

    def _clean(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    # -- connections -----------------------------------------------------------------------------

    def _connect(self, **options: Any) -> psycopg.Connection[Any]:
        import psycopg

        return psycopg.connect(self._conninfo, autocommit=True, **options)

    def _connect_writer(self) -> _WriterConnection:
        # A session stuck inside a transaction for a whole lease belongs to a paused or
        # partitioned process: the server ends it and frees its row locks.
        timeout_ms = max(1000, int(self.lease * 1000))
        return _WriterConnection(
            lambda: self._connect(
                options=f"{self._options} -c idle_in_transaction_session_timeout={timeout_ms}",
                application_name="orchestrator-journal",
            )
        )

    def _connect_reader(self) -> Any:  # pragma: no cover (reads use the pool)
        raise AssertionError("PostgresStore reads through its pool")

    @contextlib.contextmanager
    def _transaction(self, connection: Any, *, write: bool) -> Iterator[Any]:
        raw = connection.get() if isinstance(connection, _WriterConnection) else connection
        with raw.transaction(), raw.cursor() as cursor:
            yield cursor

    def _close_connection(self, connection: Any) -> None:
        if isinstance(connection, _WriterConnection):
            connection.close()
        else:  # pragma: no cover (reads use the pool)
            connection.close()

    def _describe(self, exc: Exception) -> str:
        return f"cannot write the job store {self.url}: {self._clean(str(exc)).strip()}"

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Start the writer (creating or upgrading the schema) and the readers' pool.

        Raises:
            StorageUnavailable: the database cannot be reached or migrated.
        """
        await super().open()
        from psycopg_pool import ConnectionPool

        def configure(connection: psycopg.Connection[Any]) -> None:
            connection.read_only = True

        self._pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._readers_max,
            kwargs={"autocommit": True, "application_name": "orchestrator-reader"},
            configure=configure,
            # A connection the database dropped (a restart) is replaced, not handed out.
            check=ConnectionPool.check_connection,
            timeout=POOL_TIMEOUT,
            name=f"orchestrator-readers[{self.url}]",
            open=False,
        )
        await trio.to_thread.run_sync(self._pool.open)

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(pool.close)

    # -- reads -----------------------------------------------------------------------------------

    async def read(self, function: Callable[[Any], T]) -> T:
        pool = self._pool
        if pool is None:
            raise StorageUnavailable(f"the job store {self.url} is closed")

        def run() -> T:
            with (
                pool.connection() as connection,
                self._transaction(connection, write=False) as cursor,
            ):
                return function(cursor)

        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            return await trio.to_thread.run_sync(run, limiter=self._readers)
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise StorageUnavailable(
                f"cannot read the job store {self.url}: {self._clean(str(exc)).strip()}"
            ) from None

    # -- wake-ups --------------------------------------------------------------------------------

    @asynccontextmanager
    async def listen(self, callback: Callable[[str, str], object]) -> AsyncIterator[bool]:
        """LISTEN in a thread of its own, each notification handed to ``callback`` on the
        trio thread. A broken connection is opened again (notifications sent meanwhile are
        lost: the caller polls as well)."""
        token = trio.lowlevel.current_trio_token()
        stopping = threading.Event()

        def deliver(payload: str) -> None:
            kind, _, job = payload.partition(" ")
            callback(kind, job)

        def main() -> None:
            log = logger.bind(store=self.url)
            while not stopping.is_set():
                try:
                    with self._connect(application_name="orchestrator-listener") as connection:
                        connection.execute(f"LISTEN {sql.CHANNEL}")
                        log.debug("listening on {}", sql.CHANNEL)
                        while not stopping.is_set():
                            for notice in connection.notifies(timeout=LISTEN_TICK):
                                with contextlib.suppress(trio.RunFinishedError):
                                    token.run_sync_soon(deliver, notice.payload)
                except Exception as exc:
                    if stopping.is_set():
                        return
                    log.warning(
                        "listening for jobs on {} failed ({}); polling until it is back",
                        self.url,
                        self._clean(str(exc)).strip(),
                    )
                    stopping.wait(LISTEN_RETRY)

        thread = threading.Thread(target=main, name=f"orchestrator-listen[{self.url}]", daemon=True)
        thread.start()
        try:
            yield True
        finally:
            stopping.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)
