"""Tests of calc.units."""

# ruff: noqa: PT009, PT027 - unittest style: the suite runs with the standard library alone

from __future__ import annotations

import unittest

from .. import celsius_to_fahrenheit, clamp, percent_change


class UnitsTests(unittest.TestCase):
    def test_freezing_and_boiling(self) -> None:
        self.assertEqual(32, celsius_to_fahrenheit(0))
        self.assertEqual(212, celsius_to_fahrenheit(100))

    def test_percent_change(self) -> None:
        self.assertEqual(25, percent_change(80, 100))
        self.assertEqual(-50, percent_change(10, 5))

    def test_clamp(self) -> None:
        self.assertEqual(5, clamp(7, 0, 5))
        self.assertEqual(0, clamp(-2, 0, 5))
        self.assertEqual(3, clamp(3, 0, 5))

    def test_clamp_empty_range(self) -> None:
        with self.assertRaises(ValueError):
            clamp(1, 5, 0)
