"""Random transport faults never lose, duplicate or half-execute anything
(docs/faults.md#the-fault-campaign).

A scripted conversation runs against the embedded server while the server injects faults
(aborts, recoverable closes, stalls, half-open peers, cache loss, expiry, server errors,
rate limits, refused and slow handshakes). Whatever happens, the final transcript must equal
the fault-free run's, every tool call must have run exactly once, and only from a completed
response.
"""

from __future__ import annotations

import random
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import given, settings, strategies as st

from orchestrator.core.connection import ConnectionSettings
from orchestrator.core.protocol.events import FunctionCallItem
from orchestrator.core.server import Fault, LocalServer, ServerConfig

from .helpers import PROMPTS, SCRIPT, converse, memory_agent, normalised, scripted_session

SETTINGS = ConnectionSettings(
    idle_timeout=20,
    ping_interval=10,
    ping_timeout=5,
    connect_timeout=5,
    backoff_initial=0.05,
    backoff_max=2.0,
    max_attempts=60,
)


def _fault(kind: str, **fields: Any) -> Fault:
    return Fault(kind, **fields)  # type: ignore[arg-type]


FAULT_MAKERS = (
    lambda r: _fault("abort"),
    lambda r: _fault("close", code=r.choice([1001, 1005, 1011, 1012, 1013])),
    lambda r: _fault("stall"),
    lambda r: _fault("blackhole"),
    lambda r: _fault("drop_cache"),
    lambda r: _fault("expire"),
    lambda r: _fault("error", error_code="server_error", status=500),
    lambda r: _fault("fail", error_code="server_error"),
    lambda r: _fault("error", error_code="websocket_connection_limit_reached", status=400),
    lambda r: _fault("error", error_code="rate_limit_exceeded", status=429, retry_after=1.5),
    lambda r: _fault("reject", status=r.choice([500, 502, 503, 429])),
    lambda r: _fault("delay_handshake", duration=30.0),
)


@attrs.frozen
class Outcome:
    transcript: list[tuple[object, ...]]
    executed: list[str]
    calls: list[str]
    faults_fired: int


async def _run(faults: tuple[Fault, ...], seed: int) -> Outcome:
    server = LocalServer.from_config(ServerConfig(script=SCRIPT, seed=1, faults=faults))
    session = scripted_session()
    executed: list[str] = []
    async with memory_agent(server=server, settings=SETTINGS, seed=seed) as (_s, connection, _r):
        with trio.fail_after(24 * 3600):
            await converse(connection, session, PROMPTS, executed)
    calls = [item.call_id for item in session.transcript if isinstance(item, FunctionCallItem)]
    return Outcome(
        normalised(session.transcript), executed, calls, server.statistics().faults_fired
    )


def run(faults: tuple[Fault, ...], seed: int = 0) -> Outcome:
    return trio.run(_run, faults, seed, clock=trio.testing.MockClock(autojump_threshold=0))


GOLDEN = run(())


def _check(outcome: Outcome) -> None:
    assert GOLDEN.transcript == outcome.transcript
    # Every call of the final transcript ran exactly once, and nothing else ran: a call seen
    # only in a lost partial stream was never executed.
    assert sorted(outcome.calls) == sorted(outcome.executed)
    assert len(set(outcome.executed)) == len(outcome.executed)


def _schedule(rng: random.Random) -> tuple[Fault, ...]:
    """Mostly faults that match the next response to reach ``after_events`` events, so that
    nearly all of them fire; some pinned to a connection/response index."""
    faults = []
    for _ in range(rng.randint(8, 14)):
        fault = rng.choice(FAULT_MAKERS)(rng)
        if fault.at_handshake:
            faults.append(attrs.evolve(fault, connection=None, times=rng.randint(1, 2)))
        elif rng.random() < 0.8:
            faults.append(attrs.evolve(fault, after_events=rng.randint(0, 8)))
        else:
            faults.append(
                attrs.evolve(
                    fault,
                    connection=rng.randint(1, 8),
                    response=rng.randint(1, 6),
                    after_events=rng.randint(0, 12),
                )
            )
    return tuple(faults)


def test_golden_run_is_fault_free():
    """The reference run executes its tool calls once each and injects nothing."""
    assert 0 == GOLDEN.faults_fired
    assert 6 == len(GOLDEN.executed)
    assert sorted(GOLDEN.calls) == sorted(GOLDEN.executed)


def test_seeded_fault_campaign():
    """docs/faults.md#the-fault-campaign (CI-fast): at least 2,000 injected faults over at least 200
    seeded runs, with no lost turn, no duplicated answer and no tool run from a partial stream."""
    fired = 0
    for seed in range(200):
        outcome = run(_schedule(random.Random(seed)), seed)
        try:
            _check(outcome)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from exc
        fired += outcome.faults_fired
    assert fired >= 2000, f"only {fired} faults fired"


fault_strategy = st.builds(
    lambda maker, connection, response, after: (maker, connection, response, after),
    st.integers(0, len(FAULT_MAKERS) - 1),
    st.one_of(st.none(), st.integers(1, 6)),
    st.integers(1, 12),
    st.integers(0, 12),
)


@settings(max_examples=60)
@given(st.lists(fault_strategy, max_size=12), st.integers(0, 2**16))
def test_random_fault_schedules_keep_the_transcript(entries, seed):
    """Hypothesis searches fault schedules (and shrinks any failure to a minimal one)."""
    rng = random.Random(seed)
    faults = []
    for maker, connection, response, after in entries:
        fault = FAULT_MAKERS[maker](rng)
        if fault.at_handshake:
            faults.append(attrs.evolve(fault, connection=connection))
        else:
            faults.append(
                attrs.evolve(fault, connection=connection, response=response, after_events=after)
            )
    _check(run(tuple(faults), seed))
