"""The ``orchestrator`` command line (also ``python -m orchestrator``).

Exit codes: 0 success, 2 usage/configuration/plan error (and a job that cannot be resumed),
3 auth or a model the service does not have, 4 run failed, 5 budget reached, 6 an answer
but some delegated work failed (partial), 7 a job needs attention (parked calls), 8
cancelled, 130 interrupted (SIGINT, Ctrl-C), 143 terminated (SIGTERM), 129 hung up
(SIGHUP); ``serve`` exits 0 on SIGINT and SIGTERM.

Everything a command writes to stdout and stderr goes through the redactor
(``orchestrator.core.redaction``): reports, JSON, error lines, tracebacks, log lines.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import attrs
import msgspec
import trio

from orchestrator.core.rules import TRANSPORTS
from orchestrator.errors import ConfigurationError, InternalError, PlanError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

_E = TypeVar("_E", bound=BaseException)

__all__ = [
    "EXIT_ATTENTION",
    "EXIT_AUTH",
    "EXIT_BUDGET",
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_HUNG_UP",
    "EXIT_INTERRUPTED",
    "EXIT_PARTIAL",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "main",
]

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_AUTH: Final = 3
EXIT_FAILED: Final = 4
EXIT_BUDGET: Final = 5
EXIT_PARTIAL: Final = 6
EXIT_ATTENTION: Final = 7
EXIT_CANCELLED: Final = 8
EXIT_INTERRUPTED: Final = 130
EXIT_TERMINATED: Final = 143
EXIT_HUNG_UP: Final = 129
# Seconds a process a tool left behind gets between SIGTERM and SIGKILL when `run` exits.
EXIT_GRACE: Final = 2.0
# The signals that stop a run cleanly (a second one forces): what is said, and the exit
# status, 128 + the signal number as a shell reports a process killed by it.
_STOP_SIGNALS: Final[dict[int, tuple[str, int]]] = {
    signal.SIGINT: ("interrupted: stopping cleanly (Ctrl-C again to force)", EXIT_INTERRUPTED),
    signal.SIGTERM: (
        "terminated (SIGTERM): stopping cleanly (send it again to force)",
        EXIT_TERMINATED,
    ),
    signal.SIGHUP: ("hung up (SIGHUP): stopping cleanly", EXIT_HUNG_UP),
}


def _fail(code: str, message: str, exit_code: int = EXIT_USAGE) -> NoReturn:
    print(f"error[{code}]: {message}", file=sys.stderr)
    raise SystemExit(exit_code)


# -- serve ---------------------------------------------------------------------------------------


def _add_serve(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the embedded Responses server (WebSocket mode and HTTP)",
        description="Serve the Responses API (WebSocket mode, and POST /v1/responses over "
        "HTTP with SSE) with deterministic local models, for offline runs, tests, benchmarks "
        "and fault injection.",
    )
    _add_serve_listener(parser)
    _add_serve_model(parser)
    _add_serve_wire(parser)
    _add_serve_limits(parser.add_argument_group("limits per connection"))
    _add_serve_behaviour(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more")
    parser.set_defaults(handler=_serve_command)


def _add_serve_listener(parser: Any) -> None:
    """``serve``'s address, its token, and how long a connection may live."""
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0: any)")
    parser.add_argument(
        "--token",
        help="bearer token clients must send (default: a random token, printed once); "
        "required for a non-loopback --host",
    )
    parser.add_argument(
        "--max-connection-age",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="close connections with websocket_connection_limit_reached after this age "
        "(default 3600)",
    )


def _add_serve_model(parser: Any) -> None:
    """``serve``'s local model: which one, its script, the seed of its ids."""
    parser.add_argument(
        "--model",
        choices=("generic", "echo", "scripted"),
        help="local model for every model name (default: chosen by model name)",
    )
    parser.add_argument("--script", type=Path, help="JSON/YAML turns for the scripted model")
    parser.add_argument("--seed", type=int, help="make ids deterministic")


def _add_serve_wire(parser: Any) -> None:
    """``serve``'s wire: message size, HTTP keep-alive, WebSocket or not, busy lanes."""
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=16 * 1024 * 1024,
        metavar="BYTES",
        help="incoming message limit, enforced with close 1009 (default 16 MiB)",
    )
    parser.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="close an HTTP connection idle for this long between requests (default 60)",
    )
    parser.add_argument(
        "--no-websocket",
        dest="websocket",
        action="store_false",
        help="serve HTTP only: refuse WebSocket upgrades with 426 websocket_not_supported, "
        "as endpoints without WebSocket mode do",
    )
    parser.add_argument(
        "--strict-single-flight",
        action="store_true",
        help="answer a second create on a busy lane with 409 instead of queueing it",
    )


def _add_serve_limits(limits: Any) -> None:
    """``serve``'s limits per connection: request bytes, buffers, stalls, handshakes."""
    limits.add_argument(
        "--max-request-bytes",
        type=int,
        default=32 * 1024 * 1024,
        metavar="BYTES",
        help="bytes of requests one connection holds, queued or running; more get 429 "
        "(default 32 MiB)",
    )
    limits.add_argument(
        "--max-buffered-bytes",
        type=int,
        default=4 * 1024 * 1024,
        metavar="BYTES",
        help="outgoing bytes held for one client; producers wait at a quarter of it "
        "(default 4 MiB)",
    )
    limits.add_argument(
        "--send-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="close a client with 1008 when its socket takes no output for this long "
        "(default 30; 0: never)",
    )
    limits.add_argument(
        "--max-pending-handshakes",
        type=int,
        default=1024,
        metavar="N",
        help="connections still in their handshake at once; more get HTTP 503 (default 1024)",
    )
    limits.add_argument(
        "--handshake-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="drop a client that has not completed its handshake by then (default 10)",
    )


def _add_serve_behaviour(parser: Any) -> None:
    """``serve``'s model pace and injected faults."""
    parser.add_argument("--ttft", type=float, default=0.0, help="time to first token, seconds")
    parser.add_argument(
        "--tokens-per-second", type=float, default=None, help="pace of output deltas"
    )
    parser.add_argument(
        "--input-token-cost",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="processing time per input token not served from a cache",
    )
    costs = parser.add_argument_group(
        "request costs of the latency model (docs/protocol.md#determinism-and-latency)"
    )
    costs.add_argument(
        "--http-request-cost",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="fixed API work per HTTP request (auth, routing, loading state)",
    )
    costs.add_argument(
        "--websocket-request-cost",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="fixed work per response.create on a WebSocket",
    )
    costs.add_argument(
        "--sent-token-cost",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="parsing and tokenising per input token a request carries",
    )
    costs.add_argument(
        "--rehydrated-token-cost",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="loading a stored chain by previous_response_id, per token of the chain",
    )
    costs.add_argument(
        "--cache-miss-rate",
        type=float,
        default=0.0,
        metavar="RATE",
        help="probability (0 to 1) that an HTTP request misses the prompt cache",
    )
    parser.add_argument(
        "--faults",
        type=Path,
        metavar="FILE",
        help="JSON list of faults to inject (fields of orchestrator.core.server.Fault)",
    )


def _serve_command(args: argparse.Namespace) -> int:
    from orchestrator.core.logging import configure
    from orchestrator.core.server import Fault, LatencyModel, ServerConfig

    configure("DEBUG" if args.verbose > 1 else "INFO" if args.verbose else "WARNING")
    faults: tuple[Fault, ...] = ()
    if args.faults is not None:
        try:
            faults = tuple(msgspec.json.decode(args.faults.read_bytes(), type=list[Fault]))
        except (OSError, msgspec.MsgspecError) as exc:
            _fail("config.value", f"--faults {args.faults}: {exc}")
    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            token=args.token,
            model=args.model,
            script=args.script,
            max_connection_age=args.max_connection_age,
            max_message_size=args.max_message_size,
            max_request_bytes=args.max_request_bytes,
            max_buffered_bytes=args.max_buffered_bytes,
            send_timeout=args.send_timeout or None,
            max_pending_handshakes=args.max_pending_handshakes,
            handshake_timeout=args.handshake_timeout,
            strict_single_flight=args.strict_single_flight,
            websocket=args.websocket,
            keep_alive_timeout=args.keep_alive_timeout,
            latency=LatencyModel(
                time_to_first_token=args.ttft,
                tokens_per_second=args.tokens_per_second,
                seconds_per_input_token=args.input_token_cost,
                http_request_seconds=args.http_request_cost,
                websocket_request_seconds=args.websocket_request_cost,
                seconds_per_sent_token=args.sent_token_cost,
                seconds_per_rehydrated_token=args.rehydrated_token_cost,
                cache_miss_rate=args.cache_miss_rate,
            ),
            faults=faults,
            seed=args.seed,
        )
    except ConfigurationError as exc:
        _fail(exc.code, str(exc))
    from orchestrator.core.tuning import gc_policy, raise_fd_limit

    raise_fd_limit()  # one file per connection: thousands of agents need more than 1024
    try:
        with gc_policy():
            trio.run(_serve_until_signal, config, args.token is None)
    except* ConfigurationError as group:
        # A port in use comes out of the server's nursery, in a group.
        for error in _leaves(group):
            print(f"error[{error.code}]: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    return EXIT_OK


def _leaves(group: BaseExceptionGroup[_E]) -> list[_E]:
    leaves: list[_E] = []
    for error in group.exceptions:
        leaves.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return leaves


async def _serve_until_signal(config: Any, print_token: bool) -> None:
    from orchestrator.core.server import LocalServer, serve_local_server

    server = LocalServer.from_config(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(partial(serve_local_server, config, server=server))
            if config.websocket:
                print(f"serving {running.url}", flush=True)
            else:
                http_url = f"{running.base_url}/responses"
                print(f"serving {http_url} (HTTP only: upgrades get 426)", flush=True)
            print(f"base_url {running.base_url}", flush=True)
            if print_token:
                print(f"token {running.token}", flush=True)
            async for _ in signals:
                print("stopping", file=sys.stderr, flush=True)
                nursery.cancel_scope.cancel()
                break


# -- validate and run ----------------------------------------------------------------------------


def _add_validate(commands: Any) -> None:
    parser = commands.add_parser(
        "validate",
        help="check a plan file and report every problem at once",
        description="Validate a plan (TOML, YAML or JSON) without opening any connection.",
    )
    parser.add_argument("plan", type=Path, help="the plan file")
    parser.set_defaults(handler=_validate_command)


def _plan_path_on_sys_path(path: Path) -> None:
    """Tools are imported by path: make modules next to the plan and in the cwd importable."""
    for entry in (str(Path.cwd()), str(path.resolve().parent)):
        if entry not in sys.path:
            sys.path.insert(0, entry)


def _check(path: Path) -> Any:
    """The plan at ``path``, every tool built; its warnings printed. Exits 2 on errors."""
    from actors.tools import check_definition
    from plans import check_plan_file

    _plan_path_on_sys_path(path)
    report = check_plan_file(path, check_tool=check_definition)
    for issue in sorted(report.warnings, key=str):
        print(str(issue), file=sys.stderr)
    if report.errors:
        for issue in report.errors:
            print(str(issue), file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return report.plan


def _model_warnings(plan: Any, *, offline: bool) -> None:
    """A warning per model name the service does not offer (as far as this version knows),
    naming the agents that use it.

    Offline the embedded server answers whatever the name, so a typo would only show live.
    """
    from orchestrator.core.model_names import closest_model, is_known_model, is_local_model

    users: dict[str, list[str]] = {}
    for agent in plan.agents:
        users.setdefault(plan.model_for(agent), []).append(agent.name)
    for model, agents in users.items():
        if is_known_model(model) or is_local_model(model):
            continue
        close = closest_model(model)
        hint = f" (did you mean {close!r}?)" if close else ""
        consequence = (
            "offline the embedded server's generic model answers anyway; a live run would "
            "stop with error[model.not_found] if the service has no such model"
            if offline
            else "if the service has no such model the run stops with error[model.not_found]"
        )
        who = ", ".join(repr(name) for name in agents)
        print(
            f"warning[model.unknown]: model {model!r} (agent{'s' if len(agents) > 1 else ''} "
            f"{who}) is not a model orchestrator knows{hint}; {consequence}",
            file=sys.stderr,
        )


def _validate_command(args: argparse.Namespace) -> int:
    plan = _check(args.plan)
    _model_warnings(plan, offline=not os.environ.get("OPENAI_API_KEY"))
    servers = {name for agent in plan.agents for name in agent.mcp_servers}
    hosted = sum(len(agent.hosted_tools) for agent in plan.agents)
    sources = (f", {len(servers)} MCP servers" if servers else "") + (
        f", {hosted} hosted tools" if hosted else ""
    )
    print(
        f"ok: plan {plan.name!r}: {len(plan.agents)} agents, {len(plan.steps)} steps, "
        f"{len({t for a in plan.agents for t in a.tools})} tools{sources}"
    )
    return EXIT_OK


def _add_run(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="run a plan (offline on the embedded server when OPENAI_API_KEY is not set)",
        description="Run a plan to its answer. Without OPENAI_API_KEY (or --api-key-file) the "
        "run uses the embedded server in-process; with a key it runs live against the "
        "service or --base-url.",
    )
    parser.add_argument("plan", type=Path, help="the plan file (TOML, YAML or JSON)")
    parser.add_argument("--goal", help="what to achieve (default: the plan's goal)")
    parser.add_argument("--json", action="store_true", help="print one JSON result, no live view")
    parser.add_argument("--trace", type=Path, metavar="FILE", help="write every event as JSONL")
    parser.add_argument("--base-url", help="a compatible endpoint (https://host/v1 or wss://...)")
    parser.add_argument(
        "--api-key-file", type=Path, metavar="FILE", help="read the API key from a 0600 file"
    )
    parser.add_argument(
        "--offline", action="store_true", help="use the embedded server even with a key"
    )
    add_connection_options(parser)
    add_store_option(parser)
    parser.add_argument(
        "--no-journal",
        action="store_true",
        help="run without a journal (the run cannot be resumed)",
    )
    parser.add_argument(
        "--job-id", metavar="ID", help="the job's id (default: generated from the plan's name)"
    )
    parser.add_argument(
        "--approve",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run calls of destructive/external tools matching PATTERN ('tool' or "
        "'agent:tool', * wildcards) without asking; repeatable. Other such calls are asked "
        "on the terminal, or denied when the run is not interactive",
    )
    _add_run_offline(parser.add_argument_group("embedded server (offline runs)"))
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (stderr)")
    parser.set_defaults(handler=_run_command)


def _add_run_offline(offline: Any) -> None:
    """``run``'s options for the embedded server of an offline run."""
    offline.add_argument(
        "--pace",
        choices=tuple(PACES),
        help="how fast the local model answers: 'realistic' (about half a second to the first "
        "token, then 100 tokens/s, like a hosted model; the default when the live view is "
        "shown) or 'instant' (the default with --json or when the output is not a terminal)",
    )
    offline.add_argument(
        "--local-model",
        choices=("generic", "echo", "scripted"),
        help="local model for every agent (default: by model name, i.e. generic)",
    )
    offline.add_argument("--local-script", type=Path, metavar="FILE", help="scripted turns")
    offline.add_argument(
        "--local-ttft",
        type=float,
        default=None,
        metavar="S",
        help="time to first token (overrides --pace)",
    )
    offline.add_argument(
        "--local-tokens-per-second",
        type=float,
        default=None,
        metavar="N",
        help="output pace (overrides --pace)",
    )
    offline.add_argument(
        "--local-seed", type=int, default=None, metavar="N", help="deterministic ids"
    )


def _read_key_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        _fail("auth.missing", f"cannot read --api-key-file {path}: {exc.strerror}", EXIT_AUTH)
    if mode & 0o077:
        _fail(
            "auth.permissions",
            f"{path} is readable by others (mode {mode & 0o777:o}); chmod 600 it",
            EXIT_AUTH,
        )
    return text.strip()


def add_connection_options(parser: Any) -> None:
    """``--allow-insecure`` and ``--transport``: how agents reach the endpoint."""
    parser.add_argument(
        "--allow-insecure", action="store_true", help="allow ws:// to a non-loopback host"
    )
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        help="websocket (WebSocket mode), http (one POST per turn, server-sent events) or "
        "auto (WebSocket, going on over HTTP when the endpoint has no WebSocket mode); "
        "default: the plan's, else websocket for the OpenAI service and auto elsewhere",
    )


def connection_settings(args: Any) -> Any:
    """The ConnectionSettings that :func:`add_connection_options`' flags ask for."""
    from orchestrator.core.connection import ConnectionSettings

    return ConnectionSettings(allow_insecure=args.allow_insecure, transport=args.transport)


def add_store_option(parser: Any) -> None:
    parser.add_argument(
        "--store",
        metavar="PATH|URL",
        help="the job store: a SQLite file, sqlite:///PATH?synchronous=full or postgresql://... "
        "(default: $ORCHESTRATOR_STORE, else ~/.local/state/orchestrator/jobs.db)",
    )


_EXIT_BY_STATUS: Final = {
    "completed": EXIT_OK,
    "partial": EXIT_PARTIAL,
    "budget_exceeded": EXIT_BUDGET,
    "interrupted": EXIT_INTERRUPTED,
    "needs_attention": EXIT_ATTENTION,
    "cancelled": EXIT_CANCELLED,
}


def _exit_code(result: Any) -> int:
    if result.status in _EXIT_BY_STATUS:
        if result.status == "interrupted" and (result.code or "").startswith("job."):
            return EXIT_FAILED  # the journal failed: not a person's interruption
        return _EXIT_BY_STATUS[result.status]
    code = result.code or ""
    if code.startswith(("auth.", "model.")):
        return EXIT_AUTH
    if code.startswith(("config.", "plan.")):
        return EXIT_USAGE
    return EXIT_FAILED


def _run_command(args: argparse.Namespace) -> int:
    """``orchestrator run``; whatever way it ends, no process it started outlives it."""
    return owning_descendants(args, _run)


def owning_descendants(args: argparse.Namespace, body: Any) -> int:
    """``body(args, spared)``, and whatever way it ends, no process it started outlives it."""
    from orchestrator.core.processes import become_subreaper, descendants, stop_descendants

    # Processes that were there before (a test calling main() in-process) are not ours.
    spared = descendants()
    if args.owns_process:
        # Orphaned grandchildren of tools come back to us, so that the sweep below finds them.
        become_subreaper()
    try:
        result: int = body(args, spared)
        return result
    finally:
        stop_descendants(EXIT_GRACE, spare=spared)


def _run(args: argparse.Namespace, spared: set[int]) -> int:
    # Import the packages first: each one's __init__ disables its logs, which would undo
    # configure() for a package imported later (a tool refused to an agent, a plan warning).
    import actors  # noqa: F401
    import plans  # noqa: F401
    from orchestrator.core.logging import configure

    configure("DEBUG" if args.verbose > 1 else "INFO" if args.verbose else "WARNING")
    plan = _runnable_plan(args)
    key, offline = _key_and_offline(args, plan)
    from rich.console import Console

    # The live view is shown on a terminal (not with --json): there, offline runs go at a
    # hosted model's pace by default, so that there is something to watch.
    watching = not args.json and Console().is_terminal
    pace = args.pace or ("realistic" if watching else "instant")
    server_options = _server_options(args, pace) if offline else None
    if offline:
        _announce_offline(args, plan, pace, server_options)
    from orchestrator.core.tuning import gc_policy, raise_fd_limit

    raise_fd_limit()
    invoke = _invoker(args, plan, key, offline, server_options)
    # The process is ours: collect rarely (agents make little cyclic garbage; see tuning).
    try:
        with gc_policy():
            return trio.run(_run_async, args, _where(offline, server_options, args), invoke, spared)
    except* (PlanError, ConfigurationError) as group:
        # What run() refuses before starting (a team too big for the fd limit...) is the
        # user's to fix: error[...] and exit 2 (3 for a key), never "a bug in orchestrator".
        leaves = _leaves(group)
        for error in leaves:
            print(_error_line(error), file=sys.stderr)
        auth = any(getattr(e, "code", "").startswith("auth.") for e in leaves)
        raise SystemExit(EXIT_AUTH if auth else EXIT_USAGE) from None


def _runnable_plan(args: argparse.Namespace) -> Any:
    """The plan of ``run``, checked, with a goal and valid ``--approve`` patterns; exits 2
    otherwise."""
    plan = _check(args.plan)
    if args.goal is None and plan.goal is None and not plan.steps:
        _fail(
            "plan.goal",
            f"plan {plan.name!r} has no goal: pass one with --goal or set 'goal' in the plan",
        )
    if args.approve:
        from plans import check_approval_patterns

        issues = check_approval_patterns(plan, args.approve, source="--approve")
        for issue in issues:
            print(str(issue), file=sys.stderr)
        if issues:
            raise SystemExit(EXIT_USAGE)
    return plan


def _key_and_offline(args: argparse.Namespace, plan: Any) -> tuple[str | None, bool]:
    """The key (``--api-key-file``, else ``OPENAI_API_KEY`` unless ``--offline``) and whether
    the run is offline; a live run's key and endpoint checked now (exit 3 or 2)."""
    key: str | None = None
    if args.api_key_file is not None:
        key = _read_key_file(args.api_key_file)
    elif not args.offline:
        key = os.environ.get("OPENAI_API_KEY")
    offline = args.offline or key is None
    if offline and args.base_url and not args.offline:
        _fail(
            "auth.missing",
            f"--base-url {args.base_url} needs a key: set OPENAI_API_KEY or pass --api-key-file",
            EXIT_AUTH,
        )
    if key is not None and not offline:
        from orchestrator.core.endpoint import resolve_api_key, resolve_endpoint

        try:
            resolve_api_key(key)  # from here on the redactor knows the key
            resolve_endpoint(
                args.base_url or plan.settings.base_url, allow_insecure=args.allow_insecure
            )
        except ConfigurationError as exc:
            _fail(exc.code, str(exc), EXIT_AUTH if exc.code.startswith("auth.") else EXIT_USAGE)
        if not key.startswith("sk-"):
            print("warning[auth.format]: key does not start with 'sk-'", file=sys.stderr)
    return key, offline


def _announce_offline(
    args: argparse.Namespace, plan: Any, pace: str, server_options: dict[str, Any] | None
) -> None:
    """Say that the run is offline (and at what pace), and warn of unknown model names."""
    paced = ""
    if server_options is not None and not server_options["latency"].is_zero:
        paced = f", {pace} pace" if args.local_ttft is None else ", paced"
        if pace == "realistic" and args.pace is None:
            paced += " (or --pace instant)"
    print(f"offline: no OPENAI_API_KEY, running on the embedded server{paced}", file=sys.stderr)
    if args.local_model is None and args.local_script is None:
        # (With a chosen local model, model names are only keys of its script.)
        _model_warnings(plan, offline=True)


def _invoker(
    args: argparse.Namespace,
    plan: Any,
    key: str | None,
    offline: bool,
    server_options: dict[str, Any] | None,
) -> Any:
    """``invoke(run, common)`` for :func:`_run_async`: ``run`` of this plan with the
    command's settings; the job's id announced first."""
    from orchestrator.runner import EmbeddedServer, RunSettings, new_job_id

    job_id = None
    if not args.no_journal:
        job_id = args.job_id or new_job_id(plan.name)
        print(f"job {job_id}", file=sys.stderr)
    settings = RunSettings(
        api_key=key,
        base_url=args.base_url,
        offline=offline,
        connection=connection_settings(args),
    )
    local = _local_facts(args, server_options)

    async def invoke(run: Any, common: dict[str, Any]) -> Any:
        return await run(
            plan,
            args.goal,
            settings=settings,
            embedded=EmbeddedServer(config=server_options or {}),
            store=None if args.no_journal else _store_spec(args),
            job_id=job_id,
            options={"local": local},
            **common,
        )

    return invoke


def _local_facts(args: argparse.Namespace, server_options: dict[str, Any] | None) -> dict[str, Any]:
    """The embedded server's settings, kept with the job: a resume runs with the same."""
    latency = server_options["latency"] if server_options else None
    return {
        "model": args.local_model,
        "script": str(args.local_script) if args.local_script else None,
        "ttft": latency.time_to_first_token if latency else 0.0,
        "tokens_per_second": latency.tokens_per_second if latency else None,
        "seed": args.local_seed,
    }


# --pace: (time to first token, tokens per second) of the embedded server's model.
PACES: Final[dict[str, tuple[float, float | None]]] = {
    "realistic": (0.5, 100.0),
    "instant": (0.0, None),
}


def _error_line(error: PlanError | ConfigurationError) -> str:
    text = str(error)
    if isinstance(error, ConfigurationError):
        return f"error[{error.code}]: {text}"
    return text if text.startswith("error[") else f"error[plan.value]: {text}"


def _store_spec(args: argparse.Namespace) -> Any:
    from orchestrator.runner import DEFAULT_STORE

    return args.store if args.store else DEFAULT_STORE


def _server_options(args: argparse.Namespace, pace: str) -> dict[str, Any]:
    """The embedded server's settings from --pace and the --local-* options, checked (script
    loaded) before the run starts: a bad value is a usage error, not a traceback from inside
    it. An explicit --local-ttft or --local-tokens-per-second wins over the pace."""
    from orchestrator.core.server import LatencyModel, LocalServer, ServerConfig

    ttft, tokens_per_second = PACES[pace]
    if args.local_ttft is not None:
        ttft = args.local_ttft
    if args.local_tokens_per_second is not None:
        tokens_per_second = args.local_tokens_per_second
    try:
        options: dict[str, Any] = {
            "model": args.local_model,
            "script": args.local_script,
            "seed": args.local_seed,
            "latency": LatencyModel(time_to_first_token=ttft, tokens_per_second=tokens_per_second),
        }
        LocalServer.from_config(ServerConfig(**options))
    except ConfigurationError as exc:
        _fail(exc.code, str(exc))
    return options


def _open_trace(path: Path, *, append: bool = False) -> Any:
    """The trace file, created (or truncated; appended to when resuming a job) private to the
    user, unbuffered: each event is one whole line on disk as soon as it happens (follow it
    live; nothing lost to a kill)."""
    mode = os.O_APPEND if append else os.O_TRUNC
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | mode, 0o600)
    except OSError as exc:
        _fail("config.value", f"cannot write --trace {path}: {exc.strerror}")
    try:
        os.fchmod(descriptor, 0o600)  # an existing file keeps its mode through O_CREAT
    except OSError:
        os.close(descriptor)
        _fail("config.value", f"cannot make --trace {path} private (chmod 600)")
    return os.fdopen(descriptor, "wb", buffering=0)


async def _run_async(
    args: argparse.Namespace,
    where: str,
    invoke: Any,
    spared: set[int],
) -> int:
    """Run (or resume) a job with the live view, signals, trace and report.

    ``invoke(run, common)`` calls ``orchestrator.run`` with its own arguments plus
    ``common`` (events, stop, approve).
    """
    from rich.console import Console

    from orchestrator.core.observe import EventBus
    from orchestrator.display import LiveView
    from orchestrator.runner import run
    from orchestrator.trace import TraceWriter

    console = Console(stderr=args.json)
    bus = EventBus()
    trace = None
    if args.trace is not None:
        trace = _open_trace(args.trace, append=getattr(args, "resume_job", None) is not None)
        bus.add_listener(TraceWriter(trace))
    view = LiveView(where)
    bus.add_listener(view)
    stopping = _Stopping(console=console, trace=trace, spared=spared)
    common = {"events": bus, "stop": stopping.stop, "approve": _approver(args, console, view)}
    try:
        with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stopping.serve, signals)
                if console.is_terminal and not args.json:
                    nursery.start_soon(view.refresh, console)
                result = await invoke(run, common)
                nursery.cancel_scope.cancel()
    finally:
        if trace is not None:
            trace.close()
    return _report(args, console, result, stopping.first_signal)


def _approver(args: argparse.Namespace, console: Any, view: Any) -> Any:
    """``--approve`` patterns, then the person at the terminal (when there is one)."""
    from rich.console import Console

    from actors.approval import ApprovalPolicy

    interactive = sys.stdin.isatty() and console.is_terminal
    return ApprovalPolicy(
        allow=tuple(args.approve),
        ask=_TerminalApprover(Console(stderr=True), view) if interactive else None,
    )


@attrs.define(eq=False, kw_only=True)
class _Stopping:
    """The stop signals of a run: the first stops it cleanly (``stop`` is set), a second
    one forces the exit (every descendant process killed first)."""

    console: Any
    trace: Any
    spared: set[int]
    stop: trio.Event = attrs.field(factory=trio.Event)
    first_signal: int | None = None

    async def serve(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if self.first_signal is None:
                self.first_signal = signum
                self.stop.set()
                with contextlib.suppress(OSError):  # a terminal that hung up
                    print(f"\n{_STOP_SIGNALS[signum][0]}", file=sys.stderr)
            else:
                self._force(signum)

    def _force(self, signum: int) -> NoReturn:
        """Exit now (docs/faults.md#signals-and-processes). Cancelling cannot cut the
        shutdown short: it is shielded, and may be waiting on a tool that ignores
        cancellation or on close handshakes."""
        from orchestrator.core.processes import stop_descendants

        with contextlib.suppress(OSError):
            print("forced stop", file=sys.stderr, flush=True)
            self.console.show_cursor(True)
        if self.trace is not None:
            self.trace.close()
        # A forced exit must not orphan tool processes, grandchildren included: SIGKILL
        # every descendant, then go.
        stop_descendants(0.0, spare=self.spared)
        os._exit(_STOP_SIGNALS[signum][1])


def _report(args: argparse.Namespace, console: Any, result: Any, stopped_by: int | None) -> int:
    """Print the result (``--json``, or the report) and the job hint; the exit code."""
    from orchestrator.display import render_report

    if args.json:
        sys.stdout.write(result.to_json().decode() + "\n")
        sys.stdout.flush()
    else:
        console.print(render_report(result))
    _print_job_hint(result)
    if result.status == "interrupted" and stopped_by is not None:
        return _STOP_SIGNALS[stopped_by][1]  # 130 for Ctrl-C, 143 for SIGTERM
    return _exit_code(result)


def _print_job_hint(result: Any) -> None:
    """The one command that continues the job, when there is one to continue."""
    job = result.job
    if job is None:
        return
    if result.status == "needs_attention":
        print(
            f"job {job} needs attention: `orchestrator jobs show {job}`, then "
            f"`orchestrator jobs resolve {job} CALL ...` and `orchestrator jobs resume {job}`",
            file=sys.stderr,
        )
    elif result.status in ("interrupted", "budget_exceeded") or result.code in (
        "job.storage_unavailable",
    ):
        print(f"resume with: orchestrator jobs resume {job}", file=sys.stderr)


def _where(offline: bool, server_options: dict[str, Any] | None, args: argparse.Namespace) -> str:
    """How the run reaches its model, for the live view's first line."""
    if not offline:
        return f"live: {args.base_url}" if getattr(args, "base_url", None) else "live"
    latency = server_options["latency"] if server_options else None
    if latency is None or latency.is_zero:
        return "embedded server"
    if args.local_ttft is None and args.local_tokens_per_second is None:
        return f"embedded server, {args.pace or 'realistic'} pace"
    return "embedded server, paced"


class _TerminalApprover:
    """Asks the person at the terminal about each call that needs an approval, one question
    at a time (the live table steps aside meanwhile). ``a`` approves the tool for the rest
    of the run."""

    def __init__(self, console: Any, view: Any) -> None:
        self.console = console
        self.view = view
        self.lock = trio.Lock()
        self.always: set[tuple[str, str]] = set()

    async def __call__(self, request: Any) -> Any:
        from actors.approval import ApprovalDecision
        from orchestrator.display import clean

        key = (request.agent, request.tool)
        async with self.lock:
            if key in self.always:
                return ApprovalDecision(True, "interactive", "approved for the whole run")
            arguments = clean(request.arguments)
            if len(arguments) > 2000:
                arguments = arguments[:2000] + f" ... ({len(request.arguments):,} characters)"
            with self.view.asking(request.agent, request.tool), self.view.paused():
                self.console.print(
                    f"\n[bold]approval[/bold]: agent [cyan]{request.agent}[/cyan] wants to "
                    f"call [bold]{request.tool}[/bold] ({request.side_effect}) with",
                    highlight=False,
                )
                self.console.print(arguments, markup=False, highlight=False)
                answer = await trio.to_thread.run_sync(
                    _read_answer,
                    "allow? [y]es, [a]lways for this tool, [N]o: ",
                    abandon_on_cancel=True,
                )
        if answer in ("a", "always"):
            self.always.add(key)
            return ApprovalDecision(True, "interactive", "approved for the whole run")
        if answer in ("y", "yes"):
            return ApprovalDecision(True, "interactive", "approved at the terminal")
        return ApprovalDecision(False, "interactive", "denied by the operator at the terminal")


def _read_answer(prompt: str) -> str:
    """One line from the terminal (runs in a thread); end of input counts as no.

    ``os.read`` rather than ``sys.stdin``: a thread abandoned by Ctrl-C must not hold the
    stdin buffer's lock while the interpreter shuts down.
    """
    try:
        sys.stderr.write(prompt)
        sys.stderr.flush()
        line = os.read(sys.stdin.fileno(), 4096)
    except (OSError, ValueError):
        return ""
    return line.decode("utf-8", "replace").strip().lower()


# -- demo ----------------------------------------------------------------------------------------


def _add_demo(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="run a short offline conversation on the embedded server (no API key needed)",
    )
    parser.set_defaults(handler=_demo_command)


def _demo_command(args: argparse.Namespace) -> int:
    trio.run(_demo)
    return EXIT_OK


async def _demo() -> None:
    from orchestrator.core.connection import open_connection
    from orchestrator.core.protocol.events import (
        FunctionCallOutputItem,
        FunctionTool,
        MessageItem,
        OutputTextDelta,
    )
    from orchestrator.core.server import open_local_server
    from orchestrator.core.session import Session

    weather = FunctionTool(
        "weather",
        {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "Today's weather in a city.",
    )
    print("demo: embedded server (no API key needed), generic local model")
    async with (
        open_local_server() as server,
        open_connection(server.url, server.token, agent="demo") as connection,
    ):
        session = Session(model="local-generic", instructions="Be brief.", tools=(weather,))

        def show(event: object) -> None:
            if isinstance(event, OutputTextDelta):
                print(event.delta, end="", flush=True)

        prompt = "What is the weather in Lisbon today?"
        print(f"user: {prompt}")
        response = await connection.run_turn(session, [MessageItem.user(prompt)])
        outputs = []
        for call in response.function_calls:
            print(f"tool: {call.name}({call.arguments})")
            outputs.append(
                FunctionCallOutputItem(call_id=call.call_id, output='{"sky":"sunny","c":21}')
            )
        print("assistant: ", end="")
        await connection.run_turn(session, outputs, on_event=show)
        print()
        stats = connection.statistics()
        print(
            f"turns {stats.turns}, transcript {len(session.transcript)} items, "
            f"{stats.events_received} events, continued by previous_response_id"
        )


# -- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Supervised teams of LLM agents over the Responses API WebSocket mode.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(commands)
    _add_validate(commands)
    _add_serve(commands)
    _add_demo(commands)
    from orchestrator.jobs.cli import add_jobs, add_worker

    add_jobs(commands)
    add_worker(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; ``argv`` defaults to the program's (then main() owns the process).

    Whatever the command writes to stdout and stderr is redacted on the way out.
    """
    from orchestrator.core.logging import RedactingStream

    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(stdout), RedactingStream(stderr)
    try:
        return _main(argv)
    finally:
        with contextlib.suppress(OSError, ValueError):  # a closed or hung-up terminal
            sys.stdout.flush()
            sys.stderr.flush()
        sys.stdout, sys.stderr = stdout, stderr


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.owns_process = argv is None
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`orchestrator jobs list | head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        # A bug, not a user error: one line by default (docs/faults.md#bad-input), the traceback
        # with -v.
        from orchestrator.core.logging import redact

        leaf = exc
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        what = str(leaf) if isinstance(leaf, InternalError) else f"{type(leaf).__name__}: {leaf}"
        print(
            f"error[internal]: {redact(what)} "
            "(this is a bug in orchestrator; please report it, with -v for the traceback)",
            file=sys.stderr,
        )
        if getattr(args, "verbose", 0):
            import traceback

            sys.stderr.write(redact("".join(traceback.format_exception(exc))))
        return EXIT_FAILED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
