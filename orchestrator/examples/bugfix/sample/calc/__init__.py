"""calc: small numeric helpers."""

from .stats import mean, median, variance
from .units import celsius_to_fahrenheit, clamp, percent_change

__all__ = ["celsius_to_fahrenheit", "clamp", "mean", "median", "percent_change", "variance"]
