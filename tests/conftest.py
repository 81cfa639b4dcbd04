"""Shared fixtures. Async tests need no marks (``trio_mode = true``)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from collections.abc import Iterator

# Tests never talk to the real service: a key inherited from the developer's shell would
# switch runs from the embedded server to the network.
os.environ.pop("OPENAI_API_KEY", None)

# Runs journal by default (every run is a durable job): into a throwaway store for the
# session, never the developer's own ~/.local/state/orchestrator/jobs.db.
_STORE_DIR = tempfile.mkdtemp(prefix="orchestrator-test-store-")
os.environ["ORCHESTRATOR_STORE"] = os.path.join(_STORE_DIR, "jobs.db")
atexit.register(shutil.rmtree, _STORE_DIR, ignore_errors=True)

# A canary key that tests use as the credential and then look for in every artefact (logs,
# traces, errors): finding it anywhere proves a leak (docs/faults.md#secrets).
CANARY_KEY = "sk-canary-" + os.urandom(12).hex()

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


@pytest.fixture(autouse=True)
def _registered_secrets_stay_in_their_test() -> Iterator[None]:
    """Secrets a test registers (some are random, from hypothesis) are forgotten after it:
    left registered, an 8-character fragment of one can turn up in a later test's plan and
    be refused there as a pasted secret."""
    from orchestrator.core import redaction

    saved = redaction._known
    yield
    redaction._known = saved
