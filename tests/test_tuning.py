"""The GC policy for many agents: rare collections, frozen setup, everything restored after."""

from __future__ import annotations

import gc

import pytest

from orchestrator.core.tuning import DEFAULT_YOUNG_THRESHOLD, gc_policy


@pytest.fixture
def clean_gc():
    """Each test starts and ends with the interpreter's GC settings untouched."""
    saved = gc.get_threshold()
    assert 0 == gc.get_freeze_count()
    yield saved
    gc.unfreeze()
    gc.set_threshold(*saved)


def test_policy_raises_the_young_threshold_and_restores_it(clean_gc):
    """Inside the block young collections are rare; after it the old thresholds are back."""
    with gc_policy() as policy:
        assert (DEFAULT_YOUNG_THRESHOLD, clean_gc[1], clean_gc[2]) == gc.get_threshold()
        assert DEFAULT_YOUNG_THRESHOLD == policy.young_threshold
    assert clean_gc == gc.get_threshold()


def test_policy_restores_the_thresholds_after_an_error(clean_gc):
    """An exception leaving the block still restores the settings."""
    inside: list[int] = []

    def fail() -> None:
        with gc_policy(young_threshold=1234):
            inside.append(gc.get_threshold()[0])
            raise KeyError("boom")

    with pytest.raises(KeyError):
        fail()
    assert [1234] == inside
    assert clean_gc == gc.get_threshold()
    assert 0 == gc.get_freeze_count()


def test_freeze_moves_live_objects_out_of_reach_until_the_end(clean_gc):
    """freeze() puts what is alive into the permanent generation; the end unfreezes it."""
    agents = [{"agent": i} for i in range(1000)]
    with gc_policy() as policy:
        frozen = policy.freeze()
        assert frozen >= len(agents)
        assert frozen == gc.get_freeze_count()
    assert 0 == gc.get_freeze_count()
    del agents


def test_freeze_at_entry(clean_gc):
    """freeze=True freezes what exists when the block starts."""
    with gc_policy(freeze=True):
        assert gc.get_freeze_count() > 0
    assert 0 == gc.get_freeze_count()


def test_cyclic_garbage_is_still_collected(clean_gc):
    """The policy collects rarely, never never: cycles made inside the block are reclaimed."""

    class Node:
        pass

    collected: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            collected.append(info["collected"])

    gc.callbacks.append(count)
    try:
        with gc_policy(young_threshold=100):
            for _ in range(1000):
                node = Node()
                node.self = node  # type: ignore[attr-defined]
            del node
    finally:
        gc.callbacks.remove(count)
    assert sum(collected) > 0


def test_freeze_after_the_end_is_a_bug(clean_gc):
    """A policy that has ended refuses to freeze (nothing would unfreeze it)."""
    with gc_policy() as policy:
        pass
    with pytest.raises(RuntimeError, match="ended"):
        policy.freeze()
    assert 0 == gc.get_freeze_count()


@pytest.mark.parametrize("threshold", [0, -1])
def test_a_threshold_below_one_is_refused(clean_gc, threshold):
    """0 would disable the collector altogether: cyclic garbage would grow without bound."""
    with pytest.raises(ValueError, match="young_threshold"), gc_policy(young_threshold=threshold):
        pass
    assert clean_gc == gc.get_threshold()


def test_raise_fd_limit_reaches_the_hard_limit():
    """The soft limit on open files is raised to the hard one (what thousands of agents need)."""
    import resource

    from orchestrator.core.tuning import fd_limit, raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        raised = raise_fd_limit()
        assert (hard if hard != resource.RLIM_INFINITY else raised) == raised
        assert raised == fd_limit()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_team_larger_than_the_fd_limit_is_refused_before_starting():
    """run() refuses, with config.fd_limit and nothing started, a team whose sockets cannot
    fit under the open-files limit."""
    import resource

    import pytest

    from orchestrator.errors import ConfigurationError
    from orchestrator.runner import RunSettings, run
    from plans import PlanBuilder

    builder = PlanBuilder("crowd", goal="hello", model="echo").planner("boss")
    for index in range(200):
        builder.worker(f"w{index}")
    plan = builder.build()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        with pytest.raises(
            ConfigurationError, match="201 agents need about 466 open files"
        ) as caught:
            await run(plan, settings=RunSettings(offline=True))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "config.fd_limit" == caught.value.code
