"""What ``orchestrator run`` shows: a live view while it runs, one report at the end.

The view is fed by the run's event bus (a synchronous listener) and redrawn a few times a
second by a task of the CLI's nursery. It is transient: when the run ends it leaves the
screen to the final report, so the agents' table is printed once. Everything it shows is
derived from runtime events (``run.started`` gives the agents, the step count and the
budgets; turns, tools, delegations, steps and connections keep it current).

Text that came from a model is stripped of control characters before it reaches the terminal
(a model must not be able to move the cursor).
"""

from __future__ import annotations

import contextlib
import re
import statistics
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from orchestrator.core.observe import (
    ActorFailed,
    ActorRestarted,
    ActorStarted,
    AgentState,
    ConnectionOpened,
    ConnectionReconnecting,
    ConnectionRotated,
    DelegationFinished,
    DelegationStarted,
    RunFinished,
    RunStarted,
    RuntimeEvent,
    StepFinished,
    StepStarted,
    TaskStarted,
    ToolFinished,
    ToolStarted,
    TurnFinished,
    TurnStarted,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from rich.console import RenderableType

    from orchestrator.runner import RunResult

__all__ = ["LiveView", "clean", "format_duration", "render_report"]

_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]|\x1b\[[0-9;?]*[ -/]*[@-~]")

_STATE_STYLE: Final = {
    "thinking": "bold yellow",
    "calling_tool": "bold cyan",
    "waiting": "magenta",
    "approval": "bold magenta",
    "reconnecting": "bold red",
    "restarting": "bold red",
    "idle": "dim",
    "starting": "dim",
}
# Shown words for states whose event name is not what a person reads.
_STATE_WORDS: Final = {"calling_tool": "calling", "approval": "asking you"}
_TASK_WIDTH: Final = 36
_STATE_WIDTH: Final = 44
_MIN_FLEXIBLE: Final = 12
_DETAIL_WIDTH: Final = 60
_LISTED_STEPS: Final = 10  # unfinished steps listed one by one in the report; then a count
_STEP_WORDS: Final = {
    "completed": "completed",
    "failed": "failed",
    "skipped": "skipped (a dependency failed)",
    "cut": "cut short",
    "not_started": "never started",
}


def clean(text: str) -> str:
    """``text`` without terminal control sequences (newlines and tabs kept)."""
    return _CONTROL.sub("", text)


def _one_line(text: str, width: int) -> str:
    """``text`` cleaned, on one line, cut to ``width`` characters with an ellipsis."""
    text = " ".join(clean(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_duration(seconds: float) -> str:
    """A duration a person reads at a glance: ``38 ms``, ``4.07 s``, ``12.3 s``, ``2 min 05 s``,
    ``1 h 02 min``. Never ``0.0 s`` for a run that took time."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(int(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min"


def _clock(seconds: float) -> str:
    """Elapsed time on a live view: ``0.4 s``, ``12 s``, ``2:05``, ``1:02:07``."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}:{rest:02d}"
    return f"{minutes // 60}:{minutes % 60:02d}:{rest:02d}"


def _used(used: float, limit: float | None, text: str, limit_text: str) -> Text:
    """``used/limit``, yellow from 80 % of the limit and red at it."""
    if limit is None:
        return Text(text)
    share = used / limit if limit else 1.0
    style = "bold red" if share >= 1 else "yellow" if share >= 0.8 else ""
    return Text(f"{text}/{limit_text}", style=style)


@attrs.define
class _Row:
    name: str
    role: str = "worker"
    max_turns: int | None = None
    state: str = "starting"
    detail: str = ""
    task: str = ""
    step: str | None = None
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    socket_opened: float | None = None
    reconnects: int = 0
    rotations: int = 0
    restarts: int = 0
    # What the agent waits for, kept current as it comes back: call id -> name.
    tools: dict[str, str] = attrs.field(factory=dict)
    delegations: dict[str, str] = attrs.field(factory=dict)
    delegated: int = 0
    asking: str | None = None


@attrs.define(eq=False)
class LiveView:
    """The live view of one run. Call it with every runtime event; render it at any time.

    Args:
        title: how the run reaches its model (``embedded server``, ``live: URL``...).
    """

    title: str
    rows: dict[str, _Row] = attrs.field(factory=dict)
    plan: str = ""
    mode: str = ""
    started: float | None = None
    finished: float | None = None
    steps_total: int = 0
    steps_queued: set[str] = attrs.field(factory=set)  # sent, not yet taken up by the agent
    steps_running: set[str] = attrs.field(factory=set)
    steps_done: dict[str, int] = attrs.field(factory=dict)  # status -> count
    delegations_running: int = 0
    delegations_done: int = 0
    turns: int = 0
    tokens: int = 0
    max_turns: int | None = None
    max_tokens: int | None = None
    wall_clock: float | None = None
    _live: Live | None = attrs.field(default=None, init=False, repr=False)
    _console: Console | None = attrs.field(default=None, init=False, repr=False)
    _pauses: int = attrs.field(default=0, init=False, repr=False)

    # -- events ---------------------------------------------------------------------------------

    def _row(self, name: str) -> _Row:
        row = self.rows.get(name)
        if row is None:
            row = self.rows[name] = _Row(name)
        return row

    def __call__(self, event: RuntimeEvent) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _run_started(self, event: RunStarted) -> None:
        self.plan, self.mode, self.started = event.plan, event.mode, event.time
        self.steps_total = event.steps
        self.max_turns, self.max_tokens = event.max_turns, event.max_tokens
        self.wall_clock = event.wall_clock
        for agent in event.agents:
            row = self._row(agent.name)
            row.role, row.max_turns = agent.role, agent.max_turns

    def _run_finished(self, event: RunFinished) -> None:
        self.finished = event.time

    def _agent_state(self, event: AgentState) -> None:
        row = self._row(event.agent)
        row.role = event.role
        row.state = event.state
        row.detail = _one_line(event.detail, _DETAIL_WIDTH)
        if event.state == "idle":
            row.tools.clear()
            row.delegations.clear()
            row.delegated = 0
            row.task, row.step = "", None

    def _turn_started(self, event: TurnStarted) -> None:
        row = self._row(event.agent)
        row.state, row.detail = "thinking", ""

    def _turn_finished(self, event: TurnFinished) -> None:
        row = self._row(event.agent)
        row.turns += 1
        row.input_tokens += event.input_tokens
        row.output_tokens += event.output_tokens
        self.turns += 1
        self.tokens += event.input_tokens + event.output_tokens

    def _tool_started(self, event: ToolStarted) -> None:
        row = self._row(event.agent)
        row.tools[event.call_id] = event.tool
        row.state = "calling_tool"

    def _tool_finished(self, event: ToolFinished) -> None:
        self._row(event.agent).tools.pop(event.call_id, None)

    def _delegation_started(self, event: DelegationStarted) -> None:
        planner = self._row(event.agent)
        planner.delegations[event.call_id] = event.worker
        planner.delegated += 1
        planner.state = "waiting"
        self.delegations_running += 1

    def _delegation_finished(self, event: DelegationFinished) -> None:
        self._row(event.agent).delegations.pop(event.call_id, None)
        self.delegations_running = max(0, self.delegations_running - 1)
        self.delegations_done += 1

    def _task_started(self, event: TaskStarted) -> None:
        row = self._row(event.agent)
        row.step = event.step
        if event.step is not None:
            row.task = f"step {event.step}"
            self.steps_queued.discard(event.step)
            self.steps_running.add(event.step)
        else:
            row.task = f"{event.sender}: {event.task}"

    def _step_started(self, event: StepStarted) -> None:
        self.steps_queued.add(event.step)

    def _step_finished(self, event: StepFinished) -> None:
        self.steps_queued.discard(event.step)
        self.steps_running.discard(event.step)
        self.steps_done[event.status] = self.steps_done.get(event.status, 0) + 1

    def _connection_opened(self, event: ConnectionOpened) -> None:
        row = self._row(event.agent)
        row.socket_opened = event.time
        if row.state == "reconnecting":
            row.state, row.detail = "thinking", ""

    def _reconnecting(self, event: ConnectionReconnecting) -> None:
        row = self._row(event.agent)
        row.state = "reconnecting"
        row.detail = f"attempt {event.attempt}: {_one_line(event.reason, 30)}"
        row.socket_opened = None
        row.reconnects += 1

    def _rotated(self, event: ConnectionRotated) -> None:
        self._row(event.agent).rotations += 1

    def _actor_failed(self, event: ActorFailed) -> None:
        row = self.rows.get(event.actor)
        if row is not None:
            row.state, row.detail = "restarting", _one_line(event.error, _DETAIL_WIDTH)

    def _actor_restarted(self, event: ActorRestarted) -> None:
        row = self.rows.get(event.actor)
        if row is not None:
            row.restarts += 1

    def _actor_started(self, event: ActorStarted) -> None:
        row = self.rows.get(event.actor)
        if row is not None and row.state == "restarting":
            row.state, row.detail = "idle", f"restarted ({row.restarts})"

    # -- approvals ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def asking(self, agent: str, tool: str) -> Iterator[None]:
        """Show ``agent`` as waiting for the person's answer about ``tool`` meanwhile."""
        row = self._row(agent)
        row.asking = tool
        try:
            yield
        finally:
            row.asking = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Step aside while the block asks the user something: the live view leaves the
        screen and a still copy of it stays above the question, so the question is asked
        with the run's state in sight. The live view comes back below the answer."""
        self._pauses += 1
        live, console = self._live, self._console
        if self._pauses == 1 and live is not None and console is not None:
            live.stop()
            self._live = None
            console.print(self.render(trio.current_time(), console.width))
        try:
            yield
        finally:
            self._pauses -= 1
            if self._pauses == 0 and self._console is not None and self._live is None:
                self._start(self._console)

    # -- rendering ------------------------------------------------------------------------------

    def _state(self, row: _Row, width: int) -> Text:
        """What the agent does and what it waits for, in at most ``width`` characters."""
        state, detail = row.state, row.detail
        if row.asking is not None:
            state, detail = "approval", f"whether {row.asking} may run"
        elif state in ("reconnecting", "restarting"):
            pass  # an alarm: shown over what the agent was doing
        elif row.delegations:
            waiting = list(dict.fromkeys(row.delegations.values()))
            state = "waiting"
            detail = f"on {len(row.delegations)} of {row.delegated}: " + ", ".join(waiting)
        elif row.tools:
            state, detail = "calling_tool", ", ".join(dict.fromkeys(row.tools.values()))
        elif state == "calling_tool":
            state, detail = "thinking", ""  # its tools are done: the next turn is coming
        word = _STATE_WORDS.get(state, state.replace("_", " "))
        text = Text(_one_line(word, width), style=_STATE_STYLE.get(state, ""))
        room = width - len(text) - 1
        if detail and room > 1:
            text.append(" " + _one_line(detail, room), style="dim")
        return text

    def _summary(self, now: float) -> Text:
        elapsed = (self.finished if self.finished is not None else now) - (
            self.started if self.started is not None else now
        )
        line = Text()
        line.append(self.plan or "run", style="bold")
        if self.mode:
            line.append(f" · {self.mode} mode")
        line.append(f" · {self.title} · ")
        line.append_text(
            _used(
                elapsed,
                self.wall_clock,
                f"elapsed {_clock(elapsed)}",
                _clock(self.wall_clock) if self.wall_clock is not None else "",
            )
        )
        line.append("\n")
        if self.steps_total:
            done = self.steps_done.get("completed", 0)
            line.append(f"steps {done}/{self.steps_total} done", style="bold")
            line.append(f", {len(self.steps_running)} running")
            if self.steps_queued:
                line.append(f", {len(self.steps_queued)} waiting for their agent")
            for status in ("failed", "skipped", "cut"):
                if self.steps_done.get(status):
                    line.append(f", {self.steps_done[status]} {_STEP_WORDS[status]}", style="red")
        else:
            line.append(f"delegations {self.delegations_running} out", style="bold")
            line.append(f", {self.delegations_done} back")
        line.append(" · turns ")
        line.append_text(
            _used(self.turns, self.max_turns, f"{self.turns:,}", f"{self.max_turns or 0:,}")
        )
        line.append(" · tokens ")
        line.append_text(
            _used(self.tokens, self.max_tokens, f"{self.tokens:,}", f"{self.max_tokens or 0:,}")
        )
        return line

    def render(self, now: float, width: int = 120) -> RenderableType:
        """The view at time ``now`` (trio's clock) for a terminal ``width`` columns wide: two
        summary lines and one line per agent (on a narrow terminal, the state and the task
        are cut short, never the figures)."""
        rows: list[tuple[_Row, str, str, str]] = []
        for row in self.rows.values():
            age = "-" if row.socket_opened is None else _clock(now - row.socket_opened)
            if row.reconnects:
                age += f", {row.reconnects} reconnect" + ("s" if row.reconnects > 1 else "")
            turns = f"{row.turns}" + (f"/{row.max_turns}" if row.max_turns is not None else "")
            rows.append((row, turns, f"{row.input_tokens:,}/{row.output_tokens:,}", age))
        headers = ("agent", "turns", "tokens in/out", "connection")
        fixed = [
            max([len(headers[0]), *(len(row.name) for row in self.rows.values())]),
            *(max([len(headers[i]), *(len(str(r[i])) for r in rows)]) for i in (1, 2, 3)),
        ]
        # Six columns, two spaces between them; what is left goes to the state and the task.
        flexible = max(width - sum(fixed) - 2 * 5, 2 * _MIN_FLEXIBLE)
        state_width = min(_STATE_WIDTH, max(_MIN_FLEXIBLE, flexible * 3 // 5))
        task_width = min(_TASK_WIDTH, max(_MIN_FLEXIBLE, flexible - state_width))
        table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 2, 0, 0))
        table.add_column("agent", no_wrap=True)
        table.add_column("state", no_wrap=True, min_width=state_width)
        table.add_column("working on", no_wrap=True)
        for header in headers[1:]:
            table.add_column(header, justify="right", no_wrap=True)
        for row, turns, tokens, age in rows:
            name = Text(row.name, style="bold" if row.role == "planner" else "")
            task = _one_line(row.task, task_width)
            table.add_row(name, self._state(row, state_width), task, turns, tokens, age)
        return Group(self._summary(now), table)

    def _start(self, console: Console) -> None:
        # A new Live each time: a restarted one would first move up over the lines printed
        # meanwhile (the question and its answer) and draw over them.
        self._live = Live(
            self.render(trio.current_time(), console.width),
            console=console,
            auto_refresh=False,
            transient=True,
        )
        self._live.start(refresh=True)

    async def refresh(self, console: Console, *, interval: float = 0.25) -> None:
        """Redraw until cancelled; the view then leaves the screen to the report."""
        self._console = console
        self._start(console)
        try:
            while True:
                await trio.sleep(interval)
                if self._live is not None:
                    view = self.render(trio.current_time(), console.width)
                    self._live.update(view, refresh=True)
        finally:
            if self._live is not None:
                self._live.stop()
            self._live = self._console = None


_HANDLERS: Final[dict[type[RuntimeEvent], Callable[[LiveView, Any], None]]] = {
    RunStarted: LiveView._run_started,
    RunFinished: LiveView._run_finished,
    AgentState: LiveView._agent_state,
    TurnStarted: LiveView._turn_started,
    TurnFinished: LiveView._turn_finished,
    ToolStarted: LiveView._tool_started,
    ToolFinished: LiveView._tool_finished,
    DelegationStarted: LiveView._delegation_started,
    DelegationFinished: LiveView._delegation_finished,
    StepStarted: LiveView._step_started,
    TaskStarted: LiveView._task_started,
    StepFinished: LiveView._step_finished,
    ConnectionOpened: LiveView._connection_opened,
    ConnectionReconnecting: LiveView._reconnecting,
    ConnectionRotated: LiveView._rotated,
    ActorFailed: LiveView._actor_failed,
    ActorRestarted: LiveView._actor_restarted,
    ActorStarted: LiveView._actor_started,
}


# -- the report ----------------------------------------------------------------------------------


def render_report(result: RunResult) -> Group:
    """The final report: status and figures, why it ended early, the answer, a line per
    agent (``busy``: time on its tasks; ``model``: the part of it in model turns; ``sockets``
    opened, and how many losses were recovered, or ``http`` and its requests for an agent
    whose turns went over HTTP), and in steps mode how every step ended."""
    status_style = {"completed": "bold green", "interrupted": "bold yellow"}.get(
        result.status, "bold red"
    )
    header = Text()
    header.append(f"{result.status}", style=status_style)
    header.append(f"  plan {result.plan!r}, {result.mode} mode, {result.endpoint}, ")
    header.append(f"{format_duration(result.duration)}, {result.usage.turns:,} turns, ")
    header.append(f"{result.usage.total_tokens:,} tokens")
    parts: list[RenderableType] = [header]
    if result.reason:
        if result.status == "failed" and result.code:
            parts.append(Text(f"error[{result.code}]: {clean(result.reason)}", style="bold red"))
        else:
            parts.append(Text(f"reason: {clean(result.reason)}", style="yellow"))
    if result.answer is not None:
        parts.append(Panel(Text(clean(result.answer)), title="answer", title_align="left"))
    table = Table(show_edge=False, pad_edge=False, box=None)
    for column in ("agent", "role", "turns", "tools", "tokens", "busy", "model", "sockets"):
        table.add_column(column, justify="left" if column in ("agent", "role") else "right")
    table.add_column("restarts", justify="right")
    for agent in result.agents:
        connection = agent.connection
        sockets = str(connection.sockets_opened) if connection else "0"
        if connection is not None and connection.transport == "http":
            sockets = f"http, {connection.http_requests} requests"
        recovered = (connection.reconnects + connection.replays) if connection else 0
        if recovered:
            sockets += f", {recovered} recovered"
        table.add_row(
            agent.name,
            agent.role,
            str(agent.turns),
            str(agent.tool_calls),
            f"{agent.input_tokens + agent.output_tokens:,}",
            format_duration(agent.busy) if agent.tasks or agent.busy else "-",
            format_duration(agent.model_time) if agent.turns else "-",
            sockets,
            str(agent.restarts),
        )
    parts.append(table)
    if result.steps:
        parts.extend(_steps_report(result))
    return Group(*parts)


def _steps_report(result: RunResult) -> list[RenderableType]:
    counts: dict[str, int] = {}
    for step in result.steps:
        counts[step.status] = counts.get(step.status, 0) + 1
    summary = ", ".join(
        f"{counts.get(status, 0)} {word}"
        for status, word in _STEP_WORDS.items()
        if status == "completed" or counts.get(status)
    )
    line = Text(f"{len(result.steps)} steps: {summary}")
    completed = [step for step in result.steps if step.status == "completed"]
    if completed:
        longest = max(completed, key=lambda step: step.duration)
        median = statistics.median(step.duration for step in completed)
        line.append(
            f"; a step took {format_duration(median)} (median), the longest "
            f"{format_duration(longest.duration)} ({longest.id})",
            style="dim",
        )
    parts: list[RenderableType] = [line]
    unfinished = [s for s in result.steps if s.status in ("failed", "cut", "skipped")]
    for step in unfinished[:_LISTED_STEPS]:
        text = f"  {step.id} ({step.agent}): {_STEP_WORDS[step.status]}"
        if step.status != "skipped":
            text += f" after {format_duration(step.duration)}"
        if step.error and step.status != "skipped":
            text += f": {clean(step.error)}"
        parts.append(Text(text))
    if len(unfinished) > _LISTED_STEPS:
        parts.append(Text(f"  … and {len(unfinished) - _LISTED_STEPS} more"))
    return parts
