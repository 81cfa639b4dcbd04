"""Conversions and small arithmetic helpers."""

from __future__ import annotations


def celsius_to_fahrenheit(celsius: float) -> float:
    """Degrees Celsius in degrees Fahrenheit."""
    return celsius * 9 / 5 + 32


def percent_change(old: float, new: float) -> float:
    """The change from ``old`` to ``new`` in percent of ``old``.

    Raises:
        ZeroDivisionError: ``old`` is zero.
    """
    return (new - old) / old * 100


def clamp(value: float, low: float, high: float) -> float:
    """``value`` limited to the range ``low..high``.

    Raises:
        ValueError: ``low`` is greater than ``high``.
    """
    if low > high:
        raise ValueError(f"empty range {low}..{high}")
    return max(low, min(value, high))
