"""WebSocket mode against HTTP on a tool-calling rollout (issue 15, item 6).

One rollout is one agent conversation: a user message, N turns that each end in one call of
a local tool (its output about 1 KB, a few hundred tokens, so the history grows turn by
turn), then a text answer. The runtime's own ``Connection`` and ``Session``
(``orchestrator.lowlevel``) drive it three ways:

* ``ws``: transport ``websocket``, ``store=false``: each turn continues by id on the socket
  and sends only the new items (the tool's output).
* ``http_id``: transport ``http``, ``store=true``: each turn is one ``POST`` that continues
  by ``previous_response_id`` from the server's store.
* ``http_full``: transport ``http``, ``store=false``: each ``POST`` resends the whole
  transcript.

Local mode (the default) runs it against the embedded server and its scripted model, the
server in its own process pinned to one core and the client in another pinned to the other,
one server per scenario; the scenarios add the latency model's costs one at a time
(``SCENARIOS``). Within a round every call count runs the three variants back to back, in
an order that rotates, so each (scenario, calls) cell holds ``--rounds`` paired rollouts::

    python -m bench.transports [--quick] [--rounds N] [--calls 5,10,20,40] [--write]

Live mode runs the same client process, the same code, against a real endpoint and its own
costs (no latency model); the key is read from ``OPENAI_API_KEY``, never from the command
line::

    python -m bench.transports --live --base-url https://api.openai.com/v1 \\
        --model gpt-5-mini --calls 20 --rounds 10

Besides the coordinator (the commands above) the module runs as the two processes it
starts: ``python -m bench.transports serve --script FILE --costs JSON`` (the embedded server
with one scenario's latency model; prints its URL and token) and ``python -m
bench.transports client --plan JSON`` (the rollouts; prints one JSON line of records).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from bench._common import ROOT, machine, median, pin, script_file
from bench._harness import cores, mann_whitney

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from orchestrator.lowlevel import Connection

RESULTS: Final = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN: Final = "<!-- bench.transports: begin -->"
END: Final = "<!-- bench.transports: end -->"

VARIANTS: Final = ("ws", "http_id", "http_full")
# variant -> (ConnectionSettings.transport, Session.store)
VARIANT_SETTINGS: Final = {
    "ws": ("websocket", False),
    "http_id": ("http", True),
    "http_full": ("http", False),
}
HTTP_VARIANTS: Final = ("http_id", "http_full")
DEFAULT_CALLS: Final = (5, 10, 20, 40)
DEFAULT_ROUNDS: Final = 10
QUICK_ROUNDS: Final = 3
CPU_CALLS: Final = 20  # the call count whose client CPU per turn the note quotes
# A live model may stray from the instructions; a rollout that has not answered after this
# many turns more than it was asked for is an error rather than a measurement.
EXTRA_TURNS: Final = 10
CITY: Final = "Lisbon"
TEXT_DELTAS: Final = 50
ARGUMENT_DELTAS: Final = 6


# -- scenarios: the latency model's costs, added one at a time ------------------------------------


@attrs.frozen
class Scenario:
    """One server configuration: ``costs`` are every ``LatencyModel`` field, cumulative."""

    name: str
    title: str
    added: dict[str, float | None]
    costs: dict[str, float | None]
    # Rounds run, as a multiple of --rounds: the first scenario's turns take about a
    # millisecond, so its cells are the cheapest and, relative to their size, the noisiest.
    repeat: int = 1

    def describe(self, which: dict[str, float | None] | None = None) -> str:
        shown = self.costs if which is None else which
        return ", ".join(f"{name}={_cost(value)}" for name, value in shown.items()) or "none"


def _cost(value: float | None) -> str:
    return "None" if value is None else f"{value:g}"


# Every cost of the latency model, at zero: the first scenario sets each explicitly, so a
# default the server may give one of them never slips into "transport only".
ZERO_COSTS: Final[dict[str, float | None]] = {
    "time_to_first_token": 0.0,
    "tokens_per_second": None,
    "seconds_per_input_token": 0.0,
    "http_request_seconds": 0.0,
    "websocket_request_seconds": 0.0,
    "seconds_per_sent_token": 0.0,
    "seconds_per_rehydrated_token": 0.0,
    "cache_miss_rate": 0.0,
}
# The scenarios, in order: each adds its costs to the ones before. Each is named by its
# number, as the issue names them.
_STEPS: Final[tuple[tuple[str, dict[str, float | None]], ...]] = (
    ("transport only (every latency cost zero)", {}),
    (
        "+ per-request API work",
        {"http_request_seconds": 0.030, "websocket_request_seconds": 0.003},
    ),
    (
        "+ cache misses",
        {
            "cache_miss_rate": 0.25,
            "seconds_per_input_token": 2e-5,
            "seconds_per_sent_token": 1e-6,
            "seconds_per_rehydrated_token": 2e-6,
        },
    ),
    ("+ fast inference", {"time_to_first_token": 0.05, "tokens_per_second": 1000.0}),
)
TRANSPORT_ONLY_REPEAT: Final = 3


def _build_scenarios() -> dict[str, Scenario]:
    scenarios: dict[str, Scenario] = {}
    costs = dict(ZERO_COSTS)
    for number, (title, added) in enumerate(_STEPS, 1):
        costs = {**costs, **added}
        repeat = TRANSPORT_ONLY_REPEAT if number == 1 else 1
        name = f"S{number}"
        scenarios[name] = Scenario(name, title, dict(added), dict(costs), repeat)
    return scenarios


SCENARIOS: Final = _build_scenarios()


# -- the workload ---------------------------------------------------------------------------------


def instructions(calls: int) -> str:
    """What the agent is told; the scripted model does exactly this, a live one is asked to."""
    return (
        f"You are measuring a tool-calling loop. Call the `lookup` tool exactly {calls} "
        f"times, one call per response and never two at once: city {CITY!r}, day 1, then "
        f"day 2, and so on up to day {calls}. Wait for each result before the next call. "
        f"After the result for day {calls}, answer in one short paragraph that summarises "
        f"the {calls} days; do not answer in text before all {calls} calls are made."
    )


PROMPT: Final = "Plan my week in Lisbon: I need the weather, day by day."


def lookup(city: str, day: int) -> str:
    """The trivial local tool: an hourly forecast of about 1 KB (about 260 tokens)."""
    hours = "; ".join(
        f"{hour:02d}h {12 + (day * 7 + hour) % 14} C wind {(day * 3 + hour) % 30} km/h "
        f"rain {(day * hour) % 10}0% humidity {40 + (day + hour * 5) % 50}%"
        for hour in range(0, 24)
    )
    return f"{city}, day {day}, hourly: {hours}."


def lookup_call(arguments: str) -> str:
    """Run ``lookup`` on a call's JSON arguments; a live model's odd arguments still work."""
    try:
        decoded = json.loads(arguments)
    except ValueError:
        decoded = {}
    if not isinstance(decoded, dict):
        decoded = {}
    day = decoded.get("day")
    return lookup(str(decoded.get("city") or CITY), day if isinstance(day, int) else 0)


TOOL_PARAMETERS: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "day": {"type": "integer"}},
    "required": ["city", "day"],
    "additionalProperties": False,
}
TOOL_DESCRIPTION: Final = "The hourly weather forecast of a city on a day of the trip."


# The scripted model's name for a rollout of N calls (one script per count); "{calls}" in a
# plan's model is replaced by the call count.
SCRIPTED_MODEL: Final = "bench-calls-{calls}"


def scripted_model(calls: int) -> str:
    return SCRIPTED_MODEL.replace("{calls}", str(calls))


def script(calls: list[int]) -> dict[str, Any]:
    """The scripted model of every call count: ``calls`` one-call turns, then the answer."""
    models: dict[str, list[dict[str, Any]]] = {}
    for count in calls:
        turns: list[dict[str, Any]] = [
            {
                "function_calls": [
                    {
                        "name": "lookup",
                        "arguments": {"city": CITY, "day": day},
                        "deltas": ARGUMENT_DELTAS,
                    }
                ]
            }
            for day in range(1, count + 1)
        ]
        answer = [f"Day {1 + i % count} looks fine; " for i in range(TEXT_DELTAS)]
        turns.append({"deltas": answer})
        models[scripted_model(count)] = turns
    return {"models": models, "on_exhausted": "fail"}


# -- the client process ---------------------------------------------------------------------------


@attrs.frozen
class Plan:
    """What the client process runs (no secret: the key comes from ``OPENAI_API_KEY``)."""

    base_url: str
    calls: list[int]
    rounds: int
    warmup: int
    model: str  # "{calls}" is replaced by the call count
    reasoning_effort: str = ""
    allow_insecure: bool = False

    def model_for(self, calls: int) -> str:
        return self.model.replace("{calls}", str(calls))


def order(round_index: int, cell_index: int) -> tuple[str, ...]:
    """The variants' order in one cell of one round: rotated from round to round."""
    shift = (round_index + cell_index) % len(VARIANTS)
    return VARIANTS[shift:] + VARIANTS[:shift]


class RolloutError(RuntimeError):
    """A rollout did not end in a text answer, or ran over the transport it was given."""


async def run_rollout(
    connection: Connection, variant: str, calls: int, plan: Plan
) -> dict[str, Any]:
    """One measured conversation on ``connection``; its wall, client CPU and traffic."""
    from orchestrator.core.protocol.events import ReasoningConfig
    from orchestrator.lowlevel import (
        FunctionCallOutputItem,
        FunctionTool,
        MessageItem,
        ModelSettings,
        Session,
    )

    _transport, store = VARIANT_SETTINGS[variant]
    settings = ModelSettings(parallel_tool_calls=False)
    if plan.reasoning_effort:
        settings = ModelSettings(
            parallel_tool_calls=False, reasoning=ReasoningConfig(effort=plan.reasoning_effort)
        )
    session = Session(
        model=plan.model_for(calls),
        instructions=instructions(calls),
        tools=(FunctionTool("lookup", TOOL_PARAMETERS, TOOL_DESCRIPTION, strict=True),),
        store=store,
        settings=settings,
    )
    before = connection.statistics()
    gc.collect()  # one variant's garbage is never collected on another's clock
    wall, cpu = time.perf_counter(), time.process_time()
    items: list[Any] = [MessageItem.user(PROMPT)]
    made = turns = 0
    while True:
        response = await connection.run_turn(session, items)
        turns += 1
        function_calls = response.function_calls
        if not function_calls:
            break
        if turns > calls + EXTRA_TURNS:
            raise RolloutError(
                f"{variant}: no text answer after {turns} turns ({made} calls; asked {calls})"
            )
        made += len(function_calls)
        items = [
            FunctionCallOutputItem(call_id=call.call_id, output=lookup_call(call.arguments))
            for call in function_calls
        ]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = connection.statistics()
    transport = VARIANT_SETTINGS[variant][0]
    requests = after.http_requests - before.http_requests
    if after.transport != transport or (requests != turns if transport == "http" else requests):
        raise RolloutError(
            f"{variant}: ran over {after.transport} with {requests} HTTP requests for "
            f"{turns} turns; expected {transport}"
        )
    return {
        "variant": variant,
        "calls": calls,
        "calls_made": made,
        "turns": turns,
        "wall": wall,
        "cpu": cpu,
        "bytes_sent": after.bytes_sent - before.bytes_sent,
        "bytes_received": after.bytes_received - before.bytes_received,
        "http_requests": requests,
        "input_tokens": session.usage_input_tokens,
    }


async def drive(plan: Plan) -> list[dict[str, Any]]:
    """Every rollout of the plan: warm-ups, then the rounds, variants interleaved."""
    from orchestrator.lowlevel import ConnectionSettings, open_connection

    records: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        connections: dict[str, Connection] = {}
        for variant in VARIANTS:
            settings = ConnectionSettings(
                transport=VARIANT_SETTINGS[variant][0], allow_insecure=plan.allow_insecure
            )
            connections[variant] = await stack.enter_async_context(
                open_connection(plan.base_url, settings=settings, agent=f"bench-{variant}")
            )
        for _ in range(plan.warmup):
            for variant in VARIANTS:
                await run_rollout(connections[variant], variant, min(plan.calls), plan)
        # What exists now (modules, connections) lives to the end: frozen, it is never
        # scanned again, so the collection before each rollout stays short.
        gc.collect()
        gc.freeze()
        for round_index in range(plan.rounds):
            for cell_index, calls in enumerate(plan.calls):
                for variant in order(round_index, cell_index):
                    record = await run_rollout(connections[variant], variant, calls, plan)
                    records.append({**record, "round": round_index})
    return records


def client_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transports client")
    parser.add_argument("--plan", required=True, help="the Plan, as JSON")
    plan = Plan(**json.loads(parser.parse_args(argv).plan))
    print(json.dumps({"records": trio.run(drive, plan)}), flush=True)


# -- the server process ---------------------------------------------------------------------------


def serve_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transports serve")
    parser.add_argument("--script", required=True)
    parser.add_argument("--costs", required=True, help="LatencyModel fields, as JSON")
    args = parser.parse_args(argv)
    from orchestrator.core.server import LatencyModel, ServerConfig
    from orchestrator.core.tuning import gc_policy

    costs = json.loads(args.costs)
    known = set(attrs.fields_dict(LatencyModel))
    unknown = sorted(set(costs) - known)
    if unknown:
        raise SystemExit(
            f"error: the embedded server's LatencyModel has no {', '.join(unknown)} (it has "
            f"{', '.join(sorted(known))}): this tree's server lacks the HTTP costs"
        )
    config = ServerConfig(model="scripted", script=args.script, latency=LatencyModel(**costs))
    with gc_policy():  # as `orchestrator serve` runs
        trio.run(_serve, config)


async def _serve(config: Any) -> None:
    from orchestrator.core.server import LocalServer, serve_local_server

    server = LocalServer.from_config(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(partial(serve_local_server, config, server=server))
            print(f"serving {running.url}", flush=True)
            print(f"base_url {running.base_url}", flush=True)
            print(f"token {running.token}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


@contextlib.contextmanager
def scenario_server(
    scenario: Scenario, calls: list[int], *, cpu: int | None
) -> Iterator[dict[str, str]]:
    """The embedded server with ``scenario``'s latency model, in its own process on ``cpu``."""
    path = script_file(script(calls))
    command = [sys.executable, "-m", "bench.transports", "serve", "--script", path]
    command += ["--costs", json.dumps(scenario.costs)]
    # The server's stderr goes to a file: a pipe nobody reads could fill and stall it.
    with (
        tempfile.TemporaryFile("w+") as errors,
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            cwd=ROOT,
            preexec_fn=(lambda: pin(cpu)) if cpu is not None else None,
        ) as process,
    ):
        info: dict[str, str] = {}
        try:
            assert process.stdout is not None
            while "token" not in info:
                line = process.stdout.readline()
                if not line:
                    code = process.wait()
                    errors.seek(0)
                    message = errors.read().strip().splitlines()
                    raise RuntimeError(
                        f"the {scenario.name} server exited with {code}: "
                        f"{message[-1] if message else 'no message'}"
                    )
                key, _, value = line.strip().partition(" ")
                info[key] = value
            yield info
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            os.unlink(path)


def run_client(plan: Plan, key: str | None, *, cpu: int | None) -> list[dict[str, Any]]:
    """Run the client process pinned to ``cpu``; ``key`` (None: the inherited
    ``OPENAI_API_KEY``) reaches it through its environment, never its command line."""
    env = dict(os.environ)
    if key is not None:
        env["OPENAI_API_KEY"] = key
    command = [sys.executable, "-m", "bench.transports", "client"]
    command += ["--plan", json.dumps(attrs.asdict(plan))]
    process = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=3600,
        preexec_fn=(lambda: pin(cpu)) if cpu is not None else None,
        check=False,
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"the client exited {process.returncode}:\n{process.stderr[-3000:]}")
    records: list[dict[str, Any]] = json.loads(lines[-1])["records"]
    return records


# -- the coordinator ------------------------------------------------------------------------------


@attrs.define
class Run:
    """Everything measured, and how."""

    scenarios: list[Scenario]
    calls: list[int]
    rounds: int
    command: str
    live: str = ""  # "base_url, model" in live mode
    records: list[dict[str, Any]] = attrs.field(factory=list)
    started: str = ""
    took: float = 0.0
    load_before: str = ""
    load_after: str = ""
    pinned: str = ""


LIVE: Final = Scenario("live", "the endpoint's own costs", {}, {})


def measure(
    *,
    scenarios: list[Scenario],
    calls: list[int],
    rounds: int,
    warmup: int,
    command: str,
    live_base_url: str = "",
    live_model: str = "",
    reasoning_effort: str = "",
    progress: Callable[[str], object] = print,
) -> Run:
    """Run every scenario (or the live endpoint) and return the records."""
    server_cpu, client_cpu = cores()
    run = Run(
        scenarios=[LIVE] if live_base_url else scenarios,
        calls=calls,
        rounds=rounds,
        command=command,
        live=f"{live_base_url}, model {live_model}" if live_base_url else "",
        started=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        load_before=_load(),
        pinned=(
            "one CPU: unpinned"
            if client_cpu is None
            else f"client pinned to CPU {client_cpu}, no local server"
            if live_base_url
            else f"server pinned to CPU {server_cpu}, client to CPU {client_cpu}"
        ),
    )
    clock = time.perf_counter()
    if live_base_url:
        plan = Plan(live_base_url, calls, rounds, warmup, live_model, reasoning_effort)
        progress(f"live: {live_base_url}, model {live_model}, {rounds} rounds")
        run.records = [{**r, "scenario": "live"} for r in run_client(plan, None, cpu=client_cpu)]
    else:
        for scenario in scenarios:
            progress(f"{scenario.name} {scenario.title}: {scenario.describe(scenario.added)}")
            started = time.perf_counter()
            with scenario_server(scenario, calls, cpu=server_cpu) as server:
                plan = Plan(
                    server["base_url"], calls, rounds * scenario.repeat, warmup, SCRIPTED_MODEL
                )
                records = run_client(plan, server["token"], cpu=client_cpu)
            run.records += [{**r, "scenario": scenario.name} for r in records]
            progress(f"  {len(records)} rollouts in {time.perf_counter() - started:.0f} s")
    run.took = time.perf_counter() - clock
    run.load_after = _load()
    return run


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


# -- statistics -----------------------------------------------------------------------------------


@attrs.frozen
class Comparison:
    """WebSocket against one HTTP variant in one cell."""

    saving: float  # 1 - median(ws) / median(http), rollout wall
    paired: float  # 1 - median over rounds of ws / http
    p_value: float  # Mann-Whitney, ws walls against http walls
    per_turn_gap: float  # median http wall per turn - median ws wall per turn (seconds)


@attrs.frozen
class Cell:
    scenario: str
    calls: int
    records: dict[str, list[dict[str, Any]]]  # variant -> records in round order

    def walls(self, variant: str) -> list[float]:
        return [r["wall"] for r in self.records[variant]]

    def wall(self, variant: str) -> float:
        return median(self.walls(variant))

    def per_turn(self, variant: str, key: str = "wall") -> float:
        return median([r[key] / r["turns"] for r in self.records[variant]])

    def sent(self, variant: str) -> float:
        return median([float(r["bytes_sent"]) for r in self.records[variant]])

    def compare(self, http: str) -> Comparison:
        pairs = {r["round"]: r["wall"] for r in self.records[http]}
        ratios = [r["wall"] / pairs[r["round"]] for r in self.records["ws"] if r["round"] in pairs]
        return Comparison(
            saving=1 - self.wall("ws") / self.wall(http),
            paired=1 - median(ratios),
            p_value=mann_whitney(self.walls("ws"), self.walls(http)),
            per_turn_gap=self.per_turn(http) - self.per_turn("ws"),
        )

    def strays(self) -> int:
        """Rollouts whose model made another number of calls than asked (live only)."""
        return sum(
            r["calls_made"] != self.calls for records in self.records.values() for r in records
        )


def cells(run: Run) -> dict[tuple[str, int], Cell]:
    grouped: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    for record in run.records:
        key = (record["scenario"], record["calls"])
        grouped.setdefault(key, {v: [] for v in VARIANTS})[record["variant"]].append(record)
    return {key: Cell(key[0], key[1], records) for key, records in grouped.items()}


# -- the report -----------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _p(value: float) -> str:
    return "p < 0.001" if value < 0.001 else f"p = {value:.3f}"


def _kb(value: float) -> str:
    return f"{value / 1024:.1f} KB"


def render(run: Run) -> list[str]:
    """The report as Markdown lines: printed as is, and the section of RESULTS.md."""
    found = cells(run)
    answer = "the model's answer" if run.live else f"a text answer of {TEXT_DELTAS} deltas"
    lines = [
        "## 7. WebSocket mode against HTTP (issue 15)",
        "",
        f"Written by `{run.command}` on {run.started}, in {run.took / 60:.1f} minutes.",
        "",
        f"- {machine()}",
        f"- {run.pinned}; before: {run.load_before}; after: {run.load_after}",
        "- the machine is shared (other engineers run test suites on both cores): the "
        "variants are interleaved and paired, and figures are medians",
        "",
        "One rollout is one agent conversation driven by the runtime's `Connection` and "
        "`Session`: a user message and instructions, N turns that each end in one call of a "
        f"local tool whose output is about 1 KB ({len(lookup(CITY, 1))} characters, about "
        f"{len(lookup(CITY, 1)) // 4} tokens), so the history grows turn by turn, then "
        f"{answer}. `ws`: WebSocket, `store=false`, each turn "
        "continues by id on the socket and sends only the new items; `http_id`: HTTP, "
        "`store=true`, each turn is one POST continuing by `previous_response_id`; "
        "`http_full`: HTTP, `store=false`, each POST resends the whole transcript. Each "
        "variant keeps one connection for the whole run (HTTP keep-alive, one WebSocket); "
        f"every round runs each call count's three variants back to back in an order that "
        f"rotates; {_rounds(run)}. Saving = "
        "1 - WS/HTTP on the median rollout wall time; 'paired' is 1 - the median of the "
        "per-round ratios WS/HTTP; p is the Mann-Whitney test of the WS walls against the "
        "HTTP ones.",
        "",
    ]
    if run.live:
        lines += [f"Live endpoint: {run.live}; no latency model: the service's own costs.", ""]
    else:
        lines += [
            "The embedded server's latency model (`LatencyModel` in "
            "orchestrator/core/server/config.py), one server process per scenario, each "
            "scenario adding costs to the one before:",
            "",
            "| scenario | adds | every cost of the scenario |",
            "|---|---|---|",
            *[
                f"| {s.name} {s.title} | {s.describe(s.added) if s.added else '-'} | "
                f"{s.describe()} |"
                for s in run.scenarios
            ],
            "",
        ]
    lines += _summary(run, found)
    for scenario in run.scenarios:
        lines += _scenario_table(run, scenario, found)
    if not run.live and len(run.scenarios) > 1:
        lines += _attribution(run, found)
    lines += _cpu(run, found)
    return lines


def _rounds(run: Run) -> str:
    repeated = [s for s in run.scenarios if s.repeat > 1]
    text = f"{run.rounds} rounds, so {run.rounds} paired rollouts per cell"
    for scenario in repeated:
        text += (
            f" ({scenario.name}: {run.rounds * scenario.repeat}, as its turns take about a "
            "millisecond: its cells are the cheapest and, for their size, the noisiest)"
        )
    return text


def _summary(run: Run, found: dict[tuple[str, int], Cell]) -> list[str]:
    header = "| scenario | " + " | ".join(f"{n} calls" for n in run.calls) + " |"
    lines = [
        "Saving of WebSocket mode, 1 - WS/HTTP on the median rollout, against `http_id` / "
        "against `http_full`:",
        "",
        header,
        "|---|" + "---|" * len(run.calls),
    ]
    for scenario in run.scenarios:
        row = []
        for calls in run.calls:
            cell = found.get((scenario.name, calls))
            if cell is None:
                row.append("-")
                continue
            by_id, full = cell.compare("http_id"), cell.compare("http_full")
            row.append(f"{_pct(by_id.saving)} / {_pct(full.saving)}")
        lines.append(f"| {scenario.name} {scenario.title} | " + " | ".join(row) + " |")
    return [*lines, ""]


def _scenario_table(run: Run, scenario: Scenario, found: dict[tuple[str, int], Cell]) -> list[str]:
    lines = [
        f"### {scenario.name}: {scenario.title}",
        "",
        f"Costs: {scenario.describe()}." if scenario.costs else "Costs: the endpoint's own.",
        "",
        "| calls | ws | http_id | http_full | saving vs http_id (paired, p) | "
        "saving vs http_full (paired, p) | sent per rollout ws / http_id / http_full |",
        "|---|---|---|---|---|---|---|",
    ]
    for calls in run.calls:
        cell = found.get((scenario.name, calls))
        if cell is None:
            continue
        by_id, full = cell.compare("http_id"), cell.compare("http_full")
        lines.append(
            f"| {calls} | {_ms(cell.wall('ws'))} | {_ms(cell.wall('http_id'))} | "
            f"{_ms(cell.wall('http_full'))} | {_pct(by_id.saving)} "
            f"({_pct(by_id.paired)}, {_p(by_id.p_value)}) | {_pct(full.saving)} "
            f"({_pct(full.paired)}, {_p(full.p_value)}) | {_kb(cell.sent('ws'))} / "
            f"{_kb(cell.sent('http_id'))} / {_kb(cell.sent('http_full'))} |"
        )
        if run.live and cell.strays():
            lines.append(
                f"| | {cell.strays()} of {sum(map(len, cell.records.values()))} rollouts "
                f"made another number of calls than {calls} | | | | | |"
            )
    lines.append("")
    lines.append(
        "Rollout wall times are medians; each rollout is "
        + ("N + 1 turns." if not run.live else "as many turns as the model took.")
    )
    return [*lines, ""]


def _attribution(run: Run, found: dict[tuple[str, int], Cell]) -> list[str]:
    """Which cost makes the gap: HTTP minus WS per turn, scenario by scenario."""
    names = [s.name for s in run.scenarios]
    lines = [
        "### What produces the gain",
        "",
        "The gap per turn (median HTTP wall per turn minus median WS wall per turn) in "
        "each scenario, and what each added cost changed it by:",
        "",
        "| calls | vs | " + " | ".join(names) + " | saving " + " → ".join(names) + " |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    for calls in run.calls:
        for http in HTTP_VARIANTS:
            chain = [found.get((name, calls)) for name in names]
            if any(cell is None for cell in chain):
                continue
            comparisons = [cell.compare(http) for cell in chain if cell is not None]
            gaps = []
            for index, comparison in enumerate(comparisons):
                gap = f"{comparison.per_turn_gap * 1000:+.2f} ms"
                if index:
                    change = comparison.per_turn_gap - comparisons[index - 1].per_turn_gap
                    gap += f" ({change * 1000:+.2f})"
                gaps.append(gap)
            savings = " → ".join(_pct(c.saving) for c in comparisons)
            lines.append(f"| {calls} | {http} | " + " | ".join(gaps) + f" | {savings} |")
    lines.append("")
    for sentence in _verdict(run, found):
        lines += [sentence, ""]
    return lines


def _contributions(chain: list[Comparison]) -> list[float]:
    """The gap per turn of the first scenario, then what each next one added to it."""
    return [chain[0].per_turn_gap] + [
        now.per_turn_gap - before.per_turn_gap for before, now in itertools.pairwise(chain)
    ]


def _verdict(run: Run, found: dict[tuple[str, int], Cell]) -> list[str]:
    """The attribution in words, from the measured gaps (nothing here is written in advance)."""
    names = [s.name for s in run.scenarios]
    titles = {s.name: s.title.removeprefix("+ ") for s in run.scenarios}
    chains: dict[tuple[str, int], list[Comparison]] = {}
    for http in HTTP_VARIANTS:
        for count in run.calls:
            if all((name, count) in found for name in names):
                chains[(http, count)] = [found[(name, count)].compare(http) for name in names]
    calls = CPU_CALLS if CPU_CALLS in run.calls else max(run.calls)
    sentences = []
    for http in HTTP_VARIANTS:
        chain = chains.get((http, calls))
        if chain is None:
            continue
        steps = _contributions(chain)[1:]
        parts = [
            f"Against `{http}` at {calls} calls the transport alone ({names[0]}) is worth "
            f"{chain[0].per_turn_gap * 1000:+.2f} ms per turn (a {_pct(chain[0].saving)} saving)"
        ]
        parts += [
            f"adding {titles[name]} ({name}) {'widens' if step >= 0 else 'narrows'} the gap by "
            f"{abs(step) * 1000:.2f} ms per turn (saving {_pct(comparison.saving)})"
            for name, step, comparison in zip(names[1:], steps, chain[1:], strict=True)
        ]
        sentence = "; ".join(parts) + "."
        if steps:
            largest = names[1 + steps.index(max(steps))]
            sentence += f" Most of the gain comes from {titles[largest]} ({largest})."
        sentences.append(sentence)
    if len(names) > 1:
        largest_by_count = []
        for count in run.calls:
            shares = []
            for http in HTTP_VARIANTS:
                chain = chains.get((http, count))
                if chain is None:
                    break
                gaps = _contributions(chain)
                shares.append(names[gaps.index(max(gaps))])
            if len(shares) == len(HTTP_VARIANTS):
                largest_by_count.append(f"{count} calls: {' / '.join(shares)}")
        sentences.append(
            "The cost that adds most to the gap (the transport itself counted as "
            f"{names[0]}), against http_id / http_full: " + "; ".join(largest_by_count) + "."
        )
    inference = next((s.name for s in run.scenarios if "time_to_first_token" in s.added), None)
    if inference is not None and names.index(inference) > 0:
        index = names.index(inference)
        moves = [
            (chain[index].per_turn_gap - chain[index - 1].per_turn_gap) * 1000
            for chain in chains.values()
        ]
        before, after = (
            chains[("http_id", calls)][index - 1],
            chains[("http_id", calls)][index],
        )
        sentences.append(
            f"Inference ({inference}) costs both transports the same: it moved the gap by "
            f"{min(moves):+.2f} to {max(moves):+.2f} ms per turn across call counts and "
            f"variants, while the saving against http_id at {calls} calls went from "
            f"{_pct(before.saving)} to {_pct(after.saving)}: the same gap over longer turns. "
            "What WebSocket mode saves is the work HTTP repeats per request (its fixed cost, "
            "the tokens it resends or rehydrates, the cache misses on them), not model time."
        )
    return sentences


def _cpu(run: Run, found: dict[tuple[str, int], Cell]) -> list[str]:
    scenario = run.scenarios[0]
    lines = [
        f"### Client CPU per turn ({scenario.name})",
        "",
        "Process CPU time (`time.process_time()`) of the client process over each rollout, "
        "divided by its turns; medians over the same interleaved rollouts as above. The "
        f"figure the note quotes is the {CPU_CALLS}-call row.",
        "",
        "| calls | ws | http_id | http_full | http_id ÷ ws | http_full ÷ ws |",
        "|---|---|---|---|---|---|",
    ]
    for calls in run.calls:
        cell = found.get((scenario.name, calls))
        if cell is None:
            continue
        cpu = {v: cell.per_turn(v, "cpu") for v in VARIANTS}
        lines.append(
            f"| {calls} | {cpu['ws'] * 1e6:.0f} us | {cpu['http_id'] * 1e6:.0f} us | "
            f"{cpu['http_full'] * 1e6:.0f} us | {cpu['http_id'] / cpu['ws']:.2f}x | "
            f"{cpu['http_full'] / cpu['ws']:.2f}x |"
        )
    return [*lines, ""]


def write_section(lines: list[str], path: Path = RESULTS) -> None:
    """Put the section in ``path`` in place of the previous one (else before the commands)."""
    section = "\n".join([BEGIN, *lines, END])
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _match: section, text, count=1)
    elif "\n## Commands\n" in text:
        head, _, tail = text.partition("\n## Commands\n")
        text = f"{head}\n{section}\n\n## Commands\n{tail}"
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


# -- the command line -----------------------------------------------------------------------------


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected call counts like 5,10,20,40, got {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"call counts must be >= 1, got {text!r}")
    return sorted(set(counts))


def _scenario_names(text: str) -> list[str]:
    names = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or text!r}: choose from {', '.join(SCENARIOS)}"
        )
    return [name for name in SCENARIOS if name in names]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.transports",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds")
    parser.add_argument("--rounds", type=int, help=f"paired rollouts per cell ({DEFAULT_ROUNDS})")
    parser.add_argument(
        "--calls", type=_counts, default=list(DEFAULT_CALLS), help="call counts (5,10,20,40)"
    )
    parser.add_argument(
        "--scenarios",
        type=_scenario_names,
        help=f"local scenarios to run ({','.join(SCENARIOS)}: all)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rollouts per variant")
    parser.add_argument(
        "--write", action="store_true", help="put the report in bench/RESULTS.md (its section)"
    )
    live = parser.add_argument_group("live mode (a real endpoint; key from OPENAI_API_KEY)")
    live.add_argument("--live", action="store_true", help="run against --base-url")
    live.add_argument("--base-url", default="https://api.openai.com/v1")
    live.add_argument("--model", default="gpt-5-mini")
    live.add_argument(
        "--reasoning-effort",
        default="minimal",
        help="live only: reasoning.effort sent with every turn ('' sends none)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve_main(argv[1:])
        return
    if argv[:1] == ["client"]:
        client_main(argv[1:])
        return
    arguments = parser()
    args = arguments.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else QUICK_ROUNDS if args.quick else None
    rounds = rounds if rounds is not None else DEFAULT_ROUNDS
    if rounds < 1:
        arguments.error(f"--rounds must be >= 1, got {rounds}")
    command = " ".join(["python -m bench.transports", *argv])
    if args.live:
        if args.scenarios is not None:
            arguments.error("--scenarios are the latency model's: live mode has none")
        if not os.environ.get("OPENAI_API_KEY", "").strip():
            arguments.error(
                "--live needs an API key in OPENAI_API_KEY (it is read from the environment, "
                f"never from the command line) for {args.base_url}"
            )
    print(f"WebSocket mode against HTTP; {machine()}", flush=True)
    run = measure(
        scenarios=[SCENARIOS[name] for name in args.scenarios or SCENARIOS],
        calls=args.calls,
        rounds=rounds,
        warmup=args.warmup,
        command=command,
        live_base_url=args.base_url if args.live else "",
        live_model=args.model if args.live else "",
        reasoning_effort=args.reasoning_effort if args.live else "",
    )
    lines = render(run)
    print("\n" + "\n".join(lines), flush=True)
    if args.write:
        write_section(lines)
        print(f"wrote its section of {RESULTS.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    main()
