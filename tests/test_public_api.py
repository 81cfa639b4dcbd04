"""The public API: every name in ``orchestrator.__all__`` resolves, and nothing else is public."""

from __future__ import annotations

import subprocess
import sys

import pytest

import orchestrator

EXPECTED = {
    # errors
    "ActorDead",
    "AuthenticationError",
    "BudgetExceeded",
    "ConfigurationError",
    "ConnectionLost",
    "DeliveryTimeout",
    "HandshakeRejected",
    "InternalError",
    "JobError",
    "JobLost",
    "JobNotFound",
    "JobNotResumable",
    "JobRunning",
    "JournalError",
    "LocalProtocolError",
    "OrchestratorError",
    "OutputInvalid",
    "PlanDiverged",
    "PlanError",
    "ProtocolError",
    "RemoteProtocolError",
    "RestartLimitReached",
    "ServerError",
    "StorageUnavailable",
    "ToolArgumentsInvalid",
    "ToolError",
    "ToolTimedOut",
    "TurnFailed",
    "UnknownRecipient",
    # running plans
    "run",
    "RunResult",
    "AgentReport",
    "StepReport",
    "FailureReport",
    "ParkedCall",
    # durable jobs
    "submit",
    "Jobs",
    "JobStore",
    "open_jobs",
    "open_store",
    "Plan",
    "PlanBuilder",
    "PlanIssue",
    "PlanReport",
    "load_plan",
    "check_plan",
    "check_plan_file",
    "plan_from_dict",
    # agents, tools, supervision
    "Actor",
    "AgentActor",
    "PlannerActor",
    "WorkerActor",
    "Task",
    "TaskResult",
    "tool",
    "ToolSpec",
    "ToolRegistry",
    "ToolContext",
    "confine",
    "run_process",
    "run_subprocess",
    "start_subprocess",
    "ApprovalPolicy",
    "ApprovalRequest",
    "ApprovalDecision",
    "Router",
    "Supervisor",
    "ChildSpec",
    "Backoff",
    # connections and sessions
    "open_connection",
    "Connection",
    "ConnectionSettings",
    "ConnectionStatistics",
    "AttemptAbandoned",
    "Session",
    "ModelSettings",
    "Secret",
    # observing
    "EventBus",
    "RuntimeEvent",
    "configure_logging",
    # the embedded server
    "open_local_server",
    "ServerConfig",
    "Fault",
    "LatencyModel",
    "__version__",
}


def test_all_lists_exactly_the_public_names():
    """__all__ is the documented public API, no more, no less."""
    assert EXPECTED == set(orchestrator.__all__)
    assert len(orchestrator.__all__) == len(set(orchestrator.__all__))


def test_every_public_name_resolves():
    """Each public name is importable from the package."""
    for name in orchestrator.__all__:
        assert getattr(orchestrator, name) is not None, name


def test_unknown_names_raise_attribute_error():
    """A typo is an AttributeError, not a silent None."""
    with pytest.raises(AttributeError, match="rnu"):
        orchestrator.rnu  # noqa: B018


def test_lower_layers_import_without_a_cycle():
    """Importing an actor module first (which imports orchestrator) works in a fresh process."""
    for module in ("actors.agent", "actors.planner", "orchestrator.run", "plans", "orchestrator"):
        code = f"import {module}; import orchestrator; orchestrator.run; orchestrator.AgentActor"
        completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert 0 == completed.returncode, completed.stderr


def test_runtime_never_imports_the_sdk():
    """The hot path is msgspec: importing and using the runtime never loads openai or pydantic."""
    code = (
        "import sys, orchestrator; orchestrator.run; orchestrator.open_connection; "
        "orchestrator.open_local_server; import orchestrator.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('openai', 'pydantic')))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert 0 == completed.returncode, completed.stderr
    assert "[]" == completed.stdout.strip()
