"""Summary statistics of a sequence of numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean of ``values``.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("mean of an empty sequence")
    return sum(values) / len(values)


def median(values: Sequence[float]) -> float:
    """The middle value of ``values`` once sorted; the mean of the two middle ones for an
    even count.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("median of an empty sequence")
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle] + ordered[middle + 1]) / 2


def variance(values: Sequence[float]) -> float:
    """The population variance of ``values``.

    Raises:
        ValueError: ``values`` is empty.
    """
    centre = mean(values)
    return sum((value - centre) ** 2 for value in values) / len(values)
