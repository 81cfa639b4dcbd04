"""Supervised teams of LLM agents over the OpenAI Responses API WebSocket mode, on trio.

The public API, importable from here::

    import orchestrator

    result = await orchestrator.run("plans/examples/trip/plan.toml")

Errors are imported eagerly (they import nothing). Everything else is loaded on first use
(PEP 562): ``import orchestrator`` stays cheap, and the layers above (``actors``, ``plans``)
can import ``orchestrator.*`` without an import cycle.
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
    from actors.agent import AgentActor as AgentActor, Task as Task, TaskResult as TaskResult
    from actors.approval import (
        ApprovalDecision as ApprovalDecision,
        ApprovalPolicy as ApprovalPolicy,
        ApprovalRequest as ApprovalRequest,
    )
    from actors.base import Actor as Actor
    from actors.planner import PlannerActor as PlannerActor
    from actors.tools import (
        ToolContext as ToolContext,
        ToolRegistry as ToolRegistry,
        ToolSpec as ToolSpec,
        confine as confine,
        run_process as run_process,
        run_subprocess as run_subprocess,
        start_subprocess as start_subprocess,
        tool as tool,
    )
    from actors.worker import WorkerActor as WorkerActor
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

    from .connection import (
        AttemptAbandoned as AttemptAbandoned,
        Connection as Connection,
        ConnectionSettings as ConnectionSettings,
        ConnectionStatistics as ConnectionStatistics,
        open_connection as open_connection,
    )
    from .jobs import (
        Jobs as Jobs,
        JobStore as JobStore,
        open_jobs as open_jobs,
        open_store as open_store,
    )
    from .logging import Secret as Secret, configure as configure_logging  # noqa: F401
    from .observe import EventBus as EventBus, RuntimeEvent as RuntimeEvent
    from .router import Router as Router
    from .run import (
        AgentReport as AgentReport,
        FailureReport as FailureReport,
        ParkedCall as ParkedCall,
        RunResult as RunResult,
        StepReport as StepReport,
        run as run,
        submit as submit,
    )
    from .server import (
        Fault as Fault,
        LatencyModel as LatencyModel,
        ServerConfig as ServerConfig,
        open_local_server as open_local_server,
    )
    from .session import ModelSettings as ModelSettings, Session as Session
    from .supervisor import Backoff as Backoff, ChildSpec as ChildSpec, Supervisor as Supervisor

logger.disable(__name__)

__version__ = "0.1.0"

# name -> (module, attribute)
_LAZY: dict[str, tuple[str, str]] = {
    "run": ("orchestrator.run", "run"),
    "RunResult": ("orchestrator.run", "RunResult"),
    "AgentReport": ("orchestrator.run", "AgentReport"),
    "StepReport": ("orchestrator.run", "StepReport"),
    "FailureReport": ("orchestrator.run", "FailureReport"),
    "ParkedCall": ("orchestrator.run", "ParkedCall"),
    "submit": ("orchestrator.run", "submit"),
    "Jobs": ("orchestrator.jobs", "Jobs"),
    "JobStore": ("orchestrator.jobs", "JobStore"),
    "open_jobs": ("orchestrator.jobs", "open_jobs"),
    "open_store": ("orchestrator.jobs", "open_store"),
    "Session": ("orchestrator.session", "Session"),
    "ModelSettings": ("orchestrator.session", "ModelSettings"),
    "open_connection": ("orchestrator.connection", "open_connection"),
    "Connection": ("orchestrator.connection", "Connection"),
    "ConnectionSettings": ("orchestrator.connection", "ConnectionSettings"),
    "ConnectionStatistics": ("orchestrator.connection", "ConnectionStatistics"),
    "AttemptAbandoned": ("orchestrator.connection", "AttemptAbandoned"),
    "EventBus": ("orchestrator.observe", "EventBus"),
    "RuntimeEvent": ("orchestrator.observe", "RuntimeEvent"),
    "Router": ("orchestrator.router", "Router"),
    "Supervisor": ("orchestrator.supervisor", "Supervisor"),
    "ChildSpec": ("orchestrator.supervisor", "ChildSpec"),
    "Backoff": ("orchestrator.supervisor", "Backoff"),
    "Secret": ("orchestrator.logging", "Secret"),
    "configure_logging": ("orchestrator.logging", "configure"),
    "open_local_server": ("orchestrator.server", "open_local_server"),
    "ServerConfig": ("orchestrator.server", "ServerConfig"),
    "Fault": ("orchestrator.server", "Fault"),
    "LatencyModel": ("orchestrator.server", "LatencyModel"),
    "Actor": ("actors.base", "Actor"),
    "AgentActor": ("actors.agent", "AgentActor"),
    "Task": ("actors.agent", "Task"),
    "TaskResult": ("actors.agent", "TaskResult"),
    "PlannerActor": ("actors.planner", "PlannerActor"),
    "WorkerActor": ("actors.worker", "WorkerActor"),
    "tool": ("actors.tools", "tool"),
    "ToolSpec": ("actors.tools", "ToolSpec"),
    "ToolRegistry": ("actors.tools", "ToolRegistry"),
    "ToolContext": ("actors.tools", "ToolContext"),
    "confine": ("actors.tools", "confine"),
    "run_process": ("actors.tools", "run_process"),
    "run_subprocess": ("actors.tools", "run_subprocess"),
    "start_subprocess": ("actors.tools", "start_subprocess"),
    "ApprovalPolicy": ("actors.approval", "ApprovalPolicy"),
    "ApprovalRequest": ("actors.approval", "ApprovalRequest"),
    "ApprovalDecision": ("actors.approval", "ApprovalDecision"),
    "Plan": ("plans", "Plan"),
    "PlanBuilder": ("plans", "PlanBuilder"),
    "PlanIssue": ("plans", "PlanIssue"),
    "PlanReport": ("plans", "PlanReport"),
    "load_plan": ("plans", "load_plan"),
    "check_plan": ("plans", "check_plan"),
    "check_plan_file": ("plans", "check_plan_file"),
    "plan_from_dict": ("plans", "plan_from_dict"),
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    module, attribute = target
    value = getattr(importlib.import_module(module), attribute)
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
