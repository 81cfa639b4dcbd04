"""bench.transports runs end to end: its server and client processes, the three variants over
their transports, the report and its section of RESULTS.md, and live mode's refusal without a
key. Timing is never asserted: only what the runs did (turns, requests, bytes)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

from bench import transports

if TYPE_CHECKING:
    from pathlib import Path


def test_a_tiny_run_measures_every_variant_over_its_own_transport() -> None:
    """One round of 2 and 3 calls in the first two scenarios (the first repeats its rounds)
    gives a rollout per variant, cell and round; each rollout made its calls and answered,
    HTTP made one request per turn and WebSocket none, and resending the transcript sent
    more than continuing by id."""
    first, second = list(transports.SCENARIOS.values())[:2]
    run = transports.measure(
        scenarios=[first, second],
        calls=[2, 3],
        rounds=1,
        warmup=0,
        command="python -m bench.transports (test)",
        progress=lambda _line: None,
    )
    assert (first.repeat + second.repeat) * 2 * 3 == len(run.records)
    for record in run.records:
        assert record["calls"] == record["calls_made"]
        assert record["calls"] + 1 == record["turns"]
        expected = 0 if record["variant"] == "ws" else record["turns"]
        assert expected == record["http_requests"]
    found = transports.cells(run)
    assert {(s.name, n) for s in (first, second) for n in (2, 3)} == set(found)
    for cell in found.values():
        assert cell.sent("http_full") > cell.sent("http_id")
    lines = transports.render(run)
    text = "\n".join(lines)
    assert f"| {second.name} + per-request API work | " in text
    assert "http_request_seconds=0.03, websocket_request_seconds=0.003" in text
    assert "### What produces the gain" in text
    assert f"### Client CPU per turn ({first.name})" in text


def test_the_section_replaces_only_itself(tmp_path: Path) -> None:
    """Writing the report puts it before the commands once; writing again replaces it and
    leaves the rest of the file as it was."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## 6. Footprint\n\nsix\n\n## Commands\n\nrun\n")
    transports.write_section(["## 7. first"], results)
    transports.write_section(["## 7. second", "", "body"], results)
    expected = (
        "# Results\n\n## 6. Footprint\n\nsix\n\n"
        f"{transports.BEGIN}\n## 7. second\n\nbody\n{transports.END}\n\n## Commands\n\nrun\n"
    )
    assert expected == results.read_text()


def test_live_mode_without_a_key_fails_clearly() -> None:
    """--live with no OPENAI_API_KEY stops before any connection, with a usage error that
    names the variable, and no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    process = subprocess.run(
        [sys.executable, "-m", "bench.transports", "--live", "--calls", "20", "--rounds", "10"],
        capture_output=True,
        text=True,
        env=env,
        cwd=transports.ROOT,
        timeout=60,
        check=False,
    )
    assert 2 == process.returncode
    assert "--live needs an API key in OPENAI_API_KEY" in process.stderr
    assert "Traceback" not in process.stderr
    assert "" == process.stdout
