"""The JSONL trace writer (``orchestrator run --trace``; docs/trace.md): one line per event,
wall-clock time beside trio's, secrets redacted, long texts capped by the events."""

from __future__ import annotations

import datetime
import io
import json
import re

from orchestrator.core.observe import TEXT_LIMIT, ActorFailed, ToolFinished, TurnStarted, capped
from orchestrator.trace import TraceWriter, wall_time

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def parse(at: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(at.replace("Z", "+00:00"))


async def test_each_event_is_one_line_with_its_type_first_and_wall_clock_time():
    """Every event is one JSON line: ``type`` first, then ``at`` (ISO 8601, UTC, ms), then the
    event's fields; ``at`` moves exactly as the event's ``time`` does."""
    file = io.BytesIO()
    writer = TraceWriter(file)
    writer(TurnStarted(time=10.0, agent="a", turn=1, connection=1, new_items=1))
    writer(TurnStarted(time=12.5, agent="a", turn=2, connection=1, new_items=2))

    lines = file.getvalue().decode().splitlines()
    assert 2 == len(lines)
    assert all(line.startswith('{"type":"turn.started","at":"') for line in lines)
    first, second = (json.loads(line) for line in lines)
    assert ["type", "at", "time", "agent", "turn", "connection", "new_items"] == list(first)
    assert ISO.fullmatch(first["at"])
    assert 2.5 == (parse(second["at"]) - parse(first["at"])).total_seconds()
    assert (10.0, 2) == (first["time"], second["turn"])


def test_wall_time_is_iso_8601_utc_with_milliseconds():
    """0 s after the epoch is 1970-01-01T00:00:00.000Z; milliseconds are kept."""
    assert "1970-01-01T00:00:00.000Z" == wall_time(0)
    assert "2026-05-14T08:30:00.125Z" == wall_time(1778747400.125)


async def test_secrets_in_events_never_reach_the_trace(canary_key):
    """An error text or a tool output holding a key is written redacted."""
    file = io.BytesIO()
    writer = TraceWriter(file)
    writer(ActorFailed(time=1.0, actor="a", error=f"RuntimeError('bad key {canary_key}')"))
    writer(
        ToolFinished(
            time=2.0, agent="a", tool="t", call_id="c", ok=True, duration=0.1,
            output=f'{{"authorization": "Bearer {canary_key}"}}',
        )
    )  # fmt: skip

    text = file.getvalue().decode()
    assert canary_key not in text
    assert canary_key[3:] not in text
    assert 2 == text.count("[REDACTED]")


def test_long_texts_are_capped_with_a_marker():
    """A text over ``TEXT_LIMIT`` characters keeps its start and says how long it was."""
    assert "short" == capped("short")
    long = "x" * (TEXT_LIMIT + 10)
    cut = capped(long)
    assert cut.startswith("x" * TEXT_LIMIT)
    assert cut.endswith(f"…[cut: {TEXT_LIMIT + 10:,} characters]")


def test_docs_trace_md_documents_every_event_and_field():
    """docs/trace.md has a section per event type with a row per field, and nothing else:
    the format's documentation cannot fall behind the events."""
    from pathlib import Path

    import msgspec

    import orchestrator.core.observe as observe

    text = (Path(__file__).resolve().parents[1] / "docs" / "trace.md").read_text()
    sections = dict(re.findall(r"^### `([a-z_.]+)`\n(.*?)(?=^##|\Z)", text, re.DOTALL | re.M))
    events = {
        kind.__struct_config__.tag: kind
        for name in observe.__all__
        if isinstance(kind := getattr(observe, name), type)
        and issubclass(kind, observe.RuntimeEvent)
        and kind is not observe.RuntimeEvent
    }
    assert sorted(events) == sorted(sections)
    for tag, kind in events.items():
        documented = re.findall(r"^\| `([a-z_]+)` \|", sections[tag], re.MULTILINE)
        fields = [field.name for field in msgspec.structs.fields(kind) if field.name != "time"]
        assert fields == documented, tag
