"""The building blocks a run is made of, for programs that assemble their own.

``orchestrator`` holds the everyday API; this module holds what it is built from, as
``trio.lowlevel`` does for trio: one agent's connection and session, the router and the
supervisor, the actors, the embedded server, the job stores. Import from here rather than
from the modules that define them (``orchestrator.core.*``, ``actors.*``): those may move.
"""

from __future__ import annotations

import warnings
from typing import Any, Final

from actors.agent import (
    AgentActor as AgentActor,
    Assignment as Assignment,
    AssignmentResult as AssignmentResult,
)
from actors.base import Actor as Actor
from actors.journal import AgentMemory as AgentMemory
from actors.planner import PlannerActor as PlannerActor
from actors.tools import (
    ToolExecutor as ToolExecutor,
    ToolRegistry as ToolRegistry,
    ToolSpec as ToolSpec,
)
from actors.worker import WorkerActor as WorkerActor
from orchestrator.core.connection import (
    AttemptAbandoned as AttemptAbandoned,
    Connection as Connection,
    ConnectionSettings as ConnectionSettings,
    ConnectionStatistics as ConnectionStatistics,
    open_connection as open_connection,
)
from orchestrator.core.protocol.events import (
    FunctionCallItem as FunctionCallItem,
    FunctionCallOutputItem as FunctionCallOutputItem,
    FunctionTool as FunctionTool,
    MessageItem as MessageItem,
)
from orchestrator.core.router import Router as Router
from orchestrator.core.server import (
    Fault as Fault,
    LatencyModel as LatencyModel,
    LocalServer as LocalServer,
    ServerConfig as ServerConfig,
    open_local_server as open_local_server,
    serve_local_server as serve_local_server,
)
from orchestrator.core.session import ModelSettings as ModelSettings, Session as Session
from orchestrator.core.supervisor import (
    Backoff as Backoff,
    ChildSpec as ChildSpec,
    Supervisor as Supervisor,
)
from orchestrator.jobs import JobStore as JobStore, open_store as open_store

# Renamed after 0.1.0 (trio's Task is a running coroutine); the old names are gone in the
# release after.
_RENAMED: Final = {"Task": "Assignment", "TaskResult": "AssignmentResult"}


def __getattr__(name: str) -> Any:
    new = _RENAMED.get(name)
    if new is None:
        raise AttributeError(f"module 'orchestrator.lowlevel' has no attribute {name!r}")
    warnings.warn(
        f"orchestrator.lowlevel.{name} is deprecated: use {new}", DeprecationWarning, stacklevel=2
    )
    return globals()[new]


__all__ = [
    "Actor",
    "AgentActor",
    "AgentMemory",
    "Assignment",
    "AssignmentResult",
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
    "ToolExecutor",
    "ToolRegistry",
    "ToolSpec",
    "WorkerActor",
    "open_connection",
    "open_local_server",
    "open_store",
    "serve_local_server",
]
