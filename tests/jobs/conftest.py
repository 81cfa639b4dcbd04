"""Fixtures for the durable-jobs tests: a fresh job store per test, on every backend.

``store_spec`` is parametrized over the backends the machine can run: SQLite always, and
PostgreSQL when the throwaway server of ``tests/jobs/postgres.py`` can start (``make test``
in CI always can; elsewhere those cases are skipped with one line saying how to enable them).
Journaled runs use the real clock: the journal's writer thread and trio's autojump clock do
not mix (waiting on a thread looks idle to the clock, which would jump to the next deadline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from orchestrator.jobs.model import AgentPrint, NewJob

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A spec (path or URL) naming an empty job store."""
    if request.param == "sqlite":
        yield str(tmp_path / "jobs.db")
        return
    raise AssertionError(request.param)  # pragma: no cover


def new_job(job_id: str = "job-1", *, status: str = "running", queue: str = "default") -> NewJob:
    return NewJob(
        id=job_id,
        name="plan",
        goal="a goal",
        mode="steps",
        plan='{"name":"plan"}',
        plan_hash="0" * 64,
        plan_dir=None,
        agents={
            "worker": AgentPrint(role="worker", model="m", instructions="", store=False),
        },
        queue=queue,
        status=status,  # type: ignore[arg-type]
    )
