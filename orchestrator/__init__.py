"""Supervised teams of LLM agents over the OpenAI Responses API WebSocket mode, on trio.

The everyday API, importable from here::

    import orchestrator

    result = await orchestrator.run("orchestrator/examples/trip/plan.toml")

running plans (``run``, ``RunSettings``, ``submit``, ``RunResult``...), plans (``Plan``,
``PlanBuilder``, ``load_plan``...), tools (``tool``, ``ToolContext``...), approvals, jobs
(``open_jobs``, ``Jobs``), observing (``EventBus``), settings, and every error. The building
blocks a run is made of (connections, sessions, the router, the supervisor, actors, the
embedded server, job stores) are one level down, in :mod:`orchestrator.lowlevel`, as trio
keeps its own in ``trio.lowlevel``.

Errors are imported eagerly (they import nothing); everything else on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from loguru import logger

from .errors import (
    ActorDead as ActorDead,
    AuthenticationError as AuthenticationError,
    BudgetExceeded as BudgetExceeded,
    ConfigurationError as ConfigurationError,
    ConnectionLost as ConnectionLost,
    DeliveryTimeout as DeliveryTimeout,
    HandshakeRejected as HandshakeRejected,
    InternalError as InternalError,
    JobError as JobError,
    JobLost as JobLost,
    JobNotFound as JobNotFound,
    JobNotResumable as JobNotResumable,
    JobRunning as JobRunning,
    JournalError as JournalError,
    LocalProtocolError as LocalProtocolError,
    OrchestratorError as OrchestratorError,
    OutputInvalid as OutputInvalid,
    PlanDiverged as PlanDiverged,
    PlanError as PlanError,
    ProtocolError as ProtocolError,
    RemoteProtocolError as RemoteProtocolError,
    RestartLimitReached as RestartLimitReached,
    ServerError as ServerError,
    StorageUnavailable as StorageUnavailable,
    ToolArgumentsInvalid as ToolArgumentsInvalid,
    ToolError as ToolError,
    ToolTimedOut as ToolTimedOut,
    TurnFailed as TurnFailed,
    UnknownRecipient as UnknownRecipient,
)

if TYPE_CHECKING:
    from actors.approval import (
        ApprovalDecision as ApprovalDecision,
        ApprovalPolicy as ApprovalPolicy,
        ApprovalRequest as ApprovalRequest,
    )
    from actors.tools import (
        ToolContext as ToolContext,
        confine as confine,
        run_process as run_process,
        run_subprocess as run_subprocess,
        start_subprocess as start_subprocess,
        tool as tool,
    )
    from plans import (
        Plan as Plan,
        PlanBuilder as PlanBuilder,
        PlanIssue as PlanIssue,
        PlanReport as PlanReport,
        check_plan as check_plan,
        check_plan_file as check_plan_file,
        load_plan as load_plan,
        plan_from_dict as plan_from_dict,
    )

    from .core.connection import ConnectionSettings as ConnectionSettings
    from .core.logging import Secret as Secret, configure as configure_logging  # noqa: F401
    from .core.observe import EventBus as EventBus, RuntimeEvent as RuntimeEvent
    from .core.session import ModelSettings as ModelSettings
    from .jobs import Jobs as Jobs, open_jobs as open_jobs
    from .runner import (
        AgentReport as AgentReport,
        EmbeddedServer as EmbeddedServer,
        FailureReport as FailureReport,
        ParkedCall as ParkedCall,
        RunResult as RunResult,
        RunSettings as RunSettings,
        StepReport as StepReport,
        run as run,
        submit as submit,
    )

logger.disable(__name__)

__version__ = "0.1.0"

# The everyday names, each loaded on first use (PEP 562): `import orchestrator` stays cheap,
# which the embedded server's own process (`orchestrator serve`) and every tool that imports
# one building block of orchestrator.lowlevel rely on. name -> module (same attribute name,
# except configure_logging).
_LAZY: dict[str, str] = {
    "run": "orchestrator.runner",
    "submit": "orchestrator.runner",
    "RunResult": "orchestrator.runner",
    "RunSettings": "orchestrator.runner",
    "EmbeddedServer": "orchestrator.runner",
    "AgentReport": "orchestrator.runner",
    "StepReport": "orchestrator.runner",
    "FailureReport": "orchestrator.runner",
    "ParkedCall": "orchestrator.runner",
    "Jobs": "orchestrator.jobs",
    "open_jobs": "orchestrator.jobs",
    "ModelSettings": "orchestrator.core.session",
    "ConnectionSettings": "orchestrator.core.connection",
    "EventBus": "orchestrator.core.observe",
    "RuntimeEvent": "orchestrator.core.observe",
    "Secret": "orchestrator.core.logging",
    "configure_logging": "orchestrator.core.logging",
    "tool": "actors.tools",
    "ToolContext": "actors.tools",
    "confine": "actors.tools",
    "run_process": "actors.tools",
    "run_subprocess": "actors.tools",
    "start_subprocess": "actors.tools",
    "ApprovalPolicy": "actors.approval",
    "ApprovalRequest": "actors.approval",
    "ApprovalDecision": "actors.approval",
    "Plan": "plans",
    "PlanBuilder": "plans",
    "PlanIssue": "plans",
    "PlanReport": "plans",
    "load_plan": "plans",
    "check_plan": "plans",
    "check_plan_file": "plans",
    "plan_from_dict": "plans",
}
_ATTRIBUTE = {"configure_logging": "configure"}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(target), _ATTRIBUTE.get(name, name))
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
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
    "__version__",
    *_LAZY,
]
