"""What ``orchestrator run`` shows: a live table of agents while it runs, a report at the end.

The view is fed by the run's event bus (a synchronous listener) and redrawn a few times a
second by a task of the CLI's nursery. Text that came from a model is stripped of control
characters before it reaches the terminal (a model must not be able to move the cursor).
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Final

import attrs
import trio
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from orchestrator.observe import (
    AgentState,
    ConnectionOpened,
    ConnectionReconnecting,
    ConnectionRotated,
    RuntimeEvent,
    TurnFinished,
    TurnStarted,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from orchestrator.run import RunResult

__all__ = ["LiveView", "clean", "render_report"]

_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]|\x1b\[[0-9;?]*[ -/]*[@-~]")

_STATE_STYLE: Final = {
    "thinking": "bold yellow",
    "calling_tool": "bold cyan",
    "waiting": "magenta",
    "reconnecting": "bold red",
    "idle": "dim",
}


def clean(text: str) -> str:
    """``text`` without terminal control sequences (newlines and tabs kept)."""
    return _CONTROL.sub("", text)


@attrs.define
class _Row:
    name: str
    role: str = "worker"
    state: str = "starting"
    detail: str = ""
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    socket_opened: float | None = None
    reconnects: int = 0
    rotations: int = 0


@attrs.define(eq=False)
class LiveView:
    """A live table of the agents of one run. Call it with every runtime event."""

    title: str
    rows: dict[str, _Row] = attrs.field(factory=dict)
    _live: Live | None = attrs.field(default=None, init=False, repr=False)
    _pauses: int = attrs.field(default=0, init=False, repr=False)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Take the table off the terminal while the block asks the user something."""
        self._pauses += 1
        if self._pauses == 1 and self._live is not None:
            self._live.stop()
        try:
            yield
        finally:
            self._pauses -= 1
            if self._pauses == 0 and self._live is not None:
                self._live.start(refresh=True)

    def _row(self, name: str) -> _Row:
        row = self.rows.get(name)
        if row is None:
            row = self.rows[name] = _Row(name)
        return row

    def __call__(self, event: RuntimeEvent) -> None:
        if isinstance(event, AgentState):
            row = self._row(event.agent)
            row.role = event.role
            row.state = event.state
            row.detail = clean(event.detail)[:40]
        elif isinstance(event, TurnStarted):
            self._row(event.agent).state = "thinking"
        elif isinstance(event, TurnFinished):
            row = self._row(event.agent)
            row.turns += 1
            row.input_tokens += event.input_tokens
            row.output_tokens += event.output_tokens
        elif isinstance(event, ConnectionOpened):
            self._row(event.agent).socket_opened = event.time
        elif isinstance(event, ConnectionReconnecting):
            row = self._row(event.agent)
            row.state = "reconnecting"
            row.detail = f"attempt {event.attempt}, {clean(event.reason)[:30]}"
            row.reconnects += 1
        elif isinstance(event, ConnectionRotated):
            self._row(event.agent).rotations += 1

    def render(self, now: float) -> Table:
        table = Table(title=self.title, title_justify="left", expand=False)
        for column in (
            "agent",
            "role",
            "state",
            "turns",
            "tokens in/out",
            "socket age",
            "reconnects",
        ):
            table.add_column(
                column, justify="right" if column in ("turns", "reconnects") else "left"
            )
        for row in self.rows.values():
            state = Text(row.state.replace("_", " "), style=_STATE_STYLE.get(row.state, ""))
            if row.detail:
                state.append(f" {row.detail}", style="dim")
            age = "-" if row.socket_opened is None else f"{now - row.socket_opened:,.0f} s"
            table.add_row(
                row.name,
                row.role,
                state,
                str(row.turns),
                f"{row.input_tokens:,}/{row.output_tokens:,}",
                age,
                str(row.reconnects),
            )
        return table

    async def refresh(self, console: Console, *, interval: float = 0.25) -> None:
        """Redraw until cancelled; the last frame stays on screen."""
        with Live(self.render(trio.current_time()), console=console, auto_refresh=False) as live:
            self._live = live
            try:
                while True:
                    await trio.sleep(interval)
                    if not self._pauses:
                        live.update(self.render(trio.current_time()), refresh=True)
            finally:
                self._live = None
                if not self._pauses:
                    live.update(self.render(trio.current_time()), refresh=True)


def render_report(result: RunResult) -> Group:
    """The final report: status, answer, and a line per agent."""
    status_style = {"completed": "bold green", "interrupted": "bold yellow"}.get(
        result.status, "bold red"
    )
    header = Text()
    header.append(f"{result.status}", style=status_style)
    header.append(f"  plan {result.plan!r}, {result.mode} mode, {result.endpoint}, ")
    header.append(f"{result.duration:.1f} s, {result.usage.turns} turns, ")
    header.append(f"{result.usage.total_tokens:,} tokens")
    parts: list[object] = [header]
    if result.reason:
        parts.append(Text(f"reason: {clean(result.reason)}", style="yellow"))
    if result.answer is not None:
        parts.append(Panel(Text(clean(result.answer)), title="answer", title_align="left"))
    table = Table(show_edge=False, pad_edge=False, box=None)
    for column in ("agent", "role", "turns", "tools", "tokens", "sockets", "recovered", "restarts"):
        table.add_column(column, justify="left" if column in ("agent", "role") else "right")
    for agent in result.agents:
        connection = agent.connection
        recovered = (connection.reconnects + connection.replays) if connection else 0
        table.add_row(
            agent.name,
            agent.role,
            str(agent.turns),
            str(agent.tool_calls),
            f"{agent.input_tokens + agent.output_tokens:,}",
            str(connection.sockets_opened if connection else 0),
            str(recovered),
            str(agent.restarts),
        )
    parts.append(table)
    if result.steps:
        counts: dict[str, int] = {}
        for step in result.steps:
            counts[step.status] = counts.get(step.status, 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        parts.append(Text(f"{len(result.steps)} steps: {summary}"))
        for step in result.steps:
            if step.status != "completed":
                parts.append(Text(f"  {step.id} ({step.agent}): {step.status} {step.error or ''}"))
    return Group(*parts)  # type: ignore[arg-type]
