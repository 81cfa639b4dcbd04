"""Shared fixtures. Async tests need no marks (``trio_mode = true``)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# The whole suite runs with a canary key in the environment: any test that finds it in an
# artefact (log, trace, error text) proves a leak (RELIABILITY G13).
CANARY_KEY = "sk-canary-" + os.urandom(12).hex()
os.environ["OPENAI_API_KEY"] = CANARY_KEY

settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def canary_key() -> str:
    return CANARY_KEY
