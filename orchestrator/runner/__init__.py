"""``run(plan, goal)``: the top layer, wiring plans, actors, the supervisor and budgets.

A run starts one actor per agent of the plan under a supervisor, each actor with its own
connection, and then either

* **delegates** (no steps in the plan): the goal goes to the planner, whose delegation tools
  route tasks to the workers (in parallel when one response delegates several times), until
  it finishes with the answer; or
* **follows the steps**: a DAG whose independent steps run in parallel, each step's task
  rendered with the results of the steps it depends on.

Without an API key the run uses the embedded server in-process (the result says so). Budgets
(turns, tokens, wall-clock; per run and per agent) and a ``stop`` event end the run cleanly
with the reason and the partial results; nothing raises for them.

Every run is a durable job unless ``store=None``: its journal (``orchestrator.jobs``) records
each turn, tool call, routed message and step as it happens, and ``run(resume=JOB)`` continues
a job that was interrupted, crashed or killed, from what was journaled: completed turns are not
sent again, completed tools and steps do not run again, budgets go on from what was spent.

Where each part lives (docs/architecture.md has the map):

* ``api``: ``run()`` and ``submit()``, their arguments checked and resolved;
* ``settings``: ``RunSettings``;
* ``endpoint``: the live service or the embedded server (``EmbeddedServer``);
* ``team``: the actors a plan makes, their wire settings and fingerprints;
* ``steps``: steps mode, the DAG walk;
* ``job``: one process's part of a job: start or resume, drive, journal the end;
* ``resume``: the plan checked against the journal, the job claimed or parked;
* ``store``: which store, the record of a new job;
* ``results``: ``RunResult`` and its reports.
"""

from __future__ import annotations

from orchestrator.runner.api import Observer as Observer, run as run, submit as submit
from orchestrator.runner.endpoint import EmbeddedServer as EmbeddedServer
from orchestrator.runner.results import (
    AgentReport as AgentReport,
    ConnectionReport as ConnectionReport,
    FailureReport as FailureReport,
    ParkedCall as ParkedCall,
    RunResult as RunResult,
    RunStatus as RunStatus,
    StepReport as StepReport,
    UsageReport as UsageReport,
)
from orchestrator.runner.settings import RunSettings as RunSettings
from orchestrator.runner.store import DEFAULT_STORE as DEFAULT_STORE, new_job_id as new_job_id

__all__ = [
    "DEFAULT_STORE",
    "AgentReport",
    "EmbeddedServer",
    "FailureReport",
    "ParkedCall",
    "RunResult",
    "RunSettings",
    "RunStatus",
    "StepReport",
    "run",
    "submit",
]
