"""Tests of calc.stats."""

# ruff: noqa: PT009, PT027 - unittest style: the suite runs with the standard library alone

from __future__ import annotations

import unittest

from .. import mean, median, variance


class MeanTests(unittest.TestCase):
    def test_mean(self) -> None:
        self.assertEqual(2.5, mean([1, 2, 3, 4]))

    def test_mean_of_nothing(self) -> None:
        with self.assertRaises(ValueError):
            mean([])


class MedianTests(unittest.TestCase):
    def test_odd_count(self) -> None:
        self.assertEqual(3, median([5, 1, 3]))

    def test_even_count(self) -> None:
        self.assertEqual(2.5, median([4, 1, 3, 2]))

    def test_two_values(self) -> None:
        self.assertEqual(6, median([8, 4]))

    def test_one_value(self) -> None:
        self.assertEqual(7, median([7]))

    def test_median_of_nothing(self) -> None:
        with self.assertRaises(ValueError):
            median([])


class VarianceTests(unittest.TestCase):
    def test_variance(self) -> None:
        self.assertEqual(1.25, variance([1, 2, 3, 4]))

    def test_constant(self) -> None:
        self.assertEqual(0, variance([3, 3, 3]))
