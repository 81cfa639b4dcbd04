"""Tests of the runnable examples in orchestrator/examples/."""
