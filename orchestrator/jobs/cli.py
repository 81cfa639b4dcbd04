"""``orchestrator jobs ...``: look at jobs, resume, cancel, resolve, retry and prune them.

Every command takes ``--store`` (default ``$ORCHESTRATOR_STORE``, else the per-user file) and
``--json``. Exit codes are those of ``orchestrator run`` (see ``orchestrator.cli``); a job that
does not exist or cannot do what was asked is a usage error (2).
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from orchestrator.errors import ConfigurationError, JobError, JournalError, OrchestratorError

if TYPE_CHECKING:
    import argparse

__all__ = ["add_jobs"]

STATUSES: Final = (
    "queued",
    "running",
    "crashed",
    "interrupted",
    "needs_attention",
    "budget_exceeded",
    "completed",
    "partial",
    "failed",
    "cancelled",
    "dead",
)


def add_jobs(commands: Any) -> None:
    parser = commands.add_parser(
        "jobs",
        help="list, show, resume, cancel, resolve, retry and prune jobs",
        description="Every `orchestrator run` is a job journaled in the job store; these "
        "commands look at jobs and continue them.",
    )
    command = _command_adder(
        parser.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    )
    _add_views(command)
    _add_continuations(command)
    _add_decisions(command)
    command("migrate", _migrate, "create or upgrade the job store's schema")
    p = command(
        "submit", _submit, "queue a job for the workers (orchestrator worker); prints its id"
    )
    p.add_argument("plan", type=Path, help="the plan file (checked now)")
    p.add_argument("--goal", help="what to achieve (default: the plan's goal)")
    p.add_argument("--queue", default="default", help="the queue (default: default)")
    p.add_argument("--job-id", metavar="ID", help="the job's id (default: from the plan's name)")


def _command_adder(sub: Any) -> Any:
    """``command(name, handler, help)``: a ``jobs`` subcommand with the options all share
    (``--store``, ``--json``, ``-v``)."""
    from orchestrator.cli import add_store_option

    def command(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        add_store_option(p)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("-v", "--verbose", action="count", default=0, help="log more (stderr)")
        p.set_defaults(handler=handler)
        return p

    return command


def _add_views(command: Any) -> None:
    """``jobs list`` and ``jobs show``."""
    p = command("list", _list, "the newest jobs first, with their status and progress")
    p.add_argument(
        "--status", action="append", choices=STATUSES, default=[], help="only these (repeatable)"
    )
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")

    p = command("show", _show, "one job: status, progress, usage, agents, parked calls, answer")
    p.add_argument("job", help="the job id")
    p.add_argument("--transcript", metavar="AGENT", help="print this agent's transcript")
    p.add_argument("--events", action="store_true", help="print the job's event history")


def _add_continuations(command: Any) -> None:
    """``jobs resume`` and ``jobs retry``."""
    from orchestrator.cli import add_connection_options

    for name, handler, text in (
        ("resume", _resume, "continue an interrupted, crashed or paused job from its journal"),
        ("retry", _retry, "run a failed or dead job again from its journal"),
    ):
        p = command(name, handler, text)
        p.add_argument("job", help="the job id")
        p.add_argument("--plan", type=Path, help="resume with this plan file (checked)")
        p.add_argument(
            "--allow-budget-change",
            action="store_true",
            help="accept a --plan whose budgets differ from the journaled ones",
        )
        p.add_argument("--trace", type=Path, metavar="FILE", help="append every event (JSONL)")
        p.add_argument("--api-key-file", type=Path, metavar="FILE", help="0600 key file")
        p.add_argument("--offline", action="store_true", help="use the embedded server")
        add_connection_options(p)
        p.add_argument(
            "--approve", action="append", default=[], metavar="PATTERN", help="as for run"
        )


def _add_decisions(command: Any) -> None:
    """``jobs cancel``, ``jobs resolve`` and ``jobs prune``."""
    p = command("cancel", _cancel, "cancel a job (its owner stops it within seconds)")
    p.add_argument("job", help="the job id")

    p = command("resolve", _resolve, "decide about a parked call so the job can go on")
    p.add_argument("job", help="the job id")
    p.add_argument("call", help="the call id (or AGENT/TURN/CALL_ID), see `jobs show`")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--output", metavar="TEXT", help="it ran and returned TEXT")
    action.add_argument("--rerun", action="store_true", help="run the tool again (same key)")
    action.add_argument(
        "--fail", nargs="?", const="", metavar="REASON", help="tell the model it failed"
    )

    p = command("prune", _prune, "delete jobs that ended long enough ago")
    p.add_argument(
        "--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 90m (ended before)"
    )


def add_worker(commands: Any) -> None:
    """``orchestrator worker``: run queued jobs until SIGINT or SIGTERM."""
    from orchestrator.cli import add_store_option
    from orchestrator.jobs.store import DEFAULT_LEASE
    from orchestrator.jobs.worker import DEFAULT_POLL, DEFAULT_SLOTS

    parser = commands.add_parser(
        "worker",
        help="run jobs from the queue (orchestrator jobs submit) until stopped",
        description="Take jobs from the store's queue and run them, each wholly in this "
        "process, at most --slots sockets (one per agent) at once. Any number of workers on "
        "any number of hosts may share one PostgreSQL store. SIGINT or SIGTERM hands the "
        "running jobs back to the queue (a second one stops at once).",
    )
    add_store_option(parser)
    parser.add_argument(
        "--slots",
        type=int,
        default=DEFAULT_SLOTS,
        metavar="N",
        help=f"sockets this worker may hold, one per agent of each job (default {DEFAULT_SLOTS})",
    )
    parser.add_argument(
        "--queue",
        action="append",
        default=[],
        metavar="NAME",
        help="take jobs from this queue (repeatable; default: default)",
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=DEFAULT_LEASE,
        metavar="SECONDS",
        help=f"how long a claim lasts without a heartbeat (default {DEFAULT_LEASE:g}): a "
        "dead worker's jobs are taken over this long after its last heartbeat",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=DEFAULT_POLL,
        metavar="SECONDS",
        help=f"look at the queue this often when nothing wakes the worker "
        f"(default {DEFAULT_POLL:g})",
    )
    parser.add_argument(
        "--max-recoveries",
        type=int,
        default=3,
        metavar="N",
        help="a job that crashed N times in a row without progress ends dead (default 3)",
    )
    _add_worker_model_options(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (stderr)")
    parser.set_defaults(handler=_worker)


def _add_worker_model_options(parser: Any) -> None:
    """``worker``'s options for reaching the model, approvals, and the embedded server."""
    from orchestrator.cli import add_connection_options

    parser.add_argument("--base-url", help="a compatible endpoint (https://host/v1 or wss://...)")
    parser.add_argument("--api-key-file", type=Path, metavar="FILE", help="0600 key file")
    parser.add_argument(
        "--offline", action="store_true", help="run every job on the embedded server"
    )
    add_connection_options(parser)
    parser.add_argument(
        "--approve",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run calls of destructive/external tools matching PATTERN without asking "
        "(repeatable); a worker has nobody to ask, so other such calls are denied",
    )
    offline = parser.add_argument_group("embedded server (offline jobs)")
    offline.add_argument("--local-model", choices=("generic", "echo", "scripted"))
    offline.add_argument("--local-script", type=Path, metavar="FILE", help="scripted turns")
    offline.add_argument("--local-ttft", type=float, default=0.0, metavar="S")
    offline.add_argument("--local-tokens-per-second", type=float, default=None, metavar="N")
    offline.add_argument("--local-seed", type=int, default=None, metavar="N")


# -- helpers --------------------------------------------------------------------------------------


def _configure(args: argparse.Namespace) -> None:
    import actors  # noqa: F401  (import before configure(): see orchestrator.cli)
    import plans  # noqa: F401
    from orchestrator.core.logging import configure

    configure("DEBUG" if args.verbose > 1 else "INFO" if args.verbose else "WARNING")


def _error(exc: OrchestratorError) -> int:
    from orchestrator.cli import EXIT_FAILED, EXIT_USAGE
    from orchestrator.core.logging import redact

    code = getattr(exc, "code", "job.error")
    print(f"error[{code}]: {redact(str(exc))}", file=sys.stderr)
    return EXIT_FAILED if isinstance(exc, JournalError) else EXIT_USAGE


def _with_jobs(args: argparse.Namespace, body: Any) -> int:
    """Run ``body(jobs)`` in trio with the store open; job errors become exit codes."""
    from orchestrator.jobs.api import open_jobs

    _configure(args)

    async def main() -> int:
        async with open_jobs(args.store) as jobs:
            result: int = await body(jobs)
            return result

    return _guarded(main)


def _guarded(main: Any) -> int:
    """``trio.run(main)``, a job or configuration error printed as one line (exit code)."""
    failed: list[OrchestratorError] = []
    try:
        code: int = trio.run(main)
    except* (JobError, ConfigurationError) as group:
        failed.append(_leaf(group))
    if failed:
        return _error(failed[0])
    return code


def _leaf(group: BaseExceptionGroup[Any]) -> Any:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _owner(record: Any) -> str:
    return record.owner.label if record.owner is not None else "-"


def _lease_left(record: Any, now: float) -> str:
    """``12s`` left, ``expired 3s ago``, or ``-`` without a lease."""
    if record.lease_expires is None or record.owner is None:
        return "-"
    left = record.lease_expires - now
    return f"{left:.0f}s" if left > 0 else f"expired {-left:.0f}s ago"


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=None, ensure_ascii=False) + "\n")


# -- list and show -----------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    async def body(jobs: Any) -> int:
        rows = await jobs.list(args.status, limit=args.limit)
        if args.json:
            out = []
            for record, status in rows:
                data = msgspec.to_builtins(record)
                data.pop("plan", None)
                data["status"] = status
                out.append(data)
            _print_json(out)
            return 0
        if not rows:
            print(f"no jobs in {jobs.store.url}")
            return 0
        print(
            f"{'JOB':<40} {'STATUS':<16} {'STARTED':<19} {'TURNS':>6} {'CALLS':>6} "
            f"{'STEPS':>6}  {'OWNER':<28} LEASE"
        )
        now = time.time()
        for record, status in rows:
            print(
                f"{record.id:<40} {status:<16} {_when(record.created_at):<19} "
                f"{record.turns:>6} {record.tool_calls:>6} {record.steps_done:>6}  "
                f"{_owner(record):<28} {_lease_left(record, now)}"
            )
        return 0

    return _with_jobs(args, body)


def _show(args: argparse.Namespace) -> int:
    async def body(jobs: Any) -> int:
        view = await jobs.show(args.job)
        if args.json:
            _print_json(view.to_builtins(transcript=args.transcript, events=args.events))
            return 0
        _print_view(view, transcript=args.transcript, events=args.events)
        return 0

    return _with_jobs(args, body)


def _print_view(view: Any, *, transcript: str | None, events: bool) -> None:
    from orchestrator.display import clean
    from orchestrator.jobs.api import transcript_of

    print("\n".join([*_job_lines(view), *_work_lines(view)]))
    if events:
        print("events")
        for event in view.journal.events:
            detail = f"  {clean(event.detail)}" if event.detail else ""
            print(f"  {_when(event.time)}  {event.kind}{detail}")
    if transcript is not None:
        print(f"transcript of {transcript}")
        for item in transcript_of(view.journal, transcript):
            print("  " + clean(json.dumps(item, ensure_ascii=False))[:2000])


def _job_lines(view: Any) -> list[str]:
    """What the job is and where it stands: status, owner or queue, progress, usage."""
    from orchestrator.display import clean

    job = view.job
    lines = [
        f"job       {job.id}",
        f"plan      {job.name} ({job.mode})",
        f"status    {view.status}" + (f" ({job.code})" if job.code else ""),
    ]
    if job.reason:
        lines.append(f"reason    {clean(job.reason)}")
    if job.goal:
        lines.append(f"goal      {clean(job.goal)}")
    lines.append(f"started   {_when(job.created_at)}   updated {_when(job.updated_at)}")
    if job.owner is not None and view.status in ("running", "queued", "crashed"):
        lease = (
            ""
            if job.lease_expires is None
            else f", lease until {_when(job.lease_expires)}: {_lease_left(job, time.time())}"
        )
        lines.append(f"owner     {job.owner.label} (epoch {job.epoch}{lease})")
    elif job.status == "queued":
        lines.append(f"queue     {job.queue} (waiting for a worker, epoch {job.epoch})")
    progress = f"{job.turns} turns, {job.tool_calls} tool calls"
    if view.steps_total:
        progress = f"{job.steps_done}/{view.steps_total} steps, " + progress
    lines.append(f"progress  {progress}")
    lines.append(
        f"usage     {job.input_tokens:,} input + {job.output_tokens:,} output tokens, "
        f"{job.active_seconds:.1f} s active, {job.recoveries} recoveries"
    )
    return lines


def _work_lines(view: Any) -> list[str]:
    """Each agent's usage, the parked calls, failed delegations and the answer."""
    from orchestrator.display import clean
    from orchestrator.jobs.api import agent_usage

    job = view.job
    lines = []
    usage = agent_usage(view.journal)
    if usage:
        lines.append("agents")
        for name, entry in sorted(usage.items()):
            lines.append(
                f"  {name:<16} {entry['turns']:>4} turns {entry['tool_calls']:>4} calls "
                f"{entry['input_tokens'] + entry['output_tokens']:>9,} tokens"
            )
    if view.parked:
        lines.append("parked calls (resolve each: orchestrator jobs resolve JOB CALL ...)")
        for call in view.parked:
            lines.append(
                f"  {call.agent}/{call.turn}/{call.call_id}  {call.name} ({call.side_effect}), "
                f"attempt {call.attempt}: {clean(call.arguments)[:200]}"
            )
    failures = [f for f in job.failures if f.get("kind") == "delegation"]
    for failure in failures:
        lines.append(f"failed    delegation to {failure.get('agent')}: {failure.get('error')}")
    if job.answer is not None:
        lines.append("answer")
        lines.extend("  " + line for line in clean(job.answer).splitlines())
    return lines


# -- resume and retry -----------------------------------------------------------------------------


def _resume(args: argparse.Namespace) -> int:
    return _continue(args, retry=False)


def _retry(args: argparse.Namespace) -> int:
    return _continue(args, retry=True)


def _continue(args: argparse.Namespace, *, retry: bool) -> int:
    from orchestrator.cli import owning_descendants

    return owning_descendants(args, lambda args, spared: _continue_owned(args, spared, retry))


def _continue_owned(args: argparse.Namespace, spared: set[int], retry: bool) -> int:
    from orchestrator.cli import _read_key_file, _run_async
    from orchestrator.core.tuning import gc_policy, raise_fd_limit
    from orchestrator.jobs.api import open_jobs

    _configure(args)
    args.resume_job = args.job  # the trace appends
    args.goal = None
    plan: Any = None
    if args.plan is not None:
        from orchestrator.cli import _check

        plan = _check(args.plan)

    async def main() -> int:
        async with open_jobs(args.store) as jobs:
            record = await jobs.store.get(args.job)
            options = record.options
            offline = bool(options.get("offline", True)) or args.offline
            key: str | None = None
            if not offline:
                if args.api_key_file is not None:
                    key = _read_key_file(args.api_key_file)
                else:
                    key = os.environ.get("OPENAI_API_KEY")
            endpoint = options.get("endpoint")
            base_url = endpoint if isinstance(endpoint, str) and endpoint != "embedded" else None
            server_options = _local_options(options.get("local")) if offline else None
            print(f"{'retrying' if retry else 'resuming'} job {record.id}", file=sys.stderr)

            from orchestrator.cli import connection_settings
            from orchestrator.runner import EmbeddedServer, RunSettings

            settings = RunSettings(
                api_key=key,
                base_url=base_url,
                offline=offline,
                connection=connection_settings(args),
                allow_budget_change=args.allow_budget_change,
            )

            async def invoke(run: Any, common: dict[str, Any]) -> Any:
                method = jobs.retry if retry else jobs.resume
                return await method(
                    record.id,
                    plan=plan,
                    settings=settings,
                    embedded=EmbeddedServer(config=server_options or {}),
                    **common,
                )

            where = "embedded server" if offline else "live"
            result: int = await _run_async(args, where, invoke, spared)
            return result

    raise_fd_limit()
    with gc_policy():
        return _guarded(main)


def _local_options(local: Any) -> dict[str, Any] | None:
    """The embedded server's settings a job was started with (``orchestrator run --local-*``)."""
    from orchestrator.core.server import LatencyModel

    if not isinstance(local, dict):
        return None
    options: dict[str, Any] = {
        "model": local.get("model"),
        "script": Path(local["script"]) if local.get("script") else None,
        "seed": local.get("seed"),
        "latency": LatencyModel(
            time_to_first_token=float(local.get("ttft") or 0.0),
            tokens_per_second=local.get("tokens_per_second"),
        ),
    }
    return options


# -- cancel, resolve, prune, migrate ---------------------------------------------------------------


def _cancel(args: argparse.Namespace) -> int:
    async def body(jobs: Any) -> int:
        record, live = await jobs.cancel(args.job)
        if args.json:
            _print_json({"job": record.id, "status": record.status, "requested": live})
        elif live:
            owner = record.owner.label if record.owner else "its owner"
            print(f"cancel requested: {owner} stops job {record.id} within seconds")
        else:
            print(f"job {record.id} cancelled")
        return 0

    return _with_jobs(args, body)


def _resolve(args: argparse.Namespace) -> int:
    if args.output is not None:
        action, text = "output", args.output
    elif args.rerun:
        action, text = "rerun", None
    else:
        action, text = "fail", args.fail or None

    async def body(jobs: Any) -> int:
        call, status = await jobs.resolve(args.job, args.call, action=action, text=text)
        if args.json:
            _print_json({"call": msgspec.to_builtins(call), "job_status": status})
        else:
            print(f"call {call.agent}/{call.turn}/{call.call_id} ({call.name}): {action}")
            if status == "interrupted":
                print(f"no call left in doubt: orchestrator jobs resume {args.job}")
        return 0

    return _with_jobs(args, body)


def _prune(args: argparse.Namespace) -> int:
    from orchestrator.cli import _fail
    from orchestrator.jobs.api import parse_duration

    try:
        age = parse_duration(args.older_than)
    except ValueError as exc:
        _fail("config.value", f"--older-than: {exc}")

    async def body(jobs: Any) -> int:
        removed = await jobs.prune(age)
        if args.json:
            _print_json({"removed": removed})
        else:
            print(f"removed {len(removed)} job(s) that ended before {args.older_than} ago")
        return 0

    return _with_jobs(args, body)


def _migrate(args: argparse.Namespace) -> int:
    from orchestrator.jobs.sql import SCHEMA_VERSION

    async def body(jobs: Any) -> int:
        if args.json:
            _print_json({"store": jobs.store.url, "schema_version": SCHEMA_VERSION})
        else:
            print(f"{jobs.store.url}: schema version {SCHEMA_VERSION}")
        return 0

    return _with_jobs(args, body)


# -- submit and worker -------------------------------------------------------------------------


def _submit(args: argparse.Namespace) -> int:
    from orchestrator.cli import EXIT_USAGE, _check, _store_spec
    from orchestrator.errors import PlanError
    from orchestrator.runner import submit

    _configure(args)
    _check(args.plan)  # every problem at once, before anything is queued

    async def main() -> int:
        try:
            job_id = await submit(
                args.plan, args.goal, store=_store_spec(args), job_id=args.job_id, queue=args.queue
            )
        except PlanError as exc:
            print(f"error[plan.invalid]: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if args.json:
            _print_json({"job": job_id, "queue": args.queue})
        else:
            print(job_id)
        return 0

    return _guarded(main)


def _worker_records(record: Any) -> bool:
    """The worker's own INFO records, and everyone's warnings."""
    return bool(record["level"].no >= _WARNING or record["name"].startswith("orchestrator.jobs."))


_WARNING: Final = 30


def _worker(args: argparse.Namespace) -> int:
    import actors  # noqa: F401  (import before configure(): see orchestrator.cli)
    import plans  # noqa: F401
    from orchestrator.core.logging import configure
    from orchestrator.core.tuning import gc_policy, raise_fd_limit

    # A worker's log is its operator's record: claims, releases and lost leases (INFO);
    # the jobs' own lifecycle (actors, connections) only with -v.
    if args.verbose:
        configure("DEBUG" if args.verbose > 1 else "INFO")
    else:
        configure("INFO", filter=_worker_records)
    _check_worker_numbers(args)
    run_options = _worker_run_options(args)
    raise_fd_limit()
    with gc_policy():
        return _guarded(partial(_serve_worker, args, run_options))


def _check_worker_numbers(args: argparse.Namespace) -> None:
    from orchestrator.cli import _fail

    for name, value in (("--slots", args.slots), ("--max-recoveries", args.max_recoveries)):
        if value < 1:
            _fail("config.value", f"{name} must be at least 1, got {value}")
    for name, number in (("--lease", args.lease), ("--poll", args.poll)):
        if not number > 0:
            _fail("config.value", f"{name} must be positive, got {number:g}")


def _worker_run_options(args: argparse.Namespace) -> dict[str, Any]:
    """What every job of this worker runs with: the key (checked now) or the embedded
    server, and the ``--approve`` patterns."""
    from actors.approval import ApprovalPolicy
    from orchestrator.cli import _fail, _read_key_file, _server_options, connection_settings

    key: str | None = None
    if args.api_key_file is not None:
        key = _read_key_file(args.api_key_file)
    elif not args.offline:
        key = os.environ.get("OPENAI_API_KEY")
    offline = args.offline or key is None
    if not offline:
        from orchestrator.core.endpoint import resolve_api_key, resolve_endpoint

        try:
            resolve_api_key(key)
            resolve_endpoint(args.base_url, allow_insecure=args.allow_insecure)
        except ConfigurationError as exc:
            _fail(exc.code, str(exc))
    from orchestrator.runner import EmbeddedServer, RunSettings

    return {
        "settings": RunSettings(
            api_key=key,
            base_url=args.base_url,
            offline=True if offline else None,
            connection=connection_settings(args),
        ),
        "embedded": EmbeddedServer(config=_server_options(args, "instant")) if offline else None,
        "approve": ApprovalPolicy(allow=tuple(args.approve)),
    }


async def _serve_worker(args: argparse.Namespace, run_options: dict[str, Any]) -> int:
    """Run queued jobs until a signal: the first hands the running jobs back to the queue,
    a second stops at once."""
    import signal

    from orchestrator.jobs.store import open_store
    from orchestrator.jobs.worker import Worker

    async with open_store(args.store, lease=args.lease) as store:
        worker = Worker(
            store,
            slots=args.slots,
            queues=tuple(args.queue) or ("default",),
            poll=args.poll,
            run_options=run_options,
            max_recoveries=args.max_recoveries,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_worker_signals, signals, worker, nursery.cancel_scope)
                await worker.serve()
                nursery.cancel_scope.cancel()
    return 0


async def _worker_signals(signals: Any, worker: Any, scope: trio.CancelScope) -> None:
    import signal

    count = 0
    async for signum in signals:
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            print(
                f"{name}: handing the running jobs back to the queue (again to stop at once)",
                file=sys.stderr,
            )
            worker.stop()
        else:
            print(f"{name}: stopping at once", file=sys.stderr)
            scope.cancel()
