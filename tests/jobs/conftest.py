"""Fixtures for the durable-jobs tests: a fresh job store per test, on every backend.

``store_spec`` is parametrized over the backends: SQLite always, and PostgreSQL on the
throwaway server of ``tests/jobs/postgres.py`` (one per session, a new schema per test).
Without the server binaries those cases are skipped with one line saying how to enable them;
CI sets ``ORCHESTRATOR_REQUIRE_POSTGRES`` and installs them, and a missing server fails.
Journaled runs use the real clock: the journal's writer thread and trio's autojump clock do
not mix (waiting on a thread looks idle to the clock, which would jump to the next deadline).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest
import trio

from orchestrator.jobs.model import AgentPrint, NewJob
from tests.jobs import postgres
from tests.jobs.postgres import (
    INSTALL_HINT,
    REQUIRE_ENV,
    PostgresServer,
    create_schema,
    start_server,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

BACKENDS = ["sqlite", "postgresql"]
_databases = itertools.count(1)
# Where the hint is written: the one place every such skip is reported at.
_HINT_LINE: Final = next(
    number
    for number, line in enumerate(Path(postgres.__file__).read_text().splitlines(), 1)
    if line.startswith("INSTALL_HINT")
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Every PostgreSQL test skipped for want of a server is reported at one place, so that
    ``-ra`` folds them into one line."""
    report = yield
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and INSTALL_HINT in str(longrepr[2]):
        report.longrepr = (postgres.__file__, _HINT_LINE, longrepr[2])
    return report


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the whole session (skipped, with one line saying
    how to enable it, on a machine without the binaries; a failure when
    ``$ORCHESTRATOR_REQUIRE_POSTGRES`` is set, as in CI)."""
    try:
        server = start_server()
    except FileNotFoundError:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but {INSTALL_HINT}")
        pytest.skip(INSTALL_HINT)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty job store on the session's server (a schema of its own)."""
    return create_schema(postgres_server, f"test_{next(_databases)}")


@pytest.fixture(params=BACKENDS)
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A spec (path or URL) naming an empty job store."""
    if request.param == "sqlite":
        yield str(tmp_path / "jobs.db")
        return
    if request.param == "postgresql":
        yield request.getfixturevalue("postgres_url")
        return
    raise AssertionError(request.param)  # pragma: no cover


def new_job(
    job_id: str = "job-1", *, status: str = "running", queue: str = "default", agents: int = 1
) -> NewJob:
    return NewJob(
        id=job_id,
        name="plan",
        goal="a goal",
        mode="steps",
        plan='{"name":"plan"}',
        plan_hash="0" * 64,
        plan_dir=None,
        agents={
            ("worker" if n == 0 else f"worker{n}"): AgentPrint(
                role="worker", model="m", instructions="", store=False
            )
            for n in range(agents)
        },
        queue=queue,
        status=status,  # type: ignore[arg-type]
    )


async def wait_until(predicate: Callable[[], Awaitable[bool]], *, seconds: float = 20.0) -> None:
    """Poll ``predicate()`` until it is true. For conditions only a database or another
    process can tell (nothing to wait on but a look); fails after ``seconds``."""
    with trio.fail_after(seconds):
        while not await predicate():  # noqa: ASYNC110 (the condition is in the database)
            await trio.sleep(0.02)
