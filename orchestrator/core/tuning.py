"""Process-level tuning for many agents in one process: the cyclic GC policy.

Thousands of agents mean hundreds of thousands of long-lived container objects (actors,
connections, sessions, trio tasks, websocket state). CPython's cyclic collector walks all of
them in every full collection, and its default thresholds (a young collection every 700
net allocations, a full one whenever the survivors grew by a quarter) make that walk a
large share of the process's CPU once agents stream events: benchmarks measured about 40%
of the time in collections at 1,000 busy agents. Agents create little cyclic garbage
(their turns allocate short-lived acyclic objects that reference counting frees at once),
so the policy collects rarely and never re-walks what setup built:

* ``gc.freeze()`` moves every object alive when the agents are set up into the permanent
  generation, which collections skip (call :meth:`GcPolicy.freeze` once they are up);
* the young-generation threshold is raised, so collections run about a hundred times less
  often and each finds the same garbage;
* on exit the previous thresholds are restored and the frozen objects are unfrozen, so a
  later full collection can reclaim them once they are garbage.

The policy changes interpreter-wide settings: use one at a time, in the process's main
program (``orchestrator run`` does), never from library code running inside someone
else's application.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

import attrs

from orchestrator.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["DEFAULT_YOUNG_THRESHOLD", "GcPolicy", "fd_limit", "gc_policy", "raise_fd_limit"]

# A young collection every 50,000 net container allocations instead of 700.
DEFAULT_YOUNG_THRESHOLD: Final = 50_000


@attrs.define(eq=False)
class GcPolicy:
    """The active policy of :func:`gc_policy`; see the module docstring."""

    young_threshold: int
    _saved: tuple[int, int, int]
    _frozen: bool = False
    _active: bool = True

    def freeze(self) -> int:
        """Move every object alive now out of the collector's reach until the policy ends.

        Call it once the long-lived objects exist (the agents started and connected). A
        collection runs first so no garbage is frozen.

        Returns:
            How many objects the permanent generation holds now.

        Raises:
            RuntimeError: the policy has ended.
        """
        if not self._active:
            raise RuntimeError("this GC policy has ended")
        gc.collect()
        gc.freeze()
        self._frozen = True
        return gc.get_freeze_count()

    def _end(self) -> None:
        self._active = False
        gc.set_threshold(*self._saved)
        if self._frozen:
            gc.unfreeze()


@contextmanager
def gc_policy(
    *, young_threshold: int = DEFAULT_YOUNG_THRESHOLD, freeze: bool = False
) -> Iterator[GcPolicy]:
    """Collect rarely while the ``with`` block runs; restore the previous settings after.

    Args:
        young_threshold: net container allocations between two young collections.
        freeze: freeze what exists already when the block starts (else call
            :meth:`GcPolicy.freeze` later, once the agents are up).

    Raises:
        ValueError: ``young_threshold`` is not positive (0 would disable the collector:
            cyclic garbage would then grow without bound).
    """
    if young_threshold < 1:
        raise ConfigurationError(f"young_threshold must be >= 1, got {young_threshold}")
    saved = gc.get_threshold()
    policy = GcPolicy(young_threshold, saved)
    gc.set_threshold(young_threshold, saved[1], saved[2])
    try:
        if freeze:
            policy.freeze()
        yield policy
    finally:
        policy._end()


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit.

    Each agent holds one socket (two file descriptors when it talks to the embedded server
    over loopback in the same process), so thousands of agents outgrow the usual soft limit
    of 1024. Like the GC policy, this is for the main program (the CLI calls it).

    Returns:
        The soft limit now in force (unchanged where ``resource`` is unavailable).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 1 << 30
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def fd_limit() -> int:
    """The soft limit on open files (a large number where it cannot be read)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 1 << 30
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30
