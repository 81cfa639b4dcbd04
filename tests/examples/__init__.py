"""Tests of the runnable examples in plans/examples/."""
