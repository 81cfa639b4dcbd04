"""Footprint (issue 6, figure 6): import + first connection + first turn, in a fresh process.

A fresh interpreter runs ``PROGRAM``: it imports ``orchestrator`` (the public API), opens a
connection to a running server, runs one turn, and reports the time from before the import
to the end of the turn, its RSS, and whether ``openai`` or ``pydantic`` got imported (the
runtime must never import them). The interpreter's own start-up is reported apart.

    python -m bench.footprint --url ws://... --token T [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench._common import ROOT, pin
from bench._harness import emit, median

# Runs in a fresh `python -c`: nothing but the standard library is imported before t0.
PROGRAM = """
import json, sys, time
t0 = time.perf_counter()
import orchestrator
import trio
from orchestrator import Session, open_connection
from orchestrator.core.protocol.events import MessageItem
imported = time.perf_counter() - t0

async def main(url, token):
    async with open_connection(url, token, agent="footprint") as conn:
        await conn.run_turn(Session(model="local-scripted"), [MessageItem.user("hello")])

trio.run(main, sys.argv[1], sys.argv[2])
total = time.perf_counter() - t0
rss = 0
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        rss = int(line.split()[1])
print(json.dumps({
    "import": imported,
    "import_and_first_turn": total,
    "rss_kib": rss,
    "openai_imported": "openai" in sys.modules,
    "pydantic_imported": "pydantic" in sys.modules,
    "modules": len(sys.modules),
}))
"""


def measure(url: str, token: str, cpu: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-c", PROGRAM, url, token],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        preexec_fn=(lambda: pin(cpu)) if cpu is not None else None,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    result: dict[str, Any] = json.loads(process.stdout.strip().splitlines()[-1])
    result["process_wall"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args()
    runs = [measure(args.url, args.token, args.cpu) for _ in range(args.repeat)]
    emit(
        {
            "runs": len(runs),
            "import": median([r["import"] for r in runs]),
            "import_and_first_turn": median([r["import_and_first_turn"] for r in runs]),
            "process_wall": median([r["process_wall"] for r in runs]),
            "rss_kib": median([float(r["rss_kib"]) for r in runs]),
            "openai_imported": any(r["openai_imported"] for r in runs),
            "pydantic_imported": any(r["pydantic_imported"] for r in runs),
            "modules": max(r["modules"] for r in runs),
        }
    )


if __name__ == "__main__":
    main()
