"""``python -m tests.jobs.crashplan.rotating ARGS``: ``orchestrator ARGS`` with sockets that
rotate every few tenths of a second.

The command line has no option for connection settings, and a planned rotation (the
``rotation`` crash point) happens only once a socket nears its ``max_age``, an hour by
default. This runs the real command line with one change: every agent's
``ConnectionSettings`` get a ``max_age`` short enough that each agent rotates several times in
a run (a warm standby is opened ``ROTATION_AT - WARMUP_LEAD`` after a socket opens, and
taken at the next turn boundary after ``ROTATION_AT``).
"""

from __future__ import annotations

import functools
import sys
from typing import Final

from orchestrator.core import connection

MAX_AGE: Final = 0.5
ROTATION_AT: Final = 0.05  # max_age - rotation_margin
WARMUP_LEAD: Final = 0.04


def main() -> int:
    # Patched before the command line is imported, so that it builds its settings with these
    # defaults whether it imports the class at module level or when it runs.
    connection.ConnectionSettings = functools.partial(  # type: ignore[misc,assignment]
        connection.ConnectionSettings,
        max_age=MAX_AGE,
        rotation_margin=MAX_AGE - ROTATION_AT,
        warmup_lead=WARMUP_LEAD,
    )
    from orchestrator.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
