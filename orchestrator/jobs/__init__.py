"""Durable jobs: the journal every run writes, and what resumes from it.

* ``orchestrator.jobs.store``: the ``JobStore`` interface and :func:`open_store`; backends in
  ``sqlite`` (default) and ``postgres``.
* ``orchestrator.jobs.journal``: ``Journal``, one running job's writes (trio side).
* ``orchestrator.jobs.resume``: pure resume decisions (claim, plan divergence, rebuild,
  parked calls).
* ``orchestrator.jobs.api``: ``Jobs`` (list, show, resume, cancel, resolve, retry, prune).
"""

from orchestrator.jobs.api import Jobs, JobView, effective_status, open_jobs, parse_duration
from orchestrator.jobs.model import FINAL, JobRecord, JobStatus
from orchestrator.jobs.store import STORE_ENV, JobStore, default_store_path, open_store

__all__ = [
    "FINAL",
    "STORE_ENV",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "JobView",
    "Jobs",
    "default_store_path",
    "effective_status",
    "open_jobs",
    "open_store",
    "parse_duration",
]
