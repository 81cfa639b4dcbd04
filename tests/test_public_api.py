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
    "RunSettings",
    "EmbeddedServer",
    "RunResult",
    "AgentReport",
    "StepReport",
    "FailureReport",
    "ParkedCall",
    # durable jobs
    "submit",
    "Jobs",
    "open_jobs",
    "Plan",
    "PlanBuilder",
    "PlanIssue",
    "PlanReport",
    "load_plan",
    "check_plan",
    "check_plan_file",
    "plan_from_dict",
    # tools and approvals
    "tool",
    "ToolContext",
    "confine",
    "run_process",
    "run_subprocess",
    "start_subprocess",
    "ApprovalPolicy",
    "ApprovalRequest",
    "ApprovalDecision",
    # settings and observing
    "ConnectionSettings",
    "ModelSettings",
    "Secret",
    "EventBus",
    "RuntimeEvent",
    "configure_logging",
    "__version__",
}


LOWLEVEL = {
    "Actor",
    "AgentActor",
    "AgentMemory",
    "AttemptAbandoned",
    "Backoff",
    "ChildSpec",
    "Connection",
    "ConnectionSettings",
    "ConnectionStatistics",
    "Fault",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "JobStore",
    "LatencyModel",
    "LocalServer",
    "MessageItem",
    "ModelSettings",
    "PlannerActor",
    "Router",
    "ServerConfig",
    "Session",
    "Supervisor",
    "Assignment",
    "AssignmentResult",
    "ToolExecutor",
    "ToolRegistry",
    "ToolSpec",
    "WorkerActor",
    "open_connection",
    "open_local_server",
    "open_store",
    "serve_local_server",
}


def test_all_lists_exactly_the_public_names():
    """__all__ is the documented public API, no more, no less: the everyday names in
    ``orchestrator``, the building blocks in ``orchestrator.lowlevel``."""
    import orchestrator.lowlevel

    assert EXPECTED == set(orchestrator.__all__)
    assert len(orchestrator.__all__) == len(set(orchestrator.__all__))
    assert LOWLEVEL == set(orchestrator.lowlevel.__all__)
    for name in orchestrator.lowlevel.__all__:
        assert getattr(orchestrator.lowlevel, name) is not None, name


def test_every_public_name_resolves():
    """Each public name is importable from the package."""
    for name in orchestrator.__all__:
        assert getattr(orchestrator, name) is not None, name


def test_unknown_names_raise_attribute_error():
    """A typo is an AttributeError, not a silent None."""
    with pytest.raises(AttributeError, match="rnu"):
        orchestrator.rnu  # noqa: B018


def test_renamed_lowlevel_names_still_import_with_a_warning():
    """``Task`` and ``TaskResult`` (renamed ``Assignment`` and ``AssignmentResult``: trio's
    Task is a running coroutine) still import from ``orchestrator.lowlevel`` for one release,
    each with a DeprecationWarning naming its new name; other unknown names stay errors."""
    import orchestrator.lowlevel as lowlevel

    with pytest.warns(DeprecationWarning, match="use Assignment$"):
        from orchestrator.lowlevel import Task
    with pytest.warns(DeprecationWarning, match="use AssignmentResult$"):
        from orchestrator.lowlevel import TaskResult
    assert lowlevel.Assignment is Task
    assert lowlevel.AssignmentResult is TaskResult
    with pytest.raises(AttributeError, match="Tsak"):
        lowlevel.Tsak  # noqa: B018


def test_lower_layers_import_without_a_cycle():
    """Importing an actor module first (which imports orchestrator) works in a fresh process."""
    for module in (
        "actors.agent",
        "actors.planner",
        "orchestrator.runner",
        "plans",
        "orchestrator",
    ):
        code = (
            f"import {module}; import orchestrator, orchestrator.runner; "
            "assert callable(orchestrator.run); import orchestrator.lowlevel"
        )
        completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert 0 == completed.returncode, completed.stderr


def test_runtime_never_imports_the_sdk():
    """The hot path is msgspec: importing and using the runtime never loads openai or pydantic."""
    code = (
        "import sys, orchestrator, orchestrator.lowlevel; orchestrator.run; "
        "orchestrator.lowlevel.open_connection; orchestrator.lowlevel.open_local_server; "
        "import orchestrator.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('openai', 'pydantic')))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert 0 == completed.returncode, completed.stderr
    assert "[]" == completed.stdout.strip()
